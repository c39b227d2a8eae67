"""Training, evaluation, checkpointing and export of one run.

`run(config, strategy, task)` is the whole job: check the job dir, load the
data, build and compile the model under the strategy's scope, fit with
resume-safe checkpoints, evaluate on the test split, export the artifact and
write metrics.json (last: its presence with a complete export means the run
finished).

Job dir layout (Contract 1):
  JOB_DIR/config.yaml    the resolved configuration
  JOB_DIR/checkpoints/   backup/ (BackupAndRestore), epoch-NNN.weights.h5,
                         history.json
  JOB_DIR/logs/          TensorBoard event files
  JOB_DIR/export/        the model artifact (Contract 2)
  JOB_DIR/metrics.json   test metrics, per-epoch history, throughput

Resume state, its folders and their gs:// mirrors are in checkpoints.py; the
strategy, the input under it and the Keras multi-worker fixes in
distribute.py; stopping on SIGTERM in preemption.py; transfer learning's base
model, new head and fine-tuning phase in transfer.py. In a multi-worker job
every worker runs this same code; only the chief writes into the job dir.
"""

import dataclasses
import math
import os
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from trainer import checkpoints
from trainer import cluster
from trainer import config as config_lib
from trainer import curves
from trainer import distribute
from trainer import export
from trainer import hptuning
from trainer import models
from trainer import precision
from trainer import preemption
from trainer import storage
from trainer import transfer
from trainer.data import checks
from trainer.data import sources

METRICS_FILE = 'metrics.json'
# The held-out figures an export's metadata.json repeats.
_METADATA_METRICS = ('test_accuracy', 'test_loss', 'evaluated_on',
                     'val_accuracy', 'val_loss')
CONFIG_FILE = 'config.yaml'
HISTORY_FILE = 'history.json'
KEEP_CHECKPOINTS = 3
# Transfer learning's second phase keeps its own resume state, history and
# TensorBoard logs in this sub-folder of checkpoints/ and logs/.
FINE_TUNE_DIR = 'fine_tune'

CheckpointError = checkpoints.CheckpointError


class TrainingDiverged(ValueError):
  """The loss or the weights became NaN or infinite; nothing is published."""


