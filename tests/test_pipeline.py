"""The scoring command end to end: local and gs:// runs, checks before any
work, kill -9 and re-run, the README's command, and no train/serve skew."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import apache_beam as beam
from apache_beam.options import pipeline_options
from apache_beam.testing import test_pipeline
from apache_beam.testing import util
import pytest

from batch_predict import inputs
from batch_predict import options as options_lib
from batch_predict import outputs
from batch_predict import pipeline
from tests import conftest
from tests import image_files
from trainer import data
from trainer import export
from trainer import samples
from trainer import storage


def _uris(records):
  return sorted(r['uri'] for r in records)


def _write_digits(folder, count, image_format='png', offset=0):
  """Writes `count` test digits named NAME-LABEL.EXT; returns their paths."""
  os.makedirs(folder, exist_ok=True)
  paths = []
  for index, (digit, label) in enumerate(image_files.digits(count, offset)):
    path = os.path.join(folder, f'digit-{index:04d}-{label}.{image_format}')
    with open(path, 'wb') as f:
      f.write(image_files.encode(digit, image_format.upper().replace(
          'JPG', 'JPEG')))
    paths.append(path)
  return paths


def test_pipeline_outputs_are_what_it_writes(trained_export, tmp_path):
  good, bad = image_files.write_catalogue(str(tmp_path / 'images'),
                                          good_count=3)
  on_disk = {uri for uri in bad if os.path.exists(uri)}
  prefix = str(tmp_path / 'scores' / 'run')
  config = options_lib.build_config(pipeline_options.PipelineOptions([
      f'--model_dir={trained_export}', f'--input={tmp_path / "images"}',
      f'--output={prefix}', '--num_shards=3', '--top_k=2']))
  with test_pipeline.TestPipeline() as test:
    predictions, errors = pipeline.build_pipeline(test, config)
    util.assert_that(predictions | 'PredictionUris' >> beam.Map(
        lambda r: r['uri']), util.equal_to(list(good)), label='Predictions')
    util.assert_that(errors | 'ErrorUris' >> beam.Map(
        lambda r: r['uri']), util.equal_to(list(on_disk)), label='Errors')
  written = outputs.read_records(prefix, outputs.PREDICTIONS)
  assert _uris(written) == sorted(good)
  assert all(len(r['top_k']) == 2 for r in written)
  assert _uris(outputs.read_records(prefix, outputs.ERRORS)) == sorted(
      on_disk)
  assert len(os.listdir(tmp_path / 'scores')) == 6  # 3 shards of each.


def test_run_scores_a_uri_list_with_missing_and_unreadable_entries(
    trained_export, tmp_path):
  paths = _write_digits(str(tmp_path / 'images'), 4)
  listing = tmp_path / 'to-score.txt'
  listing.write_text('\n'.join(
      ['# today\'s batch', 'images/' + os.path.basename(paths[0])] +
      paths[1:] + ['', str(tmp_path / 'images' / 'gone.png'),
                   'ftp://example.com/x.png']) + '\n')
  prefix = str(tmp_path / 'scores' / 'list')
  result = pipeline.run([f'--model_dir={trained_export}', f'--input={listing}',
                         f'--output={prefix}', '--num_shards=2'],
                        test_pipeline=test_pipeline.TestPipeline())
  assert _uris(outputs.read_records(prefix, outputs.PREDICTIONS)) == paths
  errors = {r['uri']: r for r in outputs.read_records(prefix, outputs.ERRORS)}
  assert errors[str(tmp_path / 'images' / 'gone.png')]['kind'] == (
      inputs.NOT_FOUND)
  assert errors['ftp://example.com/x.png']['kind'] == inputs.INVALID_URI
  assert len(errors) == 2
  totals = pipeline.summarize(result)
  assert totals['images_scored'] == 4
  assert totals['errors_not_found'] == totals['errors_invalid_uri'] == 1


def test_scores_one_image_file(trained_export, tmp_path):
  path = _write_digits(str(tmp_path), 1)[0]
  prefix = str(tmp_path / 'one')
  pipeline.run([f'--model_dir={trained_export}', f'--input={path}',
                f'--output={prefix}', '--num_shards=1'],
               test_pipeline=test_pipeline.TestPipeline())
  assert _uris(outputs.read_records(prefix, outputs.PREDICTIONS)) == [path]


def test_gcs_end_to_end_model_images_and_outputs_in_buckets(
    gcs_server, beam_gcs_anonymous, trained_export, tmp_path):
  local_images = str(tmp_path / 'images')
  good, bad = image_files.write_catalogue(local_images, good_count=3)
  storage.upload_tree(trained_export, 'gs://test-bucket/job/export')
  storage.upload_tree(local_images, 'gs://test-bucket/images')
  listing = [u.replace(local_images, 'gs://test-bucket/images')
             for u in list(good) + list(bad)]
  storage.write_text('gs://test-bucket/lists/all.txt', '\n'.join(listing))
  # Leftovers of an earlier run with other settings: must not survive.
  stale = 'gs://test-bucket/scores/run-predictions-00007-of-00009.jsonl'
  storage.write_text(stale, '{"uri": "gs://test-bucket/old.png"}\n')
  result = pipeline.run([
      '--model_dir=/gcs/test-bucket/job/export',
      '--input=gs://test-bucket/lists/all.txt',
      '--output=gs://test-bucket/scores/run', '--num_shards=2'])
  assert result.state == 'DONE'
  written = sorted(storage.glob('gs://test-bucket/scores/*'))
  assert written == [
      f'gs://test-bucket/scores/run-{name}-0000{i}-of-00002.jsonl'
      for name in ('errors', 'predictions') for i in range(2)]
  predictions = outputs.read_records('gs://test-bucket/scores/run',
                                     outputs.PREDICTIONS)
  errors = outputs.read_records('gs://test-bucket/scores/run', outputs.ERRORS)
  assert _uris(predictions) == sorted(listing[:len(good)])
  assert _uris(errors) == sorted(listing[len(good):])
  kinds = {os.path.basename(r['uri']): r['kind'] for r in errors}
  assert kinds == {os.path.basename(u): kind for u, (kind, _) in bad.items()}


# --------------------------------------------------------------------------
# Bad options fail before any work.


@pytest.fixture
def earlier_output(tmp_path):
  """An output file of an earlier run: a failed start must not delete it."""
  path = tmp_path / 'scores' / 'run-predictions-00000-of-00001.jsonl'
  path.parent.mkdir()
  path.write_text('{"uri": "kept"}\n')
  return path


@pytest.mark.parametrize('flags,error,words', [
    ([], options_lib.ConfigError, 'Missing --model_dir, --input, --output'),
    (['--top-k=3'], options_lib.ConfigError, 'Unknown flag.*--top-k'),
    (['--top_k=11'], options_lib.ConfigError, "more than the model's 10"),
    (['--top_k=0'], options_lib.ConfigError, 'at least 1'),
    (['--min_batch_size=64', '--max_batch_size=8'], options_lib.ConfigError,
     'more than --max_batch_size'),
    (['--output=OUT/sc*res'], options_lib.ConfigError, 'cannot contain'),
    (['--output=OUT'], options_lib.ConfigError, 'is a folder'),
    (['--input=IMAGES/*.jpg'], inputs.InputError, 'no files match'),
    (['--model_dir=MISSING'], export.ArtifactError, 'no such model'),
    (['--dry_run=maybe'], options_lib.ConfigError, '--dry_run=True or False'),
    (['--runner=DataflowRunner', '--project=p', '--region=r',
      '--temp_location=gs://b/tmp', '--setup_file=./setup.py'],
     options_lib.ConfigError, 'Dataflow workers cannot read local paths'),
])
def test_bad_options_fail_before_any_work(trained_export, tmp_path,
                                          earlier_output, flags, error, words):
  images = _write_digits(str(tmp_path / 'images'), 1)
  defaults = {'--model_dir': trained_export, '--input': images[0],
              '--output': str(tmp_path / 'scores' / 'run')}
  given = {flag.split('=')[0] for flag in flags}
  argv = [f'{k}={v}' for k, v in defaults.items() if k not in given] + [
      flag.replace('OUT', str(tmp_path / 'scores')).replace(
          'IMAGES', str(tmp_path / 'images')).replace(
              'MISSING', str(tmp_path / 'missing')) for flag in flags]
  if not flags:
    argv = []
  with pytest.raises(error, match=words):
    pipeline.run(argv, test_pipeline=test_pipeline.TestPipeline())
  assert earlier_output.read_text() == '{"uri": "kept"}\n'


def test_incomplete_model_fails_before_any_work(trained_export, tmp_path,
                                                earlier_output):
  copy = str(tmp_path / 'export')
  shutil.copytree(trained_export, copy)
  os.remove(os.path.join(copy, export.COMPLETE_MARKER))
  images = _write_digits(str(tmp_path / 'images'), 1)
  with pytest.raises(export.ArtifactError, match='incomplete'):
    pipeline.run([f'--model_dir={copy}', f'--input={images[0]}',
                  f'--output={tmp_path / "scores" / "run"}'])
  assert earlier_output.exists()


def test_output_in_a_missing_bucket_fails_before_any_work(
    gcs_server, trained_export, tmp_path):
  images = _write_digits(str(tmp_path / 'images'), 1)
  with pytest.raises(options_lib.ConfigError, match='no such bucket'):
    pipeline.run([f'--model_dir={trained_export}', f'--input={images[0]}',
                  '--output=gs://no-such-bucket/scores/run'])


def test_dry_run_checks_everything_and_changes_nothing(
    trained_export, tmp_path, earlier_output):
  images = _write_digits(str(tmp_path / 'images'), 2)
  result = pipeline.run([
      f'--model_dir={trained_export}', f'--input={tmp_path / "images"}',
      f'--output={tmp_path / "scores" / "run"}', '--dry_run=True'])
  assert result.state == 'DONE'
  assert os.listdir(tmp_path / 'scores') == [earlier_output.name]
  assert earlier_output.read_text() == '{"uri": "kept"}\n'
  with pytest.raises(inputs.InputError):
    pipeline.run([f'--model_dir={trained_export}',
                  f'--input={images[0]}.missing',
                  f'--output={tmp_path / "scores" / "run"}', '--dry_run=True'])


@pytest.mark.slow
def test_command_line_errors_are_one_line_and_help_lists_the_flags(tmp_path):
  process = conftest.run_module(
      'batch_predict.pipeline', f'--input={tmp_path}/*.png', check=False)
  assert process.returncode == 2
  assert process.stderr.strip().endswith(
      'error: Missing --model_dir, --output; see --help.')
  assert 'Traceback' not in process.stderr
  help_text = conftest.run_module('batch_predict.pipeline', '--help').stdout
  for flag in ('--model_dir', '--input', '--output', '--top_k',
               '--min_batch_size', '--max_batch_size', '--max_image_pixels',
               '--max_file_bytes', '--num_shards'):
    assert flag in help_text


# --------------------------------------------------------------------------
# Crash safety.


def _wait_for(condition, timeout, interval=0.002):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return True
    time.sleep(interval)
  return False


@pytest.mark.slow
def test_rerun_after_kill_9_leaves_complete_outputs_without_duplicates(
    trained_export, tmp_path):
  images = _write_digits(str(tmp_path / 'images'), 120)
  (tmp_path / 'images' / 'empty.png').write_bytes(b'')
  inputs_all = sorted(images + [str(tmp_path / 'images' / 'empty.png')])
  out = tmp_path / 'scores'
  out.mkdir()
  # Many shards make writing the outputs take long enough to be caught
  # half-way by the kill.
  command = [sys.executable, '-m', 'batch_predict.pipeline',
             f'--model_dir={trained_export}', f'--input={tmp_path / "images"}',
             f'--output={out / "run"}', '--num_shards=300']
  env = dict(os.environ, PYTHONPATH=conftest.REPO, TF_CPP_MIN_LOG_LEVEL='2')
  killed = subprocess.Popen(command, cwd=conftest.REPO, env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  try:
    assert _wait_for(lambda: any(out.iterdir()), timeout=300), (
        'the first run never started writing')
    killed.send_signal(signal.SIGKILL)
  finally:
    killed.kill()
    killed.wait()
  assert killed.returncode == -signal.SIGKILL
  left = sorted(os.listdir(out))
  assert 0 < len(left) < 600, 'the kill should land while writing'

  rerun = subprocess.run(command, cwd=conftest.REPO, env=env,
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  names = sorted(os.listdir(out))
  assert names == sorted(
      outputs.shard_path('run', name, i, 300)
      for name in outputs.OUTPUT_NAMES for i in range(300))  # No leftovers.
  predictions = outputs.read_records(str(out / 'run'), outputs.PREDICTIONS)
  errors = outputs.read_records(str(out / 'run'), outputs.ERRORS)
  assert sorted(_uris(predictions) + _uris(errors)) == inputs_all
  assert _uris(errors) == [str(tmp_path / 'images' / 'empty.png')]


# --------------------------------------------------------------------------
# The README's main-job command.


def _readme_main_job():
  with open(os.path.join(conftest.REPO, 'README.md')) as f:
    readme = f.read()
  block = re.search(r'Run the main job.*?```bash\n(.*?)```', readme, re.S)
  assert block, 'README.md lost its main-job command'
  return [shlex.split(part) for part in
          block.group(1).replace('\\\n', ' ').split('&&')]


def test_readme_main_job_trains_writes_samples_and_scores_them():
  commands = _readme_main_job()
  assert commands[0] == ['pip', 'install', '-e', '.']
  modules = [c[2] for c in commands[1:]]
  assert modules == ['trainer.task', 'trainer.write_samples',
                     'batch_predict.pipeline']
  flags = [dict(f[2:].split('=', 1) for f in c[3:]) for c in commands[1:]]
  train, write, score = flags
  assert score['model_dir'] == train['job_dir'] + '/export'
  assert score['input'].startswith(write['output_dir'] + '/')


@pytest.mark.slow
def test_readme_scoring_command_runs_on_a_small_setting(trained_export,
                                                        tmp_path):
  """Runs the README's write_samples and scoring commands, 40 samples."""
  _, write, score = _readme_main_job()[1:]
  job_dir = dict(f[2:].split('=', 1) for f in _readme_main_job()[1][3:])[
      'job_dir']
  shutil.copytree(trained_export, str(tmp_path / 'export'))

  def localize(command):
    return [part.replace(job_dir, str(tmp_path)) for part in command[3:]]

  write_flags = [f for f in localize(write) if not f.startswith('--count=')]
  conftest.run_module('trainer.write_samples', *write_flags, '--count=40')
  process = conftest.run_module('batch_predict.pipeline', *localize(score))
  assert 'Scored 40 images; 0 errors' in process.stderr
  prefix = dict(f[2:].split('=', 1) for f in localize(score))['output']
  predictions = outputs.read_records(prefix, outputs.PREDICTIONS)
  assert len(predictions) == 40
  correct = sum(int(r['label']) == samples.label_from_name(r['uri'])
                for r in predictions)
  assert correct >= 20  # A trained model, not chance (4 of 40).


