"""A PNG chart of the training curves, written next to metrics.json.

For people who would rather look than open TensorBoard. Needs matplotlib
(the optional `[plot]` extra); without it the trainer logs one line and
carries on.
"""

import io

from absl import logging

from trainer import storage

CHART_FILE = 'training_curves.png'


def value_limits(values):
  """(low, high) of an axis that one outlying first epoch does not flatten.

  The first epoch's loss is often several times the rest (and its
  validation accuracy far below): with three or more epochs the limits are
  those of the later epochs, with a margin, and `render` marks the points
  outside them at the edge.

  Args:
    values: the per-epoch values (None where missing).

  Returns:
    (low, high), or None when there is nothing to plot.
  """
  present = [v for v in values if v is not None]
  if not present:
    return None
  later = [v for v in values[1:] if v is not None]
  basis = later if len(later) >= 2 else present
  low, high = min(basis), max(basis)
  margin = (high - low) * 0.1 or abs(high) * 0.05 or 0.05
  return low - margin, high + margin


def resumed_epochs(history):
  """Epochs a resumed (or extended) run started at: the attempt went up."""
  return [entry['epoch'] for previous, entry in zip(history, history[1:])
          if entry.get('attempt', 1) > previous.get('attempt', 1)]


def fine_tune_start(history):
  """The first epoch of a transfer run's fine-tuning phase, or None."""
  return next((entry['epoch'] for entry in history
               if entry.get('phase') == 'fine_tune'), None)


def render(history, title, test_accuracy=None):
  """PNG bytes of loss and accuracy per epoch (train and validation).

  Epochs are whole-number ticks; the test accuracy is a marked line on the
  accuracy chart; dotted lines show where a run resumed and where
  fine-tuning began.

  Args:
    history: the per-epoch list from metrics.json['history'].
    title: the chart's title.
    test_accuracy: metrics.json's test accuracy, or None.

  Returns:
    PNG bytes, or None when matplotlib is not installed.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')  # No display: render to memory.
    from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
    from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.info('matplotlib is not installed: no training-curve chart '
                 "(pip install 'tf-image-classifier[plot]').")
    return None
  figure, axes = pyplot.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
  for axis, metric in zip(axes, ('loss', 'accuracy')):
    _plot_metric(axis, history, metric)
    axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    _mark_phases(axis, history)
  if test_accuracy is not None:
    axes[1].axhline(test_accuracy, color='black', linestyle='--',
                    linewidth=1, label=f'test {test_accuracy:.3f}')
  for axis in axes:
    axis.legend()
  figure.suptitle(title)
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  pyplot.close(figure)
  return buffer.getvalue()


def _plot_metric(axis, history, metric):
  """Train and validation curves of one metric, limits from `value_limits`."""
  epochs = [entry['epoch'] for entry in history]
  everything = []
  for key, label in ((metric, 'train'), (f'val_{metric}', 'validation')):
    values = [entry.get(key) for entry in history]
    if any(v is not None for v in values):
      axis.plot(epochs, values, marker='o', label=label)
      everything.append(values)
  limits = [value_limits(values) for values in everything]
  limits = [limit for limit in limits if limit]
  if limits:
    low = min(limit[0] for limit in limits)
    high = max(limit[1] for limit in limits)
    axis.set_ylim(low, high)
    _mark_off_chart(axis, epochs, everything, low, high)
  axis.set_xlabel('epoch')
  axis.set_ylabel(metric)
  axis.grid(True, alpha=0.3)


def _mark_off_chart(axis, epochs, curves, low, high):
  """A triangle at the edge, and the values, for points beyond the limits."""
  for index, epoch in enumerate(epochs):
    off = [values[index] for values in curves if values[index] is not None
           and not low <= values[index] <= high]
    if not off:
      continue
    above = max(off) > high
    edge = high if above else low
    axis.plot([epoch], [edge], marker='^' if above else 'v', color='grey',
              clip_on=False)
    axis.annotate(', '.join(f'{value:.2f}' for value in off), (epoch, edge),
                  xytext=(6, -10 if above else 4), textcoords='offset points',
                  fontsize=8)


def _mark_phases(axis, history):
  for epoch in resumed_epochs(history):
    axis.axvline(epoch - 0.5, color='grey', linestyle=':', linewidth=1)
    axis.annotate('resumed', (epoch - 0.5, 1), xycoords=('data',
                                                         'axes fraction'),
                  fontsize=8, rotation=90, va='top', ha='right')
  start = fine_tune_start(history)
  if start is not None:
    axis.axvline(start - 0.5, color='tab:red', linestyle=':', linewidth=1)
    axis.annotate('fine-tuning', (start - 0.5, 1), xycoords=('data',
                                                             'axes fraction'),
                  fontsize=8, rotation=90, va='top', ha='right')


def write_chart(history, path, title, test_accuracy=None):
  """Renders and writes the chart (local or gs://); returns whether it did."""
  if not history:
    return False
  png = render(history, title, test_accuracy)
  if png is None:
    return False
  storage.write_bytes(path, png)
  return True
