"""Starting, watching and signalling trainer processes in tests."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

from tests import conftest


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
  full_env = dict(os.environ, PYTHONPATH=conftest.REPO,
                  TF_CPP_MIN_LOG_LEVEL='2')
  full_env.update(env or {})
  with open(log_path, 'w') as log:
    return subprocess.Popen([sys.executable, '-m', module, *args],
                            cwd=conftest.REPO, env=full_env, stdout=log,
                            stderr=subprocess.STDOUT)


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
