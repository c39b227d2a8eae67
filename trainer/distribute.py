"""tf.distribute for the trainer: the strategy, its input, and Keras fixes.

One string chooses the strategy (`--strategy`):
  auto          multi_worker when the cluster (TF_CONFIG, or Vertex AI's
                CLUSTER_SPEC) has two or more tasks; mirrored when this
                machine has two or more GPUs; default otherwise.
  default       one device.
  mirrored      MirroredStrategy over all local GPUs (over the logical CPU
                devices on a machine without GPUs: tests use two).
  multi_worker  MultiWorkerMirroredStrategy over the cluster's chief and
                workers, each with all its local GPUs.

The batch size the user gives is the global batch: each training step
consumes that many examples in total, split evenly over the replicas. The
learning rate applies to that global batch; it is not scaled with the number
of replicas (README: "Training on several GPUs or machines").

The caller (task.py) reads the environment and passes the parsed cluster in,
and creates the strategy before any other TensorFlow call: collective ops
must be configured at program start (keras-team/keras#20585). That is also
where GPU memory growth is turned on (`--gpu_memory_growth`, default on:
`trainer.devices` says why) and the GPUs found are logged, before
TensorFlow initialises them.

Keras 3.15's TensorFlow trainer does not run MultiWorkerMirroredStrategy as
shipped (keras-team/keras#20585, tensorflow/tensorflow#72388): see
`prepare_model`, which works around the two failures.
"""

import contextlib
import warnings

from absl import logging
import tensorflow as tf

from trainer import cluster as cluster_lib
from trainer import config as config_lib
from trainer import devices
from trainer import registry


def resolve_strategy_name(requested, num_tasks, num_gpus):
  """Turns `auto` into a concrete strategy name and checks the choice.

  Args:
    requested: one of registry.STRATEGIES.
    num_tasks: training tasks (chief and workers) in the cluster; 1 when
      there is no cluster.
    num_gpus: physical GPUs on this machine.

  Returns:
    'default', 'mirrored' or 'multi_worker'.

  Raises:
    config.ConfigError: for an unknown name, or a single-machine strategy
      asked for in a cluster of several tasks (each task would train its own
      model).
  """
  if requested not in registry.STRATEGIES:
    raise config_lib.ConfigError(f'Unknown strategy: {requested!r}; choose '
                                 f'one of {registry.STRATEGIES}.')
  if requested == 'auto':
    if num_tasks > 1:
      return 'multi_worker'
    return 'mirrored' if num_gpus >= 2 else 'default'
  if requested in ('default', 'mirrored') and num_tasks > 1:
    raise config_lib.ConfigError(
        f'strategy: {requested} trains on one machine, but the cluster in '
        f'TF_CONFIG/CLUSTER_SPEC has {num_tasks} tasks, which would each '
        'train a model of their own. Use --strategy=multi_worker (or auto).')
  return requested


def prepare_gpus(memory_growth=True, gpus=None, set_memory_growth=None):
  """Turns on memory growth (unless told not to) and logs the GPUs found.

  Args:
    memory_growth: `--gpu_memory_growth`.
    gpus: the physical GPUs (default: TensorFlow's; tests pass their own).
    set_memory_growth: see `devices.enable_memory_growth`.

  Returns:
    How many GPUs there are.
  """
  # Listing physical devices does not initialise the runtime, so it is safe
  # before MultiWorkerMirroredStrategy configures collective ops.
  gpus = devices.list_gpus() if gpus is None else list(gpus)
  grown = (devices.enable_memory_growth(gpus, set_memory_growth)
           if memory_growth else [])
  logging.info('%s', devices.describe(gpus, grown))
  return len(gpus)


