"""The run's sequence, in process: tiny runs of train.run end to end.

The command itself (`python -m trainer.task`) runs in a subprocess in
test_task.py; these runs take a second or two each.
"""

import json
import logging
import os

import keras
import pytest
import tensorflow as tf

from trainer import callbacks
from trainer import config as config_lib
from trainer import models
from trainer import preemption
from trainer import run_context
from trainer import storage
from trainer import train
from trainer import artifact

_TINY = {'model': 'softmax', 'epochs': 1, 'steps_per_epoch': 2,
         'batch_size': 32, 'train_examples': 256}


def _context(tmp_path, **overrides):
  config = config_lib.build(overrides=dict(
      _TINY, job_dir=str(tmp_path / 'job'), **overrides))
  return run_context.create(config, tf.distribute.get_strategy())


@pytest.mark.slow  # 3.1 s here: over the fast tier's ~1.5 s a test.
def test_a_run_leaves_every_output_and_a_rerun_does_nothing(tmp_path,
                                                           caplog):
  context = _context(tmp_path)
  metrics = train.run(context)
  layout = context.layout
  assert sorted(os.listdir(layout.job_dir)) == [
      'checkpoints', 'config.yaml', 'evaluation.png', 'export', 'logs',
      'metrics.json', 'misclassified.png', 'training_curves.png']
  assert {'test_accuracy', 'test_loss', 'evaluated_on', 'evaluation',
          'epochs', 'examples',
          'data', 'history', 'resumed_from_epoch', 'replicas',
          'mixed_precision', 'workers', 'train_images_per_second'} <= set(
              metrics)
  assert metrics['evaluated_on'] == 'test' and metrics['epochs'] == 1
  assert metrics['examples'] == {'train': 256, 'validation': 500,
                                 'test': 500}
  assert storage.read_json(layout.metrics_path)['history'] == (
      metrics['history'])
  assert artifact.is_complete(layout.export_dir)
  # The configuration saved is the one the run used.
  assert config_lib.build(config_lib.load_file(layout.config_path)) == (
      context.config)
  before = os.path.getmtime(layout.metrics_path)
  with caplog.at_level(logging.INFO, logger='absl'):
    again = train.run(_context(tmp_path))
  assert 'already holds a finished run' in caplog.text
  assert again['history'] == metrics['history']
  assert os.path.getmtime(layout.metrics_path) == before


def _strict_json(path):
  """Parses a JSON file, refusing NaN and Infinity (as most readers do)."""

  def refuse(constant):
    raise ValueError(f'{path}: {constant} is not JSON')

  with open(path) as f:
    return json.load(f, parse_constant=refuse)


@pytest.mark.parametrize('fractions, evaluated_on, validation', [
    ({'test_fraction': 0.0}, 'validation', 500),
    ({'test_fraction': 0.0, 'validation_fraction': 0.0}, None, 0)])
@pytest.mark.slow  # 3.8 s here: over the fast tier's ~1.5 s a test.
def test_without_a_test_split_the_run_says_what_it_evaluated_on(
    tmp_path, caplog, fractions, evaluated_on, validation):
  context = _context(tmp_path, **fractions)
  with caplog.at_level(logging.INFO, logger='absl'):
    metrics = train.run(context)
  if evaluated_on:
    assert 'the held-out figures are the validation split' in caplog.text
    assert 0 <= metrics['val_accuracy'] <= 1
  assert artifact.is_complete(context.layout.export_dir)
  assert metrics['evaluated_on'] == evaluated_on
  assert metrics['test_accuracy'] is None and metrics['test_loss'] is None
  assert (metrics.get('val_accuracy') is not None) == bool(evaluated_on)
  assert metrics['examples'] == {'train': 256, 'validation': validation,
                                 'test': 0}
  saved = artifact.read_metadata(context.layout.export_dir)['metrics']
  assert saved['evaluated_on'] == evaluated_on
  # Null test figures are valid JSON everywhere, and finish the run.
  for root, _, names in os.walk(context.layout.job_dir):
    for name in names:
      if name.endswith('.json'):
        _strict_json(os.path.join(root, name))
  caplog.clear()
  with caplog.at_level(logging.INFO, logger='absl'):
    train.run(_context(tmp_path, **fractions))
  assert 'already holds a finished run' in caplog.text


def test_a_diverging_run_publishes_nothing(tmp_path):
  context = _context(tmp_path, model='deep_mnist', learning_rate=1e6,
                     steps_per_epoch=10, epochs=2, train_examples=500)
  with pytest.raises(callbacks.TrainingDiverged,
                     match='Training diverged: the training loss became nan '
                     'at epoch 1'):
    train.run(context)
  layout = context.layout
  assert not os.path.exists(layout.export_dir)
  assert not os.path.exists(layout.metrics_path)
  assert not os.path.exists(os.path.join(
      layout.checkpoint_dir, 'backup', 'epoch-0001.weights.h5'))


def test_a_signal_stops_the_run_before_it_publishes(tmp_path):
  context = _context(tmp_path)
  context.stop_signal.received = 'SIGTERM'
  with pytest.raises(preemption.Preempted):
    train.run(context)
  assert not os.path.exists(context.layout.metrics_path)
  assert not os.path.exists(context.layout.export_dir)


@pytest.mark.slow  # 6.5 s here: over the fast tier's ~1.5 s a test.
def test_a_transfer_run_resolves_its_config_once_and_fine_tunes(tmp_path):
  keras.utils.set_random_seed(0)
  base = str(tmp_path / 'base.keras')
  models.build_model('cnn_bn', (28, 28, 1), 10).save(base)
  context = _context(tmp_path, base_model=base, fine_tune_layers=1,
                     fine_tune_epochs=1)
  # The base's input shape is the run's, in the config every step sees.
  assert (context.config.image_size, context.config.channels) == (28, 1)
  assert context.base.input_shape == (28, 28, 1)
  metrics = train.run(context)
  assert [(e['epoch'], e['phase']) for e in metrics['history']] == [
      (1, 'head'), (2, 'fine_tune')]
  saved = config_lib.load_file(context.layout.config_path)
  assert (saved['image_size'], saved['channels']) == (28, 1)
  details = artifact.read_metadata(context.layout.export_dir)['transfer']
  assert len(details['fine_tuned_layers']) == 1
  assert details['base_model'] == base
