"""Identifies image files from their bytes, without decoding any pixels.

The scorer checks every file with `check_image` before it joins a batch, so a
file that is not an image, an image too big to decode safely (a
decompression bomb: a small file that would expand to gigabytes of pixels) or
an animated image becomes one error record instead of failing the batch of
images it would have been scored with.

Only headers and block structure are parsed, in pure Python: the magic bytes
give the format, the header gives width and height, and GIF blocks (or PNG's
`acTL` chunk) give the number of frames. Pixel data is never decompressed.
The model's decoder (TensorFlow's, inside the artifact) reads JPEG, PNG, GIF
and BMP; other formats are recognised only to name them in the error.

Some variants of those formats TensorFlow 2.21's decoder cannot read, or
reads wrongly; they are refused from the header as `unsupported_format`
(found with real files, made with Pillow, libjpeg-turbo and by hand):
* BMP: TensorFlow reads only uncompressed 8-, 24- and 32-bit pixels with a
  Windows header (40 bytes or more). 1-, 4- and 16-bit, RLE4/RLE8/JPEG/PNG
  compression and OS/2 (12- or 16-byte) headers fail; an 8-bit BMP's
  palette is ignored (its colour indices come out as grey levels), so only
  a grey-ramp palette is accepted; 32-bit bit fields other than BGR masks
  come out with the channels swapped.
* JPEG: lossless (SOF3) and 12-bit data fail; hierarchical frames
  (SOF5-7, SOF13-15) are not supported by libjpeg. Baseline, extended,
  progressive and arithmetic-coded 8-bit JPEGs (grey, RGB, CMYK) decode.
* PNG (1- to 16-bit, grey, palette, alpha, interlaced) and GIF (interlaced,
  transparent) decode in every variant tried.

Written here rather than taken from Pillow's `Image.open`, which is lazy
too (it parses the header and decodes nothing until `load`). Pillow is not
a dependency of this project, though Beam 2.77 and TensorBoard install it
(`pillow>=12.1.1,<13`); measured here with Pillow 12.3 (2 shared cores):
* It costs 8 to 12 times more per file: `Image.open` and `n_frames` took
  24 us for a 28x28 PNG, 36 us for a JPEG, 87 us for a 3-frame GIF and 80 us
  to refuse a text file (it tries every format plugin), against 3, 5, 10
  and under 1 us here; the scorer runs this on every input.
* It would not decide what this module decides: Pillow opens, and decodes,
  the BMP variants above that TensorFlow refuses or misreads, so those
  rules would stay here, reading the same header fields from Pillow's
  `info`; and for bytes it cannot identify it raises one
  `UnidentifiedImageError`, where this module says text, random bytes, or
  which other format (`_unknown_content`).
* Its decompression-bomb limit is one process-wide setting
  (`Image.MAX_IMAGE_PIXELS`, a warning above it and an error above twice
  it), not the run's `--max_image_pixels`.
Frame counts are no reason either way: Pillow counts GIF frames by skipping
their data blocks without decoding, as `_read_gif` does, and reads an APNG's
`acTL` chunk at open.
"""

import struct
from typing import NamedTuple

from trainer import errors

JPEG = 'JPEG'
PNG = 'PNG'
GIF = 'GIF'
BMP = 'BMP'
SUPPORTED_FORMATS = (JPEG, PNG, GIF, BMP)

_HOW_TO_FIX_FORMAT = ('convert it to PNG or JPEG (the model reads '
                      f'{", ".join(SUPPORTED_FORMATS)})')
_HOW_TO_FIX_BMP = (
    "TensorFlow's decoder in the model reads uncompressed 8-bit grey, "
    '24-bit and 32-bit BMP only. Convert it to PNG (e.g. with Pillow: '
    "Image.open(path).convert('RGB').save('image.png')), or save it as a "
    '24-bit BMP.')
_HOW_TO_FIX_JPEG = (
    "TensorFlow's decoder in the model reads 8-bit baseline, progressive "
    'and arithmetic-coded JPEG only. Convert it to PNG (16-bit PNG keeps '
    'extra precision) or to an 8-bit baseline JPEG.')

