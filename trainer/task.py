r"""Train, evaluate and export an image classifier.

  python -m trainer.task --job_dir=/tmp/run
  python -m trainer.task --config=config/fashion_mnist.yaml --job_dir=/tmp/f

Flags override the --config file; --helpfull lists every flag. On Vertex AI,
AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR are honoured.
TF_CONFIG (or Vertex AI's CLUSTER_SPEC) makes this process one task of a
multi-worker job. SIGTERM stops training at a safe point with exit status
143; rerunning the same command resumes from the last finished epoch.
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
from trainer import preemption

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    config = build_config(flags.FLAGS, os.environ)
    cluster, task = cluster_lib.parse_cluster(
        os.environ.get('TF_CONFIG'), os.environ.get('CLUSTER_SPEC'))
  except (config_lib.ConfigError, cluster_lib.ClusterError) as e:
    raise app.UsageError(str(e)) from e
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
  from trainer import data  # pylint: disable=g-import-not-at-top
  from trainer import export  # pylint: disable=g-import-not-at-top
  from trainer import hptuning  # pylint: disable=g-import-not-at-top
  from trainer import train  # pylint: disable=g-import-not-at-top
  if config.hypertune_metric:
    try:
      hptuning.check_available()
    except hptuning.MissingDependencyError as e:
      raise app.UsageError(str(e)) from e
  logging.info('Configuration:\n%s', '\n'.join(
      f'  {k}: {v!r}' for k, v in config.to_dict().items()))
  try:
    train.run(config, strategy, task, stop_signal=stop_signal,
              started_at=_STARTED_AT)
  except (config_lib.ConfigError, data.DataError, export.ArtifactError,
          checkpoints.CheckpointError) as e:
    logging.error('%s', e)
    sys.exit(2)
  except preemption.Preempted as e:
    logging.warning('%s The backup of the last finished epoch is in %s: '
                    'rerun the same command to resume from it.', e,
                    train.Layout.from_config(config).checkpoint_dir)
    sys.exit(e.exit_status)


if __name__ == '__main__':
  app.run(main)
