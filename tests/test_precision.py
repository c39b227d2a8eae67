"""Mixed precision: the policy `auto` picks, and float32 exports."""

import numpy as np
import pytest

from trainer import export
from trainer import models
from trainer import precision
from tests.helpers import image_files
from tests import helpers
from trainer import artifact


@pytest.mark.parametrize('gpus, flags, expected', [
    ([(8, 0)], set(), 'mixed_bfloat16'),
    ([(7, 5), (7, 5)], set(), 'mixed_float16'),
    ([(8, 6), (7, 0)], set(), 'mixed_float16'),  # The slowest GPU decides.
    ([(6, 1)], {'avx512_bf16'}, 'float32'),  # GPUs decide over the CPU.
    ([], {'avx512f', 'avx512_bf16'}, 'mixed_bfloat16'),
    ([], {'amx_bf16'}, 'mixed_bfloat16'),
    ([], {'avx2', 'fma'}, 'float32'),
])
def test_auto_picks_what_the_hardware_computes_fastest(gpus, flags, expected):
  assert precision.resolve('auto', gpus, flags) == expected


def test_explicit_policies_are_kept_and_unknown_ones_refused():
  assert precision.resolve('mixed_float16', [], set()) == 'mixed_float16'
  with pytest.raises(ValueError, match='Unknown mixed precision'):
    precision.resolve('float8')


def test_policy_scope_restores_the_global_policy():
  import keras  # pylint: disable=g-import-not-at-top
  before = keras.config.dtype_policy().name
  with precision.policy_scope('mixed_bfloat16'):
    model = models.build_model('deep_mnist', (28, 28, 1), 10)
  assert keras.config.dtype_policy().name == before
  assert model.get_layer(models.LOGITS_LAYER).dtype_policy.name == (
      'mixed_bfloat16')
  # The probabilities stay float32 under mixed precision.
  assert model.get_layer(models.PROBABILITIES_LAYER).compute_dtype == (
      'float32')


def test_as_float32_keeps_the_weights_and_computes_in_float32():
  with precision.policy_scope('mixed_bfloat16'):
    mixed = models.build_model('cnn_bn', (28, 28, 1), 10)
  plain = precision.as_float32(mixed)
  assert all(layer.dtype_policy.name == 'float32' for layer in plain.layers)
  for got, want in zip(plain.get_weights(), mixed.get_weights()):
    np.testing.assert_array_equal(got, want)
  images = np.random.default_rng(0).random((4, 28, 28, 1)).astype('float32')
  np.testing.assert_allclose(plain(images, training=False),
                             mixed(images, training=False), atol=0.03)
  already = models.build_model('softmax', (28, 28, 1), 10)
  assert precision.as_float32(already) is already


@pytest.mark.slow
def test_bfloat16_training_exports_a_float32_artifact(tmp_path):
  job_dir = tmp_path / 'job'
  helpers.train_in_process(
      job_dir=str(job_dir), model='deep_mnist',
      mixed_precision='mixed_bfloat16', epochs=1, steps_per_epoch=3,
      train_examples=512)
  metrics = helpers.read_json(job_dir / 'metrics.json')
  assert metrics['mixed_precision'] == 'mixed_bfloat16'
  model = export.load_keras_model(str(job_dir / 'export'))
  assert {layer.dtype_policy.name for layer in model.layers} == {'float32'}
  serve, _ = artifact.load_serving(str(job_dir / 'export'))
  pixels = image_files.random_pixels(28, 28, 1)
  probabilities = serve(image_bytes=[image_files.encode_image(pixels, 'PNG')])[
      'probabilities']
  assert probabilities.dtype.name == 'float32'
  np.testing.assert_allclose(
      probabilities.numpy(),
      model(pixels[None, ..., None].astype('float32') / 255.0), atol=1e-5)


def test_as_float32_handles_nested_transfer_models(tmp_path):
  from trainer import transfer  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'base.keras')
  models.build_model('deep_mnist', (28, 28, 1), 10).save(path)
  base = transfer.load_base(path)
  with precision.policy_scope('mixed_bfloat16'):
    mixed = transfer.build_model(base, 3)
  plain = precision.as_float32(mixed)
  nested = plain.get_layer(transfer.EXTRACTOR_LAYER)
  assert {layer.dtype_policy.name for layer in plain.layers + nested.layers
          } == {'float32'}
  for got, want in zip(plain.get_weights(), mixed.get_weights()):
    np.testing.assert_array_equal(got, want)
