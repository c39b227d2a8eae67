"""--augment: the training split's batches change, nothing else does."""

import numpy as np
import pytest

from trainer import config as config_lib
from trainer import registry
from trainer.data import pipeline
from trainer.data import sources

_SHAPE = (28, 28, 1)


@pytest.fixture(scope='module')
def source():
  return sources.load_mnist_sample(0.1, 0.1, train_examples=64)


def _first_batch(source, split, training, augment, seed=7):
  dataset = pipeline.make_dataset(source, split, 32, _SHAPE,
                                  training=training, seed=seed,
                                  augment=augment)
  images, labels = next(iter(dataset))
  return images.numpy(), labels.numpy()


def _assert_changed(raw, images):
  assert images.shape == raw.shape and images.dtype == np.float32
  assert 0.0 <= images.min() and images.max() <= 1.0
  changed = [not np.allclose(a, b) for a, b in zip(images, raw)]
  assert sum(changed) >= len(changed) // 4


@pytest.mark.slow  # 1.6 s here: over the fast tier's ~1.5 s a test.
def test_training_batches_differ_from_the_raw_images(source):
  raw, raw_labels = _first_batch(source, 'train', True, ())
  images, labels = _first_batch(source, 'train', True, registry.AUGMENTATIONS)
  np.testing.assert_array_equal(labels, raw_labels)  # Same shuffle.
  _assert_changed(raw, images)
  # Seeded: the same seed draws the same crops, flips and colours.
  seeded = ('crop', 'flip', 'color')
  first, _ = _first_batch(source, 'train', True, seeded)
  again, _ = _first_batch(source, 'train', True, seeded)
  np.testing.assert_array_equal(again, first)
  other, _ = _first_batch(source, 'train', True, seeded, seed=8)
  assert not np.allclose(other, first)


@pytest.mark.slow
@pytest.mark.parametrize('augment', [
    *((name,) for name in registry.AUGMENTATIONS), True])
def test_each_augmentation_changes_training_batches(source, augment):
  raw, _ = _first_batch(source, 'train', True, ())
  _assert_changed(raw, _first_batch(source, 'train', True, augment)[0])


@pytest.mark.parametrize('split', ['validation', 'test'])
def test_held_out_batches_are_never_augmented(source, split):
  raw, _ = _first_batch(source, split, False, ())
  images, _ = _first_batch(source, split, False, registry.AUGMENTATIONS)
  np.testing.assert_array_equal(images, raw)


@pytest.mark.parametrize('value, expected', [
    (True, 'shift'), ('true', 'shift'), (False, ''), ('false', ''),
    ('shift, crop', 'crop,shift'), ('color,flip,crop', 'crop,flip,color')])
def test_the_old_boolean_and_named_forms_parse(tmp_path, value, expected):
  config = config_lib.build({'augment': value, 'dataset': 'fashion_mnist',
                             'data_dir': str(tmp_path)},
                            {'job_dir': str(tmp_path)})
  assert config.augment == expected
  assert config.augmentations == tuple(n for n in expected.split(',') if n)


def test_flip_is_refused_for_digits_and_unknown_names_are_named(tmp_path):
  with pytest.raises(config_lib.ConfigError,
                     match='augment: flip mirrors images.*mnist_sample'):
    config_lib.build(overrides={'job_dir': str(tmp_path),
                                'augment': 'flip,shift'})
  with pytest.raises(config_lib.ConfigError,
                     match="unknown augmentation 'rotate'"):
    config_lib.build(overrides={'job_dir': str(tmp_path),
                                'augment': 'shift,rotate'})


def test_a_resume_of_a_run_saved_with_the_boolean_form_is_not_refused(
    tmp_path):
  config = config_lib.build(overrides={'job_dir': str(tmp_path),
                                       'augment': 'true'})
  saved = dict(config.to_dict(), augment=True)
  assert config_lib.describe_changes(config, saved) == ''


@pytest.mark.slow
def test_a_run_augments_only_its_training_split_and_never_its_export(
    tmp_path, monkeypatch, source):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer import artifact  # pylint: disable=g-import-not-at-top
  from trainer import export  # pylint: disable=g-import-not-at-top
  from trainer import run_context  # pylint: disable=g-import-not-at-top
  from trainer import train  # pylint: disable=g-import-not-at-top
  asked = []
  make_dataset = pipeline.make_dataset

  def spy(source, split, *args, **kwargs):
    asked.append((split, tuple(kwargs.get('augment', ()))))
    return make_dataset(source, split, *args, **kwargs)

  monkeypatch.setattr(pipeline, 'make_dataset', spy)
  config = config_lib.build(overrides={
      'job_dir': str(tmp_path / 'job'), 'model': 'softmax', 'epochs': 1,
      'steps_per_epoch': 2, 'batch_size': 32, 'train_examples': 64,
      'augment': 'crop,shift,color'})
  train.run(run_context.create(config, tf.distribute.get_strategy()))
  assert sorted(set(asked)) == [('test', ()), ('train', ('crop', 'shift',
                                                        'color')),
                                ('validation', ())]
  export_dir = str(tmp_path / 'job' / 'export')
  model = export.load_keras_model(export_dir)
  assert not [layer for layer in model.layers
              if type(layer).__name__.startswith('Random')]
  # The export's outputs on raw validation images are the model's, every
  # time: nothing random is left in them.
  raw, _ = _first_batch(source, 'validation', False, ())
  serve, _ = artifact.load_serving(export_dir, artifact.PIXELS_SIGNATURE)
  first = serve(images=tf.constant(raw))['probabilities'].numpy()
  np.testing.assert_array_equal(
      serve(images=tf.constant(raw))['probabilities'].numpy(), first)
  np.testing.assert_allclose(first, model.predict(raw, verbose=0),
                             atol=1e-6)


@pytest.mark.parametrize('args, expected', [
    (['--augment'], 'shift'), (['--noaugment'], ''),
    (['--augment=flip,crop'], 'crop,flip'), ([], '')])
def test_the_command_takes_a_bare_augment_flag_as_before(tmp_path, args,
                                                         expected):
  import copy  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from trainer import task  # pylint: disable=g-import-not-at-top
  flag_values = copy.deepcopy(flags.FLAGS)
  flag_values.unparse_flags()
  flag_values(['trainer', f'--job_dir={tmp_path}', '--dataset=fashion_mnist',
               f'--data_dir={tmp_path}', *args])
  assert task.build_config(flag_values, {}).augment == expected
