"""The scoring command's flags, and their validation into one `ScoringConfig`.

The flags are a Beam `PipelineOptions` subclass, so they travel with the
pipeline's own options (`--runner`, `--project`, ...). They live here rather
than in `pipeline.py` because that module runs as `__main__`, and Beam
registers every `PipelineOptions` subclass by its qualified name: a second
copy under another name would clash.

The flags themselves are defined in `ScoringFlags`, which needs no Beam, and
this module imports Beam only when it is used: `check_flags` reads argv
before Beam and TensorFlow are imported (1.5 s warm, 8-15 s in a fresh
virtual environment), so a misspelled or missing flag is reported at once.
`ScoringOptions` (ScoringFlags on Beam's PipelineOptions) is made on first
use, or at import when Beam is already loaded (a Dataflow worker).

`build_config` checks everything a run needs before any work starts: the
model is a complete artifact whose SavedModel loads and returns one
probability per label (`artifact.check`), `--input` names files, the
numbers are sane, and on Dataflow every path is one the workers can reach.
Checking reads the options and never changes them: the one flag whose
value Beam misreads, its own `--dry_run`, is normalised in argv before the
options are made (`normalize_dry_run`).
"""

import argparse
import dataclasses
import difflib
import functools
import os
import sys
import tempfile

from batch_predict import outputs
from trainer import artifact
from trainer import errors
from trainer import storage

DEFAULT_TOP_K = 3
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_NUM_SHARDS = 10
DEFAULT_MAX_BATCH_SIZE = 64
# Decoding, converting and resizing costs about 33 bytes of memory per
# decoded pixel at its peak (one 60-megapixel JPEG: 2.0 GB, measured), so
# this bounds a batch's decoding at about 1 GB.
DEFAULT_MAX_BATCH_PIXELS = 30_000_000
# The prefix inside a folder given as --output (`--output=DIR/` writes
# DIR/scores-predictions-*.jsonl and DIR/scores-errors-*.jsonl).
FOLDER_PREFIX = 'scores'
_REMOTE_RUNNERS = ('DataflowRunner', 'TestDataflowRunner')
_DRY_RUN_FLAG = '--dry_run'
_TRUE = ('true', '1', 'yes')
_FALSE = ('false', '0', 'no', '')


class ConfigError(errors.UserError, ValueError):
  """The flags do not describe a run that can work; the message says why."""

  kind = 'invalid_flag'


