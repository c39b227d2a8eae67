"""The Keras callbacks of a training run, and the order they run in.

  StopOnNonFinite   a NaN or infinite loss stops the run (TrainingDiverged)
                    before anything of its epoch is saved
  EpochLog          one log line per epoch, and the resumable history
                    (checkpoints/history.json)
  BestEpoch         the best epoch's weights and early stopping, resumable
                    (best_epoch.py; with --export_best or
                    --early_stopping_patience)
  BackupAndRestore  the resume backup (checkpoints.py)
  PeriodicWeights   checkpoints/epoch-NNN.weights.h5, the newest three
  TensorBoard       Keras' own, into logs/
  PushAfterEpoch    mirrors gs:// folders (checkpoints.py)
  ReportMetric      the tuning metric to Vertex AI (hptuning.py; chief only)
  StopAtSafePoint   a SIGTERM stops the run at a safe point (preemption.py)

`for_phase` builds that list for one `fit`. `TrainingDiverged` is also what
the finite-weights check (publish.py) and the test evaluation (train.py)
raise: one error, one way out.
"""

import dataclasses
import math
import os
import time

from absl import logging
import keras
import numpy as np

from trainer import best_epoch
from trainer import checkpoints
from trainer import errors
from trainer import hptuning
from trainer import storage

HISTORY_FILE = 'history.json'
KEEP_CHECKPOINTS = 3


class TrainingDiverged(errors.UserError, ValueError):
  """The loss or the weights became NaN or infinite; nothing is published."""

  kind = 'diverged'


def diverged(what, learning_rate):
  """The TrainingDiverged error for `what`, with the way out."""
  return TrainingDiverged(
      f'Training diverged: {what} (learning rate {learning_rate:g}). Nothing '
      f'was exported. Rerun with a lower --learning_rate (e.g. '
      f'{learning_rate / 10:g}) and --start_fresh (or a new --job_dir).')


class EpochLog(keras.callbacks.Callback):
  """Logs one line per epoch and keeps a resumable per-epoch history.

  The history lives in the checkpoint folder, so a resumed run reports every
  epoch, not only those it ran itself. Each entry says which attempt (1 for
  the first process, 2 after the first restart, ...) trained it, and how fast
  it trained (images/s over the training steps, validation left out).

  Attributes:
    history: the entries of every epoch so far, restored ones included.
    first_step_seconds: seconds from `started_at` to this process's first
      training step (None before it): the start-up or resume latency.
  """

  def __init__(self, restore_path, save_path, epochs, images_per_epoch,
               started_at=None):
    super().__init__()
    self._restore_path = restore_path
    self._save_path = save_path
    self._epochs = epochs
    self._images = images_per_epoch
    self._started_at = started_at
    self.history = []
    self.first_step_seconds = None
    self._attempt = 1
    self._start = 0.0
    self._train_seconds = None

  def on_train_begin(self, logs=None):
    if os.path.exists(self._restore_path):
      self.history = storage.read_json(self._restore_path)
      self._attempt = 1 + max(
          (entry.get('attempt', 1) for entry in self.history), default=0)

  def on_epoch_begin(self, epoch, logs=None):
    # Entries of epochs the backup does not hold (written just before a
    # kill) are trained again.
    self.history = [entry for entry in self.history if entry['epoch'] <= epoch]
    self._start = time.perf_counter()
    self._train_seconds = None

  def on_train_batch_begin(self, batch, logs=None):
    if self.first_step_seconds is None and self._started_at is not None:
      self.first_step_seconds = round(time.time() - self._started_at, 3)
      logging.info('First training step %.1fs after start (epoch %d).',
                   self.first_step_seconds, len(self.history) + 1)

  def on_test_begin(self, logs=None):
    # Validation inside fit() starts: the epoch's training steps are done.
    if self._train_seconds is None:
      self._train_seconds = time.perf_counter() - self._start

  def on_epoch_end(self, epoch, logs=None):
    seconds = time.perf_counter() - self._start
    train_seconds = self._train_seconds or seconds
    entry = {'epoch': epoch + 1, 'attempt': self._attempt,
             'seconds': round(seconds, 3)}
    if self._images:
      entry['images_per_second'] = round(self._images / train_seconds, 1)
    entry.update({k: float(v) for k, v in (logs or {}).items()
                  if np.isscalar(v) and k != 'learning_rate'})
    optimizer = getattr(self.model, 'optimizer', None)
    if optimizer is not None:
      # The rate of the next step, as Keras' TensorBoard logs it: a
      # schedule's value at the global step the epoch ended at.
      entry['learning_rate'] = float(
          keras.ops.convert_to_numpy(optimizer.learning_rate))
    self.history.append(entry)
    checkpoints.write_json(self._save_path, self.history, 'the history')
    shown = ' - '.join(f'{k} {v:.4f}' for k, v in entry.items()
                       if k not in ('epoch', 'attempt', 'seconds',
                                    'images_per_second', 'learning_rate'))
    if 'learning_rate' in entry:
      shown += f' - learning_rate {entry["learning_rate"]:.3g}'
    speed = (f' - {entry["images_per_second"]:.0f} images/s'
             if 'images_per_second' in entry else '')
    logging.info('Epoch %d/%d - %.1fs%s - %s', epoch + 1, self._epochs,
                 seconds, speed, shown)


