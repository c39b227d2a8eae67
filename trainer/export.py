"""Writing the model artifact (Contract 2) atomically.

The artifact's layout, names and reading side are `artifact.py`'s (the
contract, which the scorer reads without this module's Keras and model
code); this module writes what it describes:

* `_ServingModule`: the SavedModel's signatures. Decoding, resizing and
  normalisation live inside `serving_default` (`preprocessing.decode_images`,
  the same code the input pipelines use), so training and scoring cannot
  drift; `serving_pixels` takes already-decoded float32 pixels; and, for a
  model with a convolutional feature extractor, `serving_embeddings`
  returns its pooled output (`extractor.embedding_model`, the vector the
  head's Dense layer sees) for image bytes decoded by the very same call
  as `serving_default` (Contract 4: cached and in-model vectors cannot
  differ).
* `build_metadata`: metadata.json; `embeddings_metadata` its `embeddings`
  entry (the extractor's fingerprint, size and pooling), which
  `write_artifact_files` fills in from the model it writes.
* `export_model`: stages every file locally, then publishes the folder with
  `_COMPLETE` last, so a reader never sees half an artifact.
* `load_keras_model`: model.keras back, for fine-tuning and transfer
  learning, with Keras `safe_mode=True` (no arbitrary Python).
"""

import datetime
import os
import platform
import tempfile

from absl import logging
import keras
import tensorflow as tf

from trainer import artifact
from trainer import checkpoints
from trainer import embedding_cache
from trainer import extractor
from trainer import models
from trainer import storage
from trainer.data import preprocessing



class _ServingModule(tf.Module):
  """Wraps a Keras model with signatures that own their preprocessing."""

  def __init__(self, model, image_shape,
               jpeg_dct_ratios=artifact.JPEG_DCT_RATIOS):
    super().__init__()
    self._model = models.logits_model(model)
    self._image_shape = tuple(image_shape)
    self._jpeg_dct_ratios = tuple(jpeg_dct_ratios)
    height, width, channels = self._image_shape
    self.serve = tf.function(
        self._serve_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name='image_bytes')])
    self.serve_pixels = tf.function(
        self._serve_pixels,
        input_signature=[tf.TensorSpec([None, height, width, channels],
                                       tf.float32, name='images')])
    # Shares the model's layers (and so its variables) up to the embedding;
    # None for softmax/mlp, which have no convolutional extractor.
    self._embedding_model = extractor.embedding_model(model)
    self.serve_embeddings = None
    if self._embedding_model is not None:
      self.serve_embeddings = tf.function(
          self._embed_bytes,
          input_signature=[tf.TensorSpec([None], tf.string,
                                         name='image_bytes')])

  def signatures(self):
    """{signature name: concrete function} to save."""
    signatures = {artifact.SERVING_SIGNATURE: self.serve,
                  artifact.PIXELS_SIGNATURE: self.serve_pixels}
    if self.serve_embeddings is not None:
      signatures[artifact.EMBEDDINGS_SIGNATURE] = self.serve_embeddings
    return signatures

  def _decode(self, image_bytes):
    height, width, channels = self._image_shape
    return preprocessing.decode_images(image_bytes, height, width, channels,
                                       self._jpeg_dct_ratios)

  def _serve_pixels(self, images):
    logits, probabilities = self._model(images, training=False)
    return {'probabilities': probabilities, 'logits': logits}

  def _serve_bytes(self, image_bytes):
    return self._serve_pixels(self._decode(image_bytes))

  def _embed_bytes(self, image_bytes):
    embeddings = self._embedding_model(self._decode(image_bytes),
                                       training=False)
    # float32 whatever the layers compute in (mixed precision).
    return {embedding_cache.OUTPUT_KEY: tf.cast(embeddings, tf.float32)}


def versions():
  """Versions that produced an artifact, recorded in its metadata."""
  from trainer import __version__  # pylint: disable=g-import-not-at-top
  return {
      'trainer': __version__,
      'tensorflow': tf.__version__,
      'keras': keras.__version__,
      'python': platform.python_version(),
  }


def build_metadata(*, class_names, image_shape, dataset, model_name,
                   metrics=None, extra=None):
  """The metadata.json document of Contract 2."""
  height, width, channels = image_shape
  metadata = {
      'format_version': artifact.FORMAT_VERSION,
      'labels': list(class_names),
      'input': {'height': height, 'width': width, 'channels': channels,
                'encoded_formats': list(artifact.ENCODED_FORMATS),
                # What serving_default's decoder does with a large JPEG
                # (preprocessing.decode_images' default).
                'jpeg_dct_ratios': list(artifact.JPEG_DCT_RATIOS)},
      'signatures': {
          artifact.SERVING_SIGNATURE: {
              'inputs': {'image_bytes': 'string [batch]'},
              'outputs': ['probabilities', 'logits']},
          artifact.PIXELS_SIGNATURE: {
              'inputs': {'images': f'float32 [batch, {height}, {width}, '
                                   f'{channels}] in [0, 1]'},
              'outputs': ['probabilities', 'logits']},
      },
      'dataset': dataset,
      'model': model_name,
      'metrics': dict(metrics or {}),
      'versions': versions(),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
  }
  metadata.update(extra or {})
  return metadata