class ScoringFlags:
  """Flags of `python -m batch_predict.pipeline` (beside Beam's own).

  Without Beam, so that `check_flags` can read them first; `ScoringOptions`
  puts them on Beam's PipelineOptions.
  """

  # `_add_argparse_args` is the hook Beam documents for defining options
  # (PipelineOptions' docstring), private by name only.
  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--model_dir',
        help='The model artifact: JOB_DIR/export of `python -m trainer.task` '
        '(local, gs:// or /gcs/). Required.')
    parser.add_argument(
        '--input',
        help='What to score: a glob (`*` within a folder, `**` across '
        'folders), a folder (every file under it), a text file of image URIs '
        '(one per line), or one image. Local, gs:// or /gcs/. Required.')
    parser.add_argument(
        '--input_format', default='auto',
        help='How a single --input file is read: auto (by its extension: '
        'an image extension such as .jpg or .png is one image, .csv and '
        '.jsonl a manifest, anything else a list of URIs; a name holding '
        '.tfrecord is TFRecord shards), image, list, csv, jsonl or tfrecord '
        '(this one for globs too).')
    parser.add_argument(
        '--uri_column', default='uri',
        help='The column of a CSV or JSONL manifest that holds each image\'s '
        'URI (relative ones start at the manifest\'s folder). A `label` '
        'column is the true label; every other column comes back unchanged '
        'in the image\'s record.')
    parser.add_argument(
        '--output',
        help='Output prefix: writes PREFIX-predictions-SSSSS-of-NNNNN.jsonl '
        'and PREFIX-errors-SSSSS-of-NNNNN.jsonl (.csv, .parquet with '
        '--output_format). A run replaces the shards of earlier runs (in any '
        'format) once its own are complete, and deletes nothing else. '
        'An existing folder, or a path ending in /, is the folder to write '
        f'in: DIR/ means the prefix DIR/{FOLDER_PREFIX}. Required.')
    parser.add_argument(
        '--break_lease', action='store_true', default=False,
        help='Take over the gs:// lease on --output that another scorer '
        'holds and renews (one whose heartbeat stopped 3 minutes ago is taken '
        'over anyway; a local lease ends with its process). Only when you '
        'know that scorer is gone.')
    parser.add_argument(
        '--top_k', type=int, default=DEFAULT_TOP_K,
        help='How many classes each prediction lists, most probable first.')
    parser.add_argument(
        '--max_batch_size', type=int, default=DEFAULT_MAX_BATCH_SIZE,
        help='Most images per batch (--max_batch_pixels bounds what they '
        'cost decoded).')
    parser.add_argument(
        '--min_batch_size', type=int, default=None,
        help='Smallest batch (default: --max_batch_size, so batches have a '
        'fixed size and memory is reached at the first batch). Lower, '
        'RunInference adapts the batch size between the two to the time a '
        'batch takes; only with --max_batch_pixels=0 (pixel-bounded batches '
        'fill up to their bound).')
    parser.add_argument(
        '--max_image_pixels', type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
        help='Images with more pixels (width x height, from the header) are '
        'refused without decoding: they become error records.')
    parser.add_argument(
        '--max_file_bytes', type=int, default=DEFAULT_MAX_FILE_BYTES,
        help='Files larger than this are not read: they become error '
        'records.')
    parser.add_argument(
        '--num_shards', type=int, default=DEFAULT_NUM_SHARDS,
        help='Files per output. All are written, even empty ones, so a '
        'finished run has exactly this many of each.')
    parser.add_argument(
        '--progress_interval_secs', type=float, default=30.0,
        help='How often each worker logs how many images it has scored.')
    parser.add_argument(
        '--output_format', default=outputs.JSONL,
        help='Format of both outputs: jsonl (JSON lines), csv (a header row; '
        'top_k as JSON text) or parquet (top_k a list of {label, score}; '
        'loads into BigQuery with bq load --source_format=PARQUET '
        '--parquet_enable_list_inference). The shards are named '
        'PREFIX-predictions-SSSSS-of-NNNNN.FORMAT.')
    parser.add_argument(
        '--labels_from_folders', action='store_true', default=False,
        help='Label each image with its class folder\'s name, as the '
        'trainer\'s image_folder dataset reads DIR/<class>/...: for a folder '
        '--input the folder right below it, else the folder holding the '
        'file. The label is the record\'s `true_label`.')
    parser.add_argument(
        '--evaluate', action='store_true', default=False,
        help='With labelled inputs (--labels_from_folders): also write '
        'PREFIX-evaluation.json (per-class precision/recall/F1, confusion '
        'matrix, top-k accuracy, calibration, the most confident mistakes) '
        'and PREFIX-evaluation.png. Unlabelled images and errors are '
        'counted, not evaluated.')
    parser.add_argument(
        '--max_batch_pixels', type=int, default=DEFAULT_MAX_BATCH_PIXELS,
        help='Most decoded pixels in one batch (default 30 million: decoding '
        'costs about 33 bytes a pixel, so a batch decodes in about 1 GB of '
        'memory, per worker thread). Sizes come from the headers (a large '
        'JPEG counts at the scale the model decodes it to); --max_batch_size '
        'still caps the count. An image larger than this is scored alone. '
        '0: batches bounded by count only (between --min_batch_size and '
        '--max_batch_size; with pixel bounds, batches fill up to them).')
    parser.add_argument(
        '--model_copies', type=int, default=None,
        help='Copies of the model per worker VM, shared by all its SDK '
        'processes, one per GPU (each copy on its own GPU). Default: the '
        'count of --dataflow_service_options=worker_accelerator=...;count:N '
        'when given, else 0: each worker process loads its own copy (CPU '
        'workers).')
    parser.add_argument(
        '--verbosity', type=int, default=0,
        help='1 also shows what TensorFlow and Beam log themselves (their '
        'start-up notes, runner choices and warnings), which are hidden by '
        'default; they are shown anyway when the run fails.')
    parser.add_argument(
        '--embeddings', action='store_true', default=False,
        help='Also write the embedding cache of the two-stage transfer: '
        'PREFIX-embeddings-SSSSS-of-NNNNN.tfrecord.gz (a tf.train.Example '
        'per scored image: uri, embedding = the model\'s feature-extractor '
        'output, and label/label_name for labelled inputs) and '
        'PREFIX-embeddings.json (fingerprint, input shape, size, label '
        'names, count), for trainer.task --dataset=embeddings. Needs a '
        'convolutional model\'s artifact (not softmax/mlp).')
    parser.add_argument(
        '--embeddings_only', action='store_true', default=False,
        help='As --embeddings, without the predictions: writes the '
        'embeddings and the errors only (every input in exactly one).')


