r"""Scoring throughput: the Beam pipeline beside the model alone, and memory.

  python benchmarks/scoring_throughput.py                 # trains a model
  python benchmarks/scoring_throughput.py --model_dir=/tmp/mnist_sample/export

Writes 10,000 (and 50,000) PNG digits under --work_dir, then measures, each
in a fresh process and --runs times:
  * model alone: one process reads the files and calls the artifact's
    `serving_default` (decode + predict) in batches of --batch_size;
  * pipeline in-process: `batch_predict.pipeline` on DirectRunner;
  * pipeline multi-process: the same with
    `--direct_running_mode=multi_processing --direct_num_workers=2`.
Prints images/s (median of the runs, and every run) and the pipeline/model
ratio. Pipeline times are wall-clock for the whole run (listing, model
loading, scoring, writing), as a user sees it; the model-alone loop is timed
after loading and warming up the model.

Memory: the parent waits for each measuring process with `os.wait4`, whose
`ru_maxrss` is the peak resident set of that process or of any process it
reaped (the multi-processing workers), whichever is larger. Its ratio between
--large_images and --images shows whether memory grows with the input. The
columns `main` and `workers` are RUSAGE_SELF and RUSAGE_CHILDREN seen from
inside the measuring process (`workers` also counts short-lived forks of it).

Timings on a shared machine are noisy: compare medians, and re-run.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WRITTEN = '_WRITTEN'
SECTION_TITLE = '## Scoring throughput and memory: the pipeline beside the model'


def _child_env():
  return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')


def write_images(folder, count):
  """Writes `count` PNG digits (the bundled ones, cycled)."""
  from trainer.data import samples  # pylint: disable=g-import-not-at-top
  from trainer.data import sources  # pylint: disable=g-import-not-at-top
  source = sources.load_mnist_sample(0.1, 0.1)
  encoded = [(samples.encode(pixels, 'png'), int(label)) for pixels, label in
             source.examples('train').as_numpy_iterator()]
  os.makedirs(folder, exist_ok=True)
  for index in range(count):
    png, label = encoded[index % len(encoded)]
    with open(os.path.join(folder, f'img-{index:06d}-{label}.png'), 'wb') as f:
      f.write(png)
  with open(os.path.join(folder, _WRITTEN), 'w') as f:
    f.write(f'{count}\n')


def ensure_images(work_dir, count):
  """The folder of `count` PNG files, written by a child process if new.

  The orchestrating process never imports TensorFlow: Linux keeps a
  process's peak RSS across fork and exec, so a large parent would inflate
  every measurement of its children.
  """
  folder = os.path.join(work_dir, f'png-{count}')
  if not os.path.exists(os.path.join(folder, _WRITTEN)):
    subprocess.run([sys.executable, os.path.abspath(__file__),
                    '--measure=write_images', f'--images_dir={folder}',
                    f'--images={count}'], cwd=REPO, env=_child_env(),
                   check=True)
  return folder


def train_model(work_dir):
  job_dir = os.path.join(work_dir, 'job')
  if not os.path.exists(os.path.join(job_dir, 'export', '_COMPLETE')):
    subprocess.run([sys.executable, '-m', 'trainer.task',
                    f'--job_dir={job_dir}', '--epochs=1',
                    '--train_examples=2000'], cwd=REPO, env=_child_env(),
                   check=True, capture_output=True)
  return os.path.join(job_dir, 'export')


# --------------------------------------------------------------------------
# Measurements, each run in a fresh process (`--measure=...`).


def _peaks():
  return {
      'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      'peak_worker_rss_mb': resource.getrusage(
          resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
  }


def measure_model_alone(model_dir, folder, batch_size):
  from batch_predict import model_handler  # pylint: disable=g-import-not-at-top
  classifier = model_handler.load_classifier(model_dir)
  paths = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                 if name.endswith('.png'))
  classifier.predict([open(paths[0], 'rb').read()])  # Warm up (tracing).
  start = time.perf_counter()
  for begin in range(0, len(paths), batch_size):
    batch = []
    for path in paths[begin:begin + batch_size]:
      with open(path, 'rb') as f:
        batch.append(f.read())
    classifier.predict(batch)
  seconds = time.perf_counter() - start
  return dict(images=len(paths), seconds=seconds, **_peaks())


def measure_pipeline(model_dir, folder, output, extra_flags):
  import logging  # pylint: disable=g-import-not-at-top
  from batch_predict import pipeline  # pylint: disable=g-import-not-at-top
  from trainer import cli  # pylint: disable=g-import-not-at-top
  logging.getLogger().setLevel(logging.WARNING)
  # As the command does before `run` (pipeline.main): else the first import
  # of TensorFlow, with Keras, falls in the timed run (5 s of it here).
  cli.import_tensorflow_without_keras()
  start = time.perf_counter()
  result = pipeline.run(
      [f'--model_dir={model_dir}', f'--input={folder}/*.png',
       f'--output={output}', *extra_flags], save_main_session=False)
  seconds = time.perf_counter() - start
  scored = pipeline.summarize(result).get('images_scored', 0)
  return dict(images=scored, seconds=seconds, **_peaks())


def run_measurement(kind, model_dir, folder, args, extra_flags=()):
  command = [sys.executable, os.path.abspath(__file__), f'--measure={kind}',
             f'--model_dir={model_dir}', f'--images_dir={folder}',
             f'--work_dir={args.work_dir}', f'--batch_size={args.batch_size}']
  command += [f'--pipeline_flag={flag}' for flag in extra_flags]
  with tempfile.TemporaryFile('w+') as stdout:
    process = subprocess.Popen(command, cwd=REPO, env=_child_env(),
                               stdout=stdout, stderr=subprocess.DEVNULL)
    # wait4 reports this child's peak RSS, or that of any process it reaped
    # (the multi-processing workers), whichever is larger.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
      raise RuntimeError(f'{command} exited {process.returncode}')
    stdout.seek(0)
    result = json.loads(stdout.read().strip().splitlines()[-1])
  result['peak_total_rss_mb'] = usage.ru_maxrss / 1024
  return result


# --------------------------------------------------------------------------
# Orchestration and report.

_MULTI = ('--direct_running_mode=multi_processing', '--direct_num_workers=2')


def _summary(label, runs):
  rates = [run['images'] / run['seconds'] for run in runs]
  return {
      'label': label,
      'images': runs[0]['images'],
      'median_rate': statistics.median(rates),
      'rates': rates,
      'peak_rss_mb': max(run['peak_rss_mb'] for run in runs),
      'peak_worker_rss_mb': max(run['peak_worker_rss_mb'] for run in runs),
      'peak_total_rss_mb': max(run['peak_total_rss_mb'] for run in runs),
  }


def _print_row(row):
  rates = ', '.join(f'{r:,.0f}' for r in row['rates'])
  print(f"{row['label']:<34} {row['images']:>7,} {row['median_rate']:>9,.0f} "
        f"  ({rates})  peak RSS: main {row['peak_rss_mb']:,.0f} MB, workers "
        f"{row['peak_worker_rss_mb']:,.0f} MB")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--work_dir', default='/tmp/scoring_benchmark')
  parser.add_argument('--model_dir', default='',
                      help='An export to score with (default: train one).')
  parser.add_argument('--images', type=int, default=10_000)
  parser.add_argument('--large_images', type=int, default=50_000,
                      help='Second size for the memory check (0: skip).')
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--batch_size', type=int, default=64,
                      help='Batch size of the model-alone loop (the pipeline '
                      'default).')
  parser.add_argument('--results',
                      default=os.path.join(REPO, 'benchmarks', 'RESULTS.md'),
                      help='Markdown file to write the table to.')
  parser.add_argument('--measure', help=argparse.SUPPRESS)
  parser.add_argument('--images_dir', help=argparse.SUPPRESS)
  parser.add_argument('--pipeline_flag', action='append', default=[],
                      help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.measure:  # A child process: measure once, print JSON.
    sys.path.insert(0, REPO)
    if args.measure == 'write_images':
      write_images(args.images_dir, args.images)
      return
    if args.measure == 'model':
      result = measure_model_alone(args.model_dir, args.images_dir,
                                   args.batch_size)
    else:
      output = os.path.join(args.work_dir, 'scores', 'run')
      result = measure_pipeline(args.model_dir, args.images_dir, output,
                                args.pipeline_flag)
    print(json.dumps(result))
    return

  model_dir = args.model_dir or train_model(args.work_dir)
  small = ensure_images(args.work_dir, args.images)
  print(f'Model {model_dir}; {os.cpu_count()} CPUs; {args.runs} runs each.')
  print(f"{'':<34} {'images':>7} {'images/s':>9}   (each run)")
  variants = (('model', 'model alone, 1 process', 'model', ()),
              ('direct', 'pipeline, DirectRunner in-process', 'pipeline', ()),
              ('multi', 'pipeline, multi_processing x2', 'pipeline', _MULTI))
  start = time.perf_counter()
  # Round by round, so that the machine's slow spells fall on every variant.
  runs = {key: [] for key, _, _, _ in variants}
  for _ in range(args.runs):
    for key, _, kind, flags in variants:
      runs[key].append(run_measurement(kind, model_dir, small, args, flags))
  rows = {key: _summary(label, runs[key]) for key, label, _, _ in variants}
  for row in rows.values():
    _print_row(row)
  ratios = {key: rows[key]['median_rate'] / rows['model']['median_rate']
            for key in ('direct', 'multi')}
  for key, ratio in ratios.items():
    print(f"ratio {rows[key]['label']} / model alone: {ratio:.2f}")
  large_rows = {}
  if args.large_images:
    large = ensure_images(args.work_dir, args.large_images)
    large_runs = {'direct': [], 'multi': []}
    for _ in range(max(1, args.runs - 1)):
      for key, flags in (('direct', ()), ('multi', _MULTI)):
        large_runs[key].append(
            run_measurement('pipeline', model_dir, large, args, flags))
    for key, measured in large_runs.items():
      large_rows[key] = _summary(rows[key]['label'], measured)
      _print_row(large_rows[key])
  write_results(rows, large_rows, ratios, args,
                (time.perf_counter() - start) / 60)


def write_results(rows, large_rows, ratios, args, minutes):
  """Writes the section of benchmarks/RESULTS.md."""
  sys.path.insert(0, REPO)
  from benchmarks import results  # pylint: disable=g-import-not-at-top
  table_rows = []
  for key, row in list(rows.items()) + [(k, r) for k, r in
                                        large_rows.items()]:
    ratio = row['median_rate'] / rows['model']['median_rate']
    table_rows.append([
        row['label'], row['images'], f"{row['median_rate']:,.0f}",
        ', '.join(f'{r:,.0f}' for r in row['rates']),
        '' if key == 'model' else f'{ratio:.2f}',
        f"{row['peak_total_rss_mb']:,.0f}"])
  lines = [
      '`python benchmarks/scoring_throughput.py`: PNG digits scored with the '
      'default (cnn_bn) export, each measurement in a fresh process, '
      f'{args.runs} alternating rounds ({results.machine()}; '
      f'{minutes:.0f} minutes in all). Pipeline rates are wall-clock for the '
      'whole run as a user sees it (start-up, listing, model loading, '
      'scoring, writing); the model-alone loop (read files, decode + predict '
      f'in batches of {args.batch_size}) is timed after loading the model.',
      '',
      results.markdown_table(
          ['run', 'images', 'images/s (median)', 'each run',
           'ratio to model alone', 'peak RSS MB'], table_rows),
      '',
      f"Target: the pipeline at least 0.6 of the model's own rate: "
      f"{ratios['direct']:.2f} in-process "
      f"({'met' if ratios['direct'] >= 0.6 else 'NOT met'}).",
  ]
  for key, row in large_rows.items():
    growth = row['peak_total_rss_mb'] / rows[key]['peak_total_rss_mb']
    lines.append(
        f"Peak memory, {args.large_images:,} / {args.images:,} images, "
        f"{row['label']}: {growth:.2f} (target at most 1.2: "
        f"{'met' if growth <= 1.2 else 'NOT met'}).")
  results.write_section(SECTION_TITLE, '\n'.join(lines), args.results)


if __name__ == '__main__':
  main()
