"""Dataflow readiness: what a worker imports (the scorer's modules, and of
the trainer only its light shared modules), the package `--setup_file`
ships holding all of it, and a dry run of the README's Dataflow command
(options accepted, package and job built, nothing submitted)."""

import functools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from batch_predict import options as options_lib
from batch_predict import pipeline
from tests import helpers
from tests.helpers import image_files
from trainer import storage

# The trainer's modules the scorer may import: light ones, shared by both
# commands (README, Development). trainer.evaluation (numpy) and
# trainer.evaluation_charts (matplotlib, imported only to draw) are the one
# definition of the evaluation report, which --evaluate shares with the
# trainer; trainer.devices turns on GPU memory growth before the model loads;
# trainer.cli makes both commands' errors one line.
_SHARED_TRAINER_MODULES = {'trainer', 'trainer.artifact', 'trainer.cli',
                           'trainer.devices', 'trainer.embedding_cache',
                           'trainer.errors',
                           'trainer.evaluation', 'trainer.evaluation_charts',
                           'trainer.lease', 'trainer.storage', 'trainer.walk'}
# A worker unpickles the pipeline's steps (and, with save_main_session, the
# main module, batch_predict.pipeline), importing their modules.
_IMPORT_THE_SCORER = f"""
import json, os, sys
sys.path.insert(0, {helpers.REPO!r})
import batch_predict.pipeline, batch_predict.transforms
import batch_predict.model_handler, batch_predict.options
import batch_predict.inputs, batch_predict.outputs, batch_predict.image_header
import batch_predict.evaluation
project = {{name: os.path.relpath(module.__file__, {helpers.REPO!r})
           for name, module in sys.modules.items()
           if name.split('.')[0] in ('trainer', 'batch_predict')}}
print(json.dumps({{'project': project, 'modules': sorted(sys.modules)}}))
"""


@functools.lru_cache(maxsize=None)
def _what_the_scorer_imports():
  """{'project': {module: file relative to the repo}, 'modules': [...]}
  after importing every scorer module in a fresh interpreter."""
  child = subprocess.run([sys.executable, '-c', _IMPORT_THE_SCORER],
                         capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=helpers.REPO))
  return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # 2.1 s here: over the fast tier's ~1.5 s a test.
def test_the_scorer_imports_no_keras_and_only_the_shared_trainer_modules():
  imported = _what_the_scorer_imports()
  trainer_modules = {name for name in imported['project']
                     if name.split('.')[0] == 'trainer'}
  assert trainer_modules == _SHARED_TRAINER_MODULES
  for heavy in ('keras', 'tensorflow', 'trainer.models', 'trainer.export',
                'trainer.train', 'trainer.data', 'matplotlib'):
    assert heavy not in imported['modules'], heavy
  assert {'batch_predict.pipeline', 'batch_predict.transforms',
          'batch_predict.model_handler'} <= set(imported['project'])


def _copy_project(destination):
  """The files setup.py packages, without build output of earlier runs."""
  os.makedirs(destination)
  for name in ('setup.py', 'README.md'):
    shutil.copy(os.path.join(helpers.REPO, name), destination)
  for package in ('trainer', 'batch_predict'):
    shutil.copytree(os.path.join(helpers.REPO, package),
                    os.path.join(destination, package),
                    ignore=shutil.ignore_patterns('__pycache__'))
  return destination


@pytest.mark.slow  # 2.4 s here: over the fast tier's ~1.5 s a test.
def test_sdist_and_wheel_hold_both_packages(tmp_path):
  project = _copy_project(str(tmp_path / 'project'))
  dist = str(tmp_path / 'dist')
  # What Beam's stager runs for --setup_file when `build` is not installed.
  subprocess.run([sys.executable, 'setup.py', '-q', 'sdist', '--dist-dir',
                  dist], cwd=project, check=True, capture_output=True)
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
                  '--no-build-isolation', '--wheel-dir', dist, '.'],
                 cwd=project, check=True, capture_output=True)
  sdist, = [n for n in os.listdir(dist) if n.endswith('.tar.gz')]
  wheel, = [n for n in os.listdir(dist) if n.endswith('.whl')]
  with tarfile.open(os.path.join(dist, sdist)) as archive:
    in_sdist = {name.split('/', 1)[1] for name in archive.getnames()
                if '/' in name}
  with zipfile.ZipFile(os.path.join(dist, wheel)) as archive:
    in_wheel = set(archive.namelist())
  worker_files = sorted(_what_the_scorer_imports()['project'].values())
  assert 'batch_predict/transforms.py' in worker_files
  for path in worker_files:
    assert path in in_sdist, path
    assert path in in_wheel, path
  assert not any('tests/' in name for name in in_wheel)


