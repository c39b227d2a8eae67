"""The scoring outputs (Contract 3): records, shard formats and names, and
publishing.

```
PREFIX-predictions-SSSSS-of-NNNNN.FORMAT  {"uri", "label", "score", "top_k": [{"label", "score"}, ...]}
PREFIX-errors-SSSSS-of-NNNNN.FORMAT       {"uri", "error", "kind"}
PREFIX-embeddings-SSSSS-of-NNNNN.tfrecord.gz   with --embeddings (below)
PREFIX-embeddings.json                         with --embeddings
```

With `--embeddings` (batch_predict/embeddings.py) a third output, the
embedding cache of Contract 4 (`trainer.embedding_cache`), is staged and
published with the other two by the same steps, under the same rules
(shard by `crc32(uri)`, every shard written, only exact shard names
replaced); `--embeddings_only` writes it and the errors, no predictions.
A run's outputs at a prefix are always one run's: the publishing step also
removes an earlier run's shards of the outputs this run does not write
(`ALL_OUTPUT_NAMES`), as it removes a stale evaluation report.

FORMAT is `--output_format` (`ShardFormat`), the same records in each:
* `jsonl` (the default): one JSON object a line, as above.
* `csv`: a header row, then one row a record (RFC 4180 quoting, UTF-8);
  `top_k` and any value that is not a string as JSON text; a missing value
  is an empty cell.
* `parquet`: one file a shard, with a fixed schema (`arrow_schema`) that
  `bq load --source_format=PARQUET --parquet_enable_list_inference` loads:
  `score` a double, `top_k` a list of `{label, score}` structs, every other
  column a string (a manifest's values that are not strings as JSON text).
CSV and Parquet files have the same columns in every shard (`columns`): the
record's own, `true_label`, then the manifest's columns; JSON lines hold
only the fields a record has.

A labelled input (`--labels_from_folders`, a manifest's `label` column, a
TFRecord's `image/class/label`) adds `"true_label": "<class name>"` to its
record, after the fields above: the record's `label` is the predicted class
(Contract 3), so the true one needs a name of its own. A manifest's other
columns follow, unchanged.

Each record goes to the shard `crc32(uri) % NNNNN`, and every shard is
written whole, even when empty, so a finished run always has NNNNN files of
each. Every line is strict JSON (`storage.to_json`: never NaN or Infinity).

A run first writes its shards into a staging folder beside the outputs, of
its own (RUNID is new for every run):

```
FOLDER/.BASENAME-staging-RUNID/BASENAME-predictions-SSSSS-of-NNNNN.jsonl
```

and `publish` runs only once every shard of both outputs is there: each
shard is moved to its final name (a rename locally; a copy, then a delete,
on GCS), then files of exactly this project's shard pattern for this prefix
that the run did not write (shards of another `--num_shards`) and the run's
staging folder are removed. Nothing else is ever deleted: names are matched
by a regular expression against the entries listed directly in FOLDER, never
by a glob (on GCS a `*` crosses `/`), so a user's
`PREFIX-predictions-notes.txt` or an image in the same folder stays. A run
that fails before publishing leaves the previous outputs as they were.

`FOLDER/.BASENAME.lease` is the lease that keeps a second scorer off the
same prefix while one runs (`pipeline.py` takes it). Holding it, a run first
removes the staging folders that killed runs left (`remove_staging_folders`):
no other run can be writing into them.
"""

import csv
import io
import json
import re
import uuid
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer import embedding_cache
from trainer import storage

