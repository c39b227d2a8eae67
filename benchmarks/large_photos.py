r"""Large photos: full vs DCT-scaled JPEG decode, count-only vs pixel-bounded
batches, side by side.

  python benchmarks/large_photos.py            # full size (coordinator)
  python benchmarks/large_photos.py --quick    # smoke run, about 3 minutes

Writes a mixed collection under --work_dir: --thumbnails PNG digits (28 x 28)
beside --photos large JPEGs of the same digits (half 4000 x 3000, half
8000 x 6000; with --quick fewer and smaller), made with Pillow. A model is
trained once (mnist_sample, 1 epoch) and exported twice: as trained (its
signature decodes large JPEGs at 1/2, 1/4 or 1/8: metadata.json
`input.jpeg_dct_ratios`) and with full-size decoding (the metadata without
the ratios, as artifacts exported before them). Then each of four variants
scores the whole collection with `batch_predict.pipeline` (DirectRunner,
in-process) in a fresh process:

  full decode,   count-only batches   (--max_batch_pixels=0: before issue 17)
  full decode,   pixel-bounded        (--max_batch_pixels default)
  scaled decode, count-only batches
  scaled decode, pixel-bounded        (after issue 17: the defaults)

and reports images/s (wall clock for the whole run, as a user sees it), the
peak resident memory of the measuring process (`os.wait4`'s `ru_maxrss`),
how many inputs were scored or became error records (a batch the model runs
out of memory on is halved; a photo too large alone is an error record),
and the top-1 accuracy on the large photos, whose labels are the digits
they show: the two decodes must agree. The parent never imports
TensorFlow, so its own memory does not count in its children's peaks.

The full run writes about 1.5 GB of JPEGs and takes an estimated 30 minutes on 2
cores (most of it the full-size decodes); the full-decode, count-only
variant (the scorer before issue 17) may need several GB of memory: a run
that is killed shows as failed, with its peak. Timings on a shared machine
are noisy: compare medians over --runs.
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION_TITLE = ('## Large photos: full vs scaled JPEG decode, count-only vs '
                 'pixel-bounded batches')
_WRITTEN = '.written'
_VARIANTS = (
    # (key, label, artifact, extra scorer flags)
    ('full_count', 'full decode, count-only batches', 'full',
     ('--max_batch_pixels=0',)),
    ('full_pixels', 'full decode, pixel-bounded batches', 'full', ()),
    ('scaled_count', 'scaled decode, count-only batches', 'scaled',
     ('--max_batch_pixels=0',)),
    ('scaled_pixels', 'scaled decode, pixel-bounded batches', 'scaled', ()),
)


def _child_env():
  return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')


def _child(*flags, check=True):
  """Runs this script in a fresh process.

  Returns:
    (its last stdout line, or None if it failed and not `check`; its peak
    RSS in MB).
  """
  command = [sys.executable, os.path.abspath(__file__), *flags]
  with tempfile.TemporaryFile('w+') as stdout:
    process = subprocess.Popen(command, cwd=REPO, env=_child_env(),
                               stdout=stdout, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code and check:
      raise RuntimeError(f'{command} exited {code}')
    stdout.seek(0)
    lines = stdout.read().strip().splitlines()
  if code:
    return None, usage.ru_maxrss / 1024
  return (lines[-1] if lines else ''), usage.ru_maxrss / 1024


# --------------------------------------------------------------------------
# The collection and the two artifacts (written by child processes).


def _photo(digit, width, height):
  """A JPEG photo of a 28 x 28 digit, upscaled smoothly to width x height."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.fromarray(digit).resize((width, height), Image.BILINEAR)
  buffer = io.BytesIO()
  image.convert('RGB').save(buffer, 'JPEG', quality=90)
  return buffer.getvalue()


def write_collection(folder, thumbnails, photos, sizes):
  """Writes the thumbnails (PNG) and photos (JPEG), each named by its label."""
  from trainer.data import samples  # pylint: disable=g-import-not-at-top
  from trainer.data import sources  # pylint: disable=g-import-not-at-top
  source = sources.load_mnist_sample(0.1, 0.1)
  digits = [(pixels[..., 0], int(label)) for pixels, label in
            source.examples('test').as_numpy_iterator()]
  os.makedirs(folder, exist_ok=True)
  for index in range(thumbnails):
    pixels, label = digits[index % len(digits)]
    with open(os.path.join(folder, f'thumb-{index:05d}-{label}.png'),
              'wb') as f:
      f.write(samples.encode(pixels[..., None], 'png'))
  for index in range(photos):
    pixels, label = digits[(index * 7) % len(digits)]
    width, height = sizes[index % len(sizes)]
    with open(os.path.join(folder, f'photo-{index:04d}-{label}.jpg'),
              'wb') as f:
      f.write(_photo(pixels, width, height))
  with open(folder + _WRITTEN, 'w') as f:  # Beside it: not an input.
    f.write('done\n')


