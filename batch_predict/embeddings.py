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
  processes), counts the records and collects their label names; the
  names are then a side input of the encoding, which turns each record
  into a `tf.train.Example` (`uri` bytes, `embedding` float list, and for
  a labelled image `label` int64 = the index of its name in `label_names`,
  and `label_name` bytes).
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
  are TensorFlow's `TFRecordWriter`'s, written to a local temporary file
  and copied into the staged shard (TensorFlow's writer takes a path, and
  cannot reach gs:// through `storage`, which stages and moves files).
* `PREFIX-embeddings.json` (`embedding_cache.describe`) is staged once the
  count is known and published by the same step, after the shards.

TensorFlow (its protobuf and writer) is imported in the workers' steps
only, as in transforms.py.
"""

import os
import shutil
import tempfile

import apache_beam as beam
import numpy as np

from batch_predict import outputs
from batch_predict import transforms
from trainer import embedding_cache
from trainer import storage


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
  """Embedding records -> (count, label names in cache order, how many
  records have no label)."""

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

  def add_input(self, accumulator, record):
    count, names, unlabelled = accumulator
    if record['label'] is None:
      unlabelled += 1
    else:
      names.add(record['label'])
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
  delimited), little-endian float32s.

  Parsed with protobuf's own `MergeFromString`, it fills the list with the
  same values and serializes to the same bytes as `value.extend(
  vector.tolist())`, which costs a Python float per value: 8 us a cnn_bn
  embedding (3,136 floats) against 131 (measured here; a tenth of an
  embedding run).
  """
  data = np.asarray(vector, '<f4').tobytes()
  size, length = len(data), bytearray()
  while size > 0x7f:  # The length as a base-128 varint.
    length.append((size & 0x7f) | 0x80)
    size >>= 7
  length.append(size)
  return b'\x0a' + bytes(length) + data


def to_example(record, label_index, example_class):
  """An embedding record -> its serialized `tf.train.Example`.

  Args:
    record: from `outputs.embedding_record`.
    label_index: {label name: its index in the cache's label_names}.
    example_class: TensorFlow's `Example` protobuf class.
  """
  example = example_class()
  features = example.features.feature
  features[embedding_cache.URI_FEATURE].bytes_list.value.append(
      record['uri'].encode('utf-8'))
  features[embedding_cache.EMBEDDING_FEATURE].float_list.MergeFromString(
      packed_floats(record['embedding']))
  label = record['label']
  if label is not None:
    features[embedding_cache.LABEL_FEATURE].int64_list.value.append(
        label_index[label])
    features[embedding_cache.LABEL_NAME_FEATURE].bytes_list.value.append(
        label.encode('utf-8'))
  return example.SerializeToString()


class _EncodeFn(beam.DoFn):
  """(record, summary side input) -> {'uri', 'example': serialized bytes}."""

  def __init__(self):
    super().__init__()
    self._example_class = None
    self._names = None
    self._index = None

  def setup(self):
    from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
    self._example_class = example_pb2.Example

  def process(self, record, summary):
    _, label_names, _ = summary
    if label_names != self._names:  # The side input, once per worker.
      self._names = label_names
      self._index = {name: index for index, name in enumerate(label_names)}
    yield {'uri': record['uri'],
           'example': to_example(record, self._index, self._example_class)}


class ShardFormat:
  """How `transforms.WriteShards` writes an embeddings shard: the rows are
  serialized Examples, written as one gzip TFRecord file (see the module's
  docstring)."""

  name = outputs.EMBEDDINGS
  output_format = outputs.EMBEDDINGS_EXTENSION

  def encode(self, record):
    return record['example']

  def write(self, f, rows):
    """Writes one shard's rows (None rows skipped) to the binary file `f`."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory(prefix='embeddings-') as folder:
      path = os.path.join(folder, 'shard')
      # Level 1, not zlib's default 6: on ReLU embeddings (cnn_bn's 3,136
      # floats) 188 us a record against 679, for 6% more bytes (measured
      # here); the writer was a quarter of an embedding run's time.
      options = tf.io.TFRecordOptions(compression_type='GZIP',
                                      compression_level=1)
      with tf.io.TFRecordWriter(path, options) as writer:
        for row in rows:
          if row is not None:
            writer.write(row)
      with open(path, 'rb') as shard:
        shutil.copyfileobj(shard, f)


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
    summary = records | 'Summarize' >> beam.CombineGlobally(
        SummarizeFn(self._known_label_names, self._numeric))
    shards = (
        records
        | 'Encode' >> beam.ParDo(_EncodeFn(), beam.pvalue.AsSingleton(summary))
        | 'WriteShards' >> transforms.WriteShards(
            self._prefix, outputs.EMBEDDINGS, self._num_shards, self._run_id,
            shard_format=ShardFormat()))
    description = summary | 'StageDescription' >> beam.ParDo(
        _StageDescriptionFn(self._prefix, self._run_id, self._description))
    return (shards, description) | 'MergeStaged' >> beam.Flatten()
