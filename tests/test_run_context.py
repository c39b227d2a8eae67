"""The run context: the configuration resolved once, before anything runs."""

import keras
import pytest
import tensorflow as tf

from trainer import config as config_lib
from trainer import models
from trainer import run_context


def _build(tmp_path, **overrides):
  return config_lib.build(overrides=dict(
      {'job_dir': str(tmp_path / 'job')}, **overrides))


def test_a_run_from_scratch_keeps_its_config_as_given(tmp_path):
  config = _build(tmp_path, checkpoint_dir=str(tmp_path / 'elsewhere'))
  context = run_context.create(config, tf.distribute.get_strategy())
  assert context.config is config and context.base is None
  assert context.layout.checkpoint_dir == str(tmp_path / 'elsewhere')
  assert context.stop_signal.received is None
  assert context.task.is_chief


def test_a_transfer_run_takes_its_input_shape_from_the_base(tmp_path):
  keras.utils.set_random_seed(0)
  base = str(tmp_path / 'base.keras')
  models.build_model('deep_mnist', (28, 28, 1), 10).save(base)
  config = _build(tmp_path, base_model=base, dataset='image_folder',
                  data_dir='/d')
  assert config.image_shape == (64, 64, 3)  # The dataset's own default.
  context = run_context.create(config, tf.distribute.get_strategy())
  assert context.config.image_shape == context.base.input_shape == (28, 28,
                                                                     1)
  # Everything else is as given: the run resolves to the same config again.
  assert config_lib.training_differences(
      context.config, run_context.create(
          config, tf.distribute.get_strategy()).config.to_dict()) == []


def test_a_base_that_cannot_work_is_refused_before_the_run(tmp_path):
  with pytest.raises(config_lib.ConfigError, match='^base_model: '):
    run_context.create(_build(tmp_path, base_model=str(tmp_path / 'none')),
                       tf.distribute.get_strategy())
