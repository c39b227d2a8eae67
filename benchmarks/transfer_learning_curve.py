r"""Learning curve on the bundled digits: scratch vs a Fashion-MNIST base.

  python -m benchmarks.transfer_learning_curve

Trains a cnn_bn base on Fashion-MNIST once, then for 100, 500 and 4,000
labelled training digits (of the bundled 5,000) trains three models with the
same budget of optimisation steps and reports test accuracy on the same 500
test digits:

  scratch    cnn_bn from random weights;
  frozen     the base's conv feature extractor, frozen, under a new head;
  fine-tuned the same, then the top 2 conv layers unfrozen at a 10x lower
             learning rate for the last third of the steps.

Every run goes through `train.run`, the code `python -m trainer.task` runs.
The table is printed and written to benchmarks/RESULTS.md under its own
heading (other sections of that file are left alone).
"""

import os
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

from benchmarks import results

_FASHION_MNIST_DIR = flags.DEFINE_string(
    'fashion_mnist_dir', '/usr/share/datasets/fashion-mnist',
    'Folder of the Fashion-MNIST IDX .gz files.')
_WORK_DIR = flags.DEFINE_string(
    'work_dir', None, 'Where the runs go (default: a new temporary folder).')
_BASE_EPOCHS = flags.DEFINE_integer(
    'base_epochs', 3, 'Epochs of the Fashion-MNIST base (60k images each).')
_SIZES = flags.DEFINE_list('sizes', ['100', '500', '4000'],
                           'Numbers of labelled training digits.')
_STEPS = flags.DEFINE_integer(
    'steps', 300, 'Optimisation steps of every digits run (batch 32).')
_RESULTS = flags.DEFINE_string(
    'results', results.RESULTS_PATH,
    'Markdown file to write the table to.')

SECTION_TITLE = '## Transfer learning: bundled digits from a Fashion-MNIST base'
_BATCH_SIZE = 32
_STEPS_PER_EPOCH = 20
_FINE_TUNE_LAYERS = 2
VARIANTS = ('scratch', 'frozen', 'fine-tuned')


def _train(job_dir, **settings):
  """One run of the trainer; returns its metrics."""
  # Imported here so that --help answers without loading TensorFlow.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer import config as config_lib  # pylint: disable=g-import-not-at-top
  from trainer import run_context  # pylint: disable=g-import-not-at-top
  from trainer import train  # pylint: disable=g-import-not-at-top
  config = config_lib.build(overrides=dict(settings, job_dir=job_dir))
  return train.run(run_context.create(config, tf.distribute.get_strategy()))


def train_base(work_dir, data_dir, epochs):
  """Trains the Fashion-MNIST cnn_bn base; returns (export dir, metrics)."""
  job_dir = os.path.join(work_dir, 'fashion_base')
  metrics = _train(job_dir, dataset='fashion_mnist', data_dir=data_dir,
                   model='cnn_bn', epochs=epochs, batch_size=128)
  return os.path.join(job_dir, 'export'), metrics


def digits_settings(variant, examples, steps, base_export):
  """Trainer settings of one cell of the table: the same steps for all."""
  epochs = max(1, steps // _STEPS_PER_EPOCH)
  settings = dict(dataset='mnist_sample', model='cnn_bn',
                  train_examples=examples, batch_size=_BATCH_SIZE,
                  steps_per_epoch=_STEPS_PER_EPOCH, epochs=epochs)
  if variant == 'scratch':
    return settings
  settings['base_model'] = base_export
  if variant == 'fine-tuned':
    fine_tune_epochs = max(1, epochs // 3)
    settings.update(epochs=epochs - fine_tune_epochs,
                    fine_tune_epochs=fine_tune_epochs,
                    fine_tune_layers=_FINE_TUNE_LAYERS)
  return settings


def format_table(accuracies, sizes):
  """Markdown table: one row per training-set size, one column per variant."""
  lines = ['| labelled training digits | from scratch | transfer, frozen '
           f'extractor | transfer + fine-tune top {_FINE_TUNE_LAYERS} |',
           '| ---: | ---: | ---: | ---: |']
  for size in sizes:
    cells = ' | '.join(f'{accuracies[size, variant]:.3f}'
                       for variant in VARIANTS)
    lines.append(f'| {size:,} | {cells} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  sizes = [int(size) for size in _SIZES.value]
  work_dir = _WORK_DIR.value or tempfile.mkdtemp(prefix='transfer-curve-')
  start = time.perf_counter()
  base_export, base_metrics = train_base(work_dir, _FASHION_MNIST_DIR.value,
                                         _BASE_EPOCHS.value)
  accuracies = {}
  for size in sizes:
    for variant in VARIANTS:
      settings = digits_settings(variant, size, _STEPS.value, base_export)
      metrics = _train(os.path.join(work_dir, f'{variant}-{size}'),
                       **settings)
      accuracies[size, variant] = metrics['test_accuracy']
      logging.info('%d digits, %s: test accuracy %.4f', size, variant,
                   metrics['test_accuracy'])
  minutes = (time.perf_counter() - start) / 60
  table = format_table(accuracies, sizes)
  body = '\n'.join([
      '`python -m benchmarks.transfer_learning_curve` (one run, 2 shared CPU '
      'cores).',
      '',
      f'Base: cnn_bn trained on Fashion-MNIST for {_BASE_EPOCHS.value} '
      f'epochs (60,000 images), test accuracy '
      f'{base_metrics["test_accuracy"]:.3f}. Each digits run takes '
      f'{_STEPS.value} steps of {_BATCH_SIZE} images (fine-tuned: the last '
      f'third of them with the top {_FINE_TUNE_LAYERS} conv layers unfrozen '
      'at a 10x lower learning rate) and is scored on the same 500 test '
      'digits (one test image = 0.2 points; differences under ~2 points '
      f'are noise). Whole benchmark: {minutes:.0f} minutes.',
      '',
      table,
  ])
  results.write_section(SECTION_TITLE, body, _RESULTS.value)


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  app.run(main)