def _beam_options():
  """Beam's options module, imported on first use (see the module doc)."""
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  return pipeline_options


@functools.cache
def scoring_options_class():
  """`ScoringOptions`: the scoring flags as a Beam PipelineOptions subclass.

  Made once, here rather than at import, so that importing this module
  imports no Beam. Named as if defined at module level, which is how Beam
  registers it and how pickle finds it.
  """
  class ScoringOptions(ScoringFlags, _beam_options().PipelineOptions):
    __doc__ = ScoringFlags.__doc__

  ScoringOptions.__module__ = __name__
  ScoringOptions.__qualname__ = 'ScoringOptions'
  globals()['ScoringOptions'] = ScoringOptions
  return ScoringOptions


def __getattr__(name):  # `options.ScoringOptions` before it is made.
  if name == 'ScoringOptions':
    return scoring_options_class()
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
  """A checked scoring run: paths normalized, the model's labels read."""
  model_dir: str
  source: object  # inputs.InputSource (not imported here: it imports Beam)
  output: str
  labels: tuple
  top_k: int
  min_batch_size: int
  max_batch_size: int
  max_image_pixels: int
  max_file_bytes: int
  num_shards: int
  progress_interval_secs: float
  break_lease: bool = False
  labels_from_folders: bool = False
  output_format: str = outputs.JSONL
  # A manifest input's checked header (manifests.Manifest), else None.
  manifest: object = None
  # A manifest's own columns, in its order: its records' extra fields.
  field_names: tuple = ()
  # The label names of a labelled folder input: its sorted class folders
  # (empty when not known before the run).
  label_names: tuple = ()
  evaluate: bool = False
  max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS
  # The model's input (height, width) and the scales its signature may
  # decode a JPEG at (metadata.json), for each image's decoded size.
  input_size: tuple = ()
  jpeg_dct_ratios: tuple = ()
  # Model copies per worker VM shared by its processes (0: one per process).
  model_copies: int = 0
  # --embeddings (or --embeddings_only, which also skips the predictions).
  embeddings: bool = False
  embeddings_only: bool = False
  # metadata.json's `embeddings` entry (fingerprint, size), with them.
  embeddings_entry: dict = None
  # The model's input (height, width, channels), from metadata.json.
  input_shape: tuple = ()
  # Names this run's staging folder (outputs.staging_folder).
  run_id: str = dataclasses.field(default_factory=outputs.new_run_id)


def is_remote_runner(options):
  """Whether the pipeline runs on Dataflow (paths must be gs://)."""
  runner = options.view_as(_beam_options().StandardOptions).runner or ''
  return str(runner).rsplit('.', 1)[-1] in _REMOTE_RUNNERS


