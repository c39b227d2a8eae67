"""Helpers of the test suite; fixtures are conftest.py's.

  tests.helpers              REPO, run_module, train_in_process, read_json,
                             the Fashion-MNIST mark
  tests.helpers.image_files  image files: encoded pixels, image folders, real
                             digits, the scorer's bad-input catalogue and a
                             hostile folder
  tests.helpers.photos       photos as phones write them: EXIF, transparency
  tests.helpers.processes    starting, watching and signalling processes
  tests.helpers.disks        running out of space for real
  tests.helpers.fakes        a fake classifier, and the scorer's model handler
                             loading it
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def fashion_mnist_available():
  return os.path.exists(
      os.path.join(FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz'))


requires_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_available(),
    reason='needs the Debian package dataset-fashion-mnist (.ci/run installs '
    'it)')


def run_module(module, *args, env=None, timeout=600, check=True):
  """Runs `python -m module args` from the repo root; returns the process."""
  full_env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')
  full_env.update(env or {})
  process = subprocess.run(
      [sys.executable, '-m', module, *args], cwd=REPO, env=full_env,
      capture_output=True, text=True, timeout=timeout)
  if check and process.returncode != 0:
    raise AssertionError(
        f'{module} {args} exited {process.returncode}:\n{process.stderr[-4000:]}')
  return process


def train_in_process(**overrides):
  """What `python -m trainer.task --KEY=VALUE ...` trains, in this process.

  For tests of what a run leaves, not of the command: a subprocess spends
  about 6 s of CPU importing TensorFlow before it trains (the command's own
  behaviour is tested in test_task.py and test_cli.py). The lease, the
  cluster and Vertex's environment variables are the command's; seeds and
  the dtype policy are set and restored by train.run as in the command.

  Returns:
    The run's metrics (metrics.json).
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from trainer import config as config_lib
  from trainer import run_context
  from trainer import train
  # pylint: enable=g-import-not-at-top
  config = config_lib.build(overrides=overrides)
  return train.run(run_context.create(config, tf.distribute.get_strategy()))


def write_file(path, text=''):
  """Writes `text` to `path`, making its folders; returns the path."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)
  return path


def read_json(path):
  with open(path) as f:
    return json.load(f)
