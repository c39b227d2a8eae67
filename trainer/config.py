"""The trainer's configuration: one frozen dataclass, built once in `task.py`.

Values come from, in order: the defaults below, a config file (`--config`,
YAML or JSON, may `extends:` another file), then flags given on the command
line. The result is validated (errors name the key), frozen, logged and saved
next to the outputs as `config.yaml`. Library code takes plain values from
this object; only `task.py` reads flags and environment variables.

Every choice list (datasets, models, backbones, policies, strategies, ...)
is registry.py's; this module validates against it and imports no
TensorFlow, so a bad flag fails at once.
"""

import dataclasses
import difflib
import math
import os
import typing

import yaml

from trainer import embedding_cache
from trainer import errors
from trainer import registry
from trainer import storage

def _field(default, help_text, bare_flag=False):
  """A Config field; `bare_flag`: `--name` alone (and `--noname`) parse."""
  return dataclasses.field(default=default, metadata={
      'help': help_text, 'bare_flag': bare_flag})


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a training run needs. Field names are the flag names."""

  job_dir: str = _field(
      '', 'Where everything goes: checkpoints/, logs/, export/, metrics.json '
      '(local path, gs:// or /gcs/). Required unless AIP_MODEL_DIR is set.')
  dataset: str = _field(
      'mnist_sample', f'One of {", ".join(registry.DATASETS)}. mnist_sample '
      'is the bundled 5,000 MNIST digits (no download).')
  data_dir: str = _field(
      '', 'Where the dataset lives: a folder of IDX .gz files (mnist, '
      'fashion_mnist), a folder with one sub-folder per class (image_folder), '
      'a folder of train-*/validation-*/test-* shards or a glob of shards '
      "(tfrecord), or 'PREFIX-embeddings-*', the embedding cache of "
      'batch_predict --embeddings (embeddings).')
  model: str = _field('cnn_bn', f'One of {", ".join(registry.MODELS)}.')
  epochs: int = _field(10, 'Training epochs.')
  batch_size: int = _field(
      128, 'Global batch size, split evenly over replicas.')
  learning_rate: float = _field(
      1e-3, 'Adam learning rate for the global batch (not scaled with the '
      'number of replicas; see README).')
  seed: int = _field(42, 'Seed for weight initialisation and shuffling.')
  image_size: int = _field(
      0, 'Height and width images are resized to; 0 = the dataset\'s own '
      f'({registry.MNIST_SHAPE[0]} for the MNIST family, '
      f'{registry.DEFAULT_IMAGE_SIZE} otherwise).')
  channels: int = _field(
      0, '1 (grey) or 3 (colour); 0 = the dataset\'s own (1 for the MNIST '
      'family, 3 otherwise).')
  validation_fraction: float = _field(
      0.1, 'Share of the training data held out for validation (0: train '
      'without validation).')
  test_fraction: float = _field(
      0.1, 'Share held out for the test set, for datasets without their own '
      '(mnist_sample, image_folder, a tfrecord glob); 0: no test split, the '
      'run evaluates on the validation split and metrics.json says so.')
  train_examples: int = _field(
      0, 'Use only the first N training examples (0 = all); for learning '
      'curves and quick runs.')
  steps_per_epoch: int = _field(
      0, 'Batches per epoch (0 = one pass over the training data).')
  shuffle_buffer: int = _field(10_000, 'Shuffle buffer, in examples.')
  cache: str = _field(
      'auto', 'Cache decoded training data: auto (in memory when it fits in '
      'a quarter of RAM), memory, none.')
  augment: str = _field(
      '', 'Random augmentations of the training split (never validation, '
      'test or the export), comma-separated: crop (random resized crop, '
      '50-100% of the area), flip (horizontal; refused for the digits, '
      'whose mirror images are no digits), shift (up to 10%), color '
      '(brightness and contrast jitter). A bare --augment, or true in a '
      'config file, means shift (the flag was a boolean). Empty = none.',
      bare_flag=True)
  strategy: str = _field(
      'auto', 'tf.distribute strategy: '
      f'{", ".join(registry.STRATEGIES)}. auto: '
      'multi_worker when TF_CONFIG/CLUSTER_SPEC names a cluster, mirrored '
      'with two or more GPUs, default otherwise.')
  mixed_precision: str = _field(
      'float32', 'Keras dtype policy: float32, mixed_bfloat16, '
      'mixed_float16, or auto (what the GPU or CPU computes fastest; see '
      'trainer/precision.py). Exports are float32 either way.')
  jit_compile: bool = _field(
      False, 'XLA-compile the training step (helps on GPUs; about 3x slower '
      'on the CPUs measured here).')
  base_model: str = _field(
      '', 'Transfer learning: an export dir or .keras file whose '
      'convolutional feature extractor is reused, or a Keras Applications '
      f'backbone name ({", ".join(registry.BACKBONES)}). The input shape '
      'becomes the base\'s; --model is ignored.')
  base_weights: str = _field(
      '', 'For a Keras Applications base_model (required): a local or gs:// '
      'weights file without the top (.h5 or .weights.h5), "none" (random) '
      'or "imagenet" (downloads them: needs network access).')
  fine_tune_layers: int = _field(
      0, 'Transfer learning: after the head has trained, unfreeze the top N '
      'layers of the base (0 = keep it frozen).')
  fine_tune_epochs: int = _field(
      0, 'Epochs of the fine-tuning phase (0 = same as epochs).')
  fine_tune_learning_rate: float = _field(
      0.0, 'Learning rate of the fine-tuning phase (0 = learning_rate / 10).')
  hypertune_metric: str = _field(
      '', 'Vertex AI hyperparameter tuning: report this Keras metric '
      f'({", ".join(registry.HYPERTUNE_METRICS)}) after every epoch; it must '
      "equal the study's metricId. Needs the [hypertune] extra. Empty = "
      'off.')
  start_fresh: bool = _field(
      False, 'Ignore and delete existing checkpoints and outputs in job_dir '
      'and train from scratch. Not for jobs that may be restarted: Vertex AI '
      'reruns a preempted job with the same flags, and each rerun would '
      'start over.')
  break_lease: bool = _field(
      False, 'Take over JOB_DIR/_LEASE from the run that holds it. Only for '
      'a lease left by a run that is gone (a gs:// job dir whose machine '
      'died: its lease expires after 3 minutes anyway); a live local run '
      'cannot be broken. Like start_fresh, never saved in config.yaml.')
  checkpoint_dir: str = _field(
      '', 'Resume state; default JOB_DIR/checkpoints (AIP_CHECKPOINT_DIR '
      'when set).')
  tensorboard_dir: str = _field(
      '', 'TensorBoard logs; default JOB_DIR/logs (AIP_TENSORBOARD_LOG_DIR '
      'when set).')
  export_dir: str = _field(
      '', 'The model artifact; default JOB_DIR/export (AIP_MODEL_DIR when '
      'set).')
  gpu_memory_growth: bool = _field(
      True, 'Let TensorFlow take GPU memory as it needs it, rather than '
      'nearly all of every GPU at start-up (so other processes can share '
      'the GPUs). false: TensorFlow\'s default.')
  export_best: str = _field(
      '', 'Export the weights of the best epoch instead of the last: '
      f'{" or ".join(registry.MONITORED_METRICS)} (highest accuracy, lowest '
      'loss). Needs a validation split; metrics.json records best_epoch and '
      'best_value. Empty = the last epoch.')
  early_stopping_patience: int = _field(
      0, 'Stop once this many epochs in a row did not improve the monitored '
      'metric (export_best\'s, else val_loss) by more than min_delta; 0 = '
      'off. Survives preemption: its state is part of the resume state.')
  min_delta: float = _field(
      0.0, 'The smallest change of the monitored metric that counts as an '
      'improvement (export_best, early_stopping_patience).')
  learning_rate_schedule: str = _field(
      'constant', f'{", ".join(registry.LEARNING_RATE_SCHEDULES)}: the '
      'learning rate after the warm-up stays at learning_rate, decays along '
      'half a cosine to 0, or drops tenfold at 1/2 and 3/4 of the steps. A '
      'function of the global step (one global batch): a resumed run '
      'continues the curve. The per-epoch rate is in the history and '
      'TensorBoard.')
  warmup_epochs: float = _field(
      0.0, 'Epochs (may be fractional) of linear learning-rate warm-up '
      'before the schedule; 0 = none.')
  label_smoothing: float = _field(
      0.0, 'Label smoothing in [0, 1): train against 1 - e on the true class '
      'and e spread over all classes. The losses reported are the smoothed '
      'ones.')
  class_weight: str = _field(
      '', 'balanced: weight each training example by n / (classes * n_class) '
      'from the training split\'s label counts, for unbalanced folders '
      '(the training loss and accuracy are then weighted too). Empty = all '
      'examples weigh the same.')

  def __post_init__(self):
    _validate(self)

  # Derived values (not settable; computed from the fields).

  @property
  def image_shape(self):
    """(height, width, channels) the model takes."""
    size, _, channels = registry.DATASETS[self.dataset].shape or (
        registry.DEFAULT_IMAGE_SIZE, registry.DEFAULT_IMAGE_SIZE,
        registry.DEFAULT_CHANNELS)
    size = self.image_size or size
    return (size, size, self.channels or channels)

  @property
  def augmentations(self):
    """--augment's names, as a tuple (empty: no augmentation)."""
    return tuple(name for name in self.augment.split(',') if name)

  @property
  def transfer(self):
    return bool(self.base_model)

  @property
  def two_stage(self):
    """Whether the run trains a head on an embedding cache's vectors."""
    return self.dataset in registry.VECTOR_DATASETS

  @property
  def fine_tune_rate(self):
    return self.fine_tune_learning_rate or self.learning_rate / 10

  def to_dict(self):
    return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Keys that say where a run writes, and how it takes its folders over
