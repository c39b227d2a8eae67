"""Best-epoch export and early stopping, through interruptions (in process).

The runs are tiny (softmax, 4 steps of 32 digits an epoch). Their validation
is forced to peak at epoch 2: from epoch 3 on, validation sees the negated
weights (the arg max flips, the accuracy collapses) while training goes on
unchanged. Interruptions are simulated in process (tests/helpers/interrupt.py).
"""

import os
import shutil
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import interrupt
from trainer import best_epoch
from trainer import checkpoints
from trainer import config as config_lib
from trainer import storage

PEAK = 2  # The forced best epoch.
_RUN = {'model': 'softmax', 'epochs': 6, 'steps_per_epoch': 4,
        'batch_size': 32, 'train_examples': 256, 'learning_rate': 0.01,
        'export_best': 'val_accuracy', 'early_stopping_patience': 2}


class _WorseAfterPeak(keras.callbacks.Callback):
  """Validation of epochs after PEAK sees the negated weights."""

  def __init__(self):
    super().__init__()
    self._epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch + 1

  def on_test_begin(self, logs=None):
    self._negate()

  def on_test_end(self, logs=None):
    self._negate()

  def _negate(self):
    if self._epoch > PEAK:
      for variable in self.model.trainable_variables:
        variable.assign(-variable)


def _run(job_dir, *extra_callbacks):
  """One attempt: a fresh context and model, as a new process has."""
  return interrupt.attempt(dict(_RUN, job_dir=str(job_dir)),
                           tf.distribute.get_strategy(), _WorseAfterPeak(),
                           *extra_callbacks)


def _layer_weights(weights_file):
  """The layer variables (no optimizer state) of a Keras .weights.h5 file."""
  found = []
  with h5py.File(weights_file, 'r') as f:
    f['layers'].visititems(lambda name, item: found.append(
        (name, item[()])) if isinstance(item, h5py.Dataset) else None)
  return found


def _exported_weights(job_dir, tmp_path):
  with zipfile.ZipFile(os.path.join(job_dir, 'export', 'model.keras')) as z:
    z.extract('model.weights.h5', tmp_path)
  return _layer_weights(os.path.join(tmp_path, 'model.weights.h5'))


def _assert_same_weights(actual, expected):
  assert [name for name, _ in actual] == [name for name, _ in expected]
  for (name, got), (_, want) in zip(actual, expected):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  job_dir = tmp_path_factory.mktemp('uninterrupted') / 'job'
  return job_dir, _run(job_dir)


@pytest.mark.slow
def test_the_export_holds_the_best_epochs_weights_not_the_last(
    uninterrupted, tmp_path):
  job_dir, metrics = uninterrupted
  history = metrics['history']
  assert metrics['best_epoch'] == PEAK < len(history)
  assert metrics['best_value'] == max(e['val_accuracy'] for e in history)
  assert metrics['val_accuracy'] == history[PEAK - 1]['val_accuracy']
  kept = os.path.join(job_dir, 'checkpoints')
  exported = _exported_weights(job_dir, tmp_path)
  _assert_same_weights(exported, _layer_weights(
      os.path.join(kept, f'epoch-{PEAK:03d}.weights.h5')))
  last = _layer_weights(os.path.join(kept,
                                     f'epoch-{len(history):03d}.weights.h5'))
  assert not np.allclose(exported[0][1], last[0][1])


@pytest.mark.slow
def test_early_stopping_stops_after_patience_epochs_without_improvement(
    uninterrupted):
  _, metrics = uninterrupted
  stopped = PEAK + _RUN['early_stopping_patience']
  assert metrics['stopped_epoch'] == stopped < _RUN['epochs']
  assert [e['epoch'] for e in metrics['history']] == list(
      range(1, stopped + 1))


