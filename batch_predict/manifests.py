"""Manifests: CSV and JSON-lines tables of inputs, read in parallel splits.

A manifest names one image a row, in its URI column (`uri`, or
`--uri_column`); relative URIs start at the manifest's folder, as a URI
list's lines do. An optional `label` column is the input's true label
(`items.Item.label`); every other column is one of the input's `fields`,
and comes back unchanged in its prediction or error record.

* CSV: the first line is the header; every other line is one row, with as
  many fields as the header. A field may be quoted (RFC 4180), but a quoted
  field cannot hold a line break: the file is split for parallel reading at
  line breaks, which a reader in the middle of the file cannot tell apart
  from one inside quotes. Such a row becomes two error records (each half
  has the wrong number of fields), never a wrong input.
* JSON lines: every line is one JSON object; the first line's keys are the
  columns, and a later row may leave some out (it then has no such field)
  but not add others (CSV and Parquet outputs have fixed columns).

The header is read and checked before any work (`read_manifest`): a column
whose name is one of the records' own fields (`outputs.RESERVED_COLUMNS`:
`uri`, `label`, `score`, `top_k`, `error`, `kind`, `true_label`), other than
the URI and label columns themselves, is refused, as is a header that
names a column twice or lacks the URI column.

A row the scorer cannot make an input of (no URI, the wrong number of
fields, not a JSON object, a column the first row did not have, not UTF-8)
becomes one error record of kind `bad_manifest_row`, whose `uri` names the
manifest and the byte offset the line starts at (`MANIFEST#byte=N`), and
whose message quotes the line. Lines are named by byte offset, not line
number: each split of the file starts at a byte offset, and knowing the
line number there would mean reading everything before it first.

The file is read by `ManifestSource`, a Beam `FileBasedSource` that yields
every line with its offset, splittable at any byte as Beam's own
`ReadFromText` is (which yields lines without their offsets, so a bad row
could not be named).
"""

import csv
import json
from typing import NamedTuple

from apache_beam.io import filebasedsource
from apache_beam.io import filesystem
from apache_beam.io import filesystems

from batch_predict import inputs
from batch_predict import items
from batch_predict import outputs
from trainer import errors
from trainer import storage

CSV = 'csv'
JSONL = 'jsonl'
LABEL_COLUMN = 'label'
DEFAULT_URI_COLUMN = 'uri'
BAD_MANIFEST_ROW = errors.BAD_MANIFEST_ROW
_QUOTED_CHARACTERS = 200
_HEADER_LIMIT = 1 << 20


class Manifest(NamedTuple):
  """A checked manifest: where it is and what its columns are."""
  path: str
  kind: str  # CSV or JSONL.
  columns: tuple  # Every column, in the manifest's order.
  uri_column: str
  has_label: bool
  field_names: tuple  # The columns passed through, in order.


class ManifestError(errors.UserError, ValueError):
  """The manifest cannot be read as one: the message says why."""

  kind = 'invalid_input'


# --------------------------------------------------------------------------
# The header, checked before any work.


def _first_line(path):
  """The manifest's first line (bytes, without its line break)."""
  with filesystems.FileSystems.open(
      path, compression_type=filesystem.CompressionTypes.UNCOMPRESSED) as f:
    head = f.read(_HEADER_LIMIT)
  line = head.split(b'\n', 1)[0]
  if len(line) == _HEADER_LIMIT:
    raise ManifestError(f'--input={path}: the first line is over '
                        f'{_HEADER_LIMIT:,} bytes; is this a manifest?')
  return line.rstrip(b'\r')


def _header_columns(path, kind):
  line = _first_line(path)
  try:
    text = line.decode('utf-8').lstrip('\ufeff')
  except UnicodeDecodeError as e:
    raise ManifestError(f'--input={path}: the first line is not UTF-8 '
                        'text.') from e
  if not text.strip():
    raise ManifestError(f'--input={path}: the first line is empty; a '
                        f'{kind.upper()} manifest starts with its '
                        f'{"header" if kind == CSV else "first row"}.')
  if kind == CSV:
    return tuple(next(csv.reader([text])))
  try:
    row = json.loads(text)
  except ValueError as e:
    raise ManifestError(f'--input={path}: the first line is not JSON '
                        f'({e}).') from e
  if not isinstance(row, dict):
    raise ManifestError(f'--input={path}: the first line is not a JSON '
                        'object; each line of a JSONL manifest is one.')
  return tuple(row)


