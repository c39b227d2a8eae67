"""Distribution: data shards, MirroredStrategy, multi-worker, strategy choice.

The strategies are real: MirroredStrategy over two logical CPU devices
(configured in a fresh process by tests/logical_devices.py) and
MultiWorkerMirroredStrategy over two local processes talking gRPC on
loopback ports.
"""

import os
import re
import signal

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import processes
from trainer import make_tfrecords_lib
from trainer.data import folder
from trainer.data import pipeline
from trainer.data import preprocessing
from trainer.data import sources
from trainer.data import tfrecords
from tests.helpers import image_files
from tests import helpers
from trainer import artifact

# --------------------------------------------------------------------------
# Every worker reads its own shard, cut before decoding.


def _labels_and_keys(dataset):
  """(label, a fingerprint of the image) of every example, in order."""
  return [(int(label), hash(image.tobytes()))
          for image, label in dataset.as_numpy_iterator()]


def _assert_shards_partition(source, split, count, by_example=True):
  whole = _labels_and_keys(source.examples(split))
  shards = [_labels_and_keys(source.examples(split, (count, index)))
            for index in range(count)]
  assert sorted(sum(shards, [])) == sorted(whole)
  if by_example:  # Every count-th example: sizes differ by one at most.
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1, sizes
  return shards


def test_array_source_shards_are_disjoint_and_cover_the_split():
  source = sources.load_mnist_sample(0.1, 0.1, train_examples=301)
  _assert_shards_partition(source, 'train', 3)
  _assert_shards_partition(source, 'test', 2)


@pytest.mark.slow  # 2.9 s here: over the fast tier's ~1.5 s a test.
def test_image_folder_workers_never_open_each_others_files(tmp_path):
  root = str(tmp_path / 'images')
  image_files.write_image_folder(root, ['a', 'b'], per_class=12)
  source = folder.load_image_folder(root, (28, 28, 1), 0.0, 0.0)
  shards = _assert_shards_partition(source, 'train', 2)
  # Remove one file from worker 1's share after listing: worker 0's pipeline
  # never opens it; worker 1's fails on it (files were checked before
  # training: one that vanishes since is an error, never a silent skip).
  shard_paths = folder.split_image_folder(root, 0.0, 0.0)[1]['train'][1::2]
  os.remove(shard_paths[0][0])
  assert len(_labels_and_keys(source.examples('train', (2, 0)))) == len(
      shards[0])
  with pytest.raises(tf.errors.NotFoundError,
                     match=os.path.basename(shard_paths[0][0])):
    _labels_and_keys(source.examples('train', (2, 1)))


@pytest.mark.slow
def test_tfrecord_shards_by_file_with_enough_files_else_by_record(tmp_path):
  root = str(tmp_path / 'images')
  image_files.write_image_folder(root, ['a', 'b'], per_class=20)
  shards_dir = str(tmp_path / 'shards')
  counts = make_tfrecords_lib.convert_image_folder(
      root, shards_dir, num_shards=6, validation_fraction=0.2,
      test_fraction=0.2)
  source = tfrecords.load_tfrecord(shards_dir, (28, 28, 1), 0.2, 0.2)
  files = sorted(tf.io.gfile.glob(os.path.join(shards_dir, 'train-*')))
  assert len(files) >= 2
  # At least as many train files as workers: whole files each.
  train = _assert_shards_partition(source, 'train', 2, by_example=False)
  assert sum(len(shard) for shard in train) == counts['train']
  per_file = [_labels_and_keys(tf.data.TFRecordDataset(f).map(_parse))
              for f in files]
  assert sorted(train[0]) == sorted(sum(per_file[0::2], []))
  # Fewer validation files (6 train shards -> 2 for the validation split,
  # in proportion to its size) than workers (3): every third record.
  assert len(tf.io.gfile.glob(os.path.join(shards_dir, 'validation-*'))) == 2
  _assert_shards_partition(source, 'validation', 3)
  # A glob splits records by position: shards keep each record's split.
  globbed = tfrecords.load_tfrecord(os.path.join(shards_dir, '*.tfrecord'),
                                    (28, 28, 1), 0.2, 0.2)
  for split in sources.SPLITS:
    _assert_shards_partition(globbed, split, 2)


def _parse(record):
  example = tf.io.parse_single_example(record, tfrecords.FEATURES)
  image = preprocessing.decode_image(example['image/encoded'], 28, 28, 1)
  return image, tf.cast(example['image/class/label'], tf.int32)


def test_a_sharded_pipeline_is_not_sharded_again_by_tf_distribute():
  source = sources.load_mnist_sample(0.1, 0.1, train_examples=64)
  dataset = pipeline.make_dataset(source, 'train', 8, (28, 28, 1),
                                  training=True, shard=(2, 1))
  policy = dataset.options().experimental_distribute.auto_shard_policy
  assert policy == tf.data.experimental.AutoShardPolicy.OFF
  assert sum(int(y.shape[0]) for _, y in dataset) == 32


