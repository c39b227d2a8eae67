"""What the chief publishes at the end of a run, in which order, and why.

Nothing broken is published: the final weights are checked to be finite
(`check_finite_weights`, before the evaluation), and the lease is checked
first, so a run whose job dir was taken over does not publish over the other
run's outputs. Then, in this order:

  1. export/        the artifact (export.py writes it elsewhere first, and
                    _COMPLETE last), always float32 (precision.as_float32)
  2. checkpoints/, logs/   pushed to gs:// when they live there
  3. training_curves.png, evaluation.png, misclassified.png
  4. metrics.json   last: with a complete export it marks a finished run
                    (job_dir.py)

Other workers of a multi-worker job write the same artifact into a
temporary folder that is thrown away: saving may need every worker's part
in collective operations.
"""

from absl import logging
import numpy as np

from trainer import callbacks
from trainer import checkpoints
from trainer import curves
from trainer import evaluate_lib
from trainer import export
from trainer import precision
from trainer import transfer

# The held-out figures an export's metadata.json repeats.
METADATA_METRICS = ('test_accuracy', 'test_loss', 'evaluated_on',
                    'val_accuracy', 'val_loss')


def check_finite_weights(model, learning_rate):
  """Raises callbacks.TrainingDiverged if a weight is NaN or infinite."""
  bad = [variable.path for variable in model.weights
         if not np.all(np.isfinite(np.asarray(variable.numpy())))]
  if bad:
    raise callbacks.diverged(f'{len(bad)} weight tensor(s) hold NaN or '
                             f'infinite values after training '
                             f'({", ".join(bad[:3])})', learning_rate)


def publish(model, context, source, dirs, metrics):
  """Publishes the run's outputs (chief), or writes a throw-away copy.

  Args:
    model: the trained Keras model.
    context: the run_context.RunContext.
    source: the data.sources.Source trained on (labels of the artifact).
    dirs: the run's checkpoints.WorkDirs.
    metrics: the metrics.json document.

  Raises:
    lease.LeaseError: if another run took the job dir over.
    storage.WriteError: if an output cannot be written.
  """
  metadata = _metadata(model, context, source, metrics)
  # A float32 artifact whatever the training precision: portable, and it
  # scores the same on any hardware.
  model = precision.as_float32(model)
  if not context.task.is_chief:
    export.write_artifact_files(
        model, dirs.temporary_dir(
            context.task.name.replace('/', '') + '-export-'), metadata)
    return
  if context.lease is not None:
    context.lease.check()
  layout = context.layout
  export.export_model(model, layout.export_dir, metadata)
  dirs.push()
  curves.write_chart(metrics['history'], layout.chart_path,
                     f'{model.name} on {context.config.dataset}',
                     test_accuracy=metrics.get('test_accuracy'))
  evaluate_lib.write_pictures(metrics.get('evaluation'), source,
                              context.config.image_shape, layout.job_dir,
                              f'{model.name} on {context.config.dataset}')
  checkpoints.write_json(layout.metrics_path, metrics, 'the metrics')
  logging.info('Wrote %s.', layout.metrics_path)


def _metadata(model, context, source, metrics):
  """The metadata.json of the artifact."""
  config = context.config
  extra = None
  if context.base:
    extra = transfer.describe(context.base, model, config.dataset,
                              config.fine_tune_layers)
    if config.two_stage:
      extra['transfer'].update(transfer.describe_two_stage(
          source.info.report))
  return export.build_metadata(
      class_names=source.info.class_names, image_shape=config.image_shape,
      dataset=config.dataset, model_name=model.name,
      metrics={**{k: metrics[k] for k in METADATA_METRICS if k in metrics},
               **_trust(metrics.get('evaluation'))},
      extra=extra)


def _trust(report):
  """What the export repeats of the evaluation: how far to trust each label."""
  if not report:
    return {}
  return {key: report[key] for key in ('per_class',
                                       'expected_calibration_error')}
