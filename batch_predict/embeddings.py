"""`--embeddings`: the embedding cache a scoring run writes (Contract 4).

  embedding records -> WriteEmbeddings -> PREFIX-embeddings-SSSSS-of-NNNNN.tfrecord.gz
                                          PREFIX-embeddings.json

The names, fields and description are `trainer.embedding_cache`'s (which
the trainer reads them with); this module writes them:

* The model handler calls the artifact's `serving_embeddings` signature on
  the same batches as `serving_default` (model_handler.py), and
  `transforms.ScoreImages` gives every image it scores exactly one
  embedding record (`outputs.embedding_record`: uri, vector, label name).
* The Examples are written where the records are made: `_WritePiecesFn`
  follows the scoring in the same stage, so no vector crosses a stage
  boundary. (Sending the records to their shards through a shuffle, as the
  predictions go, cost a quarter of an embedding run in Beam's in-memory
  runner, which joins a stage's whole input into one bytes object and
  copies it into a protobuf: 250 MB for 20,000 cnn_bn vectors.) Each
  bundle writes at most one piece per shard (`crc32(uri) % NNNNN`, as the
  other outputs) into the staging folder, and yields only each piece's
  path, its count, and its label names. An Example holds `uri` bytes,
  `embedding` float list, and for a labelled image `label` int64 = the
  index of its name in `label_names`, and `label_name` bytes.
* `SummarizeFn`, a Beam combiner (so it merges across workers and
  processes), sums the pieces' counts and label names. Each shard is then
  assembled from its pieces (`ShardFormat`, through the scorer's own sink:
  `transforms.WriteShards` and `transforms.PublishOutputs`, so the shards
  are staged and published by the same rules as the predictions). When
  the label names were known before the run (class folders) or there are
  none, that is a byte copy: gzip (RFC 1952) allows any number of members,
  and TensorFlow's and Python's gzip readers read them as one stream.
  Otherwise (a manifest's or a TFRecord's labels, met only while scoring)
  the indices are rewritten from the label names. Beam's `WriteToTFRecord`
  is a `FileBasedSink`, with the finalisation transforms.py explains it
  does not use.
* The label names: with `--labels_from_folders` the sorted class folder
  names (the trainer's `image_folder` order; `options.py` lists them
  before the run for a folder input), with any folder names met that were
  not listed; for a manifest's `label` column or a TFRecord's label, the
  sorted distinct labels of the embedded images, numerically when every one
  is an integer (so a TFRecord's `image/class/label` k keeps index k when
  every class occurs). Unlabelled images have no `label` fields.
* The framing and gzip are TensorFlow's `TFRecordWriter`'s (deflate's
  run-length strategy, below), written to local temporary files
  (TensorFlow's writer takes a path, and cannot reach gs:// through
  `storage`, which stages and moves files), in gzip members of
  `_MEMBER_RECORDS` records compressed on `_WRITER_THREADS` threads while
  the model scores the next images (the writer and the model's calls
  release the GIL). A piece is appended to member by member, with no file
  left open between members (`--num_shards` may be in the thousands); on
  gs:// it is uploaded whole when its bundle ends. On Dataflow, a bundle
  of few images writes small pieces (one object per shard it touches),
  which the assembly concatenates.
* `PREFIX-embeddings.json` (`embedding_cache.describe`) is staged once the
  count is known and published by the same step, after the shards.

TensorFlow (its protobuf and writer) is imported in the workers' steps
only, as in transforms.py.
"""

import collections
from concurrent import futures
import itertools
import os
import shutil
import tempfile
import uuid

import apache_beam as beam
from apache_beam.transforms import window
import numpy as np

from batch_predict import outputs
from batch_predict import transforms
from trainer import embedding_cache
from trainer import storage


# zlib's Z_RLE (zlib.h; Python's zlib module does not name it).
_Z_RLE = 3
# A shard's gzip members: records per member, threads compressing them.
_MEMBER_RECORDS = 256
_WRITER_THREADS = max(1, min(4, len(os.sched_getaffinity(0))))


