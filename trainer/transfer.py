"""Transfer learning: a trained model's feature extractor under a new head.

A transfer run (`--base_model`) reuses the convolutional feature extractor of
a base model on a new label set, in two phases:

1. The extractor is frozen and a new classification head, sized for the new
   dataset's classes, is trained on top of it.
2. With `--fine_tune_layers=N`, the top N layers of the extractor are
   unfrozen and training goes on at a low learning rate.

Where the extractor ends is `extractor.py`'s (the export's embedding
signature cuts models at the same place); a Keras Applications backbone
(registry.BACKBONES) is the whole backbone built with `include_top=False`,
and the transfer model converts the pipeline's [0, 1] RGB pixels to the
backbone's own input (its `preprocess_input` of pixels * 255) in front of
it, outside the extractor.

"Top N layers" counts the extractor's layers that have weights, from the
output down, except batch normalisation: BN layers are never unfrozen, so
they stay in inference mode (moving statistics fixed) in both phases. Keras 3
ignores a `base(inputs, training=False)` recorded in a Functional graph once
`fit` calls the model with `training=True` (keras-team/keras#20285, measured
here too), and a BN layer with `trainable=False` is the one sure way to keep
it in inference mode.

The base's input shape becomes the run's: the input pipeline (and the
exported serving signature) resize the new dataset's images and convert grey
to colour or back. Every layer is a built-in Keras layer, so the exported
model reloads with `safe_mode=True` and serves like any other.
"""

import dataclasses
import zipfile

from absl import logging
import keras
import numpy as np

from trainer import config as config_lib
from trainer import export
from trainer import extractor as extractor_lib
from trainer import models
from trainer import registry
from trainer import storage
from trainer import artifact

# The name of the nested model holding the reused layers in a transfer model.
EXTRACTOR_LAYER = 'feature_extractor'
HEAD_DROPOUT_RATE = 0.2
# Layers kept frozen even when fine-tuning (see the module docstring).
_ALWAYS_FROZEN_LAYERS = (keras.layers.BatchNormalization,)


@dataclasses.dataclass(frozen=True)
class Base:
  """A loaded base model, cut down to its feature extractor.

  Attributes:
    source: what --base_model said (a path or a backbone name).
    architecture: the base Keras model's name (cnn_bn, mobilenetv2_1.00_96).
    extractor: a Functional model from images to feature maps whose layers
      (and weights) are the base's own.
    input_shape: (height, width, channels) the extractor takes.
    pooling: 'flatten' or 'average': how the new head reduces the feature
      map (as the base's own head did).
    rescaling: (scale, offset) applied to [0, 1] pixels before the
      extractor (each a number or one per channel), or None.
    labels: the base's class names when it is an export, else None.
    weights: --base_weights of a backbone, else ''.
    channel_order: 'RGB', or 'BGR' when the channels are reversed before
      `rescaling` (registry.Backbone).
  """
  source: str
  architecture: str
  extractor: keras.Model
  input_shape: tuple
  pooling: str
  rescaling: tuple = None
  labels: tuple = None
  weights: str = ''
  channel_order: str = 'RGB'


def _error(key, message):
  return config_lib.ConfigError(f'{key}: {message}')


# --------------------------------------------------------------------------
# Loading a base.


def load_base(base_model, base_weights='', *, image_size=0, channels=0,
              seed=0):
  """Loads a base model and cuts it down to its feature extractor.

  Create the strategy first and call this under its scope: the base's
  variables are created here.

  Args:
    base_model: an export dir or .keras file (local or gs://), or a name in
      registry.BACKBONES.
    base_weights: for a backbone: a weights file, 'none' or 'imagenet'.
    image_size: the requested input size (0: the base's, or the backbone's
      default_image_size).
    channels: the requested channels (0: the base's).
    seed: seeds a backbone's random initial weights ('none').

  Returns:
    A Base.

  Raises:
    config.ConfigError: naming the key (base_model, base_weights,
      image_size, channels) whose value cannot work, before any training.
  """
  if base_model in registry.BACKBONES:
    return _load_backbone(base_model, base_weights, image_size, seed)
  return _load_trained(base_model, image_size, channels)


