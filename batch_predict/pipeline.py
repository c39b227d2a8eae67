r"""Scores image files with a trained classifier (README.md, "Scoring").

  python -m batch_predict.pipeline --model_dir=/tmp/mnist_sample/export \
      --input='/tmp/mnist_sample/samples/*.png' \
      --output=/tmp/mnist_sample/scores/mnist

writes PREFIX-predictions-*.jsonl ({"uri", "label", "score", "top_k"}) and
PREFIX-errors-*.jsonl ({"uri", "error", "kind"}): every input in exactly one
(`--output_format=csv|parquet` for CSV or Parquet shards of the same records).
`--embeddings` adds the embedding cache (PREFIX-embeddings-*.tfrecord.gz and
PREFIX-embeddings.json: batch_predict/embeddings.py); `--embeddings_only`
writes it instead of the predictions.
DirectRunner by default; add `--runner=DataflowRunner --project=... \
--region=... --temp_location=gs://... --setup_file=./setup.py` for Dataflow,
and `--dry_run=True` to check a command without scoring or submitting.
`--help` lists the scoring flags, with their defaults; Beam's own
(`--runner`, `--project`, `--region`, `--temp_location`, ...) are taken too.

A run holds a lease on PREFIX (FOLDER/.BASENAME.lease) from before any work
until its outputs are published, so a second scorer on the same --output
is refused (`--break_lease` takes over the lease of one that is gone).

Every error the user can fix (a flag, the model, the input, a busy output
prefix) is a `trainer.errors.UserError`; `main` catches those, and Google
Cloud's errors for a missing bucket or missing credentials, in one place,
and prints one line.
"""

import argparse
import functools
import logging
import sys

from batch_predict import options as options_lib
from trainer import cli
from trainer import errors


def _print_help():
  parser = argparse.ArgumentParser(
      prog='python -m batch_predict.pipeline', description=__doc__,
      formatter_class=_HelpFormatter)
  # Beam's documented hook for defining options (see options.py), called
  # here to list only the scoring flags.
  options_lib.ScoringFlags._add_argparse_args(parser)  # pylint: disable=protected-access
  parser.print_help()


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """The module doc as written, and each flag's default where it has one."""

  def _get_help_string(self, action):
    if action.default in (None, False, argparse.SUPPRESS):
      return action.help
    return f'{action.help} (default: {action.default})'


def _exit_with_error(error):
  print(f'error: {cli.one_line(error)}', file=sys.stderr)
  sys.exit(2)


def _verbosity(argv):
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument('--verbosity', type=int, default=0)
  return parser.parse_known_args(argv)[0].verbosity


def check_flags_first(argv):
  """--help, and the scoring flags' own errors, before Beam is imported.

  Importing Beam and TensorFlow takes 1.5 s on a warm machine and 8-15 s in
  a fresh virtual environment; a misspelled flag should not wait for it.
  """
  if '--help' in argv or '-h' in argv:
    _print_help()
    sys.exit(0)
  try:
    options_lib.check_flags(argv)
  except errors.UserError as e:
    _exit_with_error(e)


if __name__ == '__main__':
  check_flags_first(sys.argv[1:])
  # Until the pipeline starts: 1.0 s of start-up (cli says why).
  cli.pause_garbage_collection()
  cli.import_beam_without_pandas()  # 0.3-0.4 s of start-up.

# pylint: disable=g-import-not-at-top,g-bad-import-order
import apache_beam as beam
from apache_beam.metrics import metric
from apache_beam.options import pipeline_options
from apache_beam.runners import runner

from batch_predict import embeddings
from batch_predict import evaluation
from batch_predict import model_handler
from batch_predict import outputs
from batch_predict import transforms
from trainer import artifact
from trainer import embedding_cache
from trainer import lease as lease_lib
# pylint: enable=g-import-not-at-top,g-bad-import-order