def create_strategy(requested='auto', cluster=None,
                    task=cluster_lib.TaskInfo(), memory_growth=True):
  """Creates the strategy; call before any other TensorFlow operation.

  Args:
    requested: one of registry.STRATEGIES.
    cluster: the normalised cluster from `cluster.parse_cluster`, or None.
    task: this process's TaskInfo from `cluster.parse_cluster`.
    memory_growth: turn on GPU memory growth (`--gpu_memory_growth`).

  Returns:
    A tf.distribute.Strategy.

  Raises:
    config.ConfigError: see `resolve_strategy_name`.
  """
  num_gpus = prepare_gpus(memory_growth)
  num_tasks = task.num_tasks if cluster else 1
  name = resolve_strategy_name(requested, num_tasks, num_gpus)
  if name == 'multi_worker':
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=_cluster_resolver(cluster, task, num_gpus))
  elif name == 'mirrored':
    strategy = tf.distribute.MirroredStrategy(_local_devices())
  else:
    strategy = tf.distribute.get_strategy()
  devices = (', '.join(strategy.extended.worker_devices)
             if name != 'default' else 'the default device')
  logging.info(
      'Strategy: %s (--strategy=%s), %d replica(s) in sync; task %s of %d; '
      'local devices: %s.', _PUBLIC_NAMES[name], requested,
      strategy.num_replicas_in_sync, task.name, num_tasks, devices)
  return strategy


# How the strategies are known in TensorFlow's API (their classes' names
# are private, or not the API's).
_PUBLIC_NAMES = {
    'default': 'tf.distribute.get_strategy(), the default',
    'mirrored': 'tf.distribute.MirroredStrategy',
    'multi_worker': 'tf.distribute.MultiWorkerMirroredStrategy',
}


def _local_devices():
  """All local GPUs, or else every logical CPU device."""
  gpus = tf.config.list_logical_devices('GPU')
  return [device.name for device in gpus or tf.config.list_logical_devices(
      'CPU')]


def _cluster_resolver(cluster, task, num_gpus):
  """A resolver for the normalised cluster (TF_CONFIG's own may say master).

  TensorFlow's TFConfigClusterResolver reads TF_CONFIG itself, which may name
  a `master` task (refused by TensorFlow) or be absent on Vertex AI custom
  containers that set only CLUSTER_SPEC; hence an explicit resolver.
  """
  if not cluster:
    return None  # MultiWorkerMirroredStrategy on its own: one worker.
  return tf.distribute.cluster_resolver.SimpleClusterResolver(
      tf.train.ClusterSpec(cluster), task_type=task.task_type,
      task_id=task.task_index, rpc_layer='grpc',
      num_accelerators={'GPU': num_gpus} if num_gpus else None)


def is_multi_worker(strategy):
  """Whether `strategy` spans several processes (MultiWorkerMirrored).

  A private TensorFlow call (checked against TF 2.21): a one-worker
  MultiWorkerMirroredStrategy (no cluster) runs like a local one, and
  nothing public tells the two apart.
  """
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
      strategy.extended._in_multi_worker_mode())  # pylint: disable=protected-access


# --------------------------------------------------------------------------
# Input.


def distribute_dataset(strategy, make_dataset, global_batch_size):
  """The input of one split, in the form `model.fit` needs under `strategy`.

  On one machine the dataset is batched with the global batch size and Keras
  splits every batch over the local replicas. Across machines every worker
  builds only its own shard of the examples, before anything is read or
  decoded (`make_dataset(batch_size, shard)` must honour `shard`), batched
  with the per-replica batch size; TensorFlow's automatic sharding would
  otherwise make every worker read and decode every image file and throw
  most away.

  Workers may hold one example more than others, so their last batches may
  differ in number. The pipeline's cardinality is hidden from Keras: it would
  otherwise count each worker's batches on its own and the workers would run
  different numbers of steps (a collective-op mismatch). Instead TensorFlow's
  partial-batch handling agrees on the end of the data across workers (one
  small all-reduce per step) and gives workers that ran out an empty batch.
  Repeated (infinite) input needs none of this: steps_per_epoch ends epochs.

  Args:
    strategy: the tf.distribute.Strategy.
    make_dataset: function (batch_size, shard) -> tf.data.Dataset, where
      shard is None or (number of shards, this shard's index).
    global_batch_size: examples per training step over all replicas.

  Returns:
    A tf.data.Dataset or a tf.distribute.DistributedDataset.

  Raises:
    config.ConfigError: if the global batch does not split evenly over the
      replicas of a multi-worker job.
  """
  if not is_multi_worker(strategy):
    return make_dataset(global_batch_size, None)
  replicas = strategy.num_replicas_in_sync
  if global_batch_size % replicas:
    raise config_lib.ConfigError(
        f'batch_size: {global_batch_size} does not split evenly over '
        f'{replicas} replicas; use a multiple of {replicas}.')

  def worker_dataset(input_context):
    dataset = make_dataset(
        input_context.get_per_replica_batch_size(global_batch_size),
        (input_context.num_input_pipelines, input_context.input_pipeline_id))
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
      return dataset  # Repeated: steps_per_epoch ends epochs, no check needed.
    return dataset.filter(lambda *unused: True)  # Unknown cardinality.

  return strategy.distribute_datasets_from_function(worker_dataset)


