"""The sequence of one training run, from the job dir to metrics.json.

`run(context)` is the whole job, in this order:

  1. the job dir: resume an interrupted run, do nothing for a finished one,
     refuse one of another configuration (job_dir.py);
  2. the data, read and checked before training (data/);
  3. the model, built and compiled under the strategy's scope (models.py,
     transfer.py, precision.py, distribute.py);
  4. fit, one phase or, for a transfer run with --fine_tune_layers, two,
     with resume-safe callbacks (callbacks.py, checkpoints.py,
     best_epoch.py: the best epoch's weights are put back with
     --export_best) and the learning-rate schedule (schedules.py);
  5. the evaluation on the test split, or on what exists, and its report
     (evaluate_lib.py);
  6. publishing: the export, logs, chart and metrics.json last
     (publish.py); a two-stage run (--dataset=embeddings) trains and
     evaluates a head on cached embeddings, and exports it stitched under
     its base's frozen extractor (transfer.stitch).

Each step is a short function of the run context (run_context.py) and what
the steps before it computed. In a multi-worker job every worker runs this
same code; only the chief writes into the job dir.
"""

import dataclasses
import math
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from trainer import batch_norm
from trainer import best_epoch
from trainer import callbacks
from trainer import checkpoints
from trainer import config as config_lib
from trainer import data
from trainer import distribute
from trainer import evaluate_lib
from trainer import job_dir
from trainer import losses
from trainer import models
from trainer import precision
from trainer import preemption
from trainer import publish
from trainer import run_context
from trainer import schedules
from trainer import storage
from trainer import transfer
from trainer.data import checks
from trainer.data import pipeline


@dataclasses.dataclass(frozen=True)
class Training:
  """What fitting every phase of a run gave.

  Attributes:
    history: per-epoch entries of every phase, restored epochs included.
    resumed_from_epoch: the epoch training resumed from (0: from scratch).
    first_step_seconds: seconds from the process start to its first
      training step, or None.
    seconds: how long fitting took in this process.
    best: best_epoch.BestEpoch.summary() with --export_best or
      --early_stopping_patience, else None.
  """
  history: list
  resumed_from_epoch: int
  first_step_seconds: float
  seconds: float
  best: dict = None


def run(context):
  """Trains, evaluates and publishes as `context.config` says.

  Args:
    context: a run_context.RunContext (run_context.create).

  Returns:
    The metrics dict written to metrics.json.

  Raises:
    preemption.Preempted: when stopped by a signal; rerun to resume.
    config.ConfigError: if the job dir holds a run of another configuration.
    data.DataError: if the dataset is missing, malformed or inconsistent.
    checkpoints.CheckpointError: if the checkpoint cannot be resumed.
    callbacks.TrainingDiverged: if the loss or the weights became non-finite.
    storage.WriteError: if a checkpoint or the export cannot be written.
    lease.LeaseError: if another run took the job dir over.
  """
  config, layout = context.config, context.layout
  state = job_dir.start(layout, config, context.task.is_chief)
  if state is job_dir.RunState.FINISHED:
    logging.info('%s already holds a finished run (metrics.json and a '
                 'complete export): nothing to do. Pass --start_fresh to '
                 'train again.', layout.job_dir)
    distribute.wait_for_all_workers(context.strategy)
    return storage.read_json(layout.metrics_path)
  source = _load_data(context)
  if context.task.is_chief:
    config_lib.save(config, layout.config_path)
  if state is job_dir.RunState.RESUMABLE:
    logging.info('Resuming from the checkpoint in %s.', layout.checkpoint_dir)
  model = build_and_compile(context, source.info)
  dirs = checkpoints.WorkDirs(layout.checkpoint_dir, layout.log_dir,
                              context.task, restore=not config.start_fresh)
  try:
    return _train_evaluate_publish(model, context, source, dirs)
  except preemption.Preempted:
    try:
      dirs.push()  # Idempotent; the local backup is always consistent.
    except Exception:  # pylint: disable=broad-except
      logging.exception('Could not push the backup on the way out.')
    raise
  finally:
    dirs.close()


