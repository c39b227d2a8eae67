"""Image files for the tests, made with Pillow and zlib.

`encode_image`, `random_pixels` and `write_image_folder` make pixels, files
and image-folder datasets; `digits` gives real test digits. For the scorer,
`write_catalogue` writes the bad-input catalogue of the scoring issue beside
real digits, so tests can check that each bad file gets its own error record
and every good one is scored, and `write_hostile_folder` a folder of every
kind of entry that is no image file.
"""

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image


def encode_image(pixels, image_format, **options):
  """Encodes uint8 pixels ([h, w] grey or [h, w, 3] colour) with Pillow."""
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, image_format, **options)
  return buffer.getvalue()


def random_pixels(height, width, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  shape = (height, width) if channels == 1 else (height, width, channels)
  return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_image_folder(root, classes, per_class, sizes=((28, 28),),
                       modes=('L', 'RGB'), formats=('PNG', 'JPEG')):
  """Writes an image folder of mixed sizes, grey/colour, PNG/JPEG.

  Each class has a distinct mean brightness so that models can learn it.
  Returns the list of (path, label).
  """
  written = []
  for label, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      height, width = sizes[i % len(sizes)]
      mode = modes[i % len(modes)]
      image_format = formats[i % len(formats)]
      base = random_pixels(height, width, 3, seed=label * 1000 + i) // 4
      pixels = (base + label * 60).astype(np.uint8)
      if mode == 'L':
        pixels = pixels[..., 0]
      extension = 'jpg' if image_format == 'JPEG' else image_format.lower()
      path = os.path.join(root, name, f'{name}-{i:03d}.{extension}')
      with open(path, 'wb') as f:
        f.write(encode_image(pixels, image_format))
      written.append((path, label))
  return written


def digits(count, offset=0):
  """`count` real test digits: (uint8 pixels [28, 28], label) pairs."""
  from trainer.data import sources  # pylint: disable=g-import-not-at-top
  source = sources.load_mnist_sample(0.1, 0.1)
  pixels, labels = next(source.examples('test').skip(offset).batch(count)
                        .as_numpy_iterator())
  return [(p[..., 0], int(label)) for p, label in zip(pixels, labels)]


def encode(pixels, image_format, mode=None, **options):
  image = Image.fromarray(pixels)
  if mode:
    image = image.convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, image_format, **options)
  return buffer.getvalue()


def sixteen_bit_png(digit):
  """The digit as a 16-bit grey PNG (values scaled by 257, so exact)."""
  return encode_image(digit.astype(np.uint16) * 257, 'PNG')


def cmyk_jpeg(digit):
  return encode(np.stack([digit] * 3, -1), 'JPEG', mode='CMYK', quality=95)


def rgb_jpeg(digit):
  return encode(np.stack([digit] * 3, -1), 'JPEG', quality=95)


def animated_gif(frames=3, size=28):
  images = [Image.fromarray(random_pixels(size, size, 1, seed=i))
            for i in range(frames)]
  buffer = io.BytesIO()
  images[0].save(buffer, 'GIF', save_all=True, append_images=images[1:])
  return buffer.getvalue()


def _png_chunk(chunk_type, body):
  return (struct.pack('>I', len(body)) + chunk_type + body +
          struct.pack('>I', zlib.crc32(chunk_type + body)))


def bomb_png(width=10_001, height=10_001):
  """A valid grey PNG of width x height black pixels, in a small file.

  The pixel rows are compressed as they are generated, so making it needs
  no more memory than its compressed size (about 100 kB for 100 million
  pixels); decoding it would need width x height bytes and more.
  """
  compressor = zlib.compressobj(9)
  row = bytes(1 + width)  # Filter byte 0, then black pixels.
  parts = [compressor.compress(row) for _ in range(height)]
  parts.append(compressor.flush())
  header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', header) +
          _png_chunk(b'IDAT', b''.join(parts)) + _png_chunk(b'IEND', b''))


