"""Training-curve charts and Vertex AI hyperparameter-tuning reports."""

import json
import sys

import keras
import numpy as np
import pytest

from trainer import curves
from trainer import hptuning
from tests import helpers

HISTORY = [
    {'epoch': 1, 'loss': 1.0, 'accuracy': 0.6, 'val_loss': 0.9,
     'val_accuracy': 0.65},
    {'epoch': 2, 'loss': 0.5, 'accuracy': 0.8, 'val_loss': 0.6,
     'val_accuracy': 0.75},
]


def test_chart_is_a_png(tmp_path):
  path = str(tmp_path / 'curves.png')
  assert curves.write_chart(HISTORY, path, 'test run')
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_chart_is_skipped_without_matplotlib(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # Import fails.
  path = tmp_path / 'curves.png'
  assert not curves.write_chart(HISTORY, str(path), 'test run')
  assert not path.exists()


def _fit_with(callback, epochs=2):
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  model.compile('sgd', keras.losses.SparseCategoricalCrossentropy(
      from_logits=True), metrics=['accuracy'])
  x = np.random.default_rng(0).random((8, 3)).astype(np.float32)
  y = np.arange(8) % 2
  model.fit(x, y, validation_data=(x, y), epochs=epochs, verbose=0,
            callbacks=[callback])


def test_tuning_metric_is_reported_each_epoch(tmp_path, monkeypatch):
  metrics_file = tmp_path / 'hypertune' / 'output.metrics'
  monkeypatch.setenv('CLOUD_ML_HP_METRIC_FILE', str(metrics_file))
  _fit_with(hptuning.ReportMetric('val_accuracy'), epochs=3)
  reports = [json.loads(line) for line in metrics_file.read_text().split(
      '\n') if line]
  assert [r['global_step'] for r in reports] == ['1', '2', '3']
  assert all(0.0 <= float(r['val_accuracy']) <= 1.0 for r in reports)


def test_unknown_tuning_metric_fails_loudly(tmp_path, monkeypatch):
  monkeypatch.setenv('CLOUD_ML_HP_METRIC_FILE', str(tmp_path / 'm'))
  with pytest.raises(KeyError, match='val_auc'):
    _fit_with(hptuning.ReportMetric('val_auc'))


def test_missing_hypertune_package_is_explained(monkeypatch):
  monkeypatch.setitem(sys.modules, 'hypertune', None)
  with pytest.raises(hptuning.MissingDependencyError, match=r'\[hypertune\]'):
    hptuning.check_available()


def test_vertex_tuning_study_matches_the_trainer_flags():
  import os  # pylint: disable=g-import-not-at-top
  import yaml  # pylint: disable=g-import-not-at-top
  from trainer import config as config_lib  # pylint: disable=g-import-not-at-top
  with open(os.path.join(helpers.REPO, 'config/vertex/hptuning_job.yaml')) as f:
    job = yaml.safe_load(f)
  for parameter in job['studySpec']['parameters']:
    assert parameter['parameterId'] in config_lib.FIELDS
  args = job['trialJobSpec']['workerPoolSpecs'][0]['containerSpec']['args']
  config_file = next(a.split('=', 1)[1] for a in args
                     if a.startswith('--config='))
  values = config_lib.load_file(os.path.join(helpers.REPO, config_file))
  metric = job['studySpec']['metrics'][0]['metricId']
  assert values['hypertune_metric'] == metric


@pytest.mark.slow
def test_trainer_reports_the_tuning_metric_to_vertex(tmp_path, monkeypatch):
  metrics_file = tmp_path / 'hypertune' / 'output.metrics'
  # cloudml-hypertune reads the variable when the run creates its reporter.
  monkeypatch.setenv('CLOUD_ML_HP_METRIC_FILE', str(metrics_file))
  helpers.train_in_process(
      job_dir=f'{tmp_path}/job', model='softmax', epochs=2, steps_per_epoch=2,
      train_examples=256, hypertune_metric='val_accuracy')
  reports = [json.loads(line) for line in metrics_file.read_text().split(
      '\n') if line]
  history = json.loads((tmp_path / 'job' / 'metrics.json').read_text())[
      'history']
  assert [float(r['val_accuracy']) for r in reports] == pytest.approx(
      [entry['val_accuracy'] for entry in history])
