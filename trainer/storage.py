"""One path layer for local paths, `gs://` URIs and Vertex AI's `/gcs/` mount.

Everything the trainer and the scorer write (checkpoint mirrors, logs, exports,
metrics, scoring outputs) and most of what they read goes through this module,
so one code path serves a laptop, a Vertex AI job and a Dataflow worker.

* Local paths use the standard library.
* `gs://bucket/key` uses `google-cloud-storage`. It honours
  `STORAGE_EMULATOR_HOST` (so tests run against a real GCS-compatible server)
  and it only issues single-object requests: GCS batch requests, which Beam's
  own GCS filesystem uses for rename and delete, are not implemented by
  fake-gcs-server (fsouza/fake-gcs-server#411).
* `/gcs/bucket/key` (Cloud Storage FUSE on Vertex AI) is rewritten to
  `gs://bucket/key`: the API gives whole-object atomic writes, which the FUSE
  mount does not, and the same path then works off Vertex too.

TensorFlow's own gs:// filesystem (tf.io.gfile, tf.data) cannot be pointed at
an emulator, so this module never relies on it.

It imports only the standard library and `trainer.errors` at import time
(google-cloud-storage when a gs:// path is first used): the scorer and its
workers load it without TensorFlow.
"""

import contextlib
import fnmatch
import functools
import json
import math
import os
import shutil
import tempfile
from typing import NamedTuple
import uuid

from trainer import errors

GCS_PREFIX = 'gs://'
GCS_FUSE_ROOT = '/gcs/'
_GLOB_CHARS = '*?['


class StorageError(errors.UserError, OSError):
  """A storage operation failed in a way the user can act on (no
  credentials for gs://)."""

  kind = 'storage_unavailable'


class WriteError(StorageError):
  """An output could not be written: disk full, quota, permissions.

  Attributes:
    hard_exit: the failure happened inside h5py, whose open file may crash
      the interpreter's final clean-up (a segmentation fault); the binary
      should end with os._exit once its own clean-up has run.
  """

  kind = 'write_failed'

  def __init__(self, message, hard_exit=False):
    super().__init__(message)
    self.hard_exit = hard_exit

  def __str__(self):
    return self.args[0]


def normalize(path):
  """Returns `path` in canonical form: `/gcs/b/k` becomes `gs://b/k`.

  Args:
    path: a local path, a `gs://` URI or a `/gcs/` FUSE path.

  Returns:
    The canonical path, without a trailing slash (except for a bare bucket).

  Raises:
    ValueError: if `path` is empty or uses an unsupported scheme.
  """
  if not path:
    raise ValueError('Empty path.')
  path = os.fspath(path)
  if path.startswith(GCS_FUSE_ROOT):
    path = GCS_PREFIX + path[len(GCS_FUSE_ROOT):]
  if is_gcs(path):
    bucket, _, key = path[len(GCS_PREFIX):].partition('/')
    if not bucket:
      raise ValueError(f'No bucket in {path!r}: expected gs://BUCKET/PATH.')
    key = key.rstrip('/')
    return f'{GCS_PREFIX}{bucket}/{key}' if key else f'{GCS_PREFIX}{bucket}'
  if '://' in path:
    raise ValueError(
        f'Unsupported path {path!r}: use a local path, gs://BUCKET/PATH or '
        '/gcs/BUCKET/PATH.')
  return os.path.abspath(os.path.expanduser(path))


def is_gcs(path):
  """Whether `path` (already normalized or not) names a GCS object or prefix."""
  return os.fspath(path).startswith(GCS_PREFIX)


def join(base, *parts):
  """Joins path components with '/' for GCS and `os.path.join` locally."""
  if is_gcs(base):
    return '/'.join([base.rstrip('/')] + [p.strip('/') for p in parts if p])
  return os.path.join(base, *parts)


def basename(path):
  return path.rstrip('/').rsplit('/', 1)[-1]


def dirname(path):
  if is_gcs(path):
    return path.rstrip('/').rsplit('/', 1)[0]
  return os.path.dirname(path)


def has_glob(path):
  return any(c in path for c in _GLOB_CHARS)


# --------------------------------------------------------------------------
# GCS helpers.