class PeriodicWeights(keras.callbacks.Callback):
  """Saves epoch-NNN.weights.h5 after every epoch; keeps the newest `keep`.

  keras.callbacks.ModelCheckpoint does the same save, but a failed write
  (a full disk) must become one clear error (checkpoints.save_weights); the
  free space for it was checked with the backup's.
  """

  def __init__(self, directory, keep):
    super().__init__()
    self._directory = directory
    self._keep = keep

  def on_epoch_end(self, epoch, logs=None):
    path = os.path.join(self._directory, f'epoch-{epoch + 1:03d}.weights.h5')
    checkpoints.save_weights(self.model, path, 'the periodic checkpoint')
    found = sorted(name for name in os.listdir(self._directory)
                   if name.startswith('epoch-') and name.endswith('.weights.h5'))
    for name in found[:-self._keep]:
      os.remove(os.path.join(self._directory, name))


class StopOnNonFinite(keras.callbacks.Callback):
  """Stops training once the loss (or any logged metric) is NaN or infinite.

  keras.callbacks.TerminateOnNaN(raise_error=True) raises a RuntimeError
  that says nothing a user can act on; this one raises TrainingDiverged
  naming the epoch, the batch and the way out. It is async-safe: Keras then
  runs its batch-end hook in a thread, so checking every batch does not
  make the training loop wait, and the error surfaces at the next batch or
  at the end of the epoch, before the epoch-end callbacks that save the
  weights (so put it first).
  """

  async_safe = True

  def __init__(self, learning_rate):
    super().__init__()
    self._learning_rate = learning_rate
    self._epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    loss = (logs or {}).get('loss')
    if loss is not None and not math.isfinite(float(loss)):
      raise diverged(f'the training loss became {float(loss)} at epoch '
                     f'{self._epoch + 1}, batch {batch + 1}',
                     self._learning_rate)

  def on_epoch_end(self, epoch, logs=None):
    bad = {key: float(value) for key, value in (logs or {}).items()
           if np.isscalar(value) and not math.isfinite(float(value))}
    if bad:
      shown = ', '.join(f'{key} {value}' for key, value in sorted(bad.items()))
      raise diverged(f'{shown} at the end of epoch {epoch + 1}',
                     self._learning_rate)


class StopAtSafePoint(keras.callbacks.Callback):
  """Raises preemption.Preempted at a safe point once a signal came in.

  Safe points: the start of a batch (training or validation), and the end of
  an epoch once its backup is written and pushed (so put it last). Batch-begin
  hooks leave Keras' asynchronous batch-end dispatch in place.
  """

  def __init__(self, stop_signal):
    super().__init__()
    self._stop = stop_signal

  def on_train_begin(self, logs=None):
    self._stop.check()

  def on_train_batch_begin(self, batch, logs=None):
    self._stop.check()

  def on_test_batch_begin(self, batch, logs=None):
    self._stop.check()

  def on_epoch_end(self, epoch, logs=None):
    self._stop.check()



@dataclasses.dataclass(frozen=True)
class Callbacks:
  """The callbacks of one fit, and the two whose results the run reports."""
  all: list
  epoch_log: EpochLog
  backup: checkpoints.BackupAndRestore
  best: best_epoch.BestEpoch = None


def for_phase(context, phase, images_per_epoch, best_state=None):
  """The callbacks of one phase, in the order that matters.

  A non-finite loss stops the run before anything of its epoch is saved.
  The history is written before the backup's record (a kill between the two
  leaves an epoch in the history that the backup does not hold, which the
  next attempt drops and trains again), and both before the push. Every
  worker runs the same callbacks; `phase.dirs` points other workers' output
  at temporary folders.

  Args:
    context: the run_context.RunContext.
    phase: the run_context.Phase being fitted.
    images_per_epoch: training images per epoch (None: unknown), for the
      logged throughput.
    best_state: the restored best-epoch state (best_epoch.restored_state)
      when --export_best or --early_stopping_patience is set, else None.
      Its callback runs before the backup: its state is written first.

  Returns:
    A Callbacks.
  """
  dirs = phase.dirs
  epoch_log = EpochLog(os.path.join(dirs.restore_dir, HISTORY_FILE),
                       os.path.join(dirs.checkpoint_dir, HISTORY_FILE),
                       phase.epochs, images_per_epoch, phase.started_at)
  backup = checkpoints.BackupAndRestore(dirs.restore_dir, dirs.checkpoint_dir,
                                        context.config)
  best = None
  if best_state is not None:
    best = best_epoch.BestEpoch(dirs.restore_dir, dirs.checkpoint_dir,
                                context.config, best_state)
  ordered = [
      StopOnNonFinite(phase.learning_rate),
      epoch_log,
      *([best] if best else []),
      backup,
      PeriodicWeights(dirs.checkpoint_dir, KEEP_CHECKPOINTS),
      keras.callbacks.TensorBoard(dirs.log_dir, profile_batch=0),
      checkpoints.PushAfterEpoch(dirs),
  ]
  metric = context.config.hypertune_metric
  if metric and dirs.is_chief:
    ordered.append(hptuning.ReportMetric(metric))
  ordered.append(StopAtSafePoint(context.stop_signal))
  return Callbacks(ordered, epoch_log, backup, best)
