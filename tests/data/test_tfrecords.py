"""TFRecord shards: splits, labels.txt, and records that do not decode."""

import os

import pytest
import tensorflow as tf

from tests.helpers import datasets
from trainer import data
from trainer.data import sources
from trainer.data import tfrecords
from tests.helpers import image_files


@pytest.mark.slow  # 2.9 s here: over the fast tier's ~1.5 s a test.
def test_tfrecord_glob_is_split_by_record_position(tmp_path):
  path = str(tmp_path / 'all.tfrecord')
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(200):
      pixels = image_files.random_pixels(28, 28, 1, seed=i)
      example = tfrecords.make_example(
          image_files.encode_image(pixels, 'PNG'), i % 2, 'ab'[i % 2], str(i))
      writer.write(example.SerializeToString())
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  source = tfrecords.load_tfrecord(str(tmp_path / '*.tfrecord'), (28, 28, 1),
                                   0.1, 0.2)
  counts = {split: len(datasets.batches(source, split, (28, 28, 1))[1])
            for split in sources.SPLITS}
  assert counts == {'train': 140, 'validation': 20, 'test': 40}


def test_tfrecord_folder_without_a_split_fails_clearly(tmp_path):
  # ImageNet-style shards (train-* and validation-* only) must not give an
  # empty test set: the error names what is missing and the way out.
  for name in ('train-00000-of-00001', 'validation-00000-of-00001'):
    (tmp_path / name).write_bytes(b'')
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  with pytest.raises(data.DataError, match=r'no test-\* shards.*glob'):
    tfrecords.load_tfrecord(str(tmp_path), (28, 28, 1), 0.1, 0.1)


def test_tfrecord_without_labels_file_fails_clearly(tmp_path):
  for split in sources.SPLITS:
    (tmp_path / f'{split}-00000-of-00001').write_bytes(b'')
  with pytest.raises(data.DataError, match='labels.txt: missing'):
    tfrecords.load_tfrecord(str(tmp_path), (28, 28, 1), 0.1, 0.1)


def test_tfrecord_label_out_of_range_fails_before_training(tmp_path):
  # It used to fail at read time, in the middle of training.
  for split in sources.SPLITS:
    with tf.io.TFRecordWriter(str(tmp_path / f'{split}-0')) as writer:
      writer.write(tfrecords.make_example(
          image_files.encode_image(image_files.random_pixels(28, 28, 1), 'PNG'), 5,
          'five', 'f').SerializeToString())
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  with pytest.raises(data.DataError,
                     match=r'train-0, record 0: image/class/label 5 out of '
                     r'range for the 2 classes'):
    tfrecords.load_tfrecord(str(tmp_path), (28, 28, 1), 0.1, 0.1)


@pytest.mark.slow  # 4.3 s here: over the fast tier's ~1.5 s a test.
def test_tfrecord_records_that_do_not_decode_are_counted_and_reported(
    tmp_path):
  for split, count in (('train', 12), ('validation', 4), ('test', 4)):
    payloads = [datasets.record(i % 2, seed=i) for i in range(count)]
    if split == 'train':
      payloads[3] = datasets.record(1, encoded=b'\xff\xd8 not a jpeg')
      payloads[7] = b'not a tf.train.Example at all'
    datasets.write_records(tmp_path / f'{split}-00000-of-00001', payloads)
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  source = tfrecords.load_tfrecord(str(tmp_path), (28, 28, 1), 0.1, 0.1)
  assert source.info.sizes == {'train': 10, 'validation': 4, 'test': 4}
  assert len(datasets.batches(source, 'train', (28, 28, 1))[1]) == 10
  assert source.info.report['skipped'] == {'undecodable': 2}
  assert sorted(entry['path'].rsplit('#', 1)[1] for entry in
                source.info.report['skipped_files']) == ['3', '7']
  # By position too (a glob), and per worker shard.
  glob = tfrecords.load_tfrecord(str(tmp_path / '*-of-*'), (28, 28, 1), 0.0,
                                 0.0)
  assert glob.info.sizes['train'] == 18
  assert len(datasets.batches(glob, 'train', (28, 28, 1))[1]) == 18


def test_a_truncated_tfrecord_shard_is_named_before_training(tmp_path):
  datasets.write_records(tmp_path / 'all.tfrecord',
                         [datasets.record(i % 2, i) for i in range(6)])
  body = (tmp_path / 'all.tfrecord').read_bytes()
  (tmp_path / 'all.tfrecord').write_bytes(body[:-30])
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  with pytest.raises(data.DataError, match='all.tfrecord are truncated'):
    tfrecords.load_tfrecord(str(tmp_path / '*.tfrecord'), (28, 28, 1), 0.0, 0.0)


def test_a_fifo_among_tfrecord_shards_is_never_opened(tmp_path):
  datasets.write_records(tmp_path / 'part-0',
                         [datasets.record(i % 2, i) for i in range(6)])
  os.mkfifo(tmp_path / 'part-1')
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  with datasets.fifo_watchdog(str(tmp_path / 'part-1')) as watchdog:
    source = tfrecords.load_tfrecord(str(tmp_path), (28, 28, 1), 0.0, 0.0)
  assert not watchdog['opened']
  assert source.info.sizes['train'] == 6
  assert source.info.report['skipped'] == {'special_file': 1}


def test_labels_file_lines_end_at_newline_only(tmp_path):
  (tmp_path / 'labels.txt').write_text(
      'left\u2028right\r\nnext\u0085line \n\n  \nlast', encoding='utf-8')
  assert tfrecords.read_labels_file(str(tmp_path / 'labels.txt')) == (
      'left\u2028right', 'next\u0085line', 'last')