def embeddings_metadata(model):
  """metadata.json's `embeddings` entry for `model` (None without one).

  Returns:
    {'signature', 'fingerprint', 'size', 'pooling'}: the fingerprint is of
    the weights up to where the extractor ends (`extractor.find_output`),
    which is what a trainer compares with its base's; or None when the
    model has no convolutional feature extractor (softmax, mlp).
  """
  embedder = extractor.embedding_model(model)
  if embedder is None:
    return None
  cut, pooling = extractor.find_output(model, 'the model')
  return {
      'signature': artifact.EMBEDDINGS_SIGNATURE,
      'fingerprint': extractor.fingerprint(keras.Model(model.inputs, cut)),
      'size': int(embedder.output.shape[-1]),
      'pooling': pooling,
  }


def _with_embeddings(metadata, model):
  """`metadata` with the `embeddings` entry (and signature) of `model`:
  always the written model's, whatever an earlier artifact's metadata said."""
  entry = embeddings_metadata(model)
  metadata = dict(metadata, embeddings=entry)
  signatures = dict(metadata.get('signatures', {}))
  signatures.pop(artifact.EMBEDDINGS_SIGNATURE, None)
  if entry is not None:
    signatures[artifact.EMBEDDINGS_SIGNATURE] = {
        'inputs': {'image_bytes': 'string [batch]'},
        'outputs': [embedding_cache.OUTPUT_KEY]}
  metadata['signatures'] = signatures
  return metadata


def write_artifact_files(model, directory, metadata):
  """Writes model.keras, saved_model/ and metadata.json into a local folder.

  metadata.json's `embeddings` entry is computed here, from `model`.
  """
  image_shape = (metadata['input']['height'], metadata['input']['width'],
                 metadata['input']['channels'])
  metadata = _with_embeddings(metadata, model)
  model.save(os.path.join(directory, artifact.MODEL_FILE))
  # The signature decodes large JPEGs as the metadata says it does (an
  # artifact without `jpeg_dct_ratios` decodes every image at full size).
  module = _ServingModule(model, image_shape,
                          artifact.jpeg_dct_ratios(metadata))
  tf.saved_model.save(
      module, os.path.join(directory, artifact.SAVED_MODEL_DIR),
      signatures=module.signatures())
  storage.write_json(os.path.join(directory, artifact.METADATA_FILE), metadata)


def export_model(model, export_dir, metadata):
  """Writes the whole artifact so a reader never sees half of it.

  The files are written to a local temporary folder, then published to
  `export_dir` (local or gs://) with `_COMPLETE` written last. Free space is
  checked first, in the staging folder and beside `export_dir`; on any
  failure the staging folder and the half-published copy are removed and the
  previous export is left as it was.

  Args:
    model: the trained Keras model (outputs probabilities).
    export_dir: destination, local or gs://.
    metadata: from `build_metadata`.

  Raises:
    storage.WriteError: naming the folder, if the artifact cannot be written.
  """
  export_dir = storage.normalize(export_dir)
  # model.keras holds the weights and the optimizer state, saved_model/ the
  # weights again.
  needed = (checkpoints.state_bytes(model) +
            checkpoints.state_bytes(model, with_optimizer=False) +
            checkpoints.SPACE_MARGIN_BYTES)
  with tempfile.TemporaryDirectory(prefix='export-') as staging:
    storage.check_free_space(staging, needed, 'staging the export')
    storage.check_free_space(export_dir, needed, 'the export')
    try:
      write_artifact_files(model, staging, metadata)
    except (OSError, tf.errors.OpError) as e:
      reason = _reason(e)
      del e  # Drop the traceback (and h5py's open file) before cleaning up.
      raise storage.WriteError(
          f'Cannot write the export: staging it in {staging} failed: '
          f'{reason}. Free some space there (TMPDIR) and rerun.',
          hard_exit=True) from None
    try:
      storage.publish_tree(staging, export_dir, artifact.COMPLETE_MARKER)
    except OSError as e:
      left = ('readers see no complete export until a rerun publishes it'
              if storage.is_gcs(export_dir) else
              'the previous export, if any, is unchanged')
      raise storage.WriteError(
          f'Cannot write the export to {export_dir}: {_reason(e)}. Free '
          f'some space there and rerun; {left}.') from None
  logging.info('Exported the model to %s', export_dir)


def _reason(error):
  if isinstance(error, OSError):
    return storage.describe_os_error(error)
  return ' '.join(error.message.split())[:200]


# --------------------------------------------------------------------------
# Reading model.keras back (Keras: the scorer never needs it).


def load_keras_model(path):
  """Loads a Keras model from an export folder or a `.keras` file.

  Loaded with `safe_mode=True`, which refuses lambda layers and other
  arbitrary Python code embedded in the file.

  Raises:
    artifact.ArtifactError: if the path is neither a complete export nor a
      .keras file.
  """
  path = storage.normalize(path)
  if path.endswith('.keras'):
    if not storage.exists(path):
      raise artifact.ArtifactError(f'{path}: no such file.')
    with storage.local_file(path) as local:
      return keras.saving.load_model(local, safe_mode=True, compile=False)
  with artifact.local_copy(path) as local:
    return keras.saving.load_model(os.path.join(local, artifact.MODEL_FILE),
                                   safe_mode=True, compile=False)