def _load_trained(path, image_size, channels):
  """A base from our export or a .keras file."""
  path = storage.normalize(path)
  if (not path.endswith('.keras') and storage.isdir(path) and
      not artifact.is_complete(path)):
    raise _error('base_model', f'{path} is not a complete export (no '
                 f'{artifact.COMPLETE_MARKER} marker).{_base_model_hint(path)}')
  try:
    model = export.load_keras_model(path)
    labels = None
    if not path.endswith('.keras'):
      labels = tuple(artifact.read_metadata(path)['labels'])
  except (ValueError, OSError, TypeError, zipfile.BadZipFile) as e:
    raise _error('base_model', f'cannot use {path} as a base: {e}'
                 f'{_base_model_hint(path)}') from e
  input_shape = _image_input_shape(model, path)
  cut, pooling = extractor_lib.find_output(model, path)
  extractor = keras.Model(model.inputs, cut, name=EXTRACTOR_LAYER)
  _check_convolutional(extractor, model.name, path)
  _check_shape_fits(input_shape, image_size, channels, path)
  return Base(source=path, architecture=model.name, extractor=extractor,
              input_shape=input_shape, pooling=pooling, labels=labels)


def _check_convolutional(extractor, architecture, path):
  if not extractor_lib.is_convolutional(extractor):
    raise _error(
        'base_model',
        f'{path} (a {architecture!r} model) has no convolutional feature '
        'extractor to reuse: transfer learning keeps the convolution and '
        'pooling layers before the first Flatten, global pooling or Dense '
        'layer, and this model has no convolution there. Use a base trained '
        'with a convolutional model (--model=cnn_bn or deep_mnist) or a '
        f'Keras Applications backbone ({", ".join(registry.BACKBONES)}).')


def _check_shape_fits(input_shape, image_size, channels, path):
  """Refuses an --image_size or --channels that contradicts the base."""
  height, width, base_channels = input_shape
  if image_size and image_size != height:
    raise _error('image_size', f'the base model {path} takes {height}x{width} '
                 'images; leave image_size unset (the input pipeline resizes '
                 "the new dataset's images to the base's size).")
  if channels and channels != base_channels:
    raise _error('channels', f'the base model {path} takes {base_channels}-'
                 'channel images; leave channels unset (the input pipeline '
                 'converts grey and colour images to what the base takes).')


def _base_model_hint(path):
  """Points at JOB_DIR/export when the base path is a job dir."""
  if path.endswith('.keras'):
    return ''
  nested = storage.join(path, 'export')
  if artifact.is_complete(nested):
    return f' Did you mean --base_model={nested}?'
  return (' --base_model takes a complete export (JOB_DIR/export), a .keras '
          f'file or a backbone name ({", ".join(registry.BACKBONES)}).')


def _image_input_shape(model, path):
  if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
    raise _error('base_model', f'{path}: a base takes one batch of images '
                 f'[batch, height, width, channels]; this one takes '
                 f'{[tuple(x.shape) for x in model.inputs]}.')
  height, width, channels = model.inputs[0].shape[1:]
  if None in (height, width, channels) or height != width:
    raise _error('base_model', f'{path}: its input shape {height}x{width}x'
                 f'{channels} is not a fixed square; transfer learning needs '
                 'a base with a fixed square input.')
  return (height, width, channels)


def _load_backbone(name, weights, image_size, seed):
  """A Keras Applications backbone without its top, with the given weights."""
  spec = registry.BACKBONES[name]
  size = image_size or spec.default_image_size
  keras.utils.set_random_seed(seed)
  application = getattr(keras.applications, spec.application)
  # Keras names EfficientNet's ImageNet file after the model: build under
  # the default name, then name the extractor (a Functional over the same
  # layers and weights).
  build = lambda weights_argument: _named_extractor(application(
      include_top=False, weights=weights_argument, input_shape=(size, size, 3)))
  rescaling = (spec.scale, spec.offset)
  if weights == 'imagenet':
    extractor = _build_with_imagenet_weights(name, spec, size, build)
  else:
    extractor = build(None)
    if weights != 'none':
      _load_weights_file(extractor, name, spec, size, weights)
      rescaling = _rescaling_for_weights_file(extractor, spec)
  logging.info('Backbone %s at %dx%d, weights %s.', name, size, size, weights)
  return Base(source=name, architecture=name, extractor=extractor,
              input_shape=(size, size, 3), pooling='average',
              rescaling=rescaling, weights=weights,
              channel_order=spec.channel_order)