# (config.yaml leaves out all but job_dir: reused with --config, it must not
# send a new run to this run's folders, delete them or break their lease).
_PLACEMENT_KEYS = ('job_dir', 'checkpoint_dir', 'tensorboard_dir', 'export_dir',
                   'start_fresh', 'break_lease')
# Keys that change how a run trains but not what: a run may resume with other
# values.
_NOT_TRAINING_KEYS = _PLACEMENT_KEYS + ('cache', 'strategy', 'jit_compile',
                                        'hypertune_metric',
                                        'gpu_memory_growth')


class ConfigError(errors.UserError, ValueError):
  """A configuration value is unknown, malformed or inconsistent."""

  kind = 'bad_config'


def _check(condition, key, message):
  if not condition:
    raise ConfigError(f'{key}: {message}')


def _validate(config):
  """Raises ConfigError naming the key of the first bad value."""
  _validate_types(config)
  _validate_choices(config)
  _validate_numbers(config)
  check_dataset(config.dataset, config.data_dir)
  _validate_two_stage(config)
  fixed = registry.DATASETS[config.dataset].shape
  if fixed and not config.transfer:
    height, width, channels = fixed
    _check(config.image_size in (0, height), 'image_size',
           f'{config.dataset} images are {height}x{width}; leave image_size '
           'unset.')
    _check(config.channels in (0, channels), 'channels',
           f'{config.dataset} images are '
           f'{"grey" if channels == 1 else "colour"}; leave channels unset.')
  _check(config.transfer or not config.fine_tune_layers, 'fine_tune_layers',
         'only applies with --base_model (transfer learning).')
  _check(config.transfer or not config.base_weights, 'base_weights',
         'only applies with --base_model.')
  _validate_transfer(config)
  _check(config.job_dir, 'job_dir', 'required (or set AIP_MODEL_DIR).')
  _validate_best_epoch(config)
  _validate_augment(config)
  _check(config.hypertune_metric in registry.HYPERTUNE_METRICS + ('',),
         'hypertune_metric', f'choose one of {registry.HYPERTUNE_METRICS}.')
  _check(not config.hypertune_metric.startswith('val_') or
         config.validation_fraction > 0, 'hypertune_metric',
         f'{config.hypertune_metric} needs a validation split '
         '(validation_fraction > 0).')


