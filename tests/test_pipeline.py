"""The scoring command end to end: local and gs:// runs, checks before any
work, kill -9 and re-run, the README's command, and no train/serve skew."""

import json
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
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.testing import test_pipeline
from apache_beam.testing import util
import pytest
import tensorflow as tf

from batch_predict import inputs
from batch_predict import model_handler
from batch_predict import options as options_lib
from batch_predict import outputs
from batch_predict import pipeline
from tests import helpers
from tests.helpers import embeddings as cache_helpers
from tests.helpers import image_files
from tests.helpers import processes
from tests.helpers import records as record_files
from trainer import artifact
from trainer import embedding_cache
from trainer import errors as errors_lib
from trainer import lease as lease_lib
from trainer.data import samples
from trainer import storage
from trainer.data import idx
from trainer.data import tfrecords


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


@pytest.mark.slow  # 3.2 s here: over the fast tier's ~1.5 s a test.
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


@pytest.mark.slow  # 2.1 s here: over the fast tier's ~1.5 s a test.
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
      errors_lib.NOT_FOUND)
  assert errors['ftp://example.com/x.png']['kind'] == errors_lib.INVALID_URI
  assert len(errors) == 2
  totals = pipeline.summarize(result)
  assert totals['images_scored'] == 4
  assert totals['errors_not_found'] == totals['errors_invalid_uri'] == 1


@pytest.mark.slow  # 1.5 s here: over the fast tier's ~1.5 s a test.
def test_scores_one_image_file(trained_export, tmp_path):
  path = _write_digits(str(tmp_path), 1)[0]
  prefix = str(tmp_path / 'one')
  pipeline.run([f'--model_dir={trained_export}', f'--input={path}',
                f'--output={prefix}', '--num_shards=1'],
               test_pipeline=test_pipeline.TestPipeline())
  assert _uris(outputs.read_records(prefix, outputs.PREDICTIONS)) == [path]


@pytest.mark.slow
def test_labels_from_folders_put_each_class_folder_in_its_records(
    trained_export, tmp_path):
  images = tmp_path / 'images'
  paths = {label: _write_digits(str(images / label), 2, offset=offset)
           for offset, label in enumerate(('seven', 'one'))}
  (images / 'seven' / 'broken.png').write_bytes(b'not an image')
  prefix = str(tmp_path / 'scores' / 'labelled')
  argv = [f'--model_dir={trained_export}', f'--input={images}',
          f'--output={prefix}', '--num_shards=1', '--labels_from_folders']
  config = options_lib.build_config(pipeline_options.PipelineOptions(argv),
                                    argv)
  assert config.label_names == ('one', 'seven')
  pipeline.run(argv, test_pipeline=test_pipeline.TestPipeline())
  predictions = outputs.read_records(prefix, outputs.PREDICTIONS)
  assert sorted((r['uri'], r['true_label']) for r in predictions) == sorted(
      (uri, label) for label, uris in paths.items() for uri in uris)
  assert all(r['label'] in artifact.read_metadata(trained_export)['labels']
             for r in predictions)
  error, = outputs.read_records(prefix, outputs.ERRORS)
  assert error['true_label'] == 'seven'


@pytest.mark.slow  # 1.6 s here: over the fast tier's ~1.5 s a test.
def test_a_csv_manifest_scores_into_parquet_with_its_columns(
    trained_export, tmp_path):
  paths = _write_digits(str(tmp_path / 'images'), 3)
  manifest = tmp_path / 'manifest.csv'
  manifest.write_text(
      'shop,path,label\n' +
      ''.join(f'north {i},images/{os.path.basename(p)},{p[-5]}\n'
              for i, p in enumerate(paths)) +
      'south,images/gone.png,3\nbroken row\n')
  prefix = str(tmp_path / 'scores' / 'table')
  pipeline.run([f'--model_dir={trained_export}', f'--input={manifest}',
                '--uri_column=path', f'--output={prefix}', '--num_shards=2',
                '--output_format=parquet'],
               test_pipeline=test_pipeline.TestPipeline())
  predictions, shards = record_files.read_output(
      prefix, outputs.PREDICTIONS, outputs.PARQUET)
  assert len(shards) == 2
  assert sorted((r['uri'], r['shop'], r['true_label']) for r in predictions) == [
      (p, f'north {i}', p[-5]) for i, p in enumerate(paths)]
  errors, _ = record_files.read_output(prefix, outputs.ERRORS,
                                       outputs.PARQUET)
  assert sorted((r['kind'], r.get('shop')) for r in errors) == [
      (errors_lib.BAD_MANIFEST_ROW, None), (errors_lib.NOT_FOUND, 'south')]
  schema = record_files.pq.read_schema(shards[0])
  assert schema.names == ['uri', 'label', 'score', 'top_k', 'true_label',
                          'shop']


