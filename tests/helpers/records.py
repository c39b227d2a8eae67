"""Reading the scorer's CSV and Parquet outputs back, with the csv module and
pyarrow themselves (not the scorer's code), into the records the same run
writes as JSON lines: an empty cell or a null is a field the record does not
have; `score` is a number and `top_k` a list in both."""

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from batch_predict import outputs
from trainer import storage


def _from_csv_row(row):
  record = {}
  for column, value in row.items():
    if value == '':
      continue
    if column == 'score':
      value = float(value)
    elif column == 'top_k':
      value = json.loads(value)
    record[column] = value
  return record


def read_shard(path):
  """The records of one shard file (local or gs://), by its extension."""
  data = storage.read_bytes(path)
  if path.endswith('.parquet'):
    return [{column: value for column, value in row.items()
             if value is not None}
            for row in pq.read_table(pa.BufferReader(data)).to_pylist()]
  text = data.decode('utf-8')
  if path.endswith('.csv'):
    return [_from_csv_row(row) for row in csv.DictReader(io.StringIO(text))]
  return [json.loads(line) for line in text.split('\n') if line]


def read_output(prefix, name, output_format):
  """Every record of one output in `output_format`, and the shard paths."""
  paths = [path for path in outputs.find_shards(prefix, (name,))
           if path.endswith('.' + output_format)]
  records = [record for path in paths for record in read_shard(path)]
  return records, paths


def by_uri(records):
  return {record['uri']: record for record in records}