# --------------------------------------------------------------------------
# No train/serve skew.


@conftest.requires_fashion_mnist
@pytest.mark.slow
def test_scored_files_give_the_trainers_own_test_accuracy(tmp_path):
  job_dir = str(tmp_path / 'job')
  conftest.run_module(
      'trainer.task', '--dataset=fashion_mnist',
      f'--data_dir={conftest.FASHION_MNIST_DIR}', f'--job_dir={job_dir}',
      '--epochs=1', '--model=softmax')
  trainer_accuracy = conftest.read_json(
      os.path.join(job_dir, 'metrics.json'))['test_accuracy']
  source = data.load_idx('fashion_mnist', conftest.FASHION_MNIST_DIR, 0.1)
  for image_format in samples.FORMATS:
    samples.write_samples(source, 'test', str(tmp_path / 'samples'),
                          image_format=image_format)
  prefix = str(tmp_path / 'scores' / 'fashion')
  pipeline.run([f'--model_dir={job_dir}/export',
                f'--input={tmp_path / "samples"}', f'--output={prefix}',
                '--top_k=1', '--num_shards=4'])
  labels = export.read_metadata(f'{job_dir}/export')['labels']
  predictions = outputs.read_records(prefix, outputs.PREDICTIONS)
  assert not outputs.read_records(prefix, outputs.ERRORS)
  for extension in ('png', 'jpg'):
    scored = [r for r in predictions if r['uri'].endswith(extension)]
    assert len(scored) == 10_000
    accuracy = sum(labels.index(r['label']) == samples.label_from_name(
        r['uri']) for r in scored) / len(scored)
    assert abs(accuracy - trainer_accuracy) <= 0.005, (extension, accuracy,
                                                       trainer_accuracy)