PREDICTIONS = 'predictions'
ERRORS = 'errors'
OUTPUT_NAMES = (PREDICTIONS, ERRORS)
# --embeddings: PREFIX-embeddings-SSSSS-of-NNNNN.tfrecord.gz.
EMBEDDINGS = embedding_cache.OUTPUT_KEY
EMBEDDINGS_EXTENSION = embedding_cache.SHARD_SUFFIX[1:]
# Every output a run may write: a run removes earlier runs' shards of all.
ALL_OUTPUT_NAMES = OUTPUT_NAMES + (EMBEDDINGS,)
# PREFIX-embeddings.json, published after the embeddings' shards.
EMBEDDINGS_DESCRIPTION = embedding_cache.DESCRIPTION_SUFFIX[1:]
JSONL = 'jsonl'
CSV = 'csv'
PARQUET = 'parquet'
OUTPUT_FORMATS = (JSONL, CSV, PARQUET)
TRUE_LABEL = 'true_label'
PREDICTION_COLUMNS = ('uri', 'label', 'score', 'top_k')
ERROR_COLUMNS = ('uri', 'error', 'kind')
# Names a manifest column cannot have: the records' own fields.
RESERVED_COLUMNS = frozenset(PREDICTION_COLUMNS + ERROR_COLUMNS +
                             (TRUE_LABEL,))
# Rows per Parquet row group: bounds a shard writer's memory.
_PARQUET_ROWS_PER_GROUP = 10_000
_SCORE_DIGITS = 6
# `storage.open_write` writes a local file as PATH.tmp-HEX and renames it;
# a killed writer leaves that temporary file behind.
_TEMPORARY_SUFFIX = r'(\.tmp-[0-9a-f]{32})?'


def prediction_record(uri, probabilities, labels, top_k, fields=(),
                      true_label=None):
  """The predictions record of one image.

  Args:
    uri: the image's URI.
    probabilities: one probability per class, in `labels` order.
    labels: the class names.
    top_k: how many classes to list, most probable first.
    fields: (name, value) pairs the input came with (a manifest's other
      columns), passed through unchanged after the record's own fields.
    true_label: the input's true label (`items.Item.label`), or None.

  Returns:
    {"uri", "label", "score", "top_k": [{"label", "score"}, ...]
    [, "true_label"], ...}.
  """
  # Python floats and a stable sort (ties stay in label order, so outputs
  # are reproducible): for one row of 10 classes, faster than numpy's.
  values = (probabilities if isinstance(probabilities, list)
            else np.asarray(probabilities).tolist())
  best = sorted(range(len(values)), key=values.__getitem__,
                reverse=True)[:top_k]
  ranked = [{'label': labels[i], 'score': round(values[i], _SCORE_DIGITS)}
            for i in best]
  record = {'uri': uri, 'label': ranked[0]['label'],
            'score': ranked[0]['score'], 'top_k': ranked}
  return _add_input_fields(record, fields, true_label)


def error_record(uri, kind, message, fields=(), true_label=None):
  """The errors record of one input: what is wrong, in words, and its kind.

  `fields` are the input's own (name, value) pairs, passed through, after
  its `true_label` if it has one.
  """
  return _add_input_fields({'uri': uri, 'error': message, 'kind': kind},
                           fields, true_label)


def embedding_record(uri, embedding, label=None):
  """The embeddings record of one scored image, before
  `embeddings._WritePiecesFn` encodes it as an Example. The vector is its
  little-endian float32 bytes."""
  return {'uri': uri, 'embedding': np.asarray(embedding, '<f4').tobytes(),
          'label': label}


def _add_input_fields(record, fields, true_label):
  if true_label is not None:
    record[TRUE_LABEL] = true_label
  record.update(fields)
  return record


# What `json.dumps(record, ensure_ascii=False, allow_nan=False)` makes, with
# one encoder for every record (dumps makes a new one per call when given
# options: 2 of a record's 13 us).
_JSON_LINE = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def to_json_line(record):
  """One output line: strict JSON (a NaN would become null), UTF-8 text."""
  try:
    # Nearly every record is finite: `allow_nan=False` proves it, without
    # `storage.json_safe`'s copy of the record (which took 40% of the time).
    return _JSON_LINE.encode(record)
  except ValueError:
    return storage.to_json(record, ensure_ascii=False)


def shard_of(uri, num_shards):
  """A shard index from the URI alone, stable across processes and runs."""
  return zlib.crc32(uri.encode('utf-8')) % num_shards