def test_a_manifest_column_named_like_an_output_field_is_refused(
    trained_export, tmp_path, earlier_output):
  manifest = tmp_path / 'manifest.jsonl'
  manifest.write_text('{"uri": "a.png", "score": 0.5}\n')
  with pytest.raises(errors_lib.UserError, match='score would collide') as e:
    pipeline.run([f'--model_dir={trained_export}', f'--input={manifest}',
                  f'--output={tmp_path / "scores" / "run"}'])
  assert '\n' not in str(e.value)
  assert earlier_output.read_text() == '{"uri": "kept"}\n'
  assert os.listdir(earlier_output.parent) == [earlier_output.name]



@pytest.mark.parametrize('imported', [False, True])
def test_the_command_tells_beam_it_is_not_in_ipython_without_importing_it(
    imported):
  from apache_beam.utils import interactive_utils  # pylint: disable=g-import-not-at-top
  saved = sys.modules.pop('IPython', None)
  session = type(sys)('IPython')  # A session's IPython, already imported.
  try:
    if imported:
      sys.modules['IPython'] = session
    pipeline._not_in_ipython()  # pylint: disable=protected-access
    if imported:
      assert sys.modules['IPython'] is session  # Left to Beam to ask.
    else:
      assert sys.modules['IPython'] is None
      assert not interactive_utils.is_in_ipython()
  finally:
    sys.modules.pop('IPython', None)
    if saved is not None:
      sys.modules['IPython'] = saved


@pytest.mark.slow  # 3.4 s here: over the fast tier's ~1.5 s a test.
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
      '--output=gs://test-bucket/scores/run', '--num_shards=2',
      '--embeddings'])
  assert result.state == 'DONE'
  written = sorted(storage.glob('gs://test-bucket/scores/*'))
  assert written == sorted(
      [f'gs://test-bucket/scores/run-{name}-0000{i}-of-00002.jsonl'
       for name in ('errors', 'predictions') for i in range(2)] +
      [f'gs://test-bucket/scores/run-embeddings-0000{i}-of-00002.tfrecord.gz'
       for i in range(2)] + ['gs://test-bucket/scores/run-embeddings.json'])
  # The embedding cache on the bucket: each scored image once.
  local_cache = tmp_path / 'cache'
  storage.download_tree('gs://test-bucket/scores', str(local_cache))
  cache, count, _ = cache_helpers.read_cache(str(local_cache / 'run'))
  assert count == len(good) and sorted(cache) == sorted(listing[:len(good)])
  assert embedding_cache.read_description(
      'gs://test-bucket/scores/run')['count'] == len(good)
  predictions = outputs.read_records('gs://test-bucket/scores/run',
                                     outputs.PREDICTIONS)
  errors = outputs.read_records('gs://test-bucket/scores/run', outputs.ERRORS)
  assert _uris(predictions) == sorted(listing[:len(good)])
  assert _uris(errors) == sorted(listing[len(good):])
  kinds = {os.path.basename(r['uri']): r['kind'] for r in errors}
  assert kinds == {os.path.basename(u): kind for u, (kind, _) in bad.items()}


