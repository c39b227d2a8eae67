"""The evaluation report's metrics, against cases computed by hand."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers
from trainer import evaluation

# Three classes: 'b' occurs but is never predicted, 'c' is predicted once
# but never occurs.
_LABELS = ('a', 'b', 'c')
_PROBABILITIES = [
    [0.90, 0.05, 0.05],  # a -> a, confidence 0.90 (bin 13), right
    [0.62, 0.28, 0.10],  # a -> a, 0.62 (bin 9), right
    [0.20, 0.30, 0.50],  # a -> c, 0.50 (bin 7), wrong
    [0.70, 0.20, 0.10],  # b -> a, 0.70 (bin 10), wrong
    [0.45, 0.30, 0.25],  # b -> a, 0.45 (bin 6), wrong
]
_TRUE = [0, 0, 0, 1, 1]


def _counts(rows=slice(None), **kwargs):
  ids = list(range(len(_TRUE)))[rows]
  return evaluation.Counts(_LABELS, **kwargs).add(
      np.array(_PROBABILITIES)[rows], np.array(_TRUE)[rows], ids)


def test_the_report_matches_the_case_computed_by_hand():
  report = _counts().report()
  assert report['examples'] == 5
  assert report['confusion_matrix'] == [[2, 0, 1], [2, 0, 0], [0, 0, 0]]
  assert report['top_k_accuracy'] == {'1': 0.4, '3': 1.0}
  a, b, c = report['per_class']
  assert a == {'label': 'a', 'precision': 0.5, 'recall': pytest.approx(2 / 3),
               'f1': pytest.approx(4 / 7), 'support': 3}
  # Never predicted: no precision; occurs, so every one was missed: F1 0.
  assert b == {'label': 'b', 'precision': None, 'recall': 0.0, 'f1': 0.0,
               'support': 2}
  # Never occurs: predicted once, wrongly; no recall, no F1.
  assert c == {'label': 'c', 'precision': 0.0, 'recall': None, 'f1': None,
               'support': 0}
  assert report['macro_f1'] == pytest.approx((4 / 7 + 0) / 2, abs=1e-6)
  # (|0.9 - 1| + |0.62 - 1| + 0.5 + 0.7 + 0.45) / 5
  assert report['expected_calibration_error'] == pytest.approx(0.426)
  bins = {index: entry for index, entry in enumerate(report['calibration'])
          if entry['count']}
  assert sorted(bins) == [6, 7, 9, 10, 13]
  assert bins[13] == {'lower': pytest.approx(13 / 15, abs=1e-6),
                      'upper': pytest.approx(14 / 15, abs=1e-6), 'count': 1,
                      'confidence': 0.9, 'accuracy': 1.0}
  assert bins[10]['accuracy'] == 0.0
  assert report['calibration'][0] == {'lower': 0.0, 'upper': pytest.approx(
      1 / 15, abs=1e-6), 'count': 0, 'confidence': None, 'accuracy': None}
  assert report['misclassified'] == [
      {'id': 3, 'true': 'b', 'predicted': 'a', 'score': 0.7},
      {'id': 2, 'true': 'a', 'predicted': 'c', 'score': 0.5},
      {'id': 4, 'true': 'b', 'predicted': 'a', 'score': 0.45}]
  json.dumps(report, allow_nan=False)  # Strict JSON: no NaN anywhere.


def test_top_k_counts_ties_in_label_order():
  labels = tuple('abcdefg')  # K = 5.
  uniform = np.full(7, 1 / 7)
  peaked = np.array([0.4, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02])
  report = evaluation.Counts(labels).add(
      [peaked, peaked, peaked, uniform, uniform], [0, 4, 5, 4, 5],
      ['p0', 'p4', 'p5', 'u4', 'u5']).report()
  # Ranks 0, 4, 5 and, among equal scores, 4 and 5 by label order.
  assert report['top_k_accuracy'] == {'1': 0.2, '5': 0.6}


def test_merging_partial_counts_gives_the_whole_report():
  whole = _counts(max_misclassified=2).report()
  for split in (2, 3, 4):
    first = _counts(slice(None, split), max_misclassified=2)
    second = _counts(slice(split, None), max_misclassified=2)
    assert second.merge(first).report() == whole
  assert [entry['id'] for entry in whole['misclassified']] == [3, 2]


def test_equal_scores_keep_the_smallest_ids_whatever_the_order():
  counts = [evaluation.Counts(('x', 'y'), max_misclassified=2).add(
      [[0.8, 0.2]], [1], [name]) for name in ('d', 'b', 'c', 'a')]
  merged = counts[0]
  for other in counts[1:]:
    merged.merge(other)
  assert [m['id'] for m in merged.report()['misclassified']] == ['a', 'b']


def test_no_examples_gives_nulls_not_nan():
  report = evaluation.Counts(_LABELS).report()
  assert report['top_k_accuracy'] == {'1': None, '3': None}
  assert report['macro_f1'] is None
  assert report['expected_calibration_error'] is None
  assert evaluation.accuracy(report) is None
  json.dumps(report, allow_nan=False)


def test_a_confidence_of_one_falls_in_the_last_bin():
  report = evaluation.Counts(('x', 'y')).add([[1.0, 0.0]], [0], [0]).report()
  assert report['calibration'][-1]['count'] == 1


def test_a_batch_of_the_wrong_shape_is_refused():
  with pytest.raises(ValueError, match='shape'):
    evaluation.Counts(_LABELS).add([[0.5, 0.5]], [0], [0])


def test_the_metrics_import_neither_tensorflow_nor_keras():
  # The scorer's workers import this module (README, Development).
  child = subprocess.run(
      [sys.executable, '-c', 'import sys, trainer.evaluation; '
       'print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))'],
      capture_output=True, text=True, check=True,
      env=dict(os.environ, PYTHONPATH=helpers.REPO))
  assert child.stdout.strip() == '[]'