# Beam is loaded: its options know the scoring flags from here on, as when
# ScoringOptions was a class statement (options.py).
options_lib.scoring_options_class()

_LOGGER = logging.getLogger(__name__)


def build_pipeline(pipeline, config):
  """Adds the scoring steps for `config` to `pipeline`.

  Args:
    pipeline: a `beam.Pipeline` (or `TestPipeline`).
    config: an `options.ScoringConfig`.

  Returns:
    (predictions, errors): the PCollections of records that are written.
  """
  handler = model_handler.ImageClassifierHandler(
      config.model_dir, min_batch_size=config.min_batch_size,
      max_batch_size=config.max_batch_size,
      max_batch_pixels=config.max_batch_pixels,
      model_copies=config.model_copies, embeddings=config.embeddings,
      embeddings_only=config.embeddings_only)
  decoded_size = None
  if config.input_size:
    decoded_size = functools.partial(
        artifact.decoded_size, input_size=config.input_size,
        ratios=config.jpeg_dct_ratios)
  classified = (
      pipeline
      | 'ListImages' >> transforms.ListImages(
          config.source, config.labels_from_folders, config.manifest)
      | 'ClassifyImages' >> transforms.ClassifyImages(
          handler, config.labels, top_k=config.top_k,
          max_file_bytes=config.max_file_bytes,
          max_image_pixels=config.max_image_pixels,
          progress_interval_secs=config.progress_interval_secs,
          evaluate=config.evaluate, decoded_size=decoded_size,
          embeddings=config.embeddings,
          embeddings_only=config.embeddings_only,
          redistribute=not _one_local_worker(pipeline.options)))
  predictions, error_records = classified[:2]
  staged = (error_records | 'WriteErrors' >> transforms.WriteShards(
      config.output, outputs.ERRORS, config.num_shards, config.run_id,
      config.output_format, config.field_names),)
  names = (outputs.ERRORS,)
  if not config.embeddings_only:
    staged += (predictions | 'WritePredictions' >> transforms.WriteShards(
        config.output, outputs.PREDICTIONS, config.num_shards,
        config.run_id, config.output_format, config.field_names),)
    names = outputs.OUTPUT_NAMES
  if config.evaluate:
    staged += ((classified[2], error_records) | 'Evaluate' >>
               evaluation.Evaluate(config.labels, config.output,
                                   config.run_id),)
  if config.embeddings:
    staged += (classified[-1] | 'WriteEmbeddings' >>
               embeddings.WriteEmbeddings(config),)
    names += (outputs.EMBEDDINGS,)
  # Every run names the evaluation files and the embeddings' description,
  # and removes earlier runs' shards of every output: one without
  # --evaluate (--embeddings) removes an earlier run's report (cache), which
  # would describe other inputs.
  _ = staged | 'PublishOutputs' >> transforms.PublishOutputs(
      config.output, config.run_id, names, config.num_shards,
      config.output_format,
      files=outputs.EVALUATION_FILES + (outputs.EMBEDDINGS_DESCRIPTION,),
      stale_names=outputs.ALL_OUTPUT_NAMES)
  return predictions, error_records


def summarize(result):
  """Sums the pipeline's `batch_predict` counters over steps.

  Returns:
    {counter name: value}: `images_scored`, `bytes_read`, `errors_KIND`, ...
  """
  query = result.metrics().query(
      metric.MetricsFilter().with_namespace(transforms.NAMESPACE))
  totals = {}
  for counter in query['counters']:
    value = counter.committed
    if value is None:
      value = counter.attempted
    name = counter.key.metric.name
    totals[name] = totals.get(name, 0) + (value or 0)
  return totals


