"""batch_predict --evaluate: the report from Beam combiners, equal to
trainer.evaluate's on the same labelled files."""

import os

from apache_beam.testing import test_pipeline
import numpy as np
import pytest

from batch_predict import evaluation as scorer_evaluation
from batch_predict import options as options_lib
from batch_predict import outputs
from batch_predict import pipeline
from tests import helpers
from tests.helpers import image_files
from trainer import evaluate
from trainer import evaluation
from trainer import storage

_LABELS = ('a', 'b', 'c')


def _scored(count, seed=0):
  rng = np.random.default_rng(seed)
  probabilities = rng.dirichlet(np.ones(3), size=count).astype(np.float32)
  labels = rng.integers(0, 3, size=count)
  return [(f'gs://b/{i:03d}.png', _LABELS[label], row)
          for i, (label, row) in enumerate(zip(labels, probabilities))]


def test_merged_partial_combines_equal_one_count_of_everything():
  scored = _scored(1200)  # More than one internal batch of additions.
  combine = scorer_evaluation.EvaluateFn(_LABELS)
  parts = []
  for start in range(0, len(scored), 350):
    accumulator = combine.create_accumulator()
    for element in scored[start:start + 350]:
      accumulator = combine.add_input(accumulator, element)
    parts.append(accumulator)
  extra = combine.add_input(combine.create_accumulator(),
                            ('gs://b/x.png', None, scored[0][2]))
  extra = combine.add_input(extra, ('gs://b/y.png', 'zebra', scored[0][2]))
  report = combine.extract_output(
      combine.merge_accumulators(parts[::-1] + [extra]))
  expected = evaluation.Counts(_LABELS).add(
      np.stack([row for _, _, row in scored]),
      [_LABELS.index(label) for _, label, _ in scored],
      [uri for uri, _, _ in scored]).report()
  assert report.pop('not_evaluated') == {'unlabelled': 1, 'unknown_label': 1}
  assert report['confusion_matrix'] == expected['confusion_matrix']
  assert report['misclassified'] == expected['misclassified']
  for key in ('top_k_accuracy', 'per_class', 'macro_f1', 'examples'):
    assert report[key] == expected[key], key
  # Equal up to the order floating-point sums were added in.
  for key in ('calibration', 'expected_calibration_error'):
    assert report[key] == pytest.approx(expected[key], abs=1e-6), key


@pytest.mark.slow  # A multi-process Beam pipeline and a real model: ~20 s.
def test_the_pipelines_report_equals_trainer_evaluates_on_the_same_files(
    trained_export, tmp_path):
  folder = tmp_path / 'digits'
  written = image_files.write_digit_folder(str(folder), 30)
  (folder / 'unlabelled.png').write_bytes(
      open(written[0][0], 'rb').read())  # No class folder: not evaluated.
  (folder / '3' / 'broken.png').write_bytes(b'not an image')  # An error.
  prefix = str(tmp_path / 'scores' / 'digits')
  pipeline.run([f'--model_dir={trained_export}', f'--input={folder}',
                f'--output={prefix}', '--num_shards=2',
                '--labels_from_folders', '--evaluate', '--max_batch_size=16',
                '--direct_num_workers=2',
                '--direct_running_mode=multi_processing'],
               save_main_session=False)
  scored = helpers.read_json(f'{prefix}-evaluation.json')
  assert os.path.getsize(f'{prefix}-evaluation.png') > 10_000
  assert scored.pop('not_evaluated') == {'unlabelled': 1, 'unknown_label': 0,
                                         'errors': 1}
  direct = evaluate.run(trained_export, str(tmp_path / 'direct'),
                        dataset='image_folder', data_dir=str(folder),
                        split='all', validation_fraction=0.0,
                        test_fraction=0.0)
  assert scored['examples'] == len(written) == direct['examples']
  assert scored['confusion_matrix'] == direct['confusion_matrix']
  assert scored['top_k_accuracy'] == direct['top_k_accuracy']
  assert [(m['id'], m['true'], m['predicted']) for m in
          scored['misclassified']] == [(m['id'], m['true'], m['predicted'])
                                       for m in direct['misclassified']]
  for key in ('per_class', 'macro_f1', 'calibration',
              'expected_calibration_error'):
    assert scored[key] == pytest.approx(direct[key], abs=1e-5), key
  # A rerun without --evaluate removes the report of other predictions.
  pipeline.run([f'--model_dir={trained_export}', f'--input={folder}',
                f'--output={prefix}', '--num_shards=2'],
               test_pipeline=test_pipeline.TestPipeline())
  assert not os.path.exists(f'{prefix}-evaluation.json')
  assert len(outputs.find_shards(prefix)) == 4


def test_evaluate_without_labels_is_refused_before_any_work(
    trained_export, tmp_path):
  (tmp_path / 'digit.png').write_bytes(b'not read')
  with pytest.raises(options_lib.ConfigError, match='--labels_from_folders'):
    pipeline.run([f'--model_dir={trained_export}', f'--input={tmp_path}',
                  f'--output={tmp_path / "out"}', '--evaluate'])


def _stage_shards(prefix, run_id):
  staging = outputs.staging_folder(prefix, run_id)
  staged = []
  for name in outputs.OUTPUT_NAMES:
    path = storage.join(staging, storage.basename(
        outputs.shard_path(prefix, name, 0, 1)))
    storage.write_text(path, '')
    staged.append(path)
  return staging, staged


def test_the_report_is_published_with_the_shards_and_a_stale_one_removed(
    tmp_path):
  prefix = str(tmp_path / 'scores')
  staging, staged = _stage_shards(prefix, 'a' * 32)
  report = storage.join(staging, 'scores-evaluation.json')
  storage.write_text(report, '{}')
  published = outputs.publish(prefix, 'a' * 32, staged + [report],
                              outputs.OUTPUT_NAMES, 1,
                              files=outputs.EVALUATION_FILES)
  assert f'{prefix}-evaluation.json' in published
  assert not os.path.exists(staging)
  # The next run evaluates nothing: the old report goes with the old shards.
  _, staged = _stage_shards(prefix, 'b' * 32)
  outputs.publish(prefix, 'b' * 32, staged, outputs.OUTPUT_NAMES, 1,
                  files=outputs.EVALUATION_FILES)
  assert sorted(os.listdir(tmp_path)) == ['scores-errors-00000-of-00001.jsonl',
                                          'scores-predictions-00000-of-00001.'
                                          'jsonl']


def test_a_killed_runs_staged_report_is_cleaned_up(tmp_path):
  prefix = str(tmp_path / 'scores')
  staging, _ = _stage_shards(prefix, 'c' * 32)
  storage.write_text(storage.join(staging, 'scores-evaluation.png'), 'x')
  outputs.remove_staging_folders(prefix)
  assert os.listdir(tmp_path) == []