def sorted_label_names(names, numeric=False):
  """Label names in cache order (see the module's docstring)."""
  names = set(names)
  if numeric and names and all(_is_integer(name) for name in names):
    return tuple(sorted(names, key=int))
  return tuple(sorted(names))


def _is_integer(name):
  try:
    int(name)
  except ValueError:
    return False
  return True


class SummarizeFn(beam.CombineFn):
  """The pieces' summaries (`_WritePiecesFn`: how many records, the label
  names met, how many records have no label) -> the run's (count, label
  names in cache order, how many records have no label)."""

  def __init__(self, known_label_names=(), numeric=False):
    """Args:
      known_label_names: the names listed before the run (class folders).
      numeric: sort integer names as numbers (not folder labels).
    """
    super().__init__()
    self._known = tuple(known_label_names)
    self._numeric = numeric

  def create_accumulator(self):
    return 0, set(), 0

  def add_input(self, accumulator, piece):
    count, names, unlabelled = accumulator
    records, met, without = piece
    names.update(met)
    return count + records, names, unlabelled + without

  def merge_accumulators(self, accumulators):
    total, merged, unlabelled = 0, set(), 0
    for count, names, without in accumulators:
      total += count
      merged |= names
      unlabelled += without
    return total, merged, unlabelled

  def extract_output(self, accumulator):
    count, names, unlabelled = accumulator
    return (count, sorted_label_names(names | set(self._known), self._numeric),
            unlabelled)


def packed_floats(vector):
  """A `FloatList`'s wire bytes: its packed field `value` (field 1, length-
  delimited), little-endian float32s (`vector`: an array, or its float32
  bytes).

  Parsed with protobuf's own `MergeFromString`, it fills the list with the
  same values and serializes to the same bytes as `value.extend(
  vector.tolist())`, which costs a Python float per value: 8 us a cnn_bn
  embedding (3,136 floats) against 131 (measured here; a tenth of an
  embedding run).
  """
  data = (vector if isinstance(vector, bytes)  # Already float32 bytes.
          else np.asarray(vector, '<f4').tobytes())
  size, length = len(data), bytearray()
  while size > 0x7f:  # The length as a base-128 varint.
    length.append((size & 0x7f) | 0x80)
    size >>= 7
  length.append(size)
  return b'\x0a' + bytes(length) + data


def to_example(row, label_index, example_class):
  """A shard's row -> its serialized `tf.train.Example`.

  Args:
    row: (uri, float32 bytes of the vector, label name or None), from
      `ShardFormat.encode`.
    label_index: {label name: its index in the cache's label_names}.
    example_class: TensorFlow's `Example` protobuf class.
  """
  uri, vector, label = row
  example = example_class()
  features = example.features.feature
  features[embedding_cache.URI_FEATURE].bytes_list.value.append(
      uri.encode('utf-8'))
  features[embedding_cache.EMBEDDING_FEATURE].float_list.MergeFromString(
      packed_floats(vector))
  if label is not None:
    features[embedding_cache.LABEL_FEATURE].int64_list.value.append(
        label_index[label])
    features[embedding_cache.LABEL_NAME_FEATURE].bytes_list.value.append(
        label.encode('utf-8'))
  return example.SerializeToString()


class _UnlistedIndex(dict):
  """{label name: index in the names listed before the run}; a name that
  was not listed gets -1, which the shard's assembly rewrites
  (`ShardFormat.write`: the listed names are then not the cache's)."""

  def __missing__(self, name):
    return -1