@functools.lru_cache(maxsize=None)
def _client():
  """A process-wide GCS client (thread-safe for the calls made here)."""
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  import google.auth.exceptions  # pylint: disable=g-import-not-at-top
  try:
    return storage.Client()
  except google.auth.exceptions.DefaultCredentialsError as e:
    raise StorageError(
        'No Google Cloud credentials for gs:// paths. Run '
        '`gcloud auth application-default login`, or set '
        'GOOGLE_APPLICATION_CREDENTIALS to a service-account key file. '
        f'({e})') from e


def _split(uri):
  bucket, _, key = uri[len(GCS_PREFIX):].partition('/')
  return bucket, key


def _blob(uri):
  bucket, key = _split(uri)
  return _client().bucket(bucket).blob(key)


def _list_blobs(prefix_uri):
  """Yields (uri, size) of every object whose name starts with the prefix."""
  bucket, key = _split(prefix_uri)
  for blob in _client().list_blobs(bucket, prefix=key):
    yield f'{GCS_PREFIX}{bucket}/{blob.name}', blob.size


def _not_found(path, error=None):
  return FileNotFoundError(f'No such file: {path}' + (f' ({error})' if error else ''))


# --------------------------------------------------------------------------
# Queries.


def exists(path):
  """Whether a file, or a directory (a non-empty prefix on GCS), exists."""
  path = normalize(path)
  if not is_gcs(path):
    return os.path.exists(path)
  if _blob(path).exists():
    return True
  return isdir(path)


def isdir(path):
  path = normalize(path)
  if not is_gcs(path):
    return os.path.isdir(path)
  return next(_list_blobs(path + '/'), None) is not None


def list_files(directory):
  """Returns sorted paths of every file under `directory`, recursively."""
  directory = normalize(directory)
  if is_gcs(directory):
    return sorted(uri for uri, _ in _list_blobs(directory + '/'))
  found = []
  for root, _, files in os.walk(directory):
    found.extend(os.path.join(root, name) for name in files)
  return sorted(found)


def glob(pattern):
  """Returns the sorted paths of files matching a shell-style pattern.

  `*` does not cross '/' on local paths (like `glob.glob`); on GCS it does,
  as in `gsutil`-style listings. `**` is accepted on both.
  """
  pattern = normalize(pattern)
  if not is_gcs(pattern):
    import glob as glob_lib  # pylint: disable=g-import-not-at-top
    return sorted(p for p in glob_lib.glob(pattern, recursive=True)
                  if os.path.isfile(p))
  prefix = pattern
  for i, char in enumerate(pattern):
    if char in _GLOB_CHARS:
      prefix = pattern[:i]
      break
  return sorted(uri for uri, _ in _list_blobs(prefix)
                if fnmatch.fnmatchcase(uri, pattern))


def free_bytes(path):
  """Bytes free for writing at a local path; None for gs://.

  The nearest existing folder of `path` is asked (the path itself may not
  exist yet). On GCS there is no disk to fill.
  """
  path = normalize(path)
  if is_gcs(path):
    return None
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def _megabytes(count):
  return f'{count / 2**20:,.1f} MB'


def check_free_space(folder, needed, what):
  """Raises WriteError if local `folder` has less than `needed` bytes free."""
  free = free_bytes(folder)
  if free is not None and free < needed:
    raise WriteError(
        f'Not enough space in {folder} for {what}: it needs about '
        f'{_megabytes(needed)}, {_megabytes(free)} free. Free some space or '
        'write to a larger disk (--job_dir, --checkpoint_dir, --export_dir; '
        'TMPDIR for staging), then rerun the same command to resume.')


def describe_os_error(error):
  """A short reason for an OSError (h5py's messages run to several lines)."""
  if getattr(error, 'errno', None):
    return os.strerror(error.errno)
  return ' '.join(str(error).split())[:200]


# --------------------------------------------------------------------------
# Reads and writes.


def read_bytes(path):
  """Reads a whole file. Raises FileNotFoundError naming the path."""
  path = normalize(path)
  if not is_gcs(path):
    with open(path, 'rb') as f:
      return f.read()
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  try:
    return _blob(path).download_as_bytes()
  except exceptions.NotFound as e:
    raise _not_found(path) from e