def _diverged(what, learning_rate):
  return TrainingDiverged(
      f'Training diverged: {what} (learning rate {learning_rate:g}). Nothing '
      f'was exported. Rerun with a lower --learning_rate (e.g. '
      f'{learning_rate / 10:g}) and --start_fresh (or a new --job_dir).')


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a run writes each of its outputs."""
  job_dir: str
  checkpoint_dir: str
  log_dir: str
  export_dir: str

  @classmethod
  def from_config(cls, config):
    job_dir = storage.normalize(config.job_dir)
    return cls(
        job_dir=job_dir,
        checkpoint_dir=storage.normalize(
            config.checkpoint_dir or storage.join(job_dir, 'checkpoints')),
        log_dir=storage.normalize(
            config.tensorboard_dir or storage.join(job_dir, 'logs')),
        export_dir=storage.normalize(
            config.export_dir or storage.join(job_dir, 'export')))

  @property
  def metrics_path(self):
    return storage.join(self.job_dir, METRICS_FILE)

  @property
  def config_path(self):
    return storage.join(self.job_dir, CONFIG_FILE)


# --------------------------------------------------------------------------
# Callbacks.


class _EpochLog(keras.callbacks.Callback):
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
    self.history.append(entry)
    checkpoints.write_json(self._save_path, self.history, 'the history')
    shown = ' - '.join(f'{k} {v:.4f}' for k, v in entry.items()
                       if k not in ('epoch', 'attempt', 'seconds',
                                    'images_per_second'))
    speed = (f' - {entry["images_per_second"]:.0f} images/s'
             if 'images_per_second' in entry else '')
    logging.info('Epoch %d/%d - %.1fs%s - %s', epoch + 1, self._epochs,
                 seconds, speed, shown)


class _PeriodicWeights(keras.callbacks.Callback):
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


class _StopOnNonFinite(keras.callbacks.Callback):
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
      raise _diverged(f'the training loss became {float(loss)} at epoch '
                      f'{self._epoch + 1}, batch {batch + 1}',
                      self._learning_rate)

  def on_epoch_end(self, epoch, logs=None):
    bad = {key: float(value) for key, value in (logs or {}).items()
           if np.isscalar(value) and not math.isfinite(float(value))}
    if bad:
      shown = ', '.join(f'{key} {value}' for key, value in sorted(bad.items()))
      raise _diverged(f'{shown} at the end of epoch {epoch + 1}',
                      self._learning_rate)


class _StopAtSafePoint(keras.callbacks.Callback):
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


def _callbacks(config, dirs, images_per_epoch, stop_signal, started_at,
               learning_rate=None):
  """The callback list, in the order that matters: check, log, save, stop.

  A non-finite loss stops the run before anything of its epoch is saved.

  The history is written before the backup's record (a kill between the two
  leaves an epoch in the history that the backup does not hold, which the
  next attempt drops and trains again), and both before the push. Every
  worker runs the same callbacks; `dirs` points other workers' output at
  temporary folders.
  """
  callbacks = [
      _StopOnNonFinite(learning_rate or config.learning_rate),
      _EpochLog(os.path.join(dirs.restore_dir, HISTORY_FILE),
                os.path.join(dirs.checkpoint_dir, HISTORY_FILE),
                config.epochs, images_per_epoch, started_at),
      checkpoints.BackupAndRestore(dirs.restore_dir, dirs.checkpoint_dir,
                                   config),
      _PeriodicWeights(dirs.checkpoint_dir, KEEP_CHECKPOINTS),
      keras.callbacks.TensorBoard(dirs.log_dir, profile_batch=0),
      checkpoints.PushAfterEpoch(dirs),
  ]
  if config.hypertune_metric and dirs.is_chief:
    callbacks.append(hptuning.ReportMetric(config.hypertune_metric))
  return callbacks + [_StopAtSafePoint(stop_signal)]


# --------------------------------------------------------------------------
# The run.


def check_previous_run(layout, config):
  """Looks at what an earlier run with this job dir left behind.

  Returns:
    'finished', 'resumable' or 'new'.

  Raises:
    config_lib.ConfigError: if earlier outputs come from a configuration
      that trains something else.
  """
  finished = storage.exists(layout.metrics_path) and export.is_complete(
      layout.export_dir)
  has_checkpoint = storage.exists(
      storage.join(layout.checkpoint_dir, checkpoints.STATE_PATH))
  if not (finished or has_checkpoint):
    return 'new'
  if storage.exists(layout.config_path):
    import yaml  # pylint: disable=g-import-not-at-top
    previous = yaml.safe_load(storage.read_text(layout.config_path)) or {}
    changed = config_lib.training_differences(config, previous)
    if changed:
      details = ', '.join(f'{k}: {previous[k]!r} -> {getattr(config, k)!r}'
                          for k in changed)
      raise config_lib.ConfigError(
          f'job_dir: {layout.job_dir} holds a '
          f'{"finished run" if finished else "checkpoint"} of a different '
          f'configuration ({details}). Use a new --job_dir, or pass '
          '--start_fresh to discard it.')
  return 'finished' if finished else 'resumable'


def discard_previous_run(layout):
  """Deletes checkpoints, logs, export and metrics of an earlier run."""
  logging.info('--start_fresh: deleting earlier outputs in %s.', layout.job_dir)
  for directory in (layout.checkpoint_dir, layout.log_dir, layout.export_dir):
    storage.delete_tree(directory)
  storage.delete(layout.metrics_path)


def build_and_compile(config, info, strategy, base=None):
  """Builds the model and optimizer under the strategy's scope.

  With a transfer `base` (transfer.prepare), the model is the base's frozen
  feature extractor under a new head.
  """
  policy = precision.resolve(config.mixed_precision)
  with strategy.scope(), precision.policy_scope(policy):
    keras.utils.set_random_seed(config.seed)
    if base is None:
      model = models.build_model(config.model, config.image_shape,
                                 info.num_classes)
    else:
      model = transfer.build_model(base, info.num_classes)
    compile_model(model, config, config.learning_rate)
  if policy != 'float32':
    logging.info('Mixed precision: %s (--mixed_precision=%s).', policy,
                 config.mixed_precision)
  return model


def compile_model(model, config, learning_rate):
  """(Re)compiles; needed again after changing which layers are trainable."""
  model.compile(
      optimizer=keras.optimizers.Adam(learning_rate),
      loss='sparse_categorical_crossentropy',
      metrics=['accuracy'],
      jit_compile=config.jit_compile)


def _images_per_epoch(config, info):
  if config.steps_per_epoch:
    return config.steps_per_epoch * config.batch_size
  return info.sizes.get('train')


def _input(strategy, source, config, split, training, seed=None):
  """One split's input pipeline, distributed as `strategy` needs it."""

  def make(batch_size, shard):
    dataset = sources.make_dataset(
        source, split, batch_size, config.image_shape, training=training,
        seed=config.seed if seed is None else seed,
        shuffle_buffer=config.shuffle_buffer,
        cache=config.cache if split != 'test' else 'none',
        augment=config.augment and training, shard=shard)
    if training and config.steps_per_epoch:
      dataset = dataset.repeat()
    return dataset

  return distribute.distribute_dataset(strategy, make, config.batch_size)