def _load_data(context):
  """The run's data source, read and checked before any training."""
  config = context.config
  source = data.load_source(data.Options.from_config(config))
  info = source.info
  logging.info('Dataset %s: %d classes, split sizes %s, input shape %s.',
               info.name, info.num_classes, info.sizes, config.image_shape)
  if config.hypertune_metric.startswith('val_') and not info.sizes.get(
      'validation'):
    raise config_lib.ConfigError(
        f'hypertune_metric: {config.hypertune_metric} needs a validation '
        f'split, and the {info.name} dataset in {config.data_dir} has none.')
  for key in ('export_best', 'early_stopping_patience'):
    if getattr(config, key) and info.sizes.get('validation') == 0:
      raise config_lib.ConfigError(
          f'{key}: needs a validation split, and the {info.name} dataset '
          f'in {config.data_dir} has none.')
  return source


def build_and_compile(context, info):
  """Builds the model and optimizer under the strategy's scope.

  A transfer run's model is its base's frozen feature extractor under a new
  head (transfer.py); a two-stage run's (--dataset=embeddings) is that head
  alone, on the cached embeddings, stitched under the extractor for the
  export (`_stitch`).
  """
  config = context.config
  policy = precision.resolve(config.mixed_precision)
  with context.strategy.scope(), precision.policy_scope(policy):
    keras.utils.set_random_seed(config.seed)
    if context.base is None:
      model = models.build_model(config.model, config.image_shape,
                                 info.num_classes)
    elif config.two_stage:  # The head alone, on the cache's vectors.
      model = transfer.build_head(context.base, info.num_classes)
    else:
      model = transfer.build_model(context.base, info.num_classes)
    compile_model(model, schedules.make(config, config.learning_rate,
                                        config.epochs, info.sizes.get('train')),
                  config.jit_compile, config.label_smoothing)
  if policy != 'float32':
    logging.info('Mixed precision: %s (--mixed_precision=%s).', policy,
                 config.mixed_precision)
  distribute.prepare_model(model, context.strategy)
  logging.info('Model %s: %d parameters.', model.name, model.count_params())
  return model


def compile_model(model, learning_rate, jit_compile=False,
                  label_smoothing=0.0):
  """(Re)compiles; needed again after changing which layers are trainable.

  `learning_rate` is a float or a schedule (schedules.make).
  """
  model.compile(
      optimizer=keras.optimizers.Adam(learning_rate),
      loss=losses.loss_for(label_smoothing),
      metrics=['accuracy'],
      jit_compile=jit_compile)


def _train_evaluate_publish(model, context, source, dirs):
  training = _train(model, context, source, dirs)
  publish.check_finite_weights(model, context.config.learning_rate)
  batch_norm.recalibrate(model, context, source)  # Before evaluation, export.
  metrics = _metrics(model, context, source, training)
  evaluate_lib.add_to_run(model, context, source, dirs, metrics)
  context.stop_signal.check()
  if context.config.two_stage:
    model = _stitch(model, context)
  publish.publish(model, context, source, dirs, metrics)
  distribute.wait_for_all_workers(context.strategy)
  return metrics


def _stitch(head, context):
  """A two-stage run's export: the base's extractor under the trained head."""
  with context.strategy.scope():
    model = transfer.stitch(context.base, head)
  logging.info('Exporting the frozen feature extractor of %s with the head '
               'trained on its embeddings on top (%s).', context.base.source,
               model.name)
  return model


# --------------------------------------------------------------------------
# Fitting.


