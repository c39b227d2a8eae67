"""Header sniffing: formats, sizes and frame counts without decoding."""

import io
import re
import struct

import numpy as np
from PIL import Image
import pytest

from batch_predict import image_header
from tests.helpers import image_files
from trainer import errors


def _encode(pixels, image_format, **options):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, image_format, **options)
  return buffer.getvalue()


@pytest.mark.parametrize('image_format,options,channels', [
    ('JPEG', {}, 1),
    ('JPEG', {}, 3),
    ('JPEG', {'progressive': True}, 3),
    ('JPEG', {'exif': b'Exif\x00\x00' + b'\x00' * 64}, 3),
    ('PNG', {}, 1),
    ('PNG', {}, 3),
    ('GIF', {}, 1),
    ('BMP', {}, 3),
])
def test_reads_format_and_size_of_images_pillow_writes(image_format, options,
                                                       channels):
  pixels = image_files.random_pixels(37, 53, channels)  # 37 high, 53 wide.
  info = image_header.read_header(_encode(pixels, image_format, **options))
  assert info == image_header.ImageInfo(image_format, 53, 37, 1)
  assert info.pixels == 37 * 53


def test_sixteen_bit_png_cmyk_jpeg_and_top_down_bmp_are_ordinary_images():
  digit = image_files.digits(1)[0][0]
  sixteen_bit, cmyk = (image_files.sixteen_bit_png(digit),
                       image_files.cmyk_jpeg(digit))
  assert sixteen_bit[24] == 16  # IHDR bit depth.
  assert Image.open(io.BytesIO(cmyk)).mode == 'CMYK'
  assert image_header.check_image(sixteen_bit, 10**6) == ('PNG', 28, 28, 1)
  assert image_header.check_image(cmyk, 10**6) == ('JPEG', 28, 28, 1)
  bmp = bytearray(_encode(image_files.random_pixels(5, 7), 'BMP'))
  bmp[22:26] = (-5).to_bytes(4, 'little', signed=True)  # Top-down rows.
  assert image_header.read_header(bytes(bmp)) == ('BMP', 7, 5, 1)


def test_counts_frames_of_animated_gif_and_png():
  info = image_header.read_header(image_files.animated_gif(frames=4))
  assert (info.format, info.frames) == ('GIF', 4)
  frames = [Image.fromarray(image_files.random_pixels(8, 8, 3, seed=i))
            for i in range(2)]
  buffer = io.BytesIO()
  frames[0].save(buffer, 'PNG', save_all=True, append_images=frames[1:])
  assert image_header.read_header(buffer.getvalue()).frames == 2
  with pytest.raises(image_header.HeaderError, match='animated GIF with 4 '
                     'frames') as raised:
    image_header.check_image(image_files.animated_gif(frames=4), 10**6)
  assert raised.value.kind == errors.ANIMATED


def test_decompression_bomb_is_refused_from_its_header():
  bomb = image_files.bomb_png()
  assert len(bomb) < 1_000_000  # A small file...
  info = image_header.read_header(bomb)
  assert info.pixels == 10_001 * 10_001  # ...of over 100 million pixels.
  with pytest.raises(image_header.HeaderError) as raised:
    image_header.check_image(bomb, max_pixels=100_000_000)
  assert raised.value.kind == errors.TOO_MANY_PIXELS
  assert '10,001 x 10,001' in str(raised.value)
  assert '--max_image_pixels' in str(raised.value)
  assert image_header.check_image(bomb, max_pixels=10**9) == info


def test_gif_frame_larger_than_its_screen_counts_at_its_own_size():
  gif = bytearray(_encode(image_files.random_pixels(4, 4, 1), 'GIF'))
  gif[6:10] = bytes([1, 0, 1, 0])  # Logical screen 1 x 1; the frame is 4 x 4.
  assert image_header.read_header(bytes(gif)).pixels == 16


@pytest.mark.parametrize('content,kind,words', [
    (b'', errors.EMPTY_FILE, 'empty file'),
    (b'hello, world\nthis is text\n', errors.NOT_AN_IMAGE, 'text'),
    (b'BMW and Audi photos: see list.txt', errors.NOT_AN_IMAGE, 'text'),
    ('caf\u00e9 cr\u00e8me'.encode(), errors.NOT_AN_IMAGE, 'text'),
    (image_files.random_bytes(), errors.NOT_AN_IMAGE,
     'unrecognised content'),
    (b'%PDF-1.7\n...', errors.UNSUPPORTED_FORMAT, 'PDF'),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg">',
     errors.UNSUPPORTED_FORMAT, 'SVG'),
    (b'\xff\xd8\xff\xe0\x00\x10JFIF', errors.CORRUPT_HEADER,
     'truncated JPEG'),
    (b'\x89PNG\r\n\x1a\n\x00\x00', errors.CORRUPT_HEADER,
     'truncated PNG'),
    (b'GIF89a\x05\x00\x05\x00\x00\x00\x00;', errors.CORRUPT_HEADER,
     'truncated GIF'),
])
def test_bad_bytes_get_a_kind_and_a_message_a_person_can_act_on(
    content, kind, words):
  with pytest.raises(image_header.HeaderError) as raised:
    image_header.check_image(content, 10**6)
  assert raised.value.kind == kind
  assert words in str(raised.value)


