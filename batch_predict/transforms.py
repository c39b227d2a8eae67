"""The scoring pipeline's steps, as composite PTransforms.

  ListImages -> ClassifyImages (ReadAndCheck -> ScoreImages)
             -> WriteShards (predictions)   WriteShards (errors)
             -> PublishOutputs (both, once every shard is written)

(`--embeddings`: ScoreImages also yields each scored image's embedding
record, which `embeddings.WriteEmbeddings` writes into pieces in the same
stage, assembles into shards through the same WriteShards, and
PublishOutputs publishes with the others.)

(ReadAndCheck reads a group of inputs ahead on a thread of its own, while
the previous group goes through the model: `_ReadAheadFn`.)

Every input leaves as exactly one record: a prediction, or an error that
says what is wrong with it. Bad inputs are split off as early as possible
(entries that cannot be listed while listing, unreadable files while
reading, non-images and decompression bombs from their headers), so they
never reach a batch; the model handler isolates the rare image that passes
the header checks but still cannot be decoded.

Each per-element step (reading, the header check, turning the model's
output into a record) is a function that returns its result or raises an
`errors.UserError`, and one DoFn, `_PerElementFn`, turns that error into
the element's error record, with its `kind`, on the ERRORS output. Beam's
own `.with_exception_handling(exc_class=errors.UserError)` was measured
against it and not taken:
* Its dead-letter output carries `(element, (type, repr(error),
  traceback lines))`, not the error: the `kind` (and the printable `uri` a
  listing error carries) would have to be parsed back out of `repr`.
* It formats the whole traceback of every bad element, and wraps the DoFn
  in one whose every attribute lookup goes through a Python
  `__getattribute__`. Reading and header-checking 10,000 small PNGs (a
  tenth of them bad) took 1.06 s with it, 0.87 s with `_PerElementFn` and
  0.93 s with the two DoFns this replaced (medians of 11 alternating runs,
  Beam 2.77 DirectRunner in-process, 2 shared cores; noisy to +-0.2 s):
  about 15 us more per input, small beside the model's 500 us, but no gain.

The sink is written here rather than taken from Beam's
`WriteToText(num_shards=...)`:
* A record goes to the shard `crc32(uri) % NNNNN` (WriteToText deals
  records out round-robin), so which file holds an input depends on the
  inputs alone, and a retried write bundle rewrites the same staged file.
  Every shard is written even when empty (as WriteToText does too).
* WriteToText's finalisation (`FileBasedSink.pre_finalize`, Beam 2.77)
  first deletes every existing file that matches its output glob
  `PREFIX-errors-*-of-NNNNN.jsonl` (on gs:// a `*` crosses folders), then
  renames its temporary files with FileSystems' batch requests, which
  fake-gcs-server does not implement; and each sink is finalised on its
  own, so one output could be published without the other. Here both
  outputs are published together, by one step that runs after every
  shard of both is staged (`PublishOutputs`: the staged paths are
  collected with a combiner, as Beam's own finalisation collects its
  writers' results), with single-object requests on GCS, and it deletes
  only exact shard names of this prefix (`outputs.publish`).
* The same holds for `WriteToParquet` (a `FileBasedSink` like
  WriteToText: the same finalisation and batch renames) and for a CSV
  written with WriteToText's `header=`. So `--output_format=csv|parquet`
  shards go through this sink too, staged and published like JSON lines;
  only the encoding differs (`outputs.ShardFormat`: the `csv` module, and
  pyarrow's `ParquetWriter`, which WriteToParquet itself writes with).
"""

from concurrent import futures
import contextlib
import logging
import math
import time

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import fileio
from apache_beam.ml.inference import base
from apache_beam.transforms import window
import numpy as np

from batch_predict import image_header
from batch_predict import inputs
from batch_predict import items
from batch_predict import manifests
from batch_predict import model_handler
from batch_predict import outputs
from batch_predict import tfrecords
from trainer import errors
from trainer import storage

NAMESPACE = model_handler.METRICS_NAMESPACE
# ScoreImages' third output with evaluate=True: (uri, label, probabilities).
SCORED = 'scored'
# Its last with embeddings=True: `outputs.embedding_record`s.
EMBEDDINGS = outputs.EMBEDDINGS

