"""End to end: `python -m trainer.task` as users run it, and its failures."""

import os

import pytest
import yaml

from tests import conftest
from trainer import export


def test_default_command_leaves_every_output_of_contract_1(trained_job_dir):
  # `trained_job_dir` ran `python -m trainer.task --job_dir=...` with small
  # settings in a subprocess (see conftest).
  names = sorted(os.listdir(trained_job_dir))
  assert names == ['checkpoints', 'config.yaml', 'export', 'logs',
                   'metrics.json', 'training_curves.png']
  with open(os.path.join(trained_job_dir, 'training_curves.png'), 'rb') as f:
    assert f.read(4) == b'\x89PNG'
  metrics = conftest.read_json(os.path.join(trained_job_dir, 'metrics.json'))
  assert metrics['epochs'] == 2
  assert 0.5 < metrics['test_accuracy'] <= 1.0
  assert metrics['test_loss'] > 0
  assert [entry['epoch'] for entry in metrics['history']] == [1, 2]
  assert export.is_complete(os.path.join(trained_job_dir, 'export'))
  events = [f for _, _, files in os.walk(os.path.join(trained_job_dir, 'logs'))
            for f in files if f.startswith('events.out.tfevents')]
  assert events, 'TensorBoard event files expected under logs/'
  saved = yaml.safe_load(open(os.path.join(trained_job_dir, 'config.yaml')))
  assert saved['model'] == 'deep_mnist' and saved['train_examples'] == 1000


def test_rerunning_a_finished_job_does_not_retrain(trained_job_dir):
  before = os.path.getmtime(os.path.join(trained_job_dir, 'metrics.json'))
  process = conftest.run_module(
      'trainer.task', f'--job_dir={trained_job_dir}', '--epochs=2',
      '--train_examples=1000', '--model=deep_mnist')
  assert 'already holds a finished run' in process.stderr
  assert os.path.getmtime(
      os.path.join(trained_job_dir, 'metrics.json')) == before


def test_rerunning_with_another_configuration_is_refused(trained_job_dir):
  process = conftest.run_module(
      'trainer.task', f'--job_dir={trained_job_dir}', '--epochs=3',
      '--train_examples=1000', '--model=deep_mnist', check=False)
  assert process.returncode != 0
  assert 'epochs: 2 -> 3' in process.stderr
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
  process = conftest.run_module('trainer.task', f'--job_dir={job_dir}',
                                *args, check=False, timeout=120)
  assert process.returncode != 0
  assert message in process.stderr
  assert 'Traceback' not in process.stderr
  assert not os.path.exists(job_dir), 'nothing should be written'


def test_config_file_with_an_unknown_key_names_it(tmp_path):
  path = tmp_path / 'bad.yaml'
  path.write_text('epochs: 2\nlearning_rat: 0.1\n')
  process = conftest.run_module('trainer.task', f'--job_dir={tmp_path}/j',
                                f'--config={path}', check=False, timeout=120)
  assert process.returncode != 0
  assert 'learning_rat: unknown key' in process.stderr
  assert "Did you mean 'learning_rate'" in process.stderr


def test_missing_data_fails_before_training_naming_the_file(tmp_path):
  process = conftest.run_module(
      'trainer.task', f'--job_dir={tmp_path}/j', '--dataset=fashion_mnist',
      f'--data_dir={tmp_path}/empty', check=False, timeout=120)
  assert process.returncode == 2
  assert 'train-images-idx3-ubyte.gz: file not found' in process.stderr
  assert 'Epoch' not in process.stderr


def test_vertex_environment_sets_the_output_folders(tmp_path):
  model_dir = tmp_path / 'vertex' / 'model'
  process = conftest.run_module(
      'trainer.task', '--epochs=1', '--steps_per_epoch=2',
      '--train_examples=256', '--model=softmax',
      env={'AIP_MODEL_DIR': str(model_dir) + '/',
           'AIP_CHECKPOINT_DIR': str(tmp_path / 'vertex' / 'ckpt') + '/',
           'AIP_TENSORBOARD_LOG_DIR': str(tmp_path / 'vertex' / 'tb') + '/'})
  assert process.returncode == 0
  assert export.is_complete(str(model_dir))
  assert os.path.exists(tmp_path / 'vertex' / 'metrics.json')
  assert os.path.isdir(tmp_path / 'vertex' / 'ckpt')
  assert os.listdir(tmp_path / 'vertex' / 'tb')