@pytest.mark.slow
def test_gcs_manifest_and_tfrecord_inputs_end_to_end(
    gcs_server, beam_gcs_anonymous, trained_export, tmp_path):
  paths = _write_digits(str(tmp_path / 'images'), 3)
  storage.upload_tree(trained_export, 'gs://test-bucket/job/export')
  storage.upload_tree(str(tmp_path / 'images'), 'gs://test-bucket/data/images')
  names = [os.path.basename(p) for p in paths]
  # A CSV manifest with relative URIs (from its folder), an id and a bad row.
  storage.write_text('gs://test-bucket/data/manifest.csv', 'id,uri\n' + ''.join(
      f'{i},images/{name}\n' for i, name in enumerate(names)) + '9\n')
  pipeline.run(['--model_dir=gs://test-bucket/job/export',
                '--input=gs://test-bucket/data/manifest.csv',
                '--output=gs://test-bucket/scores/table', '--num_shards=2',
                '--output_format=parquet'])
  predictions, shards = record_files.read_output(
      'gs://test-bucket/scores/table', outputs.PREDICTIONS, outputs.PARQUET)
  assert len(shards) == 2
  by_uri = {r['uri']: r for r in predictions}
  assert {uri: r['id'] for uri, r in by_uri.items()} == {
      f'gs://test-bucket/data/images/{name}': str(i)
      for i, name in enumerate(names)}
  error, = record_files.read_output('gs://test-bucket/scores/table',
                                    outputs.ERRORS, outputs.PARQUET)[0]
  assert error['kind'] == errors_lib.BAD_MANIFEST_ROW
  assert error['uri'] == 'gs://test-bucket/data/manifest.csv#byte=' + str(
      len('id,uri\n') + sum(len(f'{i},images/{n}\n')
                            for i, n in enumerate(names)))
  # The same images as gzipped TFRecord shards, and one bad record.
  shard = str(tmp_path / 'shard-0.tfrecord.gz')
  with tf.io.TFRecordWriter(shard, 'GZIP') as writer:
    for path in paths:
      with open(path, 'rb') as f:
        writer.write(tfrecords.make_example(
            f.read(), 0, 'x', os.path.basename(path)).SerializeToString())
    writer.write(b'not an example')
  storage.write_bytes('gs://test-bucket/shards/shard-0.tfrecord.gz',
                      storage.read_bytes(shard))
  pipeline.run(['--model_dir=gs://test-bucket/job/export',
                "--input=gs://test-bucket/shards/*.tfrecord*",
                '--output=gs://test-bucket/scores/records', '--num_shards=1',
                '--output_format=csv'])
  from_records, _ = record_files.read_output(
      'gs://test-bucket/scores/records', outputs.PREDICTIONS, outputs.CSV)
  assert {r['uri']: (r['label'], r['score']) for r in from_records} == {
      os.path.basename(uri): (r['label'], r['score'])
      for uri, r in by_uri.items()}
  assert all(r['true_label'] == 'x' for r in from_records)
  bad, = record_files.read_output('gs://test-bucket/scores/records',
                                  outputs.ERRORS, outputs.CSV)[0]
  assert (bad['uri'], bad['kind']) == (
      'gs://test-bucket/shards/shard-0.tfrecord.gz#3', errors_lib.BAD_RECORD)


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
    (['--max_batch_pixels=-1'], options_lib.ConfigError,
     '--max_batch_pixels must be at least 0'),
    (['--min_batch_size=64', '--max_batch_size=8'], options_lib.ConfigError,
     'more than --max_batch_size'),
    (['--output=OUT/sc*res'], options_lib.ConfigError, 'cannot contain'),
    (['--output=gs://a-bucket'], options_lib.ConfigError, 'is a bucket'),
    (['--input=IMAGES/*.jpg'], inputs.InputError, 'no files match'),
    (['--model_dir=MISSING'], artifact.ArtifactError, 'no such model'),
    (['--dry_run=maybe'], options_lib.ConfigError, '--dry_run=True or False'),
    (['--output_format=xlsx'], options_lib.ConfigError,
     'use one of jsonl, csv, parquet'),
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


def test_direct_runner_is_the_in_memory_runner_without_trying_prism():
  for argv in ([], ['--runner=DirectRunner'], ['--runner=direct'],
               ['--direct_running_mode=multi_processing']):
    runner = pipeline._local_runner(pipeline_options.PipelineOptions(argv))  # pylint: disable=protected-access
    assert isinstance(runner, fn_runner.FnApiRunner), argv
  for argv in (['--runner=DataflowRunner'], ['--runner=PrismRunner'],
               ['--streaming']):
    assert pipeline._local_runner(  # pylint: disable=protected-access
        pipeline_options.PipelineOptions(argv)) is None, argv


@pytest.mark.parametrize('flags, redistributes', [
    ([], False),
    (['--direct_running_mode=multi_processing', '--direct_num_workers=2'],
     True),
    (['--runner=PortableRunner'], True),
])
def test_inputs_are_redistributed_unless_one_worker_in_process_scores_them(
    trained_export, tmp_path, flags, redistributes):
  images = _write_digits(str(tmp_path / 'images'), 2)
  argv = [f'--model_dir={trained_export}', f'--input={images[0]}',
          f'--output={tmp_path / "scores" / "run"}', *flags]
  options = pipeline_options.PipelineOptions(argv)
  built = beam.Pipeline(runner='DirectRunner', options=options)
  pipeline.build_pipeline(built, options_lib.build_config(options, argv))
  labels = []

  class _Labels(beam.pipeline.PipelineVisitor):

    def enter_composite_transform(self, node):
      labels.append(node.full_label)

  built.visit(_Labels())
  assert any(label.endswith('/Redistribute') for label in labels) == (
      redistributes)


