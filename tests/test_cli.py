"""Both commands as a new user meets them: one-line errors, --help, speed.

Mirrors trainer/cli.py (shared by the two entry points) and the entry
points' own handling of bad flags and of Google Cloud's errors.
"""

import os
import subprocess
import sys

from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
import pytest

from tests import helpers
from tests.helpers import image_files
from tests.helpers import processes
from trainer import cli


def _run(module, *args, env=None, drop=()):
  """`python -m module args`; `drop` names variables to leave unset."""
  full_env = dict(os.environ, PYTHONPATH=helpers.REPO)
  for name in drop:
    full_env.pop(name, None)
  full_env.update(env or {})
  return subprocess.run([sys.executable, '-m', module, *args],
                        cwd=helpers.REPO, env=full_env, capture_output=True,
                        text=True, timeout=300)


def _no_credentials(tmp_path):
  """An environment with no Google Cloud credentials and no emulator."""
  return dict(env={'GOOGLE_APPLICATION_CREDENTIALS': str(tmp_path / 'none'),
                   'CLOUDSDK_CONFIG': str(tmp_path / 'gcloud')},
              drop=('STORAGE_EMULATOR_HOST',))


def _assert_one_line_error(process):
  lines = process.stderr.splitlines()
  assert process.returncode != 0
  assert len(lines) == 1, process.stderr
  return lines[0]


def test_one_line_joins_the_lines_of_a_message():
  error = ValueError('Pipeline has validations errors: \n'
                     'Invalid Project ID (p).\n')
  assert cli.one_line(error) == ('Pipeline has validations errors: Invalid '
                                 'Project ID (p).')


def test_a_missing_bucket_deep_in_a_write_is_one_line_naming_it():
  error = api_exceptions.NotFound(
      'POST http://127.0.0.1:1/upload/storage/v1/b/no-bucket/o?x=1: {"error":'
      '\n {"code": 404}}')
  try:
    raise RuntimeError('writing failed') from error
  except RuntimeError as wrapped:
    line = cli.cloud_error_line(wrapped)
  assert '\n' not in line
  assert 'gs://no-bucket' in line and '404' in line
  assert 'bucket exists' in line


def test_refused_credentials_are_one_line_saying_how_to_log_in():
  line = cli.cloud_error_line(auth_exceptions.RefreshError(
      'invalid_grant: Bad Request\n{"error": "invalid_grant"}'))
  assert '\n' not in line
  assert 'gcloud auth application-default login' in line


def test_other_errors_are_not_cloud_errors():
  assert cli.cloud_error_line(KeyError('x')) is None


def test_quiet_stderr_hides_what_is_written_to_fd_2_unless_asked(capfd):
  with cli.quiet_stderr():
    os.write(2, b'cuInit noise\n')
  assert capfd.readouterr().err == ''
  with cli.quiet_stderr(replay=True):
    os.write(2, b'replayed\n')
  assert capfd.readouterr().err == 'replayed\n'


def test_quiet_stderr_replays_what_it_hid_when_the_block_fails(capfd):
  with pytest.raises(RuntimeError):
    with cli.quiet_stderr():
      os.write(2, b'why it failed\n')
      raise RuntimeError('failed')
  assert capfd.readouterr().err == 'why it failed\n'


@pytest.mark.parametrize('args, message', [
    (['--epochs=abc'], 'flag --epochs=abc'),
    (['--epocs=3'], "Unknown command line flag 'epocs'"),
    (['--epochs=-1'], 'epochs: must be at least 1'),
    (['stray'], 'Unexpected arguments: stray'),
])
def test_trainer_flag_errors_are_one_line_pointing_at_helpfull(
    tmp_path, args, message):
  job_dir = tmp_path / 'job'
  line = _assert_one_line_error(
      _run('trainer.task', f'--job_dir={job_dir}', *args))
  assert message in line
  assert not job_dir.exists()


def test_trainer_config_file_key_error_is_one_line(tmp_path):
  config = tmp_path / 'run.yaml'
  config.write_text('epocs: 3\n')
  line = _assert_one_line_error(_run(
      'trainer.task', f'--job_dir={tmp_path / "job"}', f'--config={config}'))
  assert "epocs: unknown key" in line and "'epochs'" in line


