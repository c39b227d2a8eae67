"""The resume state: backups, their checks, their folders and their mirror."""

import json
import logging
import os

import keras
import numpy as np
import pytest

from trainer import checkpoints
from trainer import cluster
from trainer import config as config_lib
from trainer import storage


def _config(tmp_path, **overrides):
  return config_lib.build(overrides={'job_dir': str(tmp_path / 'job'),
                                     'model': 'softmax', **overrides})


def _model(units=3):
  keras.utils.set_random_seed(0)
  inputs = keras.Input((4,))
  model = keras.Model(inputs, keras.layers.Dense(units,
                                                 activation='softmax')(inputs))
  model.compile(optimizer='adam', loss='sparse_categorical_crossentropy')
  return model


def _fit(model, backup, epochs, *more_callbacks):
  rng = np.random.default_rng(0)
  features = rng.random((32, 4), dtype=np.float32)
  labels = rng.integers(0, 3, 32)
  history = model.fit(features, labels, epochs=epochs, batch_size=8,
                      callbacks=[backup, *more_callbacks], verbose=0)
  return history.epoch  # The epochs this fit() ran.


@pytest.fixture
def two_epochs(tmp_path):
  """A checkpoint folder with the backups of epochs 1 and 2; the weights."""
  folder = str(tmp_path / 'checkpoints')
  model = _model()
  _fit(model, checkpoints.BackupAndRestore(folder, folder, _config(tmp_path)),
       epochs=2)
  return folder, [w.numpy() for w in model.weights]


def _backup_file(folder, epoch):
  return os.path.join(folder, 'backup', f'epoch-{epoch:04d}.weights.h5')


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def test_a_new_fit_resumes_after_the_last_backed_up_epoch(two_epochs,
                                                          tmp_path):
  folder, weights = two_epochs
  state = checkpoints.read_state(folder)
  assert state['epoch'] == 2 and state['previous']['epoch'] == 1
  assert sorted(os.listdir(os.path.join(folder, 'backup'))) == [
      'epoch-0001.weights.h5', 'epoch-0002.weights.h5',
      'training_metadata.json']

  model = _model()
  restored = []
  probe = keras.callbacks.LambdaCallback(
      on_epoch_begin=lambda epoch, logs: restored.append(
          [w.numpy() for w in model.weights]))
  backup = checkpoints.BackupAndRestore(folder, folder, _config(tmp_path))
  rng = np.random.default_rng(0)
  history = model.fit(rng.random((32, 4), dtype=np.float32),
                      rng.integers(0, 3, 32), epochs=4, batch_size=8,
                      callbacks=[backup, probe], verbose=0)
  assert backup.restored_epoch == 2
  assert history.epoch == [2, 3]
  for loaded, saved in zip(restored[0], weights):
    np.testing.assert_array_equal(loaded, saved)
  # Only the newest two backups are kept.
  assert checkpoints.read_state(folder)['epoch'] == 4
  assert sorted(name for name in os.listdir(os.path.join(folder, 'backup'))
                if name.endswith('.h5')) == ['epoch-0003.weights.h5',
                                             'epoch-0004.weights.h5']


def test_a_corrupt_newest_backup_falls_back_to_the_one_before(two_epochs,
                                                              tmp_path,
                                                              caplog):
  folder, _ = two_epochs
  _truncate(_backup_file(folder, 2))
  backup = checkpoints.BackupAndRestore(folder, folder, _config(tmp_path))
  with caplog.at_level(logging.WARNING):
    assert _fit(_model(), backup, epochs=3) == [1, 2]
  assert backup.restored_epoch == 1
  assert 'epoch-0002.weights.h5' in caplog.text
  assert 'resuming from the one before it, of epoch 1' in caplog.text


def test_corrupt_backups_fail_naming_the_folder_and_the_way_out(two_epochs,
                                                                tmp_path):
  folder, _ = two_epochs
  _truncate(_backup_file(folder, 1))
  _truncate(_backup_file(folder, 2))
  backup = checkpoints.BackupAndRestore(folder, folder, _config(tmp_path))
  with pytest.raises(checkpoints.CheckpointError) as raised:
    _fit(_model(), backup, epochs=3)
  message = str(raised.value)
  assert f'Cannot resume from the checkpoint in {folder}/backup' in message
  assert 'epoch-0002.weights.h5' in message and 'epoch-0001.weights.h5' in (
      message)
  assert '--start_fresh' in message


def test_a_backup_of_another_configuration_is_refused(two_epochs, tmp_path):
  folder, _ = two_epochs
  backup = checkpoints.BackupAndRestore(
      folder, folder, _config(tmp_path, model='mlp', learning_rate=0.1))
  with pytest.raises(checkpoints.CheckpointError) as raised:
    _fit(_model(), backup, epochs=3)
  message = str(raised.value)
  assert "learning_rate: 0.001 -> 0.1, model: 'softmax' -> 'mlp'" in message
  assert '--start_fresh' in message


def test_a_backup_without_a_recorded_configuration_still_checks_shapes(
    two_epochs, tmp_path):
  folder, _ = two_epochs
  path = os.path.join(folder, 'backup', 'training_metadata.json')
  state = json.load(open(path))
  del state['config']
  json.dump(state, open(path, 'w'))
  backup = checkpoints.BackupAndRestore(folder, folder, _config(tmp_path))
  with pytest.raises(checkpoints.CheckpointError, match='--start_fresh'):
    _fit(_model(units=5), backup, epochs=3)  # Other output shape.


