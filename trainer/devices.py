"""GPUs as both commands prepare them: memory growth, and what was found.

TensorFlow's default is to reserve nearly all of every GPU's memory at the
first GPU operation. Dataflow runs several SDK processes on one worker VM,
each of which would try to take the whole GPU (Dataflow's GPU guide says to
enable memory growth, or to share one model per GPU); a trainer on a shared
machine does the same. So both commands turn on memory growth for every
physical GPU before TensorFlow initialises them (the trainer unless
`--gpu_memory_growth=false`), and log the devices they found.

The device list and the setter are arguments, so tests check what a GPU
machine would be configured with on this CPU-only one. TensorFlow is
imported inside the functions: the scorer's launcher reads its flags
without it.
"""

import logging

_LOGGER = logging.getLogger(__name__)


def list_gpus():
  """The physical GPUs TensorFlow sees (listing does not initialise them)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.config.list_physical_devices('GPU')


def enable_memory_growth(gpus=None, set_memory_growth=None):
  """Turns on memory growth for each GPU; call before any GPU is used.

  Args:
    gpus: physical devices (default: `list_gpus()`).
    set_memory_growth: (device, bool) -> None (default: TensorFlow's
      `tf.config.experimental.set_memory_growth`).

  Returns:
    The names of the GPUs whose memory now grows. A GPU TensorFlow already
    initialised (this process used it before) keeps its setting, with a
    warning: TensorFlow cannot change it any more.
  """
  gpus = list_gpus() if gpus is None else gpus
  if set_memory_growth is None:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    set_memory_growth = tf.config.experimental.set_memory_growth
  grown = []
  for gpu in gpus:
    try:
      set_memory_growth(gpu, True)
    except RuntimeError as e:  # "Physical devices cannot be modified..."
      _LOGGER.warning('Memory growth stays as it was on %s: %s', gpu.name, e)
      continue
    grown.append(gpu.name)
  return grown


def describe(gpus, grown):
  """One line for the log: the GPUs found and whether their memory grows."""
  if not gpus:
    return 'No GPU found: running on the CPU.'
  names = ', '.join(gpu.name for gpu in gpus)
  if not grown:
    growth = 'memory growth off (TensorFlow reserves their memory)'
  elif len(grown) == len(gpus):
    growth = 'memory growth on'
  else:
    growth = f'memory growth on {len(grown)} of them'
  return f'Found {len(gpus)} GPU(s): {names}; {growth}.'
