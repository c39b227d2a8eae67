"""The one image decoder training input pipelines and the exported model share.

The exported `serving_default` signature and the tf.data pipelines for encoded
images call the same function, `decode_images` (`decode_image` is its
one-image form), so training and scoring cannot drift apart.

Every image becomes float32 in [0, 1] with shape (height, width, channels),
looking as an image viewer shows it:

* Decoded to RGB (any of JPEG, PNG, GIF, BMP; grey or colour; 8- or 16-bit).
* A JPEG's EXIF orientation (tag 0x0112 in IFD0 of the APP1 Exif segment,
  big- or little-endian TIFF) is applied: all eight orientations, as image
  viewers and Pillow's `ImageOps.exif_transpose` do. Phones store photos
  sideways and set this tag instead of turning the pixels.
* A PNG's transparency (RGBA, grey with alpha, a palette with tRNS alpha) is
  composited onto BACKGROUND: white, as web pages and most viewers show it.
  So a white drawing on a transparent background becomes white on white,
  as it looks on a white page. TensorFlow's GIF decoder does not expose GIF
  transparency (transparent pixels come out black), nor its PNG decoder a
  grey or RGB PNG's tRNS colour key; a BMP's fourth byte is ignored, as
  viewers ignore it (most 32-bit BMPs leave it zero).
* Converted to grey when the model is grey, and resized.
* A JPEG far larger than the target is decoded at 1/2, 1/4 or 1/8 scale by
  the JPEG decoder itself (DCT scaling: `tf.io.decode_jpeg`'s `ratio`), the
  smallest scale at which both decoded sides are still at least the
  target's larger side (from the header, `tf.image.extract_jpeg_shape`), so
  the resize that follows only ever shrinks. A 48-megapixel photo for a
  224 x 224 model decodes 64 times fewer pixels. The rule is
  `artifact.jpeg_dct_ratio`'s (the scorer sizes its batches by it); the
  exported metadata lists the scales (`input.jpeg_dct_ratios`). PNGs, GIFs,
  BMPs and JPEGs too small to scale take the full-size path as before.

Why hand-written: neither TensorFlow's decoders nor Keras apply EXIF
orientation or composite alpha. The EXIF parser uses TensorFlow string and
tensor ops, not Python (`tf.py_function` is not saved in a SavedModel), so it
lives inside the exported graph like the rest.

Why batches: TensorFlow runs each small op with a fixed overhead (about a
microsecond), which for a 28x28 PNG is as much as decoding it. So everything
that can be is computed once per batch, vectorised: reading the headers
(PNG colour type, the JPEG's APPn segments and TIFF IFD), and turning the
resized images upright (for a square target, turning after resizing equals
resizing after turning). Per image there remain the decode, one alpha blend
for PNGs that may have alpha, and the resize. The tf.data pipelines batch
encoded images before decoding for the same reason.

Why one tf.function per target shape: building the decoder's graph takes
about 0.3 s, and every pipeline (each split, each check pass, each worker
shard) and the serving signature need it. Traced once per process and
shape, each of them calls it instead of building it again.
"""

import functools

import tensorflow as tf

from trainer import artifact

# ITU-R BT.601 luma weights, as Pillow's "L" conversion uses. They sum to
# exactly 1, so a grey image decoded to RGB converts back to the same grey
# values (tf.image.rgb_to_grayscale's weights sum to 0.9999).
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Transparent pixels are composited onto this grey level (1.0: white).
BACKGROUND = 1.0
# JPEG: the Exif segment is looked for among the first APPn segments.
_MAX_APP_SEGMENTS = 16
_MAX_IFD_ENTRIES = 64
_ORIENTATION_TAG = 0x0112
_TIFF_SHORT = 3
_EXIF_HEADER = tuple(b'Exif\x00\x00')
_PNG_SIGNATURE = tuple(b'\x89PNG\r\n\x1a\n')
# PNG colour types that may carry alpha: palette (tRNS), grey+alpha, RGBA.
_PNG_ALPHA_TYPES = (3, 4, 6)


def to_float(image):
  """uint8 (or uint16) image -> float32 in [0, 1]."""
  return tf.image.convert_image_dtype(image, tf.float32)


