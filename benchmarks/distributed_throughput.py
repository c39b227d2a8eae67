r"""Training throughput on 1 device, 2 devices and 2 workers; resume latency.

  python benchmarks/distributed_throughput.py
  python benchmarks/distributed_throughput.py --model=cnn_bn --epochs=5

Runs the trainer (`python -m trainer.task`) on the same small job four ways,
one after the other, and prints training images/s side by side: the median
of the per-epoch rates the trainer records in metrics.json, leaving out each
process's first epoch (tracing, warm-up):

  1 device     the default strategy
  2 devices    MirroredStrategy over two logical CPU devices (one process,
               via tests/logical_devices.py; on GPUs these would be 2 GPUs)
  2 workers    MultiWorkerMirroredStrategy over two local processes, one
               device each, talking gRPC on loopback
  resume       the 1-device job stopped with SIGTERM after its first epoch
               and run again

Resume latency is the time from the start of `trainer.task` (before
TensorFlow is imported) to the first training step of the resumed run, as
the trainer records it (`first_step_seconds` in metrics.json), next to the
same figure for the same job's first, fresh attempt (from its log): their
difference is what resuming costs. The time from SIGTERM to the exit of the
first attempt is printed too.

On a machine with few cores, logical devices and local workers share the
same cores: the ratios show the overhead of each strategy, not a speed-up.
Numbers on a shared machine are indicative; rerun on a quiet one.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECTION_TITLE = ('## Distributed training: 1 device, 2 devices, 2 workers; '
                 'resume latency')
_RESULTS = flags.DEFINE_string('results', results.RESULTS_PATH,
                               'Markdown file to write the table to.')
_MODEL = flags.DEFINE_string('model', 'deep_mnist', 'Model to train.')
_EPOCHS = flags.DEFINE_integer('epochs', 4, 'Epochs per run (at least 3).')
_STEPS = flags.DEFINE_integer('steps_per_epoch', 40, 'Steps per epoch.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
_WORK_DIR = flags.DEFINE_string(
    'work_dir', None, 'Where the runs go (default: a temporary folder, '
    'removed at the end).')


def _job_args(job_dir):
  return [f'--job_dir={job_dir}', f'--model={_MODEL.value}',
          f'--epochs={_EPOCHS.value}', f'--steps_per_epoch={_STEPS.value}',
          f'--batch_size={_BATCH_SIZE.value}']


def _start(module, args, log_path, env=None):
  full_env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2',
                  **(env or {}))
  with open(log_path, 'w') as log:
    return subprocess.Popen([sys.executable, '-m', module, *args], cwd=REPO,
                            env=full_env, stdout=log, stderr=subprocess.STDOUT)


def _finish(processes, logs):
  for process, log in zip(processes, logs):
    if process.wait() != 0:
      with open(log) as f:
        tail = f.read()[-3000:]
      raise RuntimeError(f'{log}: exit status {process.returncode}\n{tail}')


def _metrics(job_dir):
  with open(os.path.join(job_dir, 'metrics.json')) as f:
    return json.load(f)


def _rate(metrics):
  return metrics['train_images_per_second']


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for sock in sockets:
    sock.bind(('127.0.0.1', 0))
  ports = [sock.getsockname()[1] for sock in sockets]
  for sock in sockets:
    sock.close()
  return ports


def run_one_device(work_dir):
  job_dir = os.path.join(work_dir, 'one_device')
  log = job_dir + '.log'
  _finish([_start('trainer.task', _job_args(job_dir), log)], [log])
  return _metrics(job_dir)


def run_two_devices(work_dir):
  job_dir = os.path.join(work_dir, 'two_devices')
  log = job_dir + '.log'
  _finish([_start('tests.logical_devices',
                  ['2', '--strategy=mirrored', *_job_args(job_dir)], log)],
          [log])
  return _metrics(job_dir)


def run_two_workers(work_dir):
  job_dir = os.path.join(work_dir, 'two_workers')
  cluster = {'worker': [f'127.0.0.1:{port}' for port in _free_ports(2)]}
  processes, logs = [], []
  for index in range(2):
    tf_config = json.dumps({'cluster': cluster,
                            'task': {'type': 'worker', 'index': index}})
    logs.append(f'{job_dir}.worker{index}.log')
    processes.append(_start('trainer.task', _job_args(job_dir), logs[-1],
                            env={'TF_CONFIG': tf_config}))
  _finish(processes, logs)
  return _metrics(job_dir)


def run_resumed(work_dir):
  """Stops a 1-device run with SIGTERM after epoch 1; reruns it.

  Returns:
    (metrics of the resumed run, first-step seconds of the first attempt,
    seconds from SIGTERM to the exit of the first attempt).
  """
  job_dir = os.path.join(work_dir, 'resumed')
  record = os.path.join(job_dir, 'checkpoints', 'backup',
                        'training_metadata.json')
  first_log = job_dir + '.1.log'
  process = _start('trainer.task', _job_args(job_dir), first_log)
  while not os.path.exists(record) and process.poll() is None:
    time.sleep(0.05)
  signalled = time.perf_counter()
  process.send_signal(signal.SIGTERM)
  if process.wait() != 128 + signal.SIGTERM:
    raise RuntimeError(f'{first_log}: expected a stop on SIGTERM, got '
                       f'exit status {process.returncode}')
  stop_seconds = time.perf_counter() - signalled
  with open(first_log) as f:
    fresh = float(re.search(r'First training step ([\d.]+)s after start',
                            f.read()).group(1))
  log = job_dir + '.2.log'
  _finish([_start('trainer.task', _job_args(job_dir), log)], [log])
  return _metrics(job_dir), fresh, stop_seconds


def _epoch_rates(metrics):
  return ' '.join(f'{entry["images_per_second"]:.0f}'
                  for entry in metrics['history'])


def main(argv):
  del argv
  if _EPOCHS.value < 3:
    raise app.UsageError('--epochs must be at least 3 (the first epoch of '
                         'each run is left out of the rates).')
  with tempfile.TemporaryDirectory(prefix='throughput-') as scratch:
    work_dir = _WORK_DIR.value or scratch
    os.makedirs(work_dir, exist_ok=True)
    print(f'{_MODEL.value}, {_EPOCHS.value} epochs of {_STEPS.value} steps, '
          f'global batch {_BATCH_SIZE.value}, {os.cpu_count()} CPU cores; '
          f'load average before: {os.getloadavg()[0]:.2f}', flush=True)
    results_by_run = {}
    for name, run in (('1 device', run_one_device),
                      ('2 devices (mirrored)', run_two_devices),
                      ('2 workers (multi-worker)', run_two_workers)):
      started = time.perf_counter()
      results_by_run[name] = run(work_dir)
      print(f'  ran {name} in {time.perf_counter() - started:.0f} s',
            flush=True)
    resumed, fresh, stop_seconds = run_resumed(work_dir)
    baseline = _rate(results_by_run['1 device'])
    print(f'\n{"run":26} {"replicas":>8} {"images/s":>9} {"vs 1":>6}   '
          'per epoch')
    for name, metrics in results_by_run.items():
      print(f'{name:26} {metrics["replicas"]:8d} {_rate(metrics):9.0f} '
            f'{_rate(metrics) / baseline:6.2f}   {_epoch_rates(metrics)}')
    print(f'\nSIGTERM to exit: {stop_seconds:.1f} s. Resumed run: first '
          f'training step {resumed["first_step_seconds"]:.1f} s after start, '
          f'at epoch {resumed["resumed_from_epoch"] + 1} (the same job\'s '
          f'fresh start: {fresh:.1f} s; difference '
          f'{resumed["first_step_seconds"] - fresh:+.1f} s).')
    print(f'load average after: {os.getloadavg()[0]:.2f}')
    rows = [[name, metrics['replicas'], f'{_rate(metrics):,.0f}',
             f'{_rate(metrics) / baseline:.2f}', _epoch_rates(metrics)]
            for name, metrics in results_by_run.items()]
    body = '\n'.join([
        '`python -m benchmarks.distributed_throughput`: '
        f'{_MODEL.value}, {_EPOCHS.value} epochs of {_STEPS.value} steps, '
        f'global batch {_BATCH_SIZE.value} ({results.machine()}). Images/s: '
        'median of the per-epoch rates after the first. On 2 cores, logical '
        'devices and local workers share the same cores: the ratios show '
        "each strategy's overhead, not a speed-up.",
        '',
        results.markdown_table(['run', 'replicas', 'images/s', 'vs 1 device',
                                'per epoch'], rows),
        '',
        f'Resume: the first training step of a resumed run came '
        f'{resumed["first_step_seconds"]:.1f} s after the process started, at '
        f'epoch {resumed["resumed_from_epoch"] + 1}; the same job\'s fresh '
        f'start took {fresh:.1f} s (difference '
        f'{resumed["first_step_seconds"] - fresh:+.1f} s). SIGTERM to exit: '
        f'{stop_seconds:.1f} s.',
    ])
    results.write_section(SECTION_TITLE, body, _RESULTS.value)


if __name__ == '__main__':
  app.run(main)
