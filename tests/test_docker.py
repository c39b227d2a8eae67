"""The Dockerfile agrees with setup.py (no Docker engine runs here)."""

import os
import re

from tests import helpers


def _read(name):
  with open(os.path.join(helpers.REPO, name)) as f:
    return f.read()


def _stages(dockerfile):
  """{stage name: instructions} of a multi-stage Dockerfile, no comments."""
  dockerfile = re.sub(r'^\s*#.*\n', '', dockerfile, flags=re.M)
  parts = re.split(r'^FROM\s+\S+\s+AS\s+(\w+)\s*$', dockerfile, flags=re.M)
  return dict(zip(parts[1::2], parts[2::2]))


def _pinned(requirement_name, setup_text):
  match = re.search(rf"'{re.escape(requirement_name)}(?:\[\w+\])?>=([\d.]+),<([\d.]+)'",
                    setup_text)
  assert match, f'{requirement_name} is not pinned to a range in setup.py'
  return tuple(int(p) for p in match.group(1).split('.')), tuple(
      int(p) for p in match.group(2).split('.'))


def _version_tuple(text):
  return tuple(int(p) for p in text.split('.'))


def test_pinned_versions_fall_in_the_setup_py_ranges():
  dockerfile, setup = _read('Dockerfile'), _read('setup.py')
  for name, pattern in (
      ('tensorflow', r'"tensorflow(?:\[[\w-]+\])?==([\d.]+)"'),
      ('apache-beam', r'"apache-beam\[gcp\]==([\d.]+)"')):
    low, high = _pinned(name, setup)
    versions = re.findall(pattern, dockerfile)
    assert versions, f'{name} is not pinned in the Dockerfile'
    for version in versions:
      assert low <= _version_tuple(version) < high, (name, version)
  beam_image = re.search(r'^ARG BEAM_VERSION=([\d.]+)$', dockerfile, re.M)
  assert beam_image.group(1) in re.findall(
      r'"apache-beam\[gcp\]==([\d.]+)"', dockerfile)


def test_base_image_is_pinned_to_a_version():
  dockerfile = _read('Dockerfile')
  for image in re.findall(r'^FROM\s+(\S+)', dockerfile, flags=re.M):
    if image in _stages(dockerfile):
      continue  # A previous stage.
    assert ':' in image and not image.endswith(':latest'), image


def test_trainer_target_is_the_default_non_root_and_runs_the_trainer():
  stages = _stages(_read('Dockerfile'))
  assert list(stages)[-1] == 'trainer', 'docker build without --target'
  trainer = stages['trainer']
  assert re.search(r'^USER\s+(?!root\b|0\b)\w+', trainer, flags=re.M)
  assert 'ENTRYPOINT ["python", "-m", "trainer.task"]' in trainer
  assert os.path.exists(os.path.join(helpers.REPO, 'trainer', 'task.py'))


def test_dataflow_target_keeps_the_beam_boot_entry_point():
  stages = _stages(_read('Dockerfile'))
  assert 'ENTRYPOINT' not in stages['dataflow']
  assert 'USER' not in stages['dataflow']
  assert re.search(r'FROM apache/beam_python\$\{PYTHON_VERSION\}_sdk:'
                   r'\$\{BEAM_VERSION\} AS base', _read('Dockerfile'))


def test_the_image_installs_this_repository_and_everything_it_packages():
  dockerfile, setup = _read('Dockerfile'), _read('setup.py')
  base = _stages(dockerfile)['base']
  assert re.search(r'pip install .*"\.\[hypertune\]"', base)
  copied = set(re.findall(r'^COPY\s+(\S+)', base, flags=re.M))
  assert {'setup.py', 'trainer/', 'batch_predict/', 'config/'} <= copied
  for package in re.findall(r"'(\w+)', '\w+\.\*'", setup):
    assert f'{package}/' in copied, package
  ignored = _read('.dockerignore').split()
  assert not {'trainer', 'batch_predict', 'config', 'setup.py'} & set(ignored)


def test_dataflow_gpu_target_adds_cuda_tensorflow_to_the_dataflow_image():
  dockerfile = _read('Dockerfile')
  stages = _stages(dockerfile)
  gpu = stages['dataflow_gpu']
  assert re.search(r'^FROM base AS dataflow_gpu$', dockerfile, flags=re.M)
  # The Beam SDK's boot entry point and root user, as for CPU workers.
  assert 'ENTRYPOINT' not in gpu and 'USER' not in gpu
  # TensorFlow with its CUDA libraries, at the version base installs (and
  # test_pinned_versions_fall_in_the_setup_py_ranges checks against setup.py).
  cuda = re.findall(r'"tensorflow\[and-cuda\]==([\d.]+)"', gpu)
  plain = re.findall(r'"tensorflow==([\d.]+)"', stages['base'])
  assert cuda and cuda == plain
  # The CPU image stays as it was: no CUDA in `dataflow`.
  assert 'and-cuda' not in stages['dataflow']
  assert list(stages)[-1] == 'trainer'  # Still the default target.
