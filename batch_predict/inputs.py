"""What `--input` names, listing it, and reading one input file.

`--input` is one of:
* a glob (`/data/*.png`, `gs://bucket/images/**.jpg`): every matching file;
* a folder (local, or a `gs://` prefix): every file under it, recursively;
* one file, which is read as one image, a manifest or a list of URIs by a
  rule on its name, never by guessing from its bytes
  (`--input_format=auto`): an image extension (`.jpg`, `.png`, `.bmp`,
  `.webp`, ... see `IMAGE_EXTENSIONS`) makes it one image, even if it turns
  out corrupt; `.csv` and `.jsonl` make it a CSV or JSON-lines manifest
  (manifests.py); any other name is a text list of URIs, one per line
  (blank lines and lines starting with `#` are skipped; relative paths are
  relative to the list's folder). The flag
  `--input_format=image|list|csv|jsonl` says it outright;
* TFRecord shards: a file or glob whose last part holds `.tfrecord`
  (`shards/*.tfrecord*`), or any file or glob with `--input_format=
  tfrecord` (tfrecords.py reads them).

Globs use Beam's semantics: `*` stays within one folder, `**` crosses
folders. Remote (gs://) globs and folders are listed by Beam's
`fileio.MatchFiles`. Local ones are listed here (`list_local`, on
`trainer.walk`): Beam's local listing (`os.walk`) leaves out dangling links
and folders it cannot read without a word, and a named pipe among the files
would block its reader; here every entry gets exactly one record. Symlinked
folders are followed, and a link back to a folder above it (a loop) becomes
one `link_loop` error instead of an endless walk.

Reading (`read_image_file`) refuses special files (named pipes, sockets,
devices) from `os.stat`, before any `open`, and turns every local `OSError`
of one input into a `ReadError` with its own `kind` (`walk.describe_error`,
the trainer's too, plus what to do about it here); network errors on gs://
propagate, so the runner retries. `/gcs/bucket/...` (Vertex AI's mount) is
read as `gs://bucket/...`.

With `--labels_from_folders` an input's label (`items.Item.label`) is the
name of its class folder (`folder_label`): for a folder input (`DIR`, or
the glob `DIR/**`) the folder right below `DIR` that holds it, as the
trainer's `image_folder` dataset reads `DIR/<class>/...`, so files nested
deeper keep their class; for any other input (a glob, a list, one image)
the folder that holds the file. Files directly in a folder input's `DIR`
have no class and are unlabelled. The label names are the sorted class
folder names (`class_folder_names`).

A file name that is not valid UTF-8 cannot be carried through the pipeline
or written as JSON as it is: its record has a printable URI, the name with
each byte that is not UTF-8 written as a backslash escape (`caf\\xe9.png`),
and kind `invalid_name`.
"""

import errno
import os
import re
import stat
from typing import NamedTuple

from apache_beam.io import filesystem
from apache_beam.io import filesystems
from google.api_core import exceptions as gcs_exceptions

from trainer import errors
from trainer import storage
from trainer import walk

GLOB = 'glob'
URI_LIST = 'uri_list'
SINGLE_FILE = 'single_file'
CSV_MANIFEST = 'csv_manifest'
JSONL_MANIFEST = 'jsonl_manifest'
MANIFEST_KINDS = (CSV_MANIFEST, JSONL_MANIFEST)
# TFRecord shards (one file or a glob) of tf.train.Examples: tfrecords.py.
TFRECORD_SHARDS = 'tfrecord_shards'

# --input_format: how one --input file is read.
AUTO = 'auto'
IMAGE = 'image'
LIST = 'list'
CSV = 'csv'
JSONL = 'jsonl'
TFRECORD = 'tfrecord'
INPUT_FORMATS = (AUTO, IMAGE, LIST, CSV, JSONL, TFRECORD)
IMAGE_EXTENSIONS = frozenset((
    '.jpg', '.jpeg', '.jpe', '.jfif', '.png', '.apng', '.gif', '.bmp', '.dib',
    '.webp', '.tif', '.tiff', '.heic', '.heif', '.avif', '.ico', '.jp2',
    '.j2k', '.jxl', '.psd', '.svg'))
