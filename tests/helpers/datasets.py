"""Helpers of the data tests: batches of a split, a FIFO watchdog, records."""

import contextlib
import os
import threading

import numpy as np
import tensorflow as tf

from trainer.data import pipeline
from trainer.data import tfrecords
from tests.helpers import image_files


def batches(source, split, image_shape, batch_size=64):
  """(images, labels) of a whole split through the pipeline, as arrays."""
  dataset = pipeline.make_dataset(source, split, batch_size, image_shape,
                                  training=False)
  images, labels = [], []
  for x, y in dataset.as_numpy_iterator():
    images.append(x)
    labels.append(y)
  return np.concatenate(images), np.concatenate(labels)


@contextlib.contextmanager
def fifo_watchdog(path, seconds=120):
  """Fails the test (instead of hanging it) if anything opens the FIFO.

  A reader blocked on the FIFO is released after `seconds` by opening it for
  writing; `opened` then says it happened.
  """
  done = threading.Event()
  state = {'opened': False}

  def watch():
    if done.wait(seconds):
      return
    try:
      fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # No reader: nothing was blocked on it.
      return
    state['opened'] = True
    os.close(fd)

  thread = threading.Thread(target=watch, daemon=True)
  thread.start()
  try:
    yield state
  finally:
    done.set()
    thread.join()



def write_records(path, payloads):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for payload in payloads:
      writer.write(payload)


def record(label, seed=0, encoded=None):
  """A serialized tf.train.Example of a random 28x28 PNG (or `encoded`)."""
  if encoded is None:
    encoded = image_files.encode_image(image_files.random_pixels(28, 28, 1,
                                                           seed=seed), 'PNG')
  return tfrecords.make_example(encoded, label, 'ab'[label],
                                str(seed)).SerializeToString()
