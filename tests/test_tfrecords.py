"""TFRecord shards as scoring input: ids, labels, gzip, bad records, and
`make_tfrecords` shards scored as they are."""

import os

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing import util
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2

from batch_predict import inputs
from batch_predict import items
from batch_predict import model_handler
from batch_predict import tfrecords
from batch_predict import transforms
from tests.helpers import image_files
from trainer import errors
from trainer import make_tfrecords_lib


def _example(**features):
  feature = {}
  for name, value in features.items():
    if isinstance(value, int):
      feature[name] = tf.train.Feature(
          int64_list=tf.train.Int64List(value=[value]))
    else:
      feature[name] = tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[value]))
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


def _write(path, records, gzip=False):
  options = tf.io.TFRecordOptions(compression_type='GZIP' if gzip else '')
  with tf.io.TFRecordWriter(path, options) as writer:
    for record in records:
      writer.write(record)
  return path


_RECORDS = [
    _example(**{'image/encoded': b'png-1', 'image/key': b'key-1',
                'image/filename': b'cat/a.png', 'image/class/label': 0,
                'image/class/text': b'cat'}),
    _example(**{'image/encoded': b'png-2', 'image/filename': b'dog/b.png',
                'image/class/label': 1}),
    _example(**{'image/encoded': b'png-3'}),
    _example(**{'image/filename': b'cat/no-bytes.png',
                'image/class/text': b'cat'}),
    b'\xff\xff\xff\xff not a protobuf',
]


@pytest.mark.parametrize('gzip', [False, True])
def test_each_record_is_an_item_or_one_bad_record(tmp_path, gzip):
  # The name does not say gzip: the first bytes do.
  shard = _write(str(tmp_path / 'data-00000.tfrecord'), _RECORDS, gzip)
  found = list(tfrecords.shard_items(shard, example_pb2.Example))
  assert found[:3] == [
      items.Item('key-1', data=b'png-1', label='cat'),
      items.Item('dog/b.png', data=b'png-2', label='1'),
      items.Item(f'{shard}#2', data=b'png-3')]
  missing, garbage = found[3:]
  assert (missing.uri, missing.kind, missing.label) == (
      'cat/no-bytes.png', errors.BAD_RECORD, 'cat')
  assert 'no image/encoded' in str(missing)
  assert (garbage.uri, garbage.kind) == (f'{shard}#4', errors.BAD_RECORD)
  assert 'not a tf.train.Example' in str(garbage)


def test_a_cut_shard_gives_its_good_records_and_one_error(tmp_path):
  shard = _write(str(tmp_path / 'cut.tfrecord'), _RECORDS[:3])
  with open(shard, 'rb') as f:
    content = f.read()
  with open(shard, 'wb') as f:
    f.write(content[:-5])
  found = list(tfrecords.shard_items(shard, example_pb2.Example))
  assert [item.uri for item in found[:2]] == ['key-1', 'dog/b.png']
  error, = found[2:]
  assert (error.uri, error.kind) == (f'{shard}#2', errors.BAD_RECORD)
  assert 'ends inside a record' in str(error)


def test_tfrecord_inputs_are_recognised_by_name_or_flag(tmp_path):
  shard = _write(str(tmp_path / 'train-00000-of-00001.tfrecord.gz'),
                 _RECORDS[:1], gzip=True)
  other = _write(str(tmp_path / 'records.bin'), _RECORDS[:1])
  pattern = str(tmp_path / '*.tfrecord*')
  assert inputs.resolve_input(shard) == (inputs.TFRECORD_SHARDS, shard)
  assert inputs.resolve_input(pattern) == (inputs.TFRECORD_SHARDS, pattern)
  assert inputs.resolve_input(other, inputs.TFRECORD).kind == (
      inputs.TFRECORD_SHARDS)
  with pytest.raises(inputs.InputError, match='name its shards'):
    inputs.resolve_input(str(tmp_path), inputs.TFRECORD)
  with pytest.raises(inputs.InputError, match='no files match'):
    inputs.resolve_input(str(tmp_path / 'none-*.tfrecord'))


@pytest.mark.slow
def test_make_tfrecords_shards_score_as_the_same_images_as_files(
    trained_export, tmp_path):
  folder = str(tmp_path / 'images')
  image_files.write_image_folder(folder, ['ant', 'bee'], per_class=6)
  shards = str(tmp_path / 'shards')
  make_tfrecords_lib.convert_image_folder(folder, shards, num_shards=2)
  classifier_labels = model_handler.load_classifier(trained_export).labels
  handler = model_handler.ImageClassifierHandler(
      trained_export, min_batch_size=4, max_batch_size=4)

  def check(records):
    # Files are named by their paths, records by their image/filename.
    files = {os.path.relpath(r['uri'], folder): r for r in records
             if r['uri'].startswith(folder)}
    from_records = {r['uri']: r for r in records
                    if not r['uri'].startswith(folder)}
    assert len(files) == len(from_records) == 12
    assert from_records == {name: dict(record, uri=name)
                            for name, record in files.items()}

  with test_pipeline.TestPipeline() as pipeline:
    listed = (
        pipeline | 'Files' >> transforms.ListImages(
            inputs.resolve_input(folder), labels_from_folders=True),
        pipeline | 'Records' >> transforms.ListImages(
            inputs.resolve_input(os.path.join(shards, '*.tfrecord*'))))
    predictions, failures = (
        listed
        | 'Both' >> beam.Flatten()
        | transforms.ClassifyImages(handler, classifier_labels, top_k=3,
                                    max_file_bytes=10**6,
                                    max_image_pixels=10**6))
    util.assert_that(failures, util.equal_to([]), label='NoErrors')
    util.assert_that(predictions, check, label='SamePredictions')