_MANIFEST_EXTENSIONS = {'.csv': CSV_MANIFEST, '.jsonl': JSONL_MANIFEST}
_FORMAT_KINDS = {IMAGE: SINGLE_FILE, LIST: URI_LIST, CSV: CSV_MANIFEST,
                 JSONL: JSONL_MANIFEST}
# A URI list's lines lose ASCII whitespace at both ends (and a byte-order
# mark at the start), nothing else: names may hold U+00A0, U+2028, ...
_ASCII_WHITESPACE = ' \t\r\n\v\f'

# What to do about each kind of local problem, after walk.describe_error's
# phrase (the trainer's messages name the problem with the same phrase).
_ADVICE = {
    errors.NOT_FOUND: 'check the path, or the line of the --input list that '
                      'names it.',
    errors.DANGLING_LINK: 'fix or remove the link.',
    errors.LINK_LOOP: 'fix or remove them.',
    errors.NOT_A_FOLDER: 'check the path.',
    errors.NAME_TOO_LONG: 'check the path, or shorten it.',
    errors.NOT_A_FILE: 'list files, not folders, in the --input list.',
    errors.PERMISSION_DENIED: 'give the pipeline read access to it.',
    errors.READ_FAILED: 'check the file and the disk.',
}


class InputError(errors.UserError, ValueError):
  """`--input` names nothing that can be scored."""

  kind = 'invalid_input'


class ReadError(errors.UserError, IOError):
  """One input cannot be read, for a reason the user can act on.

  `kind` is the input's error kind (errors.NOT_FOUND, ...). `uri` is the
  input's printable URI when the error is raised while listing (a name that
  is not UTF-8 gets backslash escapes), else None: the record then takes
  the URI it was reading.
  """

  def __init__(self, message, kind=None, uri=None):
    super().__init__(message, kind)
    self.uri = uri


class InputSource(NamedTuple):
  """What `--input` names: `kind` is GLOB, URI_LIST or SINGLE_FILE."""
  kind: str
  path: str


def _invalid_name(name):
  return ReadError(
      'the file name is not valid UTF-8 (this URI shows each byte that is '
      'not as a \\x escape): rename the file with a UTF-8 name to score it.',
      errors.INVALID_NAME, uri=walk.printable(name))


# --------------------------------------------------------------------------
# What --input names.


def resolve_input(path, input_format=AUTO):
  """Works out what `--input` names, checking that it names something.

  Args:
    path: the `--input` value.
    input_format: AUTO, IMAGE or LIST: how a single file is read.

  Returns:
    An `InputSource`: a folder becomes the glob `FOLDER/**`.

  Raises:
    InputError: if nothing matches the glob, the path does not exist, is
      not a regular file or folder, or the format does not apply.
  """
  if input_format not in INPUT_FORMATS:
    raise InputError(f'--input_format={input_format}: use one of '
                     f'{", ".join(INPUT_FORMATS)}.')
  try:
    path = storage.normalize(path)
  except ValueError as e:
    raise InputError(f'--input: {e}') from e
  is_glob = storage.has_glob(path)
  if input_format == TFRECORD or (input_format == AUTO and _is_tfrecord(path)):
    return _tfrecord_source(path, is_glob)
  if is_glob or storage.isdir(path):
    if input_format != AUTO:
      raise InputError(
          f'--input_format={input_format} is for one --input file, and '
          f'{path} is a {"glob" if is_glob else "folder"}: leave it at auto.')
    if is_glob:
      _check_glob_matches(path, 'no files match')
      return InputSource(GLOB, path)
    pattern = storage.join(path, '**')
    _check_glob_matches(pattern, f'folder {path} holds no files')
    return InputSource(GLOB, pattern)
  _check_single_file(path)
  return InputSource(_single_file_kind(path, input_format), path)


def _is_tfrecord(path):
  """`*.tfrecord*` names TFRecord shards: `x.tfrecord`, `x.tfrecord.gz`,
  `x.tfrecords`, `train-*.tfrecord*`, ..."""
  return '.tfrecord' in storage.basename(path).lower()


def _tfrecord_source(path, is_glob):
  if is_glob:
    _check_glob_matches(path, 'no files match')
  elif storage.isdir(path):
    raise InputError(f'--input={path} is a folder: name its shards, e.g. '
                     f'--input=\'{storage.join(path, "*.tfrecord*")}\'.')
  else:
    _check_single_file(path)
  return InputSource(TFRECORD_SHARDS, path)