def parse_augment(value):
  """--augment's value in canonical form: names in registry order, or ''.

  True and 'true' (the flag's old boolean form, a bare --augment) mean
  shift; False, 'false' and '' mean none. Unknown names are left for
  validation to name.
  """
  if value is True or value == 'true':
    return 'shift'
  if value is False or value in ('false', None):
    return ''
  if not isinstance(value, str):
    return value  # Validation names the type.
  names = {name.strip() for name in value.split(',') if name.strip()}
  known = [name for name in registry.AUGMENTATIONS if name in names]
  return ','.join(known + sorted(names - set(known)))


def _validate_augment(config):
  names = config.augmentations
  unknown = [name for name in names if name not in registry.AUGMENTATIONS]
  if unknown:
    raise ConfigError(f'augment: unknown augmentation {unknown[0]!r}; choose '
                      f'from {registry.AUGMENTATIONS}, comma-separated.')
  _check('flip' not in names or
         config.dataset not in registry.NO_FLIP_DATASETS, 'augment',
         f'flip mirrors images, and a mirrored digit is no digit '
         f'({config.dataset}); use shift, crop or color.')


def _validate_best_epoch(config):
  """--export_best, --early_stopping_patience and --min_delta."""
  choices = tuple(registry.MONITORED_METRICS)
  _check(config.export_best in choices + ('',), 'export_best',
         f'unknown metric {config.export_best!r}; choose one of {choices}.')
  _check(config.early_stopping_patience >= 0, 'early_stopping_patience',
         'must not be negative.')
  _check(config.min_delta >= 0, 'min_delta', 'must not be negative.')
  for key in ('export_best', 'early_stopping_patience'):
    if getattr(config, key):
      _check(config.validation_fraction > 0, key,
             'needs a validation split (validation_fraction > 0).')
      _check(not config.fine_tune_layers, key,
             'does not apply to a run with fine_tune_layers (two phases).')


