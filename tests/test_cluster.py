"""Reading the cluster from TF_CONFIG or CLUSTER_SPEC; the strategy choice."""

import json

import pytest

from trainer import cluster


def _tf_config(cluster_spec, task_type, index=0, **extra):
  return json.dumps({'cluster': cluster_spec,
                     'task': {'type': task_type, 'index': index}, **extra})


def test_no_cluster_is_a_single_machine_chief():
  for value in (None, '', '  ', '{}'):
    spec, task = cluster.parse_cluster(value, None)
    assert spec is None
    assert task.is_chief and task.num_tasks == 1


@pytest.mark.parametrize('task_type, index, is_chief', [
    ('chief', 0, True), ('worker', 0, False), ('worker', 1, False)])
def test_tf_config_with_a_chief(task_type, index, is_chief):
  spec, task = cluster.parse_cluster(_tf_config(
      {'chief': ['a:1'], 'worker': ['b:1', 'c:1']}, task_type, index,
      environment='cloud'), None)
  assert spec == {'chief': ['a:1'], 'worker': ['b:1', 'c:1']}
  assert (task.task_type, task.task_index) == (task_type, index)
  assert task.num_tasks == 3
  assert task.is_chief is is_chief


@pytest.mark.parametrize('task_type, is_chief', [('master', True),
                                                 ('worker', False)])
def test_tf_config_master_is_the_chief_under_tensorflows_name(task_type,
                                                             is_chief):
  # TensorFlow refuses a `master` task; AI Platform and Vertex AI use it.
  spec, task = cluster.parse_cluster(
      _tf_config({'master': ['a:1'], 'worker': ['b:1']}, task_type), None)
  assert spec == {'chief': ['a:1'], 'worker': ['b:1']}
  assert task.is_chief is is_chief
  assert task.given_type == task_type
  assert task.task_type == ('chief' if task_type == 'master' else 'worker')


@pytest.mark.parametrize('index, is_chief', [(0, True), (1, False)])
def test_tf_config_with_workers_only_makes_worker_0_the_chief(index,
                                                              is_chief):
  spec, task = cluster.parse_cluster(
      _tf_config({'worker': ['a:1', 'b:1']}, 'worker', index), None)
  assert spec == {'worker': ['a:1', 'b:1']}
  assert task.is_chief is is_chief and task.num_tasks == 2


def test_vertex_cluster_spec_is_read_when_tf_config_is_absent():
  value = _tf_config({'workerpool0': ['a:2222'],
                      'workerpool1': ['b:2222', 'c:2222'],
                      'workerpool2': ['reduction:2222']}, 'workerpool1', 1)
  spec, task = cluster.parse_cluster(None, value)
  # Reduction servers take no part in the all-reduce of the training tasks.
  assert spec == {'chief': ['a:2222'], 'worker': ['b:2222', 'c:2222']}
  assert (task.task_type, task.task_index, task.is_chief) == ('worker', 1,
                                                              False)
  _, primary = cluster.parse_cluster('', value.replace(
      '"type": "workerpool1", "index": 1', '"type": "workerpool0", "index": 0'))
  assert primary.is_chief


def test_tf_config_wins_over_cluster_spec():
  spec, _ = cluster.parse_cluster(
      _tf_config({'worker': ['a:1', 'b:1']}, 'worker'),
      _tf_config({'workerpool0': ['z:1']}, 'workerpool0'))
  assert spec == {'worker': ['a:1', 'b:1']}


@pytest.mark.parametrize('value, message', [
    ('{"cluster": ', 'TF_CONFIG is not valid JSON'),
    ('[1, 2]', 'TF_CONFIG must be a JSON object'),
    ('{"task": {"type": "worker", "index": 0}}', 'no "cluster" mapping'),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker"}}',
     'cluster.worker must be a non-empty list'),
    ('{"cluster": {"worker": ["a:1"]}}', 'no "task"'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief"}}',
     "task type 'chief' is not in the cluster"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", '
     '"index": 3}}', 'task index 3 is out of range for worker (1 tasks)'),
    ('{"cluster": {"boss": ["a:1"]}, "task": {"type": "boss"}}',
     "unknown task type 'boss'"),
    ('{"cluster": {"chief": ["a:1"], "master": ["b:1"]}, "task": '
     '{"type": "chief"}}', 'both chief and master'),
    ('{"cluster": {"chief": ["a:1"], "ps": ["b:1"]}, "task": '
     '{"type": "ps"}}', 'runs only as chief/master or worker'),
])
def test_malformed_tf_config_names_the_variable_and_the_fault(value, message):
  with pytest.raises(cluster.ClusterError, match='TF_CONFIG') as raised:
    cluster.parse_cluster(value, None)
  assert message in str(raised.value)


def test_strategy_choice_follows_the_cluster_and_the_gpus():
  # Imported here: distribute imports TensorFlow, the rest of this file not.
  from trainer import distribute  # pylint: disable=g-import-not-at-top
  resolve = distribute.resolve_strategy_name
  assert resolve('auto', num_tasks=1, num_gpus=0) == 'default'
  assert resolve('auto', num_tasks=1, num_gpus=1) == 'default'
  assert resolve('auto', num_tasks=1, num_gpus=4) == 'mirrored'
  assert resolve('auto', num_tasks=2, num_gpus=0) == 'multi_worker'
  assert resolve('auto', num_tasks=2, num_gpus=8) == 'multi_worker'
  assert resolve('mirrored', num_tasks=1, num_gpus=0) == 'mirrored'
  assert resolve('multi_worker', num_tasks=1, num_gpus=0) == 'multi_worker'
  with pytest.raises(ValueError, match='--strategy=multi_worker'):
    resolve('default', num_tasks=2, num_gpus=0)
  with pytest.raises(ValueError, match='Unknown strategy'):
    resolve('tpu', num_tasks=1, num_gpus=0)


@pytest.mark.parametrize('tf_config', [
    None,
    _tf_config({'chief': ['localhost:1']}, 'chief'),
    _tf_config({'worker': ['localhost:1']}, 'worker'),
])
def test_a_cluster_of_one_task_trains_with_the_default_strategy(tf_config):
  # A real strategy, in this process: a one-task cluster starts no server.
  from trainer import distribute  # pylint: disable=g-import-not-at-top
  spec, task = cluster.parse_cluster(tf_config, None)
  strategy = distribute.create_strategy('auto', spec, task)
  assert strategy.num_replicas_in_sync == 1
  assert not distribute.is_multi_worker(strategy)
