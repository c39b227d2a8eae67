"""Reader for MNIST's own IDX file format, with validation that names the file.

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero
bytes, a type code (0x08 = unsigned byte), the number of dimensions, one
uint32 per dimension, then the data. MNIST and Fashion-MNIST ship it gzipped.
"""

import gzip
import struct
import zlib

import numpy as np

from trainer import storage

_UBYTE = 0x08


class IdxError(ValueError):
  """An IDX file is missing, truncated or not what it should be."""


def read_idx(path, expected_ndim):
  """Reads an IDX file (gzipped or not) into a uint8 array.

  Args:
    path: file path (local or gs://). A `.gz` suffix means gzip.
    expected_ndim: 1 for labels, 3 for images.

  Returns:
    A numpy uint8 array whose shape is the header's dimensions.

  Raises:
    IdxError: naming `path` and what is wrong with it.
  """
  try:
    raw = storage.read_bytes(path)
  except FileNotFoundError as e:
    raise IdxError(f'{path}: file not found.') from e
  if path.endswith('.gz'):
    try:
      raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
      raise IdxError(
          f'{path}: truncated or corrupt gzip data ({e}). Download the file '
          'again.') from e
  if len(raw) < 4:
    raise IdxError(f'{path}: only {len(raw)} bytes, too short for an IDX '
                   'header.')
  zero, dtype, ndim = struct.unpack('>HBB', raw[:4])
  if zero != 0 or dtype != _UBYTE:
    raise IdxError(
        f'{path}: not an unsigned-byte IDX file (magic number '
        f'{raw[:4].hex()}; expected 0000080{expected_ndim}).')
  if ndim != expected_ndim:
    kind = 'labels' if expected_ndim == 1 else 'images'
    raise IdxError(
        f'{path}: has {ndim} dimensions, expected {expected_ndim} for '
        f'{kind}. Are the image and label files swapped?')
  header_size = 4 + 4 * ndim
  if len(raw) < header_size:
    raise IdxError(f'{path}: truncated header.')
  shape = struct.unpack(f'>{ndim}I', raw[4:header_size])
  expected_bytes = int(np.prod(shape))
  have = len(raw) - header_size
  if have != expected_bytes:
    problem = 'truncated' if have < expected_bytes else 'has trailing data'
    raise IdxError(
        f'{path}: {problem}: header says {"x".join(map(str, shape))} = '
        f'{expected_bytes} bytes of data, file holds {have}.')
  return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def read_split(images_path, labels_path, num_classes, image_size=28):
  """Reads a matching pair of image and label files.

  Returns:
    (images uint8 [n, size, size, 1], labels int32 [n]).

  Raises:
    IdxError: if either file is bad or the two do not match.
  """
  images = read_idx(images_path, 3)
  labels = read_idx(labels_path, 1)
  if images.shape[1:] != (image_size, image_size):
    raise IdxError(
        f'{images_path}: images are {images.shape[1]}x{images.shape[2]}, '
        f'expected {image_size}x{image_size}.')
  if len(images) != len(labels):
    raise IdxError(
        f'{images_path} holds {len(images)} images but {labels_path} holds '
        f'{len(labels)} labels: the files do not belong together.')
  if len(labels) and labels.max() >= num_classes:
    raise IdxError(
        f'{labels_path}: label {labels.max()} is out of range for '
        f'{num_classes} classes.')
  return images[..., np.newaxis], labels.astype(np.int32)
