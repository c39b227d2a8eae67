"""The model artifact's contract (Contract 2), and reading an artifact.

```
EXPORT/model.keras     the Keras model (reload for fine-tuning / transfer)
EXPORT/saved_model/    TF SavedModel; `serving_default` takes encoded image
                       bytes [batch] and returns `probabilities` and `logits`;
                       `serving_pixels` takes float32 pixels in [0, 1];
                       `serving_embeddings` (models with a convolutional
                       extractor) takes bytes and returns `embeddings`
EXPORT/metadata.json   labels, input shape, dataset, model, metrics, versions,
                       format_version, embeddings (fingerprint, size,
                       pooling; null without an extractor)
EXPORT/_COMPLETE       written last: the artifact is whole
```

This module owns what the writer (`export.py`) and every reader share: the
file names, the marker, the metadata's `FORMAT_VERSION`, the signature
names and `ArtifactError`; and the reading side: `read_metadata` (which
refuses an artifact without `_COMPLETE`), `local_copy`, `load_serving`,
`load` (with `embeddings=True`, the embeddings signature too:
`embeddings_entry` refuses an artifact without one), and `check`, the
whole-artifact check the scorer runs before any
work (the SavedModel loads, and returns one probability per label of
metadata.json; `take_checked` hands what it loaded to a worker in the same
process). It also says what an image costs the serving signature
decoded (`decoded_size`): the scorer bounds its batches by that, before any
image is decoded.

It imports no Keras, and TensorFlow only inside the functions that load the
SavedModel: the scorer and its Dataflow workers read an artifact without the
trainer's model code, as TF Serving reads `saved_model.pb` without the code
that trained it. Writing an artifact needs Keras, so it is `export.py`'s.

Models are programs: load only artifacts you trust. The SavedModel holds
only a TensorFlow graph.
"""

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from typing import NamedTuple

from trainer import embedding_cache
from trainer import errors
from trainer import storage

_LOGGER = logging.getLogger(__name__)

MODEL_FILE = 'model.keras'
SAVED_MODEL_DIR = 'saved_model'
METADATA_FILE = 'metadata.json'
COMPLETE_MARKER = '_COMPLETE'
FORMAT_VERSION = 1
SERVING_SIGNATURE = 'serving_default'
PIXELS_SIGNATURE = 'serving_pixels'
# Encoded image bytes [batch] -> `embeddings`: the feature extractor's pooled
# output, decoded as serving_default decodes (embedding_cache.py, Contract 4;
# metadata.json `embeddings`: fingerprint, size; absent in older artifacts).
EMBEDDINGS_SIGNATURE = 'serving_embeddings'
# What `serving_default` decodes (metadata.json `input.encoded_formats`).
ENCODED_FORMATS = ('jpeg', 'png', 'gif', 'bmp')
# The scales (1/2, 1/4, 1/8) at which the serving signature (and training)
# lets the JPEG decoder itself decode a JPEG far larger than the input
# (metadata.json `input.jpeg_dct_ratios`; artifacts exported before it
# decode every image at full size).
JPEG_DCT_RATIOS = (2, 4, 8)


class ArtifactError(errors.UserError, ValueError):
  """An export is missing, incomplete or not one this code can read."""

  kind = 'invalid_artifact'


def is_complete(export_dir):
  """Whether `export_dir` (local or gs://) holds the `_COMPLETE` marker."""
  return storage.exists(storage.join(export_dir, COMPLETE_MARKER))


def read_metadata(export_dir):
  """Reads metadata.json of a complete artifact.

  Raises:
    ArtifactError: if the folder is not a complete artifact of a format this
      code understands.
  """
  export_dir = storage.normalize(export_dir)
  if not storage.exists(export_dir):
    raise ArtifactError(f'{export_dir}: no such model directory.')
  if not is_complete(export_dir):
    raise ArtifactError(_not_complete_message(export_dir))
  try:
    metadata = storage.read_json(storage.join(export_dir, METADATA_FILE))
  except (FileNotFoundError, ValueError) as e:
    raise ArtifactError(f'{export_dir}: unreadable {METADATA_FILE}: {e}') from e
  version = metadata.get('format_version')
  if version != FORMAT_VERSION:
    raise ArtifactError(
        f'{export_dir}: artifact format_version {version!r}; this code reads '
        f'version {FORMAT_VERSION}.')
  return metadata


