"""Preemption: runs killed with SIGKILL or SIGTERM resume where they were."""

import os
import shutil
import signal

import pytest

import tensorflow as tf

from tests.helpers import processes
from trainer import config as config_lib
from trainer import job_dir as job_dir_lib
from trainer import run_context
from trainer import storage
from trainer import train
from trainer.data import pipeline
from tests import helpers
from trainer import artifact

EPOCHS = 3


# Epochs of 150 steps: long enough (about a second each on a quiet machine)
# to land the signal inside the run, short enough for CI.
_SETTINGS = {'model': 'softmax', 'epochs': EPOCHS, 'steps_per_epoch': 150,
             'train_examples': 2000}


def _args(job_dir, *extra):
  return [f'--job_dir={job_dir}',
          *(f'--{key}={value}' for key, value in _SETTINGS.items()), *extra]


def _resume_in_process(job_dir):
  """What `python -m trainer.task *_args(job_dir)` trains, in this process
  (helpers.train_in_process), without a second TensorFlow start-up."""
  return helpers.train_in_process(job_dir=job_dir, **_SETTINGS)


def _assert_resumed(metrics, killed_at):
  """The rerun trained only the epochs the first attempt had not finished."""
  assert metrics['resumed_from_epoch'] == killed_at
  history = metrics['history']
  assert [entry['epoch'] for entry in history] == list(range(1, EPOCHS + 1))
  assert [entry['attempt'] for entry in history] == (
      [1] * killed_at + [2] * (EPOCHS - killed_at))
  assert 0 < metrics['test_accuracy'] <= 1 and metrics['test_loss'] > 0


def _kill_after_first_epoch(tmp_path, args, signum, backup_epoch):
  """Starts a run, signals it once an epoch is backed up; returns its status."""
  log = str(tmp_path / 'first.log')
  process = processes.start_module('trainer.task', *args, log_path=log)
  try:
    processes.wait_until(lambda: backup_epoch() >= 1, [process],
                         'a backup of epoch 1', logs=[log])
    process.send_signal(signum)
    return process.wait(timeout=300), log
  finally:
    if process.poll() is None:
      process.kill()


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGKILL, signal.SIGTERM],
                         ids=['SIGKILL', 'SIGTERM'])
def test_a_killed_run_resumes_at_the_epoch_it_was_in(tmp_path, signum):
  job_dir = tmp_path / 'job'
  checkpoints = str(job_dir / 'checkpoints')
  status, log = _kill_after_first_epoch(
      tmp_path, _args(job_dir), signum,
      lambda: processes.saved_epoch(checkpoints))
  killed_at = processes.saved_epoch(checkpoints)
  assert 1 <= killed_at < EPOCHS and not (job_dir / 'metrics.json').exists(), (
      'the first run was not stopped mid-way')
  if signum == signal.SIGKILL:
    assert status == -signal.SIGKILL
  else:
    # It stopped by itself, resumably, with the conventional status.
    assert status == 128 + signal.SIGTERM, processes.read_log(log)[-3000:]
    assert 'Stopped on SIGTERM' in processes.read_log(log)

  # The same run again, in this process: resuming is train.run's (the
  # command's rerun of a killed job dir is test_task.py's).
  _resume_in_process(str(job_dir))

  metrics = helpers.read_json(str(job_dir / 'metrics.json'))
  _assert_resumed(metrics, killed_at)
  assert artifact.is_complete(str(job_dir / 'export'))