def _log_summary(totals, output, output_format, predictions=True):
  by_kind = {name[len('errors_'):]: value for name, value in totals.items()
             if name.startswith('errors_') and value}
  details = ', '.join(f'{kind}: {count}' for kind, count in sorted(
      by_kind.items()))
  names = ((outputs.PREDICTIONS,) if predictions else ()) + (outputs.ERRORS,)
  _LOGGER.info(
      'Scored %d images; %d errors%s; %d bytes read. Outputs: %s.',
      totals.get('images_scored', 0), sum(by_kind.values()),
      f' ({details})' if details else '', totals.get('bytes_read', 0),
      ' and '.join(outputs.output_pattern(output, name) + '.' + output_format
                   for name in names))


def _create_pipeline(options):
  """A pipeline for `options`; Beam checks its own options (runner, project,
  temp_location, ...) here, so this comes before any work too."""
  try:
    return beam.Pipeline(runner=_local_runner(options), options=options)
  except ValueError as e:
    raise options_lib.ConfigError(str(e)) from e


def _is_direct(options):
  """Whether `options` run on DirectRunner (named, or by default), batch."""
  standard = options.view_as(pipeline_options.StandardOptions)
  name = (standard.runner or 'DirectRunner').lower()
  return name in ('direct', 'directrunner') and not standard.streaming


def _one_local_worker(options):
  """Whether the pipeline runs in this process on one worker: DirectRunner
  in memory (its default), with no --direct_num_workers beyond 1."""
  direct = options.view_as(pipeline_options.DirectOptions)
  return (_is_direct(options) and direct.direct_running_mode == 'in_memory'
          and direct.direct_num_workers == 1)


def _in_this_process(options):
  """Whether the pipeline's workers run in this process (DirectRunner in
  memory), where they score with the artifact the launcher checked."""
  direct = options.view_as(pipeline_options.DirectOptions)
  return _is_direct(options) and direct.direct_running_mode == 'in_memory'


