"""Converting an image folder to TFRecord shards, and reading them back."""

import os

import pytest

from tests.helpers import datasets
from trainer import make_tfrecords_lib
from trainer.data import folder
from trainer.data import sources
from trainer.data import tfrecords
from tests.helpers import image_files
from tests import helpers


@pytest.mark.slow  # 4.7 s here: over the fast tier's ~1.5 s a test.
def test_tfrecord_round_trip_from_an_image_folder(tmp_path):
  root = str(tmp_path / 'images')
  written = image_files.write_image_folder(root, ['x', 'y', 'z'], per_class=20,
                                        sizes=((28, 28), (40, 30)))
  with open(os.path.join(root, 'x', 'bad.jpg'), 'wb') as f:
    f.write(b'\xff\xd8 not really')
  shards = str(tmp_path / 'shards')
  counts = make_tfrecords_lib.convert_image_folder(
      root, shards, num_shards=3, validation_fraction=0.2, test_fraction=0.2)
  assert counts['skipped'] == 1
  assert counts['train'] + counts['validation'] + counts['test'] == len(
      written)
  assert (tmp_path / 'shards' / 'labels.txt').read_text() == 'x\ny\nz\n'
  # --num_shards is the train split's count; the others' follow its size.
  names = sorted(os.listdir(shards))
  assert [n for n in names if n.startswith('train-')] == [
      f'train-{i:05d}-of-00003.tfrecord' for i in range(3)]
  for split in ('validation', 'test'):
    expected = max(1, round(3 * counts[split] / counts['train']))
    assert len([n for n in names if n.startswith(f'{split}-')]) == expected
  source = tfrecords.load_tfrecord(shards, (28, 28, 1), 0.1, 0.1)
  assert source.info.class_names == ('x', 'y', 'z')
  for split in sources.SPLITS:
    images, labels = datasets.batches(source, split, (28, 28, 1))
    assert len(images) == counts[split]
    assert images.shape[1:] == (28, 28, 1)
  # The same split as the image folder itself.
  from_folder = folder.load_image_folder(root, (28, 28, 1), 0.2, 0.2)
  assert from_folder.info.sizes['test'] == counts['test']



@pytest.mark.slow
def test_the_command_ends_a_folder_to_fix_in_one_line(tmp_path):
  process = helpers.run_module(
      'trainer.make_tfrecords', f'--image_dir={tmp_path}/none',
      f'--output_dir={tmp_path}/shards', check=False, timeout=120)
  assert process.returncode == 2
  assert f'data_dir {tmp_path}/none: no such folder.' in process.stderr
  assert 'Traceback' not in process.stderr
