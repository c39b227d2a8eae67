"""Dataset images written as files: names carry labels, pixels survive."""

import os

import numpy as np
import pytest
from PIL import Image

from trainer.data import samples
from trainer.data import sources
from tests.helpers import processes


def test_written_files_hold_the_split_pixels_and_name_their_labels(tmp_path):
  source = sources.load_mnist_sample(0.1, 0.1)
  paths = samples.write_samples(source, 'test', str(tmp_path), count=3)
  assert [os.path.basename(p).split('-')[:2] for p in paths] == [
      ['test', '00000'], ['test', '00001'], ['test', '00002']]
  pixels, labels = next(source.examples('test').batch(3).as_numpy_iterator())
  for path, expected, label in zip(paths, pixels, labels):
    assert samples.label_from_name(path) == label
    np.testing.assert_array_equal(np.asarray(Image.open(path)),
                                  expected[..., 0])


@pytest.mark.slow
def test_the_command_ends_a_bad_flag_or_missing_data_in_one_line(tmp_path):
  cases = ((['--dataset=mnist'], "data_dir: dataset 'mnist' needs --data_dir."),
           (['--dataset=mnist', f'--data_dir={tmp_path}/none'],
            'train-images-idx3-ubyte.gz: file not found'))
  # Both commands at once: their TensorFlow start-ups overlap.
  finished = processes.run_modules(
      *[('trainer.write_samples', [f'--output_dir={tmp_path}/out', *args])
        for args, _ in cases], timeout=120)
  for process, (_, message) in zip(finished, cases):
    assert process.returncode == 2
    assert message in process.stderr and 'Traceback' not in process.stderr
  assert not os.path.exists(tmp_path / 'out')


def test_class_folders_are_an_image_folder_of_the_class_names(tmp_path):
  source = sources.load_mnist_sample(0.1, 0.1)
  paths = samples.write_samples(source, 'validation', str(tmp_path), count=5,
                                class_folders=True)
  _, labels = next(source.examples('validation').batch(5).as_numpy_iterator())
  for path, label in zip(paths, labels):
    assert os.path.dirname(path) == os.path.join(
        str(tmp_path), source.info.class_names[label])
    assert samples.label_from_name(path) == label
  assert samples.class_folder('T-shirt/top') == 'T-shirt_top'
