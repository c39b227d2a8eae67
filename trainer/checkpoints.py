"""Resume state: the backup a preempted run restarts from, and its folders.

The checkpoint folder (JOB_DIR/checkpoints, or AIP_CHECKPOINT_DIR) holds:
  backup/training_metadata.json  the commit record, written last, atomically:
                                 {"epoch", "weights", "previous", "config",
                                 "random_state" (dropout seed states)}
  backup/epoch-NNNN.weights.h5   weights and optimizer state after an epoch;
                                 the newest two are kept
  history.json                   per-epoch history (callbacks.py)
  best/                          the best epoch and early stopping state
                                 (best_epoch.py), written before the record
  epoch-NNN.weights.h5           periodic weight checkpoints (callbacks.py)

Keras' own BackupAndRestore overwrites one weights file in place and then its
metadata, so a kill between the two writes, or during either, leaves a
backup that does not match its record or cannot be read. Here every epoch
writes a new weights file, and the record that names it is replaced
atomically afterwards: a killed run leaves the previous backup intact. Like
Keras', it restores the epoch, not the batch: an interrupted epoch is trained
again from its first batch. Random streams do not replay: the dropout seed
states are part of the backup, and train.fit offsets the shuffle seed by the
epoch it resumes at.

In a multi-worker job every worker restores from the shared folder (so all
resume at the same epoch), only the chief writes there, and the others save
into temporary folders that they remove: saving may need every worker's part
in collective operations, so all of them save.

TensorFlow writes to local folders. When the checkpoint or log folder lives
on gs://, the chief works on a local copy and pushes it after every epoch,
the record last; TensorFlow's own GCS client cannot reach an emulator, and a
local copy keeps the training loop independent of the network.

A full disk must end a run with one line naming the folder, not a crash:
h5py, under Keras' save_weights, leaves a file whose write failed open, and
the HDF5 library then segfaults when the interpreter exits. So before each
save the free space is checked against the bytes the save needs (estimated
from the weights and the optimizer state), and a save that fails anyway is
a storage.WriteError whose `hard_exit` tells task.py to exit without the
interpreter's final clean-up (after the run's own clean-up has run).
"""

import datetime
import errno
import os
import re
import shutil
import tempfile

from absl import logging
import keras
import numpy as np

from trainer import config as config_lib
from trainer import errors
from trainer import job_dir
from trainer import storage

_WEIGHTS_PATTERN = re.compile(r'^epoch-\d+\.weights\.h5$')


class CheckpointError(errors.UserError, RuntimeError):
  """A checkpoint cannot be resumed by this configuration."""

  kind = 'bad_checkpoint'


# Room for history.json, the resume record and TensorBoard's events.
SPACE_MARGIN_BYTES = 4 * 2**20


def _bytes(variables):
  return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
             for v in variables)


def state_bytes(model, with_optimizer=True):
  """Bytes of the model's variables (and its optimizer's): a save's size."""
  total = _bytes(model.weights)
  optimizer = getattr(model, 'optimizer', None)
  if with_optimizer and optimizer is not None:
    if optimizer.built:
      total += _bytes(optimizer.variables)
    else:  # Adam (train.compile_model): two slots per trainable variable.
      total += 2 * _bytes(model.trainable_weights)
  return total


def save_weights(model, path, what):
  """model.save_weights, with a failed save turned into a WriteError.

  The partial file is removed. errno ENOSPC/EDQUOT/EFBIG: the disk (or a
  quota, or a file size limit) is full.
  """
  try:
    model.save_weights(path, overwrite=True)
  except OSError as e:
    reason = storage.describe_os_error(e)
    full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    del e  # Drop the traceback (and h5py's open file) before cleaning up.
    try:
      os.remove(path)
    except OSError:
      pass
    raise storage.WriteError(
        f'Cannot write {what} {path}: {reason}.'
        + (' Free some space or point --job_dir (or --checkpoint_dir) at a '
           'larger disk, then rerun the same command to resume.' if full
           else ''), hard_exit=True) from None


def write_json(path, value, what):
  """storage.write_json, with a failure turned into a WriteError."""
  try:
    storage.write_json(path, value)
  except OSError as e:
    raise storage.WriteError(
        f'Cannot write {what} {path}: {storage.describe_os_error(e)}.'
    ) from None


def _way_out(folder):
  return (f'Use a new --job_dir (or --checkpoint_dir), or pass --start_fresh '
          f'to delete {folder} and train from scratch.')


# --------------------------------------------------------------------------
# Folders.


