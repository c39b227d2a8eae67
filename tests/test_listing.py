"""Listing an image_folder dataset: what is left out and why, and the same
names for the same problems as the scorer's error records."""

import os

import pytest

from batch_predict import inputs
from tests.helpers import image_files
from trainer import errors
from trainer import listing
from trainer import walk


def _dataset(tmp_path):
  """ant/ (plain), bee -> elsewhere (a symlinked class), cat/ with a FIFO,
  a dangling link, a link loop, a second link to bee, notes and a bad name."""
  root = tmp_path / 'images'
  image_files.write_image_folder(str(root), ['ant', 'cat'], per_class=2)
  image_files.write_image_folder(str(tmp_path / 'elsewhere'), ['bee'],
                                 per_class=2)
  os.symlink(tmp_path / 'elsewhere' / 'bee', root / 'bee')
  os.mkfifo(root / 'cat' / 'pipe.png')
  os.symlink(tmp_path / 'gone.png', root / 'cat' / 'dangling.png')
  os.symlink('..', root / 'cat' / 'loop')
  os.symlink(tmp_path / 'elsewhere' / 'bee', root / 'cat' / 'bees')
  (root / 'cat' / 'notes.txt').write_text('not an image')
  with open(os.path.join(os.fsencode(root / 'cat'), b'bad-\xff.png'),
            'wb') as f:
    f.write(b'x')
  return root


def test_an_image_folder_lists_its_images_and_reports_the_rest(tmp_path):
  root = _dataset(tmp_path)
  report = listing.Report()
  by_class = listing.list_image_folder(str(root), report)
  assert by_class == {'ant': ['ant/ant-000.png', 'ant/ant-001.jpg'],
                      'bee': ['bee/bee-000.png', 'bee/bee-001.jpg'],
                      'cat': ['cat/cat-000.png', 'cat/cat-001.jpg']}
  assert report.counts == {
      errors.SPECIAL_FILE: 1, errors.DANGLING_LINK: 1, errors.LINK_LOOP: 2,
      errors.OTHER_EXTENSION: 1, errors.INVALID_NAME: 1}
  reasons = {entry['path']: (entry['kind'], entry['reason'])
             for entry in report.listed}
  assert reasons['cat/pipe.png'] == (errors.SPECIAL_FILE,
                                     'a named pipe (FIFO)')
  assert reasons['cat/dangling.png'] == (
      errors.DANGLING_LINK,
      f'a symlink to {tmp_path / "gone.png"}, which does not exist')
  assert reasons['cat/loop'][0] == reasons['cat/bees'][0] == errors.LINK_LOOP
  assert reasons['cat/bad-\\xff.png'][0] == errors.INVALID_NAME
  assert report.as_dict()['followed_links'] == {
      'bee': os.path.realpath(tmp_path / 'elsewhere' / 'bee')}


def test_a_class_folder_that_is_a_dangling_link_stops_the_listing(tmp_path):
  root = tmp_path / 'images'
  image_files.write_image_folder(str(root), ['ant'], per_class=1)
  os.symlink(root / 'nowhere', root / 'dog')
  with pytest.raises(listing.ListingError,
                     match="'dog' is a symlink to .*nowhere, which does not "
                     'exist') as raised:
    listing.list_image_folder(str(root), listing.Report())
  assert raised.value.kind == listing.ListingError.kind


def test_regular_files_leaves_out_what_a_reader_could_hang_on(tmp_path):
  shard = tmp_path / 'train-0.tfrecord'
  shard.write_bytes(b'x')
  os.mkfifo(tmp_path / 'train-1.tfrecord')
  report = listing.Report()
  paths = [str(shard), str(tmp_path / 'train-1.tfrecord'),
           'gs://bucket/train-2.tfrecord']
  assert listing.regular_files(paths, report, str(tmp_path)) == [
      paths[0], paths[2]]
  assert report.counts == {errors.SPECIAL_FILE: 1}


def test_both_commands_name_a_local_problem_alike(tmp_path):
  """The trainer's reason and the scorer's error record come from one
  classification: same kind, same phrase (the scorer adds what to do)."""
  os.symlink('missing.png', tmp_path / 'gone.png')
  os.mkfifo(tmp_path / 'pipe.png')
  report = listing.Report()
  listing.regular_files([str(tmp_path / 'gone.png'),
                         str(tmp_path / 'pipe.png')], report, str(tmp_path))
  for entry in report.listed:
    with pytest.raises(inputs.ReadError) as raised:
      inputs.read_image_file(entry['path'], 100)
    assert raised.value.kind == entry['kind']
    assert str(raised.value).startswith(entry['reason'])
  assert walk.describe_error(
      str(tmp_path / 'gone.png'),
      FileNotFoundError(2, 'x')).phrase == report.listed[0]['reason']