def truncated_jpeg(digit):
  """A JPEG cut in the middle of its pixel data: its header is intact."""
  whole = encode(digit, 'JPEG', quality=95)
  return whole[:len(whole) * 2 // 3]


def random_bytes(count=2000, seed=1):
  raw = np.random.default_rng(seed).integers(0, 256, count, dtype=np.uint8)
  return b'\x07\x01' + raw.tobytes()  # No image format starts like this.


# Bad inputs of the catalogue: file name -> (bytes or None for "do not
# create", expected error kind, words the error message must contain).
def bad_inputs():
  digit = digits(1)[0][0]
  return {
      'empty.png': (b'', 'empty_file', 'empty file'),
      'text-renamed.jpg': (b'Just some notes, renamed to .jpg by mistake.\n',
                           'not_an_image', 'text'),
      'truncated.jpg': (truncated_jpeg(digit), 'undecodable',
                        'truncated or corrupt'),
      'random.jpg': (random_bytes(), 'not_an_image', 'unrecognised content'),
      'bomb.png': (bomb_png(), 'too_many_pixels', '100,020,001 pixels'),
      'animated.gif': (animated_gif(), 'animated', '3 frames'),
      'missing.png': (None, 'not_found', 'no such file'),
  }


def write_catalogue(folder, good_count=6):
  """Writes good digits (PNG, JPEG, 16-bit PNG, CMYK JPEG, BMP), bad inputs.

  Args:
    folder: a local folder to write into.
    good_count: how many digits to write as 8-bit PNG (and as JPEG).

  Returns:
    (good, bad): good maps path -> true label; bad maps path -> (kind,
    words). The `missing.png` path is in `bad` but not on disk.
  """
  os.makedirs(folder, exist_ok=True)
  good, bad = {}, {}

  def put(name, content):
    path = os.path.join(folder, name)
    with open(path, 'wb') as f:
      f.write(content)
    return path

  for index, (digit, label) in enumerate(digits(good_count)):
    good[put(f'digit-{index}-{label}.png', encode(digit, 'PNG'))] = label
    good[put(f'digit-{index}-{label}.jpg', rgb_jpeg(digit))] = label
  digit, label = digits(1)[0]
  good[put(f'sixteen-bit-{label}.png', sixteen_bit_png(digit))] = label
  good[put(f'cmyk-{label}.jpg', cmyk_jpeg(digit))] = label
  good[put(f'colour-{label}.bmp', encode(np.stack([digit] * 3, -1),
                                         'BMP'))] = label
  for name, (content, kind, words) in bad_inputs().items():
    path = os.path.join(folder, name)
    if content is not None:
      put(name, content)
    bad[path] = (kind, words)
  return good, bad


def write_hostile_folder(folder, unreadable=False):
  """A folder of good digits and every kind of entry that is no image file.

  A named pipe, a dangling link, a link to itself, a link back up to the
  folder, a file name that is not UTF-8 and, if `unreadable`, a mode-000
  sub-folder; a symlinked folder of digits outside it is followed.

  Args:
    folder: a local folder to create.
    unreadable: also write the mode-000 sub-folder `private/` (the caller
      makes it readable again before removing it).

  Returns:
    {uri as the records give it: expected error kind, or None for an image
    to score}.
  """
  pixels = [encode(digit, 'PNG') for digit, _ in digits(3)]
  outside = folder + '-linked-target'
  for path in (folder, os.path.join(folder, 'sub'), outside):
    os.makedirs(path)

  def put(path, content):
    with open(path, 'wb') as f:
      f.write(content)
    return path

  expected = {
      put(os.path.join(folder, 'digit-0.png'), pixels[0]): None,
      put(os.path.join(folder, 'sub', 'digit-1.png'), pixels[1]): None,
  }
  put(os.path.join(outside, 'digit-2.png'), pixels[2])
  os.symlink(outside, os.path.join(folder, 'linked'))
  expected[os.path.join(folder, 'linked', 'digit-2.png')] = None
  os.mkfifo(os.path.join(folder, 'pipe.png'))
  expected[os.path.join(folder, 'pipe.png')] = 'special_file'
  os.symlink('missing-target.png', os.path.join(folder, 'gone.png'))
  expected[os.path.join(folder, 'gone.png')] = 'dangling_link'
  os.symlink('loop.png', os.path.join(folder, 'loop.png'))
  expected[os.path.join(folder, 'loop.png')] = 'link_loop'
  os.symlink('..', os.path.join(folder, 'sub', 'up'))
  expected[os.path.join(folder, 'sub', 'up')] = 'link_loop'
  put(os.path.join(os.fsencode(folder), b'caf\xe9.png'), pixels[0])
  expected[os.path.join(folder, 'caf\\xe9.png')] = 'invalid_name'
  if unreadable:
    private = os.path.join(folder, 'private')
    os.makedirs(private)
    put(os.path.join(private, 'secret.png'), pixels[0])
    os.chmod(private, 0)
    expected[private] = 'unreadable_folder'
  return expected


def write_digit_folder(root, count, offset=0):
  """`count` real digits as PNGs in class folders ROOT/DIGIT/; returns the
  (path, digit) pairs."""
  written = []
  for index, (pixels, label) in enumerate(digits(count, offset)):
    folder = os.path.join(root, str(label))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'digit-{index:04d}.png')
    with open(path, 'wb') as f:
      f.write(encode(pixels, 'PNG'))
    written.append((path, label))
  return written
