"""Output records, shard names and clean-up of earlier runs."""

import json
import os
import subprocess
import sys

import numpy as np

from batch_predict import outputs


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


def test_delete_outputs_removes_shards_and_temporary_files_only(tmp_path):
  prefix = str(tmp_path / 'run')
  doomed = [f'{prefix}-predictions-00000-of-00002.jsonl',
            f'{prefix}-errors-00001-of-00002.jsonl',
            f'{prefix}-predictions-00001-of-00002.jsonl.tmp-1f2e']
  kept = [f'{prefix}-notes.txt', str(tmp_path / 'other-predictions-0.jsonl')]
  for path in doomed + kept:
    with open(path, 'w') as f:
      f.write('{}\n')
  assert sorted(outputs.delete_outputs(prefix)) == sorted(doomed)
  assert sorted(os.listdir(tmp_path)) == sorted(
      os.path.basename(p) for p in kept)