@pytest.mark.slow  # 3.7 s here: over the fast tier's ~1.5 s a test.
def test_dataflow_dry_run_builds_the_package_and_job_without_submitting(
    gcs_server, beam_gcs_anonymous, trained_export, tmp_path):
  project = _copy_project(str(tmp_path / 'project'))
  storage.upload_tree(trained_export, 'gs://test-bucket/mnist/export')
  storage.write_bytes('gs://test-bucket/images/0.png', image_files.encode(
      image_files.digits(1)[0][0], 'PNG'))
  earlier = 'gs://test-bucket/scores/mnist-predictions-00000-of-00001.jsonl'
  storage.write_text(earlier, '{"uri": "kept"}\n')
  result = pipeline.run([
      '--runner=DataflowRunner', '--project=test-project',
      '--region=us-central1', '--temp_location=gs://test-bucket/tmp',
      f'--setup_file={project}/setup.py', '--dry_run=True',
      '--model_dir=gs://test-bucket/mnist/export',
      '--input=gs://test-bucket/images/**',
      '--output=gs://test-bucket/scores/mnist', '--num_shards=100'])
  assert result.state == 'DONE'
  # Beam's stager built the package from --setup_file, to be staged...
  assert os.path.isdir(os.path.join(project, 'tf_image_classifier.egg-info'))
  proto = result.job.proto_pipeline
  staged = [dependency.role_payload for environment in
            proto.components.environments.values()
            for dependency in environment.dependencies]
  assert any(b'workflow.tar.gz' in payload for payload in staged)
  # ...and the job request holds the scoring steps and options.
  steps = [t.unique_name for t in proto.components.transforms.values()]
  for step in ('ListImages', 'ClassifyImages/ScoreImages/RunInference',
               'WritePredictions', 'WriteErrors'):
    assert any(name.startswith(step) for name in steps), step
  scoring = result.job.options.view_as(options_lib.ScoringOptions)
  assert scoring.model_dir == 'gs://test-bucket/mnist/export'
  # A dry run changes nothing.
  assert storage.read_text(earlier) == '{"uri": "kept"}\n'
  assert not storage.glob('gs://test-bucket/tmp/**')


def test_dataflow_needs_the_project_installed_on_workers(
    gcs_server, trained_export):
  storage.upload_tree(trained_export, 'gs://test-bucket/mnist/export')
  with pytest.raises(options_lib.ConfigError, match='--setup_file'):
    pipeline.run([
        '--runner=DataflowRunner', '--project=test-project',
        '--region=us-central1', '--temp_location=gs://test-bucket/tmp',
        '--model_dir=gs://test-bucket/mnist/export',
        '--input=gs://test-bucket/images/*.png',
        '--output=gs://test-bucket/scores/mnist'])


def test_options_beam_refuses_fail_before_any_work(
    gcs_server, beam_gcs_anonymous, trained_export):
  storage.upload_tree(trained_export, 'gs://test-bucket/mnist/export')
  storage.write_bytes('gs://test-bucket/images/0.png', b'x')
  earlier = 'gs://test-bucket/scores/mnist-predictions-00000-of-00001.jsonl'
  storage.write_text(earlier, '{"uri": "kept"}\n')
  # Beam itself checks its options (here --job_name) when the pipeline is
  # created: that too happens before the earlier outputs are deleted.
  with pytest.raises(options_lib.ConfigError, match='Invalid job_name'):
    pipeline.run([
        '--runner=DataflowRunner', '--project=test-project',
        '--region=us-central1', '--temp_location=gs://test-bucket/tmp',
        '--job_name=Nightly_Scoring',
        f'--setup_file={helpers.REPO}/setup.py',
        '--model_dir=gs://test-bucket/mnist/export',
        '--input=gs://test-bucket/images/0.png',
        '--output=gs://test-bucket/scores/mnist'])
  assert storage.read_text(earlier) == '{"uri": "kept"}\n'
