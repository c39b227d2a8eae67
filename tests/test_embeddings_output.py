"""The scorer's --embeddings output (Contract 4): every scored image once in
the cache with the extractor's vector and its label, the description, the
same staging and publishing as the predictions, and the refusals."""

import functools
import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
from apache_beam.testing import test_pipeline
import pytest
import tensorflow as tf

from batch_predict import embeddings
from batch_predict import model_handler
from batch_predict import options as options_lib
from batch_predict import outputs
from batch_predict import pipeline
from tests import helpers
from tests.helpers import embeddings as cache_helpers
from tests.helpers import image_files
from trainer import artifact
from trainer import embedding_cache
from trainer import export
from trainer import extractor
from trainer import models
from trainer import storage
from trainer.data import preprocessing


def _uris(records):
  return sorted(record['uri'] for record in records)


def _resized_colour_jpeg(digit):
  colour = np.stack([digit] * 3, -1)
  large = Image.fromarray(colour).resize((56, 56), Image.BILINEAR)
  buffer = io.BytesIO()
  large.save(buffer, 'JPEG', quality=90)
  return buffer.getvalue()


def _labelled_folder(root):
  """Digit PNGs in class folders, a resized colour JPEG of one of them, and
  bad files: a class whose only file is broken, an empty file."""
  written = image_files.write_digit_folder(root, 12)
  with open(written[0][0], 'rb') as f:
    digit = np.asarray(Image.open(f))
  jpeg = os.path.join(root, str(written[0][1]), 'resized-colour.jpg')
  with open(jpeg, 'wb') as f:
    f.write(_resized_colour_jpeg(digit))
  os.makedirs(os.path.join(root, 'zz-broken'))
  broken = os.path.join(root, 'zz-broken', 'broken.png')
  with open(broken, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n not really')
  empty = os.path.join(root, str(written[1][1]), 'empty.png')
  open(empty, 'wb').close()
  good = {path: str(label) for path, label in written}
  good[jpeg] = str(written[0][1])
  return good, [broken, empty]


@pytest.mark.slow  # A real model over 15 images: ~4 s.
def test_every_scored_image_has_the_extractors_vector_and_its_label(
    trained_export, tmp_path):
  root = str(tmp_path / 'digits')
  good, bad = _labelled_folder(root)
  prefix = str(tmp_path / 'out' / 'cache')
  pipeline.run([f'--model_dir={trained_export}', f'--input={root}',
                f'--output={prefix}', '--num_shards=2', '--embeddings',
                '--labels_from_folders'],
               test_pipeline=test_pipeline.TestPipeline())
  predictions = outputs.read_records(prefix, outputs.PREDICTIONS)
  errors = outputs.read_records(prefix, outputs.ERRORS)
  assert _uris(predictions) == sorted(good)
  assert _uris(errors) == sorted(bad)
  cache, count, shards = cache_helpers.read_cache(prefix)
  assert count == len(cache) == len(good)  # Each scored image once.
  assert sorted(cache) == sorted(good)
  assert len(shards) == 2
  description = embedding_cache.read_description(prefix)
  label_names = sorted(os.listdir(root))  # The class folders, sorted.
  metadata = artifact.read_metadata(trained_export)
  assert description['label_names'] == label_names
  assert description['count'] == len(good)
  assert description['shards'] == 2
  assert description['fingerprint'] == metadata['embeddings']['fingerprint']
  assert description['embedding_size'] == metadata['embeddings']['size']
  assert embedding_cache.input_shape(description) == (28, 28, 1)
  for uri, (_, label, name) in cache.items():
    assert name == good[uri]
    assert label == label_names.index(name)
  # The vectors: the extractor on the same decoded pixels.
  uris = sorted(good)
  encoded = []
  for uri in uris:
    with open(uri, 'rb') as f:
      encoded.append(f.read())
  pixels = preprocessing.decode_images(tf.constant(encoded), 28, 28, 1)
  embed = extractor.embedding_model(export.load_keras_model(trained_export))
  expected = embed(pixels, training=False).numpy()
  np.testing.assert_allclose(np.stack([cache[uri][0] for uri in uris]),
                             expected, atol=1e-5)


@pytest.mark.slow  # A real model over 6 images in process: ~5 s.
def test_a_manifests_labels_index_the_cache_in_numeric_order(
    trained_export, tmp_path):
  """Labels not listed before the run (a manifest's column): the shards'
  indices follow the cache's label names, integers sorted as numbers."""
  written = image_files.write_digit_folder(str(tmp_path / 'digits'), 6)
  labels = ['10', '2', '10', '9', '2', '10']
  manifest = tmp_path / 'manifest.jsonl'
  manifest.write_text(''.join(
      f'{{"uri": "{path}", "label": "{label}", "id": "{index}"}}\n'
      for index, ((path, _), label) in enumerate(zip(written, labels))))
  prefix = str(tmp_path / 'out' / 'cache')
  pipeline.run([f'--model_dir={trained_export}', f'--input={manifest}',
                f'--output={prefix}', '--num_shards=2', '--embeddings_only'],
               test_pipeline=test_pipeline.TestPipeline())
  cache, count, _ = cache_helpers.read_cache(prefix)
  names = embedding_cache.read_description(prefix)['label_names']
  assert names == ['2', '9', '10']
  assert count == 6
  assert {uri: cache[uri][1:] for uri, _ in written} == {
      path: (names.index(label), label)
      for (path, _), label in zip(written, labels)}


def _put(path, text=''):
  return helpers.write_file(path, text)


def test_publishing_removes_a_stale_cache_and_only_its_exact_names(tmp_path):
  prefix = str(tmp_path / 'run')
  # An earlier --embeddings run's cache (another --num_shards), a killed
  # writer's temporary file, and a user's files that must stay.
  stale = [_put(outputs.shard_path(prefix, outputs.EMBEDDINGS, index, 3))
           for index in range(3)]
  stale += [_put(f'{stale[0]}.tmp-{"c" * 32}'),
            _put(embedding_cache.description_path(prefix), '{}')]
  kept = [_put(str(tmp_path / name)) for name in (
      'run-embeddings-notes.txt', 'run-embeddings-00000-of-00003.jsonl',
      'other-embeddings-00000-of-00003.tfrecord.gz')]
  staging = outputs.staging_folder(prefix, 'a' * 32)
  staged = [_put(os.path.join(staging, os.path.basename(
      outputs.shard_path(prefix, name, 0, 1)))) for name in outputs.OUTPUT_NAMES]
  # A run without --embeddings: the scorer's names and files.
  outputs.publish(prefix, 'a' * 32, staged, outputs.OUTPUT_NAMES, 1,
                  files=(outputs.EMBEDDINGS_DESCRIPTION,),
                  stale_names=outputs.ALL_OUTPUT_NAMES)
  assert sorted(os.listdir(tmp_path)) == sorted(
      [os.path.basename(path) for path in kept] +
      [os.path.basename(outputs.shard_path(prefix, name, 0, 1))
       for name in outputs.OUTPUT_NAMES])
  # A killed --embeddings run's staging folder: its cache files go too.
  killed = outputs.staging_folder(prefix, 'b' * 32)
  _put(os.path.join(killed, os.path.basename(
      outputs.shard_path(prefix, outputs.EMBEDDINGS, 0, 1))))
  _put(os.path.join(killed, os.path.basename(
      embedding_cache.description_path(prefix))))
  outputs.remove_staging_folders(prefix)
  assert not os.path.exists(killed)


@pytest.mark.slow  # An export and a load: 1.3-2.5 s here.
def test_embeddings_of_a_softmax_model_are_refused_before_any_work(tmp_path):
  model = models.build_model('softmax', (8, 8, 1), 2)
  model_dir = str(tmp_path / 'export')
  export.export_model(model, model_dir, export.build_metadata(
      class_names=['a', 'b'], image_shape=(8, 8, 1), dataset='image_folder',
      model_name='softmax'))
  image = tmp_path / 'one.png'
  image.write_bytes(image_files.encode_image(
      image_files.random_pixels(8, 8, 1), 'PNG'))
  earlier = tmp_path / 'scores' / 'run-predictions-00000-of-00001.jsonl'
  earlier.parent.mkdir()
  earlier.write_text('{"uri": "kept"}\n')
  for flag in ('--embeddings', '--embeddings_only'):
    with pytest.raises(artifact.ArtifactError) as raised:
      pipeline.run([f'--model_dir={model_dir}', f'--input={image}',
                    f'--output={tmp_path / "scores" / "run"}', flag],
                   test_pipeline=test_pipeline.TestPipeline())
    assert '\n' not in str(raised.value)
    assert 'softmax/mlp' in str(raised.value)
  assert sorted(os.listdir(earlier.parent)) == [earlier.name]
  assert earlier.read_text() == '{"uri": "kept"}\n'


def test_embeddings_only_with_evaluate_is_refused_before_beam():
  with pytest.raises(options_lib.ConfigError, match='--embeddings_only'):
    options_lib.check_flags(['--model_dir=m', '--input=i', '--output=/tmp/o',
                             '--embeddings_only', '--evaluate'])


def _wait_for(condition, timeout):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return True
    time.sleep(0.05)
  return False


@pytest.mark.slow  # Two runs in subprocesses, one in two processes: ~40 s.
def test_a_rerun_after_kill_9_gives_the_same_cache_without_duplicates(
    trained_export, tmp_path):
  root = str(tmp_path / 'digits')
  written = image_files.write_digit_folder(root, 40)
  open(os.path.join(root, 'empty.png'), 'wb').close()
  out = tmp_path / 'out'
  out.mkdir()
  # An earlier run's predictions, and a user's file that stays.
  earlier = {'run-predictions-00000-of-00003.jsonl': '{"uri": "x"}\n',
             'run-embeddings-notes.txt': 'mine'}
  for name, text in earlier.items():
    (out / name).write_text(text)
  prefix = str(out / 'run')
  # Many shards make writing take long enough to be caught by the kill.
  command = [sys.executable, '-m', 'batch_predict.pipeline',
             f'--model_dir={trained_export}', f'--input={root}',
             f'--output={prefix}', '--num_shards=150', '--embeddings_only',
             '--labels_from_folders']
  env = dict(os.environ, PYTHONPATH=helpers.REPO, TF_CPP_MIN_LOG_LEVEL='2')

  def staged_embeddings():
    return [path for folder in out.glob('.run-staging-*')
            for path in folder.iterdir()
            if embedding_cache.is_shard_name(path.name)]

  killed = subprocess.Popen(command, cwd=helpers.REPO, env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  try:
    assert _wait_for(staged_embeddings, timeout=300), (
        'the first run never started writing its embeddings')
    killed.send_signal(signal.SIGKILL)
  finally:
    killed.kill()
    killed.wait()
  assert killed.returncode == -signal.SIGKILL
  assert 0 < len(staged_embeddings()) < 150, 'the kill should land while writing'
  # Killed before publishing: the earlier outputs are exactly as they were.
  assert {path.name: path.read_text() for path in out.iterdir()
          if not path.name.startswith('.')} == earlier
  # The rerun in two processes: the description's count is combined.
  rerun = subprocess.run(command + ['--direct_num_workers=2',
                                    '--direct_running_mode=multi_processing'],
                         cwd=helpers.REPO, env=env, capture_output=True,
                         text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  # --embeddings_only: the cache and the errors, no predictions (the
  # earlier run's are removed); the user's file stays.
  assert sorted(os.listdir(out)) == sorted(
      [os.path.basename(outputs.shard_path(prefix, name, index, 150))
       for name in (outputs.ERRORS, outputs.EMBEDDINGS)
       for index in range(150)] +
      ['run-embeddings.json', 'run-embeddings-notes.txt'])
  cache, count, _ = cache_helpers.read_cache(prefix)
  assert count == len(cache) == len(written)
  assert sorted(cache) == sorted(path for path, _ in written)
  description = embedding_cache.read_description(prefix)
  assert description['count'] == len(written)
  label_names = sorted(name for name in os.listdir(root)
                       if os.path.isdir(os.path.join(root, name)))
  assert description['label_names'] == label_names
  for path, label in written:
    assert cache[path][1:] == (label_names.index(str(label)), str(label))
  assert _uris(outputs.read_records(prefix, outputs.ERRORS)) == [
      os.path.join(root, 'empty.png')]


def test_the_handler_embeds_each_batch_in_one_call_per_signature():
  calls = []

  def signature(name, output, width):
    def call(image_bytes):
      calls.append((name, int(image_bytes.shape[0])))
      return {output: tf.fill([image_bytes.shape[0], width], 0.5)}
    return call

  serve = signature('serve', 'probabilities', 2)
  embed = signature('embed', embedding_cache.OUTPUT_KEY, 3)
  handler = model_handler.ImageClassifierHandler('unused', max_batch_size=8)
  both = model_handler.Classifier(serve, None, ('a', 'b'), embed=embed)
  results = handler.run_inference([b'image'] * 5, both)
  assert calls == [('serve', 4), ('embed', 4), ('serve', 1), ('embed', 1)]
  assert all(isinstance(result.inference, model_handler.Embedded)
             for result in results)
  np.testing.assert_array_equal(results[0].inference.embedding, [0.5] * 3)
  assert len(results[0].inference.probabilities) == 2
  calls.clear()
  only = model_handler.Classifier(serve, None, ('a', 'b'), embed=embed,
                                  predictions=False)
  results = handler.run_inference([b'image'] * 4, only)
  assert calls == [('embed', 4)]
  assert all(result.inference.probabilities is None for result in results)


def test_label_names_sort_folders_as_text_and_integer_labels_as_numbers():
  assert embeddings.sorted_label_names({'10', '2', '1'}) == ('1', '10', '2')
  assert embeddings.sorted_label_names({'10', '2', '1'}, numeric=True) == (
      '1', '2', '10')
  assert embeddings.sorted_label_names({'cat', '2'}, numeric=True) == (
      '2', 'cat')
  # Two workers' partial summaries of their pieces (records, label names
  # met, records without a label) merge into the whole run's.
  combine = embeddings.SummarizeFn(known_label_names=('a', 'z'))
  first, second = combine.create_accumulator(), combine.create_accumulator()
  for piece in ((2, ('a', 'b'), 1), (1, ('b',), 0)):
    first = combine.add_input(first, piece)
  second = combine.add_input(second, (1, ('c',), 0))
  merged = combine.merge_accumulators([first, second])
  assert combine.extract_output(merged) == (4, ('a', 'b', 'c', 'z'), 1)


@pytest.mark.parametrize('size', [0, 1, 31, 32, 3136, 40000])
def test_packed_floats_fill_a_float_list_as_extend_does(size):
  from tensorflow.core.example import feature_pb2  # pylint: disable=g-import-not-at-top
  vector = np.random.default_rng(size).standard_normal(size).astype(
      np.float32)
  vector[::3] = 0
  packed, extended = feature_pb2.FloatList(), feature_pb2.FloatList()
  packed.MergeFromString(embeddings.packed_floats(vector))
  extended.value.extend(vector.tolist())
  assert packed.SerializeToString() == extended.SerializeToString()
  np.testing.assert_array_equal(np.array(packed.value, np.float32), vector)


def test_a_publish_cut_short_leaves_no_description_over_a_mix(
    tmp_path, monkeypatch):
  prefix = str(tmp_path / 'run')
  description = embedding_cache.description_path(prefix)
  old = [_put(outputs.shard_path(prefix, outputs.EMBEDDINGS, index, 2), 'old')
         for index in range(2)]
  _put(description, '{"count": "old"}')
  run_id = 'a' * 32
  staging = outputs.staging_folder(prefix, run_id)
  staged = [_put(os.path.join(staging, os.path.basename(path)), 'new')
            for path in old]
  staged.append(_put(os.path.join(staging, os.path.basename(description)),
                     '{"count": "new"}'))
  publish = functools.partial(
      outputs.publish, prefix, run_id, staged, [outputs.EMBEDDINGS], 2,
      files=(outputs.EMBEDDINGS_DESCRIPTION,))
  real_move, moves = storage.move, []

  def move_once_then_die(source, destination):
    if moves:
      raise OSError('killed')
    moves.append(destination)
    real_move(source, destination)

  monkeypatch.setattr(storage, 'move', move_once_then_die)
  with pytest.raises(OSError, match='killed'):
    publish()
  # One new shard beside an old one, and no description to vouch for them.
  assert [open(path).read() for path in old] == ['new', 'old']
  assert not os.path.exists(description)
  monkeypatch.setattr(storage, 'move', real_move)
  publish()  # The retry (or the rerun) completes it.
  assert [open(path).read() for path in old] == ['new', 'new']
  assert open(description).read() == '{"count": "new"}'


def _example_rows(count, seed=0):
  """(uri, float32 bytes, label name or None) rows and their vectors."""
  vectors = np.random.default_rng(seed).standard_normal((count, 5)).astype(
      np.float32)
  return [(f'gs://b/{index}.png', vectors[index].tobytes(),
           'cat' if index % 2 else None) for index in range(count)], vectors


def _parsed(path):
  return [tf.train.Example.FromString(record.numpy())
          for record in tf.data.TFRecordDataset(str(path), 'GZIP')]


@pytest.mark.parametrize('count', [0, 1, 255, 256, 257, 2000])
def test_a_shard_written_in_gzip_members_reads_back_in_order(
    tmp_path, monkeypatch, count):
  """The writer compresses members of a shard on several threads: TensorFlow
  and Python's gzip read the shard as one stream, every record in order."""
  import gzip  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(embeddings, '_WRITER_THREADS', 2)
  rows, vectors = _example_rows(count, count)
  path = tmp_path / 'shard.tfrecord.gz'
  with open(path, 'wb') as f:
    embeddings.write_examples(f, iter(
        embeddings.to_example(row, {'cat': 0}, tf.train.Example)
        for row in rows))
  data = path.read_bytes()
  members = -(-count // embeddings._MEMBER_RECORDS) or 1  # pylint: disable=protected-access
  assert data.count(b'\x1f\x8b\x08') >= members  # gzip headers
  parsed = _parsed(path)
  assert [example.features.feature['uri'].bytes_list.value[0].decode()
          for example in parsed] == [f'gs://b/{index}.png'
                                     for index in range(count)]
  for index, example in enumerate(parsed):
    feature = example.features.feature
    np.testing.assert_array_equal(feature['embedding'].float_list.value,
                                  vectors[index])
    assert ('label' in feature) == bool(index % 2)
    if index % 2:
      assert list(feature['label'].int64_list.value) == [0]
  # Python's gzip reads every member too: each record's TFRecord frame
  # (length 8, its CRC 4, data, its CRC 4).
  assert len(gzip.decompress(data)) == sum(
      16 + len(example.SerializeToString()) for example in parsed)


def _write_pieces(fn, rows):
  """Runs `_WritePiecesFn` over one bundle of rows; its (shard, piece)s."""
  fn.setup()
  fn.start_bundle()
  for uri, vector, label in rows:
    list(fn.process({'uri': uri, 'embedding': vector, 'label': label}) or ())
  pieces = [value.value for value in fn.finish_bundle()]
  fn.teardown()
  return pieces


@pytest.mark.parametrize('listed', [('cat', 'dog'), ('dog',)])
def test_pieces_assemble_into_shards_with_the_caches_label_indices(
    tmp_path, monkeypatch, listed):
  """Two bundles write pieces into the staging folder, by shard; a shard is
  its pieces' records. With the label names listed before the run, the
  indices written are kept; with a name that was not listed ('cat' here),
  every index is rewritten from its label name."""
  monkeypatch.setattr(embeddings, '_MEMBER_RECORDS', 7)
  prefix, run_id = str(tmp_path / 'out' / 'run'), 'b' * 32
  rows, vectors = _example_rows(300)
  rows = [(uri, vector, 'dog' if label is None else label)
          for uri, vector, label in rows]
  make = functools.partial(embeddings._WritePiecesFn, prefix, run_id, 3,  # pylint: disable=protected-access
                           listed)
  pieces = _write_pieces(make(), rows[:100]) + _write_pieces(make(),
                                                             rows[100:])
  staging = outputs.staging_folder(prefix, run_id)
  assert sorted(os.listdir(staging)) == sorted(
      os.path.basename(path) for _, (path, *_) in pieces)
  assert len(pieces) == 6  # Two bundles, three shards.
  assert sum(count for _, (_, count, _, _) in pieces) == 300
  summary = (300, ('cat', 'dog'), 0)
  shard_format = embeddings.ShardFormat(listed)
  by_uri = {}
  for shard in range(3):
    path = tmp_path / f'shard-{shard}.tfrecord.gz'
    with open(path, 'wb') as f:
      shard_format.write(f, [piece for index, piece in pieces
                             if index == shard] + [None], summary)
    for example in _parsed(path):
      feature = example.features.feature
      uri = feature['uri'].bytes_list.value[0].decode()
      assert outputs.shard_of(uri, 3) == shard
      by_uri[uri] = (list(feature['label'].int64_list.value),
                     feature['label_name'].bytes_list.value[0].decode(),
                     np.array(feature['embedding'].float_list.value,
                              np.float32))
  assert sorted(by_uri) == sorted(uri for uri, _, _ in rows)
  for index, (uri, _, label) in enumerate(rows):
    assert by_uri[uri][:2] == ([('cat', 'dog').index(label)], label)
    np.testing.assert_array_equal(by_uri[uri][2], vectors[index])
  # A shard without pieces is one empty gzip member.
  empty = tmp_path / 'empty.tfrecord.gz'
  with open(empty, 'wb') as f:
    shard_format.write(f, [None], summary)
  assert _parsed(empty) == [] and empty.stat().st_size > 0
  # The pieces are temporary files of the shards: the cleanup removes them.
  outputs.remove_staging_folders(prefix, run_id)
  assert not os.path.exists(staging)