# --------------------------------------------------------------------------
# MirroredStrategy over two logical devices.


_MIRRORED = {'strategy': 'mirrored', 'model': 'softmax', 'epochs': 2,
             'train_examples': 1000}


def _mirrored_over_one_device(tmp_path):
  """The run over this process's one CPU device (no logical devices: the
  device list of a process is fixed once TensorFlow has started, so the
  baseline needs no process of its own)."""
  from trainer import config as config_lib  # pylint: disable=g-import-not-at-top
  from trainer import distribute  # pylint: disable=g-import-not-at-top
  from trainer import run_context  # pylint: disable=g-import-not-at-top
  from trainer import train  # pylint: disable=g-import-not-at-top
  config = config_lib.build(overrides=dict(
      _MIRRORED, job_dir=str(tmp_path / 'devices1')))
  strategy = distribute.create_strategy('mirrored')
  return train.run(run_context.create(config, strategy))


@pytest.mark.slow
def test_mirrored_over_two_devices_matches_one_device(tmp_path):
  # Two devices: a fresh process whose CPU is split into two logical
  # devices, started first so that its start-up overlaps the baseline.
  log_path = str(tmp_path / 'devices2.log')
  process = processes.start_module(
      'tests.logical_devices', '2', f'--job_dir={tmp_path / "devices2"}',
      *(f'--{key}={value}' for key, value in _MIRRORED.items()),
      log_path=log_path)
  try:
    one = _mirrored_over_one_device(tmp_path)
    assert process.wait(timeout=600) == 0, processes.read_log(log_path)[-4000:]
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  two = helpers.read_json(str(tmp_path / 'devices2' / 'metrics.json'))
  log = processes.read_log(log_path)
  assert re.search(r'Strategy: tf.distribute.MirroredStrategy .*2 replica\(s\) in sync',
                   log)
  assert (one['replicas'], two['replicas']) == (1, 2)
  # The same global batches, each split in two halves whose gradients are
  # summed: the same updates up to float32 summation order. (The default
  # strategy is not the baseline: under any tf.distribute strategy Keras
  # draws one batch before training, which moves the shuffle by one epoch.)
  for key in ('loss', 'val_loss', 'test_loss'):
    np.testing.assert_allclose(two[key], one[key], rtol=1e-4, err_msg=key)
  for key in ('accuracy', 'val_accuracy', 'test_accuracy'):
    np.testing.assert_allclose(two[key], one[key], atol=0.005, err_msg=key)


# --------------------------------------------------------------------------
# Multi-worker: two local processes.

# 129 validation images: 65 and 64 per worker, so with 64 per replica one
# worker has a second, partial batch and the other none (the workers must
# still agree on the number of validation steps).
_MULTI_WORKER_ARGS = ['--model=softmax', '--epochs=3', '--steps_per_epoch=25',
                      '--train_examples=2000', '--validation_fraction=0.0258']


def _start_cluster(tmp_path, job_dir, attempt, temporary):
  """Starts a master and a worker (Vertex AI's names) on free ports."""
  master, worker = processes.free_ports(2)
  cluster = {'master': [f'127.0.0.1:{master}'],
             'worker': [f'127.0.0.1:{worker}']}
  started = []
  for task_type in ('master', 'worker'):
    log = str(tmp_path / f'{task_type}-{attempt}.log')
    env = {'TF_CONFIG': processes.tf_config(cluster, task_type, 0),
           'TMPDIR': str(temporary)}
    started.append((processes.start_module(
        'trainer.task', f'--job_dir={job_dir}', *_MULTI_WORKER_ARGS,
        log_path=log, env=env), log))
  return started


def _stop_all(started):
  for process, _ in started:
    if process.poll() is None:
      process.kill()
      process.wait()


