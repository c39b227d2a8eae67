"""A RunInference `ModelHandler` for the model artifact (Contract 2).

Beam's own TensorFlow handlers load models with `tf.keras.models.load_model`
and import `tensorflow_hub`; Keras 3 cannot load a SavedModel folder that
way. This handler loads the artifact's SavedModel through `trainer.artifact`
(`tf.saved_model.load`, not a Keras loader) and calls its `serving_default`
signature, which takes encoded image bytes and does its own decoding and
resizing (so scoring matches training).

RunInference keeps what it is good at: batching (`min_batch_size`,
`max_batch_size`), loading the model once per worker process and sharing it
between threads, and its inference metrics. The handler calls the model
with power-of-two slices of each batch, so TensorFlow sees few distinct
shapes and its per-shape caches (hence memory) stay bounded.

Batches are bounded by what their images cost decoded, not only by their
count (`max_batch_pixels`): each image weighs its decoded pixels (the
header check puts them in `items.Item.pixels`), but at least one "slot",
`max_batch_pixels // max_batch_size`, and RunInference's `BatchElements`
fills a batch up to `max_batch_pixels` of weight. So a batch never holds
more than `max_batch_size` images nor (unless one image alone is larger)
more than `max_batch_pixels` decoded pixels: a batch of 12-megapixel photos
is small, a batch of thumbnails full. The handler does not pass
RunInference's own `max_batch_weight`: Beam 2.77 hands it on to
`BatchElements`, which has no such argument (a TypeError when the pipeline
is built; measured), so the weights ride on `element_size_fn` and the
min/max batch sizes, which `BatchElements` counts in weight. Those batches
have a fixed target (min = max), and no image weighs more than it:
`BatchElements` emits the batch it holds when the next element would
overflow its target, and so emits an empty batch (which RunInference's
keyed handler cannot unpack) for an element heavier than a target it has
adapted down to. An image larger than the budget is scored alone.

One undecodable image (a truncated JPEG, say) fails the signature call for its
whole batch. The handler then splits the batch in halves and retries each,
down to the single culprit, which gets a `DecodeFailure` instead of
probabilities; every other image of the batch is still scored. A batch the
model runs out of memory on (`ResourceExhaustedError`: a GPU's memory, or a
CPU allocation TensorFlow refuses) is halved the same way, down to single
images; an image that exhausts memory alone gets a `DecodeFailure` of kind
`too_large_for_memory`, never a failed bundle (RunInference itself has no
such back-off: apache/beam#21447).

With `embeddings=True` (`--embeddings`) the handler also calls the
artifact's `serving_embeddings` signature, on the same batch (never one
image per call), and each inference is an `Embedded` (probabilities and
the embedding); with `embeddings_only=True` it calls that signature alone
(probabilities None). Both signatures decode the same bytes with the same
code, so an image one refuses the other refuses too: bisection finds the
same culprits.

On a worker with GPUs, `load_model` first turns on TensorFlow's memory
growth (`trainer.devices`: several SDK processes share a VM, and each would
otherwise reserve every GPU's whole memory), then loads and runs the model
on one GPU, round robin over the GPUs in the process that loads it, and
logs where. With `model_copies=N` RunInference loads N copies once per VM,
shared by all its SDK processes (Beam's `multi_process_shared`: the process
that first needs them loads them all, so N = the VM's GPUs puts one copy on
each); without it, as on CPU workers by default, each process loads its
own.

TensorFlow is imported where a model is loaded or called, not when this
module is: importing TensorFlow 2.21 imports Keras too, and the launcher
checks its flags (and prints `--help`) without either.
"""

import contextlib
import functools
import itertools
import logging
import threading
from typing import NamedTuple

import apache_beam as beam
from apache_beam.ml.inference import base

from batch_predict import items
from trainer import artifact
from trainer import devices
from trainer import embedding_cache
from trainer import errors

METRICS_NAMESPACE = 'batch_predict'
_LOGGER = logging.getLogger(__name__)
# Which GPU this process loads its next model copy on (round robin).
_NEXT_GPU = itertools.count()
_NEXT_GPU_LOCK = threading.Lock()

