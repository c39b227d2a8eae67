"""Tests of where a model's extractor ends and its embedding."""

import keras
import numpy as np

from trainer import extractor
from trainer import models


def test_the_embedding_of_our_cnn_is_its_flattened_features():
  model = models.build_model('cnn_bn', (28, 28, 1), 10)
  embed = extractor.embedding_model(model)
  features = model.get_layer(models.FEATURES_LAYER).output
  assert embed.output.shape[-1] == int(np.prod(features.shape[1:]))
  images = np.random.default_rng(0).random((3, 28, 28, 1), np.float32)
  cut = keras.Model(model.inputs, features)
  np.testing.assert_allclose(embed.predict(images, verbose=0),
                             cut.predict(images, verbose=0).reshape(3, -1),
                             atol=1e-6)


def test_a_model_without_convolutions_has_no_embedding():
  mlp = models.build_model('mlp', (28, 28, 1), 10)
  assert extractor.embedding_model(mlp) is None


def test_the_fingerprint_is_the_extractors_not_the_heads():
  model = models.build_model('deep_mnist', (28, 28, 1), 10)
  embed = extractor.embedding_model(model)
  before = extractor.fingerprint(embed)
  logits = model.get_layer(models.LOGITS_LAYER)
  logits.set_weights([w * 2 for w in logits.get_weights()])
  assert extractor.fingerprint(embed) == before
  conv = embed.layers[1]
  conv.set_weights([w + 1 for w in conv.get_weights()])
  assert extractor.fingerprint(embed) != before
