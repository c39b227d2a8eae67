r"""Train, evaluate and export an image classifier.

  python -m trainer.task --job_dir=/tmp/run
  python -m trainer.task --config=config/fashion_mnist.yaml --job_dir=/tmp/f

Flags override the --config file; --helpfull lists every flag. On Vertex AI,
AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR are honoured.
TF_CONFIG (or Vertex AI's CLUSTER_SPEC) makes this process one task of a
multi-worker job. SIGTERM stops training at a safe point with exit status
143; rerunning the same command resumes from the last finished epoch.

One run per job dir: the chief holds JOB_DIR/_LEASE (trainer/lease.py) from
before any TensorFlow work until the end, so a second trainer on the same job
dir is refused at once. Errors a user can act on (errors.UserError: a bad
flag, bad data, a diverged run, a full disk, a job dir in use, and Google
Cloud's errors for a missing bucket or missing credentials) are caught in
one place, `main`, and end with one line and exit status 2; so do absl's
own flag parsing errors (an unknown flag, a malformed number: `parse_flags`),
with a pointer to --helpfull instead of the usage text. --help and
--helpfull exit 0.

This binary owns flags -> Config (with Vertex AI's environment), the cluster
from the environment, the lease, the strategy, and the exit status; the run
itself is train.py's.
"""

import time

# How long start-up (or a resume) takes is measured from here.
_STARTED_AT = time.time()

import os  # pylint: disable=g-import-not-at-top,g-bad-import-order
import sys  # pylint: disable=g-import-not-at-top,g-bad-import-order

# Before TensorFlow is imported: keep its C++ start-up chatter out of the log.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from trainer import cli
from trainer import cluster as cluster_lib
from trainer import config as config_lib
from trainer import errors
from trainer import job_dir as job_dir_lib
from trainer import lease as lease_lib
from trainer import preemption
from trainer import storage

_CONFIG = flags.DEFINE_string(
    'config', None, 'A YAML or JSON file of flag values (see config/); flags '
    'given on the command line override it.')

_DEFINERS = {
    str: flags.DEFINE_string,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_boolean,
}


def define_config_flags():
  """Defines one flag per Config field, with the field's default and help."""
  import typing  # pylint: disable=g-import-not-at-top
  hints = typing.get_type_hints(config_lib.Config)
  for name, field in config_lib.FIELDS.items():
    if field.metadata.get('bare_flag'):
      # `--augment` alone (its boolean past) parses as 'true', `--noaugment`
      # as 'false'; config.py maps both.
      flags.DEFINE_flag(flags.Flag(
          flags.ArgumentParser(), flags.ArgumentSerializer(), name,
          field.default, field.metadata['help'], boolean=True))
      continue
    _DEFINERS[hints[name]](name, field.default, field.metadata['help'])


define_config_flags()

# Vertex AI custom jobs pass their output folders in these variables.
_VERTEX_DIRS = {
    'AIP_MODEL_DIR': 'export_dir',
    'AIP_CHECKPOINT_DIR': 'checkpoint_dir',
    'AIP_TENSORBOARD_LOG_DIR': 'tensorboard_dir',
}


def environment_overrides(environ, explicit):
  """Config values from Vertex AI's environment, unless given as flags."""
  overrides = {}
  for variable, key in _VERTEX_DIRS.items():
    if environ.get(variable) and key not in explicit:
      overrides[key] = environ[variable]
  model_dir = environ.get('AIP_MODEL_DIR')
  if model_dir and 'job_dir' not in explicit:
    # Vertex's model dir is JOB/model: keep metrics and config beside it.
    overrides['job_dir'] = storage.dirname(storage.normalize(model_dir))
  return overrides


def build_config(flag_values, environ):
  """Defaults, then --config file, then environment, then explicit flags."""
  explicit = {name: flag_values[name].value for name in config_lib.FIELDS
              if flag_values[name].present}
  file_values = {}
  if flag_values['config'].value:
    file_values = config_lib.load_file(flag_values['config'].value)
  overrides = dict(environment_overrides(environ, explicit))
  overrides.update(explicit)
  return config_lib.build(file_values, overrides,
                          source=flag_values['config'].value or 'config file')


# Exit status of errors a user can act on (bad flags, bad data, full disk).
_USER_ERROR_STATUS = 2


_HELP_FLAGS = ('--help', '-h', '-?', '--helpshort', '--helpfull',
               '--helpxml')


