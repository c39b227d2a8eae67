"""Two-stage transfer: a head trained on an embedding cache, then stitched.

The fast tests' caches are written by tests/helpers/embeddings.py, as the
scorer's `--embeddings --labels_from_folders` writes them; the slow tests'
cache by the scorer itself (and checked against the helper's vectors), from
the session's trained deep_mnist export; the digits are real ones, in class
folders.
"""

import os

from apache_beam.testing import test_pipeline as beam_test_pipeline
import keras
import numpy as np
import pytest
import tensorflow as tf

from batch_predict import pipeline as scorer
from tests.helpers import embeddings as cache_helpers
from tests.helpers import image_files
from tests.helpers import interrupt
from trainer import artifact
from trainer import config as config_lib
from trainer import data
from trainer import embedding_cache
from trainer import export
from trainer import extractor
from trainer import run_context
from trainer import storage
from trainer import train
from trainer import transfer
from trainer.data import embeddings
from trainer.data import folder as folder_lib

# The fast tests' cache, and the slow runs' (a test split of about 40).
SMALL = 60
DIGITS = 400
# The settings of the two-stage run and of the one-stage run it is compared
# with: the same seed (the default), epochs, batches and split.
RUN = {'epochs': 3, 'batch_size': 32, 'learning_rate': 0.003}


def _digit_cache(root, export_dir, count):
  """(image folder, cache PREFIX, {uri: embedding}) of `count` real digits."""
  images = str(root / 'digits')
  image_files.write_digit_folder(images, count)
  prefix = str(root / 'cache' / 'digits')
  os.makedirs(os.path.dirname(prefix))
  vectors = cache_helpers.write_cache(
      export_dir, prefix, cache_helpers.folder_files(images))
  return images, prefix, vectors


@pytest.fixture(scope='module')
def small_cache(tmp_path_factory, trained_export):
  return _digit_cache(tmp_path_factory.mktemp('small'), trained_export, SMALL)


@pytest.fixture(scope='module')
def digit_cache(tmp_path_factory, trained_export):
  """The slow tests' cache, written by the scorer itself (Contract 4's
  writer), with the stand-in helper's vectors of the same files."""
  root = tmp_path_factory.mktemp('digits')
  images = str(root / 'digits')
  image_files.write_digit_folder(images, DIGITS)
  prefix = str(root / 'cache' / 'digits')
  scorer.run([f'--model_dir={trained_export}', f'--input={images}',
              f'--output={prefix}', '--embeddings_only',
              '--labels_from_folders'],
             test_pipeline=beam_test_pipeline.TestPipeline())
  cache, _, _ = cache_helpers.read_cache(prefix)
  return images, prefix, {uri: vector for uri, (vector, _, _) in cache.items()}


def _data_dir(prefix):
  return prefix + embedding_cache.SHARD_INFIX + '*'


def _overrides(job_dir, prefix, base, **extra):
  return dict({'job_dir': str(job_dir), 'dataset': 'embeddings',
               'data_dir': _data_dir(prefix), 'base_model': base,
               'epochs': 2, 'batch_size': 16}, **extra)


def _context(overrides):
  return run_context.create(config_lib.build(overrides=overrides),
                            tf.distribute.get_strategy())


# --------------------------------------------------------------------------
# Refused before any work.


@pytest.mark.parametrize('extra, key, cause', [
    ({'augment': 'shift'}, 'augment', 'no image left to augment'),
    ({'fine_tune_layers': 1}, 'fine_tune_layers',
     'fine-tuning changes that extractor'),
    ({'base_model': ''}, 'base_model', 'pass --base_model=EXPORT'),
    ({'base_model': 'mobilenet_v2'}, 'base_model',
     'mobilenet_v2 is a backbone, not an export'),
])
def test_what_a_cache_cannot_serve_is_refused_by_the_config(extra, key,
                                                            cause):
  # Config validation: before TensorFlow, the lease or the job dir.
  with pytest.raises(config_lib.ConfigError) as raised:
    config_lib.build(overrides=_overrides('/tmp/j', '/c/p', '/base', **extra))
  message = str(raised.value)
  assert message.startswith(f'{key}: ')
  assert cause in message
  if key != 'base_model' or extra['base_model']:
    assert 'train one-stage with --dataset=image_folder' in message