def read_manifest(path, kind, uri_column=DEFAULT_URI_COLUMN):
  """Reads and checks a manifest's columns.

  Args:
    path: the manifest (local, gs://), normalized.
    kind: CSV or JSONL.
    uri_column: the column that holds each input's URI.

  Returns:
    A `Manifest`.

  Raises:
    ManifestError: if the header names a column twice, lacks the URI column,
      or has a column named like one of the records' own fields.
  """
  columns = _header_columns(path, kind)
  doubled = sorted({c for c in columns if columns.count(c) > 1})
  if doubled:
    raise ManifestError(f'--input={path}: the header names column(s) '
                        f'{", ".join(doubled)} more than once.')
  if uri_column not in columns:
    raise ManifestError(
        f'--input={path}: no column named {uri_column!r} (columns: '
        f'{", ".join(columns)}); name the URI column with --uri_column.')
  passed = tuple(c for c in columns if c not in (uri_column, LABEL_COLUMN))
  colliding = [c for c in passed if c in outputs.RESERVED_COLUMNS]
  if colliding:
    raise ManifestError(
        f'--input={path}: column(s) {", ".join(colliding)} would collide '
        'with the output records\' own fields '
        f'({", ".join(sorted(outputs.RESERVED_COLUMNS))}); rename them.')
  return Manifest(path, kind, columns, uri_column, LABEL_COLUMN in columns,
                  passed)


# --------------------------------------------------------------------------
# Rows.


def _bad_row(manifest, offset, line, why):
  quoted = line if len(line) <= _QUOTED_CHARACTERS else (
      line[:_QUOTED_CHARACTERS] + '...')
  return inputs.ReadError(
      f'manifest line at byte {offset} ({quoted!r}): {why}',
      BAD_MANIFEST_ROW, uri=f'{manifest.path}#byte={offset}')


def _values(manifest, offset, text):
  """The row's {column: value}, or raises the row's ReadError."""
  if manifest.kind == CSV:
    row = next(csv.reader([text]), [])
    if len(row) != len(manifest.columns):
      raise _bad_row(manifest, offset, text,
                     f'{len(row)} fields, and the header has '
                     f'{len(manifest.columns)}; fix the row (a quoted field '
                     'cannot hold a line break).')
    return dict(zip(manifest.columns, row))
  try:
    row = json.loads(text)
  except ValueError as e:
    raise _bad_row(manifest, offset, text, f'not JSON ({e}).') from e
  if not isinstance(row, dict):
    raise _bad_row(manifest, offset, text, 'not a JSON object.')
  unknown = [key for key in row if key not in manifest.columns]
  if unknown:
    raise _bad_row(manifest, offset, text,
                   f'column(s) {", ".join(unknown)} that the first row does '
                   'not have; give every column in the first row.')
  return row


def _as_label(value):
  if value is None or value == '':
    return None
  return value if isinstance(value, str) else storage.to_json(value)


def parse_row(manifest, offset, line):
  """One manifest line -> an `items.Item`, or None (a header or blank line).

  Args:
    manifest: the `Manifest`.
    offset: the byte offset the line starts at.
    line: the line's bytes, with or without its line break.

  Raises:
    inputs.ReadError: of kind `bad_manifest_row`, for a row that cannot be
      an input (its `uri` names the line).
  """
  if offset == 0 and manifest.kind == CSV:
    return None  # The header.
  try:
    text = line.decode('utf-8').rstrip('\r\n')
  except UnicodeDecodeError:
    raise _bad_row(manifest, offset, line.decode('utf-8', 'replace'),
                   'not UTF-8 text.') from None
  text = text.lstrip('\ufeff') if offset == 0 else text
  if not text.strip():
    return None
  row = _values(manifest, offset, text)
  fields = tuple((name, row[name]) for name in manifest.field_names
                 if name in row)
  value = row.get(manifest.uri_column)
  uri = inputs.parse_uri_line(value, storage.dirname(manifest.path)) if (
      isinstance(value, str)) else None
  if uri is None:
    error = _bad_row(manifest, offset, text,
                     f'no URI in column {manifest.uri_column!r}.')
    error.fields = fields
    raise error
  return items.Item(uri, label=_as_label(row.get(LABEL_COLUMN)),
                    fields=fields)


# --------------------------------------------------------------------------
# Reading in splits.


class ManifestSource(filebasedsource.FileBasedSource):
  """A file's lines as (byte offset, line bytes), splittable at any byte.

  A split that starts at byte S reads the lines that start at S or later,
  up to its end: the line that holds byte S - 1 belongs to the split
  before.
  """

  def __init__(self, path):
    super().__init__(
        path, compression_type=filesystem.CompressionTypes.UNCOMPRESSED)

  def read_records(self, file_name, offset_range_tracker):
    start = offset_range_tracker.start_position()
    with self.open_file(file_name) as f:
      position = 0
      if start > 0:
        f.seek(start - 1)
        position = start - 1 + len(f.readline())
      while offset_range_tracker.try_claim(position):
        line = f.readline()
        if not line:
          return
        yield position, line
        position += len(line)