class _Members:
  """Gzip members compressed on `pool`'s threads, handed in order to
  `append(tag, member path)` once done, with at most 2 per thread pending
  (so the records waiting for compression stay bounded)."""

  def __init__(self, pool, folder, append):
    self._pool = pool
    self._folder = folder
    self._append = append
    self._pending = collections.deque()  # (tag, member future), in order
    self._count = 0

  def submit(self, tag, examples):
    path = os.path.join(self._folder, str(self._count))
    self._count += 1
    self._pending.append((tag, self._pool.submit(_write_member, path,
                                                 examples)))
    while len(self._pending) > 2 * _WRITER_THREADS:
      tag, member = self._pending.popleft()
      self._append(tag, member.result())

  def finish(self):
    while self._pending:
      tag, member = self._pending.popleft()
      self._append(tag, member.result())

  def abandon(self):
    futures.wait([member for _, member in self._pending])
    self._pending.clear()


class _Pieces:
  """One bundle's pieces: its records' Examples, by shard, written as gzip
  members of at most `_MEMBER_RECORDS` records on `pool`'s threads while
  the bundle goes on (the model's calls and the writer both release the
  GIL). At most one piece per shard, appended to member by member without
  an open file per shard (`--num_shards` may be in the thousands)."""

  def __init__(self, staging, prefix, num_shards, pool):
    self._staging = staging
    self._prefix = prefix
    self._num_shards = num_shards
    self._id = uuid.uuid4().hex
    self._folder = tempfile.mkdtemp(prefix='embeddings-')
    self._buffers = {}  # shard -> Examples not yet in a member
    self._summaries = {}  # shard -> [records, label names met, unlabelled]
    self._members = _Members(pool, self._folder, self._append)
    self._made_staging = storage.is_gcs(staging)  # No folders on gs://.

  def piece_path(self, shard):
    """`STAGING/SHARD.tmp-BUNDLE`: a name `outputs.remove_staging_folders`
    removes, as a killed writer's temporary file."""
    name = storage.basename(outputs.shard_path(
        self._prefix, outputs.EMBEDDINGS, shard, self._num_shards))
    return storage.join(self._staging, f'{name}.tmp-{self._id}')

  def _local_piece(self, shard):
    """Where the piece grows: in the staging folder itself when that is
    local; else in the bundle's temporary folder, uploaded whole."""
    if storage.is_gcs(self._staging):
      return os.path.join(self._folder, f'piece-{shard}')
    return self.piece_path(shard)

  def add(self, shard, example, label):
    buffer = self._buffers.setdefault(shard, [])
    buffer.append(example)
    summary = self._summaries.setdefault(shard, [0, set(), 0])
    summary[0] += 1
    if label is None:
      summary[2] += 1
    else:
      summary[1].add(label)
    if len(buffer) >= _MEMBER_RECORDS:
      self._members.submit(shard, self._buffers.pop(shard))

  def _append(self, shard, member):
    if not self._made_staging:
      os.makedirs(self._staging, exist_ok=True)
      self._made_staging = True
    with open(self._local_piece(shard), 'ab') as f:
      _append_file(f, member)

  def finish(self):
    """Writes what is left; returns [(shard, (piece path, records, label
    names met, records without a label))], one per piece."""
    for shard in list(self._buffers):
      self._members.submit(shard, self._buffers.pop(shard))
    self._members.finish()
    if storage.is_gcs(self._staging):
      for shard in self._summaries:
        with storage.open_write(self.piece_path(shard)) as f:
          _append_file(f, self._local_piece(shard))
    shutil.rmtree(self._folder, ignore_errors=True)
    return [(shard, (self.piece_path(shard), count, tuple(sorted(names)),
                     unlabelled))
            for shard, (count, names, unlabelled) in sorted(
                self._summaries.items())]

  def abandon(self):
    """A bundle that failed: its members are dropped; its local pieces stay
    for the publishing step (or the next run) to remove."""
    self._members.abandon()
    shutil.rmtree(self._folder, ignore_errors=True)