class WorkDirs:
  """The local folders one process of a run restores from and writes to.

  Attributes:
    restore_dir: holds the shared resume state: the job's checkpoint folder,
      or a local copy of it when that lives on gs://.
    checkpoint_dir: where this process writes checkpoints: `restore_dir` on
      the chief, a temporary folder on other workers.
    log_dir: where this process writes TensorBoard logs: the job's log
      folder (or a local copy) on the chief, a temporary folder elsewhere.
  """

  def __init__(self, checkpoint_home, log_home, task, restore=True):
    """Pulls the shared state and makes the folders.

    Args:
      checkpoint_home: the run's checkpoint folder, local or gs://.
      log_home: the run's TensorBoard folder, local or gs://.
      task: the cluster.TaskInfo of this process.
      restore: False to ignore any state in checkpoint_home.
    """
    self._checkpoint_home = checkpoint_home
    self._log_home = log_home
    self.is_chief = task.is_chief
    self._temporary = []
    label = task.name.replace('/', '')
    try:
      self.restore_dir = self._local_copy(
          checkpoint_home, f'{label}-restore-', pull=restore)
      if self.is_chief:
        self.checkpoint_dir = self.restore_dir
        self.log_dir = self._local_copy(log_home, f'{label}-logs-', pull=True)
      else:
        self.checkpoint_dir = self.temporary_dir(f'{label}-checkpoints-')
        self.log_dir = self.temporary_dir(f'{label}-logs-')
        logging.info('Task %s writes its checkpoints and logs to temporary '
                     'folders, removed at the end: %s, %s.', task.name,
                     self.checkpoint_dir, self.log_dir)
    except BaseException:
      self.close()
      raise
    if not restore and self.restore_dir != self.checkpoint_dir:
      self.restore_dir = self.checkpoint_dir  # Nothing to restore from.

  def _local_copy(self, home, prefix, pull):
    if not storage.is_gcs(home):
      if self.is_chief:  # Other workers only read it, if it exists.
        os.makedirs(home, exist_ok=True)
      return home
    local = self.temporary_dir(prefix)
    if pull:
      storage.download_tree(home, local)
    return local

  def temporary_dir(self, prefix):
    """A new local temporary folder, removed by `close`."""
    path = tempfile.mkdtemp(prefix=prefix)
    self._temporary.append(path)
    return path

  def phase(self, name):
    """The folders of a later training phase: `name` sub-folders of these.

    A phase (transfer learning's fine-tuning) keeps its own resume state,
    history and logs; pushing and closing stay with this object.
    """
    return _PhaseDirs(self, name)

  def push(self):
    """Chief only: mirrors local copies to gs://, resume records last."""
    if not self.is_chief:
      return
    if storage.is_gcs(self._checkpoint_home):
      records = tuple(
          os.path.relpath(os.path.join(root, job_dir.RESUME_RECORD_FILE),
                          self.checkpoint_dir).replace(os.sep, '/')
          for root, _, files in os.walk(self.checkpoint_dir)
          if job_dir.RESUME_RECORD_FILE in files)
      storage.sync_tree(self.checkpoint_dir, self._checkpoint_home,
                        last=records)
    if storage.is_gcs(self._log_home):
      storage.sync_tree(self.log_dir, self._log_home)

  def close(self):
    """Removes the temporary folders (local copies, other workers' output)."""
    for path in self._temporary:
      shutil.rmtree(path, ignore_errors=True)
    self._temporary = []


class _PhaseDirs:
  """WorkDirs of a later phase: sub-folders, the parent's push and clean-up."""

  def __init__(self, parent, name):
    self._parent = parent
    self.is_chief = parent.is_chief
    self.restore_dir = os.path.join(parent.restore_dir, name)
    self.checkpoint_dir = os.path.join(parent.checkpoint_dir, name)
    self.log_dir = os.path.join(parent.log_dir, name)
    os.makedirs(self.checkpoint_dir, exist_ok=True)

  def temporary_dir(self, prefix):
    return self._parent.temporary_dir(prefix)

  def push(self):
    self._parent.push()


class PushAfterEpoch(keras.callbacks.Callback):
  """Pushes the chief's local copies to gs:// after every epoch."""

  def __init__(self, dirs):
    super().__init__()
    self._dirs = dirs

  def on_epoch_end(self, epoch, logs=None):
    self._dirs.push()


# --------------------------------------------------------------------------
# The resume record.


def read_state(checkpoint_dir):
  """The resume record in a local checkpoint folder, or None if there is none.

  Raises:
    CheckpointError: if the record exists but cannot be read.
  """
  path = os.path.join(checkpoint_dir, job_dir.RESUME_RECORD)
  if not os.path.exists(path):
    return None
  try:
    state = storage.read_json(path)
    int(state['epoch'])
    str(state['weights'])
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(
        f'Cannot resume from {os.path.dirname(path)}: '
        f'{job_dir.RESUME_RECORD_FILE} is unreadable ({e!r}). '
        f'{_way_out(checkpoint_dir)}') from e
  return state


def saved_epoch(checkpoint_dir):
  """The number of epochs a local checkpoint folder has backed up (0: none)."""
  state = read_state(checkpoint_dir)
  return int(state['epoch']) if state else 0


def _seed_variables(model):
  return [v for v in model.variables if v.path.endswith('seed_generator_state')]


def _random_state(model):
  """The states of the model's seed generators (dropout masks), in order.

  Keras leaves them out of saved weights: restored without them, a resumed
  run would draw the same dropout masks as the first epochs of the run.
  (In order, not by name: Keras numbers the generators of each new model.)
  """
  return [np.asarray(v.numpy()).tolist() for v in _seed_variables(model)]


