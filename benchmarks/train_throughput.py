r"""Training throughput: our trainer against the tutorial way, same machine.

  python -m benchmarks.train_throughput             # about 20 minutes
  python -m benchmarks.train_throughput --rounds=1 --epochs=2

The same Keras model (deep_mnist, "Deep MNIST for Experts") on Fashion-MNIST,
three ways, each in a fresh process, alternating round by round so that
machine noise falls on all of them alike:

  tutorial          `model.fit` on float32 NumPy arrays, batch 128, Adam
                    (what the tutorials do; validation data passed too)
  trainer           `python -m trainer.task
                    --config=config/fashion_mnist_deep_mnist.yaml`: the
                    cached, prefetched tf.data pipeline and the config's
                    `mixed_precision: auto` (bfloat16 on CPUs that have it)
  trainer, float32  the same with --mixed_precision=float32, to show what
                    the pipeline alone gives
  trainer, batch 256  the config with --batch_size=256: fewer, larger steps

All use the same 54,000 training / 6,000 validation split. Images/s counts
the training steps of an epoch (epoch start to the start of its validation):
54,000 / seconds; each run reports the median over its epochs after the
first (tracing, warm-up). The table gives the median over runs, every run,
and the ratio to the tutorial. XLA (`jit_compile`) is not used: it measured
3 times slower on these CPUs (DESIGN.md).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION_TITLE = '## Training throughput: the trainer against the tutorial way'
CONFIG = os.path.join(REPO, 'config', 'fashion_mnist_deep_mnist.yaml')
TARGET_RATIO = 1.3

_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternating rounds.')
_EPOCHS = flags.DEFINE_integer('epochs', 3, 'Epochs per run (>= 2).')
_FASHION_MNIST_DIR = flags.DEFINE_string(
    'fashion_mnist_dir', '/usr/share/datasets/fashion-mnist',
    'Folder of the Fashion-MNIST IDX .gz files.')
_WORK_DIR = flags.DEFINE_string('work_dir', None,
                                'Where the runs go (default: a temp folder).')
_RESULTS = flags.DEFINE_string('results', results.RESULTS_PATH,
                               'Markdown file to write the table to.')
_MEASURE = flags.DEFINE_string('measure', None, 'Internal: a child run.')

VARIANTS = ('tutorial', 'trainer', 'trainer_float32', 'trainer_batch256')
LABELS = {'tutorial': 'tutorial: model.fit on NumPy, batch 128, float32',
          'trainer_batch256': 'trainer, config with --batch_size=256',
          'trainer': 'trainer, config (tf.data, mixed_precision auto)',
          'trainer_float32': 'trainer, --mixed_precision=float32'}


def _env():
  return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')


def measure_tutorial(data_dir, epochs):
  """The tutorial way, in this process; returns per-epoch images/s."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from trainer import models  # pylint: disable=g-import-not-at-top
  from trainer.data import idx  # pylint: disable=g-import-not-at-top

  source = idx.load_idx('fashion_mnist', data_dir, 0.1)
  arrays = {}
  for split in ('train', 'validation'):
    images, labels = next(source.examples(split).batch(100_000)
                          .as_numpy_iterator())
    arrays[split] = (images.astype(np.float32) / 255.0, labels)
  train_images = len(arrays['train'][1])

  class TrainStepTimer(keras.callbacks.Callback):

    def __init__(self):
      super().__init__()
      self.rates = []
      self._start = None
      self._seconds = None

    def on_epoch_begin(self, epoch, logs=None):
      self._start, self._seconds = time.perf_counter(), None

    def on_test_begin(self, logs=None):
      if self._seconds is None:
        self._seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
      self.rates.append(train_images / self._seconds)

  keras.utils.set_random_seed(42)
  model = models.build_model('deep_mnist', (28, 28, 1), 10)
  model.compile(keras.optimizers.Adam(1e-3), 'sparse_categorical_crossentropy',
                metrics=['accuracy'])
  timer = TrainStepTimer()
  model.fit(*arrays['train'], batch_size=128, epochs=epochs,
            validation_data=arrays['validation'], callbacks=[timer], verbose=0)
  return timer.rates


def run_variant(variant, job_dir, epochs, data_dir):
  """One run in a fresh process; returns its images/s (warm epochs' median)."""
  if variant == 'tutorial':
    output = subprocess.run(
        [sys.executable, '-m', 'benchmarks.train_throughput',
         '--measure=tutorial', f'--epochs={epochs}',
         f'--fashion_mnist_dir={data_dir}'],
        cwd=REPO, env=_env(), check=True, capture_output=True, text=True)
    rates = json.loads(output.stdout.strip().splitlines()[-1])
    return statistics.median(rates[1:] or rates)
  command = [sys.executable, '-m', 'trainer.task', f'--config={CONFIG}',
             f'--job_dir={job_dir}', f'--epochs={epochs}',
             f'--data_dir={data_dir}']
  if variant == 'trainer_float32':
    command.append('--mixed_precision=float32')
  if variant == 'trainer_batch256':
    command.append('--batch_size=256')
  subprocess.run(command, cwd=REPO, env=_env(), check=True,
                 capture_output=True)
  with open(os.path.join(job_dir, 'metrics.json')) as f:
    return json.load(f)['train_images_per_second']


def format_table(rates):
  tutorial = statistics.median(rates['tutorial'])
  rows = []
  for variant in VARIANTS:
    median = statistics.median(rates[variant])
    rows.append([LABELS[variant], f'{median:,.0f}',
                 ', '.join(f'{r:,.0f}' for r in rates[variant]),
                 f'{median / tutorial:.2f}'])
  return results.markdown_table(
      ['run', 'images/s (median)', 'each run', 'ratio to tutorial'], rows)


def main(argv):
  del argv
  if _MEASURE.value == 'tutorial':
    print(json.dumps(measure_tutorial(_FASHION_MNIST_DIR.value,
                                      _EPOCHS.value)))
    return
  work_dir = _WORK_DIR.value or tempfile.mkdtemp(prefix='train-throughput-')
  rates = {variant: [] for variant in VARIANTS}
  start = time.perf_counter()
  for round_index in range(_ROUNDS.value):
    for variant in VARIANTS:
      job_dir = os.path.join(work_dir, f'{variant}-{round_index}')
      rate = run_variant(variant, job_dir, _EPOCHS.value,
                         _FASHION_MNIST_DIR.value)
      rates[variant].append(rate)
      print(f'round {round_index + 1}: {LABELS[variant]}: {rate:,.0f} '
            'images/s', flush=True)
  minutes = (time.perf_counter() - start) / 60
  ratio = statistics.median(rates['trainer']) / statistics.median(
      rates['tutorial'])
  verdict = 'met' if ratio >= TARGET_RATIO else 'NOT met'
  body = '\n'.join([
      '`python -m benchmarks.train_throughput`: deep_mnist on Fashion-MNIST '
      f'(54,000 training images), {_ROUNDS.value} alternating rounds of '
      f'{_EPOCHS.value} epochs per run, each run in a fresh process '
      f'({results.machine()}; {minutes:.0f} minutes in all). Images/s: '
      'training steps only, median over each run\'s epochs after the first.',
      '',
      format_table(rates),
      '',
      f'Target: the trainer at least {TARGET_RATIO}x the tutorial way: '
      f'{ratio:.2f}x, {verdict}.',
  ])
  results.write_section(SECTION_TITLE, body, _RESULTS.value)


if __name__ == '__main__':
  app.run(main)