def shard_path(prefix, name, index, num_shards, output_format=JSONL):
  """E.g. `PREFIX-predictions-00003-of-00010.jsonl`; the embeddings'
  `PREFIX-embeddings-00003-of-00010.tfrecord.gz` whatever the format."""
  if name == EMBEDDINGS:
    return embedding_cache.shard_name(prefix, index, num_shards)
  return f'{prefix}-{name}-{index:05d}-of-{num_shards:05d}.{output_format}'


def columns(name, field_names=()):
  """The columns of one output's CSV and Parquet shards."""
  own = PREDICTION_COLUMNS if name == PREDICTIONS else ERROR_COLUMNS
  return own + (TRUE_LABEL,) + tuple(field_names)


def arrow_schema(name, field_names=()):
  """The Parquet schema of one output: see the module's docstring."""
  top_k = pa.list_(pa.struct([('label', pa.string()),
                              ('score', pa.float64())]))
  types = {'score': pa.float64(), 'top_k': top_k}
  return pa.schema([(column, types.get(column, pa.string()))
                    for column in columns(name, field_names)])


def _as_text(value):
  """A CSV cell or Parquet string: strings as they are, None as None, the
  rest as JSON text."""
  if value is None or isinstance(value, str):
    return value
  return storage.to_json(value, ensure_ascii=False)


class ShardFormat:
  """How the records of one output are encoded and written, in one format.

  `encode` turns a record into a row (run in parallel, before the shuffle
  that groups a shard's rows); `write` writes a whole shard's rows to a
  binary file. The CSV and Parquet writers are the `csv` module and
  pyarrow's `ParquetWriter`, inside this project's own sink (see
  transforms.py for why not Beam's `WriteToText`/`WriteToParquet`).
  """

  def __init__(self, output_format, name, field_names=()):
    if output_format not in OUTPUT_FORMATS:
      raise ValueError(f'Unknown output format {output_format!r}.')
    self.output_format = output_format
    self.name = name
    self.columns = columns(name, field_names)
    self._field_names = tuple(field_names)

  def encode(self, record):
    """A record -> its row: a JSON line, a CSV line, or a tuple of values."""
    if self.output_format == JSONL:
      return to_json_line(record)
    if self.output_format == CSV:
      text = io.StringIO()
      csv.writer(text).writerow(
          ['' if value is None else value for value in
           (_as_text(record.get(column)) for column in self.columns)])
      return text.getvalue()
    return tuple(record.get(column) if column in ('score', 'top_k')
                 else _as_text(record.get(column))
                 for column in self.columns)

  def write(self, f, rows):
    """Writes one shard's rows (None rows skipped) to the binary file `f`."""
    if self.output_format == PARQUET:
      self._write_parquet(f, rows)
      return
    if self.output_format == CSV:
      header = io.StringIO()
      csv.writer(header).writerow(self.columns)
      f.write(header.getvalue().encode('utf-8'))
    ending = b'' if self.output_format == CSV else b'\n'
    for row in rows:
      if row is not None:
        f.write(row.encode('utf-8'))
        f.write(ending)

  def _write_parquet(self, f, rows):
    schema = arrow_schema(self.name, self._field_names)
    writer = pq.ParquetWriter(f, schema)
    chunk = []
    for row in rows:
      if row is not None:
        chunk.append(row)
      if len(chunk) == _PARQUET_ROWS_PER_GROUP:
        writer.write_table(_table(chunk, schema))
        chunk = []
    if chunk:
      writer.write_table(_table(chunk, schema))
    writer.close()  # Writes the footer; `f` stays open (not ours).


def _table(rows, schema):
  by_column = zip(*rows)
  return pa.table([pa.array(values, field.type)
                   for values, field in zip(by_column, schema)],
                  schema=schema)


def output_pattern(prefix, name):
  """How a person globs one output's files (for messages, not deletion)."""
  return f'{prefix}-{name}-*'


def new_run_id():
  return uuid.uuid4().hex


def staging_folder(prefix, run_id):
  """`FOLDER/.BASENAME-staging-RUNID`: where a run writes before publishing."""
  return storage.join(storage.dirname(prefix),
                      f'.{storage.basename(prefix)}-staging-{run_id}')