_LOGGER = logging.getLogger(__name__)
_NON_FINITE_MESSAGE = (
    'the model returned NaN or infinite probabilities for this image: the '
    'model is broken (it probably trained to NaN). Retrain it, or re-export '
    'it from a good checkpoint, then score again.')
_NON_FINITE_EMBEDDING_MESSAGE = (
    'the model returned NaN or infinite embedding values for this image: the '
    'model is broken (it probably trained to NaN). Retrain it, or re-export '
    'it from a good checkpoint, then embed again.')


def _error_record(error, item=None):
  """The error record of a UserError about one input.

  Args:
    error: an `errors.UserError` (its `uri`, if it has one, wins: a listing
      error's is the printable one).
    item: the input's `items.Item` (its URI and the fields it came with).
  """
  uri = getattr(error, 'uri', None) or (item.uri if item else None)
  return outputs.error_record(uri, error.kind, str(error),
                              item.fields if item else (),
                              item.label if item else None)


class _PerElementFn(beam.DoFn):
  """element -> `apply(element)`, or its error record on the ERRORS output.

  The one place where an `errors.UserError` raised for one element (by
  reading, the header check, the model's output) becomes that element's
  error record; anything else raised fails the bundle, as a bug or a
  passing failure should (the runner retries it). Elements are
  `items.Item`s, or (Item, value) pairs. Subclasses define `apply`, and
  `on_error` to count what failed.
  """

  def apply(self, element):
    raise NotImplementedError

  def on_error(self, error):
    del error  # Nothing to count by default.

  def process(self, element):
    yield self.output(element)

  def output(self, element):
    """The element's one output: `apply(element)`, or its error record
    (tagged ERRORS)."""
    try:
      return self.apply(element)
    except errors.UserError as e:
      self.on_error(e)
      item = element if isinstance(element, items.Item) else element[0]
      return beam.pvalue.TaggedOutput(outputs.ERRORS, _error_record(e, item))


def _entries_on_line(line, list_folder):
  try:
    uri = inputs.parse_uri_line(line, list_folder)
  except errors.UserError as e:
    yield _error_record(e)
    return
  if uri is not None:
    yield items.Item(uri)


def _list_local(pattern):
  for entry in inputs.list_local(pattern):
    if isinstance(entry, errors.UserError):
      yield _error_record(entry)
    else:
      yield items.Item(entry)


def _manifest_rows(element, manifest):
  offset, line = element
  try:
    item = manifests.parse_row(manifest, offset, line)
  except errors.UserError as e:
    yield outputs.error_record(e.uri, e.kind, str(e), getattr(e, 'fields', ()))
    return
  if item is not None:
    yield item


class _ReadShardFn(beam.DoFn):
  """A TFRecord shard's path -> an Item (with its bytes) per record, or the
  error record of a bad one."""

  def __init__(self):
    super().__init__()
    self._example_class = None

  def setup(self):
    # TensorFlow's protobuf class, imported where shards are read only.
    from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
    self._example_class = example_pb2.Example

  def process(self, shard):
    for entry in tfrecords.shard_items(shard, self._example_class):
      if isinstance(entry, errors.UserError):
        yield outputs.error_record(entry.uri, entry.kind, str(entry), (),
                                   getattr(entry, 'label', None))
      else:
        yield entry


def _with_folder_label(element, root):
  if not isinstance(element, items.Item):
    return element  # An error record from the listing.
  return element._replace(label=inputs.folder_label(element.uri, root))


