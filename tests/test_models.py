"""The model zoo: every model builds and trains on every input shape."""

import keras
import numpy as np
import pytest

from trainer import models
from trainer import registry

# Other shapes than MNIST's cost a second or more each: the slow tier runs
# them.
SHAPES = [((28, 28, 1), 10),
          pytest.param((64, 64, 3), 3, marks=pytest.mark.slow),
          pytest.param((13, 17, 1), 2, marks=pytest.mark.slow)]


@pytest.mark.parametrize('name', registry.MODELS)
@pytest.mark.parametrize('input_shape, num_classes', SHAPES)
@pytest.mark.slow  # 4.6 s here: over the fast tier's ~1.5 s a test.
def test_model_builds_and_learns_a_few_steps(name, input_shape, num_classes):
  # Unseeded, the initial weights and dropout masks depend on earlier tests,
  # and mlp's loss rose over 5 epochs in about 1 run in 4.
  keras.utils.set_random_seed(0)
  model = models.build_model(name, input_shape, num_classes)
  assert model.input_shape == (None,) + input_shape
  assert model.output_shape == (None, num_classes)
  rng = np.random.default_rng(0)
  labels = np.arange(32) % num_classes
  # Each class has its own mean brightness: learnable in a few steps.
  images = (rng.random((32,) + input_shape) * 0.2 +
            labels.reshape(-1, 1, 1, 1) / num_classes).astype(np.float32)
  model.compile(keras.optimizers.Adam(1e-4), 'sparse_categorical_crossentropy')
  # Training-mode loss: after 8 steps batch-norm moving statistics have not
  # settled yet, so inference-mode loss says little.
  history = model.fit(images, labels, epochs=5, batch_size=16, verbose=0)
  losses = history.history['loss']
  assert losses[-1] < losses[0]
  probabilities = model.predict(images[:4], verbose=0)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize('name', ['deep_mnist', 'cnn_bn'])
def test_conv_models_name_their_feature_extractor(name):
  model = models.build_model(name, (28, 28, 1), 10)
  assert model.get_layer(models.FEATURES_LAYER).output.shape[1:3] == (7, 7)
  big = models.build_model(name, (224, 224, 3), 10)
  side = big.get_layer(models.FEATURES_LAYER).output.shape[1]
  assert side <= 7


def test_deep_mnist_has_the_tutorial_architecture():
  model = models.build_model('deep_mnist', (28, 28, 1), 10)
  # conv 5x5x1x32 + conv 5x5x32x64 + fc 3136x1024 + fc 1024x10 (+ biases).
  expected = (5 * 5 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (
      7 * 7 * 64 * 1024 + 1024) + (1024 * 10 + 10)
  assert model.count_params() == expected


def test_logits_model_matches_probabilities():
  model = models.build_model('mlp', (28, 28, 1), 10)
  images = np.random.default_rng(1).random((3, 28, 28, 1)).astype(np.float32)
  logits, probabilities = models.logits_model(model)(images, training=False)
  exponentials = np.exp(np.asarray(logits))
  expected = exponentials / exponentials.sum(axis=1, keepdims=True)
  np.testing.assert_allclose(probabilities, expected, rtol=1e-5)


def test_unknown_model_and_too_few_classes_are_refused():
  with pytest.raises(ValueError, match='Unknown model'):
    models.build_model('resnet', (28, 28, 1), 10)
  with pytest.raises(ValueError, match='at least 2 classes'):
    models.build_model('mlp', (28, 28, 1), 1)