def convert_channels(image, channels):
  """Converts a float RGB or grey image to `channels` (1 or 3) channels."""
  have = image.shape[-1]
  if have == channels:
    return image
  if have == 3 and channels == 1:
    weights = tf.constant(_LUMA_WEIGHTS, dtype=image.dtype)
    return tf.tensordot(image, weights, axes=[[-1], [0]])[..., tf.newaxis]
  if have == 1 and channels == 3:
    return tf.image.grayscale_to_rgb(image)
  raise ValueError(f'Cannot convert {have} channels to {channels}.')


def resize(image, height, width):
  """Resizes a float image to (height, width) unless it already has that size.

  Bilinear with antialiasing, so large photos are averaged down rather than
  aliased. Aspect ratio is not preserved (like Keras'
  `image_dataset_from_directory`).
  """
  shape = tf.shape(image)
  same = tf.logical_and(tf.equal(shape[-3], height), tf.equal(shape[-2], width))
  resized = tf.cond(
      same,
      lambda: tf.image.resize(image, [height, width], method='nearest'),
      lambda: tf.image.resize(image, [height, width], antialias=True))
  # The shape is known after the resize; cond loses it.
  return tf.ensure_shape(resized, image.shape[:-3] + (height, width) +
                         image.shape[-1:])


def prepare_pixels(image, height, width, channels):
  """uint8 [..., h, w, 1 or 3] -> float32 [..., height, width, channels]."""
  image = convert_channels(to_float(image), channels)
  return resize(image, height, width)


def decode_images(encoded, height, width, channels,
                  jpeg_dct_ratios=artifact.JPEG_DCT_RATIOS):
  """Decodes a batch of encoded images, each as a viewer shows it.

  Args:
    encoded: a string tensor [batch] of JPEG, PNG, GIF or BMP bytes.
    height: target height in pixels.
    width: target width in pixels.
    channels: 1 (grey) or 3 (RGB).
    jpeg_dct_ratios: the scales (of 2, 4, 8) a large JPEG may be decoded
      at; () decodes every image at full size.

  Returns:
    float32 [batch, height, width, channels] in [0, 1].

  Raises:
    tf.errors.InvalidArgumentError: (when run) if any element is not a
      decodable image, as tf.io.decode_image does.
  """
  encoded = tf.convert_to_tensor(encoded, tf.string)
  return _batch_decoder(height, width, channels,
                        tuple(sorted(jpeg_dct_ratios)))(encoded)


@functools.lru_cache(maxsize=None)
def _batch_decoder(height, width, channels, jpeg_dct_ratios):
  """The batch decoder for one target shape, traced once (module docstring)."""
  return tf.function(
      lambda encoded: _decode_batch(encoded, height, width, channels,
                                    jpeg_dct_ratios),
      input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)


