"""Transfer learning: what is reused, what trains, the artifact it leaves."""

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import config as config_lib
from trainer import export
from trainer import job_dir as job_dir_lib
from trainer import models
from trainer import registry
from trainer import run_context
from trainer import storage
from trainer import train
from trainer import transfer
from trainer.data import preprocessing
from tests.helpers import image_files
from tests import helpers
from trainer import artifact


def _set_distinct_weights(model, seed):
  """Gives every weight (BN statistics too) values no training would keep.

  Freshly initialised weights are often all zeros or ones; distinct random
  values make "bit-identical to the base" a claim that can fail.
  """
  rng = np.random.default_rng(seed)
  values = []
  for variable in model.weights:
    value = rng.normal(0.0, 0.1, size=variable.shape)
    if 'variance' in variable.path:
      value = np.abs(value) + 0.5
    values.append(value.astype('float32'))
  model.set_weights(values)


def _save_base(directory, name, architecture, input_shape=(28, 28, 1)):
  model = models.build_model(architecture, input_shape, 10)
  _set_distinct_weights(model, seed=len(name))
  path = os.path.join(directory, name)
  model.save(path)
  return path


@pytest.fixture(scope='module')
def cnn_base(tmp_path_factory):
  """A cnn_bn base saved as .keras: 4 conv + 4 BN layers before `features`."""
  return _save_base(str(tmp_path_factory.mktemp('base')), 'cnn_bn.keras',
                    'cnn_bn')


def _load(path):
  return keras.saving.load_model(path, safe_mode=True, compile=False)


def _extractor_layers(model):
  """The base's layers with weights before `features`, bottom to top."""
  layers = model.layers[:[layer.name for layer in model.layers].index(
      models.FEATURES_LAYER)]
  return [layer for layer in layers if layer.weights]


def _changed_layers(base, extractor):
  """Names of extractor layers whose weights differ from the base's."""
  compared = set()
  changed = []
  for layer in extractor.layers:
    if not layer.weights:
      continue
    compared.add(layer.name)
    before = base.get_layer(layer.name).get_weights()
    after = layer.get_weights()
    assert len(before) == len(after)
    if any(not np.array_equal(a, b) for a, b in zip(before, after)):
      changed.append(layer.name)
  # Every weight layer of the base's extractor was compared, none missed.
  assert compared == {layer.name for layer in _extractor_layers(base)}
  return changed


def _conv_names(model):
  return [layer.name for layer in _extractor_layers(model)
          if isinstance(layer, keras.layers.Conv2D)]


def _random_batch(count, shape, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(count,) + tuple(shape)).astype('float32')
  return images, rng.integers(0, num_classes, size=count)


# --------------------------------------------------------------------------
# Where the extractor ends.


@pytest.mark.parametrize('architecture, convolutions', [
    ('cnn_bn', 4), ('deep_mnist', 2)])
def test_our_models_are_cut_at_their_features_layer(tmp_path, architecture,
                                                    convolutions):
  path = _save_base(str(tmp_path), 'base.keras', architecture)
  base = transfer.load_base(path)
  original = _load(path)
  assert base.input_shape == (28, 28, 1)
  assert base.pooling == 'flatten'
  assert base.architecture == architecture
  assert base.extractor.output.shape == original.get_layer(
      models.FEATURES_LAYER).output.shape
  assert [layer.name for layer in transfer.fine_tunable_layers(
      base.extractor)] == _conv_names(original)
  assert len(_conv_names(original)) == convolutions


