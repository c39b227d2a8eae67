"""The training loss: cross-entropy, label smoothing, balanced class weights.

`--label_smoothing=E` trains against (1 - E) on the true class and E/K
spread over all K classes. Keras' SparseCategoricalCrossentropy has no
label_smoothing (only the one-hot CategoricalCrossentropy does), and the
pipeline's labels stay integer ids (the metrics, the evaluation and the
scorer read them so): `SmoothedSparseCrossentropy` one-hots them inside the
loss. The loss reported (loss, val_loss, test_loss) is then the smoothed
one, which never reaches 0.

`--class_weight=balanced` weights each training example by
n / (K * n_class), from the training split's label counts (scikit-learn's
"balanced"): the weights arrive as the pipeline's third element, training
split only (data/pipeline.py), because Keras' own `fit(class_weight=...)`
maps a tf.data.Dataset and cannot map a multi-worker DistributedDataset.
"""

import keras
from keras import ops
import numpy as np


@keras.saving.register_keras_serializable(package='trainer')
class SmoothedSparseCrossentropy(keras.losses.Loss):
  """Cross-entropy of probabilities against smoothed integer labels."""

  def __init__(self, label_smoothing, name='smoothed_crossentropy', **kwargs):
    super().__init__(name=name, **kwargs)
    self.label_smoothing = float(label_smoothing)

  def call(self, y_true, y_pred):
    labels = ops.cast(ops.reshape(y_true, [-1]), 'int32')
    one_hot = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
    return keras.losses.categorical_crossentropy(
        one_hot, y_pred, label_smoothing=self.label_smoothing)

  def get_config(self):
    return dict(super().get_config(), label_smoothing=self.label_smoothing)


def loss_for(label_smoothing):
  """The compile() loss: Keras' own without smoothing, as before."""
  if not label_smoothing:
    return 'sparse_categorical_crossentropy'
  return SmoothedSparseCrossentropy(label_smoothing)


def balanced_weights(counts):
  """Per-class weights n / (K * n_class); 1 for classes never seen.

  Args:
    counts: training examples per class, in label order.

  Returns:
    float32 numpy array, one weight per class.
  """
  counts = np.asarray(counts, np.float64)
  total, classes = counts.sum(), len(counts)
  weights = np.ones(classes)
  seen = counts > 0
  weights[seen] = total / (classes * counts[seen])
  return weights.astype(np.float32)