def _check_single_file(path):
  if storage.is_gcs(path):
    if not storage.exists(path):
      raise InputError(f'--input={path}: no such file or folder.')
    return
  try:
    info = os.stat(path)
  except OSError as e:
    problem = local_error(path, e)
    if problem.kind == errors.NOT_FOUND:
      raise InputError(f'--input={path}: no such file or folder.') from e
    raise InputError(f'--input={path}: {problem}') from e
  if not stat.S_ISREG(info.st_mode):
    raise InputError(f'--input={path} is {walk.describe_mode(info.st_mode)}, '
                     'not a file or folder.')


def _single_file_kind(path, input_format):
  """The one-file rule: the flag if given, else the file name's extension."""
  if input_format in _FORMAT_KINDS:
    return _FORMAT_KINDS[input_format]
  extension = os.path.splitext(storage.basename(path))[1].lower()
  if extension in IMAGE_EXTENSIONS:
    return SINGLE_FILE
  return _MANIFEST_EXTENSIONS.get(extension, URI_LIST)


def _check_glob_matches(pattern, nothing):
  """Raises InputError unless `pattern` names at least one entry."""
  if not storage.is_gcs(pattern):
    base = _glob_base(pattern)
    try:
      os.scandir(base).close()
    except FileNotFoundError as e:
      raise InputError(f'--input={pattern}: {nothing}.') from e
    except OSError as e:
      raise InputError(f'--input={pattern}: cannot list {base}: '
                       f'{e.strerror}.') from e
    if next(list_local(pattern), None) is None:
      raise InputError(f'--input={pattern}: {nothing}.')
    return
  try:
    result, = filesystems.FileSystems.match([pattern], limits=[1])
  except (IOError, ValueError) as e:
    raise InputError(f'--input={pattern}: cannot list files: {e}') from e
  if not result.metadata_list:
    raise InputError(f'--input={pattern}: {nothing}.')


# --------------------------------------------------------------------------
# Labels from class folders.


def folder_root(source):
  """The folder of a folder input (`DIR/**`), whose sub-folders are the
  classes; None for any other input."""
  kind, path = source
  if kind == GLOB and path.endswith('/**') and not storage.has_glob(
      path[:-len('/**')]):
    return path[:-len('/**')]
  return None


def folder_label(uri, root=None):
  """An input's label with `--labels_from_folders` (see the module's
  docstring): its class folder's name, or None if it has none.

  Args:
    uri: the input's URI.
    root: the folder input's folder (`folder_root`), or None.
  """
  if root is not None:
    relative = uri[len(root):].lstrip('/') if uri.startswith(
        root + '/') else None
    if relative is None or '/' not in relative:
      return None
    return relative.split('/', 1)[0]
  parent = storage.dirname(uri)
  if storage.is_gcs(parent) and '/' not in parent[len(storage.GCS_PREFIX):]:
    return None  # A file at the top of a bucket: no folder.
  return storage.basename(parent) or None


def class_folder_names(root):
  """The sorted names of the folders directly in `root`: the label names.

  Local symlinked folders count (the walk follows them); on gs:// the
  prefixes one level down.
  """
  if storage.is_gcs(root):
    return tuple(sorted(entry.name for entry in storage.scan_folder(root)
                        if entry.is_folder))
  with os.scandir(root) as entries:
    return tuple(sorted(entry.name for entry in entries
                        if entry.is_dir() and walk.is_utf8(entry.name)))


# --------------------------------------------------------------------------
# Listing a local glob or folder.


def _glob_base(pattern):
  """The folder a local glob is listed from (as Beam's `match` finds it)."""
  before_glob = re.match(r'[^[*?]*', pattern).group(0)
  return os.path.dirname(before_glob)