# The job dir's export folder (job_dir.py's layout), for the advice below.
_JOB_DIR_EXPORT = 'export'


def _not_complete_message(export_dir):
  """Why `export_dir` (which exists, without the marker) is not an artifact.

  A folder with none of the artifact's files (a job dir, an empty folder)
  has no artifact at all; one with some of them is an artifact whose writer
  is still running or was killed.
  """
  parts = [name for name in (METADATA_FILE, MODEL_FILE, SAVED_MODEL_DIR)
           if storage.exists(storage.join(export_dir, name))]
  if parts:
    return (f'{export_dir}: incomplete model artifact (no {COMPLETE_MARKER} '
            'marker). Its writer may still be running or was killed; wait '
            'for it, or re-run training.')
  inner = storage.join(export_dir, _JOB_DIR_EXPORT)
  if is_complete(inner):
    return (f'{export_dir}: no model artifact there; it is a job dir: use '
            f'--model_dir={inner}.')
  return (f'{export_dir}: no model artifact there (no {METADATA_FILE}, '
          f'{SAVED_MODEL_DIR}/ or {COMPLETE_MARKER}). Point --model_dir at '
          'JOB_DIR/export of a finished training run.')


@contextlib.contextmanager
def local_copy(export_dir):
  """Yields a local folder holding the (complete) artifact.

  Local artifacts are used in place; gs:// ones are downloaded to a
  temporary folder removed on exit (TensorFlow's own GCS reader cannot
  reach an emulator, and a local copy loads faster on repeated use).

  Raises:
    ArtifactError: if the artifact is not complete (before any copying).
  """
  export_dir = storage.normalize(export_dir)
  read_metadata(export_dir)
  if not storage.is_gcs(export_dir):
    yield export_dir
    return
  staging = tempfile.mkdtemp(prefix='model-')
  try:
    storage.download_tree(export_dir, staging)
    yield staging
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def load_serving(local_export_dir, signature=SERVING_SIGNATURE):
  """Loads a signature of a local artifact's SavedModel.

  Returns:
    (callable, loaded SavedModel): keep the second alive while using the
    first. The callable takes keyword `image_bytes` (or `images`) and returns
    a dict with `probabilities` and `logits`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  loaded = tf.saved_model.load(os.path.join(local_export_dir, SAVED_MODEL_DIR))
  return loaded.signatures[signature], loaded


class Loaded(NamedTuple):
  """An artifact's serving signature, loaded, and its metadata."""
  serve: object
  saved_model: object  # Keeps the signature's variables alive.
  metadata: dict
  # EMBEDDINGS_SIGNATURE (bytes -> {'embeddings'}), if loaded.
  embed: object = None

  @property
  def labels(self):
    return tuple(self.metadata['labels'])

  @property
  def output_size(self):
    """How many probabilities `serve` returns per image."""
    return self.serve.structured_outputs['probabilities'].shape[-1]


def embeddings_entry(metadata, model_dir):
  """metadata.json's `embeddings` entry: signature, fingerprint, size,
  pooling.

  Raises:
    ArtifactError: one line, if the artifact has none.
  """
  entry = metadata.get('embeddings')
  if not entry:
    raise ArtifactError(
        f'{model_dir}: no embeddings signature ({EMBEDDINGS_SIGNATURE}): the '
        'artifact was exported before embeddings existed, or its model '
        '(softmax/mlp) has no convolutional feature extractor; re-export it '
        'with this version (trainer.export.export_model of its model.keras, '
        'or train it again), or use a convolutional model (deep_mnist, '
        'cnn_bn, a --base_model transfer).')
  return entry