@pytest.mark.parametrize('image_format,name', [
    ('WEBP', 'WebP'), ('TIFF', 'TIFF'), ('ICO', 'ICO')])
def test_other_image_formats_are_named_in_the_error(image_format, name):
  content = _encode(image_files.random_pixels(16, 16, 3), image_format)
  assert image_header.sniff_format(content[:32]) == name
  with pytest.raises(image_header.HeaderError,
                     match=f'{name} file.*convert it to PNG or JPEG') as raised:
    image_header.read_header(content)
  assert raised.value.kind == errors.UNSUPPORTED_FORMAT


def test_zero_sized_image_is_a_corrupt_header():
  png = bytearray(_encode(image_files.random_pixels(3, 3), 'PNG'))
  png[16:20] = bytes(4)  # IHDR width = 0.
  with pytest.raises(image_header.HeaderError, match='0 x 3') as raised:
    image_header.read_header(bytes(png))
  assert raised.value.kind == errors.CORRUPT_HEADER


def test_truncated_jpeg_with_whole_header_passes_the_header_check():
  # Only the decoder can tell: the model handler isolates it (see
  # test_model_handler.py).
  digit = image_files.digits(1)[0][0]
  truncated = image_files.truncated_jpeg(digit)
  assert image_header.check_image(truncated, 10**6) == ('JPEG', 28, 28, 1)


def test_sniff_format_needs_only_the_first_bytes():
  png = _encode(np.zeros((4, 4), np.uint8), 'PNG')
  assert image_header.sniff_format(png[:16]) == 'PNG'
  assert image_header.sniff_format(b'gs://bucket/a.png\n') is None


# --------------------------------------------------------------------------
# Variants of the four formats that TensorFlow's decoder cannot read (or
# reads wrongly): refused from the header, and the decoder checked to agree.


