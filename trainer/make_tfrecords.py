r"""Converts an image folder (one sub-folder per class) to TFRecord shards.

  python -m trainer.make_tfrecords --image_dir=photos/ --output_dir=shards/
  python -m trainer.task --dataset=tfrecord --data_dir=shards/ --job_dir=/tmp/r

The library is make_tfrecords_lib.py.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from trainer import errors
from trainer import make_tfrecords_lib

_IMAGE_DIR = flags.DEFINE_string(
    'image_dir', None, 'Image folder: one sub-folder per class.')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', None, 'Where to write the shards and labels.txt.')
_NUM_SHARDS = flags.DEFINE_integer(
    'num_shards', 4, 'Shards of the train split, exactly; validation and '
    'test get as many as their size relative to train (at least one each).',
    lower_bound=1)
_VALIDATION_FRACTION = flags.DEFINE_float(
    'validation_fraction', 0.1, 'Share of images for validation.')
_TEST_FRACTION = flags.DEFINE_float(
    'test_fraction', 0.1, 'Share of images for test.')


def main(argv):
  del argv
  try:
    make_tfrecords_lib.convert_image_folder(
        _IMAGE_DIR.value, _OUTPUT_DIR.value, _NUM_SHARDS.value,
        _VALIDATION_FRACTION.value, _TEST_FRACTION.value)
  except errors.UserError as e:  # A folder to fix: one line, no traceback.
    logging.error('%s', e)
    sys.exit(2)


if __name__ == '__main__':
  flags.mark_flags_as_required(['image_dir', 'output_dir'])
  app.run(main)
