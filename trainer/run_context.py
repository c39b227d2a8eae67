"""What every step of a training run receives: RunContext, and Phase.

task.py creates the context once, after the strategy: `create` resolves the
configuration (a transfer run loads its base, whose input shape becomes the
run's image_size and channels; a two-stage run's embedding cache is checked
against that base) so that the Config logged, saved as
config.yaml, recorded in each backup and trained with is one object. The
steps of train.py take the context plus what they computed before (the
data source, the model, the work dirs), never a long list of parameters.

A Phase is one `fit` of a run: the head, and for a transfer run with
--fine_tune_layers the fine-tuning phase, which trains the same model on for
its own epochs at its own learning rate in its own folders.
"""

import dataclasses

from trainer import cluster
from trainer import job_dir
from trainer import preemption
from trainer import transfer
from trainer.data import embeddings


@dataclasses.dataclass(frozen=True)
class RunContext:
  """A run's resolved configuration and what it runs under.

  Attributes:
    config: the resolved config.Config.
    strategy: the tf.distribute strategy (created first, in task.py).
    layout: job_dir.Layout: where this run writes each output.
    task: which task of a cluster this process is (the chief writes).
    stop_signal: a preemption.StopSignal; training stops at a safe point
      once it records a signal (task.py installs its handlers).
    started_at: time.time() when the process started, to report how long
      it took to reach the first training step; None to not report it.
    lease: the chief's lease.Lease on the job dir, checked before anything
      is published; None elsewhere.
    base: the transfer.Base of a transfer run, else None.
  """
  config: object
  strategy: object
  layout: job_dir.Layout
  task: cluster.TaskInfo = cluster.TaskInfo()
  stop_signal: preemption.StopSignal = dataclasses.field(
      default_factory=preemption.StopSignal)
  started_at: float = None
  lease: object = None
  base: transfer.Base = None


@dataclasses.dataclass(frozen=True)
class Phase:
  """One `fit` of a run.

  Attributes:
    epochs: the epochs of this phase.
    learning_rate: its Adam learning rate.
    dirs: the checkpoints.WorkDirs (or a later phase's sub-folders of them)
      it restores from and writes to.
    started_at: measure the first training step from here (the first
      phase), or None.
  """
  epochs: int
  learning_rate: float
  dirs: object
  started_at: float = None


def create(config, strategy, task=cluster.TaskInfo(), *, stop_signal=None,
           started_at=None, lease=None):
  """Resolves `config` once and gathers what every step of the run needs.

  Call after creating the strategy: a transfer base's variables are created
  under its scope.

  Args:
    config: a validated config.Config, as the user gave it.
    strategy: the tf.distribute strategy.
    task: this process's cluster.TaskInfo.
    stop_signal: the binary's preemption.StopSignal (default: a new one
      whose handlers nobody installed).
    started_at: see RunContext.
    lease: see RunContext.

  Returns:
    A RunContext whose config is the resolved one.

  Raises:
    config.ConfigError: naming the key a transfer base contradicts.
    embedding_cache.EmbeddingCacheError: if --dataset=embeddings names a
      cache the base did not make, or one without labels.
  """
  base = None
  if config.transfer:  # The base fixes the input shape.
    with strategy.scope():
      config, base = transfer.prepare(config)
  if config.two_stage:  # Before any work: a cache the base did not make.
    embeddings.check_base(config.data_dir, base)
  return RunContext(
      config=config, strategy=strategy,
      layout=job_dir.Layout.from_config(config), task=task,
      stop_signal=stop_signal or preemption.StopSignal(),
      started_at=started_at, lease=lease, base=base)