# Magic bytes of formats the model cannot read, so errors can name them.
# Checked in order; each entry is (offset, bytes, name).
_OTHER_FORMATS = (
    (0, b'II*\x00', 'TIFF'),
    (0, b'MM\x00*', 'TIFF'),
    (0, b'8BPS', 'Photoshop (PSD)'),
    (0, b'\x00\x00\x01\x00', 'ICO'),
    (0, b'\x00\x00\x00\x0cjP  \r\n\x87\n', 'JPEG 2000'),
    (0, b'\xff\x4f\xff\x51', 'JPEG 2000'),
    (0, b'\xff\x0a', 'JPEG XL'),
    (0, b'\x00\x00\x00\x0cJXL \r\n\x87\n', 'JPEG XL'),
    (0, b'%PDF', 'PDF'),
)
_BMP_HEADER_SIZES = frozenset(
    struct.pack('<I', size) for size in (12, 16, 40, 52, 56, 64, 108, 124))
# ISO base media (`....ftyp<brand>`) brands of still-image formats.
_FTYP_BRANDS = {b'heic': 'HEIC', b'heix': 'HEIC', b'mif1': 'HEIF',
                b'msf1': 'HEIF', b'avif': 'AVIF', b'avis': 'AVIF'}


class ImageInfo(NamedTuple):
  """What the header says about an image."""
  format: str
  width: int
  height: int
  frames: int = 1

  @property
  def pixels(self):
    return self.width * self.height


class HeaderError(errors.UserError, ValueError):
  """The bytes are not an image the model can score; `kind` (one of
  errors.HEADER_KINDS) says why."""


def check_image(data, max_pixels):
  """Returns the header of an image the model can score, or raises.

  Args:
    data: the whole file.
    max_pixels: refuse images with more than this many pixels (width x
      height, of the largest frame), without decoding them.

  Returns:
    The `ImageInfo` of the image.

  Raises:
    HeaderError: if the bytes are empty, not an image, an unsupported or
      corrupt image, an animation, or too many pixels.
  """
  info = read_header(data)
  if info.pixels > max_pixels:
    raise HeaderError(
        f'image is {info.width:,} x {info.height:,} = {info.pixels:,} pixels, '
        f'more than the limit of {max_pixels:,} (--max_image_pixels): refused '
        'without decoding, as a possible decompression bomb. Downscale it, or '
        'raise --max_image_pixels if you trust the file.',
        errors.TOO_MANY_PIXELS)
  if info.frames > 1:
    raise HeaderError(
        f'animated {info.format} with {info.frames} frames: the model scores '
        'single images. Extract the frame you want scored (e.g. the first) '
        'and save it as PNG.',
        errors.ANIMATED)
  return info


def read_header(data):
  """Identifies the format, size and frame count of an encoded image.

  Args:
    data: the file's bytes (the whole file for GIF and PNG frame counts).

  Returns:
    An `ImageInfo`. `frames` is 1 except for animated GIF and PNG.

  Raises:
    HeaderError: if the bytes are empty, not an image, an image format the
      model cannot read, or an image whose header is cut short or invalid.
  """
  if not data:
    raise HeaderError(
        'empty file (0 bytes): nothing to score. Re-copy or re-export the '
        'image.',
        errors.EMPTY_FILE)
  data = memoryview(data)
  readers = {JPEG: _read_jpeg, PNG: _read_png, GIF: _read_gif, BMP: _read_bmp}
  image_format = sniff_format(data[:64])
  if image_format not in readers:
    raise _unknown_content(bytes(data[:64]))
  info = readers[image_format](data)
  if info.width <= 0 or info.height <= 0:
    raise HeaderError(
        f'corrupt {info.format} header: it says the image is {info.width} x '
        f'{info.height} pixels. Re-export the image.',
        errors.CORRUPT_HEADER)
  return info


