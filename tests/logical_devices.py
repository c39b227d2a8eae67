r"""Runs `trainer.task` on a CPU split into N logical devices (tests only).

  python -m tests.logical_devices 2 --job_dir=/tmp/run --strategy=mirrored

This machine has no GPUs, so MirroredStrategy is exercised over logical CPU
devices. They must be configured before TensorFlow initialises its devices,
that is, in a fresh process before the trainer runs: hence this wrapper
rather than a flag of the trainer. It then runs the trainer's own main with
the remaining arguments; `--strategy=mirrored` spreads over all the logical
devices (the trainer's `mirrored` uses every logical CPU device when there
is no GPU).
"""

import sys


def configure_logical_cpus(count):
  """Splits the first physical CPU into `count` logical devices."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def main():
  if len(sys.argv) < 2 or not sys.argv[1].isdigit():
    sys.exit('usage: python -m tests.logical_devices N [trainer flags]')
  configure_logical_cpus(int(sys.argv[1]))
  from absl import app  # pylint: disable=g-import-not-at-top
  from trainer import task  # pylint: disable=g-import-not-at-top
  app.run(task.main, argv=[sys.argv[0]] + sys.argv[2:])


if __name__ == '__main__':
  main()
