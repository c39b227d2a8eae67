"""What `--input` names, and reading one image file through Beam's FileSystems.

`--input` is one of:
* a glob (`/data/*.png`, `gs://bucket/images/**.jpg`): every matching file;
* a folder (local, or a `gs://` prefix): every file under it, recursively;
* a text file of URIs, one per line (blank lines and lines starting with `#`
  are skipped; relative paths are relative to the list's folder);
* a single image file.

Globs use Beam's semantics: `*` stays within one folder, `**` crosses
folders. Images are read with Beam's `FileSystems`, so every filesystem Beam
supports works on every runner; `/gcs/bucket/...` (Vertex AI's mount) is
read as `gs://bucket/...`.
"""

from typing import NamedTuple

from apache_beam.io import filesystem
from apache_beam.io import filesystems
from google.api_core import exceptions as gcs_exceptions

from batch_predict import image_header
from trainer import storage

GLOB = 'glob'
URI_LIST = 'uri_list'
SINGLE_FILE = 'single_file'

# Error kinds of `read_image_file`, beside image_header's.
NOT_FOUND = 'not_found'
NOT_A_FILE = 'not_a_file'
PERMISSION_DENIED = 'permission_denied'
INVALID_URI = 'invalid_uri'
FILE_TOO_LARGE = 'file_too_large'
KINDS = (NOT_FOUND, NOT_A_FILE, PERMISSION_DENIED, INVALID_URI, FILE_TOO_LARGE)


class InputError(ValueError):
  """`--input` names nothing that can be scored."""


class ReadError(IOError):
  """One input cannot be read, for a reason the user can act on."""

  def __init__(self, kind, message):
    super().__init__(message)
    self.kind = kind


class InputSource(NamedTuple):
  """What `--input` names: `kind` is GLOB, URI_LIST or SINGLE_FILE."""
  kind: str
  path: str


def resolve_input(path):
  """Works out what `--input` names, checking that it names something.

  Args:
    path: the `--input` value.

  Returns:
    An `InputSource`: a folder becomes the glob `FOLDER/**`.

  Raises:
    InputError: if nothing matches the glob, or the path does not exist.
  """
  try:
    path = storage.normalize(path)
  except ValueError as e:
    raise InputError(f'--input: {e}') from e
  if storage.has_glob(path):
    _check_glob_matches(path)
    return InputSource(GLOB, path)
  if storage.isdir(path):
    pattern = storage.join(path, '**')
    _check_glob_matches(pattern, what=f'folder {path} holds no files')
    return InputSource(GLOB, pattern)
  if not storage.exists(path):
    raise InputError(f'--input={path}: no such file or folder.')
  with _open(path) as f:
    head = f.read(64)
  if image_header.sniff_format(head):
    return InputSource(SINGLE_FILE, path)
  return InputSource(URI_LIST, path)


def _check_glob_matches(pattern, what=None):
  try:
    result, = filesystems.FileSystems.match([pattern], limits=[1])
  except (IOError, ValueError) as e:
    raise InputError(f'--input={pattern}: cannot list files: {e}') from e
  if not result.metadata_list:
    raise InputError(f'--input={pattern}: {what or "no files match"}.')


def parse_uri_line(line, list_folder):
  """The URI on one line of a URI list, or None for blank and comment lines.

  Args:
    line: a line of the list, with or without its line ending.
    list_folder: the folder of the list file; relative paths start there.

  Returns:
    The normalized URI, or the stripped line itself if it is not a path this
    project can read (reading it then gives an `invalid_uri` error record).
  """
  line = line.strip().lstrip('\ufeff')  # A byte-order mark may start a file.
  if not line or line.startswith('#'):
    return None
  if '://' not in line and not line.startswith('/'):
    line = storage.join(list_folder, line)
  try:
    return storage.normalize(line)
  except ValueError:
    return line


def _open(uri):
  # UNCOMPRESSED: a file named x.gz is an input like any other, not a stream
  # for Beam to gunzip.
  return filesystems.FileSystems.open(
      uri, mime_type='application/octet-stream',
      compression_type=filesystem.CompressionTypes.UNCOMPRESSED)


def read_image_file(uri, max_bytes):
  """Reads one whole input file through Beam's FileSystems.

  Errors that belong to this input (missing file, folder, no permission,
  unreadable URI, too big) raise `ReadError`; anything else (a network
  failure, say) propagates, so the runner retries the work.

  Args:
    uri: the file, local or any filesystem Beam supports.
    max_bytes: refuse files larger than this, reading at most one byte more.

  Returns:
    The file's bytes.

  Raises:
    ReadError: naming the problem and what to do about it.
  """
  try:
    with _open(uri) as f:
      data = f.read(max_bytes + 1)
  except (FileNotFoundError, gcs_exceptions.NotFound) as e:
    raise ReadError(NOT_FOUND, 'no such file: check the path, or the line of '
                    'the --input list that names it.') from e
  except IsADirectoryError as e:
    raise ReadError(NOT_A_FILE, 'a folder, not a file: list files, not '
                    'folders, in the --input list.') from e
  except (PermissionError, gcs_exceptions.Forbidden) as e:
    raise ReadError(PERMISSION_DENIED, 'permission denied: give the pipeline '
                    f'(or its service account) read access. ({e})') from e
  except ValueError as e:  # Beam: no filesystem for the scheme.
    raise ReadError(INVALID_URI, 'not a path or URI this pipeline can read: '
                    'use a local path, gs://BUCKET/PATH or /gcs/BUCKET/PATH.'
                    ) from e
  if len(data) > max_bytes:
    raise ReadError(FILE_TOO_LARGE, f'file is larger than {max_bytes:,} bytes '
                    '(--max_file_bytes): downscale or recompress it, or raise '
                    '--max_file_bytes.')
  return data