def sniff_format(head):
  """Names the image format of a file from its first bytes.

  Args:
    head: the first bytes of a file (32 are enough).

  Returns:
    One of `SUPPORTED_FORMATS`, the name of another image format (which the
    model cannot read), or None if the bytes do not start an image.
  """
  head = bytes(head)
  if head[:3] == b'\xff\xd8\xff':
    return JPEG
  if head[:8] == b'\x89PNG\r\n\x1a\n':
    return PNG
  if head[:6] in (b'GIF87a', b'GIF89a'):
    return GIF
  # "BM" alone could start a text file; a BMP's DIB header size is one of a
  # few small numbers.
  if head[:2] == b'BM' and head[14:18] in _BMP_HEADER_SIZES:
    return BMP
  for offset, magic, name in _OTHER_FORMATS:
    if head[offset:offset + len(magic)] == magic:
      return name
  if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
    return 'WebP'
  if head[4:8] == b'ftyp' and head[8:12] in _FTYP_BRANDS:
    return _FTYP_BRANDS[head[8:12]]
  return None


def _truncated(image_format, where):
  return HeaderError(
      f'truncated {image_format}: the file ends {where}. It was probably cut '
      'short while copying; re-copy it.',
      errors.CORRUPT_HEADER)


def _unknown_content(head):
  """The error for bytes that are not JPEG, PNG, GIF or BMP."""
  other_format = sniff_format(head)
  if other_format:
    return HeaderError(
        f'{other_format} file: not an image format the model reads; '
        f'{_HOW_TO_FIX_FORMAT}.',
        errors.UNSUPPORTED_FORMAT)
  text = _as_text(head)
  if text is not None:
    if text.lstrip().lower().startswith(('<svg', '<?xml')) and '<svg' in text:
      return HeaderError(
          'SVG (vector) image: not a format the model reads; render it and '
          f'{_HOW_TO_FIX_FORMAT}.',
          errors.UNSUPPORTED_FORMAT)
    return HeaderError(
        f'not an image: the file holds text ({text[:40]!r}...). Check that '
        'the path points at an image file.',
        errors.NOT_AN_IMAGE)
  return HeaderError(
      f'not an image: unrecognised content (first bytes {head[:8].hex(" ")}), '
      f'expected {", ".join(SUPPORTED_FORMATS)}. Check that the path points at '
      'an image file and that it was copied whole.',
      errors.NOT_AN_IMAGE)


def _as_text(head):
  """The head of the file as text if it looks like text, else None."""
  if b'\x00' in head:
    return None
  # The head may end inside a multi-byte character.
  text = head.decode('utf-8', errors='ignore')
  if len(text.encode('utf-8')) < len(head) - 3:
    return None
  printable = sum(ch.isprintable() or ch in '\t\r\n' for ch in text)
  return text if text and printable >= 0.95 * len(text) else None


# Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4
# (Huffman tables), C8 (reserved) and CC (arithmetic tables) are not frames.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_JPEG_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}
# Frame types the model's decoder cannot read.
_UNSUPPORTED_JPEG_FRAMES = {
    0xC3: 'lossless JPEG (SOF3)',
    0xC5: 'hierarchical JPEG (SOF5)',
    0xC6: 'hierarchical progressive JPEG (SOF6)',
    0xC7: 'hierarchical lossless JPEG (SOF7)',
    0xCB: 'lossless arithmetic-coded JPEG (SOF11)',
    0xCD: 'hierarchical arithmetic-coded JPEG (SOF13)',
    0xCE: 'hierarchical progressive arithmetic-coded JPEG (SOF14)',
    0xCF: 'hierarchical lossless arithmetic-coded JPEG (SOF15)',
}