def _named_extractor(backbone):
  return keras.Model(backbone.input, backbone.output, name=EXTRACTOR_LAYER)


def _imagenet_file(spec, size):
  # Keras falls back to the 224 weights for other sizes.
  return spec.imagenet_url.format(
      size=size if size in spec.imagenet_sizes else 224)


def _build_with_imagenet_weights(name, spec, size, build):
  try:
    return build('imagenet')
  except Exception as e:  # Keras' get_file raises a bare Exception.
    url = _imagenet_file(spec, size)
    raise _error(
        'base_weights',
        f'could not fetch the ImageNet weights of {name} ({e}). "imagenet" '
        f'needs network access to download {url}. Offline, download that '
        'file where there is network, copy it here and pass '
        '--base_weights=/path/to/' + url.rsplit('/', 1)[1] +
        ' (or --base_weights=none for random weights).') from e


def _load_weights_file(extractor, name, spec, size, path):
  """Loads a local or gs:// weights file into a backbone."""
  path = storage.normalize(path)
  if not storage.exists(path):
    raise _error('base_weights', f'{path}: no such file. Pass a local '
                 f'{name} weights file without the top, such as '
                 f'{_imagenet_file(spec, size).rsplit("/", 1)[1]}, "none" '
                 'or "imagenet" (needs network access).')
  with storage.local_file(path) as local:
    try:
      extractor.load_weights(local)
    except (ValueError, OSError, KeyError) as e:
      # Keras lists every layer that did not match: keep its first line.
      first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise _error(
          'base_weights', f'cannot load {path} into {name} at {size}x{size}: '
          f'{first_line.rstrip(".")}. Expected {name} weights without the '
          'top (include_top=False) in a .h5 or .weights.h5 file, such as '
          f'{_imagenet_file(spec, size).rsplit("/", 1)[1]}.') from e


def _rescaling_for_weights_file(extractor, spec):
  """The input scaling of a backbone whose weights came from a file.

  Keras builds EfficientNet's 'imagenet' graph with one more factor k after
  its Normalization layer than any other (spec.imagenet_normalization_scale).
  A file with trained statistics (the ImageNet file, or weights saved from
  an 'imagenet' model) needs k too, and it folds into the scaling in front:
  with the backbone's own Rescaling r and mean m, inputs scale * k * pixels +
  offset * k + m * (1 - k) / r reach k times what scale and offset give. A
  file with untrained statistics (mean 0, variance 1) is used as it is.

  Returns:
    (scale, offset) for Base.rescaling.
  """
  factor = spec.imagenet_normalization_scale
  if not factor:
    return spec.scale, spec.offset
  layers = list(extractor_lib.leaf_layers(extractor))
  rescaling = next(layer for layer in layers
                   if isinstance(layer, keras.layers.Rescaling))
  normalization = next(layer for layer in layers
                       if isinstance(layer, keras.layers.Normalization))
  mean, variance = (np.ravel(keras.ops.convert_to_numpy(statistic))
                    for statistic in (normalization.mean,
                                      normalization.variance))
  if np.allclose(mean, 0.0) and np.allclose(variance, 1.0):
    return spec.scale, spec.offset
  factor = np.asarray(factor)
  scale = spec.scale * factor
  offset = spec.offset * factor + mean * (1.0 - factor) / rescaling.scale
  return tuple(scale.tolist()), tuple(offset.tolist())