def _train(model, context, source, dirs):
  """Fits the head phase, then a transfer run's fine-tuning phase."""
  config = context.config
  start = time.perf_counter()
  head = run_context.Phase(config.epochs, config.learning_rate, dirs,
                           started_at=context.started_at)
  history, resumed_from, first_step_seconds, best = fit(model, context,
                                                        source, head)
  if best is not None:
    _keep_best_weights(model, context, best)
  if context.base is not None:
    history = transfer.combine_histories(
        history, _fine_tune(model, context, source, dirs), config.epochs)
  return Training(history, resumed_from, first_step_seconds,
                  time.perf_counter() - start,
                  best.summary() if best is not None else None)


def _keep_best_weights(model, context, best):
  """With --export_best, puts the best epoch's weights back in the model."""
  path = best.best_weights_path()
  if path is None:
    return
  with context.strategy.scope():
    model.load_weights(path)
  logging.info('Exporting the weights of epoch %d, the best by %s (%.4f).',
               best.state['best_epoch'], best.metric,
               best.state['best_value'])


def _fine_tune(model, context, source, dirs):
  """Transfer learning, phase 2: unfreezes the top base layers, trains on.

  Resumable on its own: its resume state, history and logs live in
  job_dir.FINE_TUNE_DIR sub-folders (a restarted job re-runs phase 1 as
  zero epochs from its finished backup, then resumes here).

  Returns:
    The per-epoch history of this phase ([] without --fine_tune_layers).
  """
  config = context.config
  if not config.fine_tune_layers:
    return []
  with context.strategy.scope():
    names = transfer.unfreeze_top_layers(model, config.fine_tune_layers)
    rate = schedules.make(config, config.fine_tune_rate,
                          config.fine_tune_epochs or config.epochs,
                          source.info.sizes.get('train'))
    compile_model(model, rate, config.jit_compile, config.label_smoothing)
  logging.info('Fine-tuning %s at learning rate %g.', ', '.join(names),
               config.fine_tune_rate)
  phase = run_context.Phase(config.fine_tune_epochs or config.epochs,
                            config.fine_tune_rate,
                            dirs.phase(job_dir.FINE_TUNE_DIR))
  history, _, _, _ = fit(model, context, source, phase)
  return history


def fit(model, context, source, phase):
  """Runs model.fit for one phase, with resume-safe callbacks.

  Returns:
    (per-epoch history including restored epochs, the epoch training resumed
    from (0: from scratch), seconds from `phase.started_at` to the first
    training step or None, the best_epoch.BestEpoch callback or None).

  Raises:
    callbacks.TrainingDiverged: when the loss becomes NaN or infinite.
    data.DataError: when a file of the dataset became unreadable.
  """
  config = context.config
  # A resumed run must not replay the first epochs' shuffle order (and
  # augmentation): its pipeline is seeded by the epoch it resumes at.
  resume_at = checkpoints.saved_epoch(phase.dirs.restore_dir)
  train_data = _input(context, source, 'train', True,
                      seed=config.seed + resume_at)
  validation_data = _input(context, source, 'validation', False) if (
      source.info.sizes.get('validation') != 0) else None
  best_state, epochs = None, phase.epochs
  if best_epoch.is_enabled(config):
    best_state = best_epoch.restored_state(phase.dirs.restore_dir, resume_at)
    if best_state['stopped']:  # Stopped early, then interrupted: no more.
      epochs = resume_at
  fit_callbacks = callbacks.for_phase(context, phase,
                                      _images_per_epoch(config, source.info),
                                      best_state)
  try:
    with distribute.unknown_length_input():
      model.fit(
          train_data, validation_data=validation_data, epochs=epochs,
          steps_per_epoch=config.steps_per_epoch or None,
          callbacks=fit_callbacks.all,
          shuffle=False,  # The tf.data pipeline shuffles.
          verbose=0)
  except (tf.errors.NotFoundError, tf.errors.PermissionDeniedError) as e:
    # Every file was read before training (data/checks.py): it changed since.
    raise data.DataError(
        f'A file of the dataset became unreadable during training: '
        f'{checks.short_message(e)}. Restore it (or remove it and rerun '
        'with --start_fresh); the backup of the last finished epoch is '
        'kept.') from None
  return (fit_callbacks.epoch_log.history, fit_callbacks.backup.restored_epoch,
          fit_callbacks.epoch_log.first_step_seconds, fit_callbacks.best)