def export_full_size_copy(scaled_dir, full_dir):
  """The same model, exported with a signature that decodes at full size."""
  from trainer import artifact  # pylint: disable=g-import-not-at-top
  from trainer import export  # pylint: disable=g-import-not-at-top
  metadata = artifact.read_metadata(scaled_dir)
  metadata['input'].pop('jpeg_dct_ratios', None)
  export.export_model(export.load_keras_model(scaled_dir), full_dir, metadata)


def prepare(args):
  """(collection folder, {'scaled': export, 'full': export})."""
  folder = os.path.join(args.work_dir, f'collection-{args.thumbnails}-'
                        f'{args.photos}-{args.photo_scale}')
  if not os.path.exists(folder + _WRITTEN):
    _child('--measure=write', f'--work_dir={args.work_dir}',
           f'--images_dir={folder}', f'--thumbnails={args.thumbnails}',
           f'--photos={args.photos}', f'--photo_scale={args.photo_scale}')
  job_dir = os.path.join(args.work_dir, f'job-{args.train_examples}')
  scaled = os.path.join(job_dir, 'export')
  if not os.path.exists(os.path.join(scaled, '_COMPLETE')):
    subprocess.run([sys.executable, '-m', 'trainer.task',
                    f'--job_dir={job_dir}', '--epochs=1',
                    f'--train_examples={args.train_examples}'], cwd=REPO,
                   env=_child_env(), check=True, capture_output=True)
  full = os.path.join(args.work_dir,
                      f'export-full-size-{args.train_examples}')
  if not os.path.exists(os.path.join(full, '_COMPLETE')):
    _child('--measure=export_full', f'--model_dir={scaled}',
           f'--images_dir={full}')
  return folder, {'scaled': scaled, 'full': full}


# --------------------------------------------------------------------------
# One measurement (in a child process).


def measure(model_dir, folder, output, flags):
  """Scores the collection once; returns the figures as a dict."""
  import logging  # pylint: disable=g-import-not-at-top
  from batch_predict import outputs  # pylint: disable=g-import-not-at-top
  from batch_predict import pipeline  # pylint: disable=g-import-not-at-top
  logging.getLogger().setLevel(logging.WARNING)
  start = time.perf_counter()
  result = pipeline.run([f'--model_dir={model_dir}', f'--input={folder}',
                         f'--output={output}', '--num_shards=1', *flags],
                        save_main_session=False)
  seconds = time.perf_counter() - start
  totals = pipeline.summarize(result)
  predictions = outputs.read_records(output, outputs.PREDICTIONS)
  errors = outputs.read_records(output, outputs.ERRORS)
  photos = [r for r in predictions if '/photo-' in r['uri']]
  correct = sum(r['label'] == r['uri'].rsplit('-', 1)[1].split('.')[0]
                for r in photos)
  return {'seconds': seconds, 'scored': totals.get('images_scored', 0),
          'errors': len(errors),
          'error_kinds': sorted({r['kind'] for r in errors}),
          'photos_scored': len(photos), 'photos_correct': correct,
          'batches_split': totals.get('batches_split_out_of_memory', 0)}


# --------------------------------------------------------------------------
# Orchestration and report.


def _row(label, runs, total):
  peak = f"{max(run['peak_mb'] for run in runs):,.0f}"
  failed = sum(1 for run in runs if run.get('failed'))
  runs = [run for run in runs if not run.get('failed')]
  if not runs:
    return [label, 'failed', f'{failed} run(s) failed', peak, '', '', '']
  rates = [total / run['seconds'] for run in runs]
  last = runs[-1]
  photos = last['photos_scored']
  accuracy = (f"{last['photos_correct'] / photos:.3f}" if photos else 'n/a')
  return [label, f'{statistics.median(rates):,.1f}',
          ', '.join(f'{r:,.1f}' for r in rates) +
          (f'; {failed} failed' if failed else ''), peak,
          f"{last['scored']:,}", f"{last['errors']:,}"
          + (f" ({', '.join(last['error_kinds'])})" if last['errors'] else ''),
          accuracy]


