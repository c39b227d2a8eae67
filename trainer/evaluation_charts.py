"""Pictures of an evaluation report (trainer/evaluation.py's).

* `render_report`: evaluation.png, a labelled confusion-matrix heat map
  beside a reliability diagram (accuracy against confidence per bin);
* `render_confusion`: the heat map alone (the TensorBoard image);
* `render_misclassified`: misclassified.png, a grid of the most confident
  mistakes with their true and predicted labels.

Needs matplotlib (the optional `[plot]` extra), imported only when a
picture is drawn; without it each function returns None and the caller
logs one line, as curves.py does. numpy only otherwise: the scorer draws
PREFIX-evaluation.png with it.
"""

import io
import math

import numpy as np

REPORT_FILE = 'evaluation.png'
MISCLASSIFIED_FILE = 'misclassified.png'
# Counts are written in the cells up to this many classes; beyond, colour
# alone says it.
_MAX_ANNOTATED_CLASSES = 20
_GRID_COLUMNS = 5


def _pyplot():
  """matplotlib's pyplot drawing to memory, or None if not installed."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')  # No display: render to memory.
    from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return pyplot


def _png(pyplot, figure):
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  pyplot.close(figure)
  return buffer.getvalue()


def _draw_confusion(axis, report):
  """Rows (true) normalised to shares, so rare classes show their errors."""
  confusion = np.asarray(report['confusion_matrix'], np.float64)
  labels = [entry['label'] for entry in report['per_class']]
  rows = confusion.sum(axis=1, keepdims=True)
  shares = np.divide(confusion, rows, out=np.zeros_like(confusion),
                     where=rows > 0)
  image = axis.imshow(shares, cmap='Blues', vmin=0, vmax=1)
  ticks = np.arange(len(labels))
  axis.set_xticks(ticks, labels, rotation=90 if len(labels) > 10 else 0)
  axis.set_yticks(ticks, labels)
  axis.set_xlabel('predicted')
  axis.set_ylabel('true')
  axis.set_title('confusion matrix (colour: share of the true class)')
  if len(labels) <= _MAX_ANNOTATED_CLASSES:
    for (row, column), count in np.ndenumerate(confusion):
      if count:
        axis.text(column, row, int(count), ha='center', va='center',
                  fontsize=7,
                  color='white' if shares[row, column] > 0.5 else 'black')
  return image


def _draw_reliability(axis, report):
  bins = report['calibration']
  centres = [(entry['lower'] + entry['upper']) / 2 for entry in bins]
  width = bins[0]['upper'] - bins[0]['lower']
  accuracy = [entry['accuracy'] or 0.0 for entry in bins]
  axis.bar(centres, accuracy, width=width * 0.9, label='accuracy',
           color='tab:blue', alpha=0.8)
  axis.plot([0, 1], [0, 1], linestyle='--', color='grey',
            label='perfectly calibrated')
  counts = [entry['count'] for entry in bins]
  total = max(sum(counts), 1)
  axis.plot(centres, [count / total for count in counts], marker='.',
            color='tab:orange', label='share of examples')
  axis.set_xlim(0, 1)
  axis.set_ylim(0, 1)
  axis.set_xlabel('confidence (top probability)')
  axis.set_ylabel('accuracy')
  ece = report['expected_calibration_error']
  axis.set_title('reliability diagram (ECE '
                 f'{"n/a" if ece is None else f"{ece:.4f}"})')
  axis.legend(loc='upper left', fontsize=8)


def render_report(report, title):
  """PNG bytes of the heat map and the reliability diagram, or None."""
  pyplot = _pyplot()
  if pyplot is None:
    return None
  size = max(5.0, 0.35 * len(report['per_class']))
  figure, axes = pyplot.subplots(1, 2, figsize=(size + 5.5, size),
                                 constrained_layout=True)
  figure.colorbar(_draw_confusion(axes[0], report), ax=axes[0], shrink=0.8)
  _draw_reliability(axes[1], report)
  accuracy = report['top_k_accuracy'].get('1')
  figure.suptitle(f'{title}: {report["examples"]} examples, accuracy '
                  f'{"n/a" if accuracy is None else f"{accuracy:.4f}"}')
  return _png(pyplot, figure)


def render_confusion(report):
  """PNG bytes of the labelled heat map alone, or None."""
  pyplot = _pyplot()
  if pyplot is None:
    return None
  size = max(5.0, 0.35 * len(report['per_class']))
  figure, axis = pyplot.subplots(figsize=(size + 1, size),
                                 constrained_layout=True)
  _draw_confusion(axis, report)
  return _png(pyplot, figure)


def render_misclassified(images, entries):
  """PNG bytes of a grid of mistakes, or None.

  Args:
    images: one image per entry, [height, width, channels] (uint8, or
      floats in [0, 1]).
    entries: the report's `misclassified` entries, in the same order.
  """
  pyplot = _pyplot()
  if pyplot is None or not entries:
    return None
  columns = min(_GRID_COLUMNS, len(entries))
  rows = math.ceil(len(entries) / columns)
  height = 2.5 * rows + 0.3  # Inches: the cells, and the figure's title.
  figure, axes = pyplot.subplots(rows, columns, squeeze=False,
                                 figsize=(2.2 * columns, height))
  # Fixed margins, not constrained_layout: its solver took half of this
  # picture's 1.3 s for 25 cells (measured here), in every training run.
  figure.subplots_adjust(left=0.02, right=0.98, bottom=0.1 / height,
                         top=1 - 0.85 / height, wspace=0.1, hspace=0.45)
  for axis in axes.flat:
    axis.axis('off')
  for axis, image, entry in zip(axes.flat, images, entries):
    image = np.asarray(image)
    if image.dtype != np.uint8:
      image = np.clip(image, 0, 1)
    if image.ndim == 3 and image.shape[-1] == 1:
      axis.imshow(image[..., 0], cmap='gray')
    else:
      axis.imshow(image)
    axis.set_title(f'true {entry["true"]}\npredicted {entry["predicted"]} '
                   f'({entry["score"]:.2f})', fontsize=8)
  figure.suptitle('most confident mistakes')
  return _png(pyplot, figure)
