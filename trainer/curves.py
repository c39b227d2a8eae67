"""A PNG chart of the training curves, written next to metrics.json.

For people who would rather look than open TensorBoard. Needs matplotlib
(the optional `[plot]` extra); without it the trainer logs one line and
carries on.
"""

import io

from absl import logging

from trainer import storage

CHART_FILE = 'training_curves.png'


def render(history, title):
  """PNG bytes of loss and accuracy per epoch (train and validation).

  Args:
    history: the per-epoch list from metrics.json['history'].
    title: the chart's title.

  Returns:
    PNG bytes, or None when matplotlib is not installed.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')  # No display: render to memory.
    from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.info('matplotlib is not installed: no training-curve chart '
                 "(pip install 'tf-image-classifier[plot]').")
    return None
  epochs = [entry['epoch'] for entry in history]
  figure, axes = pyplot.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
  for axis, metric in zip(axes, ('loss', 'accuracy')):
    for key, label in ((metric, 'train'), (f'val_{metric}', 'validation')):
      values = [entry.get(key) for entry in history]
      if any(v is not None for v in values):
        axis.plot(epochs, values, marker='o', label=label)
    axis.set_xlabel('epoch')
    axis.set_ylabel(metric)
    axis.grid(True, alpha=0.3)
    axis.legend()
  figure.suptitle(title)
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  pyplot.close(figure)
  return buffer.getvalue()


def write_chart(history, path, title):
  """Renders and writes the chart (local or gs://); returns whether it did."""
  if not history:
    return False
  png = render(history, title)
  if png is None:
    return False
  storage.write_bytes(path, png)
  return True