def load(model_dir, embeddings=False):
  """Loads a complete artifact (local or gs://) for serving.

  The SavedModel's variables are read into memory, so the local copy of a
  gs:// artifact is removed before this returns.

  Args:
    model_dir: the artifact's folder.
    embeddings: also load EMBEDDINGS_SIGNATURE (`Loaded.embed`).

  Raises:
    ArtifactError: one line naming the problem (incomplete, no SavedModel
      that loads, no serving signature, no embeddings signature when asked
      for).
  """
  with local_copy(model_dir) as local:
    metadata = read_metadata(local)
    if embeddings:
      embeddings_entry(metadata, model_dir)  # Before loading anything.
    try:
      serve, saved_model = load_serving(local)
    except (OSError, ValueError) as e:  # No (or an unreadable) SavedModel.
      raise ArtifactError(
          f'{model_dir}: no SavedModel that loads in {SAVED_MODEL_DIR}/ '
          f'({_first_line(e)}); re-export the model from its job dir.') from e
    except KeyError as e:
      raise ArtifactError(
          f'{model_dir}: the SavedModel has no {SERVING_SIGNATURE!r} '
          'signature; re-export the model from its job dir.') from e
  embed = None
  if embeddings:
    embed = saved_model.signatures.get(EMBEDDINGS_SIGNATURE)
    if embed is None:
      raise ArtifactError(
          f'{model_dir}: {METADATA_FILE} lists embeddings but the SavedModel '
          f'has no {EMBEDDINGS_SIGNATURE!r} signature: the artifact is '
          'inconsistent; re-export it from its job dir.')
  return Loaded(serve, saved_model, metadata, embed)


def _first_line(error):
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def check(model_dir, embeddings=False):
  """Checks a whole artifact before any work: it loads and is consistent.

  Loads the SavedModel (for gs://, from a local copy) and compares the size
  of its `serving_default` output with the labels in metadata.json (and,
  with `embeddings`, its embeddings signature's with metadata.json's
  `embeddings.size`), so that a broken artifact stops a run before any
  output is touched, not in a worker after the old outputs are gone.

  Args:
    model_dir: the artifact's folder (local, gs:// or /gcs/).
    embeddings: the run writes embeddings: the signature must be there.

  Returns:
    The labels, in the model's output order.

  Raises:
    ArtifactError: one line naming the problem (incomplete, no SavedModel,
      no serving signature, label count mismatch).
  """
  loaded = load(model_dir, embeddings=embeddings)
  if loaded.output_size != len(loaded.labels):
    raise ArtifactError(
        f'{model_dir}: the SavedModel returns {loaded.output_size} '
        f'probabilities but {METADATA_FILE} lists {len(loaded.labels)} '
        'labels: the artifact is inconsistent; re-export it from its job dir.')
  if embeddings:
    size = loaded.embed.structured_outputs[
        embedding_cache.OUTPUT_KEY].shape[-1]
    if size != loaded.metadata['embeddings']['size']:
      raise ArtifactError(
          f'{model_dir}: the SavedModel returns embeddings of size {size} but '
          f'{METADATA_FILE} says {loaded.metadata["embeddings"]["size"]}: '
          'the artifact is inconsistent; re-export it from its job dir.')
  _CHECKED.clear()
  _WARMING.clear()
  _CHECKED[model_dir] = loaded
  return loaded.labels


# The artifact `check` loaded last in this process (one at most), for
# `take_checked`: a worker of an in-process runner then scores with the
# SavedModel the launcher checked instead of loading it again (0.2-0.3 s of
# the scorer's start-up for a small model, and its memory twice).
_CHECKED = {}