def gpus_per_worker(options):
  """The GPUs each Dataflow worker gets: the `count` of the
  `worker_accelerator` service option (0 without one)."""
  service_options = options.view_as(
      _beam_options().GoogleCloudOptions).dataflow_service_options or []
  for option in service_options:
    name, _, value = option.partition('=')
    if name.strip() != 'worker_accelerator':
      continue
    for part in value.split(';'):
      key, _, count = part.partition(':')
      if key.strip() == 'count' and count.strip().isdigit():
        return int(count)
    return 1  # Dataflow's default count.
  return 0


def normalize_dry_run(argv):
  """Reads Beam's own `--dry_run` flag out of `argv`, as a boolean.

  Beam declares it as a string and its runners test the string, to which
  "False" is true: `--dry_run=False` would skip the job's submission. So
  the flag is normalised here, before the options are made: true stays as
  `--dry_run=True`, false is dropped (Beam's default), and the options that
  are checked are the options that run.

  Args:
    argv: the command's flags.

  Returns:
    (argv with --dry_run normalised, whether this is a dry run).

  Raises:
    ConfigError: for a value that is neither true nor false.
  """
  normalized, values = [], []
  arguments = iter(argv)
  for argument in arguments:
    name, equals, value = argument.partition('=')
    if name != _DRY_RUN_FLAG:
      normalized.append(argument)
      continue
    if not equals:  # `--dry_run VALUE`, as argparse also reads it.
      value = next(arguments, '')
    values.append(value)
  value = values[-1] if values else ''  # The last one wins, as in argparse.
  if value.strip().lower() not in _TRUE + _FALSE:
    raise ConfigError(f'{_DRY_RUN_FLAG}={value}: use {_DRY_RUN_FLAG}=True or '
                      'False.')
  dry_run = value.strip().lower() in _TRUE
  return normalized + ([f'{_DRY_RUN_FLAG}=True'] if dry_run else []), dry_run


class _FlagParser(argparse.ArgumentParser):
  """argparse that raises ConfigError instead of printing usage and exiting."""

  def error(self, message):
    raise ConfigError(f'{message}; see --help.')


def check_flags(argv):
  """Checks the scoring flags in `argv` without importing Beam.

  A flag that no Beam option could be (one within a typo of a scoring flag:
  tests/test_options.py checks that no Beam flag is), a missing flag, a
  number out of range and an output place that cannot be written are found
  here; `build_config` checks them again, with the rest, once Beam is
  loaded.

  Raises:
    ConfigError: naming the flag and what to do.
  """
  argv, _ = normalize_dry_run(argv)
  parser = _FlagParser(allow_abbrev=False, add_help=False)
  ScoringFlags._add_argparse_args(parser)  # pylint: disable=protected-access
  flags, rest = parser.parse_known_args(argv)
  misspelt = misspelt_flags(rest, scoring_flag_names())
  if misspelt:
    raise ConfigError(f'Unknown flag(s) {", ".join(misspelt)}; see --help.')
  missing = [f'--{name}' for name in ('model_dir', 'input', 'output')
             if not getattr(flags, name)]
  if missing:
    raise ConfigError(f'Missing {", ".join(missing)}; see --help.')
  numbers = _numbers(flags)
  if flags.model_copies is not None:
    numbers['model_copies'] = flags.model_copies
  _check_numbers(numbers)
  _check_output_format(flags.output_format)
  _check_embeddings(flags)
  _check_output(flags.output)


def _check_embeddings(flags):
  """--embeddings_only writes no predictions, which --evaluate needs."""
  if flags.embeddings_only and flags.evaluate:
    raise ConfigError('--evaluate evaluates predictions, which '
                      '--embeddings_only does not make: use --embeddings '
                      '--evaluate, or drop --evaluate.')