class ListImages(beam.PTransform):
  """PBegin -> an `items.Item` for every input named by `--input`: a file
  of a glob or folder, a line of a URI list, a manifest's row
  (manifests.py), a TFRecord's record (tfrecords.py, with its bytes).

  An entry that cannot be carried on as a URI (a name that is not UTF-8, a
  folder that cannot be listed, a symlink loop) arrives as its error record
  (a dict) instead; ClassifyImages passes those on to the errors.
  """

  def __init__(self, source, labels_from_folders=False, manifest=None):
    """Lists an input.

    Args:
      source: an `inputs.InputSource`.
      labels_from_folders: label each item with its class folder's name
        (`inputs.folder_label`).
      manifest: the `manifests.Manifest` of a manifest source.
    """
    super().__init__()
    self._source = source
    self._labels_from_folders = labels_from_folders
    self._manifest = manifest

  def expand(self, pbegin):
    listed = self._list(pbegin)
    if not self._labels_from_folders:
      return listed
    return listed | 'LabelFromFolder' >> beam.Map(
        _with_folder_label, inputs.folder_root(self._source))

  def _list(self, pbegin):
    kind, path = self._source
    if kind == inputs.GLOB and storage.is_gcs(path):
      return (pbegin
              | 'MatchFiles' >> fileio.MatchFiles(path)
              | 'TakePaths' >> beam.Map(
                  lambda metadata: items.Item(metadata.path)))
    if kind == inputs.GLOB:
      # Walked lazily by one worker; ClassifyImages redistributes the
      # entries.
      return (pbegin
              | 'Pattern' >> beam.Create([path])
              | 'WalkFolders' >> beam.FlatMap(_list_local))
    if kind == inputs.URI_LIST:
      # Lines as bytes, split on '\n' only: a line that is not UTF-8 is one
      # error record, not a failed read of the whole list.
      return (pbegin
              | 'ReadList' >> beam.io.ReadFromText(path,
                                                   coder=coders.BytesCoder())
              | 'ParseLines' >> beam.FlatMap(_entries_on_line,
                                             storage.dirname(path)))
    if kind == inputs.SINGLE_FILE:
      return pbegin | 'OneFile' >> beam.Create([items.Item(path)])
    if kind == inputs.TFRECORD_SHARDS:
      # One shard per worker at a time; ClassifyImages then spreads the
      # records.
      return (pbegin
              | 'MatchShards' >> fileio.MatchFiles(path)
              | 'ShardPaths' >> beam.Map(lambda metadata: metadata.path)
              | 'SpreadShards' >> beam.Reshuffle()
              | 'ReadShards' >> beam.ParDo(_ReadShardFn()))
    if kind in inputs.MANIFEST_KINDS:
      # Split at byte offsets and read in parallel, as ReadFromText reads.
      return (pbegin
              | 'ReadManifest' >> beam.io.Read(
                  manifests.ManifestSource(path))
              | 'ParseRows' >> beam.FlatMap(_manifest_rows, self._manifest))
    raise ValueError(f'Unknown input kind {kind!r}.')


def _full_size(image_format, width, height):
  del image_format  # Every format decodes at full size.
  return width, height


class _CheckImageFn(_PerElementFn):
  """Item -> itself, with its decoded pixel count, if the model can score
  it; else an error record."""

  def __init__(self, max_image_pixels, decoded_size=None):
    super().__init__()
    self._max_image_pixels = max_image_pixels
    self._decoded_size = decoded_size or _full_size

  def apply(self, element):
    return element._replace(pixels=self.pixels(element.data))

  def pixels(self, data):
    """The pixels an image decodes to, from its header.

    Raises:
      errors.UserError: if the model cannot score it (not an image, a
        decompression bomb, ...).
    """
    info = image_header.check_image(data, self._max_image_pixels)
    width, height = self._decoded_size(info.format, info.width, info.height)
    return width * height


class _ReadCheckAndKeyFn(_PerElementFn):
  """Item (or URI, or an Item's plain tuple) -> (its key, its bytes) for
  RunInference, or an error record: reading, the header check
  (`_CheckImageFn`) and ScoreImages' keying in one step (see
  ClassifyImages). `_ReadAheadFn` runs it.

  An error record from the listing goes straight to the errors output; an
  item that already holds its bytes (a TFRecord's) is not read again.
  """

  def __init__(self, max_file_bytes, max_image_pixels, decoded_size=None):
    super().__init__()
    self._max_file_bytes = max_file_bytes
    self._check = _CheckImageFn(max_image_pixels, decoded_size)
    # Bytes read so far: `_ReadAheadFn` runs this on its own thread, where a
    # Beam counter would count nothing (metrics belong to the thread that
    # runs the step), and adds them to its counter on the step's thread.
    self.bytes_read = 0

  def output(self, element):
    if isinstance(element, dict):  # An error record from the listing.
      return beam.pvalue.TaggedOutput(outputs.ERRORS, element)
    return super().output(items.as_item(element))

  def apply(self, element):
    data = element.data
    if data is None:
      data = inputs.read_image_file(element.uri, self._max_file_bytes)
      self.bytes_read += len(data)
    # The key: the item without its bytes, with its pixels (one copy).
    return element._replace(data=None,
                            pixels=self._check.pixels(data)), data