def fit(model, config, source, strategy, dirs, stop_signal, started_at=None,
        learning_rate=None):
  """Runs model.fit with resume-safe callbacks.

  Returns:
    (per-epoch history including restored epochs, the epoch training resumed
    from (0: from scratch), seconds from `started_at` to the first training
    step or None).

  Raises:
    TrainingDiverged: when the loss becomes NaN or infinite.
  """
  info = source.info
  # A resumed run must not replay the first epochs' shuffle order (and
  # augmentation): its pipeline is seeded by the epoch it resumes at.
  resume_at = checkpoints.saved_epoch(dirs.restore_dir)
  train_data = _input(strategy, source, config, 'train', True,
                      seed=config.seed + resume_at)
  validation_data = _input(strategy, source, config, 'validation', False) if (
      info.sizes.get('validation') != 0) else None
  callbacks = _callbacks(config, dirs, _images_per_epoch(config, info),
                         stop_signal, started_at, learning_rate)
  epoch_log, backup = callbacks[1], callbacks[2]
  try:
    with distribute.unknown_length_input():
      model.fit(
          train_data, validation_data=validation_data, epochs=config.epochs,
          steps_per_epoch=config.steps_per_epoch or None, callbacks=callbacks,
          shuffle=False,  # The tf.data pipeline shuffles.
          verbose=0)
  except (tf.errors.NotFoundError, tf.errors.PermissionDeniedError) as e:
    # Every file was read before training (data.py): it changed since.
    raise sources.DataError(
        f'A file of the dataset became unreadable during training: '
        f'{checks.short_message(e)}. Restore it (or remove it and rerun '
        'with --start_fresh); the backup of the last finished epoch is '
        'kept.') from None
  return (epoch_log.history, backup.restored_epoch,
          epoch_log.first_step_seconds)


def _summarise_throughput(history):
  """Median training images/s over epochs, leaving out warm-up epochs.

  The first epoch of each attempt (process) includes tracing and start-up.
  """
  rates, warm = [], []
  previous_attempt = object()  # Matches no attempt: the first is warm-up.
  for entry in history:
    if 'images_per_second' in entry:
      rates.append(entry['images_per_second'])
      if entry.get('attempt') == previous_attempt:
        warm.append(entry['images_per_second'])
    previous_attempt = entry.get('attempt')
  rates = warm or rates
  return round(float(np.median(rates)), 1) if rates else None


