"""Helpers of the test suite; fixtures are conftest.py's.

  tests.helpers              REPO, run_module, read_json, the Fashion-MNIST
                             mark
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


def read_json(path):
  with open(path) as f:
    return json.load(f)