def _images_per_epoch(config, info):
  if config.steps_per_epoch:
    return config.steps_per_epoch * config.batch_size
  return info.sizes.get('train')


def _input(context, source, split, training, seed=None):
  """One split's input pipeline, distributed as the strategy needs it."""
  config = context.config
  weights = _class_weights(config, source) if training else None

  def make(batch_size, shard):
    dataset = pipeline.make_dataset(
        source, split, batch_size, config.image_shape, training=training,
        seed=config.seed if seed is None else seed,
        shuffle_buffer=config.shuffle_buffer,
        cache=config.cache if split != 'test' else 'none',
        augment=config.augmentations if training else (), shard=shard,
        class_weights=weights)
    if training and config.steps_per_epoch:
      dataset = dataset.repeat()
    return dataset

  return distribute.distribute_dataset(context.strategy, make,
                                       config.batch_size)


def _class_weights(config, source):
  """--class_weight=balanced: weights from the training split's labels."""
  if config.class_weight != 'balanced':
    return None
  counts = pipeline.label_counts(source, 'train', source.info.num_classes)
  weights = losses.balanced_weights(counts)
  logging.info('Class weights (balanced, from %d training labels): %s.',
               int(counts.sum()), ', '.join(
                   f'{name} {weight:.3g}' for name, weight in zip(
                       source.info.class_names, weights)))
  return weights


# --------------------------------------------------------------------------
# Evaluation and metrics.


def _metrics(model, context, source, training):
  """The metrics.json document: held-out figures, then how the run went."""
  config = context.config
  last = training.history[-1] if training.history else {}
  if training.best and training.best['exported_epoch']:
    # The held-out figures are those of the weights exported.
    last = next(entry for entry in training.history
                if entry['epoch'] == training.best['exported_epoch'])
  metrics = _evaluate(model, context, source, last)
  metrics.update({
      'epochs': config.epochs,
      'resumed_from_epoch': training.resumed_from_epoch,
      'first_step_seconds': training.first_step_seconds,
      'dataset': config.dataset,
      'model': model.name,
      'examples': source.info.sizes,
      'data': source.info.report,
      'replicas': context.strategy.num_replicas_in_sync,
      'mixed_precision': model.dtype_policy.name,
      'workers': context.task.num_tasks,
      'train_seconds': round(training.seconds, 2),
      'train_images_per_second': _summarise_throughput(training.history),
      'history': training.history,
  })
  metrics.update(training.best or {})
  for key in ('val_accuracy', 'val_loss', 'accuracy', 'loss'):
    if key in last:
      metrics[key] = last[key]
  return metrics


def _evaluate(model, context, source, last_epoch):
  """Test accuracy and loss, over all workers' shards of the test split.

  Without a test split (--test_fraction=0, or shards without test records)
  the held-out figures are the validation split's, from the last epoch
  (computed with the final weights); `evaluated_on` says which split, and
  the test figures are null. Without either, there are no held-out figures.
  """
  sizes = source.info.sizes
  if sizes.get('test') == 0:
    return _without_test_split(context.config, sizes, last_epoch)
  with distribute.unknown_length_input():
    test = model.evaluate(
        _input(context, source, 'test', False), return_dict=True,
        verbose=0, callbacks=[callbacks.StopAtSafePoint(context.stop_signal)])
  if not all(math.isfinite(float(test[key])) for key in ('accuracy', 'loss')):
    raise callbacks.diverged(f'the test loss is {float(test["loss"])}',
                             context.config.learning_rate)
  logging.info('Test accuracy %.4f, test loss %.4f.', test['accuracy'],
               test['loss'])
  return {'test_accuracy': float(test['accuracy']),
          'test_loss': float(test['loss']), 'evaluated_on': 'test'}


def _without_test_split(config, sizes, last_epoch):
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
