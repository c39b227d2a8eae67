"""The evaluation report (Contract 5 of DESIGN.md): one implementation.

The trainer (train.py, after its test evaluation), `trainer.evaluate` (an
existing artifact on any dataset) and the scorer (`batch_predict --evaluate`,
in a Beam combiner) all count with `Counts` and report with
`Counts.report()`, so the three cannot disagree on a definition.

`Counts` holds only what merges by addition, plus a bounded list:

* the confusion matrix (rows the true label, columns the predicted one,
  label order of metadata.json);
* top-1 and top-K hits, K = min(5, classes);
* 15 equal-width confidence bins ([0, 1/15), ..., [14/15, 1], the
  confidence being the top probability): per bin the count, the sum of the
  confidences and the number of correct predictions;
* the MAX_MISCLASSIFIED most confident mistakes (id, true, predicted,
  score), kept in a fixed order (score descending, then id as text) so
  that any split of the examples and any order of merging give the same list.

`merge` adds another `Counts` in, so partial results of Beam workers (or of
batches) combine exactly; nothing keeps a prediction per example.

Undefined ratios are reported as null, never NaN (the report is JSON):
* `precision` of a class never predicted is null (no prediction to trust
  or distrust); its `f1` is 0 when the class does occur (every one was
  missed);
* `recall` and `f1` of a class that never occurs (support 0) are null, and
  `macro_f1` is the mean F1 over the classes that occur;
* a bin without examples has null confidence and accuracy; a report of no
  examples has null accuracies and ECE.

numpy only: the scorer and its Dataflow workers import this module (it is
one of the trainer's light shared modules, like artifact.py), so it must
import neither TensorFlow nor Keras.
"""

import heapq

import numpy as np

# The report's file where it stands alone (trainer.evaluate); the
# scorer's is PREFIX-evaluation.json.
REPORT_FILE = 'evaluation.json'
NUM_BINS = 15
MAX_TOP_K = 5
MAX_MISCLASSIFIED = 25
# Figures in the report are rounded: enough for any reader, and the same
# whichever order partial sums were added in.
_DIGITS = 6


def _order(mistake):
  """Most confident first, then by id: one order whatever the merging."""
  score, example_id, _, _ = mistake
  return (-score, str(example_id))


class Counts:
  """Mergeable counts of predictions against true labels; see the module
  docstring."""

  def __init__(self, labels, max_misclassified=MAX_MISCLASSIFIED):
    """Args:
      labels: the class names, in the model's output order.
      max_misclassified: how many of the most confident mistakes to keep.
    """
    self.labels = tuple(labels)
    classes = len(self.labels)
    self.k = min(MAX_TOP_K, classes)
    self.max_misclassified = max_misclassified
    self.confusion = np.zeros((classes, classes), np.int64)
    self.top_k_hits = 0
    self.bin_count = np.zeros(NUM_BINS, np.int64)
    self.bin_confidence = np.zeros(NUM_BINS, np.float64)
    self.bin_correct = np.zeros(NUM_BINS, np.int64)
    self.mistakes = []  # (score, id, true index, predicted index)

  @property
  def examples(self):
    return int(self.confusion.sum())

  def add(self, probabilities, true_indices, ids):
    """Counts a batch of predictions.

    Args:
      probabilities: [batch, classes] probabilities, labels' order.
      true_indices: [batch] indices of the true labels.
      ids: [batch] the examples' ids (file URIs, or indices in a split).

    Returns:
      self.
    """
    probabilities = np.asarray(probabilities, np.float64)
    true = np.asarray(true_indices, np.int64)
    if probabilities.ndim != 2 or probabilities.shape != (
        len(true), len(self.labels)):
      raise ValueError(
          f'Expected probabilities of shape [{len(true)}, '
          f'{len(self.labels)}], got {list(probabilities.shape)}.')
    if not len(true):
      return self
    predicted = np.argmax(probabilities, axis=1)  # First of ties, as Keras.
    np.add.at(self.confusion, (true, predicted), 1)
    self.top_k_hits += int(np.sum(_true_rank(probabilities, true) < self.k))
    confidence = probabilities[np.arange(len(true)), predicted]
    bins = np.minimum((confidence * NUM_BINS).astype(np.int64), NUM_BINS - 1)
    correct = predicted == true
    self.bin_count += np.bincount(bins, minlength=NUM_BINS)
    self.bin_confidence += np.bincount(bins, confidence, minlength=NUM_BINS)
    self.bin_correct += np.bincount(bins[correct], minlength=NUM_BINS)
    wrong = np.flatnonzero(~correct)
    self._keep_mistakes(
        (float(confidence[i]), _plain(ids[i]), int(true[i]),
         int(predicted[i])) for i in wrong)
    return self

  def _keep_mistakes(self, mistakes):
    self.mistakes = heapq.nsmallest(
        self.max_misclassified, [*self.mistakes, *mistakes], key=_order)

  def merge(self, other):
    """Adds another `Counts` of the same labels in; returns self."""
    if other.labels != self.labels:
      raise ValueError('Cannot merge counts of different label sets.')
    self.confusion += other.confusion
    self.top_k_hits += other.top_k_hits
    self.bin_count += other.bin_count
    self.bin_confidence += other.bin_confidence
    self.bin_correct += other.bin_correct
    self._keep_mistakes(other.mistakes)
    return self

  def report(self):
    """The evaluation object of Contract 5 (JSON-safe: no NaN)."""
    examples = self.examples
    per_class = _per_class(self.confusion, self.labels)
    f1s = [entry['f1'] for entry in per_class if entry['support']]
    ece, calibration = _calibration(self.bin_count, self.bin_confidence,
                                    self.bin_correct, examples)
    return {
        'examples': examples,
        'top_k_accuracy': {
            '1': _ratio(np.trace(self.confusion), examples),
            str(self.k): _ratio(self.top_k_hits, examples)},
        'per_class': per_class,
        'macro_f1': _round(np.mean(f1s)) if f1s else None,
        'confusion_matrix': self.confusion.tolist(),
        'expected_calibration_error': ece,
        'calibration': calibration,
        'misclassified': [
            {'id': example_id, 'true': self.labels[true],
             'predicted': self.labels[predicted], 'score': _round(score)}
            for score, example_id, true, predicted in sorted(
                self.mistakes, key=_order)],
    }


