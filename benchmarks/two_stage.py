r"""Two-stage transfer: embed once, train the head on vectors; vs one-stage.

  python -m benchmarks.two_stage            # about 15 minutes
  python -m benchmarks.two_stage --quick    # a smoke run

For two bases, each exported as a Contract 2 artifact with random weights
(the timing does not depend on them):

  cnn_bn        our Fashion-MNIST CNN (28x28 grey; its embedding is the
                flattened 7x7x64 feature map)
  mobilenet_v2  the Keras Applications backbone at 96x96 under a head

each on images written as class folders (PNG): for cnn_bn 20,000
Fashion-MNIST training images (--fashion_images; with only 4,000 images an
epoch of this small CNN is mostly the per-epoch fixed cost both runs pay:
checkpoints, validation), for mobilenet_v2 the bundled 5,000 digits
(--images). It measures, each command in a fresh process, one after the
other:

  one-stage   `trainer.task --dataset=image_folder --base_model=EXPORT`: the
              frozen extractor runs forward over every image in every epoch
  embed once  `batch_predict.pipeline --embeddings_only --labels_from_folders`:
              the whole command's seconds, and its images/s
  two-stage   `trainer.task --dataset=embeddings --base_model=EXPORT` on that
              cache: only the head trains

Seconds per epoch are the trainer's own (metrics.json `history`, training
and validation), the median over the epochs after the first (tracing). The
model's own batched extractor rate is the artifact's `serving_embeddings`
signature called in this process on batches of 64 of the same encoded
files (decoding included, as in the pipeline). Break-even N, two ways: the
smallest number of epochs for which embedding once plus N head epochs takes
less time than N one-stage epochs (per-epoch figures, the embedding
command whole); and by whole commands, each run's fixed time (its wall
seconds less its epochs at the median) included: embed + two-stage run
against the one-stage run, which decodes every image and traces the
extractor in its own first epoch.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION_TITLE = '## Two-stage transfer: embed once, then train the head'
TARGETS = {'cnn_bn': 10, 'mobilenet_v2': 50}
BATCH = 64

_QUICK = flags.DEFINE_bool('quick', False, 'A smoke run: 600 images, 2 '
                           'epochs (figures not meaningful).')
_IMAGES = flags.DEFINE_integer('images', 5000, 'Digits written as folders '
                                '(the mobilenet_v2 row).')
_FASHION_IMAGES = flags.DEFINE_integer(
    'fashion_images', 20000, 'Fashion-MNIST images written as folders (the '
    'cnn_bn row).')
_FASHION_MNIST_DIR = flags.DEFINE_string(
    'fashion_mnist_dir', '/usr/share/datasets/fashion-mnist',
    'Folder of the Fashion-MNIST IDX .gz files.')
_EPOCHS = flags.DEFINE_integer('epochs', 4, 'Epochs per training run (>= 2).')
_ROUNDS = flags.DEFINE_integer(
    'rounds', 3, 'Rounds of the three commands per base; the figures are '
    'medians (a single run of each moved its fixed seconds by 3-5 s here).')
_WORK_DIR = flags.DEFINE_string('work_dir', None,
                                'Where the runs go (default: a temp folder).')
_RESULTS = flags.DEFINE_string('results', results.RESULTS_PATH,
                               'Markdown file to write the table to.')


def _env():
  return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')


def _run(command):
  """Runs a command of this project; returns its wall seconds."""
  start = time.perf_counter()
  done = subprocess.run([sys.executable, '-m'] + command, cwd=REPO,
                        env=_env(), capture_output=True, text=True)
  if done.returncode:
    raise SystemExit(f'{" ".join(command)} failed:\n{done.stderr[-3000:]}')
  return time.perf_counter() - start


def write_digit_folders(folder, count):
  """The first `count` bundled digits as FOLDER/<digit>/<index>.png."""
  from trainer.data import samples  # pylint: disable=g-import-not-at-top
  from trainer.data import sources  # pylint: disable=g-import-not-at-top
  images, labels = sources._mnist_sample_arrays()  # pylint: disable=protected-access
  # The bundle is sorted by class: take every k-th image to keep all ten.
  step = max(1, len(labels) // count)
  for index in range(0, step * count, step):
    label = str(labels[index])
    os.makedirs(os.path.join(folder, label), exist_ok=True)
    with open(os.path.join(folder, label, f'{index:05d}.png'), 'wb') as f:
      f.write(samples.encode(images[index], 'png'))


def write_fashion_folders(folder, count, data_dir):
  """The first `count` Fashion-MNIST training images as FOLDER/<class>/."""
  from trainer import registry  # pylint: disable=g-import-not-at-top
  from trainer.data import idx  # pylint: disable=g-import-not-at-top
  from trainer.data import samples  # pylint: disable=g-import-not-at-top
  images = idx.read_idx(os.path.join(data_dir, 'train-images-idx3-ubyte.gz'),
                        3)
  labels = idx.read_idx(os.path.join(data_dir, 'train-labels-idx1-ubyte.gz'),
                        1)
  names = [name.replace('/', '_')
           for name in registry.FASHION_MNIST_CLASS_NAMES]
  for index in range(min(count, len(labels))):
    label = names[labels[index]]
    os.makedirs(os.path.join(folder, label), exist_ok=True)
    with open(os.path.join(folder, label, f'{index:05d}.png'), 'wb') as f:
      f.write(samples.encode(images[index][..., None], 'png'))


def export_base(name, export_dir):
  """A random-weights base artifact: cnn_bn 28x28x1 or mobilenet_v2 96x96."""
  import keras  # pylint: disable=g-import-not-at-top
  from trainer import export  # pylint: disable=g-import-not-at-top
  from trainer import models  # pylint: disable=g-import-not-at-top
  from trainer import transfer  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(1)
  if name == 'cnn_bn':
    shape = (28, 28, 1)
    model = models.build_model('cnn_bn', shape, 10)
  else:
    base = transfer.load_base('mobilenet_v2', 'none', image_size=96)
    shape = base.input_shape
    model = transfer.build_model(base, 10)
  metadata = export.build_metadata(
      class_names=[str(digit) for digit in range(10)], image_shape=shape,
      dataset='benchmark', model_name=name)
  export.export_model(model, export_dir, metadata)


def epoch_seconds(job_dir):
  """Median seconds of the epochs after the first, from metrics.json."""
  with open(os.path.join(job_dir, 'metrics.json'), encoding='utf-8') as f:
    history = json.load(f)['history']
  seconds = [entry['seconds'] for entry in history]
  return statistics.median(seconds[1:] or seconds)


def extractor_rate(export_dir, folder, seconds=10.0):
  """The artifact's own batched serving_embeddings rate, images/s."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer import artifact  # pylint: disable=g-import-not-at-top
  files = sorted(os.path.join(root, name)
                 for root, _, names in os.walk(folder) for name in names)
  encoded = []
  for path in files[:BATCH * 8]:
    with open(path, 'rb') as f:
      encoded.append(f.read())
  embed, _ = artifact.load_serving(export_dir, artifact.EMBEDDINGS_SIGNATURE)
  batches = [tf.constant(encoded[i:i + BATCH])
             for i in range(0, len(encoded) - BATCH + 1, BATCH)]
  embed(image_bytes=batches[0])  # Warm-up.
  images, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    for batch in batches:
      embed(image_bytes=batch)['embeddings'].numpy()
      images += BATCH
  return images / (time.perf_counter() - start)


