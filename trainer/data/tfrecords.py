"""The tfrecord dataset: the TFRecord schema, and shards of it as a source.

Records are `tf.train.Example`s in the schema of tensorflow/models' image
classification data, so existing shards can be reused: `image/encoded` (an
image file's bytes) and `image/class/label` (int64); `make_example` writes
`image/class/text` and `image/filename` too, for people reading the shards
(make_tfrecords_lib.py converts an image folder). `labels.txt` beside the
shards names the classes, one per line in label order.

A folder of train-*, validation-* and test-* shards uses those splits; a glob
(or a folder without train-* shards) splits records by position. Every
record is read and decoded once before training (checks.py): the split
sizes are the records that decode, those that do not are left out and
reported, and a truncated shard or a label out of range stops the run,
naming the shard and the record. On gs://, TensorFlow's own GCS filesystem
reads the shards (it cannot be pointed at an emulator: tested locally).
"""

import functools
import time

from absl import logging
import numpy as np
import tensorflow as tf

from trainer import listing
from trainer import storage
from trainer.data import checks
from trainer.data import pipeline
from trainer.data import preprocessing
from trainer.data import sources

# The schema the trainer reads (tensorflow/models' feature names).
FEATURES = {
    'image/encoded': tf.io.FixedLenFeature([], tf.string),
    'image/class/label': tf.io.FixedLenFeature([], tf.int64),
}
LABELS_FILE = 'labels.txt'
_ASCII_BLANKS = ' \t\r\f\v'
# A record's key: its shard's index in the split's file list, and its
# position in the shard.
_KEY_SHIFT = 2**32


def _bytes_feature(value):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(encoded, label, class_name, filename):
  """A tf.train.Example in the schema of `FEATURES` (plus text, filename)."""
  return tf.train.Example(features=tf.train.Features(feature={
      'image/encoded': _bytes_feature(encoded),
      'image/class/label': _int64_feature(label),
      'image/class/text': _bytes_feature(class_name.encode('utf-8')),
      'image/filename': _bytes_feature(filename.encode('utf-8')),
  }))


def parse_records(records):
  """Serialized tf.train.Examples [n] -> (encoded images [n], labels [n])."""
  example = tf.io.parse_example(records, FEATURES)
  return example['image/encoded'], example['image/class/label']


def read_labels_file(path):
  """Class names, one per line of labels.txt.

  Lines end at '\\n' only: a name may hold U+2028 or U+0085, where
  str.splitlines would also split (and str.strip would strip them). ASCII
  spaces, tabs and a '\\r' (a file saved on Windows) around a name are
  dropped, and so are blank lines.
  """
  names = [line.strip(_ASCII_BLANKS)
           for line in storage.read_text(path).split('\n')]
  names = [name for name in names if name]
  if len(names) < 2:
    raise sources.DataError(
        f'{path}: needs one class name per line, at least two.')
  return tuple(names)


def _tfrecord_files(data_dir, report):
  """Finds shards and says how to split them.

  A folder holding train-*, validation-* and test-* shards uses those
  splits. A glob (or a folder without train-* shards) uses every
  matching shard and splits records by position: record i goes to test if
  i % 100 < 100 * test_fraction, and so on. Only regular files are kept:
  TensorFlow would block on a named pipe.

  Returns:
    (files by split or None, all files, folder for labels.txt)
  """
  data_dir = storage.normalize(data_dir)
  if storage.has_glob(data_dir):
    files = listing.regular_files(storage.glob(data_dir), report, data_dir)
    folder = storage.dirname(data_dir)
  else:
    if not storage.isdir(data_dir):
      raise sources.DataError(f'data_dir {data_dir}: no such folder.')
    folder = data_dir
    named = {split: listing.regular_files(
        storage.glob(storage.join(data_dir, split + '-*')), report, data_dir)
             for split in sources.SPLITS}
    if named['train']:
      missing = [f'{split}-*' for split in sources.SPLITS if not named[split]]
      if missing:
        raise sources.DataError(
            f'data_dir {data_dir}: has train-* shards but no '
            f'{" or ".join(missing)} shards. Add them (`python -m '
            'trainer.make_tfrecords` writes all three), or pass a glob such '
            f'as {storage.join(data_dir, "*-*")} to split all records by '
            'position (--validation_fraction, --test_fraction).')
      return named, None, folder
    files = listing.regular_files(
        [f for f in storage.list_files(data_dir)
         if storage.basename(f) != LABELS_FILE], report, data_dir)
  if not files:
    raise sources.DataError(f'data_dir {data_dir}: no TFRecord shards found.')
  return None, files, folder


def _keyed_records(files, file_ids, interleave=False):
  """(key, serialized record) of every record of `files`.

  In file order by default (the position split depends on it); with
  `interleave`, shards are read in parallel (deterministically).
  """
  pairs = tf.data.Dataset.from_tensor_slices(
      (np.asarray(file_ids, np.int64), np.asarray(files, str)))

  def records(file_id, path):
    return tf.data.TFRecordDataset(path).enumerate().map(
        lambda index, record: (file_id * _KEY_SHIFT + index, record))

  if interleave:
    return pairs.interleave(records, num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=True)
  return pairs.flat_map(records)


