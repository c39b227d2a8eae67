"""Which task of a training cluster this process is, from the environment.

Parses TF_CONFIG (or, where it is absent, Vertex AI's CLUSTER_SPEC) without
importing TensorFlow, so a malformed value fails at once, before any work.
"""

import dataclasses
import json

CHIEF_TASK_TYPES = ('chief', 'master')


class ClusterError(ValueError):
  """The cluster description in the environment is malformed."""


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """Which task of a cluster this process is."""
  task_type: str = 'chief'
  task_index: int = 0
  num_tasks: int = 1
  cluster_has_chief: bool = True

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


def parse_cluster(tf_config_json=None, cluster_spec_json=None):
  """Parses TF_CONFIG (or Vertex AI's CLUSTER_SPEC) into (cluster, TaskInfo).

  Args:
    tf_config_json: the TF_CONFIG environment value, or None.
    cluster_spec_json: the CLUSTER_SPEC environment value, used when
      TF_CONFIG is absent.

  Returns:
    (cluster dict or None, TaskInfo). cluster is None on a single machine.

  Raises:
    ClusterError: naming the variable and what is wrong with it.
  """
  source, text = ('TF_CONFIG', tf_config_json) if tf_config_json else (
      'CLUSTER_SPEC', cluster_spec_json)
  if not text:
    return None, TaskInfo()
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise ClusterError(f'{source} is not valid JSON: {e}') from e
  if not isinstance(value, dict):
    raise ClusterError(f'{source} must be a JSON object.')
  cluster = value.get('cluster')
  task = value.get('task')
  if not isinstance(cluster, dict) or not cluster:
    raise ClusterError(f'{source} has no "cluster" mapping of task types to '
                       'address lists.')
  for task_type, addresses in cluster.items():
    if not isinstance(addresses, list) or not all(
        isinstance(a, str) for a in addresses):
      raise ClusterError(f'{source}: cluster.{task_type} must be a list of '
                         '"host:port" strings.')
  if not isinstance(task, dict) or 'type' not in task:
    raise ClusterError(f'{source} has no "task" with a "type" and "index".')
  task_type = task['type']
  task_index = task.get('index', 0)
  if task_type not in cluster:
    raise ClusterError(f'{source}: task type {task_type!r} is not in the '
                       f'cluster ({", ".join(cluster)}).')
  if not isinstance(task_index, int) or not (
      0 <= task_index < len(cluster[task_type])):
    raise ClusterError(f'{source}: task index {task_index!r} is out of range '
                       f'for {task_type} ({len(cluster[task_type])} tasks).')
  num_tasks = sum(len(a) for t, a in cluster.items()
                  if t in CHIEF_TASK_TYPES + ('worker',))
  has_chief = any(t in cluster for t in CHIEF_TASK_TYPES)
  info = TaskInfo(task_type, task_index, num_tasks, cluster_has_chief=has_chief)
  return cluster, info
