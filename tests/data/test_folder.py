"""Image folders: mixed files, stable splits, hostile folders, EXIF photos."""

import os
import shutil

import numpy as np
import pytest

from tests.helpers import photos
from tests.helpers import datasets
from trainer import data
from trainer.data import folder
from trainer.data import sources
from tests.helpers import image_files


@pytest.mark.slow  # 3.4 s here: over the fast tier's ~1.5 s a test.
def test_image_folder_mixed_grey_colour_small_large(tmp_path):
  root = str(tmp_path / 'images')
  written = image_files.write_image_folder(
      root, ['cat', 'ant', 'bee'], per_class=12,
      sizes=((10, 14), (300, 200), (64, 64)), modes=('L', 'RGB', 'RGBA'),
      formats=('PNG', 'JPEG', 'GIF', 'BMP'))
  source = folder.load_image_folder(root, (48, 48, 3), 0.2, 0.2)
  assert source.info.class_names == ('ant', 'bee', 'cat')  # Sorted names.
  assert sum(source.info.sizes.values()) == len(written) == 36
  for split in sources.SPLITS:
    if not source.info.sizes[split]:
      continue
    images, labels = datasets.batches(source, split, (48, 48, 3))
    assert images.shape == (source.info.sizes[split], 48, 48, 3)
    assert set(labels) <= {0, 1, 2}
    assert 0.0 <= images.min() and images.max() <= 1.0
  # Labels are indices into the sorted folder names, not creation order.
  _, by_split = folder.split_image_folder(root, 0.2, 0.2)
  for items in by_split.values():
    for path, label in items:
      assert source.info.class_names[label] == os.path.basename(
          os.path.dirname(path))
  grey = folder.load_image_folder(root, (20, 20, 1), 0.2, 0.2)
  images, _ = datasets.batches(grey, 'train', (20, 20, 1))
  assert images.shape[1:] == (20, 20, 1)


def test_image_folder_split_is_stable_when_files_are_added(tmp_path):
  root = str(tmp_path / 'images')
  image_files.write_image_folder(root, ['a', 'b'], per_class=30)
  _, before = folder.split_image_folder(root, 0.2, 0.2)
  image_files.write_image_folder(str(tmp_path / 'more'), ['a', 'b'],
                              per_class=60)
  for name in ('a', 'b'):
    for f in os.listdir(tmp_path / 'more' / name):
      if f.split('-')[1] >= '030':
        shutil.copy(tmp_path / 'more' / name / f, os.path.join(root, name))
  _, after = folder.split_image_folder(root, 0.2, 0.2)
  assert sum(len(v) for v in after.values()) == 120
  for split in sources.SPLITS:
    assert set(before[split]) <= set(after[split])
  assert len(after['test']) > len(before['test'])


@pytest.mark.parametrize('layout, problem', [
    ({}, 'no such folder'),
    ({'only/x.png': b'...'}, 'found 1 class folder'),
    ({'a/x.png': b'...', 'b/notes.txt': b'hi'}, 'b hold no images'),
])
def test_image_folder_errors(tmp_path, layout, problem):
  root = tmp_path / 'images'
  for name, body in layout.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(body)
  with pytest.raises(data.DataError, match=problem):
    folder.load_image_folder(str(root), (28, 28, 1), 0.1, 0.1)


@pytest.mark.slow  # 1.6 s here: over the fast tier's ~1.5 s a test.
def test_undecodable_files_in_an_image_folder_are_left_out_and_counted(
    tmp_path):
  root = str(tmp_path / 'images')
  image_files.write_image_folder(root, ['a', 'b'], per_class=10)
  with open(os.path.join(root, 'a', 'broken.png'), 'wb') as f:
    f.write(b'not a png')
  source = folder.load_image_folder(root, (28, 28, 1), 0.0, 0.0)
  images, _ = datasets.batches(source, 'train', (28, 28, 1))
  # The counts are those trained on (the broken file used to be counted).
  assert len(images) == source.info.sizes['train'] == 20
  assert source.info.report['skipped'] == {'undecodable': 1}
  [entry] = source.info.report['skipped_files']
  assert entry['path'] == 'a/broken.png'
  assert 'Unknown image file format' in entry['reason']



