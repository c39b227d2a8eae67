"""The callbacks of a run: the NaN guard, the epoch log, safe stops, order."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import callbacks
from trainer import checkpoints
from trainer import cluster
from trainer import config as config_lib
from trainer import hptuning
from trainer import job_dir as job_dir_lib
from trainer import preemption
from trainer import run_context


def test_non_finite_values_stop_training_before_anything_is_saved():
  check = callbacks.StopOnNonFinite(0.5)
  check.on_train_batch_end(0, {'loss': 2.0})
  with pytest.raises(callbacks.TrainingDiverged, match='epoch 1, batch 4'):
    check.on_train_batch_end(3, {'loss': float('inf')})
  with pytest.raises(callbacks.TrainingDiverged, match='val_loss nan at the '
                     'end of epoch 3'):
    check.on_epoch_end(2, {'loss': 1.0, 'val_loss': float('nan')})


def test_a_diverged_run_is_a_user_error_with_the_way_out():
  error = callbacks.diverged('the test loss is nan', 0.5)
  assert error.kind == 'diverged'
  assert '--learning_rate (e.g. 0.05)' in str(error)
  assert '--start_fresh' in str(error)


def _model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((4,))
  model = keras.Model(inputs, keras.layers.Dense(
      2, activation='softmax')(inputs))
  model.compile(optimizer='adam', loss='sparse_categorical_crossentropy')
  return model


def _fit(model, epochs, *more, initial_epoch=0):
  features = np.random.default_rng(0).random((16, 4), dtype=np.float32)
  model.fit(features, np.arange(16) % 2, epochs=epochs, batch_size=8,
            callbacks=list(more), verbose=0, initial_epoch=initial_epoch)


def test_the_epoch_log_keeps_a_resumable_history_with_attempts(tmp_path):
  path = str(tmp_path / callbacks.HISTORY_FILE)
  first = callbacks.EpochLog(path, path, epochs=3, images_per_epoch=16)
  _fit(_model(), 2, first)
  assert [(e['epoch'], e['attempt']) for e in first.history] == [(1, 1),
                                                                  (2, 1)]
  assert all(e['images_per_second'] > 0 for e in first.history)
  # The next process resumes at epoch 2 (its backup holds epoch 1 only):
  # the entry of epoch 2 is trained again, by attempt 2.
  again = callbacks.EpochLog(path, path, epochs=3, images_per_epoch=16)
  _fit(_model(), 3, again, initial_epoch=1)
  assert [(e['epoch'], e['attempt']) for e in again.history] == [
      (1, 1), (2, 2), (3, 2)]


def test_periodic_weights_keep_the_newest_three(tmp_path):
  _fit(_model(), 5, callbacks.PeriodicWeights(str(tmp_path),
                                              callbacks.KEEP_CHECKPOINTS))
  assert sorted(os.listdir(tmp_path)) == [
      f'epoch-{epoch:03d}.weights.h5' for epoch in (3, 4, 5)]


def test_a_signal_stops_training_at_the_next_safe_point():
  stop = preemption.StopSignal()
  seen = []
  probe = keras.callbacks.LambdaCallback(
      on_train_batch_begin=lambda batch, logs: seen.append(batch))
  stop.received = 'SIGTERM'
  with pytest.raises(preemption.Preempted, match='SIGTERM'):
    _fit(_model(), 2, callbacks.StopAtSafePoint(stop), probe)
  assert not seen  # Not a single batch trained.


def _context(tmp_path, **overrides):
  config = config_lib.build(overrides=dict(
      {'job_dir': str(tmp_path / 'job'), 'model': 'softmax'}, **overrides))
  return run_context.RunContext(
      config=config, strategy=tf.distribute.get_strategy(),
      layout=job_dir_lib.Layout.from_config(config))


@pytest.fixture
def phase_of(tmp_path):
  """phase_of(task): a Phase in work dirs of `task`, closed after the test."""
  opened = []

  def make(task=cluster.TaskInfo()):
    folder = tmp_path / task.name.replace('/', '')
    opened.append(checkpoints.WorkDirs(str(folder / 'ckpt'),
                                       str(folder / 'logs'), task))
    return run_context.Phase(epochs=2, learning_rate=0.01, dirs=opened[-1])

  yield make
  for dirs in opened:
    dirs.close()


def test_the_callbacks_run_in_the_order_that_keeps_backups_consistent(
    tmp_path, phase_of):
  built = callbacks.for_phase(_context(tmp_path), phase_of(), 100)
  kinds = [type(callback) for callback in built.all]
  assert kinds == [callbacks.StopOnNonFinite, callbacks.EpochLog,
                   checkpoints.BackupAndRestore, callbacks.PeriodicWeights,
                   keras.callbacks.TensorBoard, checkpoints.PushAfterEpoch,
                   callbacks.StopAtSafePoint]
  assert built.epoch_log is built.all[1] and built.backup is built.all[2]


def test_only_the_chief_reports_the_tuning_metric(tmp_path, monkeypatch,
                                                  phase_of):
  monkeypatch.setenv('CLOUD_ML_HP_METRIC_FILE', str(tmp_path / 'metrics'))
  context = _context(tmp_path, hypertune_metric='val_accuracy')
  chief = callbacks.for_phase(context, phase_of(), None)
  assert isinstance(chief.all[-2], hptuning.ReportMetric)
  assert isinstance(chief.all[-1], callbacks.StopAtSafePoint)
  worker = callbacks.for_phase(
      context, phase_of(cluster.TaskInfo('worker', 1, num_tasks=2)), None)
  assert not any(isinstance(c, hptuning.ReportMetric) for c in worker.all)
