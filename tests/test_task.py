"""End to end: `python -m trainer.task` as users run it, and its failures."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.helpers import disks
from tests.helpers import processes
from tests.helpers import image_files
from tests import helpers
from trainer import artifact


def test_default_command_leaves_every_output_of_contract_1(trained_job_dir):
  # `trained_job_dir` ran `python -m trainer.task --job_dir=...` with small
  # settings in a subprocess (see conftest).
  names = sorted(os.listdir(trained_job_dir))
  assert names == ['checkpoints', 'config.yaml', 'evaluation.png', 'export',
                   'logs', 'metrics.json', 'misclassified.png',
                   'training_curves.png']
  with open(os.path.join(trained_job_dir, 'training_curves.png'), 'rb') as f:
    assert f.read(4) == b'\x89PNG'
  metrics = helpers.read_json(os.path.join(trained_job_dir, 'metrics.json'))
  assert metrics['epochs'] == 2
  assert 0.5 < metrics['test_accuracy'] <= 1.0
  assert metrics['test_loss'] > 0
  assert [entry['epoch'] for entry in metrics['history']] == [1, 2]
  assert artifact.is_complete(os.path.join(trained_job_dir, 'export'))
  events = [f for _, _, files in os.walk(os.path.join(trained_job_dir, 'logs'))
            for f in files if f.startswith('events.out.tfevents')]
  assert events, 'TensorBoard event files expected under logs/'
  saved = yaml.safe_load(open(os.path.join(trained_job_dir, 'config.yaml')))
  assert saved['model'] == 'deep_mnist' and saved['train_examples'] == 1000


@pytest.mark.slow
def test_rerunning_a_finished_job_does_not_retrain(trained_job_dir):
  before = os.path.getmtime(os.path.join(trained_job_dir, 'metrics.json'))
  process = helpers.run_module(
      'trainer.task', f'--job_dir={trained_job_dir}', '--epochs=2',
      '--train_examples=1000', '--model=deep_mnist')
  assert 'already holds a finished run' in process.stderr
  assert os.path.getmtime(
      os.path.join(trained_job_dir, 'metrics.json')) == before


@pytest.mark.slow
def test_rerunning_with_another_configuration_is_refused(trained_job_dir):
  process = helpers.run_module(
      'trainer.task', f'--job_dir={trained_job_dir}', '--epochs=2',
      '--train_examples=1000', '--model=deep_mnist', '--learning_rate=0.01',
      check=False)
  assert process.returncode != 0
  assert 'learning_rate: 0.001 -> 0.01' in process.stderr
  assert '--start_fresh' in process.stderr


@pytest.mark.parametrize('args, message', [
    (['--model=resnet'], "model: unknown model 'resnet'"),
    (['--epochs=-2'], 'epochs: must be at least 1'),
    (['--dataset=fashion_mnist'], "data_dir: dataset 'fashion_mnist' needs"),
    (['--no_such_flag=1'], 'Unknown command line flag'),
    (['--epochs=many'], "flag --epochs=many"),
    (['--config=/no/such/file.yaml'], 'no such file /no/such/file.yaml'),
    (['extra_argument'], 'Unexpected arguments: extra_argument'),
])
def test_bad_flags_fail_fast_with_a_readable_message(tmp_path, args,
                                                      message):
  job_dir = str(tmp_path / 'job')
  process = helpers.run_module('trainer.task', f'--job_dir={job_dir}',
                                *args, check=False, timeout=120)
  assert process.returncode != 0
  assert message in process.stderr
  assert 'Traceback' not in process.stderr
  assert not os.path.exists(job_dir), 'nothing should be written'


def test_config_file_with_an_unknown_key_names_it(tmp_path):
  path = tmp_path / 'bad.yaml'
  path.write_text('epochs: 2\nlearning_rat: 0.1\n')
  process = helpers.run_module('trainer.task', f'--job_dir={tmp_path}/j',
                                f'--config={path}', check=False, timeout=120)
  assert process.returncode != 0
  assert 'learning_rat: unknown key' in process.stderr
  assert "Did you mean 'learning_rate'" in process.stderr


@pytest.mark.slow
def test_missing_data_fails_before_training_naming_the_file(tmp_path):
  process = helpers.run_module(
      'trainer.task', f'--job_dir={tmp_path}/j', '--dataset=fashion_mnist',
      f'--data_dir={tmp_path}/empty', check=False, timeout=120)
  assert process.returncode == 2
  assert 'train-images-idx3-ubyte.gz: file not found' in process.stderr
  assert 'Epoch' not in process.stderr


@pytest.mark.slow
def test_vertex_environment_sets_the_output_folders(tmp_path):
  model_dir = tmp_path / 'vertex' / 'model'
  process = helpers.run_module(
      'trainer.task', '--epochs=1', '--steps_per_epoch=2',
      '--train_examples=256', '--model=softmax',
      env={'AIP_MODEL_DIR': str(model_dir) + '/',
           'AIP_CHECKPOINT_DIR': str(tmp_path / 'vertex' / 'ckpt') + '/',
           'AIP_TENSORBOARD_LOG_DIR': str(tmp_path / 'vertex' / 'tb') + '/'})
  assert process.returncode == 0
  assert artifact.is_complete(str(model_dir))
  assert os.path.exists(tmp_path / 'vertex' / 'metrics.json')
  assert os.path.isdir(tmp_path / 'vertex' / 'ckpt')
  assert os.listdir(tmp_path / 'vertex' / 'tb')


# --------------------------------------------------------------------------
# Issue 12: nothing published broken, nothing crashing after the work,
# nothing trained on but what is reported, one run per job dir.


def _strict_json(path):
  """Parses a JSON file, refusing NaN and Infinity (as most readers do)."""

  def refuse(constant):
    raise ValueError(f'{path}: {constant} is not JSON')

  with open(path) as f:
    return json.load(f, parse_constant=refuse)


def _json_files(folder):
  return [os.path.join(root, name) for root, _, names in os.walk(folder)
          for name in names if name.endswith('.json')]


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith('E1')]


@pytest.mark.slow
def test_a_diverging_run_stops_with_one_line_and_publishes_nothing(tmp_path):
  job_dir = tmp_path / 'job'
  process = helpers.run_module(
      'trainer.task', f'--job_dir={job_dir}', '--learning_rate=1e6',
      '--model=deep_mnist', '--epochs=2', '--steps_per_epoch=10',
      '--train_examples=500', check=False)
  assert process.returncode == 2, process.stderr[-3000:]
  [line] = _error_lines(process.stderr)
  assert re.search(r'Training diverged: the training loss became nan at '
                   r'epoch 1, batch \d+ \(learning rate 1e\+06\)', line)
  assert '--learning_rate' in line and 'Traceback' not in process.stderr
  assert not (job_dir / 'export').exists()
  assert not (job_dir / 'metrics.json').exists()
  assert not (job_dir / 'checkpoints' / 'backup' / 'epoch-0001.weights.h5'
              ).exists(), 'the diverged epoch must not be backed up'
  for path in _json_files(job_dir):
    _strict_json(path)


@pytest.mark.slow
def test_a_tiny_image_folder_fails_before_training_or_trains_as_told(
    tmp_path):
  root = tmp_path / 'images'
  image_files.write_image_folder(str(root), ['a', 'b'], per_class=3)
  args = [f'--job_dir={tmp_path / "job"}', '--dataset=image_folder',
          f'--data_dir={root}', '--model=softmax', '--epochs=1',
          '--image_size=16']
  refused = helpers.run_module('trainer.task', *args, check=False)
  assert refused.returncode == 2
  [line] = _error_lines(refused.stderr)
  assert 'split is empty' in line and '_fraction=0' in line
  assert 'Epoch 1/' not in refused.stderr
  # Told to: the same run in this process (the refusal above is the
  # command's; what the run trains on is train.run's).
  helpers.train_in_process(
      job_dir=str(tmp_path / 'job'), dataset='image_folder',
      data_dir=str(root), model='softmax', epochs=1, image_size=16,
      validation_fraction=0, test_fraction=0)
  metrics = _strict_json(tmp_path / 'job' / 'metrics.json')
  assert metrics['examples'] == {'train': 6, 'validation': 0, 'test': 0}
  assert metrics['evaluated_on'] is None


def _hostile_folder(root, elsewhere):
  """An image folder with a symlinked class, a FIFO and a corrupt PNG."""
  image_files.write_image_folder(str(root), ['ant', 'cat'], per_class=10)
  if not os.path.exists(elsewhere / 'bee'):
    image_files.write_image_folder(str(elsewhere), ['bee'], per_class=10)
  os.symlink(elsewhere / 'bee', root / 'bee')
  os.mkfifo(root / 'cat' / 'pipe.png')
  (root / 'cat' / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(40))
  return root


@pytest.mark.slow
def test_a_hostile_image_folder_trains_on_what_metrics_json_reports(
    tmp_path):
  root = _hostile_folder(tmp_path / 'images', tmp_path / 'elsewhere')
  # The same folder with an empty class folder, to be refused before
  # training, naming it. Both commands run at once, on folders of their own.
  with_empty = _hostile_folder(tmp_path / 'images2', tmp_path / 'elsewhere')
  (with_empty / 'dog').mkdir()
  args = ['--dataset=image_folder', '--model=softmax', '--epochs=1',
          '--image_size=16', '--validation_fraction=0.2',
          '--test_fraction=0.2']
  # A FIFO that was opened would block the run until this timeout.
  process, refused = processes.run_modules(
      ('trainer.task', [f'--job_dir={tmp_path / "job"}',
                        f'--data_dir={root}', *args]),
      ('trainer.task', [f'--job_dir={tmp_path / "job2"}',
                        f'--data_dir={with_empty}', *args]), timeout=300)
  assert process.returncode == 0, process.stderr[-3000:]
  assert 'Followed the symlinked folder bee' in process.stderr
  assert 'cat/pipe.png (a named pipe (FIFO))' in process.stderr
  assert 'cat/corrupt.png (Invalid PNG' in process.stderr
  metrics = _strict_json(tmp_path / 'job' / 'metrics.json')
  assert sum(metrics['examples'].values()) == 30
  assert metrics['data']['skipped'] == {'special_file': 1, 'undecodable': 1}
  assert list(metrics['data']['followed_links']) == ['bee']
  assert artifact.read_metadata(str(tmp_path / 'job' / 'export'))[
      'labels'] == ['ant', 'bee', 'cat']
  assert refused.returncode == 2
  [line] = _error_lines(refused.stderr)
  assert 'class folder(s) dog hold no images' in line
  assert 'Epoch 1/' not in refused.stderr


@pytest.mark.slow
def test_a_second_trainer_on_a_live_job_dir_is_refused_before_any_work(
    tmp_path):
  job_dir = tmp_path / 'job'
  args = [f'--job_dir={job_dir}', '--model=softmax', '--epochs=3',
          '--steps_per_epoch=150', '--train_examples=2000']
  log = str(tmp_path / 'first.log')
  first = processes.start_module('trainer.task', *args, log_path=log)
  try:
    processes.wait_until(lambda: 'Epoch 1/' in processes.read_log(log)
                         or processes.saved_epoch(str(job_dir / 'checkpoints'))
                         >= 1, [first], 'the first epoch', logs=[log])
    for extra in ([], ['--break_lease']):  # A live local holder stays.
      second = helpers.run_module('trainer.task', *args, *extra,
                                   check=False, timeout=120)
      assert second.returncode == 2
      [line] = _error_lines(second.stderr)
      assert f'is in use: pid {first.pid} on host' in line
      assert '_LEASE' in line and '--break_lease' in line
      assert 'Strategy:' not in second.stderr, 'it started TensorFlow work'
    assert first.poll() is None, 'the first run must go on'
    first.kill()  # kill -9: the kernel drops the lock with the process.
    first.wait()
  finally:
    if first.poll() is None:
      first.kill()
  killed_at = processes.saved_epoch(str(job_dir / 'checkpoints'))
  helpers.run_module('trainer.task', *args)
  metrics = _strict_json(job_dir / 'metrics.json')
  assert metrics['resumed_from_epoch'] == killed_at
  assert not (job_dir / '_LEASE').exists()


def _run_trainer(*args, env=None, preexec_fn=None, timeout=600):
  full_env = dict(os.environ, PYTHONPATH=helpers.REPO,
                  TF_CPP_MIN_LOG_LEVEL='2')
  full_env.update(env or {})
  return subprocess.run([sys.executable, '-m', 'trainer.task', *args],
                        cwd=helpers.REPO, env=full_env, capture_output=True,
                        text=True, timeout=timeout, preexec_fn=preexec_fn)


_DEEP_SETTINGS = {'model': 'deep_mnist', 'epochs': 1, 'steps_per_epoch': 3,
                  'train_examples': 500}  # About 40 MB a checkpoint.
_DEEP = [f'--{key}={value}' for key, value in _DEEP_SETTINGS.items()]


@pytest.mark.slow
def test_a_disk_too_small_for_a_checkpoint_stops_before_training(tmp_path):
  with disks.small_disk(str(tmp_path / 'disk'), 30) as disk:
    job_dir = os.path.join(disk, 'job')
    process = _run_trainer(f'--job_dir={job_dir}', *_DEEP)
    assert process.returncode == 2, process.stderr[-3000:]
    [line] = _error_lines(process.stderr)
    assert re.search(rf'Not enough space in {job_dir}/checkpoints/backup for '
                     r'a checkpoint: it needs about [\d.,]+ MB, [\d.,]+ MB '
                     'free', line)
    assert 'Epoch 1/' not in process.stderr
    assert not [name for _, _, names in os.walk(disk) for name in names
                if name.endswith('.h5')]


@pytest.mark.slow
def test_disk_full_during_the_export_ends_in_one_line_and_cleans_up(
    tmp_path):
  tmp = tmp_path / 'tmp'
  tmp.mkdir()
  job_dir = tmp_path / 'job'
  with disks.small_disk(str(tmp_path / 'disk'), 20) as disk:
    export_dir = os.path.join(disk, 'export')
    process = _run_trainer(f'--job_dir={job_dir}', *_DEEP,
                           f'--export_dir={export_dir}',
                           env={'TMPDIR': str(tmp)})
    assert process.returncode == 2, process.stderr[-3000:]
    [line] = _error_lines(process.stderr)
    assert f'Not enough space in {export_dir} for the export' in line
    assert 'Epoch 1/' in process.stderr  # It trained, then stopped cleanly.
    assert os.listdir(disk) == []  # No export, no half-published copy.
  assert os.listdir(tmp) == []  # The staging folder is gone.
  assert not (job_dir / 'metrics.json').exists()
  # The checkpoint is kept: with room, the same run finishes (in this
  # process: resuming and exporting are train.run's).
  helpers.train_in_process(job_dir=str(job_dir), **_DEEP_SETTINGS,
                           export_dir=str(tmp_path / 'export'))
  assert artifact.is_complete(str(tmp_path / 'export'))


@pytest.mark.slow
def test_a_write_that_fails_inside_h5py_ends_in_one_line_not_a_crash(
    tmp_path):
  # The free-space check cannot see a file size limit: the save itself
  # fails (EFBIG) inside h5py, which used to end in a segmentation fault.
  job_dir = tmp_path / 'job'
  process = _run_trainer(f'--job_dir={job_dir}', *_DEEP,
                         preexec_fn=disks.file_size_limit(8 * 2**20))
  assert process.returncode == 2, (process.returncode,
                                   process.stderr[-3000:])
  [line] = _error_lines(process.stderr)
  assert re.search(rf'Cannot write the resume backup {job_dir}/checkpoints/'
                   r'backup/epoch-0001.weights.h5: File too large\.', line)
  assert 'Traceback' not in process.stderr
  assert not os.path.exists(job_dir / 'checkpoints' / 'backup' /
                            'epoch-0001.weights.h5')
  assert not (job_dir / '_LEASE').exists()


# --------------------------------------------------------------------------
# The one place the command turns errors into its exit status.


def _main_exits_with(monkeypatch, error):
  """The exit status of `task.main` when the run raises `error`."""
  from trainer import task  # pylint: disable=g-import-not-at-top

  def run_command(unused_flag_values, unused_environ):
    raise error

  monkeypatch.setattr(task, 'run_command', run_command)
  with pytest.raises(SystemExit) as raised:
    task.main(['trainer.task'])
  return raised.value.code


def _user_errors():
  from trainer import callbacks  # pylint: disable=g-import-not-at-top
  from trainer import checkpoints  # pylint: disable=g-import-not-at-top
  from trainer import cluster  # pylint: disable=g-import-not-at-top
  from trainer import config as config_lib  # pylint: disable=g-import-not-at-top
  from trainer import hptuning  # pylint: disable=g-import-not-at-top
  from trainer import lease  # pylint: disable=g-import-not-at-top
  from trainer import storage  # pylint: disable=g-import-not-at-top
  from trainer.data import sources  # pylint: disable=g-import-not-at-top
  return [config_lib.ConfigError('epochs: must be at least 1.'),
          cluster.ClusterError('TF_CONFIG is not valid JSON'),
          sources.DataError('data_dir /d: no such folder.'),
          checkpoints.CheckpointError('Cannot resume from /c/backup'),
          callbacks.diverged('the test loss is nan', 0.1),
          hptuning.MissingDependencyError('needs cloudml-hypertune'),
          storage.WriteError('Cannot write /j/metrics.json: quota.'),
          lease.LeaseError('/j is in use: pid 7 on host h')]


def test_every_user_error_ends_the_command_in_one_line_with_status_2(
    monkeypatch, caplog):
  for error in _user_errors():
    caplog.clear()
    assert _main_exits_with(monkeypatch, error) == 2, error
    [record] = [r for r in caplog.records if r.levelname == 'ERROR']
    assert record.getMessage() == str(error)
    assert record.exc_info is None  # No traceback.


def test_a_failed_h5py_write_exits_at_once_after_the_clean_up(monkeypatch):
  from trainer import storage  # pylint: disable=g-import-not-at-top
  from trainer import task  # pylint: disable=g-import-not-at-top
  exits = []

  def hard_exit(status):
    exits.append(status)
    raise SystemExit(status)

  monkeypatch.setattr(task.os, '_exit', hard_exit)
  status = _main_exits_with(monkeypatch, storage.WriteError(
      'Cannot write the resume backup: File too large.', hard_exit=True))
  assert exits == [2] and status == 2


def test_an_output_that_cannot_be_written_is_named(monkeypatch, caplog):
  import errno  # pylint: disable=g-import-not-at-top
  error = PermissionError(errno.EACCES, 'Permission denied', '/j/config.yaml')
  assert _main_exits_with(monkeypatch, error) == 2
  assert 'Cannot write /j/config.yaml:' in caplog.text


def test_a_preempted_run_exits_with_the_signal_status(monkeypatch):
  from trainer import preemption  # pylint: disable=g-import-not-at-top
  assert _main_exits_with(monkeypatch, preemption.Preempted('SIGTERM')) == 143


def test_a_bug_keeps_its_traceback(monkeypatch):
  with pytest.raises(ZeroDivisionError):
    _main_exits_with(monkeypatch, ZeroDivisionError('a bug'))


def test_vertex_environment_names_the_output_folders():
  from trainer import task  # pylint: disable=g-import-not-at-top
  environ = {'AIP_MODEL_DIR': 'gs://b/job/model/',
             'AIP_CHECKPOINT_DIR': 'gs://b/job/checkpoints/',
             'AIP_TENSORBOARD_LOG_DIR': 'gs://b/job/logs/'}
  assert task.environment_overrides(environ, explicit={}) == {
      'export_dir': 'gs://b/job/model/',
      'checkpoint_dir': 'gs://b/job/checkpoints/',
      'tensorboard_dir': 'gs://b/job/logs/', 'job_dir': 'gs://b/job'}
  # Flags given on the command line win.
  assert task.environment_overrides(
      environ, explicit={'job_dir': '/j', 'export_dir': '/e'}) == {
          'checkpoint_dir': 'gs://b/job/checkpoints/',
          'tensorboard_dir': 'gs://b/job/logs/'}