def _validate_types(config):
  hints = typing.get_type_hints(Config)
  for name in FIELDS:
    value = getattr(config, name)
    expected = hints[name]
    ok = (isinstance(value, expected) and
          not (expected is int and isinstance(value, bool)))
    _check(ok, name, f'expected {expected.__name__}, got {value!r}.')
    # NaN and infinity pass every comparison below the wrong way, and JSON
    # (the checkpoint record holds the config) cannot hold them.
    _check(expected is not float or math.isfinite(value), name,
           f'must be a finite number, got {value!r}.')


def _validate_choices(config):
  """The keys whose value is one of a registry list."""
  for key, what, choices in (
      ('dataset', 'dataset', tuple(registry.DATASETS)),
      ('model', 'model', tuple(registry.MODELS)),
      ('strategy', 'strategy', registry.STRATEGIES),
      ('mixed_precision', 'policy', registry.MIXED_PRECISION_CHOICES),
      ('cache', 'cache mode', registry.CACHE_MODES),
      ('learning_rate_schedule', 'schedule',
       registry.LEARNING_RATE_SCHEDULES)):
    value = getattr(config, key)
    _check(value in choices, key,
           f'unknown {what} {value!r}; choose one of {choices}.')


def _validate_numbers(config):
  for name in ('epochs', 'batch_size'):
    _check(getattr(config, name) > 0, name, 'must be at least 1.')
  for name in ('train_examples', 'steps_per_epoch', 'fine_tune_layers',
               'fine_tune_epochs', 'shuffle_buffer', 'image_size'):
    _check(getattr(config, name) >= 0, name, 'must not be negative.')
  _check(config.learning_rate > 0, 'learning_rate', 'must be positive.')
  _check(config.fine_tune_learning_rate >= 0, 'fine_tune_learning_rate',
         'must not be negative.')
  _check(0 <= config.warmup_epochs < config.epochs, 'warmup_epochs',
         'must be at least 0 and less than epochs.')
  _check(0 <= config.label_smoothing < 1, 'label_smoothing',
         'must be in [0, 1).')
  _check(config.class_weight in registry.CLASS_WEIGHTS + ('',),
         'class_weight', f'unknown class_weight {config.class_weight!r}; '
         f'choose {" or ".join(registry.CLASS_WEIGHTS)}, or leave it empty.')
  _check(config.channels in (0, 1, 3), 'channels', 'must be 1, 3 or 0 (auto).')
  _check(config.image_size == 0 or config.image_size >= 8, 'image_size',
         'must be at least 8 (or 0 for the dataset default).')
  for name in ('validation_fraction', 'test_fraction'):
    _check(0 <= getattr(config, name) < 1, name, 'must be in [0, 1).')
  _check(config.validation_fraction + config.test_fraction < 1,
         'validation_fraction', 'validation_fraction + test_fraction must '
         'leave some training data.')


def check_dataset(dataset, data_dir):
  """Checks that --data_dir is given exactly when `dataset` needs one.

  Shared by the trainer's Config and trainer.write_samples.

  Raises:
    ConfigError: naming the key at fault.
  """
  _check(dataset in registry.DATASETS, 'dataset',
         f'unknown dataset {dataset!r}; choose one of '
         f'{tuple(registry.DATASETS)}.')
  needs_data_dir = registry.DATASETS[dataset].needs_data_dir
  _check(not needs_data_dir or data_dir, 'data_dir',
         f'dataset {dataset!r} needs --data_dir.')
  others = [name for name, spec in registry.DATASETS.items()
            if spec.needs_data_dir]
  _check(needs_data_dir or not data_dir, 'data_dir',
         f'the bundled {dataset} dataset takes no --data_dir; pick '
         f'--dataset={", ".join(others[:-1])} or {others[-1]}.')