def test_incomplete_model_fails_before_any_work(trained_export, tmp_path,
                                                earlier_output):
  copy = str(tmp_path / 'export')
  shutil.copytree(trained_export, copy)
  os.remove(os.path.join(copy, artifact.COMPLETE_MARKER))
  images = _write_digits(str(tmp_path / 'images'), 1)
  with pytest.raises(artifact.ArtifactError, match='incomplete'):
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
  process = helpers.run_module(
      'batch_predict.pipeline', f'--input={tmp_path}/*.png', check=False)
  assert process.returncode == 2
  assert process.stderr.strip().endswith(
      'error: Missing --model_dir, --output; see --help.')
  assert 'Traceback' not in process.stderr
  help_text = helpers.run_module('batch_predict.pipeline', '--help').stdout
  for flag in ('--model_dir', '--input', '--output', '--top_k',
               '--min_batch_size', '--max_batch_size', '--max_image_pixels',
               '--max_file_bytes', '--num_shards', '--input_format',
               '--break_lease'):
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
  # An earlier run's outputs (JSON lines, another --num_shards) and a
  # user's file; this run writes Parquet (the sink is the same for every
  # format, only the encoding differs).
  earlier = {name: b'{"uri": "earlier"}\n' for name in _shard_names('run', 7)}
  earlier['run-predictions-notes.txt'] = b'notes\n'
  for name, content in earlier.items():
    (out / name).write_bytes(content)
  # Many shards make writing the outputs take long enough to be caught
  # half-way by the kill.
  command = [sys.executable, '-m', 'batch_predict.pipeline',
             f'--model_dir={trained_export}', f'--input={tmp_path / "images"}',
             f'--output={out / "run"}', '--num_shards=300',
             '--output_format=parquet']
  env = dict(os.environ, PYTHONPATH=helpers.REPO, TF_CPP_MIN_LOG_LEVEL='2')

  def staged():
    return [path for folder in out.glob('.run-staging-*')
            for path in folder.iterdir()]

  killed = subprocess.Popen(command, cwd=helpers.REPO, env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  try:
    assert _wait_for(lambda: staged(), timeout=300), (
        'the first run never started writing')
    killed.send_signal(signal.SIGKILL)
  finally:
    killed.kill()
    killed.wait()
  assert killed.returncode == -signal.SIGKILL
  assert 0 < len(staged()) < 600, 'the kill should land while writing'
  # Killed before publishing: the earlier outputs are exactly as they were.
  assert {name: content for name, content in _snapshot(str(out)).items()
          if not name.startswith('.')} == earlier

  rerun = subprocess.run(command, cwd=helpers.REPO, env=env,
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  names = sorted(os.listdir(out))
  # No leftovers: neither the killed run's staging folder, nor the earlier
  # run's shards, nor the lease; the user's file stays.
  assert names == sorted(_shard_names('run', 300, outputs.PARQUET) |
                         {'run-predictions-notes.txt'})
  assert (out / 'run-predictions-notes.txt').read_bytes() == b'notes\n'
  predictions, _ = record_files.read_output(
      str(out / 'run'), outputs.PREDICTIONS, outputs.PARQUET)
  errors, _ = record_files.read_output(str(out / 'run'), outputs.ERRORS,
                                       outputs.PARQUET)
  assert sorted(_uris(predictions) + _uris(errors)) == inputs_all
  assert _uris(errors) == [str(tmp_path / 'images' / 'empty.png')]


# --------------------------------------------------------------------------
# The README's main-job command.


def _readme_main_job():
  with open(os.path.join(helpers.REPO, 'README.md')) as f:
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
  helpers.run_module('trainer.write_samples', *write_flags, '--count=40')
  process = helpers.run_module('batch_predict.pipeline', *localize(score))
  assert 'Scored 40 images; 0 errors' in process.stderr
  prefix = dict(f[2:].split('=', 1) for f in localize(score))['output']
  predictions = outputs.read_records(prefix, outputs.PREDICTIONS)
  assert len(predictions) == 40
  correct = sum(int(r['label']) == samples.label_from_name(r['uri'])
                for r in predictions)
  assert correct >= 20  # A trained model, not chance (4 of 40).


# --------------------------------------------------------------------------
# No train/serve skew.


@helpers.requires_fashion_mnist
@pytest.mark.slow
def test_scored_files_give_the_trainers_own_test_accuracy(tmp_path):
  job_dir = str(tmp_path / 'job')
  # A tenth of the training split gives a model far above chance (test
  # accuracy 0.67 here, 0.80 with all of it): what is compared is its
  # accuracy on the whole test split, as the trainer measured it and as
  # its scored files give it.
  helpers.train_in_process(
      dataset='fashion_mnist', data_dir=helpers.FASHION_MNIST_DIR,
      job_dir=job_dir, epochs=1, model='softmax', train_examples=5400)
  trainer_accuracy = helpers.read_json(
      os.path.join(job_dir, 'metrics.json'))['test_accuracy']
  source = idx.load_idx('fashion_mnist', helpers.FASHION_MNIST_DIR, 0.1)
  for image_format in samples.FORMATS:
    samples.write_samples(source, 'test', str(tmp_path / 'samples'),
                          image_format=image_format)
  prefix = str(tmp_path / 'scores' / 'fashion')
  pipeline.run([f'--model_dir={job_dir}/export',
                f'--input={tmp_path / "samples"}', f'--output={prefix}',
                '--top_k=1', '--num_shards=4'])
  labels = artifact.read_metadata(f'{job_dir}/export')['labels']
  predictions = outputs.read_records(prefix, outputs.PREDICTIONS)
  assert not outputs.read_records(prefix, outputs.ERRORS)
  for extension in ('png', 'jpg'):
    scored = [r for r in predictions if r['uri'].endswith(extension)]
    assert len(scored) == 10_000
    accuracy = sum(labels.index(r['label']) == samples.label_from_name(
        r['uri']) for r in scored) / len(scored)
    assert abs(accuracy - trainer_accuracy) <= 0.005, (extension, accuracy,
                                                       trainer_accuracy)


# --------------------------------------------------------------------------
# A run deletes only its own outputs, and only once its new ones are whole.


def _snapshot(folder):
  """{relative path: bytes} of every file under a local folder."""
  found = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, folder)] = f.read()
  return found


