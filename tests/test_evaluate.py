"""python -m trainer.evaluate: an export's report on labelled image files,
through its serving signature; one-line errors for bad flags."""

import os

import numpy as np
import pytest

from tests import helpers
from tests.helpers import image_files
from trainer import evaluate
from trainer import evaluation


@pytest.mark.parametrize('flag_values, message', [
    ({'model_dir': ''}, 'Missing --model_dir'),
    ({'output_dir': None}, 'Missing --output_dir'),
    ({'split': 'everything'}, '--split=everything: choose one of'),
    ({'test_fraction': 1.5}, '--test_fraction=1.5: must be in'),
])
def test_bad_flags_are_refused_naming_the_flag(flag_values, message):
  values = dict(model_dir='/m', output_dir='/o', split='test',
                validation_fraction=0.1, test_fraction=0.1)
  values.update(flag_values)
  with pytest.raises(evaluate.FlagError, match=message):
    evaluate.check_flags(**values)


def test_the_command_ends_a_bad_flag_in_one_line(tmp_path):
  process = helpers.run_module('trainer.evaluate', f'--model_dir={tmp_path}',
                               f'--output_dir={tmp_path / "out"}',
                               check=False)
  assert process.returncode == 2
  errors = [line for line in process.stderr.splitlines()
            if 'no model artifact there' in line]
  assert len(errors) == 1 and 'Traceback' not in process.stderr


@pytest.mark.slow  # Reads the bundled digits, loads the export: ~6 s.
def test_an_export_evaluated_on_labelled_files_reports_them_by_uri(
    trained_export, tmp_path):
  written = image_files.write_digit_folder(str(tmp_path / 'digits'), 40)
  report = evaluate.run(str(trained_export), str(tmp_path / 'out'),
                        dataset='image_folder',
                        data_dir=str(tmp_path / 'digits'), split='all',
                        validation_fraction=0.0, test_fraction=0.0)
  assert helpers.read_json(str(tmp_path / 'out' / 'evaluation.json')) == (
      report)
  for name in ('evaluation.png', 'misclassified.png'):
    assert os.path.getsize(tmp_path / 'out' / name) > 10_000
  confusion = np.array(report['confusion_matrix'])
  truth = dict(written)
  assert confusion.sum() == report['examples'] == len(written)
  assert list(confusion.sum(axis=1)) == [
      sum(1 for _, digit in written if digit == label) for label in range(10)]
  assert evaluation.accuracy(report) > 0.6
  for entry in report['misclassified']:
    assert entry['true'] == str(truth[entry['id']]) != entry['predicted']
