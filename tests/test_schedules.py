"""Learning-rate schedules: the curves, and a resumed run continuing them.

The 2-device case runs this module in a fresh process (logical CPU devices
must be configured before TensorFlow starts):
  python -m tests.test_schedules DEVICES JOB_ROOT OUTPUT_JSON
"""

import json
import os
import sys

import numpy as np
import pytest

from tests import helpers
from tests.helpers import interrupt
from trainer import config as config_lib
from trainer import schedules

_STEPS = 4  # Per epoch.
_RUN = {'model': 'softmax', 'epochs': 3, 'steps_per_epoch': _STEPS,
        'batch_size': 32, 'train_examples': 256, 'learning_rate': 0.01,
        'learning_rate_schedule': 'cosine', 'warmup_epochs': 1.5}


def _rate(schedule, step):
  return float(schedule(step))


def test_warm_up_rises_linearly_then_cosine_decays_to_zero():
  schedule = schedules.WarmupDecay(0.1, 'cosine', total_steps=14,
                                   warmup_steps=4)
  assert [_rate(schedule, s) for s in range(4)] == pytest.approx(
      [0.025, 0.05, 0.075, 0.1])
  assert _rate(schedule, 4) == pytest.approx(0.1)
  assert _rate(schedule, 9) == pytest.approx(0.05)
  assert _rate(schedule, 14) == pytest.approx(0.0, abs=1e-9)
  assert _rate(schedule, 20) == pytest.approx(0.0, abs=1e-9)


def test_step_drops_tenfold_at_half_and_three_quarters():
  schedule = schedules.WarmupDecay(1.0, 'step', total_steps=100)
  assert [_rate(schedule, s) for s in (0, 49, 50, 74, 75, 99)] == (
      pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01]))
  constant = schedules.WarmupDecay(0.5, 'constant', 10, warmup_steps=2)
  assert [_rate(constant, s) for s in (0, 1, 2, 9)] == pytest.approx(
      [0.25, 0.5, 0.5, 0.5])


def test_a_schedule_is_saved_with_the_optimizer_and_loads_back():
  schedule = schedules.WarmupDecay(0.1, 'cosine', 14, 4)
  again = schedules.WarmupDecay.from_config(schedule.get_config())
  assert _rate(again, 7) == _rate(schedule, 7)


def test_the_steps_per_epoch_come_from_the_global_batch(tmp_path):
  config = config_lib.build(overrides={
      'job_dir': str(tmp_path), 'batch_size': 100,
      'learning_rate_schedule': 'step'})
  assert schedules.steps_per_epoch(config, 1001) == 11
  assert schedules.make(config, 0.1, 10, 1001).total_steps == 110
  # No schedule and no warm-up: today's fixed rate, a float.
  constant = config_lib.build(overrides={'job_dir': str(tmp_path)})
  assert schedules.make(constant, 0.1, 10, 1001) == 0.1
  with pytest.raises(config_lib.ConfigError, match='--steps_per_epoch'):
    schedules.make(config, 0.1, 10, None)
  with pytest.raises(config_lib.ConfigError, match='warmup_epochs'):
    config_lib.build(overrides={'job_dir': str(tmp_path), 'epochs': 2,
                                'warmup_epochs': 2.0})


def resumed_rates(job_root, strategy):
  """Per-epoch rates of a run killed during epoch 3 and rerun.

  Returns:
    {"rates": [rate after each epoch], "attempts": [attempt of each epoch],
     "replicas": replicas in sync}.
  """
  overrides = dict(_RUN, job_dir=os.path.join(job_root, 'resumed'))
  with pytest.raises(interrupt.Killed):
    interrupt.attempt(overrides, strategy, interrupt.KillDuring(3))
  metrics = interrupt.attempt(overrides, strategy)
  return {'rates': [e['learning_rate'] for e in metrics['history']],
          'attempts': [e['attempt'] for e in metrics['history']],
          'replicas': metrics['replicas']}


def _expected_rates():
  schedule = schedules.WarmupDecay(
      _RUN['learning_rate'], 'cosine', total_steps=_RUN['epochs'] * _STEPS,
      warmup_steps=round(_RUN['warmup_epochs'] * _STEPS))
  # The rate after an epoch is the one of the next step (as TensorBoard).
  return [_rate(schedule, epoch * _STEPS)
          for epoch in range(1, _RUN['epochs'] + 1)]


@pytest.mark.slow
def test_a_resumed_run_continues_the_curve_at_its_step(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  resumed = resumed_rates(str(tmp_path), tf.distribute.get_strategy())
  # Epochs 1 and 2 ran uninterrupted, epoch 3 after the resume; each rate
  # is the curve's at its global step (a resume from step 0 would give
  # epoch 3 the rate after epoch 1).
  assert resumed['attempts'] == [1, 1, 2]
  expected = _expected_rates()
  np.testing.assert_allclose(resumed['rates'], expected, rtol=1e-6, atol=1e-9)
  # Warm-up, peak, then down the cosine: not a constant rate.
  assert expected[0] < _RUN['learning_rate'] and expected[2] < expected[1]
  assert not np.isclose(expected[2], expected[0])


@pytest.mark.slow
def test_over_two_devices_one_step_is_one_global_batch(tmp_path):
  output = str(tmp_path / 'rates.json')
  helpers.run_module('tests.test_schedules', '2', str(tmp_path), output)
  with open(output) as f:
    resumed = json.load(f)
  assert resumed['replicas'] == 2 and resumed['attempts'] == [1, 1, 2]
  np.testing.assert_allclose(resumed['rates'], _expected_rates(), rtol=1e-6,
                             atol=1e-9)


def _main(devices, job_root, output):
  from tests import logical_devices  # pylint: disable=g-import-not-at-top
  logical_devices.configure_logical_cpus(int(devices))
  from trainer import distribute  # pylint: disable=g-import-not-at-top
  strategy = distribute.create_strategy('mirrored')
  with open(output, 'w') as f:
    json.dump(resumed_rates(job_root, strategy), f)


if __name__ == '__main__':
  _main(*sys.argv[1:4])