class _ReadAheadFn(beam.DoFn):
  """Items (or URIs, ...) -> (key, bytes) pairs for RunInference, or error
  records: `_ReadCheckAndKeyFn` for a group of inputs at a time, on one
  thread of its own, while the step's thread carries the previous group on
  through the model.

  Why a thread of its own: the whole scoring stage (reading, batching, the
  model, the records) is one fused stage that runs on one thread, so every
  image's read and header check waited for the model and the model for
  them. TensorFlow releases the GIL while it computes a batch (it used 1.6
  of the 2 cores here), and this thread reads the next group then; a gs://
  read's wait overlaps the model too. Beam has no read-ahead of its own
  (`fileio.ReadMatches` reads on the step's thread, at the element's turn),
  and RunInference calls the model on the step's thread. Measured here
  (AMD EPYC, 2 cores), the scoring command on 50,000 tiny PNGs: 27.3 s
  against 29.0 s reading on the step's thread, the code otherwise the
  same (medians of 4 alternating runs). At the lowest CPU priority
  (SCHED_IDLE) the thread measured 26.8 s: within the noise, and such a
  thread could wait long on a worker whose cores are all busy.

  A group is `group_images` inputs, or fewer once it holds `group_bytes`
  of file bytes (so a group of large photos is small): at most two groups'
  bytes are held here at once, one being read and one being handed on. An
  input's error record (a file it cannot read, a header it refuses) is
  made on the reading thread as `_PerElementFn` makes it; anything else
  raised there (a failure that is not the input's, which the runner should
  retry) fails the bundle, on the step's thread. Outputs are in the
  global window, the scoring pipeline's only one (`expand` of
  ClassifyImages checks).
  """

  def __init__(self, max_file_bytes, max_image_pixels, decoded_size=None,
               group_images=64, group_bytes=16 << 20):
    super().__init__()
    self._read = _ReadCheckAndKeyFn(max_file_bytes, max_image_pixels,
                                    decoded_size)
    self._group_images = group_images
    self._group_bytes = group_bytes
    self._bytes_read = beam.metrics.Metrics.counter(NAMESPACE, 'bytes_read')
    self._executor = None
    self._waiting = []  # Inputs not yet handed to the reading thread.
    self._reading = None  # The future of the group being read.

  def setup(self):
    self._executor = futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix='read-ahead')

  def start_bundle(self):
    self._waiting = []
    self._reading = None  # A failed bundle's group: its outputs are dropped.

  def process(self, element):
    self._waiting.append(element)
    if len(self._waiting) >= self._group_images:
      yield from self._read_next_group()

  def finish_bundle(self):
    while self._waiting or self._reading is not None:
      for output in self._read_next_group():
        if isinstance(output, beam.pvalue.TaggedOutput):
          yield beam.pvalue.TaggedOutput(
              output.tag, window.GlobalWindows.windowed_value(output.value))
        else:
          yield window.GlobalWindows.windowed_value(output)

  def teardown(self):
    if self._executor is not None:
      self._executor.shutdown(wait=True)

  def _read_next_group(self):
    """Hands the waiting inputs to the reading thread; yields the outputs of
    the group it read before."""
    previous, self._reading = self._reading, None
    if self._waiting:
      group, self._waiting = self._waiting, []
      self._reading = self._executor.submit(self._read_group, group)
    if previous is None:
      return
    outputs_, unread, bytes_read = previous.result()
    self._bytes_read.inc(bytes_read)
    # A group cut short by its bytes: the rest is read with the next group.
    self._waiting[:0] = unread
    yield from outputs_

  def _read_group(self, group):
    """On the reading thread: (outputs, inputs left unread, bytes read)."""
    read = self._read
    read.bytes_read = 0
    results = []
    for index, element in enumerate(group):
      if read.bytes_read >= self._group_bytes:
        return results, group[index:], read.bytes_read
      results.append(read.output(element))
    return results, [], read.bytes_read