def parse_flags(argv):
  """absl's flag parsing, with its errors in one line (status 2).

  absl prints "FATAL Flags parsing error" and a second line, and exits 1;
  its --help exits 1 too. Here a bad flag is one line naming --helpfull,
  and asking for help is a success.

  Returns:
    The arguments that are not flags (the program name first).
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    # Before absl's logging is set up (which would add a line of its own).
    sys.stderr.write(f'error: {cli.one_line(e)} (--helpfull lists the '
                     'flags).\n')
    sys.exit(_USER_ERROR_STATUS)
  except SystemExit:
    if any(arg.split('=')[0] in _HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)
    raise


def main(argv):
  """The command: every error a user can fix ends here, in one line."""
  try:
    if len(argv) > 1:
      raise config_lib.ConfigError(
          f'Unexpected arguments: {" ".join(argv[1:])} (flags are '
          '--name=value; --helpfull lists them).')
    run_command(flags.FLAGS, os.environ)
  except errors.UserError as e:
    _exit_with_error(e)
  except OSError as e:  # Writing a small output (the lease, config.yaml...).
    _exit_with_error(cli.cloud_error_line(e) or
                     f'Cannot write {e.filename or "an output"}: '
                     f'{storage.describe_os_error(e)}.')
  except preemption.Preempted as e:
    sys.exit(e.exit_status)
  except Exception as e:  # pylint: disable=broad-except
    line = cli.cloud_error_line(e)  # A missing bucket, refused credentials.
    if line is None:
      raise  # A bug: keep its traceback.
    _exit_with_error(line)


def _exit_with_error(error):
  """Logs the error in one line and exits with status 2.

  After a failed h5py write (storage.WriteError.hard_exit) the interpreter's
  final clean-up would crash in HDF5: exit at once, after flushing the logs
  (the run's own clean-up, the lease included, has run by now).
  """
  logging.error('%s', cli.one_line(error))
  if getattr(error, 'hard_exit', False):
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_USER_ERROR_STATUS)  # pylint: disable=protected-access
  sys.exit(_USER_ERROR_STATUS)


def run_command(flag_values, environ):
  """Flags -> Config -> lease -> training, with the lease released after.

  Raises:
    errors.UserError: for anything the user can fix (see main).
    preemption.Preempted: when stopped by a signal; rerun to resume.
  """
  config = build_config(flag_values, environ)
  cluster, task = cluster_lib.parse_cluster(
      environ.get('TF_CONFIG'), environ.get('CLUSTER_SPEC'))
  layout = job_dir_lib.Layout.from_config(config)
  # Before any TensorFlow work: a job dir in use is refused at once.
  job_dir_existed = storage.is_gcs(layout.job_dir) or os.path.exists(
      layout.job_dir)
  lease = take_lease(layout, config, task)
  try:
    run(config, cluster, task, lease)
  except preemption.Preempted as e:
    logging.warning('%s The backup of the last finished epoch is in %s: '
                    'rerun the same command to resume from it.', e,
                    layout.checkpoint_dir)
    raise
  finally:
    if lease is not None:
      _release(lease, job_dir_existed)


def take_lease(layout, config, task):
  """The chief's lease on the job dir (None on other workers).

  Other workers of a multi-worker job share the chief's job dir and write
  nothing there, so only the chief takes it.

  Raises:
    lease.LeaseError: naming the live run that holds it.
  """
  if not task.is_chief:
    return None
  return lease_lib.Lease(layout.lease_path, 'training').acquire(
      config.break_lease)


def _release(lease, job_dir_existed):
  """Gives the lease up; removes the job dir if the lease made it, empty.

  A run that stops before any work (a bad base model, a refused strategy)
  then leaves nothing behind, as before leases.
  """
  lease.release()
  folder = os.path.dirname(lease.path)
  if not job_dir_existed and not storage.is_gcs(folder):
    try:
      os.rmdir(folder)  # Only if empty.
    except OSError:
      pass


def run(config, cluster, task, lease=None):
  """Everything after the lease: strategy, resolved config, training.

  Raises:
    errors.UserError: for anything the user can fix.
    preemption.Preempted: when stopped by a signal.
  """
  # From here on SIGTERM (preemption) and Ctrl-C stop at a safe point.
  stop_signal = preemption.StopSignal()
  stop_signal.install()
  # TensorFlow is imported only now, so bad input fails in a fraction of a
  # second; and the strategy comes first, before any other TensorFlow call.
  # Its C++ start-up notes (CUDA probing on machines without a GPU) are
  # shown with --verbosity=1, or if this fails.
  verbose = logging.get_verbosity() >= logging.DEBUG
  if not verbose:  # TensorFlow's own INFO lines (export internals...).
    cli.hide_library_logs(('tensorflow', 'keras'))
  with cli.quiet_stderr(replay=verbose, expected=errors.UserError):
    from trainer import distribute  # pylint: disable=g-import-not-at-top
    strategy = distribute.create_strategy(
        config.strategy, cluster, task, config.gpu_memory_growth)
    from trainer import hptuning  # pylint: disable=g-import-not-at-top
    from trainer import run_context  # pylint: disable=g-import-not-at-top
    from trainer import train  # pylint: disable=g-import-not-at-top
  if config.hypertune_metric:
    hptuning.check_available()
  context = run_context.create(config, strategy, task,
                               stop_signal=stop_signal,
                               started_at=_STARTED_AT, lease=lease)
  # The resolved configuration: the one config.yaml and the backups record.
  if verbose:
    logging.info('Configuration:\n%s', '\n'.join(
        f'  {k}: {v!r}' for k, v in context.config.to_dict().items()))
  else:
    logging.info('Configuration: %s (all of it: %s).',
                 config_summary(context.config), context.layout.config_path)
  cli.resume_garbage_collection()  # Start-up is over.
  train.run(context)


# Always in the one-line summary; other keys when they are not the default.
_SUMMARY_KEYS = ('dataset', 'model', 'epochs', 'batch_size', 'learning_rate',
                 'mixed_precision')
_NOT_SUMMARISED = ('job_dir', 'checkpoint_dir', 'tensorboard_dir',
                   'export_dir')


def config_summary(config):
  """'dataset=mnist_sample, model=cnn_bn, ...': the main keys and the rest
  that differ from their defaults."""
  values = config.to_dict()
  shown = [key for key in values if key not in _NOT_SUMMARISED and (
      key in _SUMMARY_KEYS or values[key] != config_lib.default(key))]
  return ', '.join(f'{key}={values[key]}' for key in shown)


if __name__ == '__main__':
  # Until training starts: 1.1 s of start-up (cli says why).
  cli.pause_garbage_collection()
  app.run(main, flags_parser=parse_flags)