def lease_path(prefix):
  """`FOLDER/.BASENAME.lease`: one scorer per output prefix at a time."""
  return storage.join(storage.dirname(prefix),
                      f'.{storage.basename(prefix)}.lease')


def _shard_name_regex(prefix, names, temporary=False):
  """Matches the file names of this prefix's shards of `names`, exactly."""
  base = re.escape(storage.basename(prefix))
  tabular = [re.escape(name) for name in names if name != EMBEDDINGS]
  patterns = []
  if tabular:
    patterns.append(f'{base}-({"|".join(tabular)})'
                    r'-\d{5,}-of-\d{5,}\.'
                    f'({"|".join(OUTPUT_FORMATS)})')
  if EMBEDDINGS in names:  # embedding_cache.is_shard_name's names.
    patterns.append(f'{base}-{EMBEDDINGS}' r'-\d{5,}-of-\d{5,}\.'
                    f'{re.escape(EMBEDDINGS_EXTENSION)}')
  pattern = '(' + '|'.join(f'({p})' for p in patterns) + ')'
  return re.compile(pattern + (_TEMPORARY_SUFFIX if temporary else ''))


def _staging_name_regex(prefix):
  return re.compile(rf'\.{re.escape(storage.basename(prefix))}-staging-'
                    r'[0-9a-f]{32}')


def find_shards(prefix, names=OUTPUT_NAMES):
  """The shard files of `prefix` for `names`, listed in its folder only.

  Returns:
    Sorted paths of the files directly in the prefix's folder whose names
    are exactly `PREFIX-NAME-SSSSS-of-NNNNN.FORMAT` (any output format).
  """
  folder = storage.dirname(prefix)
  regex = _shard_name_regex(prefix, names)
  return [storage.join(folder, entry.name)
          for entry in storage.scan_folder(folder)
          if not entry.is_folder and regex.fullmatch(entry.name)]


# Single files a run may publish beside its shards (`--evaluate`):
# PREFIX-evaluation.json and PREFIX-evaluation.png.
EVALUATION_FILES = ('evaluation.json', 'evaluation.png')


def single_file_path(prefix, suffix):
  """E.g. `PREFIX-evaluation.json`."""
  return f'{prefix}-{suffix}'


def publish(prefix, run_id, staged_paths, names, num_shards,
            output_format=JSONL, files=(), stale_names=None):
  """Moves a run's staged shards to their final names, then cleans up.

  Called once, after every shard of `names` was written to the run's
  staging folder. Safe to call again after a failure part-way (a retried
  step): shards already moved are skipped.

  Args:
    prefix: the `--output` prefix, normalized.
    run_id: the run's id (names its staging folder).
    staged_paths: the paths the shard writers reported.
    names: the outputs to publish (OUTPUT_NAMES, or one of them).
    num_shards: shards per output.
    output_format: the shards' format (names their extension). Shards of
      this prefix in the other formats are stale too, and removed.
    files: suffixes of single files (EVALUATION_FILES) this run may write:
      each is moved to `single_file_path` if the run staged it; an earlier
      run's copy is deleted if not, so no stale file describes new shards.
    stale_names: the outputs whose shards of earlier runs are removed
      (default `names`; the scorer's: ALL_OUTPUT_NAMES, so that an output
      this run does not write is not left from another run).

  Returns:
    The final paths, sorted.

  Raises:
    RuntimeError: if a shard is missing from `staged_paths` (nothing is
      moved then).
  """
  staging = staging_folder(prefix, run_id)
  finals = sorted(shard_path(prefix, name, index, num_shards, output_format)
                  for name in names for index in range(num_shards))
  moves = {storage.join(staging, storage.basename(final)): final
           for final in finals}
  missing = sorted(set(moves) - set(staged_paths))
  if missing:
    raise RuntimeError(
        f'{len(missing)} of {len(moves)} output shards were not written '
        f'(e.g. {missing[0]}): not publishing; the earlier outputs at '
        f'{prefix} are unchanged.')
  _withdraw_single_files(prefix, staging, set(staged_paths), files)
  for staged, final in moves.items():
    try:
      storage.move(staged, final)
    except FileNotFoundError:
      if not storage.exists(final):  # Else moved by an earlier attempt.
        raise
  finals.extend(_publish_files(prefix, staging, set(staged_paths), files))
  _remove_stale_shards(prefix, tuple(stale_names or names),
                       keep=set(finals))
  remove_staging_folders(prefix, run_id)
  return sorted(finals)


