"""The tf.data input pipeline of one split: cache, shuffle, batch, convert.

Every pipeline yields (float32 images [batch, height, width, channels] in
[0, 1], int32 labels), or for an embedding cache (float32 vectors [batch,
size], int32 labels). `make_dataset` is the one place the order of the
steps is decided (see its docstring); the sources decode encoded images in
batches too (`decode_in_batches`), because TensorFlow's per-op overhead is as
large as decoding a small image (preprocessing.py).
"""

import math
import os

import numpy as np
import tensorflow as tf

from trainer import registry
from trainer.data import checks
from trainer.data import preprocessing


def decode_in_batches(dataset, decode_batch):
  """Applies `decode_batch` to batches of `dataset`'s elements, in order.

  preprocessing.decode_images is vectorised over a batch (see its module
  docstring); elements come out one by one, in order, as they went in.
  """
  return dataset.batch(checks.CHECK_BATCH).map(
      decode_batch, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _physical_memory_bytes():
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return 0


def should_cache(source, split, mode):
  """Whether to keep the decoded split in memory (mode auto|memory|none)."""
  if mode == 'none' or source.vectors:
    # An embedding cache is in memory already: tf.data's cache would copy
    # every vector again in the first epoch.
    return False
  if mode == 'memory':
    return True
  count = source.info.sizes.get(split)
  if count is None:
    return False  # Unknown size: caching might not fit.
  return count * source.element_bytes <= _physical_memory_bytes() / 4


def make_dataset(source, split, batch_size, image_shape, *, training,
                 seed=None, shuffle_buffer=10_000, cache='auto',
                 augment=(), shard=None, class_weights=None):
  """The batched tf.data pipeline of one split.

  Order of operations: decode (parallel, in the source), cache, shuffle,
  batch, convert and resize whole batches (parallel), augment, prefetch.
  Caching before shuffling keeps the per-epoch order random; batching
  before the pixel conversion vectorises it.

  Args:
    source: a Source.
    split: 'train', 'validation' or 'test'.
    batch_size: the global batch size.
    image_shape: (height, width, channels) of the model input.
    training: shuffle (and augment) when True.
    seed: shuffle seed.
    shuffle_buffer: shuffle buffer size in examples.
    cache: 'auto', 'memory' or 'none'.
    augment: names of registry.AUGMENTATIONS to apply (training only);
      True means ('shift',), the flag's old boolean meaning.
    class_weights: None, or one weight per class: (training only) each
      batch then carries its examples' weights as a third element.
    shard: None, or (number of shards, index) to read only one worker's
      shard; the pipeline is then marked as sharded already, so that
      tf.distribute does not shard it again.

  Returns:
    A tf.data.Dataset of (float32 [b, h, w, c], int32 [b]).
  """
  height, width, channels = image_shape
  dataset = source.examples(split, shard) if shard else source.examples(split)
  if should_cache(source, split, cache):
    dataset = dataset.cache()
  if training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed,
                              reshuffle_each_iteration=True)
  dataset = dataset.batch(batch_size)
  if not source.vectors:  # Embedding vectors go to the head as they are.
    dataset = dataset.map(
        lambda images, labels: (preprocessing.prepare_pixels(
            images, height, width, channels), labels),
        num_parallel_calls=tf.data.AUTOTUNE)
  if augment is True:
    augment = ('shift',)
  if training and augment:
    # Numbered batches: batch i's random draws are seeded by (seed, i).
    dataset = dataset.enumerate().map(
        _make_augmenter(tuple(augment), seed or 0, (height, width)),
        num_parallel_calls=tf.data.AUTOTUNE)
  if training and class_weights is not None:
    table = tf.constant(class_weights, tf.float32)
    dataset = dataset.map(
        lambda images, labels: (images, labels, tf.gather(table, labels)),
        num_parallel_calls=tf.data.AUTOTUNE)
  if shard:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
    dataset = dataset.with_options(options)
  return dataset.prefetch(tf.data.AUTOTUNE)


def label_counts(source, split, num_classes):
  """Examples per class of a split, in label order (numpy int64).

  Reads the split once (an image folder's or TFRecords' images are decoded
  on the way; the array sources only slice).
  """
  labels = source.examples(split).map(
      lambda image, label: label,
      num_parallel_calls=tf.data.AUTOTUNE).batch(8192)
  counts = np.zeros(num_classes, np.int64)
  for batch in labels.as_numpy_iterator():
    counts += np.bincount(batch, minlength=num_classes)[:num_classes]
  return counts


def _make_augmenter(names, seed, size):
  """The batch map of the training split's augmentations, in registry order.

  Crop, flip and colour draw from stateless random ops seeded by (seed,
  batch number), so they are reproducible and vectorised over the batch;
  shift is Keras' RandomTranslation layer, as before --augment took names.
  None of it is part of the model: the export never augments.
  """
  import keras  # pylint: disable=g-import-not-at-top
  shift = (keras.layers.RandomTranslation(0.1, 0.1, fill_mode='constant',
                                          seed=seed)
           if 'shift' in names else None)
  steps = {'crop': lambda images, key: _random_resized_crop(images, key,
                                                            size),
           'flip': _random_flip, 'color': _color_jitter}

  def augment(index, batch):
    images, labels = batch
    key = tf.stack([tf.constant(seed, tf.int64), index])
    for number, name in enumerate(registry.AUGMENTATIONS):
      if name not in names:
        continue
      if name == 'shift':
        images = shift(images, training=True)
      else:
        images = steps[name](
            images, tf.random.experimental.stateless_fold_in(key, number))
    return images, labels

  return augment


def _uniform(images, key, minval, maxval, shape=None):
  count = tf.shape(images)[0]
  return tf.random.stateless_uniform(
      [count] if shape is None else [count] + shape, key, minval, maxval)


def _random_flip(images, key):
  """Mirrors each image left-right with probability 1/2."""
  mirrored = _uniform(images, key, 0.0, 1.0, [1, 1, 1]) < 0.5
  return tf.where(mirrored, tf.reverse(images, axis=[2]), images)


def _random_resized_crop(images, key, size):
  """Crops 50-100% of each image (aspect 3:4 to 4:3), resized back."""
  keys = tf.random.experimental.stateless_split(key, 4)
  area = _uniform(images, keys[0], 0.5, 1.0)
  ratio = tf.exp(_uniform(images, keys[1], math.log(3 / 4), math.log(4 / 3)))
  height = tf.minimum(1.0, tf.sqrt(area / ratio))
  width = tf.minimum(1.0, tf.sqrt(area * ratio))
  top = _uniform(images, keys[2], 0.0, 1.0) * (1.0 - height)
  left = _uniform(images, keys[3], 0.0, 1.0) * (1.0 - width)
  boxes = tf.stack([top, left, top + height, left + width], axis=1)
  return tf.image.crop_and_resize(images, boxes, tf.range(tf.shape(images)[0]),
                                  size)


def _color_jitter(images, key):
  """Brightness +-0.2 and contrast x0.8-1.2 per image, kept in [0, 1]."""
  keys = tf.random.experimental.stateless_split(key, 2)
  delta = _uniform(images, keys[0], -0.2, 0.2, [1, 1, 1])
  factor = _uniform(images, keys[1], 0.8, 1.2, [1, 1, 1])
  mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
  return tf.clip_by_value((images - mean) * factor + mean + delta, 0.0, 1.0)