def test_any_keras_model_is_cut_before_its_global_pooling(tmp_path):
  inputs = keras.Input((20, 20, 3))
  x = keras.layers.Conv2D(4, 3, activation='relu')(inputs)
  x = keras.layers.MaxPooling2D()(x)
  x = keras.layers.Conv2D(6, 3, name='last_conv')(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(5, activation='softmax')(x)
  path = str(tmp_path / 'plain.keras')
  keras.Model(inputs, outputs, name='plain').save(path)
  base = transfer.load_base(path)
  assert base.pooling == 'average'
  assert base.input_shape == (20, 20, 3)
  assert base.extractor.output.shape == (None, 7, 7, 6)
  assert base.extractor.layers[-1].name == 'last_conv'


@pytest.mark.parametrize('architecture', ['softmax', 'mlp'])
def test_base_without_convolution_gets_a_clear_error(tmp_path, architecture):
  path = _save_base(str(tmp_path), f'{architecture}.keras', architecture)
  with pytest.raises(config_lib.ConfigError) as raised:
    transfer.load_base(path)
  message = str(raised.value)
  assert message.startswith(f'base_model: {path}')
  assert f"a '{architecture}' model" in message
  assert 'has no convolutional feature extractor' in message
  assert 'mobilenet_v2' in message  # Says what would work instead.


@pytest.mark.slow
def test_base_without_convolution_fails_the_command_before_any_work(
    tmp_path):
  path = _save_base(str(tmp_path), 'softmax.keras', 'softmax')
  job_dir = str(tmp_path / 'job')
  process = helpers.run_module('trainer.task', f'--job_dir={job_dir}',
                                f'--base_model={path}', check=False,
                                timeout=300)
  assert process.returncode == 2
  assert 'has no convolutional feature extractor' in process.stderr
  assert 'Traceback' not in process.stderr
  assert not os.path.exists(job_dir), 'nothing should be written'


def test_missing_or_incomplete_bases_are_named(tmp_path, cnn_base):
  missing = str(tmp_path / 'no_such_export')
  with pytest.raises(config_lib.ConfigError,
                     match=f'^base_model: .*{missing}: no such model'):
    transfer.load_base(missing)
  # A job dir instead of its export: the error points at the export.
  job_dir = tmp_path / 'job'
  (job_dir / 'export').mkdir(parents=True)
  (job_dir / 'export' / artifact.COMPLETE_MARKER).write_text('')
  with pytest.raises(config_lib.ConfigError,
                     match=f'not a complete export.*Did you mean '
                     f'--base_model={job_dir}/export'):
    transfer.load_base(str(job_dir))
  garbage = tmp_path / 'garbage.keras'
  garbage.write_bytes(b'not a zip file')
  with pytest.raises(config_lib.ConfigError,
                     match=f'^base_model: cannot use {garbage}'):
    transfer.load_base(str(garbage))


@pytest.mark.parametrize('overrides, key', [
    ({'image_size': 32}, 'image_size'),
    ({'channels': 3}, 'channels'),
])
def test_shapes_that_contradict_the_base_are_named(cnn_base, overrides, key):
  with pytest.raises(config_lib.ConfigError,
                     match=f'^{key}: the base model .* takes'):
    transfer.load_base(cnn_base, **overrides)


def test_prepare_takes_the_base_input_shape_and_checks_fine_tune_layers(
    cnn_base):
  config = config_lib.build(overrides={
      'job_dir': '/tmp/j', 'dataset': 'image_folder', 'data_dir': '/d',
      'base_model': cnn_base, 'fine_tune_layers': 4})
  assert config.image_shape == (64, 64, 3)  # The dataset's own default.
  resolved, base = transfer.prepare(config)
  assert resolved.image_shape == base.input_shape == (28, 28, 1)
  # A re-run resolves to the same config: resuming compares equal configs.
  assert config_lib.training_differences(
      resolved, transfer.prepare(config)[0].to_dict()) == []
  too_many = config_lib.build(overrides={
      'job_dir': '/tmp/j', 'base_model': cnn_base, 'fine_tune_layers': 5})
  with pytest.raises(config_lib.ConfigError,
                     match='^fine_tune_layers: 5 is more than the 4'):
    transfer.prepare(too_many)


@pytest.mark.parametrize('name, overrides, shape', [
    ('transfer_fashion_to_digits.yaml', {}, (28, 28, 1)),
    ('transfer_mobilenet_v2.yaml', {'base_weights': 'none', 'data_dir': '/d'},
     (96, 96, 3)),
])
def test_shipped_transfer_configs_resolve_against_a_real_base(
    cnn_base, name, overrides, shape):
  values = config_lib.load_file(os.path.join(helpers.REPO, 'config', name))
  if values['base_model'] not in registry.BACKBONES:
    overrides['base_model'] = cnn_base  # Stands in for the trained base.
  config = config_lib.build(values, dict(overrides, job_dir='/tmp/j'))
  resolved, base = transfer.prepare(config)
  assert resolved.image_shape == base.input_shape == shape
  assert resolved.fine_tune_layers > 0


# --------------------------------------------------------------------------
# Freezing and fine-tuning, in process.


@pytest.mark.slow  # 1.4 s here: over the fast tier's ~1.5 s a test.
def test_frozen_extractor_and_batch_norm_do_not_change_in_either_phase(
    cnn_base):
  original = _load(cnn_base)
  base = transfer.load_base(cnn_base)
  model = transfer.build_model(base, num_classes=3)
  assert model.get_layer(models.LOGITS_LAYER).kernel.shape == (7 * 7 * 64, 3)
  head_before = model.get_layer(models.LOGITS_LAYER).get_weights()
  images, labels = _random_batch(32, (28, 28, 1), 3)
  model.compile(keras.optimizers.Adam(1e-2), 'sparse_categorical_crossentropy')
  model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
  extractor = model.get_layer(transfer.EXTRACTOR_LAYER)
  assert _changed_layers(original, extractor) == []
  head_after = model.get_layer(models.LOGITS_LAYER).get_weights()
  assert not np.array_equal(head_before[0], head_after[0])

  names = transfer.unfreeze_top_layers(model, 2)
  assert names == _conv_names(original)[-2:]
  model.compile(keras.optimizers.Adam(1e-3), 'sparse_categorical_crossentropy')
  model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
  # Batch norm stays in inference mode: its moving statistics and scale are
  # the base's even in the unfrozen top of the extractor.
  assert sorted(_changed_layers(original, extractor)) == sorted(names)


def test_unfreeze_top_layers_rejects_impossible_counts(cnn_base):
  model = transfer.build_model(transfer.load_base(cnn_base), num_classes=3)
  for count in (0, 5):
    with pytest.raises(ValueError, match=f'Cannot unfreeze {count} of 4'):
      transfer.unfreeze_top_layers(model, count)


def test_histories_of_both_phases_are_numbered_on():
  head = [{'epoch': 1, 'loss': 2.0}, {'epoch': 2, 'loss': 1.0}]
  fine_tune = [{'epoch': 1, 'loss': 0.5}]
  combined = transfer.combine_histories(head, fine_tune, head_epochs=2)
  assert [(e['epoch'], e['phase'], e['loss']) for e in combined] == [
      (1, 'head', 2.0), (2, 'head', 1.0), (3, 'fine_tune', 0.5)]


# --------------------------------------------------------------------------
# Keras Applications backbones.


def _mobilenet_weights_file(directory, size=32):
  """A MobileNetV2 (no top) weights file, initialised with another seed."""
  keras.utils.set_random_seed(7)
  reference = keras.applications.MobileNetV2(
      include_top=False, weights=None, input_shape=(size, size, 3))
  path = os.path.join(directory, 'mobilenet_v2_no_top.weights.h5')
  reference.save_weights(path)
  return path, reference.get_weights()


# Keras warns about each layer it cannot match before it gives up.
@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:Skipping nested container')
def test_backbone_weights_file_that_does_not_fit_is_named(tmp_path, cnn_base):
  missing = str(tmp_path / 'missing.h5')
  with pytest.raises(config_lib.ConfigError,
                     match=f'^base_weights: {missing}: no such file'):
    transfer.load_base('mobilenet_v2', missing, image_size=32)
  wrong = str(tmp_path / 'cnn_bn.weights.h5')
  _load(cnn_base).save_weights(wrong)
  with pytest.raises(config_lib.ConfigError,
                     match=f'^base_weights: cannot load {wrong} into '
                     'mobilenet_v2'):
    transfer.load_base('mobilenet_v2', wrong, image_size=32)


def test_imagenet_weights_offline_say_how_to_pass_a_local_file(monkeypatch):
  from keras.src.utils import file_utils  # pylint: disable=g-import-not-at-top

  def offline(fname, origin, **unused_kwargs):
    # What Keras' get_file raises offline: a bare Exception.
    del fname
    raise Exception(  # pylint: disable=broad-exception-raised
        f'URL fetch failure on {origin}: None -- [Errno -3] Temporary '
        'failure in name resolution')

  monkeypatch.setattr(file_utils, 'get_file', offline)
  with pytest.raises(config_lib.ConfigError) as raised:
    transfer.load_base('mobilenet_v2', 'imagenet', image_size=96)
  message = str(raised.value)
  assert message.startswith('base_weights: could not fetch the ImageNet')
  assert 'needs network access' in message
  assert ('--base_weights=/path/to/mobilenet_v2_weights_tf_dim_ordering_tf_'
          'kernels_1.0_96_no_top.h5') in message
  assert '--base_weights=none' in message


# --------------------------------------------------------------------------
# End to end: `python -m trainer.task --base_model=...`.


def _run_transfer(job_dir, *args):
  helpers.run_module('trainer.task', f'--job_dir={job_dir}', '--epochs=1',
                      *args)
  return os.path.join(job_dir, 'export')


@pytest.mark.slow
def test_transfer_run_reuses_every_extractor_weight_and_trains_a_new_head(
    tmp_path, cnn_base):
  export_dir = _run_transfer(str(tmp_path / 'job'), f'--base_model={cnn_base}',
                             '--steps_per_epoch=3', '--train_examples=300')
  model = export.load_keras_model(export_dir)  # safe_mode=True
  original = _load(cnn_base)
  assert _changed_layers(
      original, model.get_layer(transfer.EXTRACTOR_LAYER)) == []
  # The head is new: sized for the extractor's flattened features, and none
  # of the base's own head (its 256-unit dense layer) survives.
  assert model.get_layer(models.LOGITS_LAYER).kernel.shape == (7 * 7 * 64, 10)
  assert not [layer for layer in model.layers
              if isinstance(layer, keras.layers.Dense) and layer.units == 256]
  metadata = artifact.read_metadata(export_dir)
  assert metadata['labels'] == [str(digit) for digit in range(10)]
  assert metadata['model'] == 'transfer_cnn_bn'
  assert metadata['input'] == {'height': 28, 'width': 28, 'channels': 1,
                               'encoded_formats': list(artifact.ENCODED_FORMATS),
                               'jpeg_dct_ratios': list(artifact.JPEG_DCT_RATIOS)}
  details = metadata['transfer']
  assert details['base_model'] == cnn_base
  assert details['base_input'] == {'height': 28, 'width': 28, 'channels': 1}
  assert details['extractor_layers_with_weights'] == 8
  assert details['frozen_layers_with_weights'] == 8
  assert details['fine_tuned_layers'] == []
  metrics = helpers.read_json(str(tmp_path / 'job' / 'metrics.json'))
  assert [(e['epoch'], e['phase']) for e in metrics['history']] == [
      (1, 'head')]


def _encoded_test_images():
  """Colour and grey JPEG/PNG images of sizes the base never saw."""
  return [
      image_files.encode_image(image_files.random_pixels(40, 30, 3, seed=1), 'JPEG'),
      image_files.encode_image(image_files.random_pixels(17, 50, 1, seed=2), 'PNG'),
      image_files.encode_image(image_files.random_pixels(28, 28, 3, seed=3), 'PNG'),
  ]


@pytest.mark.slow
def test_fine_tuning_changes_exactly_the_top_layers_and_serves_like_any_model(
    tmp_path, cnn_base):
  folder = tmp_path / 'photos'
  image_files.write_image_folder(str(folder), ['cat', 'dog', 'fox'], 12,
                              sizes=((40, 30), (20, 20)))
  export_dir = _run_transfer(
      str(tmp_path / 'job'), f'--base_model={cnn_base}',
      '--dataset=image_folder', f'--data_dir={folder}', '--batch_size=8',
      '--steps_per_epoch=3', '--fine_tune_layers=2', '--fine_tune_epochs=1')
  model = export.load_keras_model(export_dir)
  original = _load(cnn_base)
  top_two = _conv_names(original)[-2:]
  assert sorted(_changed_layers(
      original, model.get_layer(transfer.EXTRACTOR_LAYER))) == sorted(top_two)
  metadata = artifact.read_metadata(export_dir)
  assert metadata['labels'] == ['cat', 'dog', 'fox']
  # Colour photos of any size were converted to the grey 28x28 base input.
  assert (metadata['input']['height'], metadata['input']['channels']) == (28, 1)
  assert metadata['transfer']['dataset_input'] == 'any size, grey or colour'
  assert metadata['transfer']['fine_tuned_layers'] == top_two
  assert metadata['transfer']['frozen_layers_with_weights'] == 6
  metrics = helpers.read_json(str(tmp_path / 'job' / 'metrics.json'))
  assert [(e['epoch'], e['phase']) for e in metrics['history']] == [
      (1, 'head'), (2, 'fine_tune')]

  encoded = _encoded_test_images()
  serve, _ = artifact.load_serving(export_dir)
  served = serve(image_bytes=tf.constant(encoded))['probabilities'].numpy()
  pixels = tf.stack([preprocessing.decode_image(image, 28, 28, 1)
                     for image in encoded])
  np.testing.assert_allclose(served, model(pixels, training=False).numpy(),
                             atol=1e-5)
  np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_mobilenet_v2_backbone_from_a_local_weights_file(tmp_path):
  weights, expected = _mobilenet_weights_file(str(tmp_path))
  folder = tmp_path / 'photos'
  image_files.write_image_folder(str(folder), ['a', 'b'], 10,
                              sizes=((48, 40), (20, 20)))
  export_dir = _run_transfer(
      str(tmp_path / 'job'), '--base_model=mobilenet_v2',
      f'--base_weights={weights}', '--image_size=32',
      '--dataset=image_folder', f'--data_dir={folder}', '--batch_size=8',
      '--steps_per_epoch=2')
  model = export.load_keras_model(export_dir)
  frozen = model.get_layer(transfer.EXTRACTOR_LAYER).get_weights()
  assert len(frozen) == len(expected)
  for got, want in zip(frozen, expected):
    np.testing.assert_array_equal(got, want)
  metadata = artifact.read_metadata(export_dir)
  assert metadata['input']['channels'] == 3
  assert metadata['transfer']['base_weights'] == weights
  serve, _ = artifact.load_serving(export_dir)
  served = serve(image_bytes=tf.constant(_encoded_test_images()))
  assert served['probabilities'].shape == (3, 2)


@pytest.mark.slow
def test_interrupted_fine_tuning_resumes_in_its_own_phase(tmp_path, cnn_base):
  config = config_lib.build(overrides={
      'job_dir': str(tmp_path / 'job'), 'base_model': cnn_base, 'epochs': 1,
      'steps_per_epoch': 2, 'train_examples': 200, 'batch_size': 16,
      'fine_tune_layers': 1, 'fine_tune_epochs': 2})
  strategy = tf.distribute.get_strategy()
  first = train.run(run_context.create(config, strategy))
  layout = job_dir_lib.Layout.from_config(config)
  finished = export.load_keras_model(layout.export_dir).get_weights()

  def crash():
    os.remove(layout.metrics_path)
    shutil.rmtree(layout.export_dir)

  # A crash after the last epoch, before the export: both phases restore
  # their finished backups into their own model state and nothing retrains
  # (a single training step would change the weights).
  crash()
  again = train.run(run_context.create(config, strategy))
  for got, want in zip(
      export.load_keras_model(layout.export_dir).get_weights(), finished):
    np.testing.assert_array_equal(got, want)
  assert again['history'] == first['history']
  # A crash during the second fine-tuning epoch: its resume record still
  # names the backup of epoch 1 (the record is committed after the weights).
  record_path = os.path.join(layout.checkpoint_dir,
                             job_dir_lib.FINE_TUNE_DIR,
                             job_dir_lib.RESUME_RECORD)
  record = storage.read_json(record_path)
  storage.write_json(record_path, dict(record['previous'], previous=None,
                                       config=record['config']))
  crash()
  resumed = train.run(run_context.create(config, strategy))
  assert [(e['epoch'], e['phase']) for e in resumed['history']] == [
      (1, 'head'), (2, 'fine_tune'), (3, 'fine_tune')]
  # Only the interrupted epoch ran again: earlier entries are the originals.
  assert resumed['history'][:2] == first['history'][:2]
  assert resumed['history'][2] != first['history'][2]
