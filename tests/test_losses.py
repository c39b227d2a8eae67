"""--label_smoothing and --class_weight=balanced."""

import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import config as config_lib
from trainer import losses
from trainer import run_context
from trainer import train
from trainer.data import pipeline
from trainer.data import sources


def test_balanced_weights_make_every_class_weigh_the_same_in_total():
  counts = np.array([10, 30, 0, 60])
  weights = losses.balanced_weights(counts)
  np.testing.assert_allclose(weights, [2.5, 100 / 120, 1.0, 100 / 240],
                             rtol=1e-6)
  seen = counts > 0
  totals = weights[seen] * counts[seen]
  np.testing.assert_allclose(totals, totals[0], rtol=1e-6)


def test_smoothed_loss_is_keras_one_hot_smoothing_on_integer_labels():
  rng = np.random.default_rng(0)
  probabilities = tf.nn.softmax(rng.normal(size=(6, 4)).astype(np.float32))
  labels = np.array([0, 3, 1, 1, 2, 0])
  smoothed = losses.SmoothedSparseCrossentropy(0.1)(labels, probabilities)
  expected = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(
      np.eye(4)[labels], probabilities)
  assert float(smoothed) == pytest.approx(float(expected), rel=1e-6)
  plain = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
  assert float(smoothed) != pytest.approx(float(plain), rel=1e-3)
  assert float(losses.SmoothedSparseCrossentropy(0.0)(
      labels, probabilities)) == pytest.approx(float(plain), rel=1e-6)
  assert losses.loss_for(0.0) == 'sparse_categorical_crossentropy'


def test_the_training_split_carries_its_class_weights_held_out_ones_do_not():
  source = sources.load_mnist_sample(0.1, 0.1, train_examples=200)
  counts = pipeline.label_counts(source, 'train', 10)
  _, labels = next(iter(source.examples('train').batch(1000)))
  np.testing.assert_array_equal(counts, np.bincount(labels.numpy(),
                                                    minlength=10))
  weights = losses.balanced_weights(counts)
  train_batch = next(iter(pipeline.make_dataset(
      source, 'train', 50, (28, 28, 1), training=True, seed=1,
      class_weights=weights)))
  _, batch_labels, batch_weights = (t.numpy() for t in train_batch)
  np.testing.assert_allclose(batch_weights, weights[batch_labels])
  held_out = next(iter(pipeline.make_dataset(
      source, 'validation', 50, (28, 28, 1), training=False,
      class_weights=weights)))
  assert len(held_out) == 2


@pytest.mark.parametrize('overrides, match', [
    ({'label_smoothing': 1.0}, 'label_smoothing: must be in'),
    ({'class_weight': 'auto'}, "unknown class_weight 'auto'")])
def test_bad_loss_flags_are_refused(tmp_path, overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.build(overrides=dict(job_dir=str(tmp_path), **overrides))


@pytest.mark.slow
def test_a_run_trains_with_smoothed_labels_and_balanced_weights(
    tmp_path, monkeypatch):
  weighted = []
  make_dataset = pipeline.make_dataset

  def spy(source, split, *args, **kwargs):
    weighted.append((split, kwargs.get('class_weights') is not None))
    return make_dataset(source, split, *args, **kwargs)

  monkeypatch.setattr(pipeline, 'make_dataset', spy)
  config = config_lib.build(overrides={
      'job_dir': str(tmp_path / 'job'), 'model': 'softmax', 'epochs': 1,
      'steps_per_epoch': 4, 'batch_size': 32, 'train_examples': 256,
      'label_smoothing': 0.2, 'class_weight': 'balanced'})
  metrics = train.run(run_context.create(config,
                                         tf.distribute.get_strategy()))
  assert sorted(set(weighted)) == [('test', False), ('train', True),
                                   ('validation', False)]
  assert 0 < metrics['test_accuracy'] <= 1
  # The model trained (and saved) with the smoothed loss.
  with zipfile.ZipFile(os.path.join(config.job_dir, 'export',
                                    'model.keras')) as saved:
    loss = json.loads(saved.read('config.json'))['compile_config']['loss']
  assert 'SmoothedSparseCrossentropy' in loss['class_name']
  assert loss['config']['label_smoothing'] == 0.2
