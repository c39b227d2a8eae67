"""The model zoo: the four MNIST tutorial models, for any input shape.

Every model is a Functional Keras model built only from built-in layers (so
it reloads with `safe_mode=True`), takes float32 images in [0, 1] named
`image`, and ends with a `logits` Dense layer followed by a `probabilities`
softmax. Convolutional models name the last layer of their feature
extractor `features`: transfer learning cuts there.

  softmax     softmax regression ("MNIST for ML Beginners"; the tutorial
              reports 92% on full MNIST).
  mlp         one hidden layer of 512 ReLU units with dropout (the tutorials'
              MLP reports 96.6%).
  deep_mnist  "Deep MNIST for Experts": two 5x5 conv layers of 32 and 64
              filters, each with 2x2 max pooling, a 1024-unit dense layer and
              dropout 0.5 (reports 99.2%).
  cnn_bn      the Keras-style CNN with batch normalisation: two blocks of two
              3x3 conv + BN + ReLU layers (32, then 64 filters) with max
              pooling, then a 256-unit dense layer with BN and dropout
              (reports 99%).

Each model is a function from an input tensor to class probabilities, named
by its entry in registry.MODELS. Figures measured with this code are in
benchmarks/RESULTS.md.

On inputs larger than 28x28 the conv models average-pool their feature maps
down to at most 7x7 before flattening, which is a no-op at 28x28 and keeps
the dense layer the tutorials' size.
"""

import math

import keras

from trainer import registry

FEATURES_LAYER = 'features'
LOGITS_LAYER = 'logits'
PROBABILITIES_LAYER = 'probabilities'
_MAX_FEATURE_SIDE = 7


def classifier_head(x, num_classes):
  """The classification head every model ends with (the export finds it)."""
  logits = keras.layers.Dense(num_classes, name=LOGITS_LAYER)(x)
  # float32 under mixed precision too: probabilities and the loss need it.
  return keras.layers.Softmax(name=PROBABILITIES_LAYER, dtype='float32')(
      logits)


def _cap_feature_map(x):
  """Average-pools a feature map so its sides are at most 7; names it."""
  height, width = x.shape[1], x.shape[2]
  pool = max(math.ceil(height / _MAX_FEATURE_SIDE),
             math.ceil(width / _MAX_FEATURE_SIDE))
  if pool > 1:
    x = keras.layers.AveragePooling2D(pool, padding='same')(x)
  return keras.layers.Identity(name=FEATURES_LAYER)(x)


def softmax(inputs, num_classes):
  x = keras.layers.Flatten()(inputs)
  return classifier_head(x, num_classes)


def mlp(inputs, num_classes):
  x = keras.layers.Flatten()(inputs)
  x = keras.layers.Dense(512, activation='relu')(x)
  x = keras.layers.Dropout(0.2)(x)
  return classifier_head(x, num_classes)


def deep_mnist(inputs, num_classes):
  x = keras.layers.Conv2D(32, 5, padding='same', activation='relu')(inputs)
  x = keras.layers.MaxPooling2D(2, padding='same')(x)
  x = keras.layers.Conv2D(64, 5, padding='same', activation='relu')(x)
  x = keras.layers.MaxPooling2D(2, padding='same')(x)
  x = _cap_feature_map(x)
  x = keras.layers.Flatten()(x)
  x = keras.layers.Dense(1024, activation='relu')(x)
  x = keras.layers.Dropout(0.5)(x)
  return classifier_head(x, num_classes)


# Keras' default momentum (0.99) leaves the moving statistics 4% initial
# values after 300 steps, which wrecks inference accuracy on short runs like
# the bundled digits (31 steps an epoch); 0.9 is PyTorch's default.
_BN_MOMENTUM = 0.9


def _conv_bn_relu(x, filters):
  x = keras.layers.Conv2D(filters, 3, padding='same', use_bias=False)(x)
  x = keras.layers.BatchNormalization(momentum=_BN_MOMENTUM)(x)
  return keras.layers.ReLU()(x)


def cnn_bn(inputs, num_classes):
  x = _conv_bn_relu(inputs, 32)
  x = _conv_bn_relu(x, 32)
  x = keras.layers.MaxPooling2D(2, padding='same')(x)
  x = _conv_bn_relu(x, 64)
  x = _conv_bn_relu(x, 64)
  x = keras.layers.MaxPooling2D(2, padding='same')(x)
  x = _cap_feature_map(x)
  x = keras.layers.Flatten()(x)
  x = keras.layers.Dropout(0.25)(x)
  x = keras.layers.Dense(256, use_bias=False)(x)
  x = keras.layers.BatchNormalization(momentum=_BN_MOMENTUM)(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.Dropout(0.5)(x)
  return classifier_head(x, num_classes)


def build_model(name, input_shape, num_classes):
  """Builds an uncompiled model.

  Args:
    name: a name in registry.MODELS, whose `builder` is the function of this
      module that lays out its layers.
    input_shape: (height, width, channels).
    num_classes: number of output classes.

  Returns:
    A keras.Model from float32 images in [0, 1] to class probabilities.

  Raises:
    ValueError: for an unknown model name or too few classes.
  """
  if name not in registry.MODELS:
    raise ValueError(f'Unknown model: {name!r}; choose one of '
                     f'{tuple(registry.MODELS)}.')
  if num_classes < 2:
    raise ValueError(f'Need at least 2 classes, got {num_classes}.')
  inputs = keras.Input(shape=tuple(input_shape), name='image')
  outputs = globals()[registry.MODELS[name].builder](inputs, num_classes)
  return keras.Model(inputs, outputs, name=name)


def logits_model(model):
  """A model sharing `model`'s layers that returns (logits, probabilities)."""
  return keras.Model(
      model.inputs,
      [model.get_layer(LOGITS_LAYER).output, model.output],
      name=f'{model.name}_serving')