class _WritePiecesFn(beam.DoFn):
  """Embedding records -> their Examples, written into pieces of the shards
  in the step that makes the records (the scoring stage: no vector crosses
  a stage boundary); yields (shard index, piece) for each piece a bundle
  wrote (`_Pieces.finish`). Only completed bundles name their pieces, so a
  retried bundle's first attempt is never assembled into a shard.

  The labels' indices are the names listed before the run
  (`--labels_from_folders` on a folder: the class folders); a name not
  listed is written as -1 and the shard's assembly rewrites the indices.
  """

  def __init__(self, prefix, run_id, num_shards, label_names=()):
    super().__init__()
    self._prefix = prefix
    self._staging = outputs.staging_folder(prefix, run_id)
    self._num_shards = num_shards
    self._label_names = tuple(label_names)
    self._pool = self._pieces = self._example = self._index = None

  def setup(self):
    from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
    self._example = example_pb2.Example
    self._index = _UnlistedIndex(
        (name, position) for position, name in enumerate(self._label_names))
    self._pool = futures.ThreadPoolExecutor(_WRITER_THREADS)

  def start_bundle(self):
    self._pieces = _Pieces(self._staging, self._prefix, self._num_shards,
                           self._pool)

  def process(self, record):
    uri, label = record['uri'], record['label']
    self._pieces.add(
        outputs.shard_of(uri, self._num_shards),
        to_example((uri, record['embedding'], label), self._index,
                   self._example), label)

  def finish_bundle(self):
    pieces, self._pieces = self._pieces, None
    for piece in pieces.finish():
      yield window.GlobalWindows.windowed_value(piece)

  def teardown(self):
    if self._pieces is not None:
      self._pieces.abandon()
      self._pieces = None
    if self._pool is not None:
      self._pool.shutdown()


class ShardFormat:
  """How `transforms.WriteShards` assembles an embeddings shard: its rows
  are the shard's pieces (`_WritePiecesFn`), and `write` takes the run's
  summary (`SummarizeFn`'s output) as its side input. When the cache's
  label names are the ones listed before the run (or there are none), the
  pieces' gzip members are the shard, copied byte for byte; else every
  record's label index is rewritten from its `label_name`."""

  name = outputs.EMBEDDINGS
  output_format = outputs.EMBEDDINGS_EXTENSION

  def __init__(self, label_names=()):
    """Args:
      label_names: the names the pieces' indices were written with.
    """
    self._label_names = tuple(label_names)

  def write(self, f, rows, summary):
    """Writes one shard from its pieces (None rows skipped) to `f`.

    Args:
      f: the staged shard, a binary file open for writing.
      rows: (piece path, records, label names, unlabelled) tuples (and None
        placeholders).
      summary: `SummarizeFn`'s output (its label names give each label's
        index).
    """
    pieces = sorted(row[0] for row in rows if row is not None)
    _, label_names, _ = summary
    if not pieces:
      write_examples(f, iter(()))  # One empty gzip member.
    elif tuple(label_names) == self._label_names:
      for piece in pieces:
        _copy_piece(f, piece)
    else:
      index = {name: position for position, name in enumerate(label_names)}
      write_examples(f, _relabelled(pieces, index))


def _copy_piece(f, piece):
  if storage.is_gcs(piece):
    f.write(storage.read_bytes(piece))
    return
  with open(piece, 'rb') as source:
    shutil.copyfileobj(source, f, 1 << 20)


