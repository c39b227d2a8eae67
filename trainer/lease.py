"""One writer at a time: a lease on a job dir or a scoring output prefix.

A second trainer on a job dir a live run holds, or a second scorer writing
the same `--output`, would overwrite the first one's backup, export or
outputs with files of its own. So each takes a lease first, before any work,
and is refused while another live process holds it:

* Locally the lease is a small file that the holder keeps locked with
  `fcntl.flock`. The kernel drops the lock when the holder exits in any way
  (`kill -9` included), so a lease is never left stale on local disk.
* On gs:// it is an object created with the precondition "does not exist
  yet" (`if_generation_match=0`): of two processes racing, exactly one
  wins. The holder rewrites it every `heartbeat_secs` with the precondition
  "still my generation". A lease whose heartbeat is older than
  `stale_after_secs`, held by a process on this host that is no longer
  alive, or written by an earlier attempt of the same Vertex AI job
  (`CLOUD_ML_JOB_ID`), is taken over; any other is refused unless the user
  breaks it (`break_lease`).

The lease's body says who holds it: host, pid, what for, when it was taken
and its last heartbeat, so the refusal can say whom to wait for. A holder
whose lease was broken or taken over learns it at its next heartbeat
(`lost`), and `check` raises before it publishes anything.

Written here rather than taken from a library: neither google-cloud-storage
nor Beam has a lease, and `fcntl` locks are the one local mechanism that a
killed process cannot leave behind.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid

from absl import logging

from trainer import errors
from trainer import storage

DEFAULT_HEARTBEAT_SECS = 30.0
DEFAULT_STALE_AFTER_SECS = 180.0


class LeaseError(errors.UserError, RuntimeError):
  """Another live process holds the lease, or this process lost it."""

  kind = 'lease_held'


def _now():
  return time.time()


def _iso(seconds):
  return datetime.datetime.fromtimestamp(
      seconds, datetime.timezone.utc).isoformat(timespec='seconds')


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Someone else's process: alive.
  return True


def describe_holder(record):
  """A short phrase naming the holder of a lease record."""
  if not isinstance(record, dict):
    return 'an unknown process'
  beat = record.get('heartbeat')
  age = f', last heartbeat {max(0, _now() - beat):.0f} s ago' if isinstance(
      beat, (int, float)) else ''
  return (f'pid {record.get("pid")} on host {record.get("host")} '
          f'({record.get("purpose", "a run")}, since '
          f'{record.get("acquired_at", "?")}{age})')


class Lease:
  """An exclusive lease on `path` (local or gs://), held until `release`.

  Use as a context manager, or call `acquire` and `release`.
  """

  def __init__(self, path, purpose, *, break_flag='--break_lease',
               heartbeat_secs=DEFAULT_HEARTBEAT_SECS,
               stale_after_secs=DEFAULT_STALE_AFTER_SECS, environ=None):
    """Describes the lease; nothing is taken until `acquire`.

    Args:
      path: the lease file (local or gs://, normalized or not).
      purpose: what the holder does, for messages ('training', 'scoring').
      break_flag: the flag that breaks a stale lease, named in refusals.
      heartbeat_secs: how often a gs:// holder renews its lease.
      stale_after_secs: a gs:// lease not renewed for this long is stale.
      environ: the environment to read CLOUD_ML_JOB_ID from (default
        os.environ; read once, here).
    """
    self.path = storage.normalize(path)
    self._purpose = purpose
    self._break_flag = break_flag
    self._heartbeat_secs = heartbeat_secs
    self._stale_after_secs = stale_after_secs
    environ = os.environ if environ is None else environ
    self._job_id = environ.get('CLOUD_ML_JOB_ID') or None
    self._token = uuid.uuid4().hex
    self._acquired_at = None
    self._fd = None
    self._generation = None
    self._stop = threading.Event()
    self._thread = None
    self._lock = threading.Lock()
    self.lost = False

  # ------------------------------------------------------------------------
  # The record.

  def _record(self):
    return {'host': socket.gethostname(), 'pid': os.getpid(),
            'purpose': self._purpose, 'token': self._token,
            'job_id': self._job_id, 'acquired_at': self._acquired_at,
            'heartbeat': round(_now(), 3)}

  def _refusal(self, record):
    return LeaseError(
        f'{storage.dirname(self.path)} is in use: {describe_holder(record)} '
        f'holds {self.path}. Wait for it to finish, use another folder, or, '
        f'if that process is gone, pass {self._break_flag} to take the lease '
        'over.')

  # ------------------------------------------------------------------------
  # Acquiring and releasing.

  def acquire(self, break_lease=False):
    """Takes the lease, or raises LeaseError naming its holder.

    Args:
      break_lease: take the lease over from a holder that looks alive (the
        user says it is gone). A local lease whose holder is alive cannot be
        broken: the kernel says it is alive.

    Returns:
      self.

    Raises:
      LeaseError: if another live process holds it.
      storage.StorageError, OSError: if the lease cannot be written.
    """
    self._acquired_at = _iso(_now())
    if storage.is_gcs(self.path):
      self._acquire_gcs(break_lease)
      self._thread = threading.Thread(target=self._heartbeat_loop,
                                      name='lease-heartbeat', daemon=True)
      self._thread.start()
    else:
      self._acquire_local()
    return self

  def _acquire_local(self):
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise
        raise self._refusal(self._read_local()) from None
      # The holder before us may have unlinked the file between our open and
      # our lock: then we locked a file nobody else can see; start again.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    self._fd = fd
    body = json.dumps(self._record(), sort_keys=True).encode('utf-8')
    os.ftruncate(fd, 0)
    os.pwrite(fd, body + b'\n', 0)

  def _read_local(self):
    try:
      with open(self.path, 'rb') as f:
        return json.loads(f.read().decode('utf-8') or 'null')
    except (OSError, ValueError):
      return None

  def _acquire_gcs(self, break_lease):
    from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
    body = self._body()
    try:
      self._generation = storage.create_exclusive(self.path, body)
      return
    except exceptions.PreconditionFailed:
      pass
    found = storage.read_with_generation(self.path)
    if found is None:  # Released in between: try once more.
      try:
        self._generation = storage.create_exclusive(self.path, body)
        return
      except exceptions.PreconditionFailed:
        found = storage.read_with_generation(self.path)
        if found is None:
          raise self._refusal(None) from None
    data, generation = found
    try:
      record = json.loads(data.decode('utf-8'))
    except ValueError:
      record = None
    reason = self._takeover_reason(record, break_lease)
    if reason is None:
      raise self._refusal(record)
    try:
      self._generation = storage.replace_if_generation(self.path, body,
                                                       generation)
    except exceptions.PreconditionFailed:
      # Someone else took it over first.
      raise self._refusal(None) from None
    logging.warning('Took over the lease %s from %s: %s.', self.path,
                    describe_holder(record), reason)

  def _takeover_reason(self, record, break_lease):
    """Why a gs:// lease held by `record` may be taken over, or None."""
    if break_lease:
      return f'{self._break_flag} was given'
    if not isinstance(record, dict):
      return 'its record is unreadable'
    beat = record.get('heartbeat')
    if not isinstance(beat, (int, float)) or (
        _now() - beat > self._stale_after_secs):
      return f'no heartbeat for more than {self._stale_after_secs:.0f} s'
    if record.get('host') == socket.gethostname() and isinstance(
        record.get('pid'), int) and not _pid_alive(record['pid']):
      return f'its process {record["pid"]} on this host has exited'
    if self._job_id and record.get('job_id') == self._job_id:
      return f'it was written by an earlier attempt of job {self._job_id}'
    return None

  def _body(self):
    return json.dumps(self._record(), sort_keys=True).encode('utf-8')

  def _heartbeat_loop(self):
    while not self._stop.wait(self._heartbeat_secs):
      self.renew()

  def renew(self):
    """Renews a gs:// lease now (the heartbeat thread calls this)."""
    from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
    with self._lock:
      if self.lost or self._generation is None:
        return
      try:
        self._generation = storage.replace_if_generation(
            self.path, self._body(), self._generation)
      except exceptions.PreconditionFailed:
        self.lost = True
        logging.error('Lost the lease %s: another process took it over. '
                      'This run will not publish its outputs.', self.path)
      except Exception as e:  # pylint: disable=broad-except
        # A passing network error: the next heartbeat tries again.
        logging.warning('Could not renew the lease %s: %s', self.path, e)

  def check(self):
    """Raises LeaseError if the lease was taken over by another process."""
    if self.lost:
      raise LeaseError(
          f'Lost the lease {self.path} to another process (it was broken or '
          'taken over): not publishing this run\'s outputs. Make sure only '
          'one run uses this folder, then rerun.')

  def release(self):
    """Gives the lease up; safe to call twice."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._fd is not None:
      # Unlink while still holding the lock, so a waiting process that
      # opened the old file sees that it is gone (see _acquire_local).
      with contextlib.suppress(FileNotFoundError):
        os.unlink(self.path)
      os.close(self._fd)
      self._fd = None
    if self._generation is not None:
      with self._lock:
        if not self.lost:
          storage.delete_if_generation(self.path, self._generation)
        self._generation = None

  @property
  def held(self):
    return self._fd is not None or self._generation is not None

  def __enter__(self):
    return self if self.held else self.acquire()

  def __exit__(self, *unused):
    self.release()
