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

Checkpoints and logs are written by TensorFlow to local folders; when their
home is on gs:// they are mirrored there after every epoch (TensorFlow's own
GCS client cannot reach an emulator, and a local working copy keeps the
training loop independent of the network).
"""

import dataclasses
import os
import shutil
import tempfile
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from trainer import cluster
from trainer import config as config_lib
from trainer import data
from trainer import export
from trainer import models
from trainer import storage
from trainer import transfer

METRICS_FILE = 'metrics.json'
CONFIG_FILE = 'config.yaml'
HISTORY_FILE = 'history.json'
BACKUP_DIR = 'backup'
# Transfer learning's second phase keeps its own resume state, history and
# TensorBoard logs in this sub-folder of checkpoints/ and logs/.
FINE_TUNE_DIR = 'fine_tune'
KEEP_CHECKPOINTS = 3


class CheckpointError(RuntimeError):
  """A checkpoint cannot be resumed by this configuration."""


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
# Local working copies of folders that may live on GCS.


class _Mirror:
  """A local folder standing in for `home`, which may be on GCS."""

  def __init__(self, home, name):
    self.home = home
    self.remote = storage.is_gcs(home)
    self.local = tempfile.mkdtemp(prefix=f'{name}-') if self.remote else home

  def pull(self):
    if self.remote:
      storage.download_tree(self.home, self.local)
    else:
      os.makedirs(self.local, exist_ok=True)

  def push(self):
    if self.remote:
      storage.sync_tree(self.local, self.home)

  def close(self):
    if self.remote:
      shutil.rmtree(self.local, ignore_errors=True)


class _PushMirrors(keras.callbacks.Callback):
  """Mirrors local checkpoint and log folders to GCS after every epoch."""

  def __init__(self, mirrors):
    super().__init__()
    self._mirrors = mirrors

  def on_epoch_end(self, epoch, logs=None):
    for mirror in self._mirrors:
      mirror.push()


# --------------------------------------------------------------------------
# Callbacks.


class _BackupAndRestore(keras.callbacks.BackupAndRestore):
  """BackupAndRestore whose restore errors name the folder and the way out."""

  def on_train_begin(self, logs=None):
    try:
      super().on_train_begin(logs)
    except (ValueError, OSError, KeyError) as e:
      raise CheckpointError(
          f'Cannot resume from the checkpoint in {self.backup_dir}: {e}. It '
          'was written by a different model or configuration, or is '
          'corrupt. Use a new --job_dir, or pass --start_fresh to delete it '
          'and train from scratch.') from e


class _EpochLog(keras.callbacks.Callback):
  """Logs one line per epoch and keeps a resumable per-epoch history.

  The history lives in the checkpoint folder, so a resumed run reports every
  epoch, not only those it ran itself.
  """

  def __init__(self, history_path, epochs, images_per_epoch):
    super().__init__()
    self._path = history_path
    self._epochs = epochs
    self._images = images_per_epoch
    self.history = []
    self._start = 0.0

  def on_train_begin(self, logs=None):
    if os.path.exists(self._path):
      first_epoch = getattr(self.model, '_initial_epoch', 0) or 0
      self.history = [entry for entry in storage.read_json(self._path)
                      if entry['epoch'] <= first_epoch]

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    seconds = time.perf_counter() - self._start
    entry = {'epoch': epoch + 1, 'seconds': round(seconds, 3)}
    if self._images:
      entry['images_per_second'] = round(self._images / seconds, 1)
    entry.update({k: float(v) for k, v in (logs or {}).items()
                  if np.isscalar(v) and k != 'learning_rate'})
    self.history.append(entry)
    storage.write_json(self._path, self.history)
    shown = ' - '.join(f'{k} {v:.4f}' for k, v in entry.items()
                       if k not in ('epoch', 'seconds', 'images_per_second'))
    speed = (f' - {entry["images_per_second"]:.0f} images/s'
             if 'images_per_second' in entry else '')
    logging.info('Epoch %d/%d - %.1fs%s - %s', epoch + 1, self._epochs,
                 seconds, speed, shown)


class _PruneCheckpoints(keras.callbacks.Callback):
  """Keeps only the newest periodic weight checkpoints."""

  def __init__(self, directory, keep):
    super().__init__()
    self._directory = directory
    self._keep = keep

  def on_epoch_end(self, epoch, logs=None):
    found = sorted(name for name in os.listdir(self._directory)
                   if name.startswith('epoch-') and name.endswith('.weights.h5'))
    for name in found[:-self._keep]:
      os.remove(os.path.join(self._directory, name))


def _callbacks(config, checkpoint_dir, log_dir, images_per_epoch, mirrors,
               is_chief):
  """The callback list, in the order that matters: back up, log, mirror."""
  callbacks = [
      _BackupAndRestore(os.path.join(checkpoint_dir, BACKUP_DIR),
                        double_checkpoint=True, delete_checkpoint=False),
      _EpochLog(os.path.join(checkpoint_dir, HISTORY_FILE), config.epochs,
                images_per_epoch),
  ]
  if is_chief:
    callbacks += [
        keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoint_dir, 'epoch-{epoch:03d}.weights.h5'),
            save_weights_only=True),
        _PruneCheckpoints(checkpoint_dir, KEEP_CHECKPOINTS),
        keras.callbacks.TensorBoard(log_dir, profile_batch=0),
    ]
  callbacks.append(_PushMirrors(mirrors))
  return callbacks


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
      storage.join(layout.checkpoint_dir, BACKUP_DIR))
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
  with strategy.scope():
    keras.utils.set_random_seed(config.seed)
    if base is None:
      model = models.build_model(config.model, config.image_shape,
                                 info.num_classes)
    else:
      model = transfer.build_model(base, info.num_classes)
    compile_model(model, config, config.learning_rate)
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


def fit(model, config, source, checkpoint_dir, log_dir, mirrors, is_chief):
  """Runs model.fit with resume-safe callbacks.

  Returns:
    (keras History, per-epoch history list including resumed epochs).
  """
  info = source.info
  make = lambda split, training: data.make_dataset(
      source, split, config.batch_size, config.image_shape, training=training,
      seed=config.seed, shuffle_buffer=config.shuffle_buffer,
      cache=config.cache, augment=config.augment and training)
  train_data = make('train', True)
  if config.steps_per_epoch:
    train_data = train_data.repeat()
  validation_data = make('validation', False) if info.sizes.get(
      'validation') != 0 else None
  callbacks = _callbacks(config, checkpoint_dir, log_dir,
                         _images_per_epoch(config, info), mirrors, is_chief)
  history = model.fit(
      train_data, validation_data=validation_data, epochs=config.epochs,
      steps_per_epoch=config.steps_per_epoch or None, callbacks=callbacks,
      shuffle=False,  # The tf.data pipeline shuffles.
      verbose=0)
  return history, callbacks[1].history


def _summarise_throughput(history):
  """Median training images/s over epochs, leaving out the first (warm-up)."""
  rates = [entry['images_per_second'] for entry in history
           if 'images_per_second' in entry]
  if len(rates) > 1:
    rates = rates[1:]
  return round(float(np.median(rates)), 1) if rates else None


def run(config, strategy, task=cluster.TaskInfo()):
  """Trains, evaluates and exports as `config` says.

  Args:
    config: a validated Config.
    strategy: the tf.distribute strategy (created first, in task.py).
    task: which task of a cluster this process is (the chief writes).

  Returns:
    The metrics dict written to metrics.json.
  """
  base = None
  if config.transfer:  # Transfer learning: the base fixes the input shape.
    with strategy.scope():
      config, base = transfer.prepare(config)
  layout = Layout.from_config(config)
  if config.start_fresh and task.is_chief:
    discard_previous_run(layout)
  state = check_previous_run(layout, config)
  if state == 'finished':
    logging.info('%s already holds a finished run (metrics.json and a '
                 'complete export): nothing to do. Pass --start_fresh to '
                 'train again.', layout.job_dir)
    return storage.read_json(layout.metrics_path)
  source = data.load_source(config)
  logging.info('Dataset %s: %d classes, split sizes %s, input shape %s.',
               source.info.name, source.info.num_classes, source.info.sizes,
               config.image_shape)
  if task.is_chief:
    config_lib.save(config, layout.config_path)
  if state == 'resumable':
    logging.info('Resuming from the checkpoint in %s.', layout.checkpoint_dir)
  model = build_and_compile(config, source.info, strategy, base)
  logging.info('Model %s: %d parameters.', model.name, model.count_params())
  return _train_evaluate_export(config, layout, source, model, strategy, task,
                                base)


def _fine_tune(model, config, source, checkpoint_dir, log_dir, mirrors,
               is_chief, strategy):
  """Transfer learning, phase 2: unfreezes the top base layers, trains on.

  Resumable on its own: its BackupAndRestore state, history and logs live in
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
  _, history = fit(model, phase, source,
                   os.path.join(checkpoint_dir, FINE_TUNE_DIR),
                   os.path.join(log_dir, FINE_TUNE_DIR), mirrors, is_chief)
  return history


