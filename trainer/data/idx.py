"""The MNIST and Fashion-MNIST datasets: MNIST's own IDX files in a folder.

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero
bytes, a type code (0x08 = unsigned byte), the number of dimensions, one
uint32 per dimension, then the data. MNIST and Fashion-MNIST ship it gzipped.
The reader checks the header, dimensions and counts before training and
names the file at fault; the source splits the arrays as sources.py does.

Why hand-written: `keras.datasets.mnist` and `fashion_mnist` download their
own copy (no --data_dir, no gs://, no network on many training machines)
and say nothing useful about a truncated file; tensorflow-datasets is not a
dependency. The format is a few lines of `struct`.
"""

import gzip
import struct
import zlib

import numpy as np

from trainer import registry
from trainer import storage
from trainer.data import sources

_UBYTE = 0x08
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


def read_idx(path, expected_ndim):
  """Reads an IDX file (gzipped or not) into a uint8 array.

  Args:
    path: file path (local or gs://). A `.gz` suffix means gzip.
    expected_ndim: 1 for labels, 3 for images.

  Returns:
    A numpy uint8 array whose shape is the header's dimensions.

  Raises:
    sources.DataError: naming `path` and what is wrong with it.
  """
  try:
    raw = storage.read_bytes(path)
  except FileNotFoundError as e:
    raise sources.DataError(f'{path}: file not found.') from e
  if path.endswith('.gz'):
    try:
      raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
      raise sources.DataError(
          f'{path}: truncated or corrupt gzip data ({e}). Download the file '
          'again.') from e
  shape, header_size = _read_header(path, raw, expected_ndim)
  expected_bytes = int(np.prod(shape))
  have = len(raw) - header_size
  if have != expected_bytes:
    problem = 'truncated' if have < expected_bytes else 'has trailing data'
    raise sources.DataError(
        f'{path}: {problem}: header says {"x".join(map(str, shape))} = '
        f'{expected_bytes} bytes of data, file holds {have}.')
  return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _read_header(path, raw, expected_ndim):
  """Checks the header of IDX bytes; returns (shape, header size)."""
  if len(raw) < 4:
    raise sources.DataError(f'{path}: only {len(raw)} bytes, too short for '
                            'an IDX header.')
  zero, dtype, ndim = struct.unpack('>HBB', raw[:4])
  if zero != 0 or dtype != _UBYTE:
    raise sources.DataError(
        f'{path}: not an unsigned-byte IDX file (magic number '
        f'{raw[:4].hex()}; expected 0000080{expected_ndim}).')
  if ndim != expected_ndim:
    kind = 'labels' if expected_ndim == 1 else 'images'
    raise sources.DataError(
        f'{path}: has {ndim} dimensions, expected {expected_ndim} for '
        f'{kind}. Are the image and label files swapped?')
  header_size = 4 + 4 * ndim
  if len(raw) < header_size:
    raise sources.DataError(f'{path}: truncated header.')
  return struct.unpack(f'>{ndim}I', raw[4:header_size]), header_size


def read_split(images_path, labels_path, num_classes,
               image_size=registry.MNIST_SHAPE[0]):
  """Reads a matching pair of image and label files.

  Returns:
    (images uint8 [n, size, size, 1], labels int32 [n]).

  Raises:
    sources.DataError: if either file is bad or the two do not match.
  """
  images = read_idx(images_path, 3)
  labels = read_idx(labels_path, 1)
  if images.shape[1:] != (image_size, image_size):
    raise sources.DataError(
        f'{images_path}: images are {images.shape[1]}x{images.shape[2]}, '
        f'expected {image_size}x{image_size}.')
  if len(images) != len(labels):
    raise sources.DataError(
        f'{images_path} holds {len(images)} images but {labels_path} holds '
        f'{len(labels)} labels: the files do not belong together.')
  if len(labels) and labels.max() >= num_classes:
    raise sources.DataError(
        f'{labels_path}: label {labels.max()} is out of range for '
        f'{num_classes} classes.')
  return images[..., np.newaxis], labels.astype(np.int32)


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
    sources.DataError: naming the file that is missing, truncated or
      mismatched.
  """
  class_names = registry.DATASETS[name].class_names
  loaded = {
      split: read_split(_idx_path(data_dir, images),
                        _idx_path(data_dir, labels), len(class_names))
      for split, (images, labels) in IDX_FILES.items()}
  arrays = sources.split_arrays(*loaded['train'], validation_fraction, 0.0)
  arrays['test'] = loaded['test']
  return sources.array_source(name, class_names, arrays, train_examples,
                              own_splits=('test',))


def load(options):
  """An IDX dataset, as `data.load_source` asks for it."""
  return load_idx(options.dataset, options.data_dir,
                  options.validation_fraction, options.train_examples)