@pytest.mark.slow
def test_interrupted_runs_make_the_uninterrupted_runs_decisions(
    uninterrupted, tmp_path, monkeypatch):
  expected_dir, expected = uninterrupted
  job_dir = tmp_path / 'job'
  stop = expected['stopped_epoch']
  # Killed during the epoch after the best one: the best state and its
  # weights come from the first attempt's files.
  with pytest.raises(interrupt.Killed):
    _run(job_dir, interrupt.KillDuring(PEAK + 1))
  # Killed at the end of the stopping epoch, after the best state was
  # written but before the backup's record: the state is one epoch ahead.
  backup_end = checkpoints.BackupAndRestore.on_epoch_end

  def killed_before_the_record(self, epoch, logs=None):
    if epoch + 1 == stop:
      raise interrupt.Killed('before the record')
    backup_end(self, epoch, logs)

  monkeypatch.setattr(checkpoints.BackupAndRestore, 'on_epoch_end',
                      killed_before_the_record)
  with pytest.raises(interrupt.Killed):
    _run(job_dir)
  monkeypatch.setattr(checkpoints.BackupAndRestore, 'on_epoch_end',
                      backup_end)
  metrics = _run(job_dir)

  for key in ('best_epoch', 'stopped_epoch', 'exported_epoch', 'monitor'):
    assert metrics[key] == expected[key], key
  assert metrics['best_value'] == pytest.approx(expected['best_value'])
  assert [(e['epoch'], e['attempt']) for e in metrics['history']] == (
      [(epoch, 1) for epoch in range(1, PEAK + 1)] +
      [(PEAK + 1, 2)] + [(epoch, 3) for epoch in range(PEAK + 2, stop + 1)])
  # The best epoch trained before any interruption, from the same seed:
  # the same weights.
  _assert_same_weights(_exported_weights(job_dir, tmp_path / 'a'),
                       _exported_weights(expected_dir, tmp_path / 'b'))

  # Killed after the stopping epoch's backup, before publishing: the rerun
  # trains no further epoch and exports the same weights.
  os.remove(os.path.join(job_dir, 'metrics.json'))
  shutil.rmtree(os.path.join(job_dir, 'export'))
  again = _run(job_dir)
  assert again['history'] == metrics['history']
  assert again['stopped_epoch'] == stop
  _assert_same_weights(_exported_weights(job_dir, tmp_path / 'c'),
                       _exported_weights(expected_dir, tmp_path / 'b'))


def test_improvement_goes_the_metrics_way_and_must_beat_min_delta():
  assert best_epoch.improves(0.5, None, True, 0.1)
  assert best_epoch.improves(0.8, 0.7, True, 0.05)
  assert not best_epoch.improves(0.74, 0.7, True, 0.05)
  assert best_epoch.improves(0.6, 0.7, False, 0.05)
  assert not best_epoch.improves(0.8, 0.7, False, 0.0)


def test_a_restore_takes_the_state_of_the_backed_up_epoch(tmp_path):
  folder = tmp_path / best_epoch.BEST_DIR
  folder.mkdir()
  older = dict(best_epoch.initial_state(), epoch=2, best_epoch=2,
               best_value=0.5, wait=0)
  del older['previous']
  storage.write_json(str(folder / best_epoch.STATE_FILE),
                     dict(older, epoch=3, wait=1, previous=older))
  assert best_epoch.restored_state(str(tmp_path), 3)['wait'] == 1
  assert best_epoch.restored_state(str(tmp_path), 2) == older
  assert best_epoch.restored_state(str(tmp_path), 0)['best_epoch'] is None
  with pytest.raises(checkpoints.CheckpointError, match='no record of it'):
    best_epoch.restored_state(str(tmp_path), 1)


@pytest.mark.parametrize('overrides, match', [
    ({'export_best': 'accuracy'}, 'export_best: unknown metric'),
    ({'export_best': 'val_loss', 'validation_fraction': 0.0},
     'export_best: needs a validation split'),
    ({'early_stopping_patience': -1}, 'must not be negative'),
    ({'min_delta': -0.1}, 'min_delta: must not be negative')])
def test_bad_best_epoch_flags_are_refused(tmp_path, overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.build(overrides=dict(job_dir=str(tmp_path), **overrides))
