r"""Evaluate an exported model on a dataset: the report of Contract 5.

  python -m trainer.evaluate --model_dir=/tmp/run/export \
      --dataset=image_folder --data_dir=/data/photos --split=all \
      --output_dir=/tmp/run/eval-photos

writes DIR/evaluation.json (the same object as a training run's
metrics.json["evaluation"]), DIR/evaluation.png and DIR/misclassified.png.
The model is the artifact, scored through its serving signature: image
files as their bytes, as `batch_predict` sends them, so the report measures
what batch scoring will do; array datasets (mnist, fashion_mnist,
mnist_sample) through its `serving_pixels` signature.

--dataset defaults to the one the artifact was trained on; --split is
test (default), validation, train or all, cut as the trainer cuts it
(--validation_fraction, --test_fraction). Errors a user can fix end in one
line and exit status 2.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from trainer import artifact
from trainer import cli
from trainer import config as config_lib
from trainer import errors
from trainer import evaluation
from trainer import storage

SPLITS = ('test', 'validation', 'train', 'all')
_USER_ERROR_STATUS = 2


class FlagError(errors.UserError, ValueError):
  """A flag of trainer.evaluate is missing or wrong."""

  kind = 'invalid_flag'


def check_flags(model_dir, output_dir, split, validation_fraction,
                test_fraction):
  """Checks what can be checked before anything is loaded.

  Raises:
    FlagError: naming the flag.
  """
  missing = [name for name, value in (('--model_dir', model_dir),
                                      ('--output_dir', output_dir))
             if not value]
  if missing:
    raise FlagError(f'Missing {" and ".join(missing)}; see --help.')
  if split not in SPLITS:
    raise FlagError(f'--split={split}: choose one of {", ".join(SPLITS)}.')
  for name, value in (('validation_fraction', validation_fraction),
                      ('test_fraction', test_fraction)):
    if not 0 <= value < 1:
      raise FlagError(f'--{name}={value}: must be in [0, 1).')


def run(model_dir, output_dir, dataset=None, data_dir='', split='test',
        validation_fraction=0.1, test_fraction=0.1):
  """Evaluates the artifact; writes the report and its pictures.

  Returns:
    The report (also DIR/evaluation.json).

  Raises:
    errors.UserError: a flag, the artifact or the dataset is wrong.
  """
  check_flags(model_dir, output_dir, split, validation_fraction,
              test_fraction)
  metadata = artifact.read_metadata(model_dir)
  dataset = dataset or metadata['dataset']
  try:
    config_lib.check_dataset(dataset, data_dir)
  except config_lib.ConfigError as e:
    raise FlagError(str(e)) from e
  # TensorFlow's C++ start-up notes (CUDA probing on machines without a
  # GPU) are hidden as in trainer.task: shown with --verbosity=1 or on a
  # failure that is not the user's.
  with cli.quiet_stderr(replay=logging.get_verbosity() >= logging.DEBUG,
                        expected=errors.UserError):
    from trainer import evaluate_lib  # pylint: disable=g-import-not-at-top
    report = evaluate_lib.evaluate_export(
        model_dir, dataset, data_dir, split, validation_fraction,
        test_fraction, output_dir)
  path = storage.join(storage.normalize(output_dir),
                      evaluation.REPORT_FILE)
  logging.info('Accuracy %s on %d examples of %s (%s); macro F1 %s, '
               'expected calibration error %s. Wrote %s.',
               report['top_k_accuracy']['1'], report['examples'], dataset,
               split, report['macro_f1'],
               report['expected_calibration_error'], path)
  return report


def define_flags():
  """Defines the command's flags (in `__main__` only: trainer.task defines
  some of the same names, and tests import both)."""
  flags.DEFINE_string(
      'model_dir', None, 'The model artifact (JOB_DIR/export), local or '
      'gs://. Required.')
  flags.DEFINE_string(
      'output_dir', None, 'Where evaluation.json, evaluation.png and '
      'misclassified.png go (local or gs://). Required.')
  flags.DEFINE_string(
      'dataset', None, 'The dataset to evaluate on (default: the one the '
      'artifact was trained on); as trainer.task --dataset.')
  flags.DEFINE_string(
      'data_dir', '', 'Where the dataset lives, as trainer.task --data_dir.')
  flags.DEFINE_string(
      'split', 'test', f'Which split to evaluate: {", ".join(SPLITS)}.')
  flags.DEFINE_float(
      'validation_fraction', config_lib.default('validation_fraction'),
      'As trainer.task: the share held out for validation.')
  flags.DEFINE_float(
      'test_fraction', config_lib.default('test_fraction'),
      'As trainer.task: the share held out for test.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    values = flags.FLAGS
    run(values.model_dir, values.output_dir, values.dataset, values.data_dir,
        values.split, values.validation_fraction, values.test_fraction)
  except errors.UserError as e:
    logging.error('%s', e)
    sys.exit(_USER_ERROR_STATUS)


if __name__ == '__main__':
  define_flags()
  app.run(main)
