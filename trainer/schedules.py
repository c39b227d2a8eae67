"""Learning-rate schedules: warm-up, then constant, cosine or step decay.

`--learning_rate_schedule=constant|cosine|step` with `--warmup_epochs`:
the rate rises linearly from learning_rate / warmup_steps to learning_rate
over the warm-up, then
  constant  stays at learning_rate;
  cosine    follows half a cosine from learning_rate down to 0 at the last
            step;
  step      drops tenfold at half and again at three quarters of the steps
            after the warm-up.

The rate is a keras LearningRateSchedule of the optimizer's step counter
(optimizer.iterations), not a callback that sets it per epoch
(keras.callbacks.LearningRateScheduler): the counter is part of the
optimizer state in every backup, so a resumed run continues the curve at
the step it stopped, and under MirroredStrategy and multi-worker it counts
global steps (one step = one global batch over all replicas), so the curve
does not depend on the number of devices. Keras' own CosineDecay (with its
warmup_steps) has no step variant and warms up from 0, which makes the first
step a no-op; one class here keeps the three curves one function of the step.
"""

import math

import keras
from keras import ops

from trainer import config as config_lib
from trainer import registry

# The step schedule's drops: at these shares of the steps after the warm-up.
STEP_BOUNDARIES = (0.5, 0.75)
STEP_FACTOR = 0.1


@keras.saving.register_keras_serializable(package='trainer')
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up, then a constant, cosine or step curve, by global step."""

  def __init__(self, learning_rate, kind, total_steps, warmup_steps=0):
    """Creates the schedule.

    Args:
      learning_rate: the peak rate (after the warm-up).
      kind: one of registry.LEARNING_RATE_SCHEDULES.
      total_steps: the steps of the whole phase, warm-up included.
      warmup_steps: steps of the linear warm-up (0: none).
    """
    self.learning_rate = float(learning_rate)
    self.kind = kind
    self.total_steps = int(total_steps)
    self.warmup_steps = int(warmup_steps)

  def __call__(self, step):
    step = ops.cast(step, 'float32')
    peak = self.learning_rate
    decaying = max(1, self.total_steps - self.warmup_steps)
    progress = ops.clip((step - self.warmup_steps) / decaying, 0.0, 1.0)
    if self.kind == 'cosine':
      rate = peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
    elif self.kind == 'step':
      drops = sum(ops.cast(progress >= share, 'float32')
                  for share in STEP_BOUNDARIES)
      rate = peak * ops.power(STEP_FACTOR, drops)
    else:
      rate = peak * ops.ones_like(step)
    if not self.warmup_steps:
      return rate
    warming = peak * (step + 1.0) / self.warmup_steps
    return ops.where(step < self.warmup_steps, warming, rate)

  def get_config(self):
    return {'learning_rate': self.learning_rate, 'kind': self.kind,
            'total_steps': self.total_steps,
            'warmup_steps': self.warmup_steps}


def steps_per_epoch(config, train_size):
  """Global training steps of one epoch.

  Raises:
    config.ConfigError: if a schedule needs it and the size is unknown.
  """
  if config.steps_per_epoch:
    return config.steps_per_epoch
  if train_size is None:
    raise config_lib.ConfigError(
        f'learning_rate_schedule: {config.learning_rate_schedule} needs '
        'the number of steps per epoch, and the size of the training split '
        'is unknown; pass --steps_per_epoch.')
  return max(1, math.ceil(train_size / config.batch_size))


def make(config, learning_rate, epochs, train_size):
  """The optimizer's learning rate for a phase: a float or a WarmupDecay.

  Args:
    config: the run's Config (learning_rate_schedule, warmup_epochs,
      steps_per_epoch, batch_size).
    learning_rate: the phase's peak rate.
    epochs: the phase's epochs.
    train_size: training examples per epoch (None: unknown).
  """
  kind = config.learning_rate_schedule
  if kind == 'constant' and not config.warmup_epochs:
    return learning_rate  # Today's fixed rate, as before schedules.
  assert kind in registry.LEARNING_RATE_SCHEDULES, kind
  per_epoch = steps_per_epoch(config, train_size)
  return WarmupDecay(learning_rate, kind, total_steps=epochs * per_epoch,
                     warmup_steps=round(config.warmup_epochs * per_epoch))
