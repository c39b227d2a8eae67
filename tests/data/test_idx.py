"""IDX files: the real Fashion-MNIST and a catalogue of broken files."""

import gzip
import os
import shutil
import struct

import numpy as np
import pytest

from trainer import data
from trainer.data import idx
from trainer.data import pipeline
from tests import helpers


@helpers.requires_fashion_mnist
def test_fashion_mnist_full_counts_and_labels():
  source = idx.load_idx('fashion_mnist', helpers.FASHION_MNIST_DIR, 0.1)
  assert source.info.sizes == {'train': 54000, 'validation': 6000,
                               'test': 10000}
  assert source.info.class_names[0] == 'T-shirt/top'
  assert source.info.class_names[9] == 'Ankle boot'
  x, y = next(iter(pipeline.make_dataset(source, 'test', 10000, (28, 28, 1),
                                         training=False)))
  assert x.shape == (10000, 28, 28, 1)
  assert np.bincount(y.numpy()).tolist() == [1000] * 10


def _write_idx(path, array, magic_type=0x08, compress=True, truncate=0,
               extra=b''):
  header = struct.pack('>HBB', 0, magic_type, array.ndim)
  header += struct.pack(f'>{array.ndim}I', *array.shape)
  body = header + array.astype(np.uint8).tobytes() + extra
  if truncate:
    body = body[:-truncate]
  if compress:
    body = gzip.compress(body)
  with open(path, 'wb') as f:
    f.write(body)


def _write_idx_dataset(directory, n_train=20, n_test=10):
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  for prefix, count in (('train', n_train), ('t10k', n_test)):
    _write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'),
               rng.integers(0, 256, (count, 28, 28)))
    _write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'),
               np.arange(count) % 10)


def test_a_small_valid_idx_dataset_loads(tmp_path):
  _write_idx_dataset(str(tmp_path))
  source = idx.load_idx('mnist', str(tmp_path), 0.1)
  assert source.info.sizes == {'train': 18, 'validation': 2, 'test': 10}


def test_uncompressed_idx_files_are_accepted(tmp_path):
  _write_idx_dataset(str(tmp_path))
  for name in os.listdir(tmp_path):
    with gzip.open(tmp_path / name) as f:
      (tmp_path / name[:-3]).write_bytes(f.read())
    os.remove(tmp_path / name)
  assert idx.load_idx('mnist', str(tmp_path), 0.1).info.sizes['test'] == 10


def _corrupt_truncated_gzip(directory):
  path = os.path.join(directory, 'train-images-idx3-ubyte.gz')
  with open(path, 'rb') as f:
    body = f.read()
  with open(path, 'wb') as f:
    f.write(body[:len(body) // 2])
  return 'train-images-idx3-ubyte.gz', 'truncated or corrupt gzip'


def _corrupt_missing(directory):
  os.remove(os.path.join(directory, 't10k-labels-idx1-ubyte.gz'))
  return 't10k-labels-idx1-ubyte.gz', 'file not found'


def _corrupt_magic(directory):
  _write_idx(os.path.join(directory, 'train-images-idx3-ubyte.gz'),
             np.zeros((20, 28, 28)), magic_type=0x0D)
  return 'train-images-idx3-ubyte.gz', 'not an unsigned-byte IDX file'


def _corrupt_swapped(directory):
  images = os.path.join(directory, 't10k-images-idx3-ubyte.gz')
  labels = os.path.join(directory, 't10k-labels-idx1-ubyte.gz')
  shutil.move(images, images + '.tmp')
  shutil.move(labels, images)
  shutil.move(images + '.tmp', labels)
  return 't10k-images-idx3-ubyte.gz', 'swapped'


def _corrupt_short_data(directory):
  _write_idx(os.path.join(directory, 'train-images-idx3-ubyte.gz'),
             np.zeros((20, 28, 28)), truncate=100)
  return 'train-images-idx3-ubyte.gz', 'truncated: header says 20x28x28'


def _corrupt_trailing_data(directory):
  _write_idx(os.path.join(directory, 'train-labels-idx1-ubyte.gz'),
             np.arange(20) % 10, extra=b'junk')
  return 'train-labels-idx1-ubyte.gz', 'trailing data'


def _corrupt_count_mismatch(directory):
  _write_idx(os.path.join(directory, 'train-labels-idx1-ubyte.gz'),
             np.arange(19) % 10)
  return 'train-labels-idx1-ubyte.gz', 'do not belong together'


def _corrupt_dimensions(directory):
  _write_idx(os.path.join(directory, 'train-images-idx3-ubyte.gz'),
             np.zeros((20, 32, 32)))
  return 'train-images-idx3-ubyte.gz', 'images are 32x32, expected 28x28'


def _corrupt_label_range(directory):
  _write_idx(os.path.join(directory, 't10k-labels-idx1-ubyte.gz'),
             np.full(10, 12))
  return 't10k-labels-idx1-ubyte.gz', 'label 12 is out of range'


def _corrupt_empty(directory):
  open(os.path.join(directory, 't10k-images-idx3-ubyte.gz'), 'wb').close()
  return 't10k-images-idx3-ubyte.gz', 'too short for an IDX header'


@pytest.mark.parametrize('corrupt', [
    _corrupt_truncated_gzip, _corrupt_missing, _corrupt_magic,
    _corrupt_swapped, _corrupt_short_data, _corrupt_trailing_data,
    _corrupt_count_mismatch, _corrupt_dimensions, _corrupt_label_range,
    _corrupt_empty,
])
def test_broken_idx_files_fail_naming_the_file_and_the_problem(
    tmp_path, corrupt):
  directory = str(tmp_path)
  _write_idx_dataset(directory)
  file_name, problem = corrupt(directory)
  with pytest.raises(data.DataError) as raised:
    idx.load_idx('mnist', directory, 0.1)
  message = str(raised.value)
  assert file_name in message
  assert problem in message


@helpers.requires_fashion_mnist
def test_truncated_real_fashion_mnist_file_is_caught(tmp_path):
  for name in os.listdir(helpers.FASHION_MNIST_DIR):
    shutil.copy(os.path.join(helpers.FASHION_MNIST_DIR, name), tmp_path)
  path = tmp_path / 't10k-images-idx3-ubyte.gz'
  path.write_bytes(path.read_bytes()[:-5000])
  with pytest.raises(data.DataError, match='t10k-images-idx3-ubyte.gz'):
    idx.load_idx('fashion_mnist', str(tmp_path), 0.1)

