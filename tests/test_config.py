"""Config: defaults, files, overrides, validation messages that name the key."""

import json

import pytest
import yaml

from trainer import config as config_lib


def build(**overrides):
  overrides.setdefault('job_dir', '/tmp/job')
  return config_lib.build(overrides=overrides)


def test_defaults_are_the_bundled_digits_with_a_cnn():
  config = build()
  assert config.dataset == 'mnist_sample'
  assert config.model == 'cnn_bn'
  assert config.image_shape == (28, 28, 1)


def test_flags_override_file_values(tmp_path):
  path = tmp_path / 'run.yaml'
  path.write_text('model: mlp\nepochs: 3\nlearning_rate: 1\n')
  config = config_lib.build(config_lib.load_file(str(path)),
                            {'epochs': 5, 'job_dir': '/tmp/j'})
  assert config.model == 'mlp'
  assert config.epochs == 5
  assert config.learning_rate == 1.0  # YAML int accepted for a float key.


def test_json_config_and_extends(tmp_path):
  (tmp_path / 'base.yaml').write_text('model: deep_mnist\nepochs: 7\n')
  (tmp_path / 'child.json').write_text(json.dumps(
      {'extends': 'base.yaml', 'epochs': 2}))
  values = config_lib.load_file(str(tmp_path / 'child.json'))
  assert values == {'model': 'deep_mnist', 'epochs': 2}


def test_extends_cycle_is_an_error(tmp_path):
  (tmp_path / 'a.yaml').write_text('extends: b.yaml\n')
  (tmp_path / 'b.yaml').write_text('extends: a.yaml\n')
  with pytest.raises(config_lib.ConfigError, match='cycle'):
    config_lib.load_file(str(tmp_path / 'a.yaml'))


@pytest.mark.parametrize('values, key', [
    ({'epoch': 3}, 'epoch'),
    ({'modle': 'mlp'}, 'modle'),
])
def test_unknown_key_is_named(values, key):
  with pytest.raises(config_lib.ConfigError, match=f'^{key}: unknown key'):
    config_lib.build(values, {'job_dir': '/tmp/j'})


def test_unknown_key_suggests_a_close_one():
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'epochs'"):
    config_lib.build({'epoch': 3}, {'job_dir': '/tmp/j'})


@pytest.mark.parametrize('overrides, key', [
    ({'model': 'resnet9000'}, 'model'),
    ({'dataset': 'cifar'}, 'dataset'),
    ({'epochs': 0}, 'epochs'),
    ({'epochs': '3'}, 'epochs'),
    ({'epochs': True}, 'epochs'),
    ({'batch_size': -1}, 'batch_size'),
    ({'learning_rate': 0.0}, 'learning_rate'),
    ({'channels': 2}, 'channels'),
    ({'validation_fraction': 1.5}, 'validation_fraction'),
    ({'validation_fraction': 0.5, 'test_fraction': 0.5},
     'validation_fraction'),
    ({'strategy': 'tpu'}, 'strategy'),
    ({'cache': 'disk'}, 'cache'),
    ({'job_dir': ''}, 'job_dir'),
    ({'learning_rate': float('inf')}, 'learning_rate'),
    ({'learning_rate': float('nan')}, 'learning_rate'),
    ({'test_fraction': float('nan')}, 'test_fraction'),
])
def test_bad_values_are_named(overrides, key):
  with pytest.raises(config_lib.ConfigError, match=f'^{key}: '):
    build(**overrides)


@pytest.mark.parametrize('overrides, key', [
    ({'dataset': 'fashion_mnist'}, 'data_dir'),
    ({'dataset': 'image_folder'}, 'data_dir'),
    ({'data_dir': '/data'}, 'data_dir'),
    ({'image_size': 64}, 'image_size'),
    ({'channels': 3}, 'channels'),
    ({'fine_tune_layers': 2}, 'fine_tune_layers'),
    ({'base_weights': 'none'}, 'base_weights'),
    ({'base_model': '/b/export', 'base_weights': 'none'}, 'base_weights'),
    ({'base_model': 'mobilenet_v2'}, 'base_weights'),
    ({'base_model': 'mobilenet_v2', 'base_weights': 'none', 'channels': 1},
     'channels'),
    ({'base_model': 'mobilenet_v2', 'base_weights': 'none',
      'image_size': 28}, 'image_size'),
    ({'base_model': '/b/export', 'fine_tune_epochs': 3}, 'fine_tune_epochs'),
    ({'base_model': '/b/export', 'fine_tune_learning_rate': 1e-5},
     'fine_tune_learning_rate'),
])
def test_impossible_combinations_are_named(overrides, key):
  with pytest.raises(config_lib.ConfigError, match=f'^{key}: '):
    build(**overrides)


def test_transfer_mode_accepts_its_own_settings():
  config = build(base_model='/b/export', fine_tune_layers=2,
                 fine_tune_epochs=3, learning_rate=0.01)
  assert config.transfer and config.fine_tune_rate == pytest.approx(0.001)
  config = build(base_model='mobilenet_v2', base_weights='none',
                 image_size=32, fine_tune_layers=2,
                 fine_tune_learning_rate=1e-5)
  assert config.fine_tune_rate == 1e-5


def test_image_folder_shape_defaults_and_overrides():
  config = build(dataset='image_folder', data_dir='/d')
  assert config.image_shape == (64, 64, 3)
  config = build(dataset='image_folder', data_dir='/d', image_size=32,
                 channels=1)
  assert config.image_shape == (32, 32, 1)


def test_saved_config_reloads_to_the_same_config(tmp_path):
  config = build(model='mlp', epochs=3, augment=True)
  path = str(tmp_path / 'config.yaml')
  config_lib.save(config, path)
  assert config_lib.build(config_lib.load_file(path)) == config


def test_saved_config_does_not_carry_output_folders_or_start_fresh(tmp_path):
  config = build(export_dir='/aip/model', checkpoint_dir='/aip/ckpt',
                 start_fresh=True, break_lease=True)
  path = str(tmp_path / 'config.yaml')
  config_lib.save(config, path)
  text = open(path).read()
  assert "# export_dir: '/aip/model'" in text  # Recorded, as a comment.
  reused = config_lib.build(config_lib.load_file(path), {'job_dir': '/new'})
  assert (reused.export_dir, reused.checkpoint_dir) == ('', '')
  assert not reused.start_fresh and not reused.break_lease
  assert '# break_lease: True' in text
  assert reused.model == config.model
  # Breaking a lease does not change what is trained: a rerun may resume.
  assert config_lib.training_differences(
      reused, dict(config.to_dict(), break_lease=False)) == []


def test_training_differences_ignore_placement_and_how_it_runs():
  config = build(epochs=3)
  previous = dict(config.to_dict(), job_dir='/elsewhere', epochs=4,
                  cache='none', strategy='mirrored', jit_compile=True)
  assert config_lib.training_differences(config, previous) == ['epochs']


def test_every_shipped_config_file_is_valid():
  import glob  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from tests.helpers import REPO  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(REPO, 'config', '*.yaml')))
  assert files
  for path in files:
    values = config_lib.load_file(path)
    needs_dir = values.get('dataset', 'mnist_sample') != 'mnist_sample'
    overrides = {'job_dir': '/tmp/j'}
    if needs_dir and not values.get('data_dir'):
      overrides['data_dir'] = '/data'
    config_lib.build(values, overrides, source=path)
    with open(path) as f:
      first_lines = f.read(400)
    assert 'python -m trainer.task' in first_lines, (
        f'{path} should start with the command that runs it')
    assert yaml.safe_load(open(path)) is not None