def test_a_glob_that_names_no_cache_is_refused():
  with pytest.raises(config_lib.ConfigError,
                     match=r"^data_dir: --data_dir=/c/\*\.tfrecord: an "
                     "embedding cache is named 'PREFIX-embeddings-\\*'"):
    config_lib.build(overrides=dict(_overrides('/tmp/j', '/c/p', '/base'),
                                    data_dir='/c/*.tfrecord'))


def _copy_description(prefix, copy_prefix, **changes):
  description = dict(storage.read_json(
      embedding_cache.description_path(prefix)), **changes)
  storage.write_json(embedding_cache.description_path(copy_prefix),
                     description)
  return description


def test_a_cache_of_another_base_is_refused_naming_both_fingerprints(
    tmp_path, small_cache, trained_export):
  _, prefix, _ = small_cache
  other = 'sha256:' + '0' * 64
  copy = str(tmp_path / 'other')
  _copy_description(prefix, copy, fingerprint=other)
  with pytest.raises(embedding_cache.EmbeddingCacheError) as raised:
    _context(_overrides(tmp_path / 'job', copy, trained_export))
  message = str(raised.value)
  base = transfer.load_base(trained_export)
  assert 'made by another feature extractor' in message
  assert other in message and extractor.fingerprint(base.extractor) in message
  assert f'--model_dir={trained_export} --embeddings' in message
  assert not (tmp_path / 'job').exists()


def test_a_cache_at_another_input_shape_is_refused(tmp_path, small_cache,
                                                   trained_export):
  _, prefix, _ = small_cache
  copy = str(tmp_path / 'other')
  _copy_description(prefix, copy, input={'height': 32, 'width': 32,
                                          'channels': 1})
  with pytest.raises(embedding_cache.EmbeddingCacheError,
                     match=r'made at input shape \(32, 32, 1\), but the '
                     r'base .* takes \(28, 28, 1\)'):
    _context(_overrides(tmp_path / 'job', copy, trained_export))


def test_an_unlabelled_cache_is_refused(tmp_path, small_cache, trained_export):
  images, _, _ = small_cache
  prefix = str(tmp_path / 'unlabelled')
  files = cache_helpers.folder_files(images)[::6]
  cache_helpers.write_cache(trained_export, prefix, files, labelled=False)
  with pytest.raises(embedding_cache.EmbeddingCacheError,
                     match='the cache is unlabelled .*--labels_from_folders'):
    _context(_overrides(tmp_path / 'job', prefix, trained_export))
  # Label names in the description, but records without labels.
  labelled = str(tmp_path / 'labelled')
  cache_helpers.write_cache(trained_export, labelled, files)
  _copy_description(labelled, prefix)
  with pytest.raises(embedding_cache.EmbeddingCacheError,
                     match='10 of 10 records have no label'):
    embeddings.load(data.Options('embeddings', 0.1, 0.1, _data_dir(prefix)))
  # The scorer counts them in the description: refused before any work.
  _copy_description(labelled, prefix, unlabelled=10)
  with pytest.raises(embedding_cache.EmbeddingCacheError,
                     match='10 of 10 records have no label'):
    _context(_overrides(tmp_path / 'job', prefix, trained_export))


def test_missing_shards_and_counts_that_differ_are_named(tmp_path, small_cache,
                                                         trained_export):
  _, prefix, _ = small_cache
  copy = str(tmp_path / 'copy')
  _copy_description(prefix, copy)
  options = data.Options('embeddings', 0.1, 0.1, _data_dir(copy))
  with pytest.raises(embedding_cache.EmbeddingCacheError,
                     match=r'names 2 shard\(s\), and 2 of them are missing'):
    embeddings.load(options)
  with pytest.raises(embedding_cache.EmbeddingCacheError,
                     match=r'names 2 shard\(s\), and 2 of them are missing'):
    _context(_overrides(tmp_path / 'job', copy, trained_export))
  assert not os.path.exists(tmp_path / 'job')  # Before any work.
  for index in range(2):
    name = embedding_cache.shard_name(prefix, index, 2)
    os.symlink(name, embedding_cache.shard_name(copy, index, 2))
  _copy_description(prefix, copy, count=SMALL + 1)
  with pytest.raises(embedding_cache.EmbeddingCacheError,
                     match=f'says {SMALL + 1} records, and its shards hold '
                     f'{SMALL}'):
    embeddings.load(options)