def _relabelled(pieces, label_index):
  """The pieces' serialized Examples, each label index rewritten from its
  label name (`label_index`: {name: index})."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  example_class = tf.train.Example
  for piece in pieces:
    with storage.local_file(piece) as local:
      for data in tf.data.TFRecordDataset(local, 'GZIP').as_numpy_iterator():
        example = example_class.FromString(data)
        feature = example.features.feature
        if embedding_cache.LABEL_NAME_FEATURE in feature:
          name = feature[embedding_cache.LABEL_NAME_FEATURE].bytes_list.value[0]
          values = feature[embedding_cache.LABEL_FEATURE].int64_list.value
          del values[:]
          values.append(label_index[name.decode('utf-8')])
        yield example.SerializeToString()


def write_examples(f, examples):
  """Serialized Examples -> the binary file `f`, as gzip members of
  `_MEMBER_RECORDS` records compressed on `_WRITER_THREADS` threads, in
  order (no examples: one empty member)."""
  with tempfile.TemporaryDirectory(prefix='embeddings-') as folder, \
      futures.ThreadPoolExecutor(_WRITER_THREADS) as pool:
    members = _Members(pool, folder, lambda _, path: _append_file(f, path))
    for member in _members(examples):
      members.submit(None, member)
    members.finish()


def _members(examples):
  """Lists of at most `_MEMBER_RECORDS` examples, in order; for no
  examples, one empty list (an empty shard is one empty gzip member)."""
  first = True
  while True:
    member = list(itertools.islice(examples, _MEMBER_RECORDS))
    if member or first:
      yield member
    if len(member) < _MEMBER_RECORDS:
      return
    first = False


def _write_member(path, examples):
  """Serialized Examples -> one gzip TFRecord file at `path`; returns it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # Level 1 with deflate's run-length strategy (Z_RLE), not zlib's default
  # level 6: on ReLU embeddings (cnn_bn's 3,136 floats, a third of them runs
  # of zeros) 101 us a record against 216 at level 1 and 592 at level 6, in
  # slightly fewer bytes than level 1 (0.66 of the raw size; measured here).
  options = tf.io.TFRecordOptions(compression_type='GZIP',
                                  compression_level=1,
                                  compression_strategy=_Z_RLE)
  with tf.io.TFRecordWriter(path, options) as writer:
    for example in examples:
      writer.write(example)
  return path


def _append_file(f, path):
  with open(path, 'rb') as member:
    shutil.copyfileobj(member, f)
  os.remove(path)


class _StageDescriptionFn(beam.DoFn):
  """summary -> PREFIX-embeddings.json in the staging folder; its path."""

  def __init__(self, prefix, run_id, description):
    """Args:
      prefix: the --output prefix.
      run_id: the run's id (its staging folder).
      description: `embedding_cache.describe`'s keyword arguments other
        than `label_names` and `count`.
    """
    super().__init__()
    self._path = storage.join(
        outputs.staging_folder(prefix, run_id),
        storage.basename(embedding_cache.description_path(prefix)))
    self._description = dict(description)

  def process(self, summary):
    count, label_names, unlabelled = summary
    storage.write_json(self._path, embedding_cache.describe(
        label_names=label_names, count=count, unlabelled=unlabelled,
        **self._description))
    yield self._path


class WriteEmbeddings(beam.PTransform):
  """Embedding records -> the staged paths of the cache's shards and its
  description (publish them with `transforms.PublishOutputs`)."""

  def __init__(self, config):
    """Args:
      config: the run's `options.ScoringConfig` (with `embeddings`).
    """
    super().__init__()
    self._prefix = config.output
    self._num_shards = config.num_shards
    self._run_id = config.run_id
    self._known_label_names = tuple(config.label_names)
    self._numeric = not config.labels_from_folders
    entry = config.embeddings_entry
    self._description = dict(
        fingerprint_value=entry['fingerprint'],
        input_shape=config.input_shape, embedding_size=entry['size'],
        shards=config.num_shards, model_dir=config.model_dir)

  def expand(self, records):
    pieces = records | 'WritePieces' >> beam.ParDo(_WritePiecesFn(
        self._prefix, self._run_id, self._num_shards,
        self._known_label_names))
    summary = (pieces
               | 'PieceCounts' >> beam.Map(lambda piece: piece[1][1:])
               | 'Summarize' >> beam.CombineGlobally(
                   SummarizeFn(self._known_label_names, self._numeric)))
    shards = pieces | 'WriteShards' >> transforms.WriteShards(
        self._prefix, outputs.EMBEDDINGS, self._num_shards, self._run_id,
        shard_format=ShardFormat(self._known_label_names),
        side_inputs=(beam.pvalue.AsSingleton(summary),), keyed=True)
    description = summary | 'StageDescription' >> beam.ParDo(
        _StageDescriptionFn(self._prefix, self._run_id, self._description))
    return (shards, description) | 'MergeStaged' >> beam.Flatten()