def take_checked(model_dir):
  """The `Loaded` artifact `check(model_dir)` loaded in this process, once.

  Waits for its warm-up (`warm_up_checked`) if one was started.

  Returns None if this process checked no artifact at `model_dir`, or its
  `Loaded` was already taken: later loads read the artifact again.
  """
  warming = _WARMING.pop(model_dir, None)
  if warming is not None:
    warming.join()
  return _CHECKED.pop(model_dir, None)


# The warm-up threads of checked artifacts, by model_dir.
_WARMING = {}


def warm_up_checked(model_dir):
  """Calls the checked artifact's signatures once, on a thread of its own.

  For a runner in this process, which scores with the artifact `check`
  loaded (`take_checked`): a loaded SavedModel's first call builds and
  optimises its graph function, 0.6-0.9 s measured here, nearly all of it
  in TensorFlow's C++ without the GIL. Started after the check, it runs
  while Beam builds and starts the pipeline (which holds the GIL), so the
  first batch is scored at once. One zero image, encoded as a PNG of the
  input's size, is decoded and scored. A failure here is only logged: the
  real first call meets (and reports) the same problem. The thread is not
  a daemon, so an interpreter that exits first waits for it.
  """
  loaded = _CHECKED.get(model_dir)
  if loaded is None or model_dir in _WARMING:
    return
  thread = threading.Thread(target=_warm_up, args=(loaded,),
                            name=f'warm-up {model_dir}')
  _WARMING[model_dir] = thread
  thread.start()


def _warm_up(loaded):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    height, width = input_size(loaded.metadata)
    channels = loaded.metadata['input']['channels']
    images = tf.reshape(tf.io.encode_png(
        tf.zeros((height, width, channels), tf.uint8)), [1])
    loaded.serve(image_bytes=images)
    if loaded.embed is not None:
      loaded.embed(image_bytes=images)
  except Exception as e:  # pylint: disable=broad-except
    _LOGGER.debug('Warming up the model failed: %s', e)


# --------------------------------------------------------------------------
# What an image costs decoded (the rule trainer/data/preprocessing.py runs
# in TensorFlow; tests/data/test_preprocessing.py checks that they agree).


def jpeg_dct_ratio(width, height, input_size, ratios=JPEG_DCT_RATIOS):
  """The scale a JPEG of width x height is decoded at: 1, or one of `ratios`.

  The largest ratio whose decoded size (libjpeg rounds up: ceil(side /
  ratio)) still has both sides at least the input's larger side, so the
  resize to the input only ever shrinks, whichever way the EXIF orientation
  turns the image.

  Args:
    width: the JPEG's width, from its header.
    height: its height.
    input_size: (height, width) the model takes.
    ratios: the artifact's `input.jpeg_dct_ratios` (empty: always 1).

  Returns:
    An int: 1 (full size), or a ratio of `ratios`.
  """
  side = max(input_size)
  fitting = [ratio for ratio in ratios
             if -(-min(width, height) // ratio) >= side]
  return max(fitting, default=1)


def input_size(metadata):
  """(height, width) of the model's input, from metadata.json."""
  return metadata['input']['height'], metadata['input']['width']


def jpeg_dct_ratios(metadata):
  """The scales the artifact's signature may decode a JPEG at, from
  metadata.json (`()` for artifacts exported before it: full size)."""
  return tuple(metadata['input'].get('jpeg_dct_ratios', ()))


def decoded_size(image_format, width, height, input_size,
                 ratios=JPEG_DCT_RATIOS):
  """(width, height) the serving signature decodes an image to, before
  resizing it to the input.

  Args:
    image_format: 'JPEG', 'PNG', 'GIF' or 'BMP' (case-insensitive).
    width: the image's width, from its header.
    height: its height.
    input_size: (height, width) the model takes.
    ratios: the artifact's `input.jpeg_dct_ratios`.
  """
  if image_format.upper() != 'JPEG':
    return width, height
  ratio = jpeg_dct_ratio(width, height, input_size, ratios)
  return -(-width // ratio), -(-height // ratio)