def _count_records(files):
  """Records per shard; raises DataError naming shards that do not read."""
  pairs = tf.data.Dataset.from_tensor_slices(
      (np.arange(len(files), dtype=np.int64), np.asarray(files, str)))
  counted = pairs.map(
      lambda index, path: (index, tf.data.TFRecordDataset(path).reduce(
          tf.constant(0, tf.int64), lambda count, _: count + 1)),
      num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  counts = dict(counted.as_numpy_iterator())
  broken = [files[i] for i in range(len(files)) if i not in counts]
  if broken:
    raise sources.DataError(
        f'TFRecord shard(s) {", ".join(broken[:5])}'
        f'{f" and {len(broken) - 5} more" if len(broken) > 5 else ""} are '
        'truncated or corrupt (TensorFlow cannot read all their records). '
        'Write them again (python -m trainer.make_tfrecords), or move them '
        'out of data_dir.')
  return [int(counts[i]) for i in range(len(files))]


def _check_records(files, counts, image_shape, num_classes, report,
                   labels_path):
  """Decodes every record once; returns the sorted keys of those that fail.

  Records that do not parse or decode are reported; a label out of range
  stops the run before training, naming the shard and the record.
  """
  height, width, channels = image_shape
  keys = [file_id * _KEY_SHIFT + index
          for file_id, count in enumerate(counts) for index in range(count)]

  def make_pairs(chosen):
    pairs = _keyed_records(files, range(len(files)))
    if chosen is None:
      return pairs
    keep = checks.key_filter(list(chosen), keep_listed=True)
    return pairs.filter(lambda key, _: keep(key))

  def decode_batch(records):
    encoded, labels = parse_records(records)
    images = preprocessing.decode_images(encoded, height, width, channels)
    # Depends on the images, so they are decoded; always adds 0.
    return labels + tf.cast(tf.reduce_max(images, axis=[1, 2, 3]) < -1.0,
                            tf.int64)

  passed, failed = checks.decode_all(make_pairs, decode_batch, keys)
  _check_labels(files, passed, num_classes, labels_path)
  for key in failed:
    report.skip(listing.UNDECODABLE,
                f'{files[key // _KEY_SHIFT]}#{key % _KEY_SHIFT}',
                'the record does not parse as a tf.train.Example with '
                'image/encoded and image/class/label, or its image does not '
                'decode')
  return failed


def _check_labels(files, labels_by_key, num_classes, labels_path):
  """Stops the run at the first label out of range, naming its record."""
  for key, label in labels_by_key.items():
    if not 0 <= label < num_classes:
      raise sources.DataError(
          f'{files[key // _KEY_SHIFT]}, record {key % _KEY_SHIFT}: '
          f'image/class/label {label} out of range for the {num_classes} '
          f'classes in {labels_path}.')


def _position_bounds(split, validation_fraction, test_fraction):
  low = {'test': 0.0, 'validation': test_fraction,
         'train': test_fraction + validation_fraction}[split]
  high = {'test': test_fraction,
          'validation': test_fraction + validation_fraction,
          'train': 1.0}[split]
  return low * 100, high * 100


def _in_position_split(positions, bounds):
  """The float32 test the pipeline makes, on numpy positions."""
  residue = (np.asarray(positions) % 100).astype(np.float32)
  low, high = (np.float32(bound) for bound in bounds)
  return (residue >= low) & (residue < high)


class _TfrecordSplits:
  """Which records of a TFRecord dataset each split holds, after checks."""

  def __init__(self, named, files, counts, failed, fractions):
    self.named = named
    self.files = files
    self.counts = counts
    self.failed = failed  # By split (named) or overall (position split).
    self.fractions = fractions

  def size(self, split):
    if self.named is not None:
      return sum(self.counts[split]) - len(self.failed[split])
    bounds = _position_bounds(split, *self.fractions)
    total = sum(self.counts)
    # Counted in chunks: a split of 100 million records needs no big array.
    inside = sum(int(_in_position_split(np.arange(start, min(
        start + 10_000_000, total)), bounds).sum())
                 for start in range(0, total, 10_000_000))
    offsets = np.cumsum([0] + self.counts)
    bad = [offsets[key // _KEY_SHIFT] + key % _KEY_SHIFT
           for key in self.failed]
    return inside - int(_in_position_split(bad, bounds).sum()) if bad else (
        inside)


def _check_tfrecords(named, files, image_shape, num_classes, report,
                     labels_path, fractions):
  """Counts and decodes every record once, before training."""
  start = time.perf_counter()
  if named is not None:
    counts = {split: _count_records(named[split]) for split in sources.SPLITS}
    failed = {split: _check_records(named[split], counts[split], image_shape,
                                    num_classes, report, labels_path)
              for split in sources.SPLITS}
    total = sum(sum(c) for c in counts.values())
    bad = sum(len(f) for f in failed.values())
  else:
    counts = _count_records(files)
    failed = _check_records(files, counts, image_shape, num_classes, report,
                            labels_path)
    total, bad = sum(counts), len(failed)
  logging.info('Decoded each of the %d records once in %.1f s to check them '
               '(%d do not decode).', total, time.perf_counter() - start, bad)
  return _TfrecordSplits(named, files, counts, failed, fractions)


def load_tfrecord(data_dir, image_shape, validation_fraction, test_fraction,
                  train_examples=0):
  """tf.train.Example shards with the FEATURES schema.

  Every record is read and decoded once before training (see checks.py):
  the split sizes are the records that decode, and those that do not are
  left out and reported.

  Raises:
    sources.DataError: naming the folder, shard or record at fault.
  """
  report = listing.Report()
  named, files, folder = _tfrecord_files(data_dir, report)
  labels_path = storage.join(folder, LABELS_FILE)
  if not storage.exists(labels_path):
    raise sources.DataError(
        f'{labels_path}: missing. TFRecord datasets need a labels.txt beside '
        'the shards, one class name per line in label order (the converter '
        '`python -m trainer.make_tfrecords` writes it).')
  class_names = read_labels_file(labels_path)
  splits = _check_tfrecords(named, files, image_shape, len(class_names),
                            report, labels_path,
                            (validation_fraction, test_fraction))
  report.log(data_dir)
  sizes = {split: splits.size(split) for split in sources.SPLITS}
  if train_examples:
    sizes['train'] = min(sizes['train'], train_examples)
  info = sources.DatasetInfo('tfrecord', class_names, sizes, report.as_dict(),
                             own_splits=('validation', 'test') if named else ())
  decode = functools.partial(_decode, image_shape, len(class_names),
                             labels_path)
  height, width, channels = image_shape
  return sources.Source(
      info, functools.partial(_examples, splits, train_examples, decode),
      element_bytes=height * width * channels * 4)


def _decode(image_shape, num_classes, labels_path, records):
  """Serialized records [n] -> (decoded images, int32 labels), labels checked.

  Every label was checked before training (_check_records); the assertion
  catches a shard that changed since.
  """
  encoded, labels = parse_records(records)
  labels = tf.cast(labels, tf.int32)
  check = tf.debugging.assert_less(
      labels, num_classes,
      message=f'image/class/label out of range for {num_classes} classes '
      f'in {labels_path}')
  with tf.control_dependencies([check]):
    labels = tf.identity(labels)
  return preprocessing.decode_images(encoded, *image_shape), labels


def _examples(splits, train_examples, decode, split, shard=None):
  """Source.examples of TFRecord shards (see the sources docstring)."""
  count, index = shard or (1, 0)
  # With --train_examples, files are not sharded: the limit is global.
  by_file = splits.named is not None and len(splits.named[split]) >= count and (
      not (split == 'train' and train_examples))
  dataset = _split_records(splits, split, (count, index) if by_file else
                           (1, 0))
  if split == 'train' and train_examples:
    dataset = dataset.take(train_examples)
  if count > 1 and not by_file:
    # Every worker reads every record but parses and decodes only its own.
    dataset = dataset.shard(count, index)
  return pipeline.decode_in_batches(dataset, decode)


def _split_records(splits, split, file_shard):
  """The serialized records of one split, records that fail left out."""
  count, index = file_shard
  if splits.named is not None:
    file_ids = list(range(len(splits.named[split])))[index::count]
    split_files = [splits.named[split][i] for i in file_ids]
    failed = splits.failed[split]
    if not split_files:
      return tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string))
    if not failed:  # The common case: TensorFlow's own parallel reader.
      return tf.data.TFRecordDataset(split_files,
                                     num_parallel_reads=tf.data.AUTOTUNE)
    keep = checks.key_filter(failed)
    return _keyed_records(split_files, file_ids, interleave=True).filter(
        lambda key, _: keep(key)).map(lambda _, record: record)
  # Split by record position; deterministic because the shards are read in
  # sorted order.
  low, high = _position_bounds(split, *splits.fractions)
  keep = checks.key_filter(splits.failed)
  return _keyed_records(splits.files, range(len(splits.files))).enumerate(
  ).filter(lambda i, pair: tf.logical_and(
      tf.logical_and(tf.cast(i % 100, tf.float32) >= low,
                     tf.cast(i % 100, tf.float32) < high),
      keep(pair[0]))).map(lambda _, pair: pair[1])




def load(options):
  """TFRecord shards, as `data.load_source` asks for them."""
  return load_tfrecord(options.data_dir, options.image_shape,
                       options.validation_fraction, options.test_fraction,
                       options.train_examples)
