"""Before training: which examples would fail to decode, and which shards.

A training run must train on what it reports. tf.data's `ignore_errors`
drops bad elements with a warning that TensorFlow's log level hides, so the
counts in metrics.json would include images that were never trained on; and
without it one bad image ends a long run mid-way. So every example is
decoded once before training, with the same preprocessing function the
pipelines use, and the ones that fail are left out of the splits and
reported (folder.py, tfrecords.py).

The pass runs in tf.data itself, in parallel and in batches of CHECK_BATCH
(the batched decoder of preprocessing.py), over (key, bytes) pairs with
`ignore_errors`: keys that come out decoded; a batch that fails drops all its
keys, and only those are decoded again one by one to find the culprits. (tf.data
cannot say which element of a batch failed, nor why: the reasons of the
first few are asked for again, eagerly.)

Measured here (2 cores): about one extra decoding pass over the data; see
README "Training".
"""

import re

import numpy as np
import tensorflow as tf

CHECK_BATCH = 64


def _passing(dataset):
  """{key: value} of the (keys [n], values [n]) batches that succeed."""
  passed = {}
  for keys, values in dataset.ignore_errors().as_numpy_iterator():
    passed.update(zip(keys.tolist(), values.tolist()))
  return passed


def decode_all(make_pairs, decode_batch, keys):
  """Decodes every element once; finds the keys that fail.

  Args:
    make_pairs: keys -> a tf.data.Dataset of (int64 key, string bytes) for
      those keys (None: all of them). Producing the bytes may fail too (a
      file gone since listing).
    decode_batch: string [n] -> a value [n] per element (e.g. labels);
      fails when any element fails.
    keys: every key `make_pairs(None)` yields.

  Returns:
    ({key: value} of the elements that decode, sorted failing keys).
  """
  options = tf.data.Options()
  options.deterministic = False  # Order does not matter here; speed does.

  def decode(keys, encoded):
    return keys, decode_batch(encoded)

  passed = _passing(make_pairs(None).batch(CHECK_BATCH).map(
      decode, num_parallel_calls=tf.data.AUTOTUNE).with_options(options))
  suspects = sorted(set(keys) - set(passed))
  if suspects:
    # One at a time: a batch of one fails alone.
    again = make_pairs(np.array(suspects, np.int64)).batch(1).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE).with_options(options)
    passed.update(_passing(again))
  return passed, sorted(set(suspects) - set(passed))


def reason(function):
  """What the TensorFlow error `function()` raises says, or None."""
  try:
    function()
  except tf.errors.OpError as e:
    return short_message(e)
  return None


def short_message(error):
  """A TensorFlow error's own message, in one line.

  Without the traceback of user code, node names and op names that
  TensorFlow wraps it in.
  """
  lines = [line.strip() for line in (error.message or '').splitlines()
           if line.strip() and not line.strip().startswith('[[')]
  text = lines[-1] if lines else type(error).__name__
  text = re.sub(r'^\w+Error: ', '', text)
  text = re.sub(r'\{\{function_node [^}]*\}\}\s*', '', text)
  text = re.sub(r'\s*\[Op:.*$', '', text)
  return text[:300] or type(error).__name__


def key_filter(keys, keep_listed=False):
  """A predicate on an int64 key: is it outside (or in) the list `keys`?

  A sorted constant and a binary search: no table resource, so it works in
  any tf.data function and distribution strategy.
  """
  listed = tf.constant(np.asarray(sorted(keys), np.int64))

  def predicate(key):
    if not keys:
      return tf.constant(not keep_listed)
    where = tf.searchsorted(listed, key[tf.newaxis])[0]
    found = tf.gather(listed, tf.minimum(where, tf.size(listed) - 1))
    inside = (where < tf.size(listed)) & tf.equal(found, key)
    return inside if keep_listed else tf.logical_not(inside)

  return predicate
