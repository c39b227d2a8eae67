"""Photos as phones and editors write them, made with Pillow: EXIF, alpha.

`rotated_jpeg(pixels, orientation)` stores the pixels turned the way a
camera held sideways stores them, and sets the EXIF Orientation tag that
tells viewers how to turn them back; Pillow's `ImageOps.exif_transpose` is
the reference viewer.
"""

import io
import struct

import numpy as np
from PIL import Image
from PIL import ImageOps

ORIENTATIONS = tuple(range(1, 9))
# How to turn upright pixels into what a file with each orientation stores
# (the inverse of what a viewer does).
_STORED = {
    1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270,
}


def tiff_block(orientation, byte_order=b'II', extra_entries=1):
  """A TIFF header and IFD0 holding the Orientation tag (0x0112).

  Args:
    orientation: the tag's value.
    byte_order: b'II' (little-endian) or b'MM' (big-endian).
    extra_entries: entries (Make, 0x010F) before the orientation, as
      cameras write them.
  """
  order = '<' if byte_order == b'II' else '>'
  entries = [(0x010F, 2, 4, b'Cam\x00')] * extra_entries
  entries.append((0x0112, 3, 1, struct.pack(order + 'HH', orientation, 0)))
  body = byte_order + struct.pack(order + 'HI', 42, 8)
  body += struct.pack(order + 'H', len(entries))
  for tag, kind, count, value in entries:
    body += struct.pack(order + 'HHI', tag, kind, count) + value
  return body + struct.pack(order + 'I', 0)


def exif_payload(orientation, byte_order=b'II'):
  return b'Exif\x00\x00' + tiff_block(orientation, byte_order)


def rotated_jpeg(pixels, orientation, byte_order=b'II', **options):
  """JPEG bytes of upright `pixels` stored turned, with the EXIF tag set."""
  image = Image.fromarray(pixels)
  if _STORED[orientation] is not None:
    image = image.transpose(_STORED[orientation])
  buffer = io.BytesIO()
  options.setdefault('quality', 100)
  options.setdefault('subsampling', 0)
  image.save(buffer, 'JPEG', exif=exif_payload(orientation, byte_order),
             **options)
  return buffer.getvalue()


def upright_jpeg(pixels, **options):
  buffer = io.BytesIO()
  options.setdefault('quality', 100)
  options.setdefault('subsampling', 0)
  Image.fromarray(pixels).save(buffer, 'JPEG', **options)
  return buffer.getvalue()


def as_viewer_shows(encoded):
  """float RGB [h, w, 3] in [0, 1] as Pillow shows the file (the reference)."""
  image = ImageOps.exif_transpose(Image.open(io.BytesIO(encoded)))
  return np.asarray(image.convert('RGB'), np.float32) / 255.0


def asymmetric_pixels(height=40, width=40):
  """RGB pixels with no symmetry: every turn or flip of them differs."""
  pixels = np.full((height, width, 3), 30, np.uint8)
  pixels[:height // 5, :width * 3 // 5] = 250  # A bar at the top left.
  pixels[height // 2:, width * 3 // 4:, 1] = 200  # A block at the right.
  pixels[height * 3 // 4:, :width // 4, 2] = 220  # A corner at bottom left.
  return pixels


def png(pixels, **options):
  """PNG bytes; the mode follows the channels (L, LA, RGB, RGBA)."""
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, 'PNG', **options)
  return buffer.getvalue()