def _true_rank(probabilities, true):
  """Each true label's rank (0: first) in a stable descending sort."""
  true_probability = probabilities[np.arange(len(true)), true][:, None]
  above = np.sum(probabilities > true_probability, axis=1)
  classes = np.arange(probabilities.shape[1])[None, :]
  tied_before = np.sum((probabilities == true_probability) &
                       (classes < true[:, None]), axis=1)
  return above + tied_before


def _plain(example_id):
  """An id as JSON has it: numpy integers and bytes become int and str."""
  if isinstance(example_id, bytes):
    return example_id.decode('utf-8', 'replace')
  if isinstance(example_id, np.integer):
    return int(example_id)
  if isinstance(example_id, np.ndarray):
    return _plain(example_id.item())
  return example_id


def _round(value):
  return round(float(value), _DIGITS)


def _ratio(numerator, denominator):
  return _round(numerator / denominator) if denominator else None


def _per_class(confusion, labels):
  """[{label, precision, recall, f1, support}] (see the module docstring)."""
  entries = []
  for index, label in enumerate(labels):
    hits = confusion[index, index]
    support = int(confusion[index].sum())
    predicted = int(confusion[:, index].sum())
    precision = _ratio(hits, predicted)
    recall = _ratio(hits, support)
    if recall is None:
      f1 = None
    elif not hits:
      f1 = 0.0
    else:
      f1 = _round(2 * hits / (support + predicted))
    entries.append({'label': label, 'precision': precision, 'recall': recall,
                    'f1': f1, 'support': support})
  return entries


def _calibration(count, confidence_sum, correct, examples):
  """(expected calibration error, per-bin figures)."""
  bins = []
  for index in range(NUM_BINS):
    bins.append({
        'lower': _round(index / NUM_BINS),
        'upper': _round((index + 1) / NUM_BINS),
        'count': int(count[index]),
        'confidence': _ratio(confidence_sum[index], count[index]),
        'accuracy': _ratio(correct[index], count[index])})
  if not examples:
    return None, bins
  gaps = np.abs(confidence_sum - correct)  # count * |confidence - accuracy|
  return _round(gaps.sum() / examples), bins


def accuracy(report):
  """The top-1 accuracy the report's confusion matrix implies (or None)."""
  confusion = np.asarray(report['confusion_matrix'])
  total = confusion.sum()
  return float(np.trace(confusion) / total) if total else None