def measure(name, work_dir, folder, images, epochs, rounds=1):
  """One base: the figures of its row (medians over `rounds` rounds of the
  three commands, one after the other in each round)."""
  export_dir = os.path.join(work_dir, name, 'base')
  export_base(name, export_dir)
  one_stage = os.path.join(work_dir, name, 'one_stage')
  two_stage = os.path.join(work_dir, name, 'two_stage')
  cache = os.path.join(work_dir, name, 'cache')
  common = [f'--base_model={export_dir}', f'--epochs={epochs}',
            '--batch_size=128']
  walls = {'one': [], 'embed': [], 'two': []}
  epochs_seen = {'one': [], 'two': []}
  for _ in range(rounds):
    for job_dir in (one_stage, two_stage):
      shutil.rmtree(job_dir, ignore_errors=True)
    walls['one'].append(_run(['trainer.task', '--dataset=image_folder',
                              f'--data_dir={folder}',
                              f'--job_dir={one_stage}'] + common))
    walls['embed'].append(_run(
        ['batch_predict.pipeline', f'--model_dir={export_dir}',
         f'--input={folder}', f'--output={cache}', '--embeddings_only',
         '--labels_from_folders']))
    walls['two'].append(_run(['trainer.task', '--dataset=embeddings',
                              f'--data_dir={cache}-embeddings-*',
                              f'--job_dir={two_stage}'] + common))
    epochs_seen['one'].append(epoch_seconds(one_stage))
    epochs_seen['two'].append(epoch_seconds(two_stage))
  one_wall, embed_seconds, two_wall = (
      statistics.median(walls[key]) for key in ('one', 'embed', 'two'))
  one, head = (statistics.median(epochs_seen[key]) for key in ('one', 'two'))
  one_fixed, two_fixed = one_wall - epochs * one, two_wall - epochs * head
  metrics = {}
  for run, job_dir in (('one', one_stage), ('two', two_stage)):
    with open(os.path.join(job_dir, 'metrics.json'), encoding='utf-8') as f:
      metrics[run] = json.load(f)['test_accuracy']
  break_even = next((n for n in range(1, 1000)
                     if embed_seconds + n * head < n * one), None)
  whole_break_even = next(
      (n for n in range(1, 1000)
       if embed_seconds + two_fixed + n * head < one_fixed + n * one), None)
  return {'images': images, 'one': one, 'head': head, 'embed': embed_seconds,
          'one_wall': one_wall, 'two_wall': two_wall, 'rounds': walls,
          'pipeline_rate': images / embed_seconds,
          'model_rate': extractor_rate(export_dir, folder),
          'break_even': break_even, 'whole_break_even': whole_break_even,
          'accuracy': metrics}


