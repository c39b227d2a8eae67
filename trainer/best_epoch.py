"""The best epoch and early stopping, as part of the resume state.

`--export_best=val_accuracy|val_loss` keeps the weights of the best epoch
(highest accuracy, lowest loss) and train.py exports them instead of the last
epoch's; `--early_stopping_patience=N` stops once N epochs in a row did not
improve the monitored metric (`--export_best`'s, else val_loss) by more than
`--min_delta`.

keras.callbacks.EarlyStopping makes the same comparisons, but its state (the
best value, its epoch, the patience counter and restore_best_weights'
weights) lives in memory, and BackupAndRestore does not save it: a preempted
run would forget it and choose its best epoch among the epochs after the
restart only. Here the state is written after every epoch, into the
checkpoint folder beside the backup:

  best/state.json             {"epoch": epochs seen, "best_epoch",
                              "best_value", "wait", "stopped", "weights",
                              "previous": the state one epoch earlier};
                              replaced atomically (storage.write_json)
  best/epoch-NNNN.weights.h5  the best epoch's weights (a new file for each
                              new best; the current and previous states'
                              files are kept)

`callbacks.for_phase` puts this callback before the backup, so the state is
written before the backup's record and is at most one epoch ahead of it: a
run restored at epoch R takes the state recorded for epoch R, the current
one or its `previous`. A state that says the run stopped makes train.py fit
no further epochs.
"""

import os

from absl import logging
import keras

from trainer import checkpoints
from trainer import config as config_lib
from trainer import registry
from trainer import storage

BEST_DIR = 'best'
STATE_FILE = 'state.json'
# The metric early stopping watches without --export_best (as Keras' own).
DEFAULT_MONITOR = 'val_loss'


def monitored_metric(config):
  """The metric --export_best and --early_stopping_patience watch."""
  return config.export_best or DEFAULT_MONITOR


def is_enabled(config):
  return bool(config.export_best or config.early_stopping_patience)


def initial_state():
  """The state before any epoch: nothing seen, nothing best."""
  return {'epoch': 0, 'best_epoch': None, 'best_value': None, 'wait': 0,
          'stopped': False, 'weights': None, 'previous': None}


def restored_state(checkpoint_dir, epoch):
  """The state recorded after `epoch` epochs in a local checkpoint folder.

  Args:
    checkpoint_dir: the folder the run restores from.
    epoch: the epoch the backup restores (0: none).

  Returns:
    The state dict; the initial state when `epoch` is 0.

  Raises:
    checkpoints.CheckpointError: if the folder's state does not reach back
      to `epoch` (it was written by another run, or deleted).
  """
  if not epoch:
    return initial_state()
  path = os.path.join(checkpoint_dir, BEST_DIR, STATE_FILE)
  state = storage.read_json(path) if os.path.exists(path) else None
  while state is not None and state['epoch'] > epoch:
    state = state.get('previous')
  if state is None or state['epoch'] != epoch:
    raise checkpoints.CheckpointError(
        f'Cannot resume from {checkpoint_dir}: the backup is of epoch '
        f'{epoch} but {BEST_DIR}/{STATE_FILE} (the best epoch and early '
        'stopping state) has no record of it. Pass --start_fresh to train '
        'from scratch.')
  return state


def improves(value, best, higher_is_better, min_delta):
  """Whether `value` beats `best` by more than min_delta (Keras' rule)."""
  if best is None:
    return True
  return (value - min_delta > best if higher_is_better
          else value + min_delta < best)


class BestEpoch(keras.callbacks.Callback):
  """Tracks the best epoch, keeps its weights, stops early; all resumable.

  Attributes:
    state: the current state dict (see the module docstring).
  """

  def __init__(self, restore_dir, save_dir, config, state):
    """Creates the callback.

    Args:
      restore_dir: the local folder the run restores from.
      save_dir: the local folder this process writes its state to.
      config: the run's Config (export_best, early_stopping_patience,
        min_delta).
      state: the restored state (`restored_state`).
    """
    super().__init__()
    self._restore_dir = os.path.join(restore_dir, BEST_DIR)
    self._save_dir = os.path.join(save_dir, BEST_DIR)
    self.metric = monitored_metric(config)
    self._higher = registry.MONITORED_METRICS[self.metric] == 'max'
    self._keep_weights = bool(config.export_best)
    self._patience = config.early_stopping_patience
    self._min_delta = config.min_delta
    self.state = state

  def on_epoch_end(self, epoch, logs=None):
    value = (logs or {}).get(self.metric)
    if value is None:
      raise config_lib.ConfigError(
          f'{self.metric} was not computed in epoch {epoch + 1}: '
          '--export_best and --early_stopping_patience need a validation '
          'split.')
    previous = {k: v for k, v in self.state.items() if k != 'previous'}
    state = dict(previous, epoch=epoch + 1, previous=previous)
    value = float(value)
    if improves(value, state['best_value'], self._higher, self._min_delta):
      state.update(best_epoch=epoch + 1, best_value=value, wait=0)
      if self._keep_weights:
        state['weights'] = self._save_best(epoch + 1)
    else:
      state['wait'] += 1
    if self._patience and state['wait'] >= self._patience:
      state['stopped'] = True
      logging.info('Early stopping after epoch %d: %s has not improved by '
                   'more than %g for %d epochs (best %.4f at epoch %d).',
                   epoch + 1, self.metric, self._min_delta, state['wait'],
                   state['best_value'], state['best_epoch'])
    # The commit point of the state; then files no state names can go.
    os.makedirs(self._save_dir, exist_ok=True)
    checkpoints.write_json(os.path.join(self._save_dir, STATE_FILE), state,
                           'the best-epoch state')
    self.state = state
    self._remove_unnamed_weights()
    if state['stopped']:
      self.model.stop_training = True

  def _save_best(self, epoch):
    os.makedirs(self._save_dir, exist_ok=True)
    storage.check_free_space(
        self._save_dir, checkpoints.state_bytes(self.model) +
        checkpoints.SPACE_MARGIN_BYTES, 'the best epoch\'s weights')
    name = f'epoch-{epoch:04d}.weights.h5'
    checkpoints.save_weights(self.model, os.path.join(self._save_dir, name),
                             'the best epoch\'s weights')
    return name

  def _remove_unnamed_weights(self):
    keep = {self.state['weights'], (self.state['previous'] or {}).get(
        'weights')}
    for name in os.listdir(self._save_dir):
      if name.endswith('.weights.h5') and name not in keep:
        os.remove(os.path.join(self._save_dir, name))

  def best_weights_path(self):
    """The local file of the best epoch's weights (None if none is kept)."""
    name = self.state['weights']
    if not name:
      return None
    for folder in (self._save_dir, self._restore_dir):
      if os.path.exists(os.path.join(folder, name)):
        return os.path.join(folder, name)
    raise checkpoints.CheckpointError(
        f'The best epoch\'s weights {name} are missing from '
        f'{self._restore_dir}. Pass --start_fresh to train from scratch.')

  def summary(self):
    """What metrics.json reports of the best epoch and early stopping."""
    return {'monitor': self.metric,
            'best_epoch': self.state['best_epoch'],
            'best_value': self.state['best_value'],
            'stopped_epoch': (self.state['epoch'] if self.state['stopped']
                              else None),
            'exported_epoch': (self.state['best_epoch']
                               if self._keep_weights else None)}
