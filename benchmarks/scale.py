r"""Scoring at scale (issue 16): start-up and steady state against the model
alone, and a glob against a manifest.

  python benchmarks/scale.py --model_dir=/tmp/mnist_sample/export
  python benchmarks/scale.py --quick --model_dir=/tmp/mnist_sample/export

Writes tiny PNG digits under --work_dir (reused across runs), then runs
`python -m batch_predict.pipeline` as a user would, each run in a fresh
process (DirectRunner, in-process: the default), and reports:
  * start-up: seconds from the command to its first scored image, in the
    --images (10,000) run. A worker logs a progress line at its first
    scored image (then every --progress_interval_secs, 30 s): its arrival
    on stderr is the first scored image, without logging every image.
  * steady-state rate: (--large_images - --images) / (seconds of the
    --large_images (50,000) run - seconds of the --images run), which
    cancels what does not grow with the input (imports, model loading,
    start-up, publishing), as a ratio to the model's own decode+predict
    rate on the --large_images files (scoring_throughput.py's loop: read
    each file, call `serving_default` in batches of 64, after loading).
  * glob vs manifest: --scale_images (200,000) files scored from
    `--input='DIR/*.png'` and from a CSV manifest of the same files:
    seconds to the first scored image, and to the end.
The start-up and steady-state runs, and the model alone, are repeated
--runs times (3), round by round, and their medians reported; the two
--scale_images runs once each. The issue's targets: start-up at most 5 s,
steady state at least 0.9 of the model alone.

--quick (2,000 / 1,000 / 3,000 images, one run) is a smoke run of the
script: it prints its tables and writes RESULTS.md only if --results is
given, so it never replaces the full run's figures; it took 3 minutes on 2
cores shared with other jobs. The full run writes 260,000 small files once
(reused after); estimated from the --quick rates at 10-15 minutes on 2
quiet cores (not yet run at full size).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import results  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import scoring_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

SECTION_TITLE = '## Scoring at scale: glob vs manifest, start-up, steady state'
# The progress line a worker logs at its first scored image.
_FIRST_SCORED = 'This worker has scored its first image'
_QUICK_SIZES = {'scale_images': 2_000, 'images': 1_000, 'large_images': 3_000,
                'runs': 1}


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
             f'--output={output}']
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
  if first is None:
    raise RuntimeError(f'{command} logged no scored image:\n{"".join(tail)}')
  return first, time.perf_counter() - start


def model_alone_rate(model_dir, folder):
  """The model's own images/s, in a fresh process (scoring_throughput's
  loop)."""
  args = argparse.Namespace(work_dir=os.path.dirname(folder), batch_size=64)
  run = scoring_throughput.run_measurement('model', model_dir, folder, args)
  return run['images'] / run['seconds']


def measure_steady_state(model_dir, small, large, out, runs):
  """Round by round (so a slow spell of a shared machine falls on every
  kind of run): the small and large pipeline runs and the model alone.

  Returns:
    {'small': [(first, total), ...], 'large': [...], 'model': [rate, ...]}.
  """
  measured = {'small': [], 'large': [], 'model': []}
  for _ in range(runs):
    measured['small'].append(score(model_dir, f'{small}/*.png',
                                   f'{out}/small'))
    measured['large'].append(score(model_dir, f'{large}/*.png',
                                   f'{out}/large'))
    measured['model'].append(model_alone_rate(model_dir, large))
  return measured


def figures(measured, images, large_images):
  """The issue's two figures (and what they come from), from medians."""
  startup = statistics.median(first for first, _ in measured['small'])
  small_seconds = statistics.median(total for _, total in measured['small'])
  large_seconds = statistics.median(total for _, total in measured['large'])
  steady = (large_images - images) / max(large_seconds - small_seconds, 1e-9)
  model = statistics.median(measured['model'])
  return {'startup': startup, 'small_seconds': small_seconds,
          'large_seconds': large_seconds, 'steady': steady, 'model': model,
          'ratio': steady / model}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--work_dir', default='/tmp/scale_benchmark')
  parser.add_argument('--model_dir', default='',
                      help='An export to score with (default: train one).')
  parser.add_argument('--scale_images', type=int, default=200_000)
  parser.add_argument('--images', type=int, default=10_000)
  parser.add_argument('--large_images', type=int, default=50_000)
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--quick', action='store_true',
                      help='A smoke run: 2,000 / 1,000 / 3,000 images, once.')
  parser.add_argument('--results', default=None,
                      help='Markdown file to write the section to (default: '
                      'benchmarks/RESULTS.md; none for --quick).')
  args = parser.parse_args()
  if args.quick:
    for name, value in _QUICK_SIZES.items():
      setattr(args, name, value)
  if args.results is None and not args.quick:
    args.results = results.RESULTS_PATH
  began = time.perf_counter()
  model_dir = args.model_dir or scoring_throughput.train_model(args.work_dir)
  out = os.path.join(args.work_dir, 'scores')

  small = scoring_throughput.ensure_images(args.work_dir, args.images)
  large = scoring_throughput.ensure_images(args.work_dir, args.large_images)
  measured = measure_steady_state(model_dir, small, large, out, args.runs)
  found = figures(measured, args.images, args.large_images)
  print(f"start-up {found['startup']:.1f} s; steady state "
        f"{found['steady']:,.0f} images/s; model alone {found['model']:,.0f} "
        f"images/s; ratio {found['ratio']:.2f}")

  scale = scoring_throughput.ensure_images(args.work_dir, args.scale_images)
  manifest = write_manifest(scale)
  by_input = {
      'glob': score(model_dir, f'{scale}/*.png', f'{out}/glob'),
      'manifest': score(model_dir, manifest, f'{out}/manifest')}
  for name, (first, total) in by_input.items():
    print(f'{name:<9} {args.scale_images:,} images: first scored after '
          f'{first:.1f} s, all after {total:.1f} s')
  section = report(args, by_input, found, measured,
                   (time.perf_counter() - began) / 60)
  if args.results:
    results.write_section(SECTION_TITLE, section, args.results)
  else:
    print(f'\n{SECTION_TITLE}\n\n{section}\n\n(--quick: not written to '
          'RESULTS.md; pass --results=PATH to write it.)')