@pytest.mark.parametrize('module', ['trainer.task', 'batch_predict.pipeline'])
def test_help_exits_0(module):
  process = _run(module, '--help')
  assert process.returncode == 0, process.stderr
  assert '--job_dir' in process.stdout or '--model_dir' in process.stdout


def test_trainer_job_dir_in_a_missing_bucket_is_one_line(gcs_server,
                                                         tmp_path):
  line = _assert_one_line_error(_run(
      'trainer.task', '--job_dir=gs://no-such-bucket/run', '--epochs=1'))
  assert 'gs://no-such-bucket' in line


def test_trainer_gs_job_dir_without_credentials_is_one_line(tmp_path):
  line = _assert_one_line_error(_run(
      'trainer.task', '--job_dir=gs://test-bucket/run', '--epochs=1',
      **_no_credentials(tmp_path)))
  assert 'credentials' in line


def test_scorer_dataflow_dry_run_without_credentials_is_one_line(tmp_path):
  line = _assert_one_line_error(_run(
      'batch_predict.pipeline', '--runner=DataflowRunner',
      '--project=test-project', '--region=us-central1',
      '--temp_location=gs://test-bucket/tmp', '--setup_file=./setup.py',
      '--model_dir=gs://test-bucket/job/export',
      '--input=gs://test-bucket/in/*.png', '--output=gs://test-bucket/out/s',
      '--dry_run=True', **_no_credentials(tmp_path)))
  assert 'credentials' in line


# Runs `python -m MODULE ARGS...` in this interpreter, then prints the exit
# status and which heavy packages had been imported by then.
_IMPORTS_AFTER_A_BAD_FLAG = """
import runpy, sys
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
try:
  runpy.run_module(module, run_name='__main__', alter_sys=True)
except SystemExit as e:
  heavy = {m.split('.')[0] for m in sys.modules}
  print(e.code, sorted(heavy & {'tensorflow', 'apache_beam', 'keras'}))
"""


@pytest.mark.parametrize('module, args', [
    ('batch_predict.pipeline', ['--modle_dir=m', '--input=x', '--output=o']),
    ('batch_predict.pipeline', ['--model_dir=m', '--input=x']),
    ('batch_predict.pipeline', ['--model_dir=m', '--input=x', '--output=o',
                                '--top_k=0']),
    ('trainer.task', ['--job_dir=j', '--epochs=-1']),
    ('trainer.task', ['--job_dir=j', '--epocs=1']),
])
def test_bad_flags_are_reported_before_heavy_imports(tmp_path, module, args):
  process = subprocess.run(
      [sys.executable, '-c', _IMPORTS_AFTER_A_BAD_FLAG, module, *args],
      cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=helpers.REPO),
      capture_output=True, text=True, timeout=120)
  assert process.stdout.split() == ['2', '[]'], process.stdout
  assert len(process.stderr.splitlines()) == 1, process.stderr
  assert not (tmp_path / 'j').exists()


# What TensorFlow prints on a machine without a GPU, and its export internals.
_NOISE = ('cuInit', 'cudart_stub', 'oneDNN', 'absl::InitializeLog',
          'Sharding callback', 'fingerprint', 'signature_serialization',
          'Assets written')


def test_the_trainers_log_is_quiet_by_default(trained_job_dir):
  with open(os.path.join(os.path.dirname(trained_job_dir),
                         'trainer.log')) as f:
    lines = f.read().splitlines()
  for noise in _NOISE:
    assert not [line for line in lines if noise in line], noise
  configuration = [line for line in lines if 'Configuration' in line]
  assert len(configuration) == 1
  assert 'model=deep_mnist' in configuration[0]
  assert 'config.yaml' in configuration[0]
  assert any('Strategy: tf.distribute.get_strategy()' in line
             for line in lines)
  assert len(lines) < 20, lines


@pytest.mark.slow  # Two TensorFlow processes, side by side.
def test_the_other_commands_of_the_main_job_are_quiet_too(trained_export,
                                                         tmp_path):
  samples, evaluated = processes.run_modules(
      ('trainer.write_samples', [f'--output_dir={tmp_path / "samples"}',
                                 '--count=3']),
      ('trainer.evaluate', [f'--model_dir={trained_export}',
                            f'--output_dir={tmp_path / "evaluation"}']))
  for process in (samples, evaluated):
    assert process.returncode == 0, process.stderr[-3000:]
    for noise in _NOISE:
      assert noise not in process.stderr, (noise, process.stderr)
  assert len(os.listdir(tmp_path / 'samples')) == 3
  assert len(evaluated.stderr.splitlines()) <= 2, evaluated.stderr


