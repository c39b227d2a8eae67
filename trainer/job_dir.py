"""The job dir: where a run writes each output, and what an earlier run left.

Job dir layout (Contract 1; Vertex AI's AIP_* folders, passed in as
--checkpoint_dir, --tensorboard_dir and --export_dir, override theirs):
  JOB_DIR/_LEASE               one run per job dir (lease.py, task.py)
  JOB_DIR/config.yaml          the resolved configuration
  JOB_DIR/checkpoints/         resume state: backup/training_metadata.json
                               names the backup (checkpoints.py), plus
                               history.json and periodic weights
                               (callbacks.py); fine_tune/ for the second
                               phase of a transfer run
  JOB_DIR/logs/                TensorBoard event files (fine_tune/ likewise)
  JOB_DIR/export/              the model artifact (Contract 2)
  JOB_DIR/metrics.json         written last: with a complete export, it
                               marks a finished run
  JOB_DIR/training_curves.png  the chart (curves.py)

An earlier run in the job dir is in one of three states (`RunState`): none
(NEW), a resume backup without a finished export (RESUMABLE), metrics.json
with a complete export (FINISHED). Outputs of a configuration that trains
something else are refused, naming the keys that differ; checkpoints.py
refuses a backup of another configuration with the same comparison
(`config.describe_changes`). A larger --epochs extends a run
(`config.extends`): a finished one is then RESUMABLE from its backup, and
trains on from its last epoch to the new total.

This module imports no TensorFlow: task.py takes the lease on
`Layout.lease_path` before any TensorFlow work.
"""

import dataclasses
import enum

from absl import logging
import yaml

from trainer import artifact
from trainer import config as config_lib
from trainer import curves
from trainer import storage

LEASE_FILE = '_LEASE'
CONFIG_FILE = 'config.yaml'
METRICS_FILE = 'metrics.json'
# The resume record inside a checkpoint folder (checkpoints.py writes it):
# BACKUP_DIR/RESUME_RECORD_FILE.
BACKUP_DIR = 'backup'
RESUME_RECORD_FILE = 'training_metadata.json'
RESUME_RECORD = f'{BACKUP_DIR}/{RESUME_RECORD_FILE}'
# Transfer learning's second phase keeps its own resume state, history and
# TensorBoard logs in this sub-folder of checkpoints/ and logs/.
FINE_TUNE_DIR = 'fine_tune'


class RunState(enum.Enum):
  """What an earlier run left in a job dir."""
  NEW = 'new'
  RESUMABLE = 'resumable'
  FINISHED = 'finished'


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a run writes each of its outputs (normalised paths)."""
  job_dir: str
  checkpoint_dir: str
  log_dir: str
  export_dir: str

  @classmethod
  def from_config(cls, config):
    job_dir = storage.normalize(config.job_dir)
    return cls(
        job_dir=job_dir,
        checkpoint_dir=storage.normalize(
            config.checkpoint_dir or storage.join(job_dir, 'checkpoints')),
        log_dir=storage.normalize(
            config.tensorboard_dir or storage.join(job_dir, 'logs')),
        export_dir=storage.normalize(
            config.export_dir or storage.join(job_dir, 'export')))

  @property
  def lease_path(self):
    return storage.join(self.job_dir, LEASE_FILE)

  @property
  def config_path(self):
    return storage.join(self.job_dir, CONFIG_FILE)

  @property
  def metrics_path(self):
    return storage.join(self.job_dir, METRICS_FILE)

  @property
  def chart_path(self):
    return storage.join(self.job_dir, curves.CHART_FILE)



def previous_run_state(layout, config):
  """Looks at what an earlier run with this job dir left behind.

  Returns:
    A RunState.

  Raises:
    config_lib.ConfigError: if earlier outputs come from a configuration
      that trains something else.
  """
  finished = storage.exists(layout.metrics_path) and artifact.is_complete(
      layout.export_dir)
  has_backup = storage.exists(storage.join(layout.checkpoint_dir,
                                           RESUME_RECORD))
  if not (finished or has_backup):
    return RunState.NEW
  saved = {}
  if storage.exists(layout.config_path):
    saved = yaml.safe_load(storage.read_text(layout.config_path)) or {}
    changes = config_lib.describe_changes(config, saved)
    if changes:
      raise config_lib.ConfigError(
          f'job_dir: {layout.job_dir} holds a '
          f'{"finished run" if finished else "checkpoint"} of a different '
          f'configuration ({changes}). Use a new --job_dir, or pass '
          '--start_fresh to discard it.')
  if not (saved and config_lib.extends(config, saved)):
    return RunState.FINISHED if finished else RunState.RESUMABLE
  if not has_backup:
    raise config_lib.ConfigError(
        f'job_dir: {layout.job_dir} holds a finished run of '
        f'{saved["epochs"]} epochs without its backup in '
        f'{layout.checkpoint_dir}, so it cannot be extended to '
        f'{config.epochs}. Use a new --job_dir, or pass --start_fresh.')
  logging.info('Extending the run in %s from %d to %d epochs.',
               layout.job_dir, saved['epochs'], config.epochs)
  return RunState.RESUMABLE


def discard_previous_run(layout):
  """Deletes checkpoints, logs, export and metrics of an earlier run."""
  logging.info('--start_fresh: deleting earlier outputs in %s.', layout.job_dir)
  for directory in (layout.checkpoint_dir, layout.log_dir, layout.export_dir):
    storage.delete_tree(directory)
  storage.delete(layout.metrics_path)


def start(layout, config, is_chief):
  """What this run starts from; with --start_fresh, the chief clears first.

  Args:
    layout: the run's Layout.
    config: the run's resolved Config.
    is_chief: whether this process writes into the job dir.

  Returns:
    A RunState: NEW with --start_fresh (other workers ignore what the chief
    is deleting), else `previous_run_state`.

  Raises:
    config_lib.ConfigError: see `previous_run_state`.
  """
  if not config.start_fresh:
    return previous_run_state(layout, config)
  if is_chief:
    discard_previous_run(layout)
  return RunState.NEW
