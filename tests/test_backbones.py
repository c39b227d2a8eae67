"""Keras Applications backbones: each sees its own input, loads its weights.

Every entry of registry.BACKBONES must see exactly what its
`keras.applications.<module>.preprocess_input` makes of our [0, 1] pixels
* 255, build at its smallest size, train, load a local weights file, refuse
another backbone's, and reload with safe_mode=True.
"""

import os

import keras
import numpy as np
import pytest

from trainer import config as config_lib
from trainer import models
from trainer import registry
from trainer import transfer


def _stand_in_base(name, size):
  """A Base with the backbone's input scaling over a tiny extractor.

  The scaling sits outside the extractor, so a one-convolution extractor
  tests it in milliseconds; test_every_backbone_builds_... checks that
  load_base gives each real backbone the same scaling.
  """
  spec = registry.BACKBONES[name]
  inputs = keras.Input((size, size, 3))
  features = keras.layers.Conv2D(2, 3)(inputs)
  extractor = keras.Model(inputs, features, name=transfer.EXTRACTOR_LAYER)
  return transfer.Base(source=name, architecture=name, extractor=extractor,
                       input_shape=(size, size, 3), pooling='average',
                       rescaling=(spec.scale, spec.offset),
                       channel_order=spec.channel_order)


def _scaling_model(model):
  """The transfer model from its input to what the extractor receives."""
  return keras.Model(model.inputs, model.get_layer('backbone_scaling').output)


def _pixels(size, seed=0, count=2):
  rng = np.random.default_rng(seed)
  return rng.uniform(size=(count, size, size, 3)).astype('float32')


def _preprocess_input(name, pixels):
  module = getattr(keras.applications, registry.BACKBONES[name].preprocessing)
  return np.asarray(module.preprocess_input(pixels * 255.0))


@pytest.mark.parametrize('name', registry.BACKBONES)
def test_the_backbone_sees_what_its_preprocess_input_gives(tmp_path, name):
  size = registry.BACKBONES[name].min_image_size
  model = transfer.build_model(_stand_in_base(name, size), num_classes=3)
  pixels = _pixels(size)
  expected = _preprocess_input(name, pixels.copy())
  scaled = _scaling_model(model)(pixels).numpy()
  np.testing.assert_allclose(scaled, expected, rtol=0, atol=1e-5)
  # The scaling is made of built-in Keras parts: it reloads in safe mode.
  path = str(tmp_path / 'transfer.keras')
  model.save(path)
  reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
  np.testing.assert_allclose(_scaling_model(reloaded)(pixels).numpy(),
                             expected, rtol=0, atol=1e-5)


def test_the_scaling_adds_no_weights_outside_the_extractor():
  model = transfer.build_model(_stand_in_base('resnet50', 32), num_classes=3)
  extractor = model.get_layer(transfer.EXTRACTOR_LAYER)
  head = model.get_layer(models.LOGITS_LAYER)
  assert len(model.weights) == len(extractor.weights) + len(head.weights)


def _weights_equal(got, want):
  assert len(got) == len(want) > 100
  for got_array, want_array in zip(got, want):
    np.testing.assert_array_equal(got_array, want_array)


# Building a backbone costs about a second, and so does reloading it: one
# test builds each new one once. mobilenet_v2 builds, trains, exports and
# reloads in test_transfer.py's test_mobilenet_v2_backbone_from_a_local_...
@pytest.mark.slow
@pytest.mark.parametrize('name', [
    name for name in registry.BACKBONES if name != 'mobilenet_v2'])