@contextlib.contextmanager
def unknown_length_input():
  """Silences the warning Keras gives when input of unknown length ends.

  With the cardinality hidden (see `distribute_dataset`), Keras learns the
  number of steps from the first pass and warns that the input "ran out of
  data" although nothing is wrong. Wrap `fit` and `evaluate` in this.
  """
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='Your input ran out of data')
    yield


def wait_for_all_workers(strategy):
  """A barrier: returns once every worker of a multi-worker job calls it.

  The chief hosts the cluster's coordination service; a worker still
  shutting down when the chief has exited logs heartbeat failures. Called
  by every worker at the end of a run, it lets all of them exit together.
  """
  if is_multi_worker(strategy):
    strategy.reduce('SUM', strategy.run(lambda: tf.constant(1.0)), axis=None)


# --------------------------------------------------------------------------
# Keras 3 with MultiWorkerMirroredStrategy.


def prepare_model(model, strategy):
  """Works around Keras 3.15's MultiWorkerMirroredStrategy failures.

  Two bugs stop `model.fit` under MultiWorkerMirroredStrategy as shipped
  (keras-team/keras#20585; tensorflow/tensorflow#72388), both in
  keras/src/backend/tensorflow/trainer.py:

  1. `_maybe_symbolic_build` takes the first batch, a tuple of PerReplica
     values, and calls `strategy.reduce('MEAN', batch, axis=None)`, which
     accepts no tuples under this strategy ("Attempt to convert a value
     (PerReplica...) to a Tensor"). It only needs the batch's shapes, so the
     replacement takes this worker's first local replica's values.
  2. `reduce_per_replica` reduces each step's logs across workers with
     `strategy.reduce('MEAN', value, axis=0)`, which fails on the scalar
     loss and metrics ("Invalid reduction dimension 0 for input with 0
     dimensions"). The wrapped train and test steps return them as vectors
     of one element, which that reduction averages over all replicas.

  Epoch-level logs are unaffected: Keras reads them from the metric
  variables, which are summed over all replicas of all workers.

  Args:
    model: a compiled Keras model, built under `strategy.scope()`.
    strategy: the tf.distribute.Strategy; other strategies are left alone.

  Returns:
    `model`, changed in place.
  """
  if not is_multi_worker(strategy):
    return model
  # Private Keras methods, checked against Keras 3.15 (setup.py pins the
  # minor version): their absence is refused below rather than guessed at.
  for name in ('_maybe_symbolic_build', '_symbolic_build', 'train_step',
               'test_step'):
    if not hasattr(model, name):
      raise RuntimeError(
          f'This Keras ({__import__("keras").__version__}) has no '
          f'Model.{name}: the multi-worker workarounds in '
          'trainer/distribute.py need updating.')

  def symbolic_build(iterator=None, data_batch=None):
    if iterator is not None:
      for _, _, batches in iterator:
        data_batch = tf.nest.map_structure(
            lambda value: strategy.experimental_local_results(value)[0],
            next(batches))
        break
    with strategy.scope():
      model._symbolic_build(data_batch=data_batch)  # pylint: disable=protected-access

  model._maybe_symbolic_build = symbolic_build  # pylint: disable=protected-access
  model.train_step = _logs_as_vectors(model.train_step)
  model.test_step = _logs_as_vectors(model.test_step)
  return model


def _logs_as_vectors(step):
  def step_with_vector_logs(data):
    return tf.nest.map_structure(lambda value: tf.reshape(value, [1]),
                                 step(data))
  return step_with_vector_logs
