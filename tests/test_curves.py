"""The training-curves chart: limits, marks, and the PNG itself."""

import pytest

from trainer import curves


def _history():
  history = [{'epoch': 1, 'loss': 2.3, 'val_loss': 2.4, 'accuracy': 0.5,
              'val_accuracy': 0.25, 'attempt': 1, 'phase': 'head'}]
  for epoch in range(2, 7):
    history.append({'epoch': epoch, 'loss': 0.3 / epoch,
                    'val_loss': 0.35 / epoch, 'accuracy': 0.9 + epoch / 100,
                    'val_accuracy': 0.88 + epoch / 100,
                    'attempt': 1 if epoch < 4 else 2,
                    'phase': 'head' if epoch < 5 else 'fine_tune'})
  return history


def test_an_outlying_first_epoch_does_not_set_the_limits():
  low, high = curves.value_limits([2.3, 0.15, 0.1, 0.075])
  assert high < 0.2 and low < 0.075
  # Too few later epochs: every value counts.
  low, high = curves.value_limits([2.3, 0.15])
  assert high > 2.3 and low < 0.15
  assert curves.value_limits([None, None]) is None
  low, high = curves.value_limits([0.5, 0.5, 0.5])  # A flat line.
  assert low < 0.5 < high


def test_resume_and_fine_tuning_points_come_from_the_history():
  history = _history()
  assert curves.resumed_epochs(history) == [4]
  assert curves.fine_tune_start(history) == 5
  assert curves.resumed_epochs(history[:3]) == []
  assert curves.fine_tune_start(history[:3]) is None


def test_the_chart_is_a_png(tmp_path):
  pytest.importorskip('matplotlib')
  path = str(tmp_path / curves.CHART_FILE)
  assert curves.write_chart(_history(), path, 'cnn_bn', test_accuracy=0.95)
  with open(path, 'rb') as f:
    assert f.read(4) == b'\x89PNG'
  assert not curves.write_chart([], path, 'cnn_bn')
