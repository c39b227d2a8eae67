"""The decode-once pass: which keys fail, filters on keys, short messages."""

import numpy as np
import tensorflow as tf

from trainer.data import checks
from trainer.data import preprocessing
from tests.helpers import image_files


def _pairs(encoded):
  """make_pairs of checks.decode_all over a list of encoded images."""

  def make_pairs(keys):
    chosen = np.arange(len(encoded)) if keys is None else keys
    return tf.data.Dataset.from_tensor_slices(
        (chosen.astype(np.int64), tf.constant([encoded[k] for k in chosen])))

  return make_pairs


def _decode_batch(encoded):
  return tf.reduce_max(preprocessing.decode_images(encoded, 8, 8, 1),
                       axis=[1, 2, 3])


def test_decode_all_finds_exactly_the_elements_that_fail():
  good = image_files.encode_image(image_files.random_pixels(8, 8, 1), 'PNG')
  # More than one batch, with bad elements in both.
  encoded = [good] * (checks.CHECK_BATCH + 10)
  for bad in (3, checks.CHECK_BATCH + 4):
    encoded[bad] = b'not an image'
  passed, failed = checks.decode_all(_pairs(encoded), _decode_batch,
                                     range(len(encoded)))
  assert failed == [3, checks.CHECK_BATCH + 4]
  assert sorted(passed) == [k for k in range(len(encoded)) if k not in failed]


def test_key_filter_keeps_or_drops_the_listed_keys():
  keys = tf.constant([1, 5, 7, 9], tf.int64)
  drop = checks.key_filter([5, 9])
  keep = checks.key_filter([5, 9], keep_listed=True)
  assert [bool(drop(k)) for k in keys] == [True, False, True, False]
  assert [bool(keep(k)) for k in keys] == [False, True, False, True]
  assert bool(checks.key_filter([])(tf.constant(3, tf.int64)))


def test_a_tensorflow_error_is_told_in_one_line():
  reason = checks.reason(lambda: preprocessing.decode_image(
      tf.constant(b'not an image'), 8, 8, 1))
  assert reason and '\n' not in reason and 'Traceback' not in reason
  assert '[[' not in reason and '{{function_node' not in reason
  assert checks.reason(lambda: None) is None
