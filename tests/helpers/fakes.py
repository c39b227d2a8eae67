"""A fake classifier, for the scorer's tests where the model is not the point.

`FakeClassifier` has the interface of `model_handler.Classifier` (`labels`,
`predict(image_bytes)`): each image's probabilities follow from its bytes
alone (the same bytes always score the same, in any batch), and a call
fails as the artifact's decoder fails it, with one
`tf.errors.InvalidArgumentError` for the whole batch, when any image holds
`UNDECODABLE` or is one of `fail_on`; it runs out of memory as a GPU does
(`tf.errors.ResourceExhaustedError`) on a batch of more than `oom_above`
images or one holding an image of `oom_on`. `FakeClassifierHandler` is the real
`model_handler.ImageClassifierHandler` loading a `FakeClassifier` instead of
an artifact, so RunInference, batching and the transforms run as they do in
production, without training or loading a model.
"""

import zlib

import numpy as np
import tensorflow as tf

from batch_predict import image_header
from batch_predict import model_handler

# Bytes that make an image "undecodable" to the fake model.
UNDECODABLE = b'FAKE-UNDECODABLE'
DIGITS = tuple(str(digit) for digit in range(10))
# What TensorFlow says when the SavedModel's decoder refuses an image.
_DECODER_ERROR = ('Graph execution error:\n\nDetected at node DecodeImage '
                  'defined at (most recent call last):\n'
                  '<stack traces unavailable>\nInvalid JPEG data or crop '
                  'window.\n\t [[{{node DecodeImage}}]] [Op:__inference_serve]')

# What TensorFlow says when an allocation fails.
_OOM_ERROR = ('OOM when allocating tensor with shape[8,6000,8000,3] and type '
              'float on /job:localhost/replica:0/task:0/device:GPU:0 by '
              'allocator GPU_0_bfc [Op:__inference_serve]')


class FakeClassifier:
  """Probabilities from a hash of each image's bytes; fails on marked ones.

  Attributes:
    labels: the class names.
    calls: the size of every batch `predict` was called with.
  """

  def __init__(self, labels=DIGITS, fail_on=(), oom_above=None, oom_on=()):
    self.labels = tuple(labels)
    self._fail_on = frozenset(fail_on)
    self._oom_above = oom_above
    self._oom_on = frozenset(oom_on)
    self.calls = []

  def probabilities(self, image):
    """The probabilities one image always gets."""
    rng = np.random.default_rng(zlib.crc32(bytes(image)))
    logits = rng.normal(size=len(self.labels))
    exp = np.exp(logits - logits.max())
    return (exp / exp.sum()).astype(np.float32)

  def predict(self, image_bytes):
    """Encoded images -> float32 probabilities [len(image_bytes), classes].

    Raises:
      tf.errors.InvalidArgumentError: if any image is marked undecodable.
      tf.errors.ResourceExhaustedError: for a batch over `oom_above` images,
        or one with an image of `oom_on`.
    """
    images = [bytes(image) for image in image_bytes]
    self.calls.append(len(images))
    if ((self._oom_above is not None and len(images) > self._oom_above) or
        self._oom_on.intersection(images)):
      raise tf.errors.ResourceExhaustedError(None, None, _OOM_ERROR)
    if any(UNDECODABLE in image or image in self._fail_on
           for image in images):
      raise tf.errors.InvalidArgumentError(None, None, _DECODER_ERROR)
    return np.stack([self.probabilities(image) for image in images])


class FakeClassifierHandler(model_handler.ImageClassifierHandler):
  """The scorer's model handler, loading a `FakeClassifier`.

  With `batch_log` (a file path), each batch RunInference hands it appends
  a line "IMAGES PIXELS" (pixels from the images' headers), so a test can
  see every batch, whichever process or thread scored it.
  """

  def __init__(self, labels=DIGITS, fail_on=(), oom_above=None, oom_on=(),
               batch_log=None, **batch_sizes):
    super().__init__('fake://model', **batch_sizes)
    self._labels = tuple(labels)
    self._fail_on = tuple(fail_on)
    self._oom_above = oom_above
    self._oom_on = tuple(oom_on)
    self._batch_log = batch_log

  def run_inference(self, batch, model, inference_args=None):
    batch = list(batch)
    if self._batch_log:
      pixels = sum(image_header.read_header(image).pixels for image in batch)
      with open(self._batch_log, 'a') as f:
        f.write(f'{len(batch)} {pixels}\n')
    return super().run_inference(batch, model, inference_args)

  def load_classifier(self, device):
    del device  # The fake runs anywhere.
    return FakeClassifier(self._labels, self._fail_on, self._oom_above,
                          self._oom_on)