def test_a_shard_that_is_not_a_cache_is_named_and_fewer_counted_records_too(
    tmp_path, small_cache):
  _, prefix, _ = small_cache
  copy = str(tmp_path / 'copy')
  _copy_description(prefix, copy)
  first, second = (embedding_cache.shard_name(copy, index, 2)
                   for index in range(2))
  os.symlink(embedding_cache.shard_name(prefix, 0, 2), first)
  with open(second, 'wb') as f:
    f.write(b'not gzip at all')
  options = data.Options('embeddings', 0.1, 0.1, _data_dir(copy))
  with pytest.raises(embedding_cache.EmbeddingCacheError,
                     match=f'^{second}: not a shard of '):
    embeddings.load(options)
  # A description that counts fewer records than the shards hold.
  os.remove(second)
  os.symlink(embedding_cache.shard_name(prefix, 1, 2), second)
  _copy_description(prefix, copy, count=SMALL - 7)
  with pytest.raises(embedding_cache.EmbeddingCacheError,
                     match=f'says {SMALL - 7} records, and its shards hold '
                     f'{SMALL}'):
    embeddings.load(options)
  # One that counts more than any memory holds: one line, not a traceback.
  for count in (10**11, 10**15):  # Beyond memory; beyond address space.
    _copy_description(prefix, copy, count=count)
    with pytest.raises(embedding_cache.EmbeddingCacheError,
                       match='do not fit in this machine'):
      embeddings.load(options)


# --------------------------------------------------------------------------
# The split.


def test_split_keys_are_the_paths_image_folder_hashes():
  assert embeddings.split_keys(['/d/a/1.png', '/d/b/2.png', '/d/b/c/3.png']) == [
      'a/1.png', 'b/2.png', 'b/c/3.png']
  assert embeddings.split_keys(['gs://k/x/a/1.png', 'gs://k/x/b/1.png']) == [
      'a/1.png', 'b/1.png']
  # A folder whose name starts another's; one file; names without folders.
  assert embeddings.split_keys(['/d/ab/1.png', '/d/a/2.png']) == [
      'ab/1.png', 'a/2.png']
  assert embeddings.split_keys(['/d/a/img-1.png']) == ['img-1.png']
  assert embeddings.split_keys(['img-1.png', 'img-2.png']) == [
      'img-1.png', 'img-2.png']
  assert embeddings.split_keys([]) == []


def test_records_split_as_image_folder_splits_the_same_files(small_cache):
  images, prefix, vectors = small_cache
  source = data.load_source(data.Options('embeddings', 0.1, 0.1,
                                         _data_dir(prefix)))
  class_names, by_split = folder_lib.split_image_folder(images, 0.1, 0.1)
  assert source.info.class_names == class_names
  assert source.vectors
  for split in ('train', 'validation', 'test'):
    # The same files, in the same order, with the same labels.
    assert source.files(split) == by_split[split]
    got = list(source.examples(split).as_numpy_iterator())
    assert [int(label) for _, label in got] == [
        label for _, label in by_split[split]]
    for (vector, _), (uri, _) in zip(got, by_split[split]):
      np.testing.assert_array_equal(vector, vectors[uri])
  assert source.info.sizes['test'] > 0 and source.info.sizes['validation'] > 0
  # --train_examples takes the first of the training split, as image_folder.
  few = data.load_source(data.Options('embeddings', 0.1, 0.1,
                                      _data_dir(prefix), train_examples=5))
  assert few.files('train') == by_split['train'][:5]
  assert few.files('test') == by_split['test']
  got = list(few.examples('train').as_numpy_iterator())
  for (vector, _), (uri, _) in zip(got, by_split['train'][:5]):
    np.testing.assert_array_equal(vector, vectors[uri])


@pytest.mark.parametrize('size', [0, 1, 2, 7, 500])
def test_rows_are_permuted_in_place(size):
  rng = np.random.default_rng(size)
  rows = rng.standard_normal((size, 3)).astype(np.float32)
  for order in (rng.permutation(size), np.arange(size),
                np.roll(np.arange(size), 1)):
    permuted = rows.copy()
    embeddings.permute_rows(permuted, order)
    np.testing.assert_array_equal(permuted, rows[order])


@pytest.mark.parametrize('shape', [(0, 16), (1, 3), (5, 16), (300, 3136)])
def test_aligned_arrays_start_where_tensorflow_can_share_them(shape):
  array = embeddings.aligned_empty(shape, np.float32)
  assert array.shape == shape and array.dtype == np.float32
  assert array.flags.c_contiguous and array.flags.writeable
  assert array.ctypes.data % 64 == 0 or not array.size  # Empty: no data.