def test_the_backbone_builds_at_its_smallest_size_trains_and_reloads(
    tmp_path, name):
  spec = registry.BACKBONES[name]
  size = spec.min_image_size
  base = transfer.load_base(name, 'none', image_size=size, seed=7)
  assert (base.input_shape, base.pooling) == ((size, size, 3), 'average')
  assert (base.rescaling, base.channel_order) == (
      (spec.scale, spec.offset), spec.channel_order)
  model = transfer.build_model(base, num_classes=2)
  model.compile(keras.optimizers.SGD(0.1), 'sparse_categorical_crossentropy',
                run_eagerly=True)  # One step: tracing it would cost more.
  bias_before = model.get_layer(models.LOGITS_LAYER).bias.numpy()
  pixels = _pixels(size, seed=1)
  model.train_on_batch(pixels, np.array([0, 0]))
  assert not np.array_equal(
      bias_before, model.get_layer(models.LOGITS_LAYER).bias.numpy())
  path = str(tmp_path / f'{name}.keras')
  model.save(path)
  reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
  np.testing.assert_allclose(reloaded(pixels).numpy(), model(pixels).numpy(),
                             atol=1e-6)


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:Skipping nested container')
def test_a_weights_file_loads_and_one_of_another_backbone_is_refused(
    tmp_path):
  keras.utils.set_random_seed(7)
  reference = keras.applications.ResNet50(include_top=False, weights=None,
                                          input_shape=(32, 32, 3))
  path = str(tmp_path / 'resnet50_no_top.weights.h5')
  reference.save_weights(path)
  # Seeded otherwise: only the file can give it the reference's weights.
  base = transfer.load_base('resnet50', path, image_size=32, seed=42)
  got, want = base.extractor.get_weights(), reference.get_weights()
  assert len(got) == len(want) > 100
  for got_array, want_array in zip(got, want):
    np.testing.assert_array_equal(got_array, want_array)
  pixels = _pixels(32)
  np.testing.assert_array_equal(base.extractor(pixels).numpy(),
                                reference(pixels).numpy())

  with pytest.raises(config_lib.ConfigError) as raised:
    transfer.load_base('mobilenet_v2', path, image_size=32)
  message = str(raised.value)
  assert message.startswith(f'base_weights: cannot load {path} into '
                            'mobilenet_v2 at 32x32: A total of ')
  assert 'mobilenet_v2_weights_tf_dim_ordering' in message
  assert '\n' not in message


def _stem_input(extractor):
  """What EfficientNet's first padding layer receives: its inputs scaled."""
  return keras.Model(extractor.input,
                     extractor.get_layer('stem_conv_pad').input)


@pytest.mark.slow
def test_a_local_efficientnet_imagenet_file_sees_what_imagenet_weights_see(
    tmp_path, monkeypatch):
  from keras.src.utils import file_utils  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(7)
  stand_in = keras.applications.EfficientNetB0(
      include_top=False, weights=None, input_shape=(32, 32, 3))
  # The statistics the ImageNet file holds (Keras' comment in efficientnet.py:
  # the variance is the squared standard deviation).
  normalization = next(layer for layer in stand_in.layers
                       if isinstance(layer, keras.layers.Normalization))
  normalization.set_weights([
      np.array([0.485, 0.456, 0.406]), np.square([0.229, 0.224, 0.225]),
      np.array(0)])
  path = str(tmp_path / 'efficientnetb0_notop.weights.h5')
  stand_in.save_weights(path)
  # Keras' own weights='imagenet' graph, reading that file for the download.
  monkeypatch.setattr(file_utils, 'get_file', lambda *args, **kwargs: path)
  imagenet = keras.applications.EfficientNetB0(
      include_top=False, weights='imagenet', input_shape=(32, 32, 3))
  monkeypatch.undo()

  base = transfer.load_base('efficientnet_b0', path, image_size=32)
  model = transfer.build_model(base, num_classes=2)
  pixels = _pixels(32)
  ours = _stem_input(base.extractor)(_scaling_model(model)(pixels)).numpy()
  theirs = _stem_input(imagenet)(pixels * 255.0).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
  # Without the fold the two differ: the check could fail.
  plain = _stem_input(base.extractor)(pixels * 255.0).numpy()
  assert np.abs(plain - theirs).max() > 0.1


# mobilenet_v2's is in test_transfer.py; each costs a build (about 1 s).
@pytest.mark.parametrize(
    'name', [name for name in registry.BACKBONES if name != 'mobilenet_v2'])
def test_imagenet_offline_names_the_file_to_download(monkeypatch, name):
  from keras.src.utils import file_utils  # pylint: disable=g-import-not-at-top

  requested = []

  def offline(fname, origin, **unused_kwargs):
    del fname
    requested.append(origin)
    raise Exception(  # pylint: disable=broad-exception-raised
        f'URL fetch failure on {origin}: None -- [Errno -3] Temporary '
        'failure in name resolution')

  monkeypatch.setattr(file_utils, 'get_file', offline)
  spec = registry.BACKBONES[name]
  with pytest.raises(config_lib.ConfigError) as raised:
    transfer.load_base(name, 'imagenet', image_size=spec.min_image_size)
  message = str(raised.value)
  file_name = spec.imagenet_url.rsplit('/', 1)[1]
  assert message.startswith('base_weights: could not fetch the ImageNet')
  assert f'--base_weights=/path/to/{file_name}' in message
  assert requested == [spec.imagenet_url]  # The file Keras itself fetches.
  assert '\n' not in message