def _local_runner(options):
  """For DirectRunner (the default), the runner it falls back to here: Beam's
  in-memory FnApiRunner. None for any other --runner (Beam makes that one).

  Beam 2.77's DirectRunner first tries Prism: it starts a worker pool and
  downloads the Prism binary from GitHub. Offline that fails after 0.2-0.4 s
  of every run's start-up and it falls back to the FnApiRunner, as
  `SwitchingDirectRunner.run_pipeline` builds it; online a local run would
  download a Go runner and run on that instead. The FnApiRunner runs
  `--direct_running_mode` and `--direct_num_workers` as DirectRunner does.
  """
  if not _is_direct(options):
    return None
  # pylint: disable=g-import-not-at-top
  from apache_beam.portability.api import beam_provision_api_pb2
  from apache_beam.runners.portability import portable_runner
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  # pylint: enable=g-import-not-at-top
  encoded = portable_runner.JobServiceHandle.encode_pipeline_options(
      options.get_all_options())
  return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def run(argv=None, save_main_session=True, test_pipeline=None):
  """Checks the flags, then scores `--input` and writes the outputs.

  Args:
    argv: command-line flags (scoring flags and Beam's); default sys.argv.
    save_main_session: pickle the main module's state for the workers.
    test_pipeline: a `TestPipeline` to build on instead of a new pipeline.

  Returns:
    The finished `PipelineResult` (for a dry run: one in state DONE).

  Raises:
    errors.UserError: options_lib.ConfigError, artifact.ArtifactError,
      inputs.InputError if the flags, model or input cannot work, raised
      before any work starts; lease.LeaseError if another scorer holds the
      lease on --output (before any work), or took it over during the run
      (then nothing is published).
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  argv, dry_run = options_lib.normalize_dry_run(argv)
  options = pipeline_options.PipelineOptions(argv)
  config = options_lib.build_config(options, argv)
  options.view_as(pipeline_options.SetupOptions).save_main_session = (
      save_main_session)
  _LOGGER.info('Scoring %s (%s) with %s into %s-*.', config.source.path,
               config.source.kind, config.model_dir, config.output)
  pipeline = test_pipeline or _create_pipeline(options)
  if dry_run:
    return _dry_run(pipeline, config, options)
  if _in_this_process(options):
    # While Beam builds and starts the pipeline: 0.6 s of start-up.
    artifact.warm_up_checked(config.model_dir)
  lease = lease_lib.Lease(outputs.lease_path(config.output), 'scoring')
  with lease.acquire(break_lease=config.break_lease):
    # No other scorer writes here now: what staging folders there are, a
    # killed run left.
    outputs.remove_staging_folders(config.output)
    build_pipeline(pipeline, config)
    cli.resume_garbage_collection()  # Start-up is over.
    result = _run_and_publish(pipeline, config, lease)
  _log_summary(summarize(result), config.output, config.output_format,
               predictions=not config.embeddings_only)
  if config.embeddings:
    _LOGGER.info('Embeddings: %s (described in %s)%s.',
                 outputs.output_pattern(config.output, outputs.EMBEDDINGS),
                 embedding_cache.description_path(config.output),
                 '; no predictions (--embeddings_only)'
                 if config.embeddings_only else '')
  return result


def _dry_run(pipeline, config, options):
  build_pipeline(pipeline, config)
  if not options_lib.is_remote_runner(options):
    _LOGGER.info('Dry run: the flags, model and input are fine; nothing was '
                 'scored.')
    return runner.PipelineResult(runner.PipelineState.DONE)
  # On Dataflow, Beam's own dry run builds the package and the job request
  # and stops short of submitting it.
  result = pipeline.run()
  result.wait_until_finish()
  _LOGGER.info('Dry run: the Dataflow job was built, not submitted.')
  return result


def _run_and_publish(pipeline, config, lease):
  """Runs the pipeline (which publishes its outputs as its last step).

  A failed run removes what it staged; the published outputs of earlier
  runs are untouched until the publishing step.
  """
  try:
    with transforms.holding_lease(lease):
      result = pipeline.run()
      result.wait_until_finish()
  except Exception:
    try:
      outputs.remove_staging_folders(config.output, config.run_id)
    except Exception as e:  # pylint: disable=broad-except
      # The run's own error matters more; the next run removes the folder.
      _LOGGER.warning('Could not remove this run\'s staging folder: %s', e)
    if lease.lost:  # Say why the publishing step refused, in one line.
      lease.check()
    raise
  return result


def _not_in_ipython():
  """Tells Beam that this command is not an IPython session, before it asks.

  Beam 2.77 asks on every transform it applies, and again to run
  (`interactive_utils.is_in_ipython`), by importing IPython wherever it is
  installed: 0.4 s of the scorer's start-up measured here. A command run
  as `python -m batch_predict.pipeline` has not imported IPython, so it is
  not in one; a `None` in `sys.modules` makes that import fail at once,
  which Beam takes as "not in IPython" (as when IPython is not installed).
  """
  if 'IPython' not in sys.modules:
    sys.modules['IPython'] = None


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  check_flags_first(argv)
  _not_in_ipython()
  verbose = _verbosity(argv) >= 1
  logging.basicConfig(level=logging.INFO)
  if not verbose:
    # Beam's runner choices and warnings ("Resource module is not
    # available") say nothing a user can act on; TensorFlow's INFO lines
    # neither.
    cli.hide_library_logs(('apache_beam',), below=logging.ERROR)
    cli.hide_library_logs(('tensorflow', 'keras'))
  try:
    # TensorFlow's C++ start-up notes (CUDA probing), unless asked for.
    with cli.quiet_stderr(replay=verbose, expected=errors.UserError):
      # Before the artifact check loads the model: 2.5 s of start-up.
      cli.import_tensorflow_without_keras()
      run(argv)
  except errors.UserError as e:
    # The user's to fix: say what is wrong, without a traceback.
    _exit_with_error(e)
  except Exception as e:  # pylint: disable=broad-except
    line = cli.cloud_error_line(e)  # A missing bucket, refused credentials.
    if line is None:
      raise  # A bug: keep its traceback.
    _exit_with_error(line)


if __name__ == '__main__':
  main()