def _check_output_format(output_format):
  if output_format not in outputs.OUTPUT_FORMATS:
    raise ConfigError(f'--output_format={output_format}: use one of '
                      f'{", ".join(outputs.OUTPUT_FORMATS)}.')


def scoring_flag_names():
  """['--model_dir', '--input', ...]: every flag ScoringFlags defines."""
  parser = argparse.ArgumentParser(add_help=False)
  ScoringFlags._add_argparse_args(parser)  # pylint: disable=protected-access
  return [option for action in parser._actions  # pylint: disable=protected-access
          for option in action.option_strings]


def misspelt_flags(argv, names):
  """Flags in `argv` within a typo of one of `names` (and not one of them).

  Returns:
    ['--flag (did you mean --name?)', ...].
  """
  found = []
  for argument in argv:
    flag = argument.split('=', 1)[0]
    if not flag.startswith('--') or flag in names:
      continue
    close = difflib.get_close_matches(flag.replace('-', '_'),
                                      [n.replace('-', '_') for n in names],
                                      n=1, cutoff=0.8)
    if close:
      found.append(f'{flag} (did you mean --{close[0][2:]}?)')
  return found


def _numbers(flags):
  """{flag name: value} of the numeric flags, with min_batch_size's default."""
  numbers = {name: getattr(flags, name) for name in (
      'top_k', 'min_batch_size', 'max_batch_size', 'max_image_pixels',
      'max_file_bytes', 'num_shards', 'progress_interval_secs',
      'max_batch_pixels')}
  if numbers['min_batch_size'] is None:  # Fixed-size batches by default.
    numbers['min_batch_size'] = numbers['max_batch_size']
  return numbers


def unknown_flags(argv):
  """Flags in `argv` that no PipelineOptions class defines.

  Beam only warns about them and carries on, so a typo such as `--top-k=5`
  would silently score with the default; the scoring command refuses them.
  Beam has no public call that returns them (`get_all_options` only logs
  them), so the parser is built the way `get_all_options` builds it: Beam's
  private `_BeamArgumentParser(allow_abbrev=False)` and every subclass's
  `_add_argparse_args`. Checked against Beam 2.77 (setup.py pins <2.78);
  tests/test_options.py fails if a later Beam changes either.
  """
  pipeline_options = _beam_options()
  scoring_options_class()
  parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)  # pylint: disable=protected-access
  classes = {str(cls): cls
             for cls in pipeline_options.PipelineOptions.__subclasses__()}
  for cls in classes.values():
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  _, unknown = parser.parse_known_args(list(argv or []))
  return sorted(arg.split('=', 1)[0] for arg in unknown
                if arg.startswith('-'))


