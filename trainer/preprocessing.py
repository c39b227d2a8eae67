"""Image preprocessing shared by training input pipelines and the exported model.

The exported `serving_default` signature and the tf.data pipelines for encoded
images call the same functions, so training and scoring cannot drift apart.

Every image becomes float32 in [0, 1] with shape (height, width, channels):
encoded bytes are decoded to RGB (any of JPEG, PNG, GIF, BMP; grey or colour;
8- or 16-bit), converted to grey when the model is grey, and resized.
"""

import tensorflow as tf

# ITU-R BT.601 luma weights, as Pillow's "L" conversion uses. They sum to
# exactly 1, so a grey image decoded to RGB converts back to the same grey
# values (tf.image.rgb_to_grayscale's weights sum to 0.9999).
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


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


def decode_image(encoded, height, width, channels):
  """Decodes one encoded image to float32 [height, width, channels] in [0, 1].

  Args:
    encoded: a scalar string tensor holding JPEG, PNG, GIF or BMP bytes.
    height: target height in pixels.
    width: target width in pixels.
    channels: 1 (grey) or 3 (RGB).

  Returns:
    A float32 tensor of shape [height, width, channels].
  """
  # Decode to RGB whatever the file holds: TF's GIF, BMP and CMYK JPEG
  # decoders refuse channels=1, and converting here keeps one code path.
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return prepare_pixels(image, height, width, channels)


def prepare_pixels(image, height, width, channels):
  """uint8 pixels [..., h, w, c] (c = 1 or 3) -> float [..., height, width, channels]."""
  image = convert_channels(to_float(image), channels)
  return resize(image, height, width)
