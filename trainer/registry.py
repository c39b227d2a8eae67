"""Every choice list of the trainer, defined once: the registry.

Datasets, models, Keras Applications backbones, precision policies,
strategies, cache modes and tuning metrics are each listed here and nowhere
else. `config.py` validates flags against these lists, and the code that
acts on a choice looks its entry up here: `models.build_model` calls the
builder an entry names, `transfer.py` builds the backbone an entry names,
`data.load_source` calls the loader module an entry names. Nothing keeps
two lists in step; tests/test_registry.py checks that each entry's builder,
loader and Keras class exist.

This module imports nothing but the standard library, so `config.py` (and a
bad flag) never wait for TensorFlow.
"""

import dataclasses
import math

# The MNIST family's images: 28x28 grey.
MNIST_SHAPE = (28, 28, 1)
MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASS_NAMES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
    'Sneaker', 'Bag', 'Ankle boot')
# Datasets of encoded images of any size are resized to this, unless set.
DEFAULT_IMAGE_SIZE = 64
DEFAULT_CHANNELS = 3


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset `--dataset` may name.

  Attributes:
    loader: the module of `trainer/data/` whose `load(options)` reads it.
    shape: (height, width, channels) of its images when fixed; None when
      images of any size are decoded and resized to --image_size.
    class_names: the class names when the dataset fixes them; None when
      they come from the data (folder names, labels.txt).
    needs_data_dir: whether --data_dir must say where it lives.
  """
  loader: str
  shape: tuple = None
  class_names: tuple = None
  needs_data_dir: bool = True


DATASETS = {
    'mnist_sample': Dataset('sources', MNIST_SHAPE, MNIST_CLASS_NAMES,
                            needs_data_dir=False),
    'mnist': Dataset('idx', MNIST_SHAPE, MNIST_CLASS_NAMES),
    'fashion_mnist': Dataset('idx', MNIST_SHAPE, FASHION_MNIST_CLASS_NAMES),
    'image_folder': Dataset('folder'),
    'tfrecord': Dataset('tfrecords'),
    # Two-stage transfer: the vectors of an embedding cache (Contract 4);
    # their class names are the cache's label names.
    'embeddings': Dataset('embeddings'),
}
# Datasets of embedding vectors rather than images: a head trains on them
# (transfer.build_head) and the export stitches the base's extractor under it.
VECTOR_DATASETS = ('embeddings',)
# Datasets of uint8 pixels of a fixed shape (write_samples can write them).
FIXED_SHAPE_DATASETS = tuple(name for name, spec in DATASETS.items()
                             if spec.shape)


@dataclasses.dataclass(frozen=True)
class Model:
  """A model `--model` may name: `builder` is its function in models.py."""
  builder: str


MODELS = {
    'softmax': Model('softmax'),
    'mlp': Model('mlp'),
    'deep_mnist': Model('deep_mnist'),
    'cnn_bn': Model('cnn_bn'),
}


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A Keras Applications backbone `--base_model` may name (transfer.py).

  Our input pipeline gives RGB pixels in [0, 1]; each backbone must see
  exactly what `keras.applications.<preprocessing>.preprocess_input` makes
  of those pixels * 255 (tests/test_backbones.py checks it), and transfer.py
  turns `channel_order`, `scale` and `offset` into the layers that do so.

  Attributes:
    application: the constructor's name in `keras.applications`.
    preprocessing: the `keras.applications` module whose `preprocess_input`
      defines the backbone's input.
    scale: the backbone wants pixels * scale + offset (in its channel
      order); a number, or one per channel.
    offset: see `scale`.
    min_image_size: the smallest --image_size it takes.
    default_image_size: the input size when --image_size is unset.
    imagenet_url: where Keras downloads the 'imagenet' weights (without the
      top) from, with {size} for the input size if it has several files.
    imagenet_sizes: input sizes that have ImageNet weights of their own
      (Keras takes the 224 ones for other sizes); empty: one file for all.
    channel_order: 'RGB', or 'BGR' for a backbone trained on Caffe's
      channel order.
    imagenet_normalization_scale: for a backbone that normalises its input
      itself, the factor per channel by which Keras' graph for
      weights='imagenet', and no other, multiplies its Normalization layer's
      output (EfficientNet: 1 / sqrt(stddev), tensorflow/tensorflow#49930).
      transfer.py gives a weights file with trained statistics the same.
  """
  application: str
  preprocessing: str
  scale: object
  offset: object
  min_image_size: int
  default_image_size: int
  imagenet_url: str
  imagenet_sizes: tuple = ()
  channel_order: str = 'RGB'
  imagenet_normalization_scale: tuple = None


