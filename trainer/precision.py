"""Mixed precision: choosing the Keras dtype policy, and float32 exports.

`--mixed_precision` takes a Keras policy name or `auto`, which picks what the
hardware computes fastest:

  GPU with compute capability >= 8.0 (A100, L4, H100)   mixed_bfloat16
  GPU with compute capability >= 7.0 (V100, T4)         mixed_float16
  CPU with AVX512-BF16 or AMX-BF16 instructions         mixed_bfloat16
  anything else                                          float32

Whether it pays depends on the model: measured on this project's 2-core
AVX512-BF16 machines, mixed_bfloat16 trains deep_mnist 1.9x faster at
the same accuracy (3,092 against 1,612 images/s when the shared machine is
in its fast state; no gain in its slow state) but cnn_bn about 10% slower
(its batch normalisation and narrow convolutions gain nothing from
bfloat16). So the default is float32, and the deep_mnist configs ask for
`auto` (benchmarks/RESULTS.md).

Variables stay float32 under every policy (Keras' mixed precision), and the
exported artifact is always a float32 model: it scores the same on any
hardware, whatever trained it.
"""

import contextlib

from absl import logging
import keras
import tensorflow as tf

from trainer import registry

_BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')


def cpu_flags():
  """The CPU feature flags Linux reports (empty elsewhere)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('flags'):
          return set(line.split(':', 1)[1].split())
  except OSError:
    pass
  return set()


def gpu_compute_capabilities():
  """(major, minor) of each local GPU."""
  capabilities = []
  for gpu in tf.config.list_physical_devices('GPU'):
    details = tf.config.experimental.get_device_details(gpu)
    capabilities.append(tuple(details.get('compute_capability', (0, 0))))
  return capabilities


def resolve(requested, gpu_capabilities=None, flags=None):
  """Turns `auto` into a policy name for this hardware.

  Args:
    requested: one of registry.MIXED_PRECISION_CHOICES.
    gpu_capabilities: compute capabilities of the local GPUs (default: ask
      TensorFlow).
    flags: CPU feature flags (default: /proc/cpuinfo).

  Returns:
    One of registry.PRECISION_POLICIES.
  """
  if requested not in registry.MIXED_PRECISION_CHOICES:
    raise ValueError(f'Unknown mixed precision {requested!r}; choose one of '
                     f'{registry.MIXED_PRECISION_CHOICES}.')
  if requested != 'auto':
    return requested
  policy, why = _choose(gpu_capabilities, flags)
  logging.info('--mixed_precision=auto: %s (%s).', policy, why)
  return policy


def _choose(gpu_capabilities, flags):
  """(policy, why) for `auto`; see `resolve`."""
  if gpu_capabilities is None:
    gpu_capabilities = gpu_compute_capabilities()
  if gpu_capabilities:
    slowest = min(gpu_capabilities)
    shown = '.'.join(map(str, slowest))
    if slowest >= (8, 0):
      return 'mixed_bfloat16', f'GPU compute capability {shown} >= 8.0'
    if slowest >= (7, 0):
      return 'mixed_float16', f'GPU compute capability {shown} >= 7.0'
    return 'float32', (f'GPU compute capability {shown}: below 7.0, '
                       'float16 would be slower')
  if flags is None:
    flags = cpu_flags()
  found = sorted(set(_BF16_CPU_FLAGS) & set(flags))
  if found:
    return 'mixed_bfloat16', f'no GPU; the CPU has {", ".join(found)}'
  return 'float32', ('falling back: no GPU, and the CPU has no '
                     f'{" or ".join(_BF16_CPU_FLAGS)} instructions')


@contextlib.contextmanager
def policy_scope(policy):
  """Layers created inside compute with `policy`; the global one is restored."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def _float32_config(value):
  """A copy of a (nested) Keras config with every dtype policy float32."""
  if isinstance(value, dict):
    copy = {key: _float32_config(item) for key, item in value.items()}
    if copy.get('class_name') in ('DTypePolicy', 'FloatDTypePolicy'):
      copy['config'] = dict(copy.get('config') or {}, name='float32')
    return copy
  if isinstance(value, list):
    return [_float32_config(item) for item in value]
  return value


def as_float32(model):
  """The same model (same weights) computing in float32.

  A model built under a mixed policy is rebuilt from its config with float32
  policies and given its weights (which mixed precision keeps in float32
  anyway). A float32 model is returned as it is.
  """
  if all(layer.dtype_policy.name == 'float32' for layer in _all_layers(model)):
    return model
  rebuilt = model.__class__.from_config(_float32_config(model.get_config()))
  rebuilt.set_weights(model.get_weights())
  return rebuilt


def _all_layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)