@pytest.mark.slow
def test_two_workers_train_resume_and_only_the_chief_writes(tmp_path):
  job_dir = tmp_path / 'job'
  checkpoints = str(job_dir / 'checkpoints')

  # First attempt: both workers are killed once epoch 1 is backed up.
  first_temporary = tmp_path / 'tmp1'
  first_temporary.mkdir()
  started = _start_cluster(tmp_path, job_dir, 1, first_temporary)
  try:
    processes.wait_until(lambda: processes.saved_epoch(checkpoints) >= 1,
                         [p for p, _ in started], 'a backup of epoch 1',
                         logs=[log for _, log in started])
    for process, _ in started:
      process.send_signal(signal.SIGKILL)
  finally:
    _stop_all(started)
  killed_at = processes.saved_epoch(checkpoints)
  assert 1 <= killed_at < 3 and not (job_dir / 'metrics.json').exists()

  # Second attempt, same command: both resume at the same epoch and finish.
  temporary = tmp_path / 'tmp2'
  temporary.mkdir()
  started = _start_cluster(tmp_path, job_dir, 2, temporary)
  try:
    for process, log in started:
      assert process.wait(timeout=600) == 0, processes.read_log(log)[-4000:]
  finally:
    _stop_all(started)
  (chief, chief_log), (_, worker_log) = started

  metrics = helpers.read_json(str(job_dir / 'metrics.json'))
  assert (metrics['workers'], metrics['replicas']) == (2, 2)
  assert metrics['examples']['validation'] == 129
  assert metrics['resumed_from_epoch'] == killed_at
  assert [entry['attempt'] for entry in metrics['history']] == (
      [1] * killed_at + [2] * (3 - killed_at))
  assert (f'Restored the backup of epoch {killed_at}' in
          processes.read_log(worker_log))

  # Only the chief wrote into the job dir: one export, one config, and
  # TensorBoard files only from the chief's process.
  assert sorted(os.listdir(job_dir)) == [
      'checkpoints', 'config.yaml', 'evaluation.png', 'export', 'logs',
      'metrics.json', 'misclassified.png', 'training_curves.png']
  assert artifact.is_complete(str(job_dir / 'export'))
  # Event files are named events.out.tfevents.TIME.HOST.PID.N.v2.
  writers = {re.search(r'\.(\d+)\.\d+\.v2$', name).group(1)
             for _, _, names in os.walk(job_dir / 'logs') for name in names
             if name.startswith('events.out.tfevents')}
  assert str(chief.pid) in writers and str(started[1][0].pid) not in writers

  # The worker wrote its checkpoints, logs and export copy to temporary
  # folders, and removed them.
  announced = re.search(
      r'temporary folders, removed at the end: (\S+), (\S+)\.',
      processes.read_log(worker_log))
  assert announced, 'the worker did not report its temporary folders'
  for folder in announced.groups():
    assert folder.startswith(str(temporary)) and not os.path.exists(folder)
  assert os.listdir(temporary) == []


# --------------------------------------------------------------------------
# Bad cluster descriptions fail before any work.


@pytest.mark.parametrize('env, message', [
    ({'TF_CONFIG': '{"cluster": {"worker": ["a:1"]'},
     'TF_CONFIG is not valid JSON'),
    ({'TF_CONFIG': '{"cluster": {"worker": ["a:1"]}, "task": '
                   '{"type": "worker", "index": 2}}'},
     'task index 2 is out of range'),
    ({'CLUSTER_SPEC': '{"cluster": {"workerpool0": ["a:1"]}, "task": '
                      '{"type": "workerpool3"}}'},
     'runs only as chief/master or worker'),
])
def test_a_malformed_cluster_fails_at_once_naming_the_variable(tmp_path, env,
                                                              message):
  job_dir = tmp_path / 'job'
  process = helpers.run_module('trainer.task', f'--job_dir={job_dir}',
                                env=env, check=False, timeout=120)
  assert process.returncode != 0
  assert message in process.stderr
  assert 'Traceback' not in process.stderr
  assert not job_dir.exists()


@pytest.mark.slow
def test_a_one_machine_strategy_in_a_cluster_is_refused(tmp_path):
  cluster = {'chief': ['127.0.0.1:1'], 'worker': ['127.0.0.1:2']}
  process = helpers.run_module(
      'trainer.task', f'--job_dir={tmp_path / "job"}', '--strategy=default',
      env={'TF_CONFIG': processes.tf_config(cluster, 'chief', 0)},
      check=False, timeout=120)
  assert process.returncode != 0
  assert 'cluster in TF_CONFIG/CLUSTER_SPEC has 2 tasks' in process.stderr
  assert 'Traceback' not in process.stderr
  assert not (tmp_path / 'job').exists()


# --------------------------------------------------------------------------
# GPUs: memory growth and what was found, before the strategy.


def _logged(monkeypatch):
  """The messages distribute.py logs (absl), whatever other tests did to
  the loggers' handlers."""
  from trainer import distribute  # pylint: disable=g-import-not-at-top
  messages = []
  monkeypatch.setattr(distribute.logging, 'info',
                      lambda message, *args: messages.append(message % args))
  return messages


def test_gpus_get_memory_growth_unless_it_is_turned_off(monkeypatch):
  from tests import test_devices  # pylint: disable=g-import-not-at-top
  from trainer import distribute  # pylint: disable=g-import-not-at-top
  logged = _logged(monkeypatch)
  recorder = test_devices.GrowthRecorder()
  assert distribute.prepare_gpus(True, test_devices.gpus(2), recorder) == 2
  assert [enable for _, enable in recorder.calls] == [True, True]
  assert logged[-1].startswith('Found 2 GPU(s)')
  assert logged[-1].endswith('memory growth on.')
  recorder.calls.clear()
  assert distribute.prepare_gpus(False, test_devices.gpus(1), recorder) == 1
  assert not recorder.calls
  assert 'memory growth off' in logged[-1]


def test_auto_strategy_on_this_cpu_logs_that_it_found_no_gpu(monkeypatch):
  from trainer import distribute  # pylint: disable=g-import-not-at-top
  logged = _logged(monkeypatch)
  strategy = distribute.create_strategy('auto')
  assert strategy.num_replicas_in_sync == 1
  assert 'No GPU found: running on the CPU.' in logged
