"""Batch-normalisation statistics that fit the final weights.

A BatchNormalization layer keeps moving averages of its inputs' mean and
variance for inference, updated at every training step with momentum 0.9
(models.py): they describe the weights of the last ten or so steps. After a
short run the weights still move fast, and the statistics no longer fit
them: measured here, cnn_bn after one epoch of the bundled digits (31 steps)
reached 0.81 training accuracy but 0.23 test accuracy. One forward pass in
training mode over `EXAMPLES` training images, with momentum 0 (the
statistics become that batch's), gives the same weights 0.97, in about a
second; after a long run it changes next to nothing.

Keras has no call for this ("precise BN"), so `recalibrate` does it: it runs
after training, before evaluation and export, so that the test figures and
the artifact use the same statistics. Layers that are frozen (a transfer
run's base) run in inference mode and are left as they are.
"""

import time

from absl import logging
import keras
import tensorflow as tf

from trainer import distribute
from trainer.data import pipeline

# Training images the statistics are computed on (one batch).
EXAMPLES = 512


def batch_norm_layers(model):
  """The trainable BatchNormalization layers of `model`, nested ones too."""
  found = []
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      if layer.trainable:
        found.append(layer)
    elif hasattr(layer, 'layers'):
      found.extend(batch_norm_layers(layer))
  return found


def recalibrate(model, context, source):
  """Sets every trainable BN layer's statistics from one training batch.

  Args:
    model: the trained keras.Model.
    context: the run's run_context.RunContext.
    source: the run's data.Source.

  Returns:
    Whether the model has such layers (and they were recalibrated).
  """
  layers = batch_norm_layers(model)
  if not layers or not source.info.sizes.get('train'):
    return False
  start = time.perf_counter()
  momenta = [layer.momentum for layer in layers]
  for layer in layers:
    layer.momentum = 0.0
  try:
    _forward_one_batch(model, context, source)
  finally:
    for layer, momentum in zip(layers, momenta):
      layer.momentum = momentum
  logging.info('Batch-normalisation statistics computed with the final '
               'weights on %d training images (%.1f s).', EXAMPLES,
               time.perf_counter() - start)
  return True


def _forward_one_batch(model, context, source):
  """One training-mode step without a gradient, on every replica."""
  config, strategy = context.config, context.strategy

  def make(batch_size, shard):
    return pipeline.make_dataset(
        source, 'train', batch_size, config.image_shape, training=True,
        seed=config.seed, shuffle_buffer=config.shuffle_buffer, cache='none',
        augment=config.augment, shard=shard).take(1)

  dataset = strategy.experimental_distribute_dataset(
      distribute.distribute_dataset(strategy, make, EXAMPLES))

  @tf.function
  def update(batch):
    strategy.run(lambda images, labels: model(images, training=True),
                 args=batch)

  for batch in dataset:
    update(batch)