def _decode_batch(encoded, height, width, channels, jpeg_dct_ratios):
  may_have_alpha = _png_may_have_alpha(encoded)
  orientation = exif_orientations(encoded)
  scaling = (max(height, width), jpeg_dct_ratios)
  if height == width:
    images = _orient_batch(
        _decode_each(encoded, may_have_alpha, height, width, scaling),
        orientation)
  else:  # Turning changes the shape: turn each image before resizing.
    images = tf.map_fn(
        lambda args: resize(orient(_decode_rgb(*args[:2], scaling), args[2]),
                            height, width),
        (encoded, may_have_alpha, orientation),
        fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
  return convert_channels(images, channels)


def decode_image(encoded, height, width, channels,
                 jpeg_dct_ratios=artifact.JPEG_DCT_RATIOS):
  """Decodes one encoded image to float32 [height, width, channels] in [0, 1].

  The one-image form of `decode_images` (the same code).

  Args:
    encoded: a scalar string tensor holding JPEG, PNG, GIF or BMP bytes.
    height: target height in pixels.
    width: target width in pixels.
    channels: 1 (grey) or 3 (RGB).
    jpeg_dct_ratios: see `decode_images`.

  Returns:
    A float32 tensor of shape [height, width, channels].
  """
  encoded = tf.convert_to_tensor(encoded, tf.string)
  return decode_images(encoded[tf.newaxis], height, width, channels,
                       jpeg_dct_ratios)[0]


def jpeg_dct_ratio(encoded, side, jpeg_dct_ratios):
  """The scale a JPEG is decoded at: `artifact.jpeg_dct_ratio` in TensorFlow.

  Args:
    encoded: a scalar string tensor holding a JPEG.
    side: the target's larger side.
    jpeg_dct_ratios: the scales allowed, ascending.

  Returns:
    An int32 scalar tensor: 1, or one of `jpeg_dct_ratios`.
  """
  shape = tf.image.extract_jpeg_shape(encoded)
  smaller = tf.reduce_min(shape[:2])
  ratio = tf.constant(1)
  for candidate in jpeg_dct_ratios:
    # libjpeg rounds a scaled side up.
    fits = (smaller + candidate - 1) // candidate >= side
    ratio = tf.where(fits, tf.constant(candidate), ratio)
  return ratio


# --------------------------------------------------------------------------
# Decoding and compositing, per image.


def _decode_each(encoded, may_have_alpha, height, width, scaling):
  """Decodes and resizes a batch: float RGB [batch, height, width, 3].

  Images that may have alpha and those that cannot are decoded by two
  map_fns and stitched back in order, so that neither pays for the other's
  branch. `scaling`: (target's larger side, JPEG DCT ratios).
  """
  spec = tf.TensorSpec([height, width, 3], tf.float32)
  parts = tf.dynamic_partition(tf.range(tf.size(encoded)),
                               tf.cast(may_have_alpha, tf.int32), 2)
  opaque = tf.map_fn(
      lambda data: resize(_decode_opaque(data, scaling), height, width),
      tf.gather(encoded, parts[0]), fn_output_signature=spec)
  blended = tf.map_fn(
      lambda data: resize(_decode_blended(data), height, width),
      tf.gather(encoded, parts[1]), fn_output_signature=spec)
  return tf.dynamic_stitch(parts, [opaque, blended])


def _decode_rgb(encoded, may_have_alpha, scaling):
  image = tf.cond(may_have_alpha, lambda: _decode_blended(encoded),
                  lambda: _decode_opaque(encoded, scaling))
  image.set_shape([None, None, 3])
  return image


def _decode_opaque(encoded, scaling):
  """Any image without alpha, at full size, or a large JPEG scaled down."""
  side, jpeg_dct_ratios = scaling
  if not jpeg_dct_ratios:
    return _decode_full_size(encoded)

  def scaled_jpeg():
    ratio = jpeg_dct_ratio(encoded, side, jpeg_dct_ratios)
    # `ratio` is an attribute of the op, not an input: one branch each.
    branches = [lambda: _decode_full_size(encoded)] + [
        functools.partial(_decode_jpeg_scaled, encoded, candidate)
        for candidate in jpeg_dct_ratios]
    index = tf.argmax(tf.equal(tf.constant((1,) + jpeg_dct_ratios), ratio),
                      output_type=tf.int32)
    return tf.switch_case(index, branches)

  image = tf.cond(tf.io.is_jpeg(encoded), scaled_jpeg,
                  lambda: _decode_full_size(encoded))
  image.set_shape([None, None, 3])
  return image


def _decode_full_size(encoded):
  # Decode to RGB whatever the file holds: TF's GIF, BMP and CMYK JPEG
  # decoders refuse channels=1, and converting here keeps one code path.
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return to_float(image)


def _decode_jpeg_scaled(encoded, ratio):
  image = tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)
  image.set_shape([None, None, 3])
  return to_float(image)


def _decode_blended(encoded):
  """A PNG that may have alpha: RGBA composited onto BACKGROUND."""
  image = to_float(tf.io.decode_png(encoded, channels=4))
  alpha = image[..., 3:]
  # PNG stores straight (not premultiplied) alpha.
  return image[..., :3] * alpha + BACKGROUND * (1.0 - alpha)


# --------------------------------------------------------------------------
# Headers, read for a whole batch at once.


