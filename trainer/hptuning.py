"""Reporting the tuning metric to Vertex AI hyperparameter tuning.

Vertex AI runs one trial per set of hyperparameters, passing them as flags
(e.g. --learning_rate=0.003), and reads the metric each trial reports
through the `cloudml-hypertune` library (an optional dependency:
`pip install 'tf-image-classifier[hypertune]'`). The trainer reports the
Keras log value named by --hypertune_metric (e.g. val_accuracy) after every
epoch under that same name, which must equal the study's `metricId`.
"""

import keras

from trainer import errors


class MissingDependencyError(errors.UserError, ImportError):
  """The optional cloudml-hypertune package is not installed."""

  kind = 'missing_dependency'


def _hypertune_module():
  try:
    import hypertune  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingDependencyError(
        'hypertune_metric needs the cloudml-hypertune package: '
        "pip install 'tf-image-classifier[hypertune]'.") from e
  return hypertune


def check_available():
  """Raises MissingDependencyError early, before any training."""
  _hypertune_module()


class ReportMetric(keras.callbacks.Callback):
  """Reports one logged metric to Vertex AI after every epoch."""

  def __init__(self, metric):
    super().__init__()
    self._metric = metric
    self._reporter = _hypertune_module().HyperTune()

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    if self._metric not in logs:
      raise KeyError(
          f'hypertune_metric {self._metric!r} is not among the logged '
          f'metrics ({", ".join(sorted(logs))}).')
    self._reporter.report_hyperparameter_tuning_metric(
        hyperparameter_metric_tag=self._metric,
        metric_value=float(logs[self._metric]),
        global_step=epoch + 1)