def report(args, by_input, found, measured, minutes):
  """The section's Markdown: how it was run, then the two tables."""
  each = ', '.join(f'{first:.1f}' for first, _ in measured['small'])
  rows = [[name, args.scale_images, f'{first:.1f}', f'{total:.1f}']
          for name, (first, total) in by_input.items()]
  lines = [
      f'`python benchmarks/scale.py{" --quick" if args.quick else ""}` '
      f'({args.images:,} / {args.large_images:,} / {args.scale_images:,} '
      'images): tiny PNG digits on local disk, the scoring command on '
      'DirectRunner in-process, each run in a fresh process; medians of '
      f'{args.runs} round{"" if args.runs == 1 else "s"} '
      f'({results.machine()}; {minutes:.0f} minutes in all).',
      '',
      results.markdown_table(
          ['figure', 'value', 'target'],
          [['start-up: command to first scored image (s)',
            f"{found['startup']:.1f}", 'at most 5'],
           [f'steady state, {args.images:,} to {args.large_images:,} images, '
            '/ model alone (decode + predict)', f"{found['ratio']:.2f}",
            'at least 0.9']]),
      '',
      f"Start-up in each round: {each} s. Steady state "
      f"{found['steady']:,.0f} images/s ({args.images:,} images in "
      f"{found['small_seconds']:.1f} s, {args.large_images:,} in "
      f"{found['large_seconds']:.1f} s); the model alone "
      f"{found['model']:,.0f} images/s on the {args.large_images:,} files.",
      '',
      results.markdown_table(
          ['input', 'images', 'first scored (s)', 'all scored (s)'], rows),
  ]
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