def _read(encoded, positions, count):
  """`count` bytes at `positions` of each string: int64 [batch, count].

  Bytes past the end of a string (or at a negative position) read as 0.
  """
  length = tf.cast(tf.strings.length(encoded), tf.int64)
  start = tf.clip_by_value(positions, 0, length)
  chunk = tf.strings.substr(encoded, start, tf.fill(tf.shape(start),
                                                     tf.cast(count, tf.int64)))
  raw = tf.cast(tf.io.decode_raw(chunk, tf.uint8, fixed_length=count),
                tf.int64)
  return tf.where((positions >= 0)[:, tf.newaxis], raw, tf.zeros_like(raw))


def _matches(raw, expected):
  return tf.reduce_all(tf.equal(raw, tf.constant(expected, tf.int64)), axis=-1)


def _png_may_have_alpha(encoded):
  """bool [batch]: PNGs whose colour type may carry alpha (IHDR byte 25)."""
  head = _read(encoded, tf.zeros(tf.shape(encoded), tf.int64), 26)
  colour_type = head[:, 25:26]
  return _matches(head[:, :8], _PNG_SIGNATURE) & tf.reduce_any(
      tf.equal(colour_type, tf.constant(_PNG_ALPHA_TYPES, tf.int64)), axis=-1)


def _find_exif(encoded, is_jpeg):
  """(TIFF header offset or -1, end of the Exif segment) of each string.

  Walks a JPEG's APPn segments after its SOI marker (each: 0xFF, a marker
  0xE0-0xEF, a big-endian length that counts itself) until the Exif one.
  Strings that are not JPEGs (`is_jpeg` False) are not walked.
  """
  first = tf.fill(tf.shape(encoded), tf.constant(2, tf.int64))
  none = tf.fill(tf.shape(encoded), tf.constant(-1, tf.int64))

  def walking(position, active):
    head = _read(encoded, position, 2)
    return (active & tf.equal(head[:, 0], 0xFF) & (head[:, 1] >= 0xE0) &
            (head[:, 1] <= 0xEF))

  def more(step, position, active, tiff, end):
    del tiff, end  # Unused.
    return (step < _MAX_APP_SEGMENTS) & tf.reduce_any(
        walking(position, active))

  def step_once(step, position, active, tiff, end):
    active = walking(position, active)
    head = _read(encoded, position, 10)
    segment_end = position + 2 + head[:, 2] * 256 + head[:, 3]
    exif = active & tf.equal(head[:, 1], 0xE1) & _matches(head[:, 4:],
                                                          _EXIF_HEADER)
    tiff = tf.where(exif, position + 10, tiff)
    end = tf.where(exif, segment_end, end)
    active = active & ~exif & (segment_end > position + 2)
    return step + 1, tf.where(active, segment_end, position), active, tiff, end

  _, _, _, tiff, end = tf.while_loop(
      more, step_once, (tf.constant(0), first, is_jpeg, none, none))
  return tiff, end


def exif_orientations(encoded):
  """int64 [batch]: each JPEG's EXIF orientation (1-8); 1 when it has none.

  Never fails: a missing, truncated or malformed Exif segment gives 1, and
  so does anything that is not a JPEG. A batch without JPEGs that start
  with an APPn segment (PNGs, most non-photo JPEGs) skips the parsing, and
  one without an Exif segment skips reading the TIFF block.
  """
  start = _read(encoded, tf.zeros(tf.shape(encoded), tf.int64), 4)
  candidate = _matches(start[:, :3], (0xFF, 0xD8, 0xFF)) & (
      start[:, 3] >= 0xE0) & (start[:, 3] <= 0xEF)
  upright = tf.ones(tf.shape(encoded), tf.int64)

  def parse():
    tiff, end = _find_exif(encoded, candidate)
    return tf.cond(tf.reduce_any(tiff >= 0),
                   lambda: _read_orientation(encoded, tiff, end),
                   lambda: upright)

  return tf.cond(tf.reduce_any(candidate), parse, lambda: upright)