def run_all(args):
  folder, artifacts = prepare(args)
  total = len(os.listdir(folder))
  print(f'{total} inputs in {folder}; {args.runs} run(s) of each variant.')
  runs = {key: [] for key, _, _, _ in _VARIANTS}
  start = time.perf_counter()
  # Round by round, so that the machine's slow spells fall on every variant.
  for round_index in range(args.runs):
    for key, label, which, flags in _VARIANTS:
      output = os.path.join(args.work_dir, 'scores', key, 'run')
      line, peak_mb = _child(
          '--measure=score', f'--model_dir={artifacts[which]}',
          f'--images_dir={folder}', f'--output={output}',
          *[f'--scorer_flag={flag}' for flag in flags], check=False)
      if line is None:  # Killed (out of memory, say): that is the result.
        runs[key].append({'failed': True, 'peak_mb': peak_mb})
        print(f'round {round_index + 1}: {label}: FAILED, peak '
              f'{peak_mb:,.0f} MB')
        continue
      figures = json.loads(line)
      figures['peak_mb'] = peak_mb
      runs[key].append(figures)
      print(f'round {round_index + 1}: {label}: '
            f"{total / figures['seconds']:,.1f} images/s, peak "
            f'{peak_mb:,.0f} MB')
  minutes = (time.perf_counter() - start) / 60
  header = ['variant', 'images/s (median)', 'each run', 'peak RSS (MB)',
            'scored', 'error records', 'photo accuracy']
  rows = [_row(label, runs[key], total) for key, label, _, _ in _VARIANTS]
  write_results(header, rows, args, total, minutes)


def write_results(header, rows, args, total, minutes):
  sys.path.insert(0, REPO)
  from benchmarks import results  # pylint: disable=g-import-not-at-top
  photo_sizes = ', '.join(f'{w} x {h}' for w, h in _sizes(args))
  body = '\n\n'.join([
      f'`python benchmarks/large_photos.py{" --quick" if args.quick else ""}`'
      f' ({results.machine()}; {minutes:.1f} min). {total:,} inputs: '
      f'{args.thumbnails:,} PNG thumbnails (28 x 28) and {args.photos} JPEG '
      f'photos of digits ({photo_sizes}), scored by a 28 x 28 grey model '
      '(mnist_sample, 1 epoch) with `batch_predict.pipeline` on '
      'DirectRunner, in-process, default --max_batch_size (64) and '
      '--max_batch_pixels (30 million) unless "count-only" '
      '(--max_batch_pixels=0).',
      results.markdown_table(header, rows),
      'Peak RSS: the measuring process (model, runner and decoding). Photo '
      'accuracy: top-1 on the photos, whose labels are the digits they show; '
      'the full and scaled decodes must agree.' +
      (' A --quick smoke run: small sizes, one run; not the figures to '
       'quote.' if args.quick else '')])
  results.write_section(SECTION_TITLE, body, args.results)


def _sizes(args):
  return tuple((int(w * args.photo_scale), int(h * args.photo_scale))
               for w, h in ((4000, 3000), (8000, 6000)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='Smoke run: 300 thumbnails, 6 photos of 2000 x '
                      '1500 and 4000 x 3000, one run.')
  parser.add_argument('--work_dir', default='/tmp/large_photos_benchmark')
  parser.add_argument('--thumbnails', type=int, default=3000)
  parser.add_argument('--photos', type=int, default=100)
  parser.add_argument('--photo_scale', type=float, default=1.0,
                      help='Scale of the photo sizes (4000 x 3000, 8000 x '
                      '6000).')
  parser.add_argument('--train_examples', type=int, default=2000)
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--results',
                      default=os.path.join(REPO, 'benchmarks', 'RESULTS.md'))
  parser.add_argument('--measure', help=argparse.SUPPRESS)
  parser.add_argument('--model_dir', help=argparse.SUPPRESS)
  parser.add_argument('--images_dir', help=argparse.SUPPRESS)
  parser.add_argument('--output', help=argparse.SUPPRESS)
  parser.add_argument('--scorer_flag', action='append', default=[],
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.quick:
    args.thumbnails, args.photos, args.runs = 300, 6, 1
    args.train_examples = min(args.train_examples, 500)
    args.photo_scale = 0.5
  if args.measure:  # A child process.
    sys.path.insert(0, REPO)
    if args.measure == 'write':
      write_collection(args.images_dir, args.thumbnails, args.photos,
                       _sizes(args))
    elif args.measure == 'export_full':
      export_full_size_copy(args.model_dir, args.images_dir)
    elif args.measure == 'score':
      print(json.dumps(measure(args.model_dir, args.images_dir, args.output,
                               args.scorer_flag)))
    return
  run_all(args)


if __name__ == '__main__':
  main()
