"""Output records, shard names, publishing and clean-up of earlier runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_predict import outputs
from tests import helpers
from tests.helpers import records as record_files
from trainer import storage


def test_prediction_record_lists_the_top_classes_in_order():
  labels = ['cat', 'dog', 'bird', 'fish']
  record = outputs.prediction_record(
      'gs://b/x.png', np.array([0.1, 0.6, 0.25, 0.05], np.float32), labels, 3)
  assert record == {
      'uri': 'gs://b/x.png', 'label': 'dog', 'score': 0.6,
      'top_k': [{'label': 'dog', 'score': 0.6},
                {'label': 'bird', 'score': 0.25},
                {'label': 'cat', 'score': 0.1}]}
  assert json.loads(outputs.to_json_line(record)) == record


def test_ties_keep_label_order():
  record = outputs.prediction_record('u', [0.25] * 4, ['a', 'b', 'c', 'd'], 2)
  assert [c['label'] for c in record['top_k']] == ['a', 'b']


def test_error_record():
  assert outputs.error_record('u', 'not_found', 'no such file') == {
      'uri': 'u', 'error': 'no such file', 'kind': 'not_found'}


def test_shards_are_stable_across_processes():
  uris = [f'gs://bucket/images/{i}.png' for i in range(50)]
  here = [outputs.shard_of(uri, 7) for uri in uris]
  assert set(here) == set(range(7))  # Spread over every shard.
  # A fresh interpreter (another hash seed) puts each URI in the same shard.
  code = ('from batch_predict import outputs; '
          f'print([outputs.shard_of(u, 7) for u in {uris!r}])')
  there = subprocess.run(
      [sys.executable, '-c', code], capture_output=True, text=True, check=True,
      env=dict(os.environ, PYTHONHASHSEED='123',
               PYTHONPATH=os.path.dirname(os.path.dirname(__file__))))
  assert json.loads(there.stdout) == here


def test_shard_path():
  assert outputs.shard_path('/o/run', 'errors', 3, 10) == (
      '/o/run-errors-00003-of-00010.jsonl')


def _strict_json(line):
  def refuse(constant):
    raise ValueError(f'not JSON: {constant}')
  return json.loads(line, parse_constant=refuse)


def test_json_lines_are_strict_json_and_keep_unicode():
  record = {'uri': 'gs://b/caf\u00e9\u2028.png', 'score': float('nan'),
            'top_k': [{'label': 'x', 'score': float('inf')}]}
  line = outputs.to_json_line(record)
  assert '\u2028' in line and '\n' not in line
  assert _strict_json(line) == {'uri': 'gs://b/caf\u00e9\u2028.png',
                                'score': None,
                                'top_k': [{'label': 'x', 'score': None}]}


def test_a_finite_record_is_the_same_line_as_through_json_safe():
  record = outputs.prediction_record(
      'caf\u00e9.png', [0.125, 0.5, 0.375], ['a', 'b', 'c'], 2,
      fields=(('tags', ('x', 1)), ('size', 2.5), ('note', None)),
      true_label='b')
  line = outputs.to_json_line(record)
  assert line == storage.to_json(record, ensure_ascii=False)
  assert _strict_json(line)['tags'] == ['x', 1]


def _put(path, text='{}\n'):
  return helpers.write_file(path, text)


def _tree(folder):
  """{relative path: text} of every file under `folder`, hidden ones too."""
  found = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path) as f:
        found[os.path.relpath(path, folder)] = f.read()
  return found


_RUN_ID = 'a' * 32
_KILLED_RUN_ID = 'b' * 32


def _stage(prefix, run_id, names, num_shards, text='new\n'):
  staging = outputs.staging_folder(prefix, run_id)
  return [_put(os.path.join(staging, os.path.basename(
      outputs.shard_path(prefix, name, index, num_shards))), text)
          for name in names for index in range(num_shards)]


def test_publish_replaces_only_this_prefixs_shards(tmp_path):
  prefix = str(tmp_path / 'run')
  # Not this project's shards of prefix `run`: all must stay as they are.
  kept = {name: _put(str(tmp_path / name), f'{name}\n') for name in (
      'run-predictions-notes.txt', 'run-errors-holiday.png',
      'run-predictions-00000-of-00002.jsonl.bak', 'run-notes.txt',
      'other-predictions-00000-of-00002.jsonl',
      'run-v2-predictions-00000-of-00002.jsonl',
      'run-predictions-sub/run-predictions-00000-of-00002.jsonl',
      '.run-staging-notes/keep.txt', 'sub/run-errors-00000-of-00002.jsonl')}
  # An earlier run with --num_shards=3, one killed while writing, and the
  # temporary file an older version left beside its outputs.
  stale = [_put(outputs.shard_path(prefix, name, index, 3), 'old\n')
           for name in outputs.OUTPUT_NAMES for index in range(3)]
  stale.append(_put(f'{stale[0]}.tmp-{"c" * 32}'))
  _stage(prefix, _KILLED_RUN_ID, outputs.OUTPUT_NAMES, 2, 'killed\n')
  _put(os.path.join(outputs.staging_folder(prefix, _KILLED_RUN_ID),
                    f'run-errors-00001-of-00002.jsonl.tmp-{"d" * 32}'))
  killed = _tree(outputs.staging_folder(prefix, _KILLED_RUN_ID))
  staged = _stage(prefix, _RUN_ID, outputs.OUTPUT_NAMES, 2)
  published = outputs.publish(prefix, _RUN_ID, staged, outputs.OUTPUT_NAMES, 2)
  assert published == sorted(outputs.shard_path(prefix, name, index, 2)
                             for name in outputs.OUTPUT_NAMES
                             for index in range(2))
  expected = {os.path.relpath(path, tmp_path): f'{name}\n'
              for name, path in kept.items()}
  expected.update({os.path.basename(path): 'new\n' for path in published})
  # Publishing removes its own staging folder only: another run may be
  # writing into its own (the scorer removes killed runs' under its lease).
  assert _tree(outputs.staging_folder(prefix, _KILLED_RUN_ID)) == killed
  outputs.remove_staging_folders(prefix)
  assert _tree(str(tmp_path)) == expected
  assert sorted(os.listdir(tmp_path / '.run-staging-notes')) == ['keep.txt']
  assert outputs.find_shards(prefix) == published


def test_publish_of_one_output_leaves_the_other(tmp_path):
  prefix = str(tmp_path / 'run')
  other = _put(outputs.shard_path(prefix, outputs.PREDICTIONS, 0, 3), 'p\n')
  staged = _stage(prefix, _RUN_ID, [outputs.ERRORS], 1)
  outputs.publish(prefix, _RUN_ID, staged, [outputs.ERRORS], 1)
  assert sorted(os.listdir(tmp_path)) == sorted([
      os.path.basename(other), 'run-errors-00000-of-00001.jsonl'])


def test_publish_refuses_when_a_shard_was_not_written(tmp_path):
  prefix = str(tmp_path / 'run')
  earlier = _put(outputs.shard_path(prefix, outputs.ERRORS, 0, 1), 'old\n')
  staged = _stage(prefix, _RUN_ID, outputs.OUTPUT_NAMES, 2)
  before = _tree(str(tmp_path))
  with pytest.raises(RuntimeError, match='1 of 4 output shards were not '
                     'written.*unchanged'):
    outputs.publish(prefix, _RUN_ID, staged[1:], outputs.OUTPUT_NAMES, 2)
  assert _tree(str(tmp_path)) == before
  assert os.path.exists(earlier)


def test_a_retried_publish_finishes_what_the_first_attempt_began(tmp_path):
  prefix = str(tmp_path / 'run')
  staged = _stage(prefix, _RUN_ID, outputs.OUTPUT_NAMES, 2)
  # The first attempt moved one shard, then died.
  os.replace(staged[0], str(tmp_path / os.path.basename(staged[0])))
  published = outputs.publish(prefix, _RUN_ID, staged, outputs.OUTPUT_NAMES, 2)
  assert sorted(os.listdir(tmp_path)) == [os.path.basename(p)
                                          for p in published]


def test_publish_on_a_bucket_deletes_nothing_a_glob_would_cross(gcs_server):
  prefix = 'gs://test-bucket/scores/run'
  kept = ['gs://test-bucket/scores/run-predictions-notes.txt',
          'gs://test-bucket/scores/run-errors-holiday.png',
          'gs://test-bucket/scores/run-predictions-x/y.jsonl',
          'gs://test-bucket/scores/sub/run-errors-00000-of-00001.jsonl',
          'gs://test-bucket/scores-other/run-errors-00000-of-00001.jsonl']
  for uri in kept:
    storage.write_text(uri, uri)
  stale = outputs.shard_path(prefix, outputs.PREDICTIONS, 4, 5)
  storage.write_text(stale, 'old\n')
  killed = outputs.staging_folder(prefix, _KILLED_RUN_ID)
  storage.write_text(f'{killed}/run-errors-00000-of-00001.jsonl', 'killed\n')
  staging = outputs.staging_folder(prefix, _RUN_ID)
  staged = []
  for name in outputs.OUTPUT_NAMES:
    path = f'{staging}/run-{name}-00000-of-00001.jsonl'
    storage.write_text(path, f'{name}\n')
    staged.append(path)
  outputs.publish(prefix, _RUN_ID, staged, outputs.OUTPUT_NAMES, 1)
  outputs.remove_staging_folders(prefix)
  assert storage.list_files('gs://test-bucket') == sorted(kept + [
      'gs://test-bucket/scores/run-errors-00000-of-00001.jsonl',
      'gs://test-bucket/scores/run-predictions-00000-of-00001.jsonl'])
  for uri in kept:
    assert storage.read_text(uri) == uri
  assert storage.read_text(outputs.shard_path(
      prefix, outputs.ERRORS, 0, 1)) == 'errors\n'


def test_read_records_splits_on_newlines_only(tmp_path):
  prefix = str(tmp_path / 'run')
  uris = ['/images/a\u2028b.png', '/images/c\u0085d.png',
          '/images/e\u2029\x1c\x1d\x1e\x0b\x0c\rf.png']
  lines = [outputs.to_json_line(outputs.error_record(u, 'not_found', 'gone'))
           for u in uris]
  _put(outputs.shard_path(prefix, outputs.ERRORS, 0, 1), '\n'.join(lines) +
       '\n')
  _put(str(tmp_path / 'run-errors-notes.txt'), 'not json\n')
  assert [r['uri'] for r in outputs.read_records(prefix, outputs.ERRORS)] == (
      uris)


def _mixed_records():
  fields = (('id', 'row, "7"\nsecond line'), ('note', 'café'))
  return [
      outputs.prediction_record('/a/1.png', [0.7, 0.2, 0.1], ['x', 'y', 'z'],
                                2, fields, 'x'),
      outputs.prediction_record('/a/2.png', [0.1, 0.2, 0.7], ['x', 'y', 'z'],
                                3),
  ]


@pytest.mark.parametrize('output_format', [outputs.CSV, outputs.PARQUET])
def test_csv_and_parquet_shards_read_back_as_the_json_records(
    tmp_path, output_format):
  records = _mixed_records()
  shard_format = outputs.ShardFormat(output_format, outputs.PREDICTIONS,
                                     ('id', 'note'))
  path = str(tmp_path / f'shard.{output_format}')
  with open(path, 'wb') as f:
    shard_format.write(f, [shard_format.encode(r) for r in records] + [None])
  # Through JSON, as the JSON-lines output holds them.
  assert record_files.read_shard(path) == [
      json.loads(outputs.to_json_line(r)) for r in records]
  assert shard_format.columns == ('uri', 'label', 'score', 'top_k',
                                  'true_label', 'id', 'note')


@pytest.mark.parametrize('output_format', outputs.OUTPUT_FORMATS)
def test_an_empty_shard_is_a_valid_file_of_its_format(tmp_path,
                                                      output_format):
  path = str(tmp_path / f'empty.{output_format}')
  shard_format = outputs.ShardFormat(output_format, outputs.ERRORS, ('id',))
  with open(path, 'wb') as f:
    shard_format.write(f, [None])
  assert record_files.read_shard(path) == []
  if output_format == outputs.PARQUET:
    assert pq.read_schema(path).names == ['uri', 'error', 'kind',
                                          'true_label', 'id']


def test_the_parquet_schema_is_what_bigquery_loads():
  schema = outputs.arrow_schema(outputs.PREDICTIONS, ('id',))
  assert schema.field('score').type == pa.float64()
  top_k = schema.field('top_k').type
  assert pa.types.is_list(top_k) and pa.types.is_struct(top_k.value_type)
  assert [f.name for f in top_k.value_type] == ['label', 'score']
  assert all(schema.field(name).type == pa.string()
             for name in ('uri', 'label', 'true_label', 'id'))


def test_manifest_values_that_are_not_strings_are_json_text_in_csv(tmp_path):
  record = outputs.error_record('u', 'not_found', 'gone',
                                (('n', 3), ('tags', ['a']), ('none', None)))
  shard_format = outputs.ShardFormat(outputs.CSV, outputs.ERRORS,
                                     ('n', 'tags', 'none'))
  assert shard_format.encode(record) == 'u,gone,not_found,,3,"[""a""]",\r\n'


def test_publish_removes_this_prefixs_shards_of_other_formats(tmp_path):
  prefix = str(tmp_path / 'run')
  for name in ('run-predictions-00000-of-00001.jsonl',
               'run-errors-00000-of-00001.csv', 'run-predictions.parquet'):
    _put(str(tmp_path / name))
  staging = outputs.staging_folder(prefix, 'c' * 32)
  staged = []
  for name in outputs.OUTPUT_NAMES:
    staged.append(storage.join(staging, storage.basename(outputs.shard_path(
        prefix, name, 0, 1, outputs.PARQUET))))
    _put(staged[-1])
  finals = outputs.publish(prefix, 'c' * 32, staged, outputs.OUTPUT_NAMES, 1,
                           outputs.PARQUET)
  assert sorted(os.listdir(tmp_path)) == sorted(
      [os.path.basename(p) for p in finals] + ['run-predictions.parquet'])
  assert all(p.endswith('.parquet') for p in finals)


def test_a_large_parquet_shard_is_written_in_row_groups(tmp_path,
                                                        monkeypatch):
  monkeypatch.setattr(outputs, '_PARQUET_ROWS_PER_GROUP', 2)
  records = [outputs.error_record(f'/a/{i}.png', 'not_found', 'gone')
             for i in range(5)]
  shard_format = outputs.ShardFormat(outputs.PARQUET, outputs.ERRORS)
  path = str(tmp_path / 'errors.parquet')
  with open(path, 'wb') as f:
    shard_format.write(f, [None] + [shard_format.encode(r) for r in records])
  assert pq.ParquetFile(path).num_row_groups == 3
  assert record_files.read_shard(path) == records