def _shard_names(basename, num_shards, output_format=outputs.JSONL):
  return {os.path.basename(outputs.shard_path(basename, name, index,
                                              num_shards, output_format))
          for name in outputs.OUTPUT_NAMES for index in range(num_shards)}


def _user_files(folder):
  """A note and an image named like outputs, and an earlier run's shards."""
  digit = image_files.encode(image_files.digits(1)[0][0], 'PNG')
  user = {'scores-predictions-notes.txt': b'my notes\n',
          'scores-errors-holiday.png': digit}
  earlier = {os.path.basename(outputs.shard_path('scores', name, index, 3)):
             b'{"uri": "old"}\n'
             for name in outputs.OUTPUT_NAMES for index in range(3)}
  for name, content in {**user, **earlier}.items():
    storage.write_bytes(storage.join(folder, name), content)
  return user


@pytest.mark.slow  # 1.9 s here: over the fast tier's ~1.5 s a test.
def test_user_files_beside_the_outputs_survive_and_are_scored(
    trained_export, tmp_path):
  folder = str(tmp_path / 'scores')
  user = _user_files(folder)
  prefix = os.path.join(folder, 'scores')
  pipeline.run([f'--model_dir={trained_export}', f'--input={folder}/*.png',
                f'--output={prefix}', '--num_shards=2'],
               test_pipeline=test_pipeline.TestPipeline())
  after = _snapshot(folder)
  assert set(after) == set(user) | _shard_names('scores', 2)
  assert {name: after[name] for name in user} == user
  assert _uris(outputs.read_records(prefix, outputs.PREDICTIONS)) == [
      os.path.join(folder, 'scores-errors-holiday.png')]
  assert not outputs.read_records(prefix, outputs.ERRORS)


@pytest.mark.slow  # 1.8 s here: over the fast tier's ~1.5 s a test.
def test_user_files_beside_the_outputs_survive_on_a_bucket(
    gcs_server, beam_gcs_anonymous, trained_export):
  folder = 'gs://test-bucket/out'
  user = _user_files(folder)
  # A `*` on GCS crosses '/': a glob-based clean-up would reach these.
  for uri in ('gs://test-bucket/out/scores-predictions-x/keep.jsonl',
              'gs://test-bucket/out-other/scores-errors-00000-of-00002.jsonl'):
    storage.write_text(uri, 'keep\n')
    user[uri[len(folder) + 1:]] = b'keep\n'
  result = pipeline.run([f'--model_dir={trained_export}',
                         f'--input={folder}/*.png',
                         f'--output={folder}/scores', '--num_shards=2'])
  assert result.state == 'DONE'
  after = {uri[len(folder) + 1:]: storage.read_bytes(uri)
           for uri in storage.list_files('gs://test-bucket')}
  assert set(after) == set(user) | _shard_names('scores', 2)
  assert {name: after[name] for name in user} == user
  assert _uris(outputs.read_records(f'{folder}/scores',
                                    outputs.PREDICTIONS)) == [
                                        f'{folder}/scores-errors-holiday.png']


def _break_saved_model(export_dir):
  shutil.rmtree(os.path.join(export_dir, artifact.SAVED_MODEL_DIR))


def _break_labels(export_dir):
  path = os.path.join(export_dir, artifact.METADATA_FILE)
  metadata = helpers.read_json(path)
  metadata['labels'] = ['cat', 'dog', 'bird']
  storage.write_json(path, metadata)


