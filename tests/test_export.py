"""Writing the model artifact: round trips without train/serve skew, safe
loading of model.keras."""

import io
import shutil

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tests.helpers import image_files
from tests.helpers import photos
from trainer import artifact
from trainer import export
from trainer import extractor
from trainer import models
from trainer import transfer
from trainer.data import preprocessing
from trainer.data import samples
from trainer.data import sources


def _test_digits(count=64):
  source = sources.load_mnist_sample(0.1, 0.1)
  pixels, labels = next(source.examples('test').batch(count)
                        .as_numpy_iterator())
  return pixels, labels


@pytest.mark.parametrize('image_format', ['png', 'jpeg'])
def test_saved_model_bytes_match_keras_on_the_same_decoded_pixels(
    trained_export, image_format):
  pixels, labels = _test_digits()
  encoded = [samples.encode(p, image_format) for p in pixels]
  serve, _ = artifact.load_serving(trained_export)
  served = serve(image_bytes=tf.constant(encoded))['probabilities'].numpy()
  # Decode the same bytes outside the artifact and run the Keras model.
  decoded = np.stack([tf.io.decode_image(b, channels=1).numpy()
                      for b in encoded]).astype(np.float32) / 255.0
  model = export.load_keras_model(trained_export)
  expected = model(decoded, training=False).numpy()
  np.testing.assert_allclose(served, expected, atol=1e-5)
  if image_format == 'png':  # Lossless: the predictions are the digits'.
    accuracy = (served.argmax(axis=1) == labels).mean()
    assert accuracy > 0.8


def test_grey_model_scores_colour_and_odd_sized_images(trained_export):
  pixels, _ = _test_digits(4)
  digit = pixels[0][..., 0]
  variants = {
      'grey png': image_files.encode_image(digit, 'PNG'),
      'rgb png': image_files.encode_image(np.stack([digit] * 3, -1), 'PNG'),
      'rgb bmp': image_files.encode_image(np.stack([digit] * 3, -1), 'BMP'),
      'gif': image_files.encode_image(digit, 'GIF'),
      '16-bit png': image_files.encode_image(digit.astype(np.uint16) * 257,
                                          'PNG'),
  }
  serve, _ = artifact.load_serving(trained_export)
  out = serve(image_bytes=tf.constant(list(variants.values())))
  probabilities = out['probabilities'].numpy()
  for name, row in zip(variants, probabilities):
    np.testing.assert_allclose(row, probabilities[0], atol=1e-4,
                               err_msg=name)
  big = tf.image.resize(digit[..., None], [280, 140]).numpy().astype(np.uint8)
  big_out = serve(image_bytes=tf.constant(
      [image_files.encode_image(big[..., 0], 'JPEG')]))['probabilities']
  assert big_out.shape == (1, 10)


@pytest.mark.slow  # 2.1 s here: over the fast tier's ~1.5 s a test.
def test_colour_model_accepts_grey_images(tmp_path):
  model = models.build_model('cnn_bn', (32, 32, 3), 3)
  metadata = export.build_metadata(class_names=['a', 'b', 'c'],
                                   image_shape=(32, 32, 3),
                                   dataset='image_folder', model_name='cnn_bn')
  export.export_model(model, str(tmp_path / 'export'), metadata)
  serve, _ = artifact.load_serving(str(tmp_path / 'export'))
  grey = image_files.encode_image(image_files.random_pixels(50, 70, 1), 'PNG')
  colour = image_files.encode_image(image_files.random_pixels(20, 10, 3),
                                    'JPEG')
  out = serve(image_bytes=tf.constant([grey, colour]))
  assert out['probabilities'].shape == (2, 3)
  assert out['logits'].shape == (2, 3)
  pixels_fn, _ = artifact.load_serving(str(tmp_path / 'export'),
                                     artifact.PIXELS_SIGNATURE)
  assert pixels_fn(images=tf.zeros([1, 32, 32, 3]))['probabilities'].shape == (
      1, 3)


