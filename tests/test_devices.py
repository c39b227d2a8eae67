"""GPU preparation, checked with injected devices: what a GPU machine would
be configured with, on this CPU-only one."""

from typing import NamedTuple

from trainer import devices


class FakeGpu(NamedTuple):
  """What `tf.config.list_physical_devices('GPU')` lists."""
  name: str
  device_type: str = 'GPU'


def gpus(count):
  return [FakeGpu(f'/physical_device:GPU:{index}') for index in range(count)]


class GrowthRecorder:
  """Stands in for `tf.config.experimental.set_memory_growth`."""

  def __init__(self, initialised=()):
    self.calls = []
    self._initialised = set(initialised)

  def __call__(self, device, enable):
    if device.name in self._initialised:
      raise RuntimeError('Physical devices cannot be modified after being '
                         'initialized')
    self.calls.append((device.name, enable))


def test_memory_growth_is_turned_on_for_every_gpu():
  recorder = GrowthRecorder()
  grown = devices.enable_memory_growth(gpus(2), recorder)
  assert recorder.calls == [('/physical_device:GPU:0', True),
                            ('/physical_device:GPU:1', True)]
  assert grown == ['/physical_device:GPU:0', '/physical_device:GPU:1']
  assert devices.describe(gpus(2), grown) == (
      'Found 2 GPU(s): /physical_device:GPU:0, /physical_device:GPU:1; '
      'memory growth on.')


def test_a_gpu_already_in_use_keeps_its_setting_with_a_warning(caplog):
  recorder = GrowthRecorder(initialised={'/physical_device:GPU:0'})
  grown = devices.enable_memory_growth(gpus(2), recorder)
  assert grown == ['/physical_device:GPU:1']
  assert 'stays as it was on /physical_device:GPU:0' in caplog.text
  assert 'memory growth on 1 of them' in devices.describe(gpus(2), grown)


def test_without_gpus_nothing_is_configured_and_the_cpu_is_named():
  # The real list on this machine: no GPU, and the real setter is not called.
  assert devices.list_gpus() == []
  assert devices.enable_memory_growth() == []
  assert devices.describe([], []) == 'No GPU found: running on the CPU.'
  assert 'memory growth off' in devices.describe(gpus(1), [])