class _Levels:
  """Which sub-folders of a glob's base folder can hold matches."""

  def __init__(self, pattern, base):
    levels = pattern[len(base):].lstrip(os.sep).split(os.sep)
    # Up to the first level with `**` (which crosses folders), each level
    # of a folder's path must match its level of the pattern.
    self._regexes = []
    for level in levels:
      if '**' in level:
        self._regexes.append(None)
        break
      self._regexes.append(re.compile(
          filesystem.FileSystem.translate_pattern(level)))
    self._unbounded = self._regexes[-1:] == [None]

  def may_hold_matches(self, relative_folder):
    parts = relative_folder.split(os.sep)
    for part, regex in zip(parts, self._regexes):
      if regex is None:
        return True
      if not regex.match(part):
        return False
    return len(parts) < len(self._regexes) or self._unbounded


def list_local(pattern):
  """Yields every entry a local glob (or `FOLDER/**`) names, lazily, once.

  Regular files, special files, dangling links and broken link chains are
  yielded as paths (reading each says what it is); a folder that cannot be
  listed, a symlinked folder that leads back to a folder above it, and a
  name that is not UTF-8 are yielded as `ReadError`s with their `uri`.
  Folders themselves are not entries: their contents are. Only folders
  that can hold matches of the pattern are walked.

  Args:
    pattern: an absolute local glob in Beam's syntax.

  Yields:
    A path (str) to read, or a `ReadError`.
  """
  base = _glob_base(pattern)
  matches = re.compile(filesystem.FileSystem.translate_pattern(pattern)).match
  levels = _Levels(pattern, base)
  for item in walk.walk(
      base, enter=lambda folder: levels.may_hold_matches(folder.relative)):
    if isinstance(item, walk.Problem):
      yield _folder_problem(item)
    elif not item.is_folder and matches(item.path):
      yield item.path if walk.is_utf8(item.path) else _invalid_name(item.path)


def _folder_problem(problem):
  """The ReadError of a folder the walk did not go into."""
  uri = walk.printable(problem.path)
  if problem.kind == errors.LINK_LOOP:
    return ReadError(
        f'a link to {walk.printable(os.path.realpath(problem.path))}, a '
        'folder that holds this link: not followed (it would loop forever). '
        'Remove the link, or score the folder it points to.',
        errors.LINK_LOOP, uri=uri)
  if problem.error.errno == errno.ENAMETOOLONG:
    return ReadError('the folder\'s path is too long for the filesystem: its '
                     'files were not scored; move them higher up.',
                     errors.NAME_TOO_LONG, uri=uri)
  return ReadError(
      f'cannot list this folder ({problem.error.strerror}): its files were '
      'not scored. Give the pipeline read access to it, or leave it out of '
      '--input.', errors.UNREADABLE_FOLDER, uri=uri)


# --------------------------------------------------------------------------
# URI lists.


def parse_uri_line(line, list_folder):
  """The URI on one line of a URI list, or None for blank and comment lines.

  Only ASCII whitespace (and a byte-order mark at the start) is stripped, so
  names keep characters such as U+00A0 or U+2028 at either end.

  Args:
    line: a line of the list (str, or the raw bytes), with or without its
      line ending.
    list_folder: the folder of the list file; relative paths start there.

  Returns:
    The normalized URI, or the stripped line itself if it is not a path this
    project can read (reading it then gives an `invalid_uri` error record).

  Raises:
    ReadError: of kind `invalid_name` if the line is not valid UTF-8.
  """
  if isinstance(line, bytes):
    line = line.decode('utf-8', 'surrogateescape')
  line = line.lstrip('\ufeff').strip(_ASCII_WHITESPACE)
  if not line or line.startswith('#'):
    return None
  if '://' not in line and not line.startswith('/'):
    line = storage.join(list_folder, line)
  if not walk.is_utf8(line):
    raise _invalid_name(line)
  try:
    return storage.normalize(line)
  except ValueError:
    return line


# --------------------------------------------------------------------------
# Reading one input.