def _hostile_folder(tmp_path):
  """ant/ (plain), bee -> elsewhere (a symlinked class), cat/ with a FIFO,
  a corrupt PNG, a dangling link, a link loop, notes and a bad name."""
  root = tmp_path / 'images'
  image_files.write_image_folder(str(root), ['ant', 'cat'], per_class=10)
  image_files.write_image_folder(str(tmp_path / 'elsewhere'), ['bee'],
                              per_class=10)
  os.symlink(tmp_path / 'elsewhere' / 'bee', root / 'bee')
  os.mkfifo(root / 'cat' / 'pipe.png')
  (root / 'cat' / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(40))
  os.symlink(tmp_path / 'gone.png', root / 'cat' / 'dangling.png')
  os.symlink('..', root / 'cat' / 'loop')
  (root / 'cat' / 'notes.txt').write_text('not an image')
  with open(os.path.join(os.fsencode(root / 'cat'), b'bad-\xff.png'),
            'wb') as f:
    f.write(image_files.encode_image(image_files.random_pixels(28, 28, 1), 'PNG'))
  return str(root)


@pytest.mark.slow  # 2.2 s here: over the fast tier's ~1.5 s a test.
def test_a_hostile_image_folder_trains_on_what_it_reports(tmp_path):
  root = _hostile_folder(tmp_path)
  pipe = os.path.join(root, 'cat', 'pipe.png')
  with datasets.fifo_watchdog(pipe) as watchdog:
    source = folder.load_image_folder(root, (28, 28, 1), 0.2, 0.2)
    counted = {split: len(datasets.batches(source, split, (28, 28, 1))[1])
               for split in sources.SPLITS if source.info.sizes[split]}
  assert not watchdog['opened'], 'the FIFO was opened'
  assert source.info.class_names == ('ant', 'bee', 'cat')
  assert sum(source.info.sizes.values()) == 30
  assert counted == {k: v for k, v in source.info.sizes.items() if v}
  report = source.info.report
  assert report['skipped'] == {
      'dangling_link': 1, 'invalid_name': 1, 'link_loop': 1,
      'other_extension': 1, 'special_file': 1, 'undecodable': 1}
  paths = {entry['kind']: entry['path'] for entry in report['skipped_files']}
  assert paths['special_file'] == 'cat/pipe.png'
  assert paths['undecodable'] == 'cat/corrupt.png'
  assert paths['link_loop'] == 'cat/loop'
  assert paths['invalid_name'] == 'cat/bad-\\xff.png'
  assert report['followed_links'] == {
      'bee': os.path.realpath(tmp_path / 'elsewhere' / 'bee')}


@pytest.mark.parametrize('make, problem', [
    (lambda root: os.mkdir(root / 'dog'), r'class folder\(s\) dog hold no '
     'images'),
    (lambda root: (root / 'dog').mkdir() or (root / 'dog' / 'x.txt')
     .write_text('?'), r'class folder\(s\) dog hold no images'),
    (lambda root: os.symlink(root / 'nowhere', root / 'dog'), "'dog' is a "
     'symlink to .*nowhere, which does not exist'),
    (lambda root: (root / 'dog').mkdir() or (root / 'dog' / 'x.png')
     .write_bytes(b'garbage'), 'dog hold no image that decodes'),
])
def test_a_class_that_would_vanish_stops_the_run_before_training(
    tmp_path, make, problem):
  root = tmp_path / 'images'
  image_files.write_image_folder(str(root), ['ant', 'cat'], per_class=4)
  make(root)
  with pytest.raises(data.DataError, match=problem):
    folder.load_image_folder(str(root), (28, 28, 1), 0.0, 0.0)



def test_exif_rotated_photos_train_as_their_upright_copies(tmp_path):
  root = tmp_path / 'images'
  for name in ('upright', 'rotated'):
    (root / name).mkdir(parents=True)
  pixels = photos.asymmetric_pixels(40, 40)
  for orientation in photos.ORIENTATIONS:
    (root / 'upright' / f'{orientation}.jpg').write_bytes(
        photos.upright_jpeg(pixels))
    (root / 'rotated' / f'{orientation}.jpg').write_bytes(
        photos.rotated_jpeg(pixels, orientation))
  source = folder.load_image_folder(str(root), (40, 40, 3), 0.0, 0.0)
  images, _ = datasets.batches(source, 'train', (40, 40, 3))
  paths = [path for path, _ in folder.split_image_folder(
      str(root), 0.0, 0.0)[1]['train']]
  by_name = dict(zip((os.path.relpath(p, root) for p in paths), images))
  for orientation in photos.ORIENTATIONS:
    upright = by_name[f'upright/{orientation}.jpg']
    rotated = by_name[f'rotated/{orientation}.jpg']
    assert np.abs(rotated - upright).mean() < 0.01, orientation
    assert np.abs(rotated - upright).max() < 0.1, orientation