def _seconds(values):
  return ', '.join(f'{value:.1f}' for value in values)


def format_table(figures):
  rows = []
  for name, row in figures.items():
    speedup = row['one'] / row['head']
    rows.append([
        name, f'{row["images"]:,}', f'{row["one"]:.2f}', f'{row["head"]:.3f}',
        f'{speedup:.0f}x (target {TARGETS[name]}x: '
        f'{"met" if speedup >= TARGETS[name] else "NOT met"})',
        f'{row["embed"]:.1f}', f'{row["pipeline_rate"]:,.0f}',
        f'{row["model_rate"]:,.0f}',
        f'{row["pipeline_rate"] / row["model_rate"]:.2f}',
        str(row['break_even']), str(row['whole_break_even'])])
  return results.markdown_table(
      ['base', 'images', 'one-stage s/epoch', 'head s/epoch',
       'per-epoch speed-up', 'embed once (s, whole command)',
       'pipeline images/s', "model's own extractor images/s",
       'pipeline / model', 'break-even N (per epoch)',
       'break-even N (whole commands)'], rows)


def main(argv):
  del argv
  quick = _QUICK.value
  epochs = 2 if quick else _EPOCHS.value
  work_dir = _WORK_DIR.value or tempfile.mkdtemp(prefix='two-stage-')
  sizes = {'cnn_bn': 600 if quick else _FASHION_IMAGES.value,
           'mobilenet_v2': 600 if quick else _IMAGES.value}
  folders = {'cnn_bn': os.path.join(work_dir, 'fashion'),
             'mobilenet_v2': os.path.join(work_dir, 'digits')}
  for folder in folders.values():
    shutil.rmtree(folder, ignore_errors=True)
  write_fashion_folders(folders['cnn_bn'], sizes['cnn_bn'],
                        _FASHION_MNIST_DIR.value)
  write_digit_folders(folders['mobilenet_v2'], sizes['mobilenet_v2'])
  start = time.perf_counter()
  figures = {}
  for name in TARGETS:
    figures[name] = measure(name, work_dir, folders[name], sizes[name],
                            epochs, 1 if quick else _ROUNDS.value)
    print(name, figures[name], flush=True)
  minutes = (time.perf_counter() - start) / 60
  body = '\n'.join([
      f'`python -m benchmarks.two_stage{" --quick" if quick else ""}`: '
      'Fashion-MNIST training images (cnn_bn) and the bundled digits '
      '(mobilenet_v2 at 96x96) as class folders (80/10/10 split), '
      f'{epochs} epochs per training run, batch 128, random-weights bases, '
      f'each command in a fresh process, {1 if quick else _ROUNDS.value} '
      'round(s) of the three commands per base, medians '
      f'({results.machine()}; {minutes:.0f} minutes in all). Seconds per '
      'epoch: the trainer\'s own, training and validation, median of the '
      'epochs after the first. Embed once: the whole scorer command '
      '(start-up included). Whole commands (median; each round\'s in '
      'brackets): ' + '; '.join(
          f'{name} one-stage run {row["one_wall"]:.1f} s '
          f'({_seconds(row["rounds"]["one"])}), embed + two-stage run '
          f'{row["embed"]:.1f} ({_seconds(row["rounds"]["embed"])}) + '
          f'{row["two_wall"]:.1f} s ({_seconds(row["rounds"]["two"])})'
          for name, row in figures.items()) + '.',
      '',
      format_table(figures),
      '',
      'Test accuracy (random-weights bases, so only the agreement means '
      'anything): ' + '; '.join(
          f'{name} one-stage {row["accuracy"]["one"]:.4f}, two-stage '
          f'{row["accuracy"]["two"]:.4f}' for name, row in figures.items())
      + '.',
  ])
  results.write_section(SECTION_TITLE, body, _RESULTS.value)


if __name__ == '__main__':
  app.run(main)
