"""Publishing: finite weights only, the lease first, metrics.json last."""

import os

import pytest
import tensorflow as tf

from trainer import callbacks
from trainer import checkpoints
from trainer import cluster
from trainer import config as config_lib
from trainer import export
from trainer import job_dir as job_dir_lib
from trainer import lease as lease_lib
from trainer import models
from trainer import publish
from trainer import run_context
from trainer import storage
from trainer.data import sources
from trainer import artifact

_HISTORY = [{'epoch': 1, 'loss': 1.0, 'accuracy': 0.5}]


def test_non_finite_weights_are_refused():
  model = models.build_model('softmax', (28, 28, 1), 10)
  publish.check_finite_weights(model, 0.5)
  model.weights[0].assign(model.weights[0] * float('nan'))
  with pytest.raises(callbacks.TrainingDiverged, match='weight tensor'):
    publish.check_finite_weights(model, 0.5)


class _TakenOver:
  """A lease whose holder lost it to another run."""

  def check(self):
    raise lease_lib.LeaseError('JOB is in use by another run.')


@pytest.fixture
def publishing(tmp_path):
  """(publish(task=..., lease=...), layout): a softmax model to publish."""
  config = config_lib.build(overrides={'job_dir': str(tmp_path / 'job'),
                                       'model': 'softmax'})
  layout = job_dir_lib.Layout.from_config(config)
  model = models.build_model('softmax', config.image_shape, 10)
  source = sources.Source(
      sources.DatasetInfo('mnist_sample', tuple('0123456789'), {}), None, 0)
  opened = []

  def run(task=cluster.TaskInfo(), lease=None):
    context = run_context.RunContext(
        config=config, strategy=tf.distribute.get_strategy(), layout=layout,
        task=task, lease=lease)
    opened.append(checkpoints.WorkDirs(layout.checkpoint_dir, layout.log_dir,
                                       task))
    publish.publish(model, context, source, opened[-1],
                    {'test_accuracy': 0.5, 'history': _HISTORY})
    return opened[-1]

  yield run, layout
  for dirs in opened:
    dirs.close()


def test_the_chief_publishes_the_export_chart_and_metrics(publishing):
  run, layout = publishing
  run()
  assert artifact.is_complete(layout.export_dir)
  assert artifact.read_metadata(layout.export_dir)['metrics'] == {
      'test_accuracy': 0.5}
  assert os.path.exists(layout.chart_path)
  assert storage.read_json(layout.metrics_path)['history'] == _HISTORY


def test_a_failed_export_publishes_no_metrics(publishing, monkeypatch):
  run, layout = publishing

  def full_disk(*unused_args):
    raise storage.WriteError('Not enough space in EXPORT for the export.')

  monkeypatch.setattr(export, 'export_model', full_disk)
  with pytest.raises(storage.WriteError, match='Not enough space'):
    run()
  # metrics.json (with a complete export, a finished run) never comes first.
  assert not os.path.exists(layout.metrics_path)
  assert not os.path.exists(layout.chart_path)


def test_a_run_whose_lease_was_taken_over_publishes_nothing(publishing):
  run, layout = publishing
  with pytest.raises(lease_lib.LeaseError):
    run(lease=_TakenOver())
  assert not os.path.exists(layout.export_dir)
  assert not os.path.exists(layout.metrics_path)


def test_other_workers_write_a_copy_that_is_thrown_away(publishing,
                                                        monkeypatch,
                                                        tmp_path):
  run, layout = publishing
  monkeypatch.setattr('tempfile.tempdir', str(tmp_path))
  dirs = run(task=cluster.TaskInfo('worker', 1, num_tasks=2))
  copies = [name for name in os.listdir(tmp_path) if '-export-' in name]
  assert copies and all(name.startswith('worker1') for name in copies)
  assert not os.path.exists(layout.export_dir)
  assert not os.path.exists(layout.metrics_path)
  dirs.close()
  assert not [name for name in os.listdir(tmp_path) if '-export-' in name]