def _read_jpeg(data):
  """Walks JPEG marker segments up to the frame header (SOFn)."""
  position = 2
  while True:
    start = position
    # Markers may be preceded by any number of 0xFF fill bytes.
    while position < len(data) and data[position] == 0xFF:
      position += 1
    if position >= len(data):
      raise _truncated(JPEG, 'before its frame header')
    marker = data[position]
    if position == start or marker == 0x00:
      raise HeaderError(
          f'corrupt JPEG header: expected a marker at byte {start}. '
          'Re-export the image.',
          errors.CORRUPT_HEADER)
    position += 1
    if marker in _JPEG_STANDALONE_MARKERS:
      continue
    if marker in (0xD9, 0xDA):  # End of image or start of scan data.
      raise HeaderError(
          'corrupt JPEG: no frame header before the image data. Re-export '
          'the image.',
          errors.CORRUPT_HEADER)
    if position + 2 > len(data):
      raise _truncated(JPEG, 'before its frame header')
    (length,) = struct.unpack_from('>H', data, position)
    if marker in _JPEG_FRAME_MARKERS:
      if position + 7 > len(data):
        raise _truncated(JPEG, 'inside its frame header')
      precision = data[position + 2]
      height, width = struct.unpack_from('>HH', data, position + 3)
      _check_jpeg_variant(marker, precision)
      return ImageInfo(JPEG, width, height)
    position += length


def _check_jpeg_variant(marker, precision):
  if marker in _UNSUPPORTED_JPEG_FRAMES:
    raise HeaderError(
        f'{_UNSUPPORTED_JPEG_FRAMES[marker]}: {_HOW_TO_FIX_JPEG}',
        errors.UNSUPPORTED_FORMAT)
  if precision != 8:
    raise HeaderError(
        f'{precision}-bit JPEG: {_HOW_TO_FIX_JPEG}',
        errors.UNSUPPORTED_FORMAT)


def _read_png(data):
  """Reads IHDR, then the chunks before the image data for `acTL` (APNG)."""
  if len(data) < 33:
    raise _truncated(PNG, 'inside its header')
  length, chunk_type = struct.unpack_from('>I4s', data, 8)
  if chunk_type != b'IHDR' or length != 13:
    raise HeaderError(
        'corrupt PNG: the first chunk is not a valid IHDR header. Re-export '
        'the image.',
        errors.CORRUPT_HEADER)
  width, height = struct.unpack_from('>II', data, 16)
  frames = 1
  position = 33
  while position + 8 <= len(data):
    length, chunk_type = struct.unpack_from('>I4s', data, position)
    if chunk_type == b'IDAT':
      break
    if chunk_type == b'acTL' and position + 12 <= len(data):
      (frames,) = struct.unpack_from('>I', data, position + 8)
      break
    position += 12 + length
  return ImageInfo(PNG, width, height, frames)


def _skip_gif_sub_blocks(data, position):
  """Returns the position after a chain of GIF data sub-blocks."""
  while position < len(data):
    size = data[position]
    position += 1 + size
    if size == 0:
      return position
  raise _truncated(GIF, 'inside its image data')


def _read_gif(data):
  """Reads the logical screen size and counts image blocks (frames)."""
  if len(data) < 13:
    raise _truncated(GIF, 'inside its header')
  width, height, flags = struct.unpack_from('<HHB', data, 6)
  position = 13
  if flags & 0x80:  # Global colour table.
    position += 3 * 2**((flags & 0x07) + 1)
  frames = 0
  largest = (width, height)
  while position < len(data):
    block = data[position]
    if block == 0x3B:  # Trailer.
      break
    if block == 0x21:  # Extension: label, then sub-blocks.
      position = _skip_gif_sub_blocks(data, position + 2)
    elif block == 0x2C:  # Image descriptor: one frame.
      if position + 10 > len(data):
        raise _truncated(GIF, 'inside a frame header')
      frame_width, frame_height, frame_flags = struct.unpack_from(
          '<HHB', data, position + 5)
      if frame_width * frame_height > largest[0] * largest[1]:
        largest = (frame_width, frame_height)
      position += 10
      if frame_flags & 0x80:  # Local colour table.
        position += 3 * 2**((frame_flags & 0x07) + 1)
      frames += 1
      # One byte of LZW code size, then the compressed pixels.
      position = _skip_gif_sub_blocks(data, position + 1)
    else:
      raise HeaderError(
          f'corrupt GIF: unknown block 0x{block:02x} at byte {position}. '
          'Re-export the image.',
          errors.CORRUPT_HEADER)
  if frames == 0:
    raise _truncated(GIF, 'before its first frame')
  # A frame larger than the logical screen is what a decoder would have to
  # hold, so the size reported (and checked) is the largest of the two.
  width, height = largest
  return ImageInfo(GIF, width, height, frames)