def _set_random_state(model, saved):
  variables = _seed_variables(model)
  if saved and len(saved) == len(variables):
    for variable, value in zip(variables, saved):
      variable.assign(np.asarray(value, variable.dtype))


class BackupAndRestore(keras.callbacks.Callback):
  """Backs up after every epoch; restores, checked, before training.

  Attributes:
    restored_epoch: epochs completed by the run restored from (0 if none).
  """

  def __init__(self, restore_dir, save_dir, config):
    """Creates the callback.

    Args:
      restore_dir: local checkpoint folder holding the state to resume.
      save_dir: local checkpoint folder to write backups to.
      config: the run's Config; backups record it, and a backup from a
        configuration that trains something else is refused.
    """
    super().__init__()
    self._restore_dir = restore_dir
    self._backup_dir = os.path.join(save_dir, job_dir.BACKUP_DIR)
    self._config = config
    self._state = None
    self.restored_epoch = 0

  def on_train_begin(self, logs=None):
    # A run that cannot save its first checkpoint stops before training.
    os.makedirs(self._backup_dir, exist_ok=True)
    storage.check_free_space(self._backup_dir,
                             2 * state_bytes(self.model) + SPACE_MARGIN_BYTES,
                             'a checkpoint')
    state = read_state(self._restore_dir)
    if state is None:
      return
    folder = os.path.join(self._restore_dir, job_dir.BACKUP_DIR)
    self._check_config(state, folder)
    with self.model.distribute_strategy.scope():
      if self.model.optimizer is not None and not self.model.optimizer.built:
        # The backup holds optimizer variables: they must exist to be loaded.
        self.model.optimizer.build(self.model.trainable_variables)
      self._state = self._load(state, folder)
    self.restored_epoch = int(self._state['epoch'])
    # How Keras' own BackupAndRestore makes fit() start at an epoch: a
    # private attribute of Keras 3.15 (setup.py pins the minor version).
    self.model._initial_epoch = self.restored_epoch  # pylint: disable=protected-access
    logging.info('Restored the backup of epoch %d from %s; training resumes '
                 'at epoch %d.', self.restored_epoch, folder,
                 self.restored_epoch + 1)

  def _check_config(self, state, folder):
    saved = state.get('config')
    if not isinstance(saved, dict):
      return  # Older record: the weights' shapes are still checked on load.
    changes = config_lib.describe_changes(self._config, saved)
    if changes:
      raise CheckpointError(
          f'Cannot resume from {folder}: it was written by a run with a '
          f'different configuration ({changes}). '
          f'{_way_out(self._restore_dir)}')

  def _load(self, state, folder):
    """Loads the newest readable backup; returns its record."""
    errors = []
    for candidate in (state, state.get('previous')):
      if not candidate:
        continue
      path = os.path.join(folder, candidate['weights'])
      try:
        self.model.load_weights(path)
        _set_random_state(self.model, candidate.get('random_state'))
      except Exception as e:  # pylint: disable=broad-except
        # h5py, Keras and TensorFlow raise many types for truncated files
        # and mismatched shapes; each is reported below.
        errors.append(f'{candidate["weights"]}: {type(e).__name__}: {e}')
        continue
      if errors:
        logging.warning('The newest backup in %s cannot be loaded (%s); '
                        'resuming from the one before it, of epoch %d.',
                        folder, errors[0], candidate['epoch'])
      return candidate
    raise CheckpointError(
        f'Cannot resume from the checkpoint in {folder}: '
        f'{"; ".join(errors)}. It was written by a different model or '
        f'configuration, or is corrupt. {_way_out(self._restore_dir)}')

  def on_epoch_end(self, epoch, logs=None):
    os.makedirs(self._backup_dir, exist_ok=True)
    # This save and the periodic weights (callbacks.py) come next: room for
    # both.
    storage.check_free_space(self._backup_dir,
                             2 * state_bytes(self.model) + SPACE_MARGIN_BYTES,
                             f'the checkpoint of epoch {epoch + 1}')
    name = f'epoch-{epoch + 1:04d}.weights.h5'
    path = os.path.join(self._backup_dir, name)
    save_weights(self.model, path, 'the resume backup')
    previous = None
    if self._state:
      previous = {key: self._state.get(key)
                  for key in ('epoch', 'weights', 'random_state')}
    self._state = {
        'epoch': epoch + 1, 'weights': name, 'previous': previous,
        'random_state': _random_state(self.model),
        'config': self._config.to_dict(),
        'saved': datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec='seconds'),
    }
    # The commit point: storage writes it to a temporary file, then renames.
    write_json(os.path.join(self._backup_dir, job_dir.RESUME_RECORD_FILE),
               self._state, 'the resume record')
    keep = {name, previous['weights'] if previous else None}
    for other in os.listdir(self._backup_dir):
      if _WEIGHTS_PATTERN.match(other) and other not in keep:
        os.remove(os.path.join(self._backup_dir, other))

  def on_train_end(self, logs=None):
    # A later fit() on the same model (a fine-tuning phase) starts afresh
    # (the same private Keras 3.15 attribute as in on_train_begin).
    self.model._initial_epoch = None  # pylint: disable=protected-access
