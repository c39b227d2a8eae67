"""In-process interruptions of train.run, standing for a kill -9.

An exception raised by a callback leaves the checkpoint folder exactly as a
kill -9 at that point would (nothing after it is written); a fresh context
and model then resume from the files alone, as a new process would. Much
cheaper than a subprocess per attempt (tests/test_resume.py kills real
processes).
"""

import contextlib

import keras

from trainer import callbacks
from trainer import config as config_lib
from trainer import run_context
from trainer import train


class Killed(Exception):
  """Stands for a kill -9: nothing after the raise point is written."""


class KillDuring(keras.callbacks.Callback):
  """Raises Killed at the second training batch of `epoch` (1-based)."""

  def __init__(self, epoch):
    super().__init__()
    self._kill_epoch = epoch
    self._epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch + 1

  def on_train_batch_begin(self, batch, logs=None):
    if self._epoch == self._kill_epoch and batch == 1:
      raise Killed(f'during epoch {self._epoch}')


@contextlib.contextmanager
def extra_callbacks(*extra):
  """Puts `extra` callbacks first in every fit of train.run, for a while."""
  for_phase = callbacks.for_phase

  def with_extras(*args, **kwargs):
    found = for_phase(*args, **kwargs)
    found.all[:0] = list(extra)
    return found

  callbacks.for_phase = with_extras
  try:
    yield
  finally:
    callbacks.for_phase = for_phase


def attempt(overrides, strategy, *extra):
  """One attempt of a run (a new context and model), with extra callbacks.

  Returns:
    train.run's metrics; raises Killed where a KillDuring says.
  """
  config = config_lib.build(overrides=overrides)
  with extra_callbacks(*extra):
    return train.run(run_context.create(config, strategy))