def prepare(config):
  """Loads the base a transfer config names and fixes the input shape to it.

  Call under the strategy's scope. The returned config has image_size and
  channels set to the base's input shape, so the input pipeline converts the
  new dataset's images to it, and a re-run resolves to the same config.

  Returns:
    (resolved Config, Base).

  Raises:
    config.ConfigError: naming the key at fault, before any training.
  """
  base = load_base(config.base_model, config.base_weights,
                   image_size=config.image_size, channels=config.channels,
                   seed=config.seed)
  available = len(fine_tunable_layers(base.extractor))
  if config.fine_tune_layers > available:
    raise _error('fine_tune_layers', f'{config.fine_tune_layers} is more than '
                 f'the {available} layers with weights (other than batch '
                 f'normalisation) in the feature extractor of {base.source}.')
  height, _, channels = base.input_shape
  logging.info('Transfer learning from %s (%s): %d layers with weights in '
               'its feature extractor, input %s.', base.source,
               base.architecture, available, base.input_shape)
  resolved = dataclasses.replace(config, image_size=height, channels=channels)
  return resolved, base


# --------------------------------------------------------------------------
# The transfer model.


def build_model(base, num_classes):
  """The base's frozen feature extractor under a new classification head.

  The head (pooling, dropout, then the `logits` and `probabilities` layers
  of every model here) is new, sized for `num_classes`.

  Returns:
    An uncompiled keras.Model from float32 images in [0, 1] to class
    probabilities, named `transfer_<base architecture>`.
  """
  base.extractor.trainable = False
  inputs = keras.Input(shape=base.input_shape, name='image')
  x = _scaled_for_backbone(inputs, base)
  # As the keras-io guide does; in Keras 3 only trainable=False really keeps
  # the base's batch normalisation in inference mode (module docstring).
  x = base.extractor(x, training=False)
  x = keras.layers.Identity(name=models.FEATURES_LAYER)(x)
  if base.pooling == 'flatten':
    x = keras.layers.Flatten()(x)
  else:
    x = keras.layers.GlobalAveragePooling2D()(x)
  x = keras.layers.Dropout(HEAD_DROPOUT_RATE)(x)
  outputs = models.classifier_head(x, num_classes)
  return keras.Model(inputs, outputs, name=f'transfer_{base.architecture}')


def _scaled_for_backbone(x, base):
  """[0, 1] RGB pixels as the base takes them (registry.Backbone).

  Built-in Keras operations only, so the model reloads with safe_mode=True.
  The BGR flip is `keras.ops.flip`, which Keras records in the graph like a
  layer but which has no weights: the extractor's layer counts
  (fine_tunable_layers) and its fingerprint stay those of the backbone,
  as a frozen 1x1 permutation convolution's kernel would not.
  """
  if base.channel_order == 'BGR':
    x = keras.ops.flip(x, axis=-1)
  if base.rescaling:
    scale, offset = base.rescaling
    x = keras.layers.Rescaling(scale, offset, name='backbone_scaling')(x)
  return x


def fine_tunable_layers(extractor):
  """The layers `--fine_tune_layers` counts, bottom to top.

  Layers with weights, except batch normalisation (always frozen).
  """
  return [layer for layer in extractor_lib.leaf_layers(extractor)
          if layer.weights and not isinstance(layer, _ALWAYS_FROZEN_LAYERS)]


def unfreeze_top_layers(model, count):
  """Makes the top `count` fine-tunable extractor layers trainable.

  Everything else in the extractor stays frozen; the head stays trainable.
  Recompile the model afterwards.

  Args:
    model: a model from `build_model`.
    count: how many layers to unfreeze, counted from the top.

  Returns:
    The names of the unfrozen layers, bottom to top.
  """
  extractor = model.get_layer(EXTRACTOR_LAYER)
  candidates = fine_tunable_layers(extractor)
  if not 0 < count <= len(candidates):
    raise ValueError(f'Cannot unfreeze {count} of {len(candidates)} layers.')
  # A layer trains only if its enclosing models are trainable too.
  extractor.trainable = True
  for layer in extractor_lib.leaf_layers(extractor):
    layer.trainable = False
  chosen = candidates[-count:]
  for layer in chosen:
    layer.trainable = True
  return [layer.name for layer in chosen]


# --------------------------------------------------------------------------
# What a transfer run records.