def test_keras_files_with_python_code_are_refused(tmp_path):
  inputs = keras.Input((4,))
  outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
  path = str(tmp_path / 'unsafe.keras')
  keras.Model(inputs, outputs).save(path)
  with pytest.raises(ValueError, match='safe_mode'):
    export.load_keras_model(path)


@pytest.mark.slow  # 1.9 s here: over the fast tier's ~1.5 s a test.
def test_export_to_gcs_and_load_back(gcs_server, trained_export):
  model = export.load_keras_model(trained_export)
  metadata = artifact.read_metadata(trained_export)
  export.export_model(model, 'gs://test-bucket/run/export', metadata)
  assert artifact.read_metadata('gs://test-bucket/run/export')['labels'] == (
      metadata['labels'])
  reloaded = export.load_keras_model('gs://test-bucket/run/export')
  assert reloaded.count_params() == model.count_params()
  with artifact.local_copy('gs://test-bucket/run/export') as local:
    serve, _ = artifact.load_serving(local)
    digit = _test_digits(1)[0][0]
    out = serve(image_bytes=tf.constant([samples.encode(digit, 'png')]))
    assert out['probabilities'].shape == (1, 10)


def test_an_exif_rotated_jpeg_scores_as_its_upright_copy(trained_export):
  pixels, _ = _test_digits(8)
  serve, _ = artifact.load_serving(trained_export)
  # 32x32: JPEG's 8x8 blocks then fall on the same pixels however the
  # digit is turned, so turning it costs no extra compression error.
  digits = [np.pad(np.repeat(p, 3, axis=-1), ((2, 2), (2, 2), (0, 0)))
            for p in pixels]
  upright = serve(image_bytes=tf.constant(
      [photos.upright_jpeg(d) for d in digits]))['probabilities'].numpy()
  for orientation in photos.ORIENTATIONS:
    rotated = serve(image_bytes=tf.constant(
        [photos.rotated_jpeg(d, orientation, b'MM' if orientation % 2 else
                             b'II') for d in digits]))['probabilities'].numpy()
    np.testing.assert_array_equal(rotated.argmax(1), upright.argmax(1),
                                  err_msg=f'orientation {orientation}')
    np.testing.assert_allclose(rotated, upright, atol=0.05,
                               err_msg=f'orientation {orientation}')
  # Without its tag, the turned digit is read as stored: another picture.
  turned = [np.rot90(d, -1).copy() for d in digits]
  untagged = serve(image_bytes=tf.constant(
      [photos.upright_jpeg(d) for d in turned]))['probabilities'].numpy()
  assert (untagged.argmax(1) != upright.argmax(1)).any()


def test_an_rgba_png_is_served_as_composited_onto_white(tmp_path):
  model = models.build_model('softmax', (16, 16, 3), 2)
  metadata = export.build_metadata(class_names=['a', 'b'],
                                   image_shape=(16, 16, 3),
                                   dataset='image_folder', model_name='m')
  export.export_model(model, str(tmp_path / 'export'), metadata)
  serve, _ = artifact.load_serving(str(tmp_path / 'export'))
  pixels_fn, _ = artifact.load_serving(str(tmp_path / 'export'),
                                     artifact.PIXELS_SIGNATURE)
  colour = image_files.random_pixels(16, 16, 3, seed=5)
  alpha = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))
  served = serve(image_bytes=tf.constant(
      [photos.png(np.dstack([colour, alpha]))]))['probabilities'].numpy()
  a = alpha[..., None] / 255.0
  composited = (colour / 255.0 * a + (1 - a)).astype(np.float32)
  expected = pixels_fn(images=tf.constant(composited[None]))[
      'probabilities'].numpy()
  np.testing.assert_allclose(served, expected, atol=1e-6)


