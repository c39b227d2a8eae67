r"""Scoring at scale: a glob against a manifest, and the pipeline's start-up
and steady-state rate against the model alone.

  python benchmarks/scale.py                    # full size (trains a model)
  python benchmarks/scale.py --quick --model_dir=/tmp/mnist_sample/export

Writes tiny PNG digits under --work_dir (reused across runs), then, each in
a fresh process running `python -m batch_predict.pipeline` as a user would:
  * glob vs manifest: --scale_images files (200,000) scored from
    `--input='DIR/*.png'` and from a CSV manifest of the same files: seconds
    from the command to the first scored image, and in all;
  * start-up and steady state: the glob at --images (10,000) and
    --large_images (50,000): start-up is the seconds from the command to the
    first scored image of the smaller run; the steady-state rate is
    (large - small images) / (large - small seconds), which cancels what
    does not grow with the input (start-up, model loading, publishing);
    beside it the model's own decode+predict rate on the same files, in
    batches of 64, after loading (scoring_throughput.py's loop).
The first scored image is the first progress line a worker logs
(`--progress_interval_secs` tiny makes it log at its first image).
`--profile` also runs the smaller pipeline in-process under cProfile and
prints the functions where the time goes.

The full run writes 260,000 small files and should take about 15 minutes
on 2 quiet cores (estimated from the --quick rates: not yet run at full
size); --quick (2,000 / 1,000 / 3,000 images) took 5 minutes on 2 cores
shared with four other jobs, plus the model's training when --model_dir is
not given.
"""

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import results  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import scoring_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

SECTION_TITLE = '## Scoring at scale: glob vs manifest, start-up, steady state'
_FIRST_SCORED = 'This worker has scored'


def write_manifest(folder):
  """A CSV manifest of the folder's PNG files, relative to the folder."""
  path = os.path.join(folder, 'manifest.csv')
  if not os.path.exists(path):
    names = sorted(n for n in os.listdir(folder) if n.endswith('.png'))
    with open(path + '.tmp', 'w') as f:
      f.write('uri,id\n')
      f.writelines(f'{name},{index}\n' for index, name in enumerate(names))
    os.replace(path + '.tmp', path)
  return path


def score(model_dir, input_path, output):
  """Runs the scoring command; returns (seconds to first image, seconds)."""
  command = [sys.executable, '-m', 'batch_predict.pipeline',
             f'--model_dir={model_dir}', f'--input={input_path}',
             f'--output={output}', '--progress_interval_secs=0.000001']
  start = time.perf_counter()
  first = None
  process = subprocess.Popen(command, cwd=REPO,
                             env=scoring_throughput._child_env(),  # pylint: disable=protected-access
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  tail = []
  for line in process.stderr:
    if first is None and _FIRST_SCORED in line:
      first = time.perf_counter() - start
    tail = (tail + [line])[-20:]
  if process.wait():
    raise RuntimeError(f'{command} failed:\n{"".join(tail)}')
  return first, time.perf_counter() - start


def model_alone_rate(model_dir, folder):
  """The model's own rate, in a fresh process (scoring_throughput's loop)."""
  args = argparse.Namespace(work_dir=os.path.dirname(folder), batch_size=64)
  run = scoring_throughput.run_measurement('model', model_dir, folder, args)
  return run['images'] / run['seconds']


def profile(model_dir, folder, output, top=25):
  """The in-process pipeline under cProfile: the top functions by own time."""
  import logging  # pylint: disable=g-import-not-at-top
  from batch_predict import pipeline  # pylint: disable=g-import-not-at-top
  logging.getLogger().setLevel(logging.WARNING)
  profiler = cProfile.Profile()
  profiler.enable()
  pipeline.run([f'--model_dir={model_dir}', f'--input={folder}/*.png',
                f'--output={output}'], save_main_session=False)
  profiler.disable()
  text = io.StringIO()
  pstats.Stats(profiler, stream=text).sort_stats('tottime').print_stats(top)
  return text.getvalue()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--work_dir', default='/tmp/scale_benchmark')
  parser.add_argument('--model_dir', default='',
                      help='An export to score with (default: train one).')
  parser.add_argument('--scale_images', type=int, default=200_000)
  parser.add_argument('--images', type=int, default=10_000)
  parser.add_argument('--large_images', type=int, default=50_000)
  parser.add_argument('--quick', action='store_true',
                      help='A smoke run: 2,000 / 1,000 / 3,000 images.')
  parser.add_argument('--profile', action='store_true')
  parser.add_argument('--results', default=results.RESULTS_PATH)
  args = parser.parse_args()
  if args.quick:
    args.scale_images, args.images, args.large_images = 2_000, 1_000, 3_000
  began = time.perf_counter()
  model_dir = args.model_dir or scoring_throughput.train_model(args.work_dir)
  out = os.path.join(args.work_dir, 'scores')

  scale = scoring_throughput.ensure_images(args.work_dir, args.scale_images)
  manifest = write_manifest(scale)
  by_input = {
      'glob': score(model_dir, f'{scale}/*.png', f'{out}/glob'),
      'manifest': score(model_dir, manifest, f'{out}/manifest')}
  for name, (first, total) in by_input.items():
    print(f'{name:<9} {args.scale_images:,} images: first scored after '
          f'{first:.1f} s, all after {total:.1f} s')

  small = scoring_throughput.ensure_images(args.work_dir, args.images)
  large = scoring_throughput.ensure_images(args.work_dir, args.large_images)
  first, small_seconds = score(model_dir, f'{small}/*.png', f'{out}/small')
  _, large_seconds = score(model_dir, f'{large}/*.png', f'{out}/large')
  steady = (args.large_images - args.images) / max(
      large_seconds - small_seconds, 1e-9)
  model = model_alone_rate(model_dir, large)
  print(f'start-up {first:.1f} s; steady state {steady:,.0f} images/s; model '
        f'alone {model:,.0f} images/s; ratio {steady / model:.2f}; whole '
        f'{args.images:,}-image command {args.images / small_seconds:,.0f} '
        f'images/s ({args.images / small_seconds / model:.2f})')
  if args.profile:
    print(profile(model_dir, small, f'{out}/profiled'))
  write_results(args, by_input, first, steady, model,
                args.images / small_seconds,
                (time.perf_counter() - began) / 60)


def write_results(args, by_input, first, steady, model, whole, minutes):
  rows = [[name, args.scale_images, f'{first_seen:.1f}', f'{total:.1f}']
          for name, (first_seen, total) in by_input.items()]
  lines = [
      f'`python benchmarks/scale.py{" --quick" if args.quick else ""}`: tiny '
      'PNG digits on local disk, the scoring command on DirectRunner '
      f'in-process, each in a fresh process ({results.machine()}; '
      f'{minutes:.0f} minutes in all).',
      '',
      results.markdown_table(
          ['input', 'images', 'first scored (s)', 'all scored (s)'], rows),
      '',
      results.markdown_table(
          ['figure', 'value', 'target'],
          [['start-up: command to first scored image (s)', f'{first:.1f}',
            'at most 5'],
           [f'steady state, {args.images:,} to {args.large_images:,} images '
            '(images/s)', f'{steady:,.0f}', ''],
           ['model alone, decode + predict (images/s)', f'{model:,.0f}', ''],
           ['steady state / model alone', f'{steady / model:.2f}',
            'at least 0.9'],
           [f'whole {args.images:,}-image command / model alone',
            f'{whole / model:.2f}', '']]),
  ]
  results.write_section(SECTION_TITLE, '\n'.join(lines), args.results)


if __name__ == '__main__':
  main()