# BMP compression types other than none (0) and bit fields (3).
_BMP_COMPRESSIONS = {1: 'RLE8-compressed', 2: 'RLE4-compressed',
                     4: 'JPEG-compressed', 5: 'PNG-compressed',
                     6: 'alpha-bit-field', 11: 'CMYK', 12: 'CMYK RLE8',
                     13: 'CMYK RLE4'}
_BMP_BITFIELDS = 3
_BMP_BGR_MASKS = (0xFF0000, 0x00FF00, 0x0000FF)
# Colour masks and the palette start here (after a 40-byte header, masks
# follow it; larger headers hold them at the same place).
_BMP_MASKS_OFFSET = 54


def _read_bmp(data):
  """Reads the BMP file header and the DIB header's size and pixel format."""
  if len(data) < 26:
    raise _truncated(BMP, 'inside its header')
  (header_size,) = struct.unpack_from('<I', data, 14)
  if header_size < 40:  # OS/2 headers (12 or 16 bytes).
    raise HeaderError(
        f'OS/2 BMP ({header_size}-byte header): {_HOW_TO_FIX_BMP}',
        errors.UNSUPPORTED_FORMAT)
  if len(data) < 34:
    raise _truncated(BMP, 'inside its header')
  width, height, _, bits, compression = struct.unpack_from('<iiHHI', data, 18)
  _check_bmp_variant(data, header_size, bits, compression)
  # A negative height means top-down rows.
  return ImageInfo(BMP, width, abs(height))


def _check_bmp_variant(data, header_size, bits, compression):
  """Refuses the BMP variants TensorFlow cannot decode, or decodes wrongly."""
  if bits not in (8, 24, 32) or compression in _BMP_COMPRESSIONS:
    variant = ' '.join(filter(None, (f'{bits}-bit',
                                     _BMP_COMPRESSIONS.get(compression))))
    raise HeaderError(f'{variant} BMP: {_HOW_TO_FIX_BMP}',
                      errors.UNSUPPORTED_FORMAT)
  if compression not in (0, _BMP_BITFIELDS):
    raise HeaderError(
        f'corrupt BMP: unknown compression type {compression}. Re-export '
        'the image.',
        errors.CORRUPT_HEADER)
  if compression == _BMP_BITFIELDS and bits == 32:
    if len(data) < _BMP_MASKS_OFFSET + 12:
      raise _truncated(BMP, 'inside its colour masks')
    masks = struct.unpack_from('<III', data, _BMP_MASKS_OFFSET)
    if masks != _BMP_BGR_MASKS:
      raise HeaderError(
          '32-bit BMP with colour masks '
          f'{" ".join(f"{m:#010x}" for m in masks)} (not BGR): its colours '
          f'would come out swapped. {_HOW_TO_FIX_BMP}',
          errors.UNSUPPORTED_FORMAT)
  if bits == 8:
    _check_bmp_palette(data, header_size)


def _check_bmp_palette(data, header_size):
  """An 8-bit BMP must have a grey-ramp palette: TensorFlow ignores it."""
  (colours,) = struct.unpack_from('<I', data, 46)
  colours = min(colours or 256, 256)
  start = 14 + header_size
  if len(data) < start + 4 * colours:
    raise _truncated(BMP, 'inside its palette')
  for index in range(colours):
    blue, green, red = data[start + 4 * index:start + 4 * index + 3]
    if not blue == green == red == index:
      raise HeaderError(
          '8-bit colour-mapped (palette) BMP: '
          "TensorFlow's decoder would read its colour indices as grey "
          f'levels, not its colours. {_HOW_TO_FIX_BMP}',
          errors.UNSUPPORTED_FORMAT)