@pytest.mark.parametrize('damage,words', [
    (_break_saved_model, 'no SavedModel that loads'),
    (_break_labels, 'returns 10 probabilities but metadata.json lists 3 '
     'labels'),
])
def test_broken_artifact_fails_in_one_line_and_leaves_earlier_outputs(
    trained_export, tmp_path, earlier_output, damage, words):
  copy = str(tmp_path / 'export')
  shutil.copytree(trained_export, copy)
  damage(copy)
  images = _write_digits(str(tmp_path / 'images'), 1)
  before = _snapshot(str(tmp_path / 'scores'))
  with pytest.raises(artifact.ArtifactError, match=words) as raised:
    pipeline.run([f'--model_dir={copy}', f'--input={images[0]}',
                  f'--output={tmp_path / "scores" / "run"}'],
                 test_pipeline=test_pipeline.TestPipeline())
  assert '\n' not in str(raised.value)
  assert _snapshot(str(tmp_path / 'scores')) == before


@pytest.mark.slow  # 1.6 s here: over the fast tier's ~1.5 s a test.
def test_a_run_that_fails_leaves_the_earlier_outputs_and_no_staging(
    trained_export, tmp_path, earlier_output, monkeypatch):
  images = _write_digits(str(tmp_path / 'images'), 3)
  before = _snapshot(str(tmp_path / 'scores'))

  def fail(*unused_args, **unused_kwargs):
    raise RuntimeError('the worker ran out of memory')

  monkeypatch.setattr(model_handler.ImageClassifierHandler, 'run_inference',
                      fail)
  with pytest.raises(Exception, match='ran out of memory'):
    pipeline.run([f'--model_dir={trained_export}',
                  f'--input={tmp_path / "images"}',
                  f'--output={tmp_path / "scores" / "run"}'],
                 test_pipeline=test_pipeline.TestPipeline())
  assert _snapshot(str(tmp_path / 'scores')) == before
  assert sorted(os.listdir(tmp_path / 'scores')) == [earlier_output.name]
  assert len(images) == 3


@pytest.mark.slow  # 1.7 s here: over the fast tier's ~1.5 s a test.
def test_rerun_removes_a_killed_runs_staging_and_other_shard_counts_only(
    trained_export, tmp_path):
  _write_digits(str(tmp_path / 'images'), 2)
  folder = tmp_path / 'scores'
  killed = folder / f'.run-staging-{"b" * 32}'
  killed.mkdir(parents=True)
  (killed / 'run-predictions-00001-of-00002.jsonl').write_text('{}\n')
  (killed / f'run-errors-00000-of-00002.jsonl.tmp-{"c" * 32}').write_text('')
  (folder / 'run-errors-00004-of-00005.jsonl').write_text('{}\n')
  kept = {'run-predictions-notes.txt': b'notes\n',
          '.run-staging-mine/keep.txt': b'mine\n',
          'run-errors-00000-of-00002.jsonl.bak': b'backup\n'}
  for name, content in kept.items():
    (folder / name).parent.mkdir(exist_ok=True)
    (folder / name).write_bytes(content)
  pipeline.run([f'--model_dir={trained_export}',
                f'--input={tmp_path / "images"}', f'--output={folder / "run"}',
                '--num_shards=2'], test_pipeline=test_pipeline.TestPipeline())
  after = _snapshot(str(folder))
  assert set(after) == set(kept) | _shard_names('run', 2)
  assert {name: after[name] for name in kept} == kept
  assert sorted(os.listdir(folder)) == sorted(
      ['.run-staging-mine', 'run-predictions-notes.txt',
       'run-errors-00000-of-00002.jsonl.bak'] + list(_shard_names('run', 2)))


# --------------------------------------------------------------------------
# One scorer per output prefix.


@pytest.mark.slow  # 3.5 s here: over the fast tier's ~1.5 s a test.
def test_a_second_scorer_on_the_same_output_is_refused_before_any_work(
    trained_export, tmp_path, earlier_output):
  images = _write_digits(str(tmp_path / 'images'), 1)
  prefix = str(tmp_path / 'scores' / 'run')
  before = _snapshot(str(tmp_path / 'scores'))
  with lease_lib.Lease(outputs.lease_path(prefix), 'scoring'):
    for flags in ([], ['--break_lease']):  # A live local holder stays.
      with pytest.raises(lease_lib.LeaseError,
                         match=rf'in use: pid {os.getpid()} .*scoring'
                         ) as raised:
        pipeline.run([f'--model_dir={trained_export}', f'--input={images[0]}',
                      f'--output={prefix}', *flags],
                     test_pipeline=test_pipeline.TestPipeline())
      assert '\n' not in str(raised.value)
    assert set(_snapshot(str(tmp_path / 'scores'))) == set(before) | {
        '.run.lease'}
  pipeline.run([f'--model_dir={trained_export}', f'--input={images[0]}',
                f'--output={prefix}', '--num_shards=1'],
               test_pipeline=test_pipeline.TestPipeline())
  assert sorted(os.listdir(tmp_path / 'scores')) == sorted(
      _shard_names('run', 1))  # The lease file went with its run.