# Lines of TensorFlow's error text that say where, not what.
_BOILERPLATE_PREFIXES = ('Graph execution error', 'Detected at node',
                         '<stack traces unavailable>', '[[')


class DecodeFailure(NamedTuple):
  """The inference for an image the model could not score: its decoder
  refused it (`undecodable`), or it ran out of memory on it alone
  (`too_large_for_memory`)."""
  kind: str
  message: str


class Embedded(NamedTuple):
  """The inference for an image with --embeddings: its probabilities (None
  with --embeddings_only) and its float32 embedding."""
  probabilities: object
  embedding: object


class Classifier:
  """A loaded artifact: its serving signature and class names (and its
  embeddings signature, for --embeddings).

  One instance per worker process is shared by all threads (RunInference's
  `shared.Shared` holds it by weak reference, so it must be a class
  instance, not a tuple).
  """

  def __init__(self, serve, saved_model, labels, device=None, embed=None,
               predictions=True):
    self._serve = serve
    self._saved_model = saved_model  # Keeps the signature's variables alive.
    self.labels = tuple(labels)
    self.device = device
    self._embed = embed
    self._predictions = predictions

  def predict(self, image_bytes):
    """Encoded images -> float32 probabilities [len(image_bytes), classes],
    or, with an embeddings signature, a list of `Embedded`.

    Raises:
      tf.errors.InvalidArgumentError: if any image cannot be decoded.
      tf.errors.ResourceExhaustedError: if the device ran out of memory.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with _on_device(self.device):
      images = tf.constant(list(image_bytes), dtype=tf.string)
      probabilities = None
      if self._predictions or self._embed is None:
        probabilities = self._serve(image_bytes=images)[
            'probabilities'].numpy()
      if self._embed is None:
        return probabilities
      embeddings = self._embed(image_bytes=images)[
          embedding_cache.OUTPUT_KEY].numpy()
    if probabilities is None:
      return [Embedded(None, row) for row in embeddings]
    return [Embedded(*rows) for rows in zip(probabilities, embeddings)]


def _on_device(device):
  if device is None:
    return contextlib.nullcontext()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.device(device)


def load_classifier(model_dir, device=None, embeddings=False,
                    predictions=True):
  """Loads a complete artifact (local or gs://) for scoring.

  Args:
    model_dir: the artifact's folder.
    device: where its variables live and it runs (e.g. '/GPU:1'); None:
      TensorFlow's choice (the first GPU, or the CPU).
    embeddings: also call its embeddings signature (`Embedded` results).
    predictions: with `embeddings`, also call serving_default.

  Raises:
    artifact.ArtifactError: if `model_dir` is not a complete artifact whose
      SavedModel loads (with `embeddings`: with the embeddings signature).
  """
  # On TensorFlow's default device, the artifact the launcher checked in
  # this process (an in-process runner) is the one to score with.
  loaded = artifact.take_checked(model_dir) if device is None else None
  if loaded is None or (embeddings and loaded.embed is None):
    with _on_device(device):
      loaded = artifact.load(model_dir, embeddings=embeddings)
  return Classifier(loaded.serve, loaded.saved_model, loaded.labels, device,
                    embed=loaded.embed if embeddings else None,
                    predictions=predictions)


def prepare_device(gpus, set_memory_growth=None):
  """Prepares this process's GPUs and picks the one for the next model copy.

  Args:
    gpus: the physical GPUs (`devices.list_gpus()`; tests pass their own).
    set_memory_growth: see `devices.enable_memory_growth`.

  Returns:
    (device name such as '/GPU:1', or None without GPUs; the log line of
    `devices.describe`).
  """
  if not gpus:
    return None, devices.describe(gpus, [])
  grown = devices.enable_memory_growth(gpus, set_memory_growth)
  with _NEXT_GPU_LOCK:
    index = next(_NEXT_GPU) % len(gpus)
  return f'/GPU:{index}', devices.describe(gpus, grown)


def describe_decode_error(error):
  """A sentence for an error record from TensorFlow's decoder error."""
  detail = 'the decoder refused the data'
  for line in str(getattr(error, 'message', error)).splitlines():
    line = line.strip()
    if line and not line.startswith(_BOILERPLATE_PREFIXES):
      detail = line
      break
  return (f'could not decode the image ({detail}): the file is probably '
          'truncated or corrupt. Re-copy it, or re-export it from the '
          'original.')


def describe_memory_error(error):
  """A sentence for the error record of an image too large for memory."""
  del error  # TensorFlow's text names an allocation, not what to do.
  return ('the model ran out of memory on this image even alone (its batch '
          'was halved down to it): score it on a worker with more memory (a '
          'larger machine type, or a GPU with more memory), or refuse images '
          'this large from their header with a lower --max_image_pixels.')


def power_of_two_chunks(batch):
  """Splits a batch into consecutive chunks whose sizes are powers of two.

  TensorFlow (with oneDNN on CPU) caches compiled kernels per input shape,
  and the cache grows with every new batch size it meets; RunInference's
  adaptive batching produces many sizes. Calling the model only with 1, 2,
  4, ... images keeps that to log2(max_batch_size) + 1 shapes, so memory
  stays flat however many images are scored.

  Args:
    batch: a sequence.

  Returns:
    A list of slices of `batch`, largest first (e.g. 37 -> 32, 4, 1).
  """
  chunks = []
  start = 0
  while start < len(batch):
    size = 1 << ((len(batch) - start).bit_length() - 1)
    chunks.append(batch[start:start + size])
    start += size
  return chunks


def predict_isolating_failures(classifier, batch, on_split=None,
                               on_out_of_memory=None):
  """Probabilities for each image, or a `DecodeFailure` for those that fail.

  Calls the model on the whole batch; if the call fails because an image
  cannot be decoded, bisects the batch to find the culprits. A batch with k
  bad images out of n costs about 2 k log2(n) extra calls, each smaller.
  Halving keeps a power-of-two batch at powers of two. A batch the model
  runs out of memory on is halved the same way, until the halves fit; an
  image that does not fit alone is `too_large_for_memory`.

  Args:
    classifier: a `Classifier`.
    batch: a sequence of encoded images.
    on_split: called with no arguments each time a batch is split.
    on_out_of_memory: called with no arguments each time a batch is split
      because the model ran out of memory on it (as well as `on_split`).

  Returns:
    A list, in batch order, of numpy probability rows or `DecodeFailure`s.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    return list(classifier.predict(batch))
  except tf.errors.InvalidArgumentError as error:
    if len(batch) == 1:
      return [DecodeFailure(errors.UNDECODABLE, describe_decode_error(error))]
  except tf.errors.ResourceExhaustedError as error:
    if len(batch) == 1:
      return [DecodeFailure(errors.TOO_LARGE_FOR_MEMORY,
                            describe_memory_error(error))]
    if on_out_of_memory:
      on_out_of_memory()
  if on_split:
    on_split()
  middle = len(batch) // 2
  return (predict_isolating_failures(classifier, batch[:middle], on_split,
                                     on_out_of_memory) +
          predict_isolating_failures(classifier, batch[middle:], on_split,
                                     on_out_of_memory))


# BatchElements' own default largest batch.
_BEAM_MAX_BATCH_SIZE = 10_000


def batch_weight(slot, most, element):
  """What one element weighs in a pixel-bounded batch: its decoded pixels,
  but at least `slot` and at most `most`.

  Args:
    slot: the weight of an image that costs little decoded
      (`max_batch_pixels // max_batch_size`), so a full batch of them holds
      `max_batch_size` images.
    most: a full batch's weight: a larger image fills a batch alone.
    element: what RunInference batches: an (`items.Item` key, bytes) pair
      (the scorer's, keyed), an `items.Item`, or bytes (weighs `slot`).
  """
  if isinstance(element, tuple) and not isinstance(element, items.Item):
    element = element[0]
  return min(max(getattr(element, 'pixels', 0) or 0, slot), most)


def batching_kwargs(min_batch_size=None, max_batch_size=None,
                    max_batch_pixels=None):
  """RunInference's batching arguments for count- or pixel-bounded batches.

  Args:
    min_batch_size: smallest batch, in images (default: Beam's); only for
      count-bounded batches (pixel-bounded ones fill up to their bound).
    max_batch_size: largest batch, in images (default: Beam's, 10,000).
    max_batch_pixels: most decoded pixels a batch may hold (None or 0: no
      bound); an image larger than it is scored alone.

  Returns:
    Keyword arguments for `base.ModelHandler.__init__`.
  """
  if not max_batch_pixels:
    return {'min_batch_size': min_batch_size, 'max_batch_size': max_batch_size}
  max_count = max_batch_size or _BEAM_MAX_BATCH_SIZE
  slot = max(1, max_batch_pixels // max_count)
  most = max_count * slot
  return {'min_batch_size': most, 'max_batch_size': most,
          'element_size_fn': functools.partial(batch_weight, slot, most)}


class ImageClassifierHandler(base.ModelHandler):
  """Scores encoded images (bytes) with a Contract 2 artifact.

  Each `PredictionResult.inference` is a float32 numpy array of class
  probabilities (in the order of the artifact's labels), or a
  `DecodeFailure` for an image the model could not decode; with
  `embeddings`, an `Embedded` instead of the array.
  """

  def __init__(self, model_dir, *, min_batch_size=None, max_batch_size=None,
               max_batch_pixels=None, model_copies=None, embeddings=False,
               embeddings_only=False):
    """Configures the handler; nothing is loaded until a worker needs it.

    Args:
      model_dir: the artifact's folder (local, gs:// or /gcs/).
      min_batch_size: smallest batch RunInference forms, in images
        (default: Beam's).
      max_batch_size: largest batch RunInference forms, in images (default:
        Beam's).
      max_batch_pixels: most decoded pixels (`items.Item.pixels`) in a
        batch (None or 0, the default: batches bounded by count only).
      model_copies: load this many copies per worker VM, shared by its
        processes (one per GPU); None or 0, the default: one per process.
      embeddings: also return each image's embedding (`Embedded`).
      embeddings_only: return embeddings only (implies `embeddings`).
    """
    super().__init__(model_copies=model_copies or None,
                     **batching_kwargs(min_batch_size, max_batch_size,
                                       max_batch_pixels))
    self._model_dir = model_dir
    self._embeddings = embeddings or embeddings_only
    self._predictions = not embeddings_only
    self._batches_split = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                       'batches_split')
    self._out_of_memory = beam.metrics.Metrics.counter(
        METRICS_NAMESPACE, 'batches_split_out_of_memory')

  def load_model(self):
    device, found = prepare_device(devices.list_gpus())
    classifier = self.load_classifier(device)
    sharing = (f'one of {self.model_copies()} copies shared by this '
               "worker's processes" if self.share_model_across_processes()
               else 'one copy per worker process')
    _LOGGER.info('Loaded the model %s on %s (%s). %s', self._model_dir,
                 device or 'the CPU', sharing, found)
    return classifier

  def load_classifier(self, device):
    """The classifier for `device` (tests load a fake one here)."""
    return load_classifier(self._model_dir, device, self._embeddings,
                           self._predictions)

  def run_inference(self, batch, model, inference_args=None):
    batch = list(batch)
    inferences = []
    for chunk in power_of_two_chunks(batch):
      inferences.extend(predict_isolating_failures(
          model, chunk, on_split=self._batches_split.inc,
          on_out_of_memory=self._out_of_memory.inc))
    return [base.PredictionResult(example, inference, self._model_dir)
            for example, inference in zip(batch, inferences)]

  def get_num_bytes(self, batch):
    # The default pickles the batch just to measure it.
    return sum(len(image) for image in batch)

  def __repr__(self):
    return f'ImageClassifierHandler({self._model_dir!r})'


class KeyedImageHandler(base.KeyedModelHandler):
  """Beam's `KeyedModelHandler` for (key, encoded image) pairs, counting a
  batch's bytes as its images' bytes.

  Beam's own `get_num_bytes` pickles every batch's keys (the inputs'
  `items.Item`s) only to count their bytes for its `num_bytes` metric:
  0.4% of a 50,000-image run here (py-spy). The keys are the input's URI
  and fields, a small part of what a batch holds.
  """

  def get_num_bytes(self, batch):
    return sum(len(image) for _, image in batch)

