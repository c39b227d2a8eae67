"""Which task of a training cluster this process is, from the environment.

Parses TF_CONFIG (or, where it is absent, Vertex AI's CLUSTER_SPEC) without
importing TensorFlow, so a malformed value fails at once, before any work.

Both are normalised to the task types TensorFlow's MultiWorkerMirroredStrategy
accepts, `chief` and `worker`:

  TF_CONFIG     `chief` and `worker` as they are; `master` (AI Platform and
                Vertex AI's legacy name for the primary replica) is `chief`.
  CLUSTER_SPEC  Vertex AI's worker pools: `workerpool0` (the primary
                replica) is `chief`, `workerpool1` is `worker`.

Parameter servers, reduction servers (`ps`, `workerpool2`) and evaluators
(`evaluator`, `workerpool3`) take no part in all-reduce training: they are
left out of the cluster, and this trainer refuses to run as one of them.
"""

import dataclasses
import json

from trainer import errors

CHIEF_TASK_TYPES = ('chief', 'master')
# Vertex AI's CLUSTER_SPEC names worker pools, in workerPoolSpecs order.
_WORKER_POOL_TYPES = {
    'workerpool0': 'chief',
    'workerpool1': 'worker',
    'workerpool2': 'ps',
    'workerpool3': 'evaluator',
}
_TF_CONFIG_TYPES = {'chief': 'chief', 'master': 'chief', 'worker': 'worker',
                    'ps': 'ps', 'evaluator': 'evaluator'}
_TRAINING_TYPES = ('chief', 'worker')


class ClusterError(errors.UserError, ValueError):
  """The cluster description in the environment is malformed."""

  kind = 'bad_cluster'


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """Which task of a cluster this process is.

  `task_type` is normalised (`chief` or `worker`); `given_type` is the name
  the environment used (`master`, `workerpool1`, ...), for messages.
  """
  task_type: str = 'chief'
  task_index: int = 0
  num_tasks: int = 1
  cluster_has_chief: bool = True
  given_type: str = ''

  @property
  def is_chief(self):
    """The chief writes exports, logs and metrics; others write nothing.

    Vertex AI's legacy `master` counts as chief. A cluster without a chief
    or master task makes worker 0 the chief, as TensorFlow does.
    """
    if self.task_type in CHIEF_TASK_TYPES:
      return True
    return self.task_type == 'worker' and self.task_index == 0 and (
        not self.cluster_has_chief)

  @property
  def name(self):
    """`chief/0`, `worker/1`, ...: how logs and temporary folders name it."""
    return f'{self.task_type}/{self.task_index}'


def parse_cluster(tf_config_json=None, cluster_spec_json=None):
  """Parses TF_CONFIG (or Vertex AI's CLUSTER_SPEC) into (cluster, TaskInfo).

  Args:
    tf_config_json: the TF_CONFIG environment value, or None.
    cluster_spec_json: the CLUSTER_SPEC environment value, used when
      TF_CONFIG is absent.

  Returns:
    (cluster, TaskInfo). cluster maps `chief` and `worker` to lists of
    "host:port" addresses, ready for TensorFlow; it is None when the
    environment names no cluster (a single machine).

  Raises:
    ClusterError: naming the variable and what is wrong with it.
  """
  if tf_config_json and tf_config_json.strip():
    source, text, types = 'TF_CONFIG', tf_config_json, _TF_CONFIG_TYPES
  else:
    source, text, types = 'CLUSTER_SPEC', cluster_spec_json, _WORKER_POOL_TYPES
  if not text or not text.strip():
    return None, TaskInfo()
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise ClusterError(f'{source} is not valid JSON: {e}') from e
  if not isinstance(value, dict):
    raise ClusterError(f'{source} must be a JSON object.')
  if not value.get('cluster') and not value.get('task'):
    return None, TaskInfo()  # `{}`: TensorFlow's own reading of "no cluster".
  cluster = _read_cluster(source, value.get('cluster'), types)
  task_type, task_index = _read_task(source, value.get('task'), cluster, types)
  training = {t: cluster[t] for t in _TRAINING_TYPES if t in cluster}
  info = TaskInfo(task_type, task_index,
                  num_tasks=sum(len(a) for a in training.values()),
                  cluster_has_chief='chief' in training,
                  given_type=value['task']['type'])
  return training, info


def _read_cluster(source, cluster, types):
  """Checks the cluster mapping and renames its task types."""
  if not isinstance(cluster, dict) or not cluster:
    raise ClusterError(f'{source} has no "cluster" mapping of task types to '
                       'address lists.')
  renamed = {}
  for given, addresses in cluster.items():
    if given not in types:
      raise ClusterError(f'{source}: unknown task type {given!r} in cluster; '
                         f'expected {", ".join(types)}.')
    if not isinstance(addresses, list) or not addresses or not all(
        isinstance(a, str) and a for a in addresses):
      raise ClusterError(f'{source}: cluster.{given} must be a non-empty list '
                         'of "host:port" strings.')
    if types[given] in renamed:
      raise ClusterError(f'{source}: cluster names both chief and master; '
                         'give one primary task.')
    renamed[types[given]] = list(addresses)
  if len(renamed.get('chief', [])) > 1:
    raise ClusterError(f'{source}: a cluster has at most one chief/master '
                       f'task, got {len(renamed["chief"])}.')
  return renamed


def _read_task(source, task, cluster, types):
  """Checks the task entry; returns its normalised (type, index)."""
  if not isinstance(task, dict) or 'type' not in task:
    raise ClusterError(f'{source} has no "task" with a "type" and "index".')
  given = task['type']
  index = task.get('index', 0)
  if types.get(given) in ('ps', 'evaluator'):
    raise ClusterError(
        f'{source}: this process is task {given!r} ({types[given]}); the '
        'trainer runs only as chief/master or worker (all-reduce training '
        'has no parameter servers or evaluators).')
  if given not in types or types[given] not in cluster:
    raise ClusterError(f'{source}: task type {given!r} is not in the '
                       f'cluster.')
  count = len(cluster[types[given]])
  if not isinstance(index, int) or isinstance(index, bool) or not (
      0 <= index < count):
    raise ClusterError(f'{source}: task index {index!r} is out of range for '
                       f'{given} ({count} tasks).')
  return types[given], index