@pytest.mark.slow
def test_verbosity_brings_the_full_configuration_and_notes_back(
    trained_job_dir):
  # A rerun of the finished job: TensorFlow is imported, nothing trained.
  process = _run('trainer.task', f'--job_dir={trained_job_dir}',
                 '--epochs=2', '--train_examples=1000', '--model=deep_mnist',
                 '--verbosity=1')
  assert process.returncode == 0, process.stderr
  assert "  model: 'deep_mnist'" in process.stderr
  with open(os.path.join(os.path.dirname(trained_job_dir),
                         'trainer.log')) as f:
    quiet = f.read()
  # TensorFlow's C++ notes of this machine (no GPU), hidden by default.
  notes = [noise for noise in _NOISE[:3] if noise in process.stderr]
  assert notes and not [noise for noise in notes if noise in quiet]


def test_library_logs_below_the_level_are_hidden_on_every_handler():
  import logging  # pylint: disable=g-import-not-at-top
  import apache_beam  # pylint: disable=g-import-not-at-top
  records = []

  class Keep(logging.Handler):

    def emit(self, record):
      records.append(record.getMessage())

  handler = Keep()
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    cli.hide_library_logs(('apache_beam',), below=logging.ERROR)
    beam_file = os.path.join(os.path.dirname(apache_beam.__file__),
                             'runners', 'direct', 'direct_runner.py')
    for level, path, message in (
        (logging.INFO, beam_file, 'Running pipeline with PrismRunner.'),
        (logging.WARNING, beam_file, 'Resource module is not available'),
        (logging.ERROR, beam_file, 'a real Beam error'),
        (logging.INFO, __file__, 'Scored 1 images')):
      handler.handle(logging.LogRecord('root', level, path, 1, message, (),
                                       None))
  finally:
    root.removeHandler(handler)
  assert records == ['a real Beam error', 'Scored 1 images']


def test_scorer_help_shows_defaults_and_cites_only_the_repository():
  help_text = _run('batch_predict.pipeline', '--help').stdout
  assert '(default: 3)' in help_text  # --top_k
  assert '(default: 10)' in help_text  # --num_shards
  for outside in ('DESIGN.md', 'http://', 'https://'):
    assert outside not in help_text


_SERVE_WITHOUT_KERAS = """
import sys
from trainer import artifact, cli
tf = cli.import_tensorflow_without_keras()
assert not [m for m in sys.modules if m.split('.')[0] == 'keras'], 'keras'
loaded = artifact.load(sys.argv[1], embeddings=True)
with open(sys.argv[2], 'rb') as f:
  image = tf.constant([f.read()])
print(float(loaded.serve(image_bytes=image)['probabilities'].numpy().sum()))
print(loaded.embed(image_bytes=image)['embeddings'].shape[-1])
import keras  # A later import of Keras still works.
print(keras.layers.Dense(2).units)
"""


@pytest.mark.slow  # A subprocess importing TensorFlow: ~4 s.
def test_the_scorer_serves_with_tensorflow_imported_without_keras(
    trained_export, tmp_path):
  image_files.write_digit_folder(str(tmp_path / 'digits'), 10)
  image = sorted((tmp_path / 'digits').rglob('*.png'))[0]
  process = subprocess.run(
      [sys.executable, '-c', _SERVE_WITHOUT_KERAS, trained_export,
       str(image)], capture_output=True, text=True, env=dict(
           os.environ, PYTHONPATH=helpers.REPO), check=False)
  assert process.returncode == 0, process.stderr[-2000:]
  total, size, units = process.stdout.split()
  assert abs(float(total) - 1) < 1e-5
  assert int(size) > 0 and units == '2'