def test_an_unreadable_record_fails_clearly(two_epochs, tmp_path):
  folder, _ = two_epochs
  with open(os.path.join(folder, 'backup', 'training_metadata.json'),
            'w') as f:
    f.write('{"epoch": 2, "weig')
  backup = checkpoints.BackupAndRestore(folder, folder, _config(tmp_path))
  with pytest.raises(checkpoints.CheckpointError,
                     match='training_metadata.json is unreadable'):
    _fit(_model(), backup, epochs=3)


def test_weights_written_without_their_record_are_ignored(two_epochs,
                                                          tmp_path):
  # A kill between writing epoch 3's weights and its record: the record
  # still names epoch 2, which is what resumes.
  folder, _ = two_epochs
  with open(_backup_file(folder, 3), 'wb') as f:
    f.write(b'half a file')
  backup = checkpoints.BackupAndRestore(folder, folder, _config(tmp_path))
  assert _fit(_model(), backup, epochs=4) == [2, 3]
  assert backup.restored_epoch == 2


# --------------------------------------------------------------------------
# Folders of the chief and of other workers.


def test_other_workers_restore_from_the_shared_folder_and_write_elsewhere(
    two_epochs, tmp_path, monkeypatch):
  folder, _ = two_epochs
  monkeypatch.setenv('TMPDIR', str(tmp_path / 'tmp'))
  os.makedirs(tmp_path / 'tmp')
  monkeypatch.setattr('tempfile.tempdir', None)  # Re-read TMPDIR.
  worker = cluster.TaskInfo('worker', 1, num_tasks=2)
  dirs = checkpoints.WorkDirs(folder, str(tmp_path / 'logs'), worker)
  assert dirs.restore_dir == folder
  assert dirs.checkpoint_dir.startswith(str(tmp_path / 'tmp'))
  assert dirs.log_dir.startswith(str(tmp_path / 'tmp'))
  backup = checkpoints.BackupAndRestore(dirs.restore_dir, dirs.checkpoint_dir,
                                        _config(tmp_path))
  before = sorted(os.listdir(os.path.join(folder, 'backup')))
  assert _fit(_model(), backup, epochs=3) == [2]
  assert checkpoints.saved_epoch(dirs.checkpoint_dir) == 3
  assert sorted(os.listdir(os.path.join(folder, 'backup'))) == before
  dirs.close()
  assert os.listdir(tmp_path / 'tmp') == []
  assert not os.path.exists(tmp_path / 'logs')

  chief = checkpoints.WorkDirs(folder, str(tmp_path / 'logs'),
                               cluster.TaskInfo())
  assert chief.restore_dir == chief.checkpoint_dir == folder
  assert chief.log_dir == str(tmp_path / 'logs')
  chief.close()
  assert os.path.isdir(folder)


def test_the_chief_pushes_the_record_after_the_weights_it_names(
    gcs_server, tmp_path, monkeypatch):
  home = 'gs://test-bucket/run/checkpoints'
  dirs = checkpoints.WorkDirs(home, 'gs://test-bucket/run/logs',
                              cluster.TaskInfo())
  try:
    assert not dirs.checkpoint_dir.startswith('gs://')
    backup = checkpoints.BackupAndRestore(dirs.restore_dir,
                                          dirs.checkpoint_dir,
                                          _config(tmp_path))
    uploads = []
    real_write = storage.write_bytes
    monkeypatch.setattr(storage, 'write_bytes', lambda path, data: (
        uploads.append(path), real_write(path, data))[-1])
    model = _model()
    model.fit(np.zeros((8, 4), np.float32), np.zeros(8), epochs=2,
              callbacks=[backup, checkpoints.PushAfterEpoch(dirs)], verbose=0)
    record = f'{home}/backup/training_metadata.json'
    assert uploads[-1] == record and uploads.count(record) == 2
    assert uploads.index(f'{home}/backup/epoch-0002.weights.h5') < (
        len(uploads) - 1)
    assert storage.read_json(record)['epoch'] == 2
  finally:
    dirs.close()
  # A fresh process on another machine restores from the bucket.
  again = checkpoints.WorkDirs(home, 'gs://test-bucket/run/logs',
                               cluster.TaskInfo('worker', 1, num_tasks=2))
  try:
    assert checkpoints.saved_epoch(again.restore_dir) == 2
  finally:
    again.close()


def _dropout_model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((4,))
  hidden = keras.layers.Dropout(0.5)(keras.layers.Dense(8)(inputs))
  model = keras.Model(inputs,
                      keras.layers.Dense(3, activation='softmax')(hidden))
  model.compile(optimizer='adam', loss='sparse_categorical_crossentropy')
  return model


def _seed_states(model):
  return [v.numpy().tolist() for v in model.variables
          if 'seed_generator' in v.path]


class _SeedStatesAtFirstEpoch(keras.callbacks.Callback):

  def on_epoch_begin(self, epoch, logs=None):
    if not hasattr(self, 'states'):
      self.states = _seed_states(self.model)


def test_a_resumed_fit_continues_the_dropout_masks_instead_of_replaying(
    tmp_path):
  folder = str(tmp_path / 'checkpoints')
  config = _config(tmp_path)
  first = _dropout_model()
  initial = _seed_states(first)
  _fit(first, checkpoints.BackupAndRestore(folder, folder, config), 2)
  after_two_epochs = _seed_states(first)
  assert after_two_epochs != initial  # The masks drew from the stream.
  resumed = _dropout_model()
  # Same seed, same starting state: without the backup's random state the
  # resumed epochs would draw the first epochs' masks again.
  assert _seed_states(resumed) == initial
  probe = _SeedStatesAtFirstEpoch()
  assert _fit(resumed, checkpoints.BackupAndRestore(folder, folder, config),
              3, probe) == [2]
  assert probe.states == after_two_epochs