def run(config, strategy, task=cluster.TaskInfo(), *, stop_signal=None,
        started_at=None, lease=None):
  """Trains, evaluates and exports as `config` says.

  Args:
    config: a validated Config.
    strategy: the tf.distribute strategy (created first, in task.py).
    task: which task of a cluster this process is (the chief writes).
    stop_signal: a preemption.StopSignal whose handlers the binary
      installed; training stops at a safe point once it records a signal.
    started_at: time.time() when the process started, to report how long
      it took to reach the first training step.
    lease: the chief's lease.Lease on the job dir (task.py), checked before
      anything is published; None elsewhere.

  Returns:
    The metrics dict written to metrics.json.

  Raises:
    preemption.Preempted: when stopped by a signal; rerun to resume.
    checkpoints.CheckpointError: if the checkpoint cannot be resumed.
    TrainingDiverged: if the loss or the weights became non-finite.
    storage.WriteError: if a checkpoint or the export cannot be written.
    lease.LeaseError: if another run took the job dir over.
  """
  stop_signal = stop_signal or preemption.StopSignal()
  base = None
  if config.transfer:  # Transfer learning: the base fixes the input shape.
    with strategy.scope():
      config, base = transfer.prepare(config)
  layout = Layout.from_config(config)
  if config.start_fresh and task.is_chief:
    discard_previous_run(layout)
  # With --start_fresh, other workers ignore what the chief is deleting.
  state = 'new' if config.start_fresh else check_previous_run(layout, config)
  if state == 'finished':
    logging.info('%s already holds a finished run (metrics.json and a '
                 'complete export): nothing to do. Pass --start_fresh to '
                 'train again.', layout.job_dir)
    distribute.wait_for_all_workers(strategy)
    return storage.read_json(layout.metrics_path)
  source = sources.load_source(config)
  logging.info('Dataset %s: %d classes, split sizes %s, input shape %s.',
               source.info.name, source.info.num_classes, source.info.sizes,
               config.image_shape)
  _check_hypertune_metric(config, source.info)
  if task.is_chief:
    config_lib.save(config, layout.config_path)
  if state == 'resumable':
    logging.info('Resuming from the checkpoint in %s.', layout.checkpoint_dir)
  model = build_and_compile(config, source.info, strategy, base)
  distribute.prepare_model(model, strategy)
  logging.info('Model %s: %d parameters.', model.name, model.count_params())
  dirs = checkpoints.WorkDirs(layout.checkpoint_dir, layout.log_dir, task,
                              restore=not config.start_fresh)
  try:
    return _train_evaluate_export(config, layout, source, model, strategy,
                                  task, dirs, stop_signal, started_at, base,
                                  lease)
  except preemption.Preempted:
    try:
      dirs.push()  # Idempotent; the local backup is always consistent.
    except Exception:  # pylint: disable=broad-except
      logging.exception('Could not push the backup on the way out.')
    raise
  finally:
    dirs.close()


def _check_hypertune_metric(config, info):
  if config.hypertune_metric.startswith('val_') and not info.sizes.get(
      'validation'):
    raise config_lib.ConfigError(
        f'hypertune_metric: {config.hypertune_metric} needs a validation '
        f'split, and the {info.name} dataset in {config.data_dir} has none.')


def _train_evaluate_export(config, layout, source, model, strategy, task,
                           dirs, stop_signal, started_at, base=None,
                           lease=None):
  start = time.perf_counter()
  history, first_epoch, first_step_seconds = fit(
      model, config, source, strategy, dirs, stop_signal, started_at)
  if base is not None:  # Transfer learning: the optional second phase.
    history = transfer.combine_histories(
        history, _fine_tune(model, config, source, strategy, dirs,
                            stop_signal), config.epochs)
  train_seconds = time.perf_counter() - start
  check_finite_weights(model, config.learning_rate)
  last = history[-1] if history else {}
  metrics = _evaluate(model, config, source, strategy, stop_signal, last)
  metrics.update({
      'epochs': config.epochs,
      'resumed_from_epoch': first_epoch,
      'first_step_seconds': first_step_seconds,
      'dataset': config.dataset,
      'model': model.name,
      'examples': source.info.sizes,
      'data': source.info.report,
      'replicas': strategy.num_replicas_in_sync,
      'mixed_precision': model.dtype_policy.name,
      'workers': task.num_tasks,
      'train_seconds': round(train_seconds, 2),
      'train_images_per_second': _summarise_throughput(history),
      'history': history,
  })
  for key in ('val_accuracy', 'val_loss', 'accuracy', 'loss'):
    if key in last:
      metrics[key] = last[key]
  stop_signal.check()
  _export(model, config, source, layout, dirs, task, metrics, base, lease)
  distribute.wait_for_all_workers(strategy)
  return metrics


def check_finite_weights(model, learning_rate):
  """Raises TrainingDiverged if any weight of `model` is NaN or infinite."""
  bad = [variable.path for variable in model.weights
         if not np.all(np.isfinite(np.asarray(variable.numpy())))]
  if bad:
    raise _diverged(f'{len(bad)} weight tensor(s) hold NaN or infinite '
                    f'values after training ({", ".join(bad[:3])})',
                    learning_rate)


