"""The input side of training: datasets, their checks, and tf.data pipelines.

  load_source(Options(...))  the dataset the options name, read and checked
                             before training -> sources.Source
  sources.py        Source, DatasetInfo, DataError; the bundled digits; the
                    check that a held-out split asked for is not empty
  idx.py            mnist, fashion_mnist: MNIST's own IDX files
  folder.py         image_folder: one sub-folder per class
  tfrecords.py      tfrecord: the TFRecord schema and shards of it
  embeddings.py     embeddings: an embedding cache's vectors (two-stage
                    transfer: a head trains on them)
  checks.py         every example decoded once before training
  preprocessing.py  the one decoder training and the exported model share
  pipeline.py       make_dataset: cache, shuffle, batch, convert, prefetch
  samples.py        dataset images written as files (trainer.write_samples)

Which loader reads a dataset is the registry's entry for it
(trainer/registry.py).
"""

import dataclasses
import importlib

from trainer import registry
from trainer.data import sources

DataError = sources.DataError


@dataclasses.dataclass(frozen=True)
class Options:
  """What to load, as plain values: a run's dataset flags.

  Attributes:
    dataset: a name in registry.DATASETS.
    validation_fraction: share of the data held out for validation (of the
      train files, for datasets with their own test split).
    test_fraction: share held out for test, for datasets without their own.
    data_dir: where the dataset lives ('' for the bundled digits).
    image_shape: (height, width, channels) that encoded images are decoded
      to; None for datasets of a fixed shape (resized by make_dataset).
    train_examples: use only the first N training examples (0: all).
  """
  dataset: str
  validation_fraction: float
  test_fraction: float
  data_dir: str = ''
  image_shape: tuple = None
  train_examples: int = 0

  @classmethod
  def from_config(cls, config):
    """The dataset options of a trainer Config (config.py)."""
    return cls(dataset=config.dataset, data_dir=config.data_dir,
               image_shape=config.image_shape,
               validation_fraction=config.validation_fraction,
               test_fraction=config.test_fraction,
               train_examples=config.train_examples)


def load_source(options):
  """Builds the Source `options` name. Reads and checks the data up front.

  Args:
    options: an Options.

  Returns:
    A sources.Source.

  Raises:
    DataError: with a message naming the file or folder at fault, or a
      split that came out empty although its fraction asked for one.
  """
  if options.dataset not in registry.DATASETS:
    raise DataError(f'dataset: unknown dataset {options.dataset!r}; choose '
                    f'one of {tuple(registry.DATASETS)}.')
  loader = importlib.import_module(
      f'{__name__}.{registry.DATASETS[options.dataset].loader}')
  source = loader.load(options)
  sources.check_split_sizes(source.info, options.validation_fraction,
                            options.test_fraction)
  return source
