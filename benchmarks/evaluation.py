r"""What the evaluation report costs: training with and without it, and
scoring with and without --evaluate, side by side.

  python benchmarks/evaluation.py            # full: about 15 minutes
  python benchmarks/evaluation.py --quick    # smoke run: about 3 minutes

1. Training: the default run (`python -m trainer.task --job_dir=...`, the
   bundled digits) in a fresh process, once as it is and once with the
   evaluation steps (`evaluate_lib.add_to_run`, `write_pictures`) replaced
   by no-ops, --runs times each, alternating; wall-clock seconds.
2. Scoring: --images PNG digits in class folders, scored by
   `batch_predict.pipeline --labels_from_folders` on DirectRunner, with
   and without `--evaluate`, --runs times each, alternating; wall-clock
   seconds of the whole command, with the model of step 1.

Prints medians and the overhead in %, and writes its section of
benchmarks/RESULTS.md. Timings on a shared machine are noisy: compare
medians, and re-run.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from benchmarks import results  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION_TITLE = '## Evaluation report: its cost in training and in scoring'
# A trainer whose evaluation steps do nothing: the "without" column.
_TRAIN_WITHOUT_EVALUATION = """
from absl import app
from trainer import evaluate_lib
evaluate_lib.add_to_run = (
    lambda model, context, source, dirs, metrics:
    metrics.__setitem__('evaluation', None))
evaluate_lib.write_pictures = lambda *args, **kwargs: []
from trainer import task
app.run(task.main)
"""


def _env():
  return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')


def _timed(command):
  start = time.perf_counter()
  subprocess.run(command, cwd=REPO, env=_env(), check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return time.perf_counter() - start


def time_training(work_dir, runs, extra_flags):
  """{'with': [seconds], 'without': [seconds]}; returns the last export."""
  seconds = {'with': [], 'without': []}
  for run in range(runs):
    for variant in ('with', 'without'):
      job_dir = os.path.join(work_dir, f'train-{variant}-{run}')
      program = (['-m', 'trainer.task'] if variant == 'with' else
                 ['-c', _TRAIN_WITHOUT_EVALUATION])
      seconds[variant].append(_timed([sys.executable, *program,
                                      f'--job_dir={job_dir}', *extra_flags]))
  return seconds, os.path.join(work_dir, f'train-with-{runs - 1}', 'export')


def write_labelled_images(folder, count):
  """`count` PNG digits in class folders FOLDER/DIGIT/ (the bundled ones,
  cycled)."""
  from trainer.data import samples  # pylint: disable=g-import-not-at-top
  from trainer.data import sources  # pylint: disable=g-import-not-at-top
  source = sources.load_mnist_sample(0.1, 0.1)
  encoded = [(samples.encode(pixels, 'png'), int(label)) for pixels, label in
             source.examples('test').as_numpy_iterator()]
  for index in range(count):
    png, label = encoded[index % len(encoded)]
    os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
    with open(os.path.join(folder, str(label), f'{index:06d}.png'),
              'wb') as f:
      f.write(png)


def time_scoring(work_dir, model_dir, images, runs):
  folder = os.path.join(work_dir, 'labelled')
  write_labelled_images(folder, images)
  seconds = {'with': [], 'without': []}
  for run in range(runs):
    for variant in ('with', 'without'):
      seconds[variant].append(_timed([
          sys.executable, '-m', 'batch_predict.pipeline',
          f'--model_dir={model_dir}', f'--input={folder}',
          f'--output={os.path.join(work_dir, "scores", f"{variant}-{run}")}',
          '--labels_from_folders',
          *(['--evaluate'] if variant == 'with' else [])]))
  return seconds


def _row(what, seconds):
  with_evaluation = statistics.median(seconds['with'])
  without = statistics.median(seconds['without'])
  return [what, f'{without:.1f}', f'{with_evaluation:.1f}',
          f'{100 * (with_evaluation / without - 1):+.1f} %',
          ', '.join(f'{s:.1f}' for s in seconds['without']) + ' / ' +
          ', '.join(f'{s:.1f}' for s in seconds['with'])]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='Smoke run: 1 epoch on 500 digits, 500 images '
                      'scored, one run each.')
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--images', type=int, default=10_000)
  parser.add_argument('--work_dir', default=None)
  args = parser.parse_args()
  runs, images, train_flags = args.runs, args.images, []
  if args.quick:
    runs, images = 1, 500
    train_flags = ['--epochs=1', '--train_examples=500']
  work_dir = args.work_dir or tempfile.mkdtemp(prefix='evaluation-bench-')
  training, model_dir = time_training(work_dir, runs, train_flags)
  scoring = time_scoring(work_dir, model_dir, images, runs)
  table = results.markdown_table(
      ['run', 'without (s)', 'with (s)', 'overhead', 'runs without / with'],
      [_row('training, default run' + (' (--quick: 1 epoch, 500 digits)'
                                       if args.quick else ''), training),
       _row(f'scoring {images:,} labelled images (--evaluate)', scoring)])
  body = (f'Medians of {runs} alternating run(s), wall-clock seconds of the '
          f'whole command, {results.machine()}. Made by '
          f'`python benchmarks/evaluation.py{" --quick" if args.quick else ""}`'
          f'.\n\n{table}')
  results.write_section(SECTION_TITLE, body)


if __name__ == '__main__':
  main()
