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
dir is refused at once. Errors a user can act on (bad data, a diverged run, a
full disk, a job dir in use) end with one line and exit status 2.
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

from trainer import cluster as cluster_lib
from trainer import config as config_lib
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
    from trainer import storage  # pylint: disable=g-import-not-at-top
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


LEASE_FILE = '_LEASE'
# Exit status of errors a user can act on (bad data, full disk, ...).
_USER_ERROR_STATUS = 2


class _StopWithError(Exception):
  """An error to report in one line; raised by `run`, handled by `main`.

  Attributes:
    hard_exit: exit without Python's final clean-up (after a failed h5py
      write, HDF5 crashes in it: storage.WriteError).
  """

  def __init__(self, error):
    super().__init__(str(error))
    self.hard_exit = getattr(error, 'hard_exit', False)


def take_lease(config, task):
  """The chief's lease on the job dir (None on other workers).

  Other workers of a multi-worker job share the chief's job dir and write
  nothing there, so only the chief takes it.

  Raises:
    lease.LeaseError: naming the live run that holds it.
  """
  if not task.is_chief:
    return None
  path = storage.join(storage.normalize(config.job_dir), LEASE_FILE)
  return lease_lib.Lease(path, 'training').acquire(config.break_lease)


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


def _exit_with_error(error):
  """Logs the error in one line and exits with status 2."""
  logging.error('%s', error)
  if getattr(error, 'hard_exit', False):
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_USER_ERROR_STATUS)  # pylint: disable=protected-access
  sys.exit(_USER_ERROR_STATUS)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    config = build_config(flags.FLAGS, os.environ)
    cluster, task = cluster_lib.parse_cluster(
        os.environ.get('TF_CONFIG'), os.environ.get('CLUSTER_SPEC'))
  except (config_lib.ConfigError, cluster_lib.ClusterError) as e:
    raise app.UsageError(str(e)) from e
  # Before any TensorFlow work: a job dir in use is refused at once.
  job_dir = storage.normalize(config.job_dir)
  job_dir_existed = storage.is_gcs(job_dir) or os.path.exists(job_dir)
  try:
    lease = take_lease(config, task)
  except (lease_lib.LeaseError, OSError) as e:
    _exit_with_error(e)
  try:
    try:
      run(config, cluster, task, lease)
    finally:
      if lease is not None:
        _release(lease, job_dir_existed)
  except _StopWithError as e:
    _exit_with_error(e)


def run(config, cluster, task, lease=None):
  """Everything after the lease: strategy, training, export.

  Raises:
    _StopWithError: for errors a user can act on.
  """
  # From here on SIGTERM (preemption) and Ctrl-C stop at a safe point.
  stop_signal = preemption.StopSignal()
  stop_signal.install()
  # TensorFlow is imported only now, so bad input fails in a fraction of a
  # second; and the strategy comes first, before any other TensorFlow call.
  from trainer import distribute  # pylint: disable=g-import-not-at-top
  try:
    strategy = distribute.create_strategy(config.strategy, cluster, task)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  from trainer import checkpoints  # pylint: disable=g-import-not-at-top
  from trainer import export  # pylint: disable=g-import-not-at-top
  from trainer import hptuning  # pylint: disable=g-import-not-at-top
  from trainer import train  # pylint: disable=g-import-not-at-top
  from trainer.data import sources  # pylint: disable=g-import-not-at-top
  if config.hypertune_metric:
    try:
      hptuning.check_available()
    except hptuning.MissingDependencyError as e:
      raise app.UsageError(str(e)) from e
  logging.info('Configuration:\n%s', '\n'.join(
      f'  {k}: {v!r}' for k, v in config.to_dict().items()))
  try:
    train.run(config, strategy, task, stop_signal=stop_signal,
              started_at=_STARTED_AT, lease=lease)
  except (config_lib.ConfigError, sources.DataError, export.ArtifactError,
          checkpoints.CheckpointError, train.TrainingDiverged,
          lease_lib.LeaseError, storage.StorageError) as e:
    raise _StopWithError(e) from None
  except OSError as e:  # Writing a small output (config.yaml, a chart, ...).
    raise _StopWithError(f'Cannot write {e.filename or "an output"}: '
                         f'{storage.describe_os_error(e)}.') from None
  except preemption.Preempted as e:
    logging.warning('%s The backup of the last finished epoch is in %s: '
                    'rerun the same command to resume from it.', e,
                    train.Layout.from_config(config).checkpoint_dir)
    sys.exit(e.exit_status)


if __name__ == '__main__':
  app.run(main)
