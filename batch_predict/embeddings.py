"""`--embeddings`: the embedding cache a scoring run writes (Contract 4).

  embedding records -> WriteEmbeddings -> PREFIX-embeddings-SSSSS-of-NNNNN.tfrecord.gz
                                          PREFIX-embeddings.json

The names, fields and description are `trainer.embedding_cache`'s (which
the trainer reads them with); this module writes them:

* The model handler calls the artifact's `serving_embeddings` signature on
  the same batches as `serving_default` (model_handler.py), and
  `transforms.ScoreImages` gives every image it scores exactly one
  embedding record (`outputs.embedding_record`: uri, vector, label name).
* `SummarizeFn`, a Beam combiner (so it merges across workers and
  processes), counts the records and collects their label names. The
  records cross the shuffle into their shards as they are (uri, the
  float32 bytes of the vector, label name: bytes Beam's own coder moves,
  no pickling), and each shard's writer, which has the summary as a side
  input, turns them into `tf.train.Example`s (`uri` bytes, `embedding`
  float list, and for a labelled image `label` int64 = the index of its
  name in `label_names`, and `label_name` bytes). Encoding before the
  summary is known would need the records held back until every label is
  counted: a second pass of every vector between stages, which measured
  a quarter of an embedding run.
* The label names: with `--labels_from_folders` the sorted class folder
  names (the trainer's `image_folder` order; `options.py` lists them
  before the run for a folder input), with any folder names met that were
  not listed; for a manifest's `label` column or a TFRecord's label, the
  sorted distinct labels of the embedded images, numerically when every one
  is an integer (so a TFRecord's `image/class/label` k keeps index k when
  every class occurs). Unlabelled images have no `label` fields.
* The shards go through the scorer's own sink (`transforms.WriteShards`,
  then `transforms.PublishOutputs` with the other outputs), so they are
  staged and published by the same rules as the predictions; Beam's
  `WriteToTFRecord` is a `FileBasedSink`, with the finalisation
  transforms.py explains it does not use. Each shard's framing and gzip
  are TensorFlow's `TFRecordWriter`'s (deflate's run-length strategy,
  below), written to local temporary files and copied into the staged
  shard (TensorFlow's writer takes a path, and cannot reach gs:// through
  `storage`, which stages and moves files). A shard is written as
  consecutive gzip members of `_MEMBER_RECORDS` records each, compressed
  on `_WRITER_THREADS` threads (the writer releases the GIL): gzip (RFC
  1952) allows any number of members, and TensorFlow's and Python's gzip
  readers read them as one stream, records in order. The shards are
  written after every image is embedded, with the machine otherwise idle;
  one thread left a core unused for a fifth of an embedding run.
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

import apache_beam as beam
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
  """The embedding records' labels (None: unlabelled) -> (count, label
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

  def add_input(self, accumulator, label):
    count, names, unlabelled = accumulator
    if label is None:
      unlabelled += 1
    else:
      names.add(label)
    return count + 1, names, unlabelled

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


class ShardFormat:
  """How `transforms.WriteShards` writes an embeddings shard: the rows are
  (uri, vector bytes, label name), written as one gzip TFRecord file of
  `tf.train.Example`s (see the module's docstring). `write` takes the
  run's summary (`SummarizeFn`'s output) as its side input."""

  name = outputs.EMBEDDINGS
  output_format = outputs.EMBEDDINGS_EXTENSION

  def encode(self, record):
    return record['uri'], record['embedding'], record['label']

  def write(self, f, rows, summary):
    """Writes one shard's rows (None rows skipped) to the binary file `f`.

    Args:
      f: the staged shard, a binary file open for writing.
      rows: from `encode` (and None placeholders), in the shard's order.
      summary: `SummarizeFn`'s output (its label names give each label's
        index).
    """
    from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
    _, label_names, _ = summary
    index = {name: position for position, name in enumerate(label_names)}
    examples = (to_example(row, index, example_pb2.Example)
                for row in rows if row is not None)
    with tempfile.TemporaryDirectory(prefix='embeddings-') as folder, \
        futures.ThreadPoolExecutor(_WRITER_THREADS) as pool:
      pending = collections.deque()  # In order; 2 per thread (+1) held.
      for number, member in enumerate(_members(examples)):
        pending.append(pool.submit(_write_member,
                                   os.path.join(folder, str(number)), member))
        if len(pending) > 2 * _WRITER_THREADS:
          _append_file(f, pending.popleft().result())
      while pending:
        _append_file(f, pending.popleft().result())


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
    summary = (records
               | 'Labels' >> beam.Map(lambda record: record['label'])
               | 'Summarize' >> beam.CombineGlobally(
                   SummarizeFn(self._known_label_names, self._numeric)))
    shards = records | 'WriteShards' >> transforms.WriteShards(
        self._prefix, outputs.EMBEDDINGS, self._num_shards, self._run_id,
        shard_format=ShardFormat(),
        side_inputs=(beam.pvalue.AsSingleton(summary),))
    description = summary | 'StageDescription' >> beam.ParDo(
        _StageDescriptionFn(self._prefix, self._run_id, self._description))
    return (shards, description) | 'MergeStaged' >> beam.Flatten()