def _shape_dict(shape):
  height, width, channels = shape
  return {'height': height, 'width': width, 'channels': channels}


def describe(base, model, dataset, fine_tune_layers):
  """The `transfer` entry of metadata.json.

  Args:
    base: the Base the model was built from.
    model: the trained transfer model.
    dataset: the new dataset's name.
    fine_tune_layers: the --fine_tune_layers of the run.

  Returns:
    {'transfer': {...}} for `export.build_metadata(extra=...)`.
  """
  extractor = model.get_layer(EXTRACTOR_LAYER)
  with_weights = [layer for layer in extractor_lib.leaf_layers(extractor) if layer.weights]
  fine_tuned = [layer for layer in fine_tunable_layers(extractor)
                if layer.trainable and extractor.trainable]
  fixed_shape = registry.DATASETS[dataset].shape
  if fixed_shape:
    dataset_input = _shape_dict(fixed_shape)
  else:
    dataset_input = 'any size, grey or colour'
  height, width, channels = base.input_shape
  return {'transfer': {
      'base_model': base.source,
      'base_architecture': base.architecture,
      'base_weights': base.weights or None,
      'base_labels': list(base.labels) if base.labels else None,
      'base_input': _shape_dict(base.input_shape),
      'dataset_input': dataset_input,
      'input_conversion': (
          f'the input pipeline and the serving signature resize images to '
          f'{height}x{width} and convert them to {channels} channel(s)'),
      'extractor_layers_with_weights': len(with_weights),
      'frozen_layers_with_weights': len(with_weights) - len(fine_tuned),
      'fine_tune_layers': fine_tune_layers,
      'fine_tuned_layers': [layer.name for layer in fine_tuned],
  }}


def combine_histories(head_history, fine_tune_history, head_epochs):
  """One per-epoch history over both phases, numbered on from the first."""
  combined = [dict(entry, phase='head') for entry in head_history]
  combined += [dict(entry, epoch=head_epochs + entry['epoch'],
                    phase='fine_tune') for entry in fine_tune_history]
  return combined


# --------------------------------------------------------------------------
# Two-stage transfer: a head trained on an embedding cache, then stitched.


def embedding_size(base):
  """The length of the vector the head's Dense layer sees (the embedding)."""
  _, height, width, channels = base.extractor.output.shape
  if base.pooling == extractor_lib.FLATTEN:
    return height * width * channels
  return channels


def build_head(base, num_classes):
  """The head of `build_model(base, num_classes)` alone, on its vectors.

  The same layers after the pooling (dropout, then the `logits` and
  `probabilities` layers), built in the same order under the same seed, so
  the head of a two-stage run starts from the weights a one-stage frozen
  transfer starts from.

  Returns:
    An uncompiled keras.Model from float32 embeddings [batch, size] to
    class probabilities, named `transfer_<base architecture>_head`.
  """
  inputs = keras.Input(shape=(embedding_size(base),), name='embedding')
  x = keras.layers.Dropout(HEAD_DROPOUT_RATE)(inputs)
  outputs = models.classifier_head(x, num_classes)
  return keras.Model(inputs, outputs,
                     name=f'transfer_{base.architecture}_head')


def stitch(base, head):
  """The base's frozen extractor with a trained head on top: images in.

  `build_model(base, n)` with the head's `logits` weights copied in: the
  layers of a one-stage frozen transfer, so the stitched model's
  probabilities on an image equal the head's on its cached embedding.

  Returns:
    An uncompiled keras.Model, as `build_model` returns.
  """
  num_classes = head.get_layer(models.LOGITS_LAYER).units
  model = build_model(base, num_classes)
  model.get_layer(models.LOGITS_LAYER).set_weights(
      head.get_layer(models.LOGITS_LAYER).get_weights())
  return model


def describe_two_stage(report):
  """What metadata.json's `transfer` entry adds for a two-stage run.

  Args:
    report: the embeddings source's DatasetInfo.report.
  """
  return {'two_stage': True,
          'embeddings': {'cache': report.get('cache'),
                         'fingerprint': report.get('fingerprint'),
                         'model_dir': report.get('model_dir')}}