def test_a_cache_array_becomes_a_tensor_without_a_copy_when_aligned():
  rows = embeddings.aligned_empty((6, 16), np.float32)
  rows[:] = np.arange(96, dtype=np.float32).reshape(6, 16)
  shared = embeddings.as_tensor(rows[2:])  # 2 rows of 64 bytes in: aligned.
  rows[2, 0] = -1.0  # Written after: the tensor sees it (one buffer).
  assert float(shared[0, 0]) == -1.0
  np.testing.assert_array_equal(shared.numpy(), rows[2:])
  # Rows of 3 floats: the second row starts 12 bytes in, so it is copied
  # (TensorFlow would abort on a misaligned shared buffer).
  odd = embeddings.aligned_empty((4, 3), np.float32)
  odd[:] = 7.0
  copied = embeddings.as_tensor(odd[1:])
  odd[1, 0] = 0.0
  assert float(copied[0, 0]) == 7.0 and copied.shape == (3, 3)
  strided = embeddings.as_tensor(rows[::2])  # Not contiguous: copied.
  np.testing.assert_array_equal(strided.numpy(), rows[::2])


def test_a_cache_in_memory_is_not_cached_again_by_tf_data():
  from trainer.data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top
  from trainer.data import sources  # pylint: disable=g-import-not-at-top
  info = sources.DatasetInfo('x', ('a', 'b'), {'train': 10})
  for vectors, expected in ((True, False), (False, True)):
    source = sources.Source(info, None, element_bytes=4, vectors=vectors)
    for mode in ('auto', 'memory'):
      assert data_pipeline.should_cache(source, 'train', mode) is expected


# --------------------------------------------------------------------------
# Training the head, and the stitched export.


@pytest.fixture(scope='module')
def two_stage_run(tmp_path_factory, digit_cache, trained_export):
  """(metrics, job dir) of a two-stage run on the digit cache."""
  _, prefix, _ = digit_cache
  job_dir = tmp_path_factory.mktemp('two_stage_run') / 'job'
  metrics = train.run(_context(_overrides(job_dir, prefix, trained_export,
                                          **RUN)))
  return metrics, str(job_dir)


def _head_probabilities(model, vectors):
  """The head's own function on vectors: softmax(logits), no dropout."""
  kernel, bias = model.get_layer('logits').get_weights()
  return tf.nn.softmax(vectors @ kernel + bias).numpy()


@pytest.mark.slow  # Shares the scorer's cache (~4 s).
def test_the_scorers_cache_holds_what_the_extractor_computes(
    digit_cache, trained_export):
  images, prefix, vectors = digit_cache
  files = [path for path, _ in cache_helpers.folder_files(images)]
  assert sorted(vectors) == sorted(files)
  expected, _, _ = cache_helpers.embed_files(trained_export, files)
  np.testing.assert_allclose(np.stack([vectors[path] for path in files]),
                             expected, atol=1e-5)
  assert embedding_cache.read_description(prefix)['count'] == len(files)


@pytest.mark.slow  # Shares a ~5 s run (two_stage_run).
def test_the_stitched_export_serves_what_the_head_computes_on_the_vectors(
    two_stage_run, digit_cache, trained_export):
  metrics, job_dir = two_stage_run
  images, _, vectors = digit_cache
  export_dir = os.path.join(job_dir, 'export')
  model = export.load_keras_model(export_dir)
  assert model.name == 'transfer_deep_mnist'
  files = sorted(vectors)[:24]
  loaded = artifact.load(export_dir)
  served = loaded.serve(image_bytes=tf.constant(
      [storage.read_bytes(path) for path in files]))['probabilities'].numpy()
  expected = _head_probabilities(model, np.stack([vectors[f] for f in files]))
  np.testing.assert_allclose(served, expected, atol=1e-5)
  # metrics.json's test accuracy is the head's on the test vectors.
  test_files = folder_lib.split_image_folder(images, 0.1, 0.1)[1]['test']
  probabilities = _head_probabilities(
      model, np.stack([vectors[path] for path, _ in test_files]))
  accuracy = np.mean(np.argmax(probabilities, 1) ==
                     np.array([label for _, label in test_files]))
  assert metrics['test_accuracy'] == pytest.approx(accuracy, abs=1e-6)
  assert metrics['dataset'] == 'embeddings'
  assert metrics['model'] == 'transfer_deep_mnist_head'


