"""Choosing and creating the tf.distribute strategy, from one string.

`auto` picks what the machine has: MultiWorkerMirroredStrategy when the
cluster description (TF_CONFIG, or Vertex AI's CLUSTER_SPEC) names more than
one task, MirroredStrategy over all local GPUs when there are two or more,
and the default strategy otherwise.

The caller (task.py) reads the environment and passes the parsed cluster in;
create the strategy before any other TensorFlow call (keras-team/keras#20585).
"""

from absl import logging
import tensorflow as tf

STRATEGY_NAMES = ('auto', 'default', 'mirrored', 'multi_worker')


def resolve_strategy_name(requested, cluster, num_gpus):
  """Turns `auto` into a concrete strategy name."""
  if requested not in STRATEGY_NAMES:
    raise ValueError(f'Unknown strategy: {requested!r}; choose one of '
                     f'{STRATEGY_NAMES}.')
  if requested != 'auto':
    return requested
  if cluster is not None and sum(len(a) for a in cluster.values()) > 1:
    return 'multi_worker'
  if num_gpus >= 2:
    return 'mirrored'
  return 'default'


def create_strategy(requested='auto', cluster=None):
  """Creates the strategy; call before any other TensorFlow operation.

  Args:
    requested: one of STRATEGY_NAMES.
    cluster: the parsed cluster dict from `parse_cluster`, or None.

  Returns:
    A tf.distribute.Strategy.
  """
  if requested in ('auto', 'multi_worker') and cluster is not None:
    # Must come before anything that initialises devices.
    name = 'multi_worker' if requested == 'multi_worker' or sum(
        len(a) for a in cluster.values()) > 1 else 'default'
  else:
    num_gpus = len(tf.config.list_physical_devices('GPU'))
    name = resolve_strategy_name(requested, cluster, num_gpus)
  if name == 'multi_worker':
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  elif name == 'mirrored':
    strategy = tf.distribute.MirroredStrategy()
  else:
    strategy = tf.distribute.get_strategy()
  logging.info('Strategy: %s with %d replica(s) in sync.',
               type(strategy).__name__, strategy.num_replicas_in_sync)
  return strategy