# ImageNet's RGB standard deviations in [0, 1], as Keras' EfficientNet has
# them.
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
_KERAS_APPLICATIONS_URL = (
    'https://storage.googleapis.com/tensorflow/keras-applications/')
BACKBONES = {
    'mobilenet_v2': Backbone(
        application='MobileNetV2', preprocessing='mobilenet_v2',
        # 'tf' mode: [0, 255] to [-1, 1].
        scale=2.0, offset=-1.0,
        min_image_size=32, default_image_size=96,
        imagenet_url=(
            _KERAS_APPLICATIONS_URL + 'mobilenet_v2/mobilenet_v2_weights_tf_'
            'dim_ordering_tf_kernels_1.0_{size}_no_top.h5'),
        imagenet_sizes=(96, 128, 160, 192, 224)),
    # The network of the seed example (Inception v3 bottlenecks on Cloud ML).
    'inception_v3': Backbone(
        application='InceptionV3', preprocessing='inception_v3',
        scale=2.0, offset=-1.0,  # 'tf' mode, as MobileNetV2.
        min_image_size=75, default_image_size=299,
        imagenet_url=(
            _KERAS_APPLICATIONS_URL + 'inception_v3/inception_v3_weights_tf_'
            'dim_ordering_tf_kernels_notop.h5')),
    'efficientnet_b0': Backbone(
        application='EfficientNetB0', preprocessing='efficientnet',
        # It rescales and normalises inside: it takes [0, 255] as they are.
        scale=255.0, offset=0.0,
        min_image_size=32, default_image_size=224,
        imagenet_url=('https://storage.googleapis.com/keras-applications/'
                      'efficientnetb0_notop.h5'),
        imagenet_normalization_scale=tuple(
            1.0 / math.sqrt(stddev) for stddev in _IMAGENET_STDDEV_RGB)),
    'resnet50': Backbone(
        application='ResNet50', preprocessing='resnet50',
        # 'caffe' mode: BGR [0, 255] less the ImageNet mean of each channel.
        scale=255.0, offset=(-103.939, -116.779, -123.68),
        min_image_size=32, default_image_size=224,
        imagenet_url=(
            _KERAS_APPLICATIONS_URL + 'resnet/resnet50_weights_tf_dim_'
            'ordering_tf_kernels_notop.h5'),
        channel_order='BGR'),
}

# Keras dtype policies the trainer computes with; `auto` picks one of them
# for the hardware (precision.py).
PRECISION_POLICIES = ('float32', 'mixed_bfloat16', 'mixed_float16')
MIXED_PRECISION_CHOICES = PRECISION_POLICIES + ('auto',)
# tf.distribute strategies (distribute.py); `auto` picks one.
STRATEGIES = ('auto', 'default', 'mirrored', 'multi_worker')
CACHE_MODES = ('auto', 'memory', 'none')
# Keras log values a tuning trial may report (hptuning.py).
HYPERTUNE_METRICS = ('val_accuracy', 'val_loss', 'accuracy', 'loss')
# Metrics --export_best and early stopping may watch, and which way is
# better (best_epoch.py).
MONITORED_METRICS = {'val_accuracy': 'max', 'val_loss': 'min'}
# Learning-rate curves after the warm-up (schedules.py).
LEARNING_RATE_SCHEDULES = ('constant', 'cosine', 'step')
# --augment's named augmentations, in the order the training pipeline
# applies them (data/pipeline.py). `true` (the flag's old boolean form)
# means shift only.
AUGMENTATIONS = ('crop', 'flip', 'shift', 'color')
# Datasets whose classes a horizontal flip changes (a mirrored 2 or 7 is no
# digit): --augment=flip is refused for them.
NO_FLIP_DATASETS = ('mnist_sample', 'mnist')
# --class_weight's choices (losses.py); empty = every example weighs 1.
CLASS_WEIGHTS = ('balanced',)