def _bmp(bits, compression, pixels, palette=b'', header_size=40, masks=b''):
  """A hand-made BMP (2 rows, 4 pixels wide) of any bit depth/compression."""
  if header_size == 12:  # OS/2 BITMAPCOREHEADER.
    dib = struct.pack('<IHHHH', 12, 4, 2, 1, bits)
  else:
    dib = struct.pack('<IiiHHIIiiII', header_size, 4, 2, 1, bits, compression,
                      len(pixels), 2835, 2835, len(palette) // 4, 0) + masks
    dib += bytes(header_size - len(dib))
  offset = 14 + len(dib) + len(palette)
  return (b'BM' + struct.pack('<IHHI', offset + len(pixels), 0, 0, offset) +
          dib + palette + pixels)


_GREY_PALETTE = b''.join(bytes([i, i, i, 0]) for i in range(256))
_SIXTEEN_GREYS = b''.join(bytes([i * 16] * 3 + [0]) for i in range(16))


def _pillow_bmp(mode):
  buffer = io.BytesIO()
  Image.fromarray(image_files.random_pixels(5, 7)).convert(mode).save(buffer,
                                                                   'BMP')
  return buffer.getvalue()


def _decodes_like_pillow(data):
  """Whether TensorFlow decodes `data` to the pixels Pillow shows."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    decoded = tf.io.decode_image(data, channels=3,
                                 expand_animations=False).numpy()
  except tf.errors.InvalidArgumentError:
    return False
  shown = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
  return decoded.shape == shown.shape and np.array_equal(decoded, shown)


_RGBA_MASKS = struct.pack('<IIII', 0xFF, 0xFF00, 0xFF0000, 0xFF000000)
_BGRA_MASKS = struct.pack('<IIII', 0xFF0000, 0xFF00, 0xFF, 0xFF000000)


@pytest.mark.parametrize('name,data,words', [
    ('1-bit (Pillow)', lambda: _pillow_bmp('1'), '1-bit BMP'),
    ('palette (Pillow)', lambda: _pillow_bmp('P'),
     '8-bit colour-mapped (palette) BMP'),
    ('4-bit', lambda: _bmp(4, 0, b'\x01\x23\x00\x00' * 2, _SIXTEEN_GREYS),
     '4-bit BMP'),
    ('RLE8', lambda: _bmp(8, 1, b'\x04\x10\x00\x00' * 2 + b'\x00\x01',
                          _GREY_PALETTE), '8-bit RLE8-compressed BMP'),
    ('RLE4', lambda: _bmp(4, 2, b'\x04\x12\x00\x00' * 2 + b'\x00\x01',
                          _SIXTEEN_GREYS), '4-bit RLE4-compressed BMP'),
    ('16-bit', lambda: _bmp(16, 0, b'\x1f\x00' * 8), '16-bit BMP'),
    ('OS/2', lambda: _bmp(24, 0, b'\x10\x20\x30' * 8, header_size=12),
     'OS/2 BMP (12-byte header)'),
    ('RGBA masks', lambda: _bmp(32, 3, b'\x10\x20\x30\xff' * 8,
                                header_size=108, masks=_RGBA_MASKS),
     'colour masks 0x000000ff'),
])
def test_bmp_variants_the_decoder_cannot_read_are_unsupported(name, data,
                                                              words):
  data = data()
  assert not _decodes_like_pillow(data), f'TensorFlow now reads {name}'
  with pytest.raises(image_header.HeaderError) as raised:
    image_header.check_image(data, 10**6)
  assert raised.value.kind == errors.UNSUPPORTED_FORMAT
  assert words in str(raised.value)
  assert 'Convert it to PNG' in str(raised.value)
  assert 'truncated' not in str(raised.value)


@pytest.mark.parametrize('name,data', [
    ('grey (Pillow)', lambda: _pillow_bmp('L')),
    ('24-bit (Pillow)', lambda: _pillow_bmp('RGB')),
    ('32-bit (Pillow)', lambda: _pillow_bmp('RGBA')),
    ('32-bit BGRA masks', lambda: _bmp(32, 3, b'\x10\x20\x30\xff' * 8,
                                       header_size=108, masks=_BGRA_MASKS)),
    ('8-bit, 16 greys', lambda: _bmp(
        8, 0, bytes([1, 2, 3, 15]) * 2,
        b''.join(bytes([i, i, i, 0]) for i in range(16)))),
])
def test_bmp_variants_the_decoder_reads_pass(name, data):
  data = data()
  assert _decodes_like_pillow(data), name
  assert image_header.check_image(data, 10**6).format == image_header.BMP


def _jpeg_with_frame(marker, precision=8):
  """A Pillow baseline JPEG whose frame header says another process."""
  data = bytearray(_encode(image_files.random_pixels(8, 8), 'JPEG'))
  frame = data.index(b'\xff\xc0')
  data[frame + 1] = marker
  data[frame + 4] = precision
  return bytes(data)


@pytest.mark.parametrize('marker,precision,words', [
    (0xC3, 8, 'lossless JPEG (SOF3)'),
    (0xC5, 8, 'hierarchical JPEG (SOF5)'),
    (0xCB, 8, 'lossless arithmetic-coded JPEG'),
    (0xC0, 12, '12-bit JPEG'),
    (0xC1, 12, '12-bit JPEG'),
])
def test_jpeg_variants_the_decoder_cannot_read_are_unsupported(
    marker, precision, words):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  data = _jpeg_with_frame(marker, precision)
  # libjpeg refuses these from the frame header too.
  with pytest.raises(tf.errors.InvalidArgumentError):
    tf.io.decode_image(data)
  with pytest.raises(image_header.HeaderError,
                     match=re.escape(words)) as raised:
    image_header.check_image(data, 10**6)
  assert raised.value.kind == errors.UNSUPPORTED_FORMAT


@pytest.mark.parametrize('marker', [0xC0, 0xC1, 0xC2, 0xC9, 0xCA])
def test_baseline_extended_progressive_and_arithmetic_jpegs_pass(marker):
  # Arithmetic-coded (SOF9, SOF10) JPEGs made with `jpegtran -arithmetic`
  # decode in TensorFlow 2.21; here only their headers are checked.
  info = image_header.check_image(_jpeg_with_frame(marker), 10**6)
  assert info == ('JPEG', 8, 8, 1)


@pytest.mark.parametrize('mode,options', [
    ('1', {}), ('L', {}), ('P', {}), ('P', {'bits': 2}), ('LA', {}),
    ('RGBA', {}), ('P', {'transparency': 0})])
def test_png_variants_decode_and_pass(mode, options):
  buffer = io.BytesIO()
  Image.fromarray(image_files.random_pixels(9, 11)).convert(mode).save(
      buffer, 'PNG', **options)
  assert _decodes_like_pillow(buffer.getvalue())
  assert image_header.check_image(buffer.getvalue(), 10**6).format == 'PNG'
