r"""Writes images of a dataset split as PNG or JPEG files, to score them.

  python -m trainer.write_samples --output_dir=/tmp/run/samples --count=1000

Files are named SPLIT-INDEX-LABEL.EXT, so each true label is in its name.
"""

from absl import app
from absl import flags

from trainer import config as config_lib
from trainer.data import samples
from trainer.data import sources

_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Folder to write to.')
_DATASET = flags.DEFINE_enum(
    'dataset', 'mnist_sample', ['mnist_sample', 'mnist', 'fashion_mnist'],
    'Dataset to take images from.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', '', 'IDX folder for mnist and fashion_mnist.')
_SPLIT = flags.DEFINE_enum('split', 'test', list(sources.SPLITS), 'Split.')
_COUNT = flags.DEFINE_integer('count', 0, 'How many images (0 = all).')
_FORMAT = flags.DEFINE_enum('format', 'png', list(samples.FORMATS),
                            'File format.')


def main(argv):
  del argv
  config = config_lib.build(overrides={
      'dataset': _DATASET.value, 'data_dir': _DATA_DIR.value,
      'job_dir': _OUTPUT_DIR.value})
  source = sources.load_source(config)
  paths = samples.write_samples(source, _SPLIT.value, _OUTPUT_DIR.value,
                                _COUNT.value, _FORMAT.value)
  print(f'Wrote {len(paths)} {_FORMAT.value} files to {_OUTPUT_DIR.value}.')


if __name__ == '__main__':
  flags.mark_flags_as_required(['output_dir'])
  app.run(main)