def test_pausing_the_collector_freezes_what_start_up_made():
  code = """
import gc
from trainer import cli
cli.resume_garbage_collection()  # Not paused: nothing to resume.
print(gc.isenabled(), gc.get_freeze_count())
cli.pause_garbage_collection()
print(gc.isenabled())
made = [[i] for i in range(10_000)]
cli.resume_garbage_collection()
print(gc.isenabled(), gc.get_freeze_count() >= 10_000)
gc.disable()  # Off already: pausing must not turn it on at resume.
cli.pause_garbage_collection()
cli.resume_garbage_collection()
print(gc.isenabled())
"""
  process = subprocess.run([sys.executable, '-c', code], check=True,
                           env=dict(os.environ, PYTHONPATH=helpers.REPO),
                           capture_output=True, text=True, timeout=60)
  assert process.stdout.split() == [
      'True', '0', 'False', 'True', 'True', 'False']


# Runs `python -m MODULE ARGS...` in this interpreter and prints, at the
# module's first real work (the scorer's first batch, the trainer's
# training), whether the collector is on, whether start-up left over 100,000
# objects frozen, how many full collections ran before, and whether pandas
# was imported.
_COLLECTOR_AT_WORK = """
import builtins, gc, os, runpy, sys
module, target, method = sys.argv[1:4]
sys.argv = [module] + sys.argv[4:]
full = []
gc.callbacks.append(lambda phase, info: full.append(1) if (
    phase == 'start' and info['generation'] == 2) else None)
def first_work(*args, **kwargs):
  print(gc.isenabled(), gc.get_freeze_count() > 100_000, len(full),
        'pandas' in sys.modules, flush=True)
  os._exit(0)  # Beam would wrap a SystemExit.
# The work is replaced once its module has defined it (importing the module
# here first would import TensorFlow before the command's start-up).
real_import = builtins.__import__
def importing(*args, **kwargs):
  imported = real_import(*args, **kwargs)
  owner = sys.modules.get(target)
  for part in method.split('.')[:-1]:
    owner = getattr(owner, part, None)
  if owner is not None and hasattr(owner, method.split('.')[-1]):
    setattr(owner, method.split('.')[-1], first_work)
    builtins.__import__ = real_import
  return imported
builtins.__import__ = importing
runpy.run_module(module, run_name='__main__', alter_sys=True)
"""


@pytest.mark.slow  # 6-9 s here: each command imports TensorFlow.
@pytest.mark.parametrize('command', ['scorer', 'trainer'])
def test_start_up_runs_no_full_collection_and_work_runs_with_the_collector(
    trained_export, tmp_path, command):
  if command == 'scorer':
    image_files.write_image_folder(str(tmp_path / 'in'), ['a'], per_class=2)
    args = ['batch_predict.pipeline', 'batch_predict.model_handler',
            'ImageClassifierHandler.run_inference',
            f'--model_dir={trained_export}', f'--input={tmp_path / "in"}',
            f'--output={tmp_path / "out" / "s"}']
  else:
    args = ['trainer.task', 'trainer.train', 'run',
            f'--job_dir={tmp_path / "job"}', '--epochs=1']
  process = subprocess.run(
      [sys.executable, '-c', _COLLECTOR_AT_WORK, *args], cwd=str(tmp_path),
      env=dict(os.environ, PYTHONPATH=helpers.REPO), capture_output=True,
      text=True, timeout=300)
  assert process.returncode == 0, process.stderr[-3000:]
  enabled, frozen, full, pandas = process.stdout.split()
  assert (enabled, frozen, full) == ('True', 'True', '0'), process.stderr[-3000:]
  if command == 'scorer':  # (The trainer's Keras imports pandas.)
    assert pandas == 'False'


_BEAM_WITHOUT_PANDAS = """
import sys
from trainer import cli
beam = cli.import_beam_without_pandas()
print('pandas' in sys.modules, beam.Create.__name__)
import pyarrow as pa, pyarrow.parquet as pq
pq.write_table(pa.Table.from_pylist([{'uri': 'a'}]), sys.argv[1])
print(pq.read_table(sys.argv[1]).to_pylist()[0]['uri'])
import pandas  # A later import of pandas still works.
print(len(pandas.DataFrame({'a': [1, 2]})))
"""


def test_the_scorer_imports_beam_without_pandas_and_still_writes_parquet(
    tmp_path):
  process = subprocess.run(
      [sys.executable, '-c', _BEAM_WITHOUT_PANDAS, str(tmp_path / 'a.parquet')],
      capture_output=True, text=True, timeout=120,
      env=dict(os.environ, PYTHONPATH=helpers.REPO))
  assert process.returncode == 0, process.stderr[-2000:]
  assert process.stdout.split() == ['False', 'Create', 'a', '2']