def _read_orientation(encoded, tiff, end):
  """Tag 0x0112 of the IFD0 of the TIFF blocks at `tiff` (-1: none)."""
  head = _read(encoded, tiff, 8)
  little = _matches(head[:, :2], (0x49, 0x49))  # 'II': Intel byte order.
  big = _matches(head[:, :2], (0x4D, 0x4D))  # 'MM': Motorola byte order.

  def number(raw):
    """Unsigned integers from the last axis of `raw`, in TIFF byte order."""
    width = raw.shape[-1]
    offsets = tf.range(width, dtype=tf.int64)
    weights = tf.where(little[:, tf.newaxis], 256**offsets,
                       256**(width - 1 - offsets))
    weights = tf.reshape(weights, [-1] + [1] * (raw.shape.rank - 2) + [width])
    return tf.reduce_sum(raw * weights, axis=-1)

  ifd = tiff + number(head[:, 4:8])
  table = _read(encoded, ifd, 2 + 12 * _MAX_IFD_ENTRIES)
  entries = tf.reshape(table[:, 2:], [-1, _MAX_IFD_ENTRIES, 12])
  listed = tf.range(_MAX_IFD_ENTRIES, dtype=tf.int64)[tf.newaxis] < number(
      table[:, :2])[:, tf.newaxis]
  inside = (ifd[:, tf.newaxis] + 2 + 12 * tf.range(
      1, _MAX_IFD_ENTRIES + 1, dtype=tf.int64)) <= end[:, tf.newaxis]
  match = (listed & inside &
           tf.equal(number(entries[..., 0:2]), _ORIENTATION_TAG) &
           tf.equal(number(entries[..., 2:4]), _TIFF_SHORT))
  first = tf.argmax(tf.cast(match, tf.int32), axis=1, output_type=tf.int32)
  value = tf.gather(number(entries[..., 8:10]), first, batch_dims=1)
  valid = ((tiff >= 0) & (little | big) & tf.equal(number(head[:, 2:4]), 42)
           & tf.reduce_any(match, axis=1) & (value >= 1) & (value <= 8))
  return tf.where(valid, value, tf.ones_like(value))


# --------------------------------------------------------------------------
# Turning images upright.


def orient(image, orientation):
  """Turns one image stored with EXIF `orientation` (1-8) upright.

  Args:
    image: [h, w, c] pixels as stored in the file.
    orientation: int scalar tensor, the EXIF value (1: as stored).

  Returns:
    The pixels as a viewer shows them (height and width swapped for 5-8).
  """
  branches = [
      lambda: image,  # 1: upright.
      lambda: tf.image.flip_left_right(image),  # 2: mirrored.
      lambda: tf.image.rot90(image, 2),  # 3: upside down.
      lambda: tf.image.flip_up_down(image),  # 4: mirrored upside down.
      lambda: tf.image.transpose(image),  # 5: mirrored, on its side.
      lambda: tf.image.rot90(image, 3),  # 6: turn 90 degrees clockwise.
      lambda: tf.image.rot90(tf.image.transpose(image), 2),  # 7: transverse.
      lambda: tf.image.rot90(image, 1),  # 8: turn 90 degrees anticlockwise.
  ]
  return tf.switch_case(tf.cast(orientation, tf.int32) - 1, branches)


def _orient_batch(images, orientation):
  """Turns each square image of [batch, s, s, c] upright.

  One gather per batch that holds a turned image, none otherwise: each
  orientation is a fixed permutation of a square image's pixels. (Selecting
  among turned copies with tf.where measured twice as slow as the whole
  decode on small images.)
  """
  return tf.cond(tf.reduce_any(tf.not_equal(orientation, 1)),
                 lambda: _permute_pixels(images, orientation),
                 lambda: images)


def _permute_pixels(images, orientation):
  size, channels = images.shape[1], images.shape[-1]
  row, column = tf.meshgrid(tf.range(size), tf.range(size), indexing='ij')
  last = size - 1
  # Where each output pixel (row, column) comes from, for orientations 1-8.
  sources = tf.stack([
      (row, column), (row, last - column), (last - row, last - column),
      (last - row, column), (column, row), (last - column, row),
      (last - column, last - row), (column, last - row)])
  table = tf.reshape(sources[:, 0] * size + sources[:, 1], [8, size * size])
  index = tf.gather(table, tf.cast(orientation, tf.int32) - 1)
  flat = tf.reshape(images, [-1, size * size, channels])
  return tf.reshape(tf.gather(flat, index, batch_dims=1),
                    [-1, size, size, channels])