def build_config(options, argv=None):
  """Checks the flags, the model and the input; returns a `ScoringConfig`.

  Args:
    options: the pipeline's `PipelineOptions`.
    argv: the flags `options` were parsed from, to refuse unknown ones.

  Returns:
    A `ScoringConfig`.

  Raises:
    ConfigError: for a missing, unknown or out-of-range flag.
    artifact.ArtifactError: if --model_dir is not a complete, consistent
      artifact.
    inputs.InputError: if --input names nothing to score.
  """
  unknown = unknown_flags(argv)
  if unknown:
    raise ConfigError(f'Unknown flag(s) {", ".join(unknown)}; see --help.')
  flags = options.view_as(scoring_options_class())
  missing = [f'--{name}' for name in ('model_dir', 'input', 'output')
             if not getattr(flags, name)]
  if missing:
    raise ConfigError(f'Missing {", ".join(missing)}; see --help.')
  numbers = _numbers(flags)
  numbers['model_copies'] = (gpus_per_worker(options)
                             if flags.model_copies is None
                             else flags.model_copies)
  _check_numbers(numbers)
  _check_output_format(flags.output_format)
  _check_embeddings(flags)
  model_dir = _normalize('model_dir', flags.model_dir)
  output = _check_output(flags.output)
  if is_remote_runner(options):
    _check_remote(options, {'--model_dir': model_dir, '--input': flags.input,
                            '--output': output})
  embeddings = bool(flags.embeddings or flags.embeddings_only)
  # With --embeddings, an artifact without the signature is refused here,
  # before its SavedModel is loaded.
  labels = artifact.check(model_dir, embeddings=embeddings)
  metadata = artifact.read_metadata(model_dir)
  if flags.top_k > len(labels):
    raise ConfigError(f'--top_k={flags.top_k} is more than the model\'s '
                      f'{len(labels)} classes.')
  return ScoringConfig(
      model_dir=model_dir, output=output, labels=labels,
      break_lease=bool(flags.break_lease), output_format=flags.output_format,
      evaluate=bool(flags.evaluate), input_size=artifact.input_size(metadata),
      jpeg_dct_ratios=artifact.jpeg_dct_ratios(metadata),
      embeddings=embeddings, embeddings_only=bool(flags.embeddings_only),
      embeddings_entry=(artifact.embeddings_entry(metadata, model_dir)
                        if embeddings else None),
      input_shape=artifact.input_size(metadata) + (
          metadata['input']['channels'],),
      **_check_input(flags), **numbers)


def _check_input(flags):
  """What --input names, its manifest's header and its labels, checked.

  Returns:
    The ScoringConfig fields `source`, `manifest`, `field_names`,
    `labels_from_folders` and `label_names`.
  """
  from batch_predict import inputs  # pylint: disable=g-import-not-at-top
  from batch_predict import manifests  # pylint: disable=g-import-not-at-top
  source = inputs.resolve_input(flags.input, flags.input_format)
  labels_from_folders = bool(flags.labels_from_folders)
  if flags.evaluate and not labels_from_folders and source.kind in (
      inputs.GLOB, inputs.URI_LIST, inputs.SINGLE_FILE):
    raise ConfigError('--evaluate needs labelled inputs: add '
                      '--labels_from_folders (class folders hold the images).')
  manifest = None
  if source.kind in inputs.MANIFEST_KINDS:
    manifest = manifests.read_manifest(
        source.path, manifests.CSV if source.kind == inputs.CSV_MANIFEST
        else manifests.JSONL, flags.uri_column)
  if labels_from_folders and manifest and manifest.has_label:
    raise ConfigError(f'--labels_from_folders: the manifest {source.path} '
                      'has a label column already; use one or the other.')
  if labels_from_folders and source.kind == inputs.TFRECORD_SHARDS:
    raise ConfigError('--labels_from_folders: TFRecord records carry their '
                      'own label (image/class/label); leave the flag out.')
  if flags.evaluate and manifest and not manifest.has_label:
    raise ConfigError(f'--evaluate needs labelled inputs: the manifest '
                      f'{source.path} has no label column.')
  root = inputs.folder_root(source)
  return dict(
      source=source, manifest=manifest,
      field_names=manifest.field_names if manifest else (),
      labels_from_folders=labels_from_folders,
      label_names=(inputs.class_folder_names(root)
                   if labels_from_folders and root else ()))


def _normalize(name, path):
  try:
    return storage.normalize(path)
  except ValueError as e:
    raise ConfigError(f'--{name}: {e}') from e


def _check_numbers(numbers):
  """Args: numbers: {flag name: value} of the numeric flags."""
  for name, value in numbers.items():
    minimum, wanted = {'progress_interval_secs': (1e-9, 'positive'),
                       'max_batch_pixels': (0, 'at least 0'),
                       'model_copies': (0, 'at least 0')}.get(
                           name, (1, 'at least 1'))
    if value < minimum:
      raise ConfigError(f'--{name} must be {wanted}, got {value}.')
  if numbers['min_batch_size'] > numbers['max_batch_size']:
    raise ConfigError(f'--min_batch_size={numbers["min_batch_size"]} is more '
                      f'than --max_batch_size={numbers["max_batch_size"]}.')