def _validate_transfer(config):
  """Checks what can be known about transfer mode without loading the base.

  Whether a base path exists, and whether image_size, channels and
  fine_tune_layers fit it, is checked when the run starts (transfer.py).
  """
  _check(config.fine_tune_layers or not config.fine_tune_epochs,
         'fine_tune_epochs', 'only applies with --fine_tune_layers.')
  _check(config.fine_tune_layers or not config.fine_tune_learning_rate,
         'fine_tune_learning_rate', 'only applies with --fine_tune_layers.')
  backbone = registry.BACKBONES.get(config.base_model)
  _check(not config.base_weights or backbone, 'base_weights',
         'only applies to a Keras Applications base_model '
         f'({", ".join(registry.BACKBONES)}); '
         f'{config.base_model} brings its own weights.')
  if not backbone:
    return
  _check(config.base_weights, 'base_weights',
         f'{config.base_model} needs weights: the path of a local weights '
         'file, "imagenet" (downloads them: needs network access) or "none" '
         '(random weights).')
  _check(config.channels in (0, 3), 'channels',
         f'{config.base_model} takes colour images; leave channels unset '
         '(grey images are converted to RGB by the input pipeline).')
  smallest = backbone.min_image_size
  _check(not config.image_size or config.image_size >= smallest,
         'image_size', f'{config.base_model} needs images of at least '
         f'{smallest}x{smallest}; got {config.image_size} (unset: '
         f'{backbone.default_image_size}).')


# --------------------------------------------------------------------------
# Building a Config from a file and overrides.


def load_file(path):
  """Reads a YAML or JSON config file into a dict, following `extends:`.

  A file may name another (relative to its own folder) under `extends:`;
  its keys are read first and overridden by this file's.

  Raises:
    ConfigError: if the file is missing, unreadable or not a mapping.
  """
  return _load_file(path, seen=())


def _load_file(path, seen):
  if path in seen:
    raise ConfigError(f'extends: cycle through {path}.')
  try:
    text = storage.read_text(path)
  except FileNotFoundError as e:
    raise ConfigError(f'config: no such file {path}.') from e
  try:
    values = yaml.safe_load(text) if text.strip() else {}
  except yaml.YAMLError as e:  # JSON is YAML, so this covers both.
    raise ConfigError(f'config: cannot parse {path}: {e}') from e
  if not isinstance(values, dict):
    raise ConfigError(f'config: {path} must hold a mapping of keys to values.')
  parent = values.pop('extends', None)
  if parent is None:
    return values
  if not os.path.isabs(parent) and not storage.is_gcs(parent):
    parent = storage.join(storage.dirname(path), parent)
  merged = _load_file(parent, seen + (path,))
  merged.update(values)
  return merged