def read_image_file(uri, max_bytes):
  """Reads one whole input file.

  Local files are checked with `os.stat` before they are opened and read
  with `os.open` (not Beam's `FileSystems`, which would open a named pipe
  and block), so that a special file is never opened; every `OSError` of a
  local file is that file's `ReadError`. gs:// objects are read through
  Beam's `FileSystems`; errors that belong to the object (missing, no
  permission) raise `ReadError`, anything else (a network failure, say)
  propagates, so the runner retries the work.

  Args:
    uri: a local path, gs:// or /gcs/ URI.
    max_bytes: refuse files larger than this, reading at most one byte more.

  Returns:
    The file's bytes.

  Raises:
    ReadError: naming the problem and what to do about it.
  """
  if uri.startswith(storage.GCS_FUSE_ROOT):
    uri = storage.normalize(uri)
  if storage.is_gcs(uri):
    data = _read_remote(uri, max_bytes)
  elif '://' in uri or not os.path.isabs(uri):
    raise ReadError('not a path or URI this pipeline can read: use a local '
                    'path, gs://BUCKET/PATH or /gcs/BUCKET/PATH.',
                    errors.INVALID_URI)
  else:
    data = _read_local(uri, max_bytes)
  if len(data) > max_bytes:
    raise _too_large(max_bytes)
  return data


def _too_large(max_bytes):
  return ReadError(f'file is larger than {max_bytes:,} bytes '
                   '(--max_file_bytes): downscale or recompress it, or raise '
                   '--max_file_bytes.', errors.FILE_TOO_LARGE)


def _check_regular(mode):
  if stat.S_ISDIR(mode):
    raise ReadError(f'a folder, not a file: {_ADVICE[errors.NOT_A_FILE]}',
                    errors.NOT_A_FILE)
  if not stat.S_ISREG(mode):
    raise ReadError(
        f'{walk.describe_mode(mode)}, not a regular file: not opened, as '
        'reading it could block or have side effects. Score image files '
        'only.', errors.SPECIAL_FILE)


def _read_local(path, max_bytes):
  try:
    _check_regular(os.stat(path).st_mode)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
      # Replaced by something else since the stat? Check what was opened.
      info = os.fstat(descriptor)
      _check_regular(info.st_mode)
      if info.st_size > max_bytes:
        raise _too_large(max_bytes)
      # The descriptor read as it is: a file object around it (`os.fdopen`)
      # cost a third of reading a small image (10 of 15 us, measured here).
      return read_at_most(lambda size: os.read(descriptor, size),
                          info.st_size, max_bytes)
    finally:
      os.close(descriptor)
  except ValueError as e:  # An embedded NUL character.
    raise ReadError(f'not a file name ({e}): fix this line of the --input '
                    'list.', errors.INVALID_NAME) from e
  except ReadError:
    raise
  except OSError as e:
    raise local_error(path, e) from e


def read_at_most(read, size, max_bytes):
  """Reads a file of `size` bytes (from its `fstat`), at most `max_bytes` + 1.

  Asks `read` (`os.read` of the file's descriptor, or a file's `read`) for
  `size` + 1 bytes, the one more to see a file that grew since its `fstat`
  (then it reads on, to the limit). Reading `max_bytes + 1` at once would
  allocate a buffer of --max_file_bytes (64 MiB by default) for every file:
  for a small image that took longer than reading it (about 50 us of 70 per
  image; 10,000 tiny PNGs, 2 shared cores). A regular file's read returns
  less than it was asked for only at the file's end.
  """
  data = read(size + 1)
  if len(data) <= size:
    return data
  parts = [data]
  total = len(data)
  while total <= max_bytes:
    more = read(max_bytes + 1 - total)
    if not more:
      break
    parts.append(more)
    total += len(more)
  return b''.join(parts)


def local_error(path, error):
  """The ReadError of a local `OSError`: its kind, and what to do."""
  kind, phrase = walk.describe_error(path, error)
  return ReadError(f'{phrase}: {_ADVICE[kind]}', kind)


def _read_remote(uri, max_bytes):
  try:
    # UNCOMPRESSED: a file named x.gz is an input like any other, not a
    # stream for Beam to gunzip.
    with filesystems.FileSystems.open(
        uri, mime_type='application/octet-stream',
        compression_type=filesystem.CompressionTypes.UNCOMPRESSED) as f:
      return f.read(max_bytes + 1)
  except (FileNotFoundError, gcs_exceptions.NotFound) as e:
    raise ReadError(f'no such file: {_ADVICE[errors.NOT_FOUND]}',
                    errors.NOT_FOUND) from e
  except (PermissionError, gcs_exceptions.Forbidden) as e:
    raise ReadError('permission denied: give the pipeline (or its service '
                    f'account) read access. ({e})',
                    errors.PERMISSION_DENIED) from e