class _ProgressLog:
  """Logs a worker's progress at its first image, then at most once per
  `interval_secs` (the first line says when scoring started: the scale
  benchmark times start-up by it)."""

  def __init__(self, interval_secs):
    self._interval_secs = interval_secs
    self._start = time.monotonic()
    self._last = None
    self.scored = 0
    self.failed = 0

  def record(self, scored, failed):
    self.scored += scored
    self.failed += failed
    now = time.monotonic()
    if self._last is not None and now - self._last < self._interval_secs:
      return
    first = self._last is None
    self._last = now
    if first and self.scored:  # A rate over one image says nothing.
      _LOGGER.info('This worker has scored its first image, %.1f s after it '
                   'started; its progress follows every %g s.',
                   now - self._start, self._interval_secs)
      return
    rate = self.scored / max(now - self._start, 1e-9)
    _LOGGER.info('This worker has scored %d images (%d could not be decoded) '
                 'in %.0f s: %.0f images/s.', self.scored, self.failed,
                 now - self._start, rate)


class _ToRecordsFn(_PerElementFn):
  """(Item key, PredictionResult) -> a predictions record, or an errors
  record."""

  def __init__(self, labels, top_k, progress_interval_secs, evaluate=False):
    super().__init__()
    self._labels = tuple(labels)
    self._top_k = top_k
    self._progress_interval_secs = progress_interval_secs
    self._evaluate = evaluate
    self._images_scored = beam.metrics.Metrics.counter(NAMESPACE,
                                                       'images_scored')
    self._progress = None
    # Images scored in this bundle, counted at its end: a Beam counter's
    # `inc` looks up the thread's metrics container, 2 us an image.
    self._scored = 0

  def process(self, element):
    output = self.output(element)
    yield output
    if self._evaluate and not isinstance(output, beam.pvalue.TaggedOutput):
      # A scored image, for --evaluate: (uri, true label, probabilities).
      item, result = element
      yield beam.pvalue.TaggedOutput(SCORED, (
          item.uri, item.label, np.asarray(result.inference, np.float32)))

  def setup(self):
    self._progress = _ProgressLog(self._progress_interval_secs)

  def start_bundle(self):
    self._scored = 0

  def finish_bundle(self):
    self._images_scored.inc(self._scored)
    self._scored = 0

  def scored_one(self):
    self._scored += 1
    self._progress.record(1, 0)

  def on_error(self, error):
    del error  # Every error here is an image the model could not score.
    self._progress.record(0, 1)

  def apply(self, element):
    item, result = element
    inference = result.inference
    if isinstance(inference, model_handler.DecodeFailure):
      raise errors.UserError(inference.message, inference.kind)
    if len(inference) != len(self._labels):
      raise ValueError(
          f'The model returned {len(inference)} probabilities but its '
          f'metadata lists {len(self._labels)} labels: the artifact is '
          'inconsistent; re-export it.')
    # Summed, a NaN or infinity anywhere stays one: one check a row, on
    # Python floats (numpy's per-call cost is most of the time for a row).
    values = np.asarray(inference).tolist()
    if not math.isfinite(sum(values)):
      raise errors.UserError(_NON_FINITE_MESSAGE, errors.NON_FINITE_OUTPUT)
    self.scored_one()
    return outputs.prediction_record(item.uri, values, self._labels,
                                     self._top_k, item.fields, item.label)


class _ToRecordsAndEmbeddingsFn(_ToRecordsFn):
  """As `_ToRecordsFn`, for a handler that embeds (its inferences are
  `model_handler.Embedded`s): each scored image also has its embedding
  record on the EMBEDDINGS output; with `embeddings_only`, that record is
  the only output of a scored image (no prediction).

  An image gets its embedding record only when it is scored, so every
  scored image has exactly one and no image is in both the embeddings and
  the errors; an embedding that is not finite is the image's error record.
  """

  def __init__(self, labels, top_k, progress_interval_secs, evaluate=False,
               embeddings_only=False):
    super().__init__(labels, top_k, progress_interval_secs, evaluate)
    self._embeddings_only = embeddings_only

  def process(self, element):
    item, result = element
    inference = result.inference
    if not isinstance(inference, model_handler.Embedded):
      yield from super().process(element)  # A DecodeFailure: its error.
      return
    if not np.all(np.isfinite(inference.embedding)):
      failure = model_handler.DecodeFailure(errors.NON_FINITE_OUTPUT,
                                            _NON_FINITE_EMBEDDING_MESSAGE)
      yield from super().process((item, result._replace(inference=failure)))
      return
    record = outputs.embedding_record(item.uri, inference.embedding,
                                      item.label)
    if self._embeddings_only:
      self.scored_one()
      yield beam.pvalue.TaggedOutput(EMBEDDINGS, record)
      return
    for output in super().process(
        (item, result._replace(inference=inference.probabilities))):
      yield output
      if not isinstance(output, beam.pvalue.TaggedOutput):  # Scored.
        yield beam.pvalue.TaggedOutput(EMBEDDINGS, record)