@pytest.mark.slow
def test_sigterm_on_a_gcs_job_dir_pushes_the_backup_and_resumes(gcs_server,
                                                                 tmp_path):
  # TensorFlow writes to a local copy of gs:// folders; the local copy dies
  # with the process, so resuming needs the backup pushed to the bucket.
  from trainer import storage  # pylint: disable=g-import-not-at-top
  job_dir = 'gs://test-bucket/job'
  record = f'{job_dir}/checkpoints/backup/training_metadata.json'

  def remote_epoch():
    return storage.read_json(record)['epoch'] if storage.exists(record) else 0

  status, log = _kill_after_first_epoch(tmp_path, _args(job_dir),
                                        signal.SIGTERM, remote_epoch)
  assert status == 128 + signal.SIGTERM, processes.read_log(log)[-3000:]
  killed_at = remote_epoch()
  assert 1 <= killed_at < EPOCHS
  assert not storage.exists(f'{job_dir}/metrics.json')

  _resume_in_process(job_dir)  # From the bucket alone: a new process would.

  _assert_resumed(storage.read_json(f'{job_dir}/metrics.json'), killed_at)
  assert artifact.is_complete(f'{job_dir}/export')


@pytest.mark.slow
def test_another_model_on_a_reused_checkpoint_dir_fails_then_start_fresh(
    trained_job_dir, tmp_path):
  # A shared checkpoint folder (--checkpoint_dir, or Vertex's
  # AIP_CHECKPOINT_DIR) has no config.yaml beside it: the backup's own record
  # of its configuration catches the mismatch, before any training.
  shared = str(tmp_path / 'shared_checkpoints')
  shutil.copytree(os.path.join(trained_job_dir, 'checkpoints'), shared)
  args = [f'--job_dir={tmp_path / "job"}', f'--checkpoint_dir={shared}',
          '--epochs=2', '--train_examples=1000', '--model=softmax']
  process = helpers.run_module('trainer.task', *args, check=False)
  assert process.returncode == 2
  assert f'Cannot resume from {shared}/backup' in process.stderr
  assert "model: 'deep_mnist' -> 'softmax'" in process.stderr
  assert '--start_fresh' in process.stderr
  assert 'Epoch 1/' not in process.stderr
  assert not (tmp_path / 'job' / 'metrics.json').exists()

  # The same command with --start_fresh, in this process (the refusal
  # above is the command's; starting fresh is train.run's).
  helpers.train_in_process(
      job_dir=str(tmp_path / 'job'), checkpoint_dir=shared, epochs=2,
      train_examples=1000, model='softmax', start_fresh=True)
  metrics = helpers.read_json(str(tmp_path / 'job' / 'metrics.json'))
  assert metrics['resumed_from_epoch'] == 0 and metrics['model'] == 'softmax'
  assert processes.saved_epoch(shared) == 2


@pytest.mark.slow  # 7.0 s here: over the fast tier's ~1.5 s a test.
def test_a_resumed_run_does_not_replay_the_first_epochs_shuffle(
    tmp_path, monkeypatch):
  config = config_lib.build(overrides={
      'job_dir': str(tmp_path / 'job'), 'model': 'softmax', 'epochs': 2,
      'train_examples': 64, 'batch_size': 32})
  strategy = tf.distribute.get_strategy()
  seeds = []
  make_dataset = pipeline.make_dataset

  def spy(source, split, *args, **kwargs):
    if kwargs.get('training'):
      seeds.append(kwargs['seed'])
    return make_dataset(source, split, *args, **kwargs)

  monkeypatch.setattr(pipeline, 'make_dataset', spy)
  train.run(run_context.create(config, strategy))
  # A crash during epoch 2: the record still names the backup of epoch 1.
  layout = job_dir_lib.Layout.from_config(config)
  record_path = os.path.join(layout.checkpoint_dir,
                             job_dir_lib.RESUME_RECORD)
  record = storage.read_json(record_path)
  storage.write_json(record_path, dict(record['previous'], previous=None,
                                       config=record['config']))
  os.remove(layout.metrics_path)
  shutil.rmtree(layout.export_dir)
  resumed = train.run(run_context.create(config, strategy))
  assert resumed['resumed_from_epoch'] == 1
  # Seeded alike, the rerun's epoch 2 would see epoch 1's order again.
  assert seeds == [config.seed, config.seed + 1]
