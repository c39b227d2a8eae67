"""What --input names, URI lists, and reading one file through FileSystems."""

import os

import pytest

from batch_predict import inputs
from tests import image_files


def _write(path, content=b'x'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(content)
  return path


def test_a_glob_a_folder_a_list_and_one_image(tmp_path):
  png = image_files.encode(image_files.digits(1)[0][0], 'PNG')
  image = _write(str(tmp_path / 'images/a.png'), png)
  _write(str(tmp_path / 'images/sub/b.png'), png)
  listing = _write(str(tmp_path / 'list.txt'), f'{image}\n'.encode())
  assert inputs.resolve_input(str(tmp_path / 'images/*.png')) == (
      inputs.GLOB, str(tmp_path / 'images/*.png'))
  assert inputs.resolve_input(str(tmp_path / 'images') + '/') == (
      inputs.GLOB, str(tmp_path / 'images/**'))
  assert inputs.resolve_input(listing) == (inputs.URI_LIST, listing)
  assert inputs.resolve_input(image) == (inputs.SINGLE_FILE, image)


@pytest.mark.parametrize('relative,words', [
    ('images/*.jpg', 'no files match'),
    ('empty-folder', 'holds no files'),
    ('nothing-here', 'no such file or folder'),
])
def test_input_naming_nothing_fails_before_any_work(tmp_path, relative, words):
  _write(str(tmp_path / 'images/a.png'))
  os.makedirs(tmp_path / 'empty-folder')
  with pytest.raises(inputs.InputError, match=words):
    inputs.resolve_input(str(tmp_path / relative))


def test_unsupported_scheme_is_an_input_error():
  with pytest.raises(inputs.InputError, match='s3://'):
    inputs.resolve_input('s3://bucket/images/*.png')


def test_parse_uri_line():
  folder = '/data/lists'
  assert inputs.parse_uri_line('\n', folder) is None
  assert inputs.parse_uri_line('  # a comment\n', folder) is None
  assert inputs.parse_uri_line('\ufeffa.png\r\n', folder) == '/data/lists/a.png'
  assert inputs.parse_uri_line('sub/b.png', folder) == '/data/lists/sub/b.png'
  assert inputs.parse_uri_line('/abs/c.png', folder) == '/abs/c.png'
  assert inputs.parse_uri_line('gs://bucket/d.png', folder) == (
      'gs://bucket/d.png')
  assert inputs.parse_uri_line('/gcs/bucket/e.png', folder) == (
      'gs://bucket/e.png')
  assert inputs.parse_uri_line('x.png', 'gs://bucket/lists') == (
      'gs://bucket/lists/x.png')
  # Kept as written: reading it gives an invalid_uri error record.
  assert inputs.parse_uri_line('http://host/f.png', folder) == (
      'http://host/f.png')


def test_read_image_file(tmp_path):
  path = _write(str(tmp_path / 'a.png'), b'0123456789')
  assert inputs.read_image_file(path, max_bytes=10) == b'0123456789'
  cases = {
      str(tmp_path / 'missing.png'): (inputs.NOT_FOUND, 'no such file'),
      str(tmp_path): (inputs.NOT_A_FILE, 'a folder, not a file'),
      'ftp://host/a.png': (inputs.INVALID_URI, 'gs://BUCKET/PATH'),
  }
  for uri, (kind, words) in cases.items():
    with pytest.raises(inputs.ReadError, match=words) as raised:
      inputs.read_image_file(uri, max_bytes=10)
    assert raised.value.kind == kind
  with pytest.raises(inputs.ReadError, match='--max_file_bytes') as raised:
    inputs.read_image_file(path, max_bytes=9)
  assert raised.value.kind == inputs.FILE_TOO_LARGE


def test_read_and_resolve_on_a_bucket(gcs_server, beam_gcs_anonymous):
  from trainer import storage  # pylint: disable=g-import-not-at-top
  storage.write_bytes('gs://test-bucket/images/a.png', b'\x89PNG\r\n\x1a\nxx')
  storage.write_bytes('gs://test-bucket/images/sub/b.png', b'b')
  storage.write_text('gs://test-bucket/list.txt', 'images/a.png\n')
  assert inputs.read_image_file('gs://test-bucket/images/a.png', 100) == (
      b'\x89PNG\r\n\x1a\nxx')
  with pytest.raises(inputs.ReadError) as raised:
    inputs.read_image_file('gs://test-bucket/images/missing.png', 100)
  assert raised.value.kind == inputs.NOT_FOUND
  assert inputs.resolve_input('gs://test-bucket/images') == (
      inputs.GLOB, 'gs://test-bucket/images/**')
  assert inputs.resolve_input('/gcs/test-bucket/list.txt') == (
      inputs.URI_LIST, 'gs://test-bucket/list.txt')
  assert inputs.resolve_input('gs://test-bucket/images/a.png') == (
      inputs.SINGLE_FILE, 'gs://test-bucket/images/a.png')
  with pytest.raises(inputs.InputError, match='no files match'):
    inputs.resolve_input('gs://test-bucket/images/*.jpg')