def _coerce(name, value, source):
  """Converts a file value to the field's type, or raises naming the key."""
  if name not in FIELDS:
    close = difflib.get_close_matches(name, FIELDS, n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise ConfigError(f'{name}: unknown key in {source}.{hint}')
  expected = typing.get_type_hints(Config)[name]
  if expected is float and isinstance(value, int) and not isinstance(
      value, bool):
    return float(value)
  if name == 'augment':
    return parse_augment(value)
  if value is None and expected is str:
    return ''
  return value


def build(file_values=None, overrides=None, source='config file'):
  """Builds the validated Config: defaults, then file values, then overrides.

  Args:
    file_values: dict from `load_file` (or None).
    overrides: dict of values given explicitly (flags, environment).
    source: how to name `file_values` in error messages.

  Returns:
    A frozen, validated Config.

  Raises:
    ConfigError: naming the first unknown key or bad value.
  """
  values = {}
  for name, value in (file_values or {}).items():
    values[name] = _coerce(name, value, source)
  for name, value in (overrides or {}).items():
    values[name] = _coerce(name, value, 'flags')
  return Config(**values)


def save(config, path):
  """Writes the resolved configuration as YAML (loadable with --config).

  The output folders other than job_dir, start_fresh and break_lease are
  written as comments only: a file reused for another run must not point it
  at this run's folders, delete them, nor take their lease.
  """
  values = config.to_dict()
  left_out = {k: values.pop(k) for k in _PLACEMENT_KEYS if k != 'job_dir'}
  lines = ['# Resolved configuration of this run (loadable with --config).']
  lines += [f'# {k}: {v!r}' for k, v in sorted(left_out.items()) if v]
  storage.write_text(path, '\n'.join(lines) + '\n' +
                     yaml.safe_dump(values, sort_keys=True))


def training_differences(config, previous):
  """Keys whose values differ between `config` and a saved config dict.

  Only keys that change what is trained count; where outputs go, caching,
  the strategy and XLA do not; nor does a larger `epochs` (`extends`).
  """
  current = config.to_dict()
  if 'augment' in previous:  # Saved as a boolean before it took names.
    previous = dict(previous, augment=parse_augment(previous['augment']))
  return sorted(k for k in current
                if k not in _NOT_TRAINING_KEYS and k in previous and
                previous[k] != current[k] and
                not (k == 'epochs' and extends(config, previous)))


def extends(config, previous):
  """Whether `config` continues a saved run to more epochs.

  More epochs of the same training continue it from its last epoch (a
  finished run, or an interrupted one), rather than starting another run.
  Not for transfer runs with fine-tuning, whose second phase follows the
  first's last epoch.
  """
  saved = previous.get('epochs')
  return (isinstance(saved, int) and not isinstance(saved, bool) and
          saved < config.epochs and not config.fine_tune_layers)


def describe_changes(config, saved):
  """What `config` changes of a saved config dict: 'key: old -> new, ...'.

  Only the keys `training_differences` counts; '' when there are none. The
  job dir's previous run (job_dir.py) and a resume backup (checkpoints.py)
  are both refused with it.
  """
  return ', '.join(f'{key}: {saved[key]!r} -> {getattr(config, key)!r}'
                   for key in training_differences(config, saved))


def default(name):
  """The default value of a Config field."""
  return FIELDS[name].default


def markdown_reference():
  """The README's flag table, generated from the fields (tests compare)."""
  rows = ['| flag | default | meaning |', '| --- | --- | --- |',
          '| `--config` | | a YAML or JSON file of these flags (flags given '
          'on the command line override it) |']
  for name, field in FIELDS.items():
    default = field.default
    shown = f'`{default}`' if default not in ('', None) else ''
    if isinstance(default, bool):
      shown = f'`{str(default).lower()}`'
    text = ' '.join(field.metadata['help'].split()).replace('|', '\\|')
    rows.append(f'| `--{name}` | {shown} | {text} |')
  return '\n'.join(rows) + '\n'


def _one_stage(base, flag=''):
  """The way out of what an embedding cache cannot do."""
  return ('train one-stage with --dataset=image_folder '
          f'--data_dir=IMAGE_FOLDER --base_model={base or "EXPORT"}{flag} '
          'instead.')


def _validate_two_stage(config):
  """--dataset=embeddings: what a cache of frozen vectors cannot serve.

  Whether the cache exists, is labelled and was made by the base's extractor
  is checked once the base is loaded, before any work (data/embeddings.py).
  """
  if not config.two_stage:
    return
  _check(config.base_model, 'base_model',
         f'--dataset={config.dataset} trains a head on the vectors of an '
         "export's feature extractor: pass --base_model=EXPORT, the "
         '--model_dir the cache was made with (batch_predict --embeddings).')
  _check(config.base_model not in registry.BACKBONES, 'base_model',
         f'{config.base_model} is a backbone, not an export: an embedding '
         'cache is made by batch_predict from an export, so pass that '
         f'export as --base_model; or {_one_stage(config.base_model)}')
  base = config.base_model
  _check(not config.augment, 'augment',
         'an embedding cache holds one vector per image, computed once from '
         'the image as it is: there is no image left to augment; ' +
         _one_stage(base, f' --augment={config.augment}'))
  _check(not config.fine_tune_layers, 'fine_tune_layers',
         'an embedding cache holds the output of the frozen feature '
         'extractor, and fine-tuning changes that extractor; ' +
         _one_stage(base, f' --fine_tune_layers={config.fine_tune_layers}'))
  try:
    embedding_cache.prefix_of(config.data_dir)
  except embedding_cache.EmbeddingCacheError as e:
    raise ConfigError(f'data_dir: {e}') from None