def _withdraw_single_files(prefix, staging, staged_paths, files):
  """Deletes the earlier run's single files before any shard is replaced.

  They describe their run's shards (the embedding cache's description, the
  evaluation report), and the new ones are published last: a publish cut
  short (kill -9) leaves shards of two runs and no description, which the
  trainer refuses and a rerun replaces, never the old description over a
  mix. A file this run already moved (a retried publish: its staged copy is
  gone) is the new one and stays.
  """
  for suffix in files:
    final = single_file_path(prefix, suffix)
    staged = storage.join(staging, storage.basename(final))
    if staged in staged_paths and not storage.exists(staged):
      continue
    if storage.exists(final):
      storage.delete(final)


def _publish_files(prefix, staging, staged_paths, files):
  """Moves the staged single files into place; deletes stale ones."""
  published = []
  for suffix in files:
    final = single_file_path(prefix, suffix)
    staged = storage.join(staging, storage.basename(final))
    if staged in staged_paths:
      try:
        storage.move(staged, final)
      except FileNotFoundError:
        if not storage.exists(final):  # Else moved by an earlier attempt.
          raise
      published.append(final)
    elif storage.exists(final):
      storage.delete(final)
  return published


def _remove_stale_shards(prefix, names, keep):
  """Deletes this prefix's shard files of `names` not in `keep`."""
  folder = storage.dirname(prefix)
  regex = _shard_name_regex(prefix, names, temporary=True)
  for entry in storage.scan_folder(folder):
    path = storage.join(folder, entry.name)
    if (not entry.is_folder and regex.fullmatch(entry.name) and
        path not in keep):
      storage.delete(path)


def remove_staging_folders(prefix, run_id=None):
  """Removes the staging folders of `prefix` (only this run's, if given).

  Only shard files (and their temporary files) are deleted from a staging
  folder; a folder that still holds anything else is left. Without `run_id`,
  call it only while holding the prefix's lease: it would remove the staging
  folder of a live run too.
  """
  folder = storage.dirname(prefix)
  regex = _staging_name_regex(prefix)
  shard_regex = _shard_name_regex(prefix, ALL_OUTPUT_NAMES, temporary=True)
  single_files = re.compile('(' + '|'.join(
      re.escape(storage.basename(single_file_path(prefix, suffix)))
      for suffix in EVALUATION_FILES + (EMBEDDINGS_DESCRIPTION,)) + ')' +
                            _TEMPORARY_SUFFIX)
  for entry in storage.scan_folder(folder):
    if not (entry.is_folder and regex.fullmatch(entry.name)):
      continue
    if run_id is not None and entry.name != storage.basename(
        staging_folder(prefix, run_id)):
      continue
    staging = storage.join(folder, entry.name)
    for inside in storage.scan_folder(staging):
      if not inside.is_folder and (shard_regex.fullmatch(inside.name) or
                                   single_files.fullmatch(inside.name)):
        storage.delete(storage.join(staging, inside.name))
    storage.remove_folder_if_empty(staging)


def read_records(prefix, name):
  """Reads every record of one JSON-lines output (for tests, tools and
  notebooks).

  Records are split on '\\n' only: a URI or label may hold U+2028, U+0085
  or other characters that `str.splitlines` would also break at.

  Args:
    prefix: the `--output` prefix.
    name: PREDICTIONS or ERRORS.

  Returns:
    The records of all shards, shard by shard.
  """
  records = []
  for path in find_shards(storage.normalize(prefix), (name,)):
    if not path.endswith('.' + JSONL):
      continue
    records.extend(json.loads(line)
                   for line in storage.read_text(path).split('\n') if line)
  return records