class ScoreImages(beam.PTransform):
  """(item without its bytes, bytes) pairs (`_ReadCheckAndKeyFn`'s) ->
  prediction records and error records, with RunInference. The item keys
  each image, so its URI, label and fields stay with its result through
  batching.

  Returns a pair of PCollections: (predictions, errors); with
  `evaluate=True` a triple, (predictions, errors, scored): the SCORED tuples
  `batch_predict.evaluation.Evaluate` counts; with `embeddings=True` (a
  handler that embeds) the embedding records last.
  """

  def __init__(self, handler, labels, top_k, progress_interval_secs=30,
               evaluate=False, embeddings=False, embeddings_only=False):
    """Sets up scoring.

    Args:
      handler: an `ImageClassifierHandler` (or any handler whose inferences
        are probability rows or `DecodeFailure`s).
      labels: the class names, in the model's output order.
      top_k: how many classes each prediction lists.
      progress_interval_secs: how often each worker logs its progress.
      evaluate: also output (uri, true label, probabilities) per scored
        image.
      embeddings: also output each scored image's embedding record (the
        handler returns `model_handler.Embedded`s).
      embeddings_only: output no predictions (the handler returns
        embeddings only).
    """
    super().__init__()
    self._handler = handler
    self._labels = labels
    self._top_k = top_k
    self._progress_interval_secs = progress_interval_secs
    self._evaluate = evaluate
    self._embeddings = embeddings or embeddings_only
    self._embeddings_only = embeddings_only

  def _to_records_fn(self):
    if not self._embeddings:
      return _ToRecordsFn(self._labels, self._top_k,
                          self._progress_interval_secs, self._evaluate)
    return _ToRecordsAndEmbeddingsFn(
        self._labels, self._top_k, self._progress_interval_secs,
        self._evaluate, self._embeddings_only)

  def expand(self, images):
    results = (
        images
        | 'RunInference' >> base.RunInference(
            model_handler.KeyedImageHandler(self._handler))
        | 'ToRecords' >> beam.ParDo(self._to_records_fn())
        .with_outputs(outputs.ERRORS, SCORED, EMBEDDINGS, main='predictions'))
    returned = (results.predictions, results[outputs.ERRORS])
    if self._evaluate:
      returned += (results[SCORED],)
    if self._embeddings:
      returned += (results[EMBEDDINGS],)
    return returned


class _CountErrorsFn(beam.DoFn):
  """Counts error records by kind (counters `errors_KIND`), passing them on."""

  def __init__(self):
    super().__init__()
    self._counters = {kind: beam.metrics.Metrics.counter(NAMESPACE,
                                                         f'errors_{kind}')
                      for kind in errors.SCORING_KINDS}
    self._other = beam.metrics.Metrics.counter(NAMESPACE, 'errors_other')

  def process(self, record):
    self._counters.get(record['kind'], self._other).inc()
    yield record


