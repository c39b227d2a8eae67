"""The image_folder dataset: one sub-folder per class of image files.

Classes are the sorted names of the sub-folders of --data_dir; images are the
regular files with a known image extension anywhere under each of them
(listing.py lists them without opening anything else and says what it left
out). Files are split by a stable hash of their path, so adding files never
moves others to another split. Every file is decoded once before training,
with the training pipeline's own decoder (checks.py): those that do not
decode are left out of the splits and counted, and a class that would
vanish stops the run, naming it.

Why not `keras.utils.image_dataset_from_directory`: it decodes with
`tf.io.decode_image` (no EXIF orientation, no alpha compositing: not the
serving signature's decoder), opens whatever the folder holds, fails the
whole run on one bad file, and cannot cut a worker's shard before decoding.

Where data lives on gs://, listing goes through `storage` but the image
bytes are read by TensorFlow's own GCS filesystem (the scalable path on
Google Cloud). That reader cannot be pointed at a GCS emulator, so that path
is tested with local files.
"""

import functools
import hashlib
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

IMAGE_EXTENSIONS = listing.IMAGE_EXTENSIONS


def _hash_fraction(key):
  """A stable number in [0, 1) from a string: splits survive added files."""
  digest = hashlib.sha256(key.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2**64


def split_of(key, validation_fraction, test_fraction):
  """The split of the file whose path relative to the folder is `key`.

  The embedding cache (embeddings.py) splits its records by the same key,
  so that a head trained on a cache of a folder and a one-stage run on the
  folder hold out the same images.
  """
  fraction = _hash_fraction(key)
  if fraction < test_fraction:
    return 'test'
  if fraction < test_fraction + validation_fraction:
    return 'validation'
  return 'train'


def order_of(key):
  """Where a file comes within its split: a stable hash that mixes classes."""
  return _hash_fraction('order:' + key)


def list_image_folder(data_dir, report=None):
  """Lists an image folder: class names and (relative path, label) pairs.

  Classes are the sorted names of the sub-folders of `data_dir`; images are
  the regular files with a known image extension anywhere under each of
  them (symlinked folders followed, special files never opened: see
  listing.py, which also says what goes into `report`).

  Raises:
    sources.DataError: if the folder is missing, has fewer than two
      classes, or a class folder cannot be listed or has no images.
  """
  data_dir = storage.normalize(data_dir)
  report = report if report is not None else listing.Report()
  if not storage.isdir(data_dir):
    raise sources.DataError(f'data_dir {data_dir}: no such folder.')
  try:
    by_class = listing.list_image_folder(data_dir, report)
  except listing.ListingError as e:
    raise sources.DataError(str(e)) from e
  class_names = tuple(sorted(by_class))
  if len(class_names) < 2:
    raise sources.DataError(
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
    raise sources.DataError(
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
  files.sort(key=lambda item: order_of(item[0]))
  by_split = {split: [] for split in sources.SPLITS}
  for relative, label in files:
    split = split_of(relative, validation_fraction, test_fraction)
    by_split[split].append((storage.join(data_dir, relative), label))
  return class_names, by_split


def _drop_undecodable_files(data_dir, by_split, image_shape, report):
  """Decodes every file once; leaves out (and reports) those that fail."""
  items = [item for split in sources.SPLITS for item in by_split[split]]
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
  bad = [paths[key] for key in failed]
  _report_undecodable(data_dir, bad, image_shape, report)
  left_out = set(bad)
  return {split: [item for item in by_split[split] if item[0] not in left_out]
          for split in sources.SPLITS}


def _report_undecodable(data_dir, paths, image_shape, report):
  """Reports files that do not decode; asks why for the first few only."""
  for path in paths:
    why = checks.reason(lambda p=path: preprocessing.decode_image(
        tf.io.read_file(p), *image_shape)) if (
            report.counts.get(listing.UNDECODABLE, 0) < listing.MAX_LISTED
        ) else None
    report.skip(listing.UNDECODABLE, path[len(data_dir) + 1:],
                why or 'not a decodable image')


def load_image_folder(data_dir, image_shape, validation_fraction,
                      test_fraction, train_examples=0):
  """One sub-folder per class; split by a hash of each file's path.

  Every file is decoded once before training; those that do not decode are
  left out of the splits (and of the counts) and reported.

  Raises:
    sources.DataError: naming the folder at fault (see list_image_folder),
      or a class left without an image that decodes.
  """
  data_dir = storage.normalize(data_dir)
  report = listing.Report()
  class_names, by_split = split_image_folder(data_dir, validation_fraction,
                                             test_fraction, report)
  by_split = _drop_undecodable_files(data_dir, by_split, image_shape, report)
  left = {name: [1 for split in sources.SPLITS for _, label in by_split[split]
                 if label == index] for index, name in enumerate(class_names)}
  _check_no_empty_class(data_dir, left, 'hold no image that decodes')
  report.log(data_dir)
  # Hash order mixes the classes, so --train_examples takes a roughly
  # class-balanced prefix.
  if train_examples:
    by_split['train'] = by_split['train'][:train_examples]
  if not by_split['train']:
    raise sources.DataError(
        f'data_dir {data_dir}: no images left for training.')
  sizes = {split: len(items) for split, items in by_split.items()}
  info = sources.DatasetInfo('image_folder', class_names, sizes,
                             report.as_dict())
  height, width, channels = image_shape
  return sources.Source(info, functools.partial(_examples, by_split,
                                                image_shape),
                        element_bytes=height * width * channels * 4,
                        files=functools.partial(_files, by_split))


def _files(by_split, split):
  """Source.files of an image folder: (path, label), in split order."""
  return list(by_split[split])


def _examples(by_split, image_shape, split, shard=None):
  """Source.examples of an image folder: decoded images and labels."""
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
  return pipeline.decode_in_batches(dataset, lambda encoded, labels: (
      preprocessing.decode_images(encoded, *image_shape), labels))


def load(options):
  """An image folder, as `data.load_source` asks for it."""
  return load_image_folder(options.data_dir, options.image_shape,
                           options.validation_fraction, options.test_fraction,
                           options.train_examples)
