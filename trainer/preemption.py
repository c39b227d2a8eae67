"""Stopping a run cleanly when its machine is about to go away.

Vertex AI, Kubernetes and Compute Engine spot VMs send SIGTERM and allow a
grace period before SIGKILL. Dying at once could cut a checkpoint write or a
gs:// push in half; carrying on wastes the grace period. So the handler only
records the signal, and training stops at the next safe point (the start of
the next batch, or the end of an epoch's backup and push), with an exception
that task.py turns into the conventional exit status (128 + the signal). The
run then has the backup of its last finished epoch in place, and rerunning
the same command resumes there. Ctrl-C (SIGINT) is handled the same way; a
second signal exits at once (the backup on disk is still consistent: see
checkpoints.py).

This module does not import TensorFlow: task.py installs the handlers before
TensorFlow starts. The Keras callback that checks for the signal is
callbacks.StopAtSafePoint.
"""

import os
import signal

from absl import logging

EXIT_STATUS = {'SIGTERM': 128 + signal.SIGTERM, 'SIGINT': 128 + signal.SIGINT}


class Preempted(Exception):
  """Training stopped at a safe point because the process was signalled."""

  def __init__(self, signal_name):
    super().__init__(f'Stopped on {signal_name}.')
    self.signal_name = signal_name

  @property
  def exit_status(self):
    return EXIT_STATUS.get(self.signal_name, 1)


class StopSignal:
  """Records SIGTERM / SIGINT so that training can stop at a safe point.

  Only the binary installs the handlers (process-wide state); library code
  receives the object and calls `check()` where stopping is safe.
  """

  def __init__(self):
    self.received = None

  def install(self, signals=(signal.SIGTERM, signal.SIGINT)):
    """Installs the handler; call from the main thread."""
    for signum in signals:
      signal.signal(signum, self._handle)

  def _handle(self, signum, unused_frame):
    name = signal.Signals(signum).name
    if self.received:
      logging.warning('Second signal (%s): exiting at once.', name)
      os._exit(EXIT_STATUS.get(name, 1))  # pylint: disable=protected-access
    self.received = name
    logging.warning('Received %s: stopping at the next safe point. The '
                    'backup of the last finished epoch is kept; rerun the '
                    'same command to resume from it.', name)

  def check(self):
    """Raises Preempted if a signal came in."""
    if self.received:
      raise Preempted(self.received)