def output_prefix(output):
  """The prefix `--output` names: inside it if it is (or ends as) a folder.

  `--output=DIR/` (a trailing slash) or an existing folder means "write in
  that folder", as `cp` reads it; anything else is a prefix as given.

  Raises:
    ConfigError: for a path storage cannot normalise.
  """
  folder = output.endswith('/') or _is_folder(output)
  output = _normalize('output', output)
  return storage.join(output, FOLDER_PREFIX) if folder else output


def _is_folder(path):
  if not storage.is_gcs(path):
    return os.path.isdir(path)
  from google.api_core import exceptions as gcs_exceptions  # pylint: disable=g-import-not-at-top
  try:
    return storage.isdir(path)
  except gcs_exceptions.NotFound:  # No such bucket: `_check_output` says so.
    return False


def _check_output(output):
  """The output prefix names files in a folder the run can write to.

  Args:
    output: the --output flag as given.

  Returns:
    The prefix (see `output_prefix`).
  """
  if storage.has_glob(output):
    raise ConfigError(f'--output={output}: a prefix cannot contain *, ? or [ '
                      '(the outputs are read with globs such as '
                      'PREFIX-predictions-*.jsonl).')
  if storage.is_gcs(output) and '/' not in output[
      len(storage.GCS_PREFIX):].rstrip('/'):
    raise ConfigError(f'--output={output} is a bucket; give a prefix in it, '
                      f'e.g. --output={output.rstrip("/")}/scores/run.')
  output = output_prefix(output)
  if storage.is_gcs(output):
    from google.api_core import exceptions as gcs_exceptions  # pylint: disable=g-import-not-at-top
    try:
      storage.scan_folder(storage.dirname(output))
    except gcs_exceptions.NotFound as e:
      raise ConfigError(f'--output={output}: no such bucket.') from e
    return output
  _check_writable(output)
  return output


def _check_writable(output):
  """Creates (and removes) a file where the outputs go, before any work.

  `os.access` says yes to root on a read-only disk; only a write shows it.
  The folders still to be made are made by the run, under this one.
  """
  folder = os.path.dirname(output)
  while not os.path.exists(folder):
    folder = os.path.dirname(folder)
  if not os.path.isdir(folder):
    raise ConfigError(f'--output={output}: {folder} is a file, not a folder.')
  try:
    with tempfile.TemporaryFile(dir=folder, prefix='.write-check-'):
      pass
  except OSError as e:
    raise ConfigError(f'--output={output}: cannot create files under '
                      f'{folder} ({storage.describe_os_error(e)}).') from e


def _check_remote(options, paths):
  """On Dataflow, workers cannot see the launcher's disk or this checkout."""
  pipeline_options = _beam_options()
  local = [f'{flag}={path}' for flag, path in paths.items()
           if not storage.is_gcs(storage.normalize(path))]
  if local:
    raise ConfigError(
        f'{", ".join(local)}: Dataflow workers cannot read local paths; use '
        'gs://BUCKET/... (or /gcs/BUCKET/...).')
  setup = options.view_as(pipeline_options.SetupOptions)
  worker = options.view_as(pipeline_options.WorkerOptions)
  if not (setup.setup_file or worker.sdk_container_image):
    raise ConfigError(
        'Dataflow workers need this project installed: add '
        '--setup_file=./setup.py, or --sdk_container_image with an image '
        'that has it installed.')
  if setup.setup_file and not os.path.isfile(setup.setup_file):
    raise ConfigError(f'--setup_file={setup.setup_file}: no such file (run '
                      'from the repository root, or give its path).')


# Beam is loaded (a Dataflow worker, or the scorer past `check_flags`):
# register the scoring flags with it now, as a class statement would.
if 'apache_beam.options.pipeline_options' in sys.modules:
  scoring_options_class()
