"""The job dir: its layout, and what an earlier run in it means for this one."""

import os
import shutil
import subprocess
import sys

import pytest

from trainer import config as config_lib
from trainer import job_dir as job_dir_lib
from trainer import storage
from tests import helpers
from trainer import artifact


def _config(tmp_path, **overrides):
  return config_lib.build(overrides=dict(
      {'job_dir': str(tmp_path / 'job'), 'model': 'deep_mnist', 'epochs': 2},
      **overrides))


def test_the_layout_follows_the_job_dir_unless_a_folder_is_given(tmp_path):
  layout = job_dir_lib.Layout.from_config(_config(tmp_path))
  job = str(tmp_path / 'job')
  assert (layout.checkpoint_dir, layout.log_dir, layout.export_dir) == (
      f'{job}/checkpoints', f'{job}/logs', f'{job}/export')
  assert (layout.metrics_path, layout.config_path, layout.lease_path) == (
      f'{job}/metrics.json', f'{job}/config.yaml', f'{job}/_LEASE')
  assert layout.chart_path == f'{job}/training_curves.png'
  vertex = job_dir_lib.Layout.from_config(_config(
      tmp_path, export_dir='/gcs/b/model/', checkpoint_dir='/aip/ckpt'))
  assert (vertex.export_dir, vertex.checkpoint_dir) == ('gs://b/model',
                                                        '/aip/ckpt')


def _leave_a_run(tmp_path, config, finished):
  """What a run of `config` leaves: config.yaml, a backup, maybe more."""
  layout = job_dir_lib.Layout.from_config(config)
  config_lib.save(config, layout.config_path)
  storage.write_json(storage.join(layout.checkpoint_dir,
                                  job_dir_lib.RESUME_RECORD), {'epoch': 1})
  if finished:
    storage.write_json(layout.metrics_path, {'test_accuracy': 0.9})
    storage.write_text(storage.join(layout.export_dir,
                                    artifact.COMPLETE_MARKER), '')
  return layout


def test_previous_runs_are_new_resumable_or_finished(tmp_path):
  config = _config(tmp_path)
  layout = job_dir_lib.Layout.from_config(config)
  assert job_dir_lib.previous_run_state(layout, config) is (
      job_dir_lib.RunState.NEW)
  _leave_a_run(tmp_path, config, finished=False)
  assert job_dir_lib.previous_run_state(layout, config) is (
      job_dir_lib.RunState.RESUMABLE)
  _leave_a_run(tmp_path, config, finished=True)
  assert job_dir_lib.previous_run_state(layout, config) is (
      job_dir_lib.RunState.FINISHED)
  # Where it runs and how does not change what is trained.
  elsewhere = _config(tmp_path, strategy='mirrored', cache='none')
  assert job_dir_lib.previous_run_state(layout, elsewhere) is (
      job_dir_lib.RunState.FINISHED)


@pytest.mark.parametrize('finished, what', [(True, 'finished run'),
                                            (False, 'checkpoint')])
@pytest.mark.parametrize('change, described', [
    ({'epochs': 1}, 'epochs: 2 -> 1'),
    ({'epochs': 3, 'learning_rate': 0.01}, 'learning_rate: 0.001 -> 0.01'),
])
def test_a_run_of_another_configuration_is_refused(tmp_path, finished, what,
                                                   change, described):
  layout = _leave_a_run(tmp_path, _config(tmp_path), finished)
  with pytest.raises(config_lib.ConfigError) as raised:
    job_dir_lib.previous_run_state(layout, _config(tmp_path, **change))
  message = str(raised.value)
  assert message.startswith(f'job_dir: {layout.job_dir} holds a {what} of '
                            f'a different configuration ({described})')
  assert '--start_fresh' in message


@pytest.mark.parametrize('finished', [True, False])
def test_more_epochs_extend_a_finished_or_interrupted_run(tmp_path, finished):
  layout = _leave_a_run(tmp_path, _config(tmp_path), finished)
  assert job_dir_lib.previous_run_state(layout, _config(
      tmp_path, epochs=3)) is job_dir_lib.RunState.RESUMABLE


def test_a_finished_run_without_its_backup_cannot_be_extended(tmp_path):
  layout = _leave_a_run(tmp_path, _config(tmp_path), finished=True)
  storage.delete_tree(layout.checkpoint_dir)
  with pytest.raises(config_lib.ConfigError,
                     match='without its backup .* cannot be extended to 3'):
    job_dir_lib.previous_run_state(layout, _config(tmp_path, epochs=3))


@pytest.mark.slow
def test_extending_a_finished_run_trains_one_more_epoch_and_exports(
    trained_job_dir, tmp_path):
  # A copy of the session's finished 2-epoch run (config.yaml names the
  # original job dir: where outputs go does not change what is trained).
  job_dir = str(tmp_path / 'job')
  shutil.copytree(trained_job_dir, job_dir)
  before = helpers.read_json(os.path.join(job_dir, 'metrics.json'))
  helpers.train_in_process(job_dir=job_dir, epochs=3, train_examples=1000,
                           model='deep_mnist')
  metrics = helpers.read_json(os.path.join(job_dir, 'metrics.json'))
  assert metrics['epochs'] == 3 and metrics['resumed_from_epoch'] == 2
  history = metrics['history']
  assert [entry['epoch'] for entry in history] == [1, 2, 3]
  assert history[:2] == before['history']
  assert history[2]['attempt'] == history[1]['attempt'] + 1
  assert helpers.read_json(os.path.join(
      job_dir, 'checkpoints', 'history.json')) == history
  assert artifact.read_metadata(os.path.join(job_dir, 'export'))[
      'metrics']['test_accuracy'] == metrics['test_accuracy']


def test_start_fresh_discards_on_the_chief_only(tmp_path):
  config = _config(tmp_path)
  _leave_a_run(tmp_path, config, finished=True)
  fresh = _config(tmp_path, epochs=3, start_fresh=True)
  layout = job_dir_lib.Layout.from_config(fresh)
  assert job_dir_lib.start(layout, fresh, is_chief=False) is (
      job_dir_lib.RunState.NEW)
  assert os.path.exists(layout.metrics_path)  # Other workers delete nothing.
  assert job_dir_lib.start(layout, fresh, is_chief=True) is (
      job_dir_lib.RunState.NEW)
  assert not os.path.exists(layout.metrics_path)
  assert not os.path.exists(layout.checkpoint_dir)
  assert not os.path.exists(layout.export_dir)
  assert os.path.exists(layout.config_path)  # The new run replaces it.


def test_the_layout_and_the_config_import_no_tensorflow():
  # The trainer takes its lease (at Layout.lease_path) before TensorFlow.
  code = ('import sys; from trainer import job_dir, task; '
          'print(sorted(m for m in ("tensorflow", "keras") if m in '
          'sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], cwd=helpers.REPO,
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == '[]'