@pytest.mark.slow  # 2.4 s here: over the fast tier's ~1.5 s a test.
def test_break_lease_takes_over_a_lease_on_a_bucket(
    gcs_server, beam_gcs_anonymous, trained_export, tmp_path):
  images = _write_digits(str(tmp_path / 'images'), 1)
  prefix = 'gs://test-bucket/scores/run'
  held = {'host': 'another-machine', 'pid': 4242, 'purpose': 'scoring',
          'token': 'x', 'heartbeat': time.time(), 'acquired_at': 'earlier'}
  storage.write_text(outputs.lease_path(prefix), json.dumps(held))
  argv = [f'--model_dir={trained_export}', f'--input={images[0]}',
          f'--output={prefix}', '--num_shards=1']
  with pytest.raises(lease_lib.LeaseError, match='another-machine.*'
                     '--break_lease'):
    pipeline.run(argv)
  assert storage.list_files('gs://test-bucket') == [
      outputs.lease_path(prefix)]
  pipeline.run(argv + ['--break_lease'])
  assert storage.list_files('gs://test-bucket') == sorted(
      f'gs://test-bucket/scores/{name}' for name in _shard_names('run', 1))


# --------------------------------------------------------------------------
# Every entry accounted for, none hangs the job.


def _records_by_uri(prefix):
  found = {}
  for name in outputs.OUTPUT_NAMES:
    for record in outputs.read_records(prefix, name):
      assert record['uri'] not in found, f'{record["uri"]} written twice'
      found[record['uri']] = record.get('kind')
  return found


@pytest.mark.slow  # 2.4 s here: over the fast tier's ~1.5 s a test.
def test_a_hostile_folder_scores_every_entry_once_in_process(trained_export,
                                                              tmp_path):
  """The hostile folder less its unreadable sub-folder, which needs a child
  process (see the next test); a named pipe opened would fail the deadline,
  not hang the test."""
  folder = str(tmp_path / 'images')
  expected = image_files.write_hostile_folder(folder)
  prefix = str(tmp_path / 'scores' / 'run')
  processes.within(120, lambda: pipeline.run(
      [f'--model_dir={trained_export}', f'--input={folder}',
       f'--output={prefix}', '--num_shards=2'],
      test_pipeline=test_pipeline.TestPipeline()))
  assert _records_by_uri(prefix) == expected


@pytest.mark.slow
def test_a_hostile_folder_finishes_with_every_entry_once(trained_export,
                                                         tmp_path):
  # The scorer runs as a command whose file modes bind (as root, without
  # the capability that reads mode-000 folders), bounded by a timeout.
  unreadable = processes.can_make_unreadable_folders(str(tmp_path))
  folder = str(tmp_path / 'images')
  expected = image_files.write_hostile_folder(folder, unreadable=unreadable)
  prefix = str(tmp_path / 'scores' / 'run')
  try:
    process = subprocess.run(
        [sys.executable, '-m', 'batch_predict.pipeline',
         f'--model_dir={trained_export}', f'--input={folder}',
         f'--output={prefix}', '--num_shards=2'],
        cwd=helpers.REPO, capture_output=True, text=True, timeout=300,
        preexec_fn=processes.mode_checking_preexec() if unreadable else None,
        env=dict(os.environ, PYTHONPATH=helpers.REPO,
                 TF_CPP_MIN_LOG_LEVEL='2'))
  finally:
    if unreadable:
      os.chmod(os.path.join(folder, 'private'), 0o755)
  assert process.returncode == 0, process.stderr[-3000:]
  assert _records_by_uri(prefix) == expected
  assert unreadable or os.geteuid() != 0, (
      'ran as root without a way to make a folder unreadable')


@pytest.mark.slow  # 2.4 s here: over the fast tier's ~1.5 s a test.
def test_a_uri_list_with_every_bad_kind_of_line(trained_export, tmp_path):
  good = _write_digits(str(tmp_path / 'images'), 2)
  odd_name = str(tmp_path / 'images' / 'digit\u2028new\u0085line.png')
  shutil.copy(good[0], odd_name)
  os.mkfifo(tmp_path / 'pipe.png')
  os.symlink('loop.png', tmp_path / 'loop.png')
  (tmp_path / 'file.png').write_bytes(b'x')
  os.mkdir(tmp_path / 'folder')
  long_name = 'x' * 300 + '.png'
  lines = {
      good[0].encode(): None, good[1].encode(): None,
      odd_name.encode(): None,
      b'pipe.png': errors_lib.SPECIAL_FILE, b'loop.png': errors_lib.LINK_LOOP,
      b'file.png/inside.png': errors_lib.NOT_A_FOLDER,
      long_name.encode(): errors_lib.NAME_TOO_LONG,
      b's3://bucket/a.png': errors_lib.INVALID_URI,
      b'missing.png': errors_lib.NOT_FOUND,
      b'caf\xe9.png': errors_lib.INVALID_NAME,
      b'folder': errors_lib.NOT_A_FILE,
  }
  listing = tmp_path / 'list.txt'
  listing.write_bytes(b'\n'.join(lines) + b'\n')
  prefix = str(tmp_path / 'scores' / 'run')
  result = pipeline.run([f'--model_dir={trained_export}', f'--input={listing}',
                         f'--output={prefix}', '--num_shards=2'],
                        test_pipeline=test_pipeline.TestPipeline())
  totals = pipeline.summarize(result)
  assert totals['images_scored'] == 3
  for kind in filter(None, lines.values()):
    assert totals[f'errors_{kind}'] == 1, kind

  def uri(line):
    text = line.decode('utf-8', 'backslashreplace')
    return text if '://' in text else os.path.join(str(tmp_path), text)

  assert _records_by_uri(prefix) == {uri(line): kind
                                     for line, kind in lines.items()}


