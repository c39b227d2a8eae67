"""Running out of space for real: a small tmpfs, or a file size limit.

`small_disk(path, megabytes)` mounts a tmpfs of that size (root in a
container that allows mounts, as here and in CI's container); elsewhere the
test is skipped. `file_size_limit(bytes)` is a preexec_fn for subprocesses
that makes every write beyond that size fail with EFBIG (RLIMIT_FSIZE, with
SIGXFSZ ignored so the write fails instead of killing the process): it
works without privileges.
"""

import contextlib
import os
import resource
import signal
import subprocess

import pytest


@contextlib.contextmanager
def _tmpfs(path, mount_options):
  """Mounts a tmpfs with `mount_options` at `path` for the duration (or
  skips the test where mounting is not allowed)."""
  os.makedirs(path, exist_ok=True)
  mounted = subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', mount_options, 'tmpfs', path],
      capture_output=True, text=True, check=False)
  if mounted.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.strip()}')
  try:
    yield path
  finally:
    subprocess.run(['umount', '-l', path], check=False)


def small_disk(path, megabytes):
  """Mounts a tmpfs of `megabytes` at `path` for the duration (or skips)."""
  return _tmpfs(path, f'size={megabytes}m')


def file_size_limit(limit_bytes):
  """A preexec_fn: files written by the child cannot grow past the limit."""

  def limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Kept across exec.
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

  return limit


def read_only_folder(path):
  """An empty read-only tmpfs at `path` (or skips): even root cannot write."""
  return _tmpfs(path, 'ro,size=1m')
