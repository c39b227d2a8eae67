"""The shared decoder: EXIF orientation, transparency, batches, tf.data."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tests.helpers import image_files
from tests.helpers import photos
from trainer import artifact
from trainer.data import preprocessing

# JPEG re-encoding of turned pixels and two decoders (Pillow's and
# TensorFlow's) differ by a few levels at sharp edges; a wrong turn differs
# by most of the range over large areas.
_JPEG_MAX = 0.1
_JPEG_MEAN = 0.01


def _decode(encoded, size=(40, 40), channels=3):
  return preprocessing.decode_images(tf.constant(encoded), *size,
                                     channels).numpy()


@pytest.mark.parametrize('byte_order', [b'II', b'MM'],
                         ids=['little-endian', 'big-endian'])
@pytest.mark.parametrize('orientation', photos.ORIENTATIONS)
def test_every_exif_orientation_is_turned_as_a_viewer_turns_it(
    orientation, byte_order):
  upright = photos.asymmetric_pixels(40, 40)
  encoded = photos.rotated_jpeg(upright, orientation, byte_order)
  viewer = photos.as_viewer_shows(encoded)
  np.testing.assert_allclose(viewer, upright / 255, atol=_JPEG_MAX)
  assert preprocessing.exif_orientations(
      tf.constant([encoded])).numpy().tolist() == [orientation]
  ours = _decode([encoded])[0]
  assert np.abs(ours - viewer).max() < _JPEG_MAX
  assert np.abs(ours - viewer).mean() < _JPEG_MEAN


@pytest.mark.parametrize('orientation', photos.ORIENTATIONS)
def test_orientation_of_a_non_square_target_and_photo(orientation):
  upright = photos.asymmetric_pixels(30, 50)
  encoded = photos.rotated_jpeg(upright, orientation)
  ours = _decode([encoded], size=(30, 50))[0]
  assert np.abs(ours - upright / 255).mean() < _JPEG_MEAN
  # Square target from a 30x50 photo: turned first, then resized.
  square = _decode([encoded], size=(40, 40))[0]
  reference = tf.image.resize(upright / 255, [40, 40], antialias=True)
  assert np.abs(square - reference.numpy()).mean() < _JPEG_MEAN


def test_exif_after_a_jfif_segment_is_found():
  upright = photos.asymmetric_pixels()
  image = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
  buffer = io.BytesIO()
  # Pillow writes a JFIF APP0 segment first, then the Exif APP1.
  image.save(buffer, 'JPEG', quality=100, subsampling=0,
             exif=photos.exif_payload(6, b'MM'))
  encoded = buffer.getvalue()
  assert encoded[2:4] == b'\xff\xe0' and b'Exif' in encoded[:64]
  assert preprocessing.exif_orientations(
      tf.constant([encoded])).numpy().tolist() == [6]
  assert np.abs(_decode([encoded])[0] - upright / 255).mean() < _JPEG_MEAN


def _with_app1(payload):
  """A plain JPEG with `payload` as its first APP1 segment (length as is)."""
  plain = photos.upright_jpeg(photos.asymmetric_pixels())
  segment = b'\xff\xe1' + (len(payload) + 2).to_bytes(2, 'big') + payload
  return plain[:2] + segment + plain[2:]


@pytest.mark.parametrize('payload', [
    photos.exif_payload(0), photos.exif_payload(9),
    b'Exif\x00\x00II*\x00\xff\xff\xff\x7f',  # IFD0 far outside the file.
    b'Exif\x00\x00XX*\x00\x08\x00\x00\x00',  # No byte order mark.
    photos.exif_payload(6)[:16],  # Cut before the orientation entry.
    b'http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>',  # XMP, not Exif.
], ids=['zero', 'nine', 'ifd-outside', 'bad-order', 'truncated', 'xmp'])
def test_malformed_exif_is_read_as_upright_and_never_fails(payload):
  encoded = _with_app1(payload)
  assert preprocessing.exif_orientations(
      tf.constant([encoded])).numpy().tolist() == [1]
  upright = photos.asymmetric_pixels()
  assert np.abs(_decode([encoded])[0] - upright / 255).mean() < _JPEG_MEAN


def test_a_segment_length_past_the_end_of_the_file_is_harmless():
  plain = photos.upright_jpeg(photos.asymmetric_pixels())
  cut = plain[:2] + b'\xff\xe1\xff\xff' + b'Exif\x00\x00II*\x00'
  assert preprocessing.exif_orientations(
      tf.constant([cut, b'', b'\xff\xd8\xff'])).numpy().tolist() == [1, 1, 1]


def test_rgba_png_is_composited_onto_white():
  colour = image_files.random_pixels(20, 30, 3, seed=1)
  alpha = np.tile(np.linspace(0, 255, 30).astype(np.uint8), (20, 1))
  alpha[:5] = 0  # Fully transparent rows: pure background.
  encoded = photos.png(np.dstack([colour, alpha]))
  ours = _decode([encoded], size=(20, 30))[0]
  a = alpha[..., None] / 255.0
  expected = colour / 255.0 * a + preprocessing.BACKGROUND * (1 - a)
  np.testing.assert_allclose(ours, expected, atol=1e-6)
  np.testing.assert_allclose(ours[:5], 1.0)
  # The same image dropped its alpha before: the colours under it came out.
  assert np.abs(ours[:5] - colour[:5] / 255).mean() > 0.2


def test_grey_alpha_and_palette_transparency_are_composited():
  grey = np.full((8, 8), 10, np.uint8)
  alpha = np.zeros((8, 8), np.uint8)
  alpha[:, 4:] = 255
  grey_alpha = _decode([photos.png(np.dstack([grey, alpha]))], (8, 8), 1)[0]
  np.testing.assert_allclose(grey_alpha[:, :4], 1.0, atol=1e-6)
  np.testing.assert_allclose(grey_alpha[:, 4:], 10 / 255, atol=1e-6)
  palette = Image.new('P', (8, 8), 0)
  palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
  for x in range(4):
    for y in range(8):
      palette.putpixel((x, y), 1)
  buffer = io.BytesIO()
  palette.save(buffer, 'PNG', transparency=0)  # Index 0 is transparent.
  decoded = _decode([buffer.getvalue()], (8, 8))[0]
  np.testing.assert_allclose(
      decoded[:, :4], np.broadcast_to([200 / 255, 0, 0], (8, 4, 3)), atol=1e-6)
  np.testing.assert_allclose(decoded[:, 4:], 1.0, atol=1e-6)


def test_a_mixed_batch_decodes_each_image_as_it_would_alone():
  digit = image_files.random_pixels(28, 28, 1, seed=3)
  colour = image_files.random_pixels(33, 21, 3, seed=4)
  rgba = np.dstack([colour, np.full((33, 21), 128, np.uint8)])
  batch = [
      photos.png(digit), photos.png(rgba), photos.rotated_jpeg(colour, 6),
      image_files.encode_image(colour, 'GIF'), image_files.encode_image(colour,
                                                                  'BMP'),
      photos.upright_jpeg(colour), photos.png(rgba), photos.rotated_jpeg(
          colour, 3, b'MM'),
  ]
  together = _decode(batch, (24, 24))
  for index, encoded in enumerate(batch):
    alone = preprocessing.decode_image(tf.constant(encoded), 24, 24,
                                       3).numpy()
    np.testing.assert_allclose(together[index], alone, atol=1e-6,
                               err_msg=str(index))
  assert preprocessing.exif_orientations(
      tf.constant(batch)).numpy().tolist() == [1, 1, 6, 1, 1, 1, 1, 3]


def test_decoding_inside_tf_data_equals_eager_decoding():
  encoded = [photos.rotated_jpeg(photos.asymmetric_pixels(), o)
             for o in photos.ORIENTATIONS] + [
                 photos.png(np.dstack([photos.asymmetric_pixels(),
                                       np.full((40, 40), 90, np.uint8)]))]
  dataset = tf.data.Dataset.from_tensor_slices(encoded).batch(4).map(
      lambda batch: preprocessing.decode_images(batch, 32, 32, 1))
  piped = np.concatenate(list(dataset.as_numpy_iterator()))
  np.testing.assert_allclose(piped, _decode(encoded, (32, 32), 1), atol=1e-6)


def test_undecodable_bytes_still_fail_like_tensorflows_decoder():
  with pytest.raises(tf.errors.InvalidArgumentError):
    _decode([b'not an image'])
  with pytest.raises(tf.errors.InvalidArgumentError):
    _decode([b'\x89PNG\r\n\x1a\n' + bytes(30)])


# --------------------------------------------------------------------------
# Large JPEGs decoded at a DCT scale. Decoding at 1/8 and then resizing
# averages the same pixels as decoding at full size and resizing, in a
# different order: they agree to within these (measured: 0.009 and 0.004
# on 1600 x 1200 and 800 x 600 photos for a 28 x 28 target).
_SCALED_MAX = 0.03
_SCALED_MEAN = 0.01


def _smooth_jpeg(width, height, seed=0):
  """A photo-like JPEG: smooth colour regions (random 8 x 8, upsampled)."""
  rng = np.random.default_rng(seed)
  base = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
  buffer = io.BytesIO()
  base.resize((width, height), Image.BILINEAR).save(buffer, 'JPEG',
                                                    quality=95)
  return buffer.getvalue()


@pytest.mark.parametrize('size,channels', [
    ((28, 28), 3), pytest.param((20, 28), 1, marks=pytest.mark.slow)],
                         ids=['square', 'non-square-grey'])
@pytest.mark.slow  # 1.5 s here: over the fast tier's ~1.5 s a test.
def test_a_large_jpeg_decoded_scaled_matches_the_full_decode(size, channels):
  large = _smooth_jpeg(800, 600)  # At 1/8: 100 x 75, still over 28.
  scaled = _decode([large], size, channels)
  full = preprocessing.decode_images(tf.constant([large]), *size, channels,
                                     jpeg_dct_ratios=()).numpy()
  assert np.abs(scaled - full).max() < _SCALED_MAX
  assert np.abs(scaled - full).mean() < _SCALED_MEAN
  # And it was decoded at 1/8 by the JPEG decoder, then resized.
  eighth = preprocessing.prepare_pixels(
      tf.io.decode_jpeg(large, channels=3, ratio=8), *size, channels)
  np.testing.assert_allclose(scaled[0], eighth.numpy(), atol=1e-6)


def test_pngs_and_small_jpegs_take_the_full_size_path():
  png = image_files.encode_image(image_files.random_pixels(200, 200), 'PNG')
  small = _smooth_jpeg(50, 50)  # 1/2 would give 25 x 25, under 28.
  batch = [png, small, _smooth_jpeg(800, 600)]
  scaled = _decode(batch, (28, 28))
  full = preprocessing.decode_images(tf.constant(batch), 28, 28, 3,
                                     jpeg_dct_ratios=()).numpy()
  np.testing.assert_array_equal(scaled[:2], full[:2])
  assert not np.array_equal(scaled[2], full[2])  # The large one is scaled.


@pytest.mark.parametrize('width,height', [
    (400, 300), (100, 60), (1000, 57), (55, 55), (54, 54), (28, 28)])
def test_the_decoders_scale_is_the_one_the_scorer_sizes_batches_by(width,
                                                                    height):
  jpeg = _smooth_jpeg(width, height)
  ratio = preprocessing.jpeg_dct_ratio(tf.constant(jpeg), 28, (2, 4, 8))
  assert int(ratio) == artifact.jpeg_dct_ratio(width, height, (28, 28))