def _fine_tune(model, config, source, strategy, dirs, stop_signal):
  """Transfer learning, phase 2: unfreezes the top base layers, trains on.

  Resumable on its own: its resume state, history and logs live in
  FINE_TUNE_DIR sub-folders (a restarted job re-runs phase 1 as zero epochs
  from its finished backup, then resumes here).

  Returns:
    The per-epoch history of this phase ([] without --fine_tune_layers).
  """
  if not config.fine_tune_layers:
    return []
  with strategy.scope():
    names = transfer.unfreeze_top_layers(model, config.fine_tune_layers)
    compile_model(model, config, config.fine_tune_rate)
  logging.info('Fine-tuning %s at learning rate %g.', ', '.join(names),
               config.fine_tune_rate)
  phase = dataclasses.replace(
      config, epochs=config.fine_tune_epochs or config.epochs)
  history, _, _ = fit(model, phase, source, strategy,
                      dirs.phase(FINE_TUNE_DIR), stop_signal,
                      learning_rate=config.fine_tune_rate)
  return history


def _evaluate(model, config, source, strategy, stop_signal, last_epoch):
  """Test accuracy and loss, over all workers' shards of the test split.

  Without a test split (--test_fraction=0, or shards without test records)
  the held-out figures are the validation split's, from the last epoch
  (computed with the final weights); `evaluated_on` says which split, and
  the test figures are null. Without either, there are no held-out figures.
  """
  sizes = source.info.sizes
  if sizes.get('test') == 0:
    evaluated_on = 'validation' if sizes.get('validation') else None
    if evaluated_on:
      logging.warning(
          'No test split (--test_fraction=%g): the held-out figures are the '
          'validation split\'s: accuracy %.4f, loss %.4f (metrics.json: '
          'evaluated_on "validation", test_accuracy null).',
          config.test_fraction, last_epoch.get('val_accuracy', math.nan),
          last_epoch.get('val_loss', math.nan))
    else:
      logging.warning('No test or validation split: nothing measures how '
                      'the model does on images it did not train on '
                      '(metrics.json: evaluated_on null).')
    return {'test_accuracy': None, 'test_loss': None,
            'evaluated_on': evaluated_on}
  with distribute.unknown_length_input():
    test = model.evaluate(
        _input(strategy, source, config, 'test', False), return_dict=True,
        verbose=0, callbacks=[_StopAtSafePoint(stop_signal)])
  if not all(math.isfinite(float(test[key])) for key in ('accuracy', 'loss')):
    raise _diverged(f'the test loss is {float(test["loss"])}',
                    config.learning_rate)
  logging.info('Test accuracy %.4f, test loss %.4f.', test['accuracy'],
               test['loss'])
  return {'test_accuracy': float(test['accuracy']),
          'test_loss': float(test['loss']), 'evaluated_on': 'test'}


def _export(model, config, source, layout, dirs, task, metrics, base=None,
            lease=None):
  """The chief publishes the export, logs, chart and metrics.json, in order.

  metrics.json comes last: with a complete export it marks a finished run.
  The lease is checked first: a run whose job dir was taken over must not
  publish over the other run's outputs.
  """
  metadata = export.build_metadata(
      class_names=source.info.class_names, image_shape=config.image_shape,
      dataset=config.dataset, model_name=model.name,
      metrics={k: metrics[k] for k in _METADATA_METRICS if k in metrics},
      extra=(transfer.describe(base, model, config.dataset,
                               config.fine_tune_layers) if base else None))
  # A float32 artifact whatever the training precision: portable, and it
  # scores the same on any hardware.
  model = precision.as_float32(model)
  if task.is_chief:
    if lease is not None:
      lease.check()
    export.export_model(model, layout.export_dir, metadata)
    dirs.push()
    curves.write_chart(metrics['history'],
                       storage.join(layout.job_dir, curves.CHART_FILE),
                       f'{model.name} on {config.dataset}')
    checkpoints.write_json(layout.metrics_path, metrics, 'the metrics')
    logging.info('Wrote %s.', layout.metrics_path)
  else:
    # The same saving code as the chief's, in case saving needs every
    # worker's part in collective ops; the copy is thrown away.
    export.write_artifact_files(
        model, dirs.temporary_dir(task.name.replace('/', '') + '-export-'),
        metadata)
