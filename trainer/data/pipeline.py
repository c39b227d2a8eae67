"""The tf.data input pipeline of one split: cache, shuffle, batch, convert.

Every pipeline yields (float32 images [batch, height, width, channels] in
[0, 1], int32 labels). `make_dataset` is the one place the order of the
steps is decided (see its docstring); the sources decode encoded images in
batches too (`decode_in_batches`), because TensorFlow's per-op overhead is as
large as decoding a small image (preprocessing.py).
"""

import os

import tensorflow as tf

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
  if mode == 'none':
    return False
  if mode == 'memory':
    return True
  count = source.info.sizes.get(split)
  if count is None:
    return False  # Unknown size: caching might not fit.
  return count * source.element_bytes <= _physical_memory_bytes() / 4


def make_dataset(source, split, batch_size, image_shape, *, training,
                 seed=None, shuffle_buffer=10_000, cache='auto',
                 augment=False, shard=None):
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
    augment: random shifts of up to 10% (training only).
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
  dataset = dataset.map(
      lambda images, labels: (preprocessing.prepare_pixels(
          images, height, width, channels), labels),
      num_parallel_calls=tf.data.AUTOTUNE)
  if training and augment:
    dataset = dataset.map(_make_augmenter(seed),
                          num_parallel_calls=tf.data.AUTOTUNE)
  if shard:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
    dataset = dataset.with_options(options)
  return dataset.prefetch(tf.data.AUTOTUNE)


def _make_augmenter(seed):
  import keras  # pylint: disable=g-import-not-at-top
  shift = keras.layers.RandomTranslation(0.1, 0.1, fill_mode='constant',
                                         seed=seed)

  def augment(images, labels):
    return shift(images, training=True), labels

  return augment