class ClassifyImages(beam.PTransform):
  """Items (or URIs) -> (predictions, errors): every input in exactly one of
  the two. With `evaluate=True`, (predictions, errors, scored); with
  `embeddings=True`, the embedding records last: see ScoreImages. (With
  `embeddings_only`, every input is in exactly one of embeddings, errors.)

  `redistribute=False` reads the inputs where they were listed, for a
  runner with one worker (DirectRunner in-memory, the scorer's default):
  there the Reshuffle that spreads them over workers spreads nothing, cost
  about 10 us an input, and held back the first read until every input was
  listed and shuffled.
  """

  def __init__(self, handler, labels, *, top_k, max_file_bytes,
               max_image_pixels, progress_interval_secs=30, evaluate=False,
               decoded_size=None, embeddings=False, embeddings_only=False,
               redistribute=True):
    super().__init__()
    self._redistribute = redistribute
    self._handler = handler
    self._labels = labels
    self._top_k = top_k
    self._max_file_bytes = max_file_bytes
    self._max_image_pixels = max_image_pixels
    self._progress_interval_secs = progress_interval_secs
    self._evaluate = evaluate
    self._decoded_size = decoded_size
    self._embeddings = embeddings
    self._embeddings_only = embeddings_only

  def expand(self, uris):
    if not isinstance(uris.windowing.windowfn, window.GlobalWindows):
      # _ReadAheadFn's outputs are in the global window.
      raise ValueError('ClassifyImages scores a PCollection in the global '
                       'window (a batch pipeline), not '
                       f'{uris.windowing.windowfn!r}.')
    if self._redistribute:
      uris = (uris
              # Listing happens in one place (one glob, or one list file
              # read in a few splits); redistributing the URIs lets every
              # worker read. Items cross it as plain tuples (items.as_tuple
              # says why).
              | 'AsTuples' >> beam.Map(items.as_tuple)
              | 'Redistribute' >> beam.Reshuffle())
    # Reading, the header check and keying for RunInference are one step
    # (as three, Beam dispatched every image through each: 2-5% more CPU
    # for 50,000 tiny PNGs, measured here), run a group ahead on a thread
    # of its own while the model scores (_ReadAheadFn says why).
    results = uris | 'ReadAndCheck' >> beam.ParDo(_ReadAheadFn(
        self._max_file_bytes, self._max_image_pixels,
        self._decoded_size)).with_outputs(outputs.ERRORS, main='images')
    scored = results.images | 'ScoreImages' >> ScoreImages(
        self._handler, self._labels, self._top_k,
        self._progress_interval_secs, self._evaluate, self._embeddings,
        self._embeddings_only)
    predictions, decode_errors = scored[:2]
    error_records = ((results[outputs.ERRORS], decode_errors)
                     | 'MergeErrors' >> beam.Flatten()
                     | 'CountErrors' >> beam.ParDo(_CountErrorsFn()))
    return (predictions, error_records) + tuple(scored[2:])


# --------------------------------------------------------------------------
# The sink: shards staged, then published together (see the module's
# docstring for why it is not WriteToText).

# The leases this process holds, by path, so that a publishing step running
# in this process can check that its lease was not taken over. Workers of a
# remote runner do not see it; there the launcher holds the lease.
_LEASES_HELD = {}


@contextlib.contextmanager
def holding_lease(lease):
  """Lets in-process publishing steps check `lease` (a `trainer.lease.Lease`)
  before they publish."""
  _LEASES_HELD[lease.path] = lease
  try:
    yield lease
  finally:
    _LEASES_HELD.pop(lease.path, None)


class _WriteShardFn(beam.DoFn):
  """(shard index, rows) -> writes the whole shard into the staging folder;
  yields its path."""

  def __init__(self, prefix, shard_format, num_shards, run_id):
    super().__init__()
    self._prefix = prefix
    self._format = shard_format
    self._num_shards = num_shards
    self._staging = outputs.staging_folder(prefix, run_id)

  def process(self, element, *side_inputs):
    index, rows = element
    final = outputs.shard_path(self._prefix, self._format.name, index,
                               self._num_shards, self._format.output_format)
    path = storage.join(self._staging, storage.basename(final))
    # Written to a temporary file and moved (or uploaded) whole, so a
    # retried bundle or a killed worker never leaves half a shard. None is
    # the placeholder row that makes empty shards.
    with storage.open_write(path) as f:
      self._format.write(f, rows, *side_inputs)
    yield path