@pytest.mark.slow  # 1.4 s here: over the fast tier's ~1.5 s a test.
def test_one_corrupt_image_is_one_error_record(trained_export, tmp_path):
  photo = tmp_path / 'photo.jpg'
  photo.write_bytes(image_files.random_bytes())
  prefix = str(tmp_path / 'scores' / 'one')
  pipeline.run([f'--model_dir={trained_export}', f'--input={photo}',
                f'--output={prefix}', '--num_shards=1'],
               test_pipeline=test_pipeline.TestPipeline())
  assert _records_by_uri(prefix) == {str(photo): 'not_an_image'}


@pytest.mark.slow  # 4.5 s here: over the fast tier's ~1.5 s a test.
def test_input_format_overrides_the_extension(trained_export, tmp_path):
  image = _write_digits(str(tmp_path / 'images'), 1)[0]
  named_like_a_list = tmp_path / 'digit.txt'
  shutil.copy(image, named_like_a_list)
  named_like_an_image = tmp_path / 'list.png'
  named_like_an_image.write_text(f'{image}\n')
  for path, input_format, scored in ((named_like_a_list, 'image',
                                      str(named_like_a_list)),
                                     (named_like_an_image, 'list', image)):
    prefix = str(tmp_path / 'scores' / input_format)
    pipeline.run([f'--model_dir={trained_export}', f'--input={path}',
                  f'--input_format={input_format}', f'--output={prefix}',
                  '--num_shards=1'],
                 test_pipeline=test_pipeline.TestPipeline())
    assert _records_by_uri(prefix) == {scored: None}


# --------------------------------------------------------------------------
# The scorer never publishes NaN.


class _HalfNanModel(tf.Module):
  """Returns NaN probabilities for images of an odd number of bytes."""

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string,
                                              name='image_bytes')])
  def serve(self, image_bytes):
    odd = tf.equal(tf.strings.length(image_bytes) % 2, 1)[:, None]
    probabilities = tf.where(odd, tf.fill([1, 10], float('nan')),
                             tf.fill([1, 10], 0.1))
    return {'probabilities': probabilities, 'logits': probabilities}


def _write_half_nan_artifact(export_dir, trained_export):
  os.makedirs(export_dir)
  for name in (artifact.METADATA_FILE, artifact.COMPLETE_MARKER):
    shutil.copy(os.path.join(trained_export, name), export_dir)
  model = _HalfNanModel()
  tf.saved_model.save(model, os.path.join(export_dir, artifact.SAVED_MODEL_DIR),
                      signatures={artifact.SERVING_SIGNATURE: model.serve})


def _strict_json(line):
  def refuse(constant):
    raise ValueError(f'not JSON: {constant}')
  return json.loads(line, parse_constant=refuse)


def test_a_model_that_outputs_nan_gives_error_records(trained_export,
                                                      tmp_path):
  model_dir = str(tmp_path / 'export')
  _write_half_nan_artifact(model_dir, trained_export)
  paths = _write_digits(str(tmp_path / 'images'), 2)
  for path, parity in zip(paths, (0, 1)):  # One even, one odd file size.
    if os.path.getsize(path) % 2 != parity:
      with open(path, 'ab') as f:
        f.write(b'\x00')
  prefix = str(tmp_path / 'scores' / 'run')
  pipeline.run([f'--model_dir={model_dir}', f'--input={tmp_path / "images"}',
                f'--output={prefix}', '--num_shards=2'],
               test_pipeline=test_pipeline.TestPipeline())
  records = []
  for path in outputs.find_shards(prefix):
    with open(path) as f:
      records += [_strict_json(line) for line in f.read().split('\n') if line]
  assert {r['uri']: r.get('kind') for r in records} == {
      paths[0]: None, paths[1]: errors_lib.NON_FINITE_OUTPUT}
  scores = [r['score'] for r in records if 'score' in r]
  assert scores == [0.1]
