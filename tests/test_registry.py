"""The registry: each entry names something that exists, and config reads it.

These checks replace the import-time asserts that kept copies of the lists
in step: there are no copies, so what is left to check is that every name
an entry gives (a builder, a loader module, a Keras class) is real.
"""

import importlib
import subprocess
import sys

import pytest

from trainer import config as config_lib
from trainer import registry
from tests import helpers


@pytest.mark.parametrize('name', registry.MODELS)
def test_every_model_names_a_builder_that_builds_it(name):
  from trainer import models  # pylint: disable=g-import-not-at-top
  assert callable(getattr(models, registry.MODELS[name].builder))
  assert models.build_model(name, registry.MNIST_SHAPE, 10).name == name


@pytest.mark.parametrize('name', registry.DATASETS)
def test_every_dataset_names_a_loader_module(name):
  spec = registry.DATASETS[name]
  loader = importlib.import_module(f'trainer.data.{spec.loader}')
  assert callable(loader.load)
  assert (spec.shape is None) == (spec.class_names is None)
  assert name in config_lib.Config.__dataclass_fields__['dataset'].metadata[
      'help']


def test_every_backbone_names_a_keras_application():
  import keras  # pylint: disable=g-import-not-at-top
  for spec in registry.BACKBONES.values():
    assert callable(getattr(keras.applications, spec.application))
    assert callable(getattr(keras.applications,
                            spec.preprocessing).preprocess_input)
    assert spec.min_image_size <= spec.default_image_size
    # {size} in the URL exactly when sizes have files of their own.
    assert ('{size}' in spec.imagenet_url) == bool(spec.imagenet_sizes)
    assert (not spec.imagenet_sizes or
            spec.default_image_size in spec.imagenet_sizes)
    assert spec.channel_order in ('RGB', 'BGR')


def test_the_precision_choices_are_keras_policies():
  import keras  # pylint: disable=g-import-not-at-top
  for policy in registry.PRECISION_POLICIES:
    assert keras.DTypePolicy(policy).name == policy


def test_config_refuses_what_the_registry_does_not_list():
  for key, value in (('model', 'resnet'), ('dataset', 'cifar'),
                     ('strategy', 'tpu'), ('cache', 'disk'),
                     ('mixed_precision', 'float8'),
                     ('hypertune_metric', 'auc')):
    with pytest.raises(config_lib.ConfigError, match=f'^{key}: '):
      config_lib.build(overrides={'job_dir': '/tmp/j', key: value})


def test_the_registry_and_the_config_import_no_tensorflow():
  code = ('import sys; from trainer import config, registry; '
          'print(sorted(m for m in ("tensorflow", "keras", "numpy") '
          'if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], cwd=helpers.REPO,
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == '[]'