def _train_evaluate_export(config, layout, source, model, strategy, task,
                           base=None):
  checkpoints = _Mirror(layout.checkpoint_dir, 'checkpoints')
  logs = _Mirror(layout.log_dir, 'logs')
  try:
    checkpoints.pull()
    start = time.perf_counter()
    first_epoch = _saved_epoch(checkpoints.local)
    _, history = fit(model, config, source, checkpoints.local, logs.local,
                     [checkpoints, logs], task.is_chief)
    if base is not None:  # Transfer learning: the optional second phase.
      fine_tune_history = _fine_tune(
          model, config, source, checkpoints.local, logs.local,
          [checkpoints, logs], task.is_chief, strategy)
      history = transfer.combine_histories(history, fine_tune_history,
                                           config.epochs)
    train_seconds = time.perf_counter() - start
    test_data = data.make_dataset(source, 'test', config.batch_size,
                                  config.image_shape, training=False,
                                  cache='none')
    test = model.evaluate(test_data, return_dict=True, verbose=0)
    metrics = {
        'test_accuracy': float(test['accuracy']),
        'test_loss': float(test['loss']),
        'epochs': config.epochs,
        'resumed_from_epoch': first_epoch,
        'dataset': config.dataset,
        'model': model.name,
        'examples': source.info.sizes,
        'replicas': strategy.num_replicas_in_sync,
        'train_seconds': round(train_seconds, 2),
        'train_images_per_second': _summarise_throughput(history),
        'history': history,
    }
    last = history[-1] if history else {}
    for key in ('val_accuracy', 'val_loss', 'accuracy', 'loss'):
      if key in last:
        metrics[key] = last[key]
    logging.info('Test accuracy %.4f, test loss %.4f.',
                 metrics['test_accuracy'], metrics['test_loss'])
    if task.is_chief:
      metadata = export.build_metadata(
          class_names=source.info.class_names, image_shape=config.image_shape,
          dataset=config.dataset, model_name=model.name,
          metrics={k: metrics[k] for k in ('test_accuracy', 'test_loss')},
          extra=(transfer.describe(base, model, config.dataset,
                                   config.fine_tune_layers) if base else None))
      export.export_model(model, layout.export_dir, metadata)
      logs.push()
      storage.write_json(layout.metrics_path, metrics)
      logging.info('Wrote %s.', layout.metrics_path)
    return metrics
  finally:
    checkpoints.close()
    logs.close()


def _saved_epoch(checkpoint_dir):
  """The epoch a BackupAndRestore backup will resume at (0 if none)."""
  path = os.path.join(checkpoint_dir, BACKUP_DIR, 'training_metadata.json')
  if not os.path.exists(path):
    return 0
  return int(storage.read_json(path).get('epoch', 0))