@pytest.mark.slow  # Shares a ~5 s run (two_stage_run).
def test_the_stitched_extractor_is_bit_identical_to_the_base(
    two_stage_run, trained_export):
  _, job_dir = two_stage_run
  export_dir = os.path.join(job_dir, 'export')
  stitched = export.load_keras_model(export_dir)
  base = export.load_keras_model(trained_export)
  assert (cache_helpers.base_fingerprint(stitched) ==
          cache_helpers.base_fingerprint(base))
  cut, _ = extractor.find_output(base, 'base')
  base_weights = keras.Model(base.inputs, cut).get_weights()
  stitched_weights = stitched.get_layer(
      transfer.EXTRACTOR_LAYER).get_weights()
  assert len(stitched_weights) == len(base_weights) > 0
  for got, want in zip(stitched_weights, base_weights):
    assert np.array_equal(got, want)
  metadata = artifact.read_metadata(export_dir)
  assert metadata['dataset'] == 'embeddings'
  assert metadata['labels'] == [str(digit) for digit in range(10)]
  details = metadata['transfer']
  assert details['two_stage'] is True
  assert details['embeddings']['fingerprint'] == (
      cache_helpers.base_fingerprint(base))
  assert details['base_model'] == trained_export
  assert details['frozen_layers_with_weights'] == details[
      'extractor_layers_with_weights'] == 2


@pytest.mark.slow  # Two attempts of a run: ~5 s.
def test_an_interrupted_two_stage_run_resumes(tmp_path, digit_cache,
                                              trained_export):
  # The normal resume path (BackupAndRestore of the head); killed in its
  # second epoch as tests/test_resume.py's processes are, in process.
  _, prefix, _ = digit_cache
  overrides = _overrides(tmp_path / 'job', prefix, trained_export,
                         train_examples=64)
  strategy = tf.distribute.get_strategy()
  with pytest.raises(interrupt.Killed):
    interrupt.attempt(overrides, strategy, interrupt.KillDuring(2))
  assert not (tmp_path / 'job' / 'metrics.json').exists()
  metrics = interrupt.attempt(overrides, strategy)
  assert metrics['resumed_from_epoch'] == 1
  assert [entry['epoch'] for entry in metrics['history']] == [1, 2]
  assert [entry['attempt'] for entry in metrics['history']] == [1, 2]
  assert artifact.is_complete(str(tmp_path / 'job' / 'export'))


# --------------------------------------------------------------------------
# Accuracy: two-stage against the one-stage frozen transfer.


@pytest.mark.slow  # A one-stage run on 400 digits: ~5 s.
def test_two_stage_accuracy_is_the_one_stage_frozen_transfers(
    tmp_path, two_stage_run, digit_cache, trained_export):
  two_stage, _ = two_stage_run
  images, _, _ = digit_cache
  one_stage = train.run(_context(dict(
      RUN, job_dir=str(tmp_path / 'one'), dataset='image_folder',
      data_dir=images, base_model=trained_export)))
  # The same images in each split (the split test above: the same files).
  assert two_stage['examples'] == one_stage['examples']
  assert one_stage['examples']['test'] >= 30
  assert one_stage['test_accuracy'] > 0.5  # A head that learned something.
  assert abs(two_stage['test_accuracy'] - one_stage['test_accuracy']) <= 0.01
  print('one-stage', one_stage['test_accuracy'],
        [entry['seconds'] for entry in one_stage['history']],
        'two-stage', two_stage['test_accuracy'],
        [entry['seconds'] for entry in two_stage['history']])


def test_a_cache_on_gcs_loads_as_the_local_one(gcs_server, small_cache):
  _, prefix, _ = small_cache
  remote = 'gs://test-bucket/caches/digits'
  for path in [embedding_cache.description_path(prefix)] + [
      embedding_cache.shard_name(prefix, index, 2) for index in range(2)]:
    storage.write_bytes(remote + path[len(prefix):], storage.read_bytes(path))
  local = data.load_source(data.Options('embeddings', 0.1, 0.1,
                                        _data_dir(prefix)))
  on_gcs = data.load_source(data.Options('embeddings', 0.1, 0.1,
                                         _data_dir(remote)))
  assert on_gcs.info.sizes == local.info.sizes
  assert on_gcs.info.report['cache'] == remote
  for split in ('train', 'test'):
    assert on_gcs.files(split) == local.files(split)
    for (got, _), (want, _) in zip(on_gcs.examples(split).as_numpy_iterator(),
                                   local.examples(split).as_numpy_iterator()):
      np.testing.assert_array_equal(got, want)