class WriteShards(beam.PTransform):
  """Records -> every shard of one output, in the run's staging folder.

  Returns the PCollection of the staged paths (`--num_shards` of them).
  """

  def __init__(self, prefix, name, num_shards, run_id,
               output_format=outputs.JSONL, field_names=(), shard_format=None,
               side_inputs=(), keyed=False):
    """Stages one output.

    Args:
      prefix: the `--output` prefix.
      name: outputs.PREDICTIONS or outputs.ERRORS (or the `name` of
        `shard_format`).
      num_shards: shards per output.
      run_id: names the staging folder.
      output_format: one of outputs.OUTPUT_FORMATS.
      field_names: the manifest's columns (CSV and Parquet columns).
      shard_format: how to encode and write the shards (with `name`,
        `output_format`, `encode`, `write`), instead of
        `outputs.ShardFormat` (the embeddings': embeddings.ShardFormat).
      side_inputs: Beam side inputs (`beam.pvalue.AsSingleton`, ...) whose
        values `shard_format.write` takes after the rows.
      keyed: the input is already (shard index, row) pairs (the embeddings'
        pieces), not records to encode.
    """
    super().__init__()
    self._prefix = prefix
    self._format = shard_format or outputs.ShardFormat(output_format, name,
                                                       field_names)
    self._num_shards = num_shards
    self._run_id = run_id
    self._side_inputs = tuple(side_inputs)
    self._keyed = keyed

  def expand(self, records):
    num_shards = self._num_shards
    if self._keyed:
      keyed = records
    else:
      encode = self._format.encode
      # Rows are encoded here, in parallel, before the shuffle (which then
      # moves compact rows rather than dicts).
      keyed = records | 'KeyByShard' >> beam.Map(
          lambda record: (outputs.shard_of(record['uri'], num_shards),
                          encode(record)))
    every_shard = records.pipeline | 'EveryShard' >> beam.Create(
        [(index, None) for index in range(num_shards)])
    return ((keyed, every_shard)
            | 'AddEmptyShards' >> beam.Flatten()
            | 'GroupByShard' >> beam.GroupByKey()
            | 'WriteShards' >> beam.ParDo(
                _WriteShardFn(self._prefix, self._format, num_shards,
                              self._run_id), *self._side_inputs))


class _PublishFn(beam.DoFn):
  """[every staged path] -> moves them to their final names; yields those."""

  def __init__(self, prefix, run_id, names, num_shards,
               output_format=outputs.JSONL, files=(), stale_names=None):
    super().__init__()
    self._prefix = prefix
    self._run_id = run_id
    self._names = tuple(names)
    self._num_shards = num_shards
    self._output_format = output_format
    self._files = tuple(files)
    self._stale_names = stale_names

  def process(self, staged_paths):
    held = _LEASES_HELD.get(outputs.lease_path(self._prefix))
    if held is not None:
      held.check()  # Taken over by another scorer: publish nothing.
    yield from outputs.publish(self._prefix, self._run_id, staged_paths,
                               self._names, self._num_shards,
                               self._output_format, self._files,
                               self._stale_names)


class PublishOutputs(beam.PTransform):
  """Staged shard paths (a PCollection per output) -> the published paths.

  The paths are collected into one list, so publishing runs once, after
  every shard of every output is staged; `outputs.publish` then moves them
  into place and removes stale shards of this prefix and the staging folder.
  `files` are the single files (`outputs.EVALUATION_FILES`) published with
  them when staged, removed when not. Earlier runs' shards of
  `stale_names` (default: `names`) are removed.
  """

  def __init__(self, prefix, run_id, names, num_shards,
               output_format=outputs.JSONL, files=(), stale_names=None):
    super().__init__()
    self._prefix = prefix
    self._run_id = run_id
    self._names = tuple(names)
    self._num_shards = num_shards
    self._output_format = output_format
    self._files = tuple(files)
    self._stale_names = tuple(stale_names) if stale_names else None

  def expand(self, staged):
    return (staged
            | 'MergeStaged' >> beam.Flatten()
            | 'CollectStaged' >> beam.combiners.ToList()
            | 'Publish' >> beam.ParDo(_PublishFn(
                self._prefix, self._run_id, self._names, self._num_shards,
                self._output_format, self._files, self._stale_names)))


class WriteRecords(beam.PTransform):
  """Records -> `PREFIX-NAME-SSSSS-of-NNNNN.FORMAT` files of one output.

  Stages every shard, then publishes them (`WriteShards`, `PublishOutputs`).
  The scoring pipeline stages both outputs and publishes them together;
  this is the same for one output. Returns the published paths.
  """

  def __init__(self, prefix, name, num_shards, run_id=None,
               output_format=outputs.JSONL, field_names=()):
    super().__init__()
    self._prefix = prefix
    self._name = name
    self._num_shards = num_shards
    self._run_id = run_id or outputs.new_run_id()
    self._output_format = output_format
    self._field_names = tuple(field_names)

  def expand(self, records):
    staged = records | 'Stage' >> WriteShards(
        self._prefix, self._name, self._num_shards, self._run_id,
        self._output_format, self._field_names)
    return (staged,) | 'Publish' >> PublishOutputs(
        self._prefix, self._run_id, (self._name,), self._num_shards,
        self._output_format)
