r"""Writes images of a dataset split as PNG or JPEG files, to score them.

  python -m trainer.write_samples --output_dir=/tmp/run/samples --count=1000

Files are named SPLIT-INDEX-LABEL.EXT, so each true label is in its name.
The split is the one a trainer run with the default --validation_fraction
and --test_fraction uses, so `--split=test` writes the images such a run
evaluated on; `--split=all` writes every split. `--class_folders` writes
OUTPUT_DIR/<class>/SPLIT-INDEX-LABEL.EXT, an image folder (the bundled
digits as a folder to train on, or to embed for two-stage transfer):

  python -m trainer.write_samples --output_dir=/tmp/digits --split=all \
    --class_folders

The library is trainer/data/samples.py.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from trainer import cli
from trainer import config as config_lib
from trainer import errors
from trainer import registry

# TensorFlow's C++ start-up notes (CUDA probing on machines without a GPU)
# are hidden, as in trainer.task (see cli.quiet_stderr).
with cli.quiet_stderr(expected=errors.UserError):
  # pylint: disable=g-import-not-at-top
  from trainer import data
  from trainer.data import samples
  from trainer.data import sources
  import tensorflow as tf
  # pylint: enable=g-import-not-at-top
  tf.config.list_physical_devices('GPU')  # Its cuInit note, here.

_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Folder to write to.')
_DATASET = flags.DEFINE_enum(
    'dataset', 'mnist_sample', list(registry.FIXED_SHAPE_DATASETS),
    'Dataset to take images from.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', '', 'IDX folder for mnist and fashion_mnist.')
_ALL_SPLITS = 'all'
_SPLIT = flags.DEFINE_enum('split', 'test', list(sources.SPLITS) + [_ALL_SPLITS],
                           'Split, or all of them.')
_COUNT = flags.DEFINE_integer('count', 0, 'How many images (0 = all).')
_FORMAT = flags.DEFINE_enum('format', 'png', list(samples.FORMATS),
                            'File format.')
_CLASS_FOLDERS = flags.DEFINE_boolean(
    'class_folders', False, 'Write OUTPUT_DIR/<class name>/ sub-folders (the '
    "image_folder layout; '/' in a class name becomes '_').")


def main(argv):
  del argv
  try:
    with cli.quiet_stderr(replay=logging.get_verbosity() >= logging.DEBUG,
                          expected=errors.UserError):
      config_lib.check_dataset(_DATASET.value, _DATA_DIR.value)
      source = data.load_source(data.Options(
          _DATASET.value, data_dir=_DATA_DIR.value,
          validation_fraction=config_lib.default('validation_fraction'),
          test_fraction=config_lib.default('test_fraction')))
      splits = (sources.SPLITS if _SPLIT.value == _ALL_SPLITS
                else (_SPLIT.value,))
      paths = []
      for split in splits:
        paths += samples.write_samples(source, split, _OUTPUT_DIR.value,
                                       _COUNT.value, _FORMAT.value,
                                       _CLASS_FOLDERS.value)
  except errors.UserError as e:  # One line a user can act on, no traceback.
    logging.error('%s', e)
    sys.exit(2)
  print(f'Wrote {len(paths)} {_FORMAT.value} files to {_OUTPUT_DIR.value}.')


if __name__ == '__main__':
  flags.mark_flags_as_required(['output_dir'])
  app.run(main)
