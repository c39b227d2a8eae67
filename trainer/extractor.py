"""Where a model's convolutional feature extractor ends, and its embedding.

Transfer learning (transfer.py) keeps a model's extractor and replaces its
head; the artifact's `serving_embeddings` signature (export.py) returns the
extractor's output pooled as the head pools it; the embedding cache
(embedding_cache.py) is keyed by a fingerprint of the extractor's weights.
All three must cut a model at the same place, so the cut is defined here,
once:

  * our own models (models.py) and transfer models: at the layer named
    `features`;
  * any other Keras model: at the input of its first Flatten, global pooling
    or Dense layer, which must come after at least one convolution.

The embedding is that output flattened (when the head flattens it, as our
models' heads do) or averaged over space (Keras Applications backbones,
whose new head pools globally): the vector the head's first Dense layer
sees.
"""

import keras

from trainer import config as config_lib
from trainer import embedding_cache
from trainer import models

# Layers that start a classifier head: the extractor ends at their input.
HEAD_START_LAYERS = (keras.layers.Flatten, keras.layers.GlobalAveragePooling2D,
                     keras.layers.GlobalMaxPooling2D, keras.layers.Dense)
CONVOLUTION_LAYERS = tuple(getattr(keras.layers, name) for name in (
    'Conv1D', 'Conv2D', 'Conv3D', 'DepthwiseConv1D', 'DepthwiseConv2D',
    'SeparableConv1D', 'SeparableConv2D', 'Conv1DTranspose',
    'Conv2DTranspose', 'Conv3DTranspose'))
FLATTEN = 'flatten'
AVERAGE = 'average'


def _error(message):
  return config_lib.ConfigError(f'base_model: {message}')


def find_output(model, path):
  """Where `model`'s extractor ends.

  Args:
    model: a Functional Keras model.
    path: where it came from, for messages.

  Returns:
    (the extractor's output KerasTensor, FLATTEN or AVERAGE: how a head
    pools it).

  Raises:
    config.ConfigError: (key base_model) if the cut is unclear.
  """
  layers = model.layers
  names = [layer.name for layer in layers]
  if models.FEATURES_LAYER in names:
    cut = layers[names.index(models.FEATURES_LAYER)].output
    head = next((layer for layer in layers
                 if isinstance(layer, HEAD_START_LAYERS) and
                 layer.input is cut), None)
  else:
    head = next((layer for layer in layers
                 if isinstance(layer, HEAD_START_LAYERS)), None)
    if head is None:
      raise _error(f'{path} (a {model.name!r} model) has no Flatten, global '
                   'pooling or Dense layer, so where its convolutional '
                   'feature extractor ends is unclear.')
    cut = head.input
    if not isinstance(cut, keras.KerasTensor):
      raise _error(f'{path}: its layer {head.name!r} takes several inputs; '
                   'cannot cut the model there.')
  flatten = head is None or isinstance(head, (keras.layers.Flatten,
                                              keras.layers.Dense))
  return cut, FLATTEN if flatten else AVERAGE


def leaf_layers(model):
  """The layers of a model, nested models flattened, in graph order."""
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      yield from leaf_layers(layer)
    else:
      yield layer


def is_convolutional(extractor):
  """Whether an extractor holds at least one convolution."""
  return any(isinstance(layer, CONVOLUTION_LAYERS)
             for layer in leaf_layers(extractor))


def pool(features, pooling):
  """The embedding of a feature map (a KerasTensor): flattened or averaged."""
  if pooling == FLATTEN:
    return keras.layers.Flatten(name='embedding')(features)
  return keras.layers.GlobalAveragePooling2D(name='embedding')(features)


def embedding_model(model, path='the model'):
  """A model sharing `model`'s layers from its input to its embedding.

  Returns:
    A keras.Model (images -> [batch, size] float vectors), or None when the
    model has no convolutional feature extractor (softmax, mlp): there is
    nothing a transfer would freeze.
  """
  try:
    cut, pooling = find_output(model, path)
  except config_lib.ConfigError:
    return None
  extractor = keras.Model(model.inputs, cut)
  if not is_convolutional(extractor):
    return None
  return keras.Model(model.inputs, pool(cut, pooling),
                     name=f'{model.name}_embedding')


def fingerprint(extractor):
  """embedding_cache.fingerprint of a Keras extractor's weights."""
  return embedding_cache.fingerprint(
      [variable.numpy() for variable in extractor.weights])