# A 12-megapixel-class photo of a digit scores as its full-size decode does:
# the decoded pixels differ by under 0.03 (tests/data/test_preprocessing.py),
# the probabilities by under this (measured: 0.0014).
_SCALED_PROBABILITY_TOLERANCE = 0.05


@pytest.mark.slow  # 2.3 s here: over the fast tier's ~1.5 s a test.
def test_a_large_jpeg_scores_as_its_full_size_decode(trained_export):
  pixels, _ = _test_digits(8)
  photos_of_digits = []
  for digit in pixels:
    large = Image.fromarray(digit[..., 0]).resize((1600, 1600),
                                                  Image.BILINEAR)
    buffer = io.BytesIO()
    large.save(buffer, 'JPEG', quality=95)
    photos_of_digits.append(buffer.getvalue())
  serve, _ = artifact.load_serving(trained_export)
  serve_pixels, _ = artifact.load_serving(trained_export,
                                          artifact.PIXELS_SIGNATURE)
  scaled = serve(image_bytes=tf.constant(photos_of_digits))['probabilities']
  full_size = preprocessing.decode_images(
      tf.constant(photos_of_digits), 28, 28, 1, jpeg_dct_ratios=())
  full = serve_pixels(images=full_size)['probabilities']
  assert np.abs(scaled.numpy() - full.numpy()).max() < (
      _SCALED_PROBABILITY_TOLERANCE)
  assert (np.argmax(scaled, axis=1) == np.argmax(full, axis=1)).all()
  metadata = artifact.read_metadata(trained_export)
  assert metadata['input']['jpeg_dct_ratios'] == [2, 4, 8]


@pytest.mark.slow
def test_an_artifact_without_dct_ratios_decodes_at_full_size(trained_export,
                                                             tmp_path):
  # What artifacts exported before DCT scaling do (and the benchmark's
  # "full decode" side): the metadata says which decoder the signature has.
  model = export.load_keras_model(trained_export)
  metadata = artifact.read_metadata(trained_export)
  del metadata['input']['jpeg_dct_ratios']
  export.export_model(model, str(tmp_path / 'export'), metadata)
  large = Image.fromarray(_test_digits(1)[0][0][..., 0]).resize(
      (1600, 1600), Image.BILINEAR)
  buffer = io.BytesIO()
  large.save(buffer, 'JPEG', quality=95)
  serve, _ = artifact.load_serving(str(tmp_path / 'export'))
  serve_pixels, _ = artifact.load_serving(str(tmp_path / 'export'),
                                          artifact.PIXELS_SIGNATURE)
  full = preprocessing.decode_images(tf.constant([buffer.getvalue()]), 28,
                                     28, 1, jpeg_dct_ratios=())
  np.testing.assert_allclose(
      serve(image_bytes=tf.constant([buffer.getvalue()]))['probabilities'],
      serve_pixels(images=full)['probabilities'], atol=1e-6)
  assert 'jpeg_dct_ratios' not in artifact.read_metadata(
      str(tmp_path / 'export'))['input']


# --------------------------------------------------------------------------
# The embeddings signature (Contract 4).


def _grey_png_and_resized_colour_jpeg(digit):
  """The same picture as a grey PNG and a colour JPEG at twice its size."""
  colour = np.stack([digit] * 3, -1)
  large = np.asarray(Image.fromarray(colour).resize((56, 56), Image.BILINEAR))
  return [image_files.encode_image(digit, 'PNG'),
          image_files.encode_image(large, 'JPEG', quality=90)]