def read_text(path):
  return read_bytes(path).decode('utf-8')


def read_json(path):
  return json.loads(read_text(path))


def write_bytes(path, data):
  """Writes a whole file atomically: readers see the old or the new content.

  GCS object uploads are atomic; locally the data goes to a temporary file in
  the same directory, which is then renamed over the target (`open_write`).
  """
  with open_write(path) as f:
    f.write(data)


def write_text(path, text):
  write_bytes(path, text.encode('utf-8'))


def json_safe(value):
  """A copy of `value` with every NaN or infinite float replaced by None.

  JSON has no NaN or Infinity (Python's json module writes them, and most
  other readers then refuse the file), so every JSON file and line this
  project writes goes through this first.
  """
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {key: json_safe(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(item) for item in value]
  return value


def to_json(value, **kwargs):
  """`json.dumps` of `json_safe(value)`: always valid JSON."""
  return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def write_json(path, value):
  """Writes `value` as JSON (non-finite numbers as null), atomically."""
  write_text(path, to_json(value, indent=2, sort_keys=True) + '\n')


@contextlib.contextmanager
def open_write(path):
  """Opens `path` for streamed binary writing; it appears whole on close.

  Use this for files too big to hold in memory. On error nothing is left
  behind: the local temporary file is removed and the GCS upload is never
  finalised.
  """
  path = normalize(path)
  if is_gcs(path):
    with tempfile.TemporaryFile() as f:
      yield f
      f.seek(0)
      _blob(path).upload_from_file(f)
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  try:
    with open(tmp, 'wb') as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# --------------------------------------------------------------------------
# Conditional writes of single gs:// objects (leases).


def create_exclusive(uri, data):
  """Creates a gs:// object only if none exists; returns its generation.

  Raises:
    google.api_core.exceptions.PreconditionFailed: if the object exists.
  """
  blob = _blob(normalize(uri))
  blob.upload_from_string(data, if_generation_match=0)
  return blob.generation


def read_with_generation(uri):
  """(bytes, generation) of a gs:// object, or None if there is none."""
  bucket, key = _split(normalize(uri))
  blob = _client().bucket(bucket).get_blob(key)
  if blob is None:
    return None
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  try:
    return blob.download_as_bytes(if_generation_match=blob.generation), (
        blob.generation)
  except (exceptions.NotFound, exceptions.PreconditionFailed):
    return None  # Replaced or deleted in between.


def replace_if_generation(uri, data, generation):
  """Overwrites a gs:// object only if it is still at `generation`.

  Returns:
    The new generation.

  Raises:
    google.api_core.exceptions.PreconditionFailed: if it changed.
  """
  blob = _blob(normalize(uri))
  blob.upload_from_string(data, if_generation_match=generation)
  return blob.generation


def delete_if_generation(uri, generation):
  """Deletes a gs:// object if it is still at `generation` (else no-op)."""
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  try:
    _blob(normalize(uri)).delete(if_generation_match=generation)
  except (exceptions.NotFound, exceptions.PreconditionFailed):
    pass


# --------------------------------------------------------------------------
# Deletion and whole-tree copies.


def delete(path):
  """Deletes one file if it exists."""
  path = normalize(path)
  if not is_gcs(path):
    if os.path.lexists(path):
      os.remove(path)
    return
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  try:
    _blob(path).delete()
  except exceptions.NotFound:
    pass


def delete_tree(directory):
  """Deletes a directory and everything under it, if it exists."""
  directory = normalize(directory)
  if not is_gcs(directory):
    shutil.rmtree(directory, ignore_errors=True)
    return
  for uri in list_files(directory):
    delete(uri)


def upload_tree(local_dir, remote_dir, skip=()):
  """Copies every file under local `local_dir` to `remote_dir`.

  Files whose relative path is in `skip` are not copied. Existing files at
  the destination are overwritten; other files there are left alone.

  Returns:
    The relative paths copied.
  """
  copied = []
  for path in list_files(local_dir):
    relative = os.path.relpath(path, local_dir).replace(os.sep, '/')
    if relative in skip:
      continue
    with open(path, 'rb') as f:
      write_bytes(join(remote_dir, relative), f.read())
    copied.append(relative)
  return copied


def _download(path, local_path):
  with open(local_path, 'wb') as f:
    f.write(read_bytes(path))


def download_tree(remote_dir, local_dir):
  """Copies every file under `remote_dir` into local `local_dir`.

  Returns:
    The relative paths copied (empty if `remote_dir` does not exist).
  """
  remote_dir = normalize(remote_dir)
  copied = []
  for path in list_files(remote_dir) if exists(remote_dir) else []:
    relative = path[len(remote_dir) + 1:]
    target = os.path.join(local_dir, *relative.split('/'))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    _download(path, target)
    copied.append(relative)
  return copied


@contextlib.contextmanager
def local_file(path):
  """Yields a local path holding the file at `path`.

  The path itself when it is local; for gs://, a temporary copy (for
  libraries that read only local files: Keras, h5py), removed afterwards.
  """
  path = normalize(path)
  if not is_gcs(path):
    yield path
    return
  with tempfile.TemporaryDirectory(prefix='gcs-file-') as staging:
    local = os.path.join(staging, basename(path))
    _download(path, local)
    yield local


def sync_tree(local_dir, remote_dir, last=()):
  """Makes `remote_dir` an exact copy of local `local_dir`.

  Uploads files that are new or whose size or content changed since the last
  sync and deletes remote files that no longer exist locally. Used to mirror
  checkpoint and log folders written by TensorFlow to a GCS job dir.

  Args:
    local_dir: the local folder.
    remote_dir: the gs:// folder to update.
    last: relative paths uploaded after every other file, and before any
      deletion: a record naming other files (a resume record) then never
      names a file that is not there yet, or no longer.
  """
  remote_dir = normalize(remote_dir)
  if not is_gcs(remote_dir):
    raise ValueError(f'sync_tree mirrors to GCS only, got {remote_dir!r}.')
  local_files = {}
  if os.path.isdir(local_dir):
    for path in list_files(local_dir):
      relative = os.path.relpath(path, local_dir).replace(os.sep, '/')
      local_files[relative] = path
  remote_sizes = {uri[len(remote_dir) + 1:]: blob_size
                  for uri, blob_size in _list_blobs(remote_dir + '/')}
  ordered = sorted(local_files, key=lambda relative: relative in last)
  for relative in ordered:
    path = local_files[relative]
    with open(path, 'rb') as f:
      data = f.read()
    if remote_sizes.get(relative) == len(data) and _same_content(
        join(remote_dir, relative), data):
      continue
    write_bytes(join(remote_dir, relative), data)
  for relative in set(remote_sizes) - set(local_files):
    delete(join(remote_dir, relative))


def _same_content(uri, data):
  import base64  # pylint: disable=g-import-not-at-top
  import hashlib  # pylint: disable=g-import-not-at-top
  blob = _blob(uri)
  blob.reload()
  if not blob.md5_hash:
    return False
  return base64.b64decode(blob.md5_hash) == hashlib.md5(data).digest()


def _copy_tree(source, target):
  """shutil.copytree, stopping at the first error with its OSError (errno).

  copytree goes on after a failed file and raises one shutil.Error listing
  them all as strings, which hides the errno (a full disk).
  """
  for root, _, names in os.walk(source):
    folder = os.path.join(target, os.path.relpath(root, source))
    os.makedirs(folder, exist_ok=True)
    for name in names:
      shutil.copy2(os.path.join(root, name), os.path.join(folder, name))


def publish_tree(local_dir, destination, marker):
  """Publishes a finished local folder so readers never see half of it.

  Locally: the folder is copied beside `destination`, then swapped in with
  renames. On GCS, where there are no directory renames: the old `marker`
  is deleted first (so readers know the folder is incomplete), stale objects
  are removed, every file is uploaded, and `marker` is written last.

  Args:
    local_dir: a complete local folder; must not contain `marker`.
    destination: where it should appear (local or gs://).
    marker: the file name written last, inside `destination`, with a short
      JSON body; readers check it to know the folder is complete.
  """
  destination = normalize(destination)
  marker_body = json.dumps({'complete': True}).encode()
  if is_gcs(destination):
    delete(join(destination, marker))
    fresh = set(upload_tree(local_dir, destination))
    for uri in list_files(destination):
      if uri[len(destination) + 1:] not in fresh | {marker}:
        delete(uri)
    write_bytes(join(destination, marker), marker_body)
    return
  parent = os.path.dirname(destination)
  os.makedirs(parent, exist_ok=True)
  token = uuid.uuid4().hex[:8]
  staged = os.path.join(parent, f'.{os.path.basename(destination)}.tmp-{token}')
  retired = os.path.join(parent, f'.{os.path.basename(destination)}.old-{token}')
  # On failure (a full disk, ...) nothing of this call stays behind and the
  # previous folder is where it was.
  try:
    _copy_tree(local_dir, staged)
    with open(os.path.join(staged, marker), 'wb') as f:
      f.write(marker_body)
    if os.path.exists(destination):
      os.rename(destination, retired)
    os.rename(staged, destination)
  except BaseException:
    if os.path.exists(retired) and not os.path.exists(destination):
      os.rename(retired, destination)
    shutil.rmtree(staged, ignore_errors=True)
    raise
  shutil.rmtree(retired, ignore_errors=True)


# --------------------------------------------------------------------------
# One folder's own entries, and moving one file (the scorer's publishing).


class FolderEntry(NamedTuple):
  """An entry directly inside a folder: its name, and whether it is a folder
  (on GCS: a prefix that more objects share)."""
  name: str
  is_folder: bool


def scan_folder(directory):
  """The entries directly inside `directory`, not recursive, sorted by name.

  Unlike `glob` (whose `*` crosses '/' on GCS) and `list_files`, this never
  looks below the folder, so a caller matching names cannot reach files of
  another folder. A local symlink is reported as what it is, not followed.

  Args:
    directory: a local folder or a gs:// prefix (the bucket root too).

  Returns:
    A list of `FolderEntry`; empty if the folder does not exist.

  Raises:
    google.api_core.exceptions.NotFound: if the bucket does not exist.
  """
  directory = normalize(directory)
  if not is_gcs(directory):
    try:
      with os.scandir(directory) as entries:
        return sorted(FolderEntry(e.name, e.is_dir(follow_symlinks=False))
                      for e in entries)
    except (FileNotFoundError, NotADirectoryError):
      return []
  bucket, key = _split(directory)
  prefix = key + '/' if key else ''
  # The delimiter makes the server list one level: objects directly under
  # the prefix, and the sub-prefixes (folders) once each.
  listing = _client().list_blobs(bucket, prefix=prefix, delimiter='/')
  found = [FolderEntry(blob.name[len(prefix):], False) for blob in listing]
  found += [FolderEntry(sub[len(prefix):].rstrip('/'), True)
            for sub in listing.prefixes]
  return sorted(entry for entry in found if entry.name)


def move(source, destination):
  """Moves one file to `destination` (in the same filesystem), replacing it.

  Locally a rename (atomic within one filesystem). GCS has no rename: the
  object is copied with single-object rewrite requests (which also copy
  objects too large for one request), then the source is deleted.

  Raises:
    FileNotFoundError: if `source` does not exist.
  """
  source, destination = normalize(source), normalize(destination)
  if is_gcs(source) != is_gcs(destination):
    raise ValueError(f'Cannot move {source} to another filesystem '
                     f'({destination}).')
  if not is_gcs(source):
    os.replace(source, destination)
    return
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  source_blob, destination_blob = _blob(source), _blob(destination)
  try:
    token, _, _ = destination_blob.rewrite(source_blob)
    while token is not None:
      token, _, _ = destination_blob.rewrite(source_blob, token=token)
  except exceptions.NotFound as e:
    raise _not_found(source) from e
  source_blob.delete()


def remove_folder_if_empty(directory):
  """Removes an empty local folder (GCS has no folders: nothing to do)."""
  directory = normalize(directory)
  if not is_gcs(directory):
    with contextlib.suppress(OSError):  # Missing, or not empty.
      os.rmdir(directory)
