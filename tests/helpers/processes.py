"""Starting, watching and signalling trainer processes in tests."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

from tests import helpers


def free_ports(count):
  """`count` distinct loopback ports free at the time of the call."""
  with contextlib.ExitStack() as stack:
    sockets = []
    for _ in range(count):
      sock = stack.enter_context(socket.socket(socket.AF_INET,
                                               socket.SOCK_STREAM))
      sock.bind(('127.0.0.1', 0))  # Held until all are chosen: distinct.
      sockets.append(sock)
    return [sock.getsockname()[1] for sock in sockets]


def start_module(module, *args, log_path, env=None):
  """Starts `python -m module args` from the repo root, output to a file."""
  full_env = dict(os.environ, PYTHONPATH=helpers.REPO,
                  TF_CPP_MIN_LOG_LEVEL='2')
  full_env.update(env or {})
  with open(log_path, 'w') as log:
    return subprocess.Popen([sys.executable, '-m', module, *args],
                            cwd=helpers.REPO, env=full_env, stdout=log,
                            stderr=subprocess.STDOUT)


def run_modules(*commands, timeout=600):
  """Runs independent `python -m module args` commands at the same time.

  Each command is (module, args); each must have folders of its own. Their
  start-ups (importing TensorFlow, about 6 s of one core each) overlap
  instead of queueing: on two idle cores, two commands take about the time
  of one.

  Returns:
    A subprocess.CompletedProcess (text stdout and stderr) per command, in
    order; the caller checks the return codes.
  """
  env = dict(os.environ, PYTHONPATH=helpers.REPO, TF_CPP_MIN_LOG_LEVEL='2')
  with contextlib.ExitStack() as stack:
    started = []
    for module, args in commands:
      # Files, not pipes: a child never blocks on a full pipe while this
      # process waits for another one.
      out, err = (stack.enter_context(tempfile.TemporaryFile('w+'))
                  for _ in range(2))
      argv = [sys.executable, '-m', module, *args]
      started.append((argv, out, err, stack.enter_context(subprocess.Popen(
          argv, cwd=helpers.REPO, env=env, stdout=out, stderr=err,
          text=True))))
    deadline = time.monotonic() + timeout
    finished = []
    for argv, out, err, process in started:
      try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        for _, _, _, other in started:
          other.kill()
        raise
      out.seek(0)
      err.seek(0)
      finished.append(subprocess.CompletedProcess(
          argv, process.returncode, out.read(), err.read()))
    return finished


def read_log(path):
  with open(path, errors='replace') as f:
    return f.read()


def wait_until(condition, processes, what, timeout=600, logs=()):
  """Polls `condition` until true; fails if a process ends first.

  A deadline guards against a hang; it is not a timing assertion.
  """
  deadline = time.monotonic() + timeout
  while not condition():
    for process, log in zip(processes, list(logs) + [None] * len(processes)):
      if process.poll() is not None:
        tail = read_log(log)[-3000:] if log else ''
        raise AssertionError(f'process exited ({process.returncode}) before '
                             f'{what}:\n{tail}')
    if time.monotonic() > deadline:
      raise AssertionError(f'no {what} after {timeout} s')
    time.sleep(0.05)


def within(seconds, function, *args):
  """Calls `function` in a thread; fails if it has not returned in time.

  For code that would block forever if it went wrong (opening a named
  pipe, say): the test fails instead of hanging. A deadline, not a timing
  assertion.
  """
  outcome = []

  def call():
    try:
      outcome.append((function(*args), None))
    except Exception as e:  # pylint: disable=broad-except
      outcome.append((None, e))

  thread = threading.Thread(target=call, daemon=True)
  thread.start()
  thread.join(seconds)
  assert outcome, f'{function.__name__} still running after {seconds} s'
  result, error = outcome[0]
  if error is not None:
    raise error
  return result


def saved_epoch(checkpoint_dir):
  """Epochs backed up in a local checkpoint folder (0 if none yet)."""
  path = os.path.join(checkpoint_dir, 'backup', 'training_metadata.json')
  try:
    with open(path) as f:
      return json.load(f)['epoch']
  except (FileNotFoundError, ValueError):
    return 0


def tf_config(cluster, task_type, index):
  return json.dumps({'cluster': cluster,
                     'task': {'type': task_type, 'index': index}})


# Linux capability numbers (linux/capability.h) and prctl's PR_CAPBSET_DROP.
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_PR_CAPBSET_DROP = 24


def drop_file_permission_override():
  """A `preexec_fn` after which root obeys file modes as any user does.

  Tests run as root here, and root reads a mode-000 folder anyway
  (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH). Dropping both from the bounding
  set before `exec` leaves the child without them, so a mode-000 folder is
  really unreadable to it, while it still owns (and reads) everything else.
  """
  import ctypes  # pylint: disable=g-import-not-at-top
  libc = ctypes.CDLL(None, use_errno=True)
  for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
    if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
      raise OSError(ctypes.get_errno(), 'prctl(PR_CAPBSET_DROP) failed')


def mode_checking_preexec():
  """The preexec_fn for a child that file modes bind: dropping the override
  as root, nothing otherwise (mode 000 is then enough)."""
  return drop_file_permission_override if os.geteuid() == 0 else None


def can_make_unreadable_folders(tmp_path):
  """Whether a mode-000 folder is unreadable to a child started with
  `mode_checking_preexec()` (dropping capabilities may be forbidden)."""
  folder = os.path.join(tmp_path, 'probe-unreadable')
  os.makedirs(folder)
  os.chmod(folder, 0)
  try:
    probe = subprocess.run(
        [sys.executable, '-c', f'import os; os.listdir({folder!r})'],
        preexec_fn=mode_checking_preexec(), capture_output=True)
  except (OSError, subprocess.SubprocessError):
    return False
  finally:
    os.chmod(folder, 0o755)
    os.rmdir(folder)
  return probe.returncode != 0 and b'PermissionError' in probe.stderr