@pytest.mark.slow  # 3.8 s here: over the fast tier's ~1.5 s a test.
def test_the_embeddings_signature_is_the_extractor_on_the_decoded_pixels(
    trained_export):
  digit = _test_digits(1)[0][0][..., 0]
  encoded = tf.constant(_grey_png_and_resized_colour_jpeg(digit))
  loaded = artifact.load(trained_export, embeddings=True)
  embedded = loaded.embed(image_bytes=encoded)['embeddings'].numpy()
  # The same decoding call as serving_default, outside the artifact.
  pixels = preprocessing.decode_images(encoded, 28, 28, 1)
  model = export.load_keras_model(trained_export)
  expected = extractor.embedding_model(model)(pixels, training=False).numpy()
  entry = loaded.metadata['embeddings']
  assert embedded.shape == (2, entry['size']) == (2, 7 * 7 * 64)
  assert embedded.dtype == np.float32
  np.testing.assert_allclose(embedded, expected, atol=1e-5)
  # The grey PNG decodes to the digit itself: the one-stage path's input.
  np.testing.assert_allclose(pixels[0, ..., 0], digit / 255.0, atol=1e-6)
  assert entry['pooling'] == extractor.FLATTEN
  assert entry['signature'] == artifact.EMBEDDINGS_SIGNATURE
  assert artifact.EMBEDDINGS_SIGNATURE in loaded.metadata['signatures']


def test_the_fingerprint_in_metadata_is_the_reloaded_extractors(
    trained_export, tmp_path):
  recorded = artifact.read_metadata(trained_export)['embeddings'][
      'fingerprint']
  copy = str(tmp_path / 'copy')
  shutil.copytree(trained_export, copy)
  for source in (trained_export, copy):
    model = export.load_keras_model(source)
    cut, _ = extractor.find_output(model, source)
    assert extractor.fingerprint(keras.Model(model.inputs, cut)) == recorded
  assert artifact.read_metadata(copy)['embeddings']['fingerprint'] == recorded
  assert recorded.startswith('sha256:')


def test_a_softmax_export_has_no_embeddings_and_says_so_in_one_line(tmp_path):
  model = models.build_model('softmax', (8, 8, 1), 2)
  metadata = export.build_metadata(class_names=['a', 'b'],
                                   image_shape=(8, 8, 1),
                                   dataset='image_folder', model_name='softmax')
  path = str(tmp_path / 'export')
  export.export_model(model, path, metadata)
  written = artifact.read_metadata(path)
  assert written['embeddings'] is None
  assert artifact.EMBEDDINGS_SIGNATURE not in written['signatures']
  _, saved_model = artifact.load_serving(path)
  assert artifact.EMBEDDINGS_SIGNATURE not in saved_model.signatures
  with pytest.raises(artifact.ArtifactError) as raised:
    artifact.load(path, embeddings=True)
  message = str(raised.value)
  assert '\n' not in message
  assert 'exported before embeddings existed' in message
  assert 'softmax/mlp' in message and 're-export' in message


@pytest.mark.slow  # Two exports of a small model: ~3 s.
def test_a_transfer_export_embeds_with_its_bases_frozen_extractor(tmp_path):
  base_model = models.build_model('deep_mnist', (16, 16, 1), 10)
  base_path = str(tmp_path / 'base.keras')
  base_model.save(base_path)
  base = transfer.load_base(base_path)
  model = transfer.build_model(base, 3)
  metadata = export.build_metadata(class_names=['a', 'b', 'c'],
                                   image_shape=(16, 16, 1),
                                   dataset='image_folder',
                                   model_name=model.name)
  path = str(tmp_path / 'export')
  export.export_model(model, path, metadata)
  loaded = artifact.load(path, embeddings=True)
  entry = loaded.metadata['embeddings']
  # The trainer's side of the check: its base's extractor, fingerprinted.
  assert entry['fingerprint'] == extractor.fingerprint(base.extractor)
  colour = image_files.encode_image(image_files.random_pixels(40, 30, 3),
                                    'JPEG')
  encoded = tf.constant([colour])
  embedded = loaded.embed(image_bytes=encoded)['embeddings'].numpy()
  pixels = preprocessing.decode_images(encoded, 16, 16, 1)
  expected = extractor.embedding_model(model)(pixels, training=False).numpy()
  assert embedded.shape == (1, entry['size'])
  np.testing.assert_allclose(embedded, expected, atol=1e-5)
