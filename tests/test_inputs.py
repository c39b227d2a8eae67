"""What --input names, URI lists, and reading one file through FileSystems."""

import io
import json
import os
import socket
import subprocess
import sys

import pytest

from batch_predict import inputs
from tests import helpers
from tests.helpers import image_files
from tests.helpers import processes
from trainer import errors


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
      str(tmp_path / 'missing.png'): (errors.NOT_FOUND, 'no such file'),
      str(tmp_path): (errors.NOT_A_FILE, 'a folder, not a file'),
      'ftp://host/a.png': (errors.INVALID_URI, 'gs://BUCKET/PATH'),
  }
  for uri, (kind, words) in cases.items():
    with pytest.raises(inputs.ReadError, match=words) as raised:
      inputs.read_image_file(uri, max_bytes=10)
    assert raised.value.kind == kind
  with pytest.raises(inputs.ReadError, match='--max_file_bytes') as raised:
    inputs.read_image_file(path, max_bytes=9)
  assert raised.value.kind == errors.FILE_TOO_LARGE


def test_read_at_most_reads_on_when_the_file_grew():
  # The size is the file's at its fstat: a file that grew since is read on,
  # up to one byte over the limit (which read_image_file refuses).
  def read_at_most(data, size):
    return inputs.read_at_most(io.BytesIO(data).read, size, max_bytes=10)

  assert read_at_most(b'0123', 4) == b'0123'
  assert read_at_most(b'0123456', 4) == b'0123456'
  assert read_at_most(b'x' * 50, 4) == b'x' * 11
  assert read_at_most(b'01', 4) == b'01'


def test_read_at_most_reads_on_through_short_reads():
  # os.read may return less than it was asked for past the first read.
  source = io.BytesIO(b'y' * 50)
  asked = []

  def read(size):
    asked.append(size)
    return source.read(min(size, 3))

  assert inputs.read_at_most(read, 2, max_bytes=10) == b'y' * 11
  assert asked == [3, 8, 5, 2]


def test_read_and_resolve_on_a_bucket(gcs_server, beam_gcs_anonymous):
  from trainer import storage  # pylint: disable=g-import-not-at-top
  storage.write_bytes('gs://test-bucket/images/a.png', b'\x89PNG\r\n\x1a\nxx')
  storage.write_bytes('gs://test-bucket/images/sub/b.png', b'b')
  storage.write_text('gs://test-bucket/list.txt', 'images/a.png\n')
  assert inputs.read_image_file('gs://test-bucket/images/a.png', 100) == (
      b'\x89PNG\r\n\x1a\nxx')
  with pytest.raises(inputs.ReadError) as raised:
    inputs.read_image_file('gs://test-bucket/images/missing.png', 100)
  assert raised.value.kind == errors.NOT_FOUND
  assert inputs.resolve_input('gs://test-bucket/images') == (
      inputs.GLOB, 'gs://test-bucket/images/**')
  assert inputs.resolve_input('/gcs/test-bucket/list.txt') == (
      inputs.URI_LIST, 'gs://test-bucket/list.txt')
  assert inputs.resolve_input('gs://test-bucket/images/a.png') == (
      inputs.SINGLE_FILE, 'gs://test-bucket/images/a.png')
  with pytest.raises(inputs.InputError, match='no files match'):
    inputs.resolve_input('gs://test-bucket/images/*.jpg')


# --------------------------------------------------------------------------
# Listing local folders: every entry once, nothing hangs.


def _listed(items):
  """list_local's items -> {uri: kind of a listing error, or None}."""
  found = {}
  for item in items:
    uri, kind = ((item.uri, item.kind) if isinstance(item, inputs.ReadError)
                 else (item, None))
    assert uri not in found, f'{uri} listed twice'
    found[uri] = kind
  return found


def _kind_of(uri, listed_kind):
  """The kind of an entry's record: its listing error, or its read's."""
  if listed_kind is not None:
    return listed_kind
  try:
    inputs.read_image_file(uri, max_bytes=10**6)
  except inputs.ReadError as e:
    return e.kind
  return None


def test_a_folder_lists_every_entry_once_and_reading_names_each_problem(
    tmp_path):
  folder = str(tmp_path / 'images')
  expected = image_files.write_hostile_folder(folder)
  listed = _listed(inputs.list_local(os.path.join(folder, '**')))
  assert set(listed) == set(expected)
  kinds = processes.within(60, lambda: {uri: _kind_of(uri, kind)
                               for uri, kind in listed.items()})
  assert kinds == expected


@pytest.mark.slow  # 2.1 s here: over the fast tier's ~1.5 s a test.
def test_an_unreadable_sub_folder_is_one_entry(tmp_path):
  if not processes.can_make_unreadable_folders(str(tmp_path)):
    pytest.skip('cannot make a folder unreadable here (running as root, '
                'and dropping CAP_DAC_OVERRIDE is not permitted)')
  folder = str(tmp_path / 'images')
  expected = image_files.write_hostile_folder(folder, unreadable=True)
  code = ('import json, sys; from batch_predict import inputs; '
          'print(json.dumps([[i.uri, i.kind] if isinstance(i, '
          'inputs.ReadError) else [i, None] for i in '
          'inputs.list_local(sys.argv[1])]))')
  try:
    child = subprocess.run(
        [sys.executable, '-c', code, os.path.join(folder, '**')],
        capture_output=True, text=True, timeout=120, check=True,
        preexec_fn=processes.mode_checking_preexec(),
        env=dict(os.environ, PYTHONPATH=helpers.REPO))
  finally:
    os.chmod(os.path.join(folder, 'private'), 0o755)
  listed = _listed(inputs.ReadError('', kind, uri) if kind else uri
                   for uri, kind in json.loads(child.stdout))
  assert set(listed) == set(expected)
  assert listed[os.path.join(folder, 'private')] == errors.UNREADABLE_FOLDER
  assert 'secret.png' not in child.stdout


def test_a_glob_lists_only_the_entries_it_can_match(tmp_path):
  for name in ('a.png', 'b.jpg', 'sub/c.png', 'sub/deeper/d.png',
               'other/e.png'):
    _write(str(tmp_path / name))
  os.symlink('nowhere', tmp_path / 'readme')  # Dangling, but not *.png.
  os.symlink('nowhere.png', tmp_path / 'gone.png')
  os.symlink('..', tmp_path / 'other' / 'up')  # A loop * cannot reach.

  def listed(pattern):
    found = _listed(inputs.list_local(str(tmp_path / pattern)))
    return sorted(os.path.relpath(uri, tmp_path) for uri in found)

  assert listed('*.png') == ['a.png', 'gone.png']
  assert listed('sub/*.png') == ['sub/c.png']
  assert listed('s*/**.png') == ['sub/c.png', 'sub/deeper/d.png']
  # `**` may reach into any folder: the loop is reported, once.
  assert listed('**/*.png') == ['other/e.png', 'other/up', 'sub/c.png',
                                'sub/deeper/d.png']
  assert _listed(inputs.list_local(str(tmp_path / 'o*/*'))) == {
      str(tmp_path / 'other/e.png'): None}


@pytest.mark.parametrize('make,kind,words', [
    (lambda p: os.mkfifo(p), errors.SPECIAL_FILE, 'named pipe'),
    (lambda p: os.symlink('/dev/null', p), errors.SPECIAL_FILE,
     'character device'),
    (lambda p: os.symlink(p + '.missing', p), errors.DANGLING_LINK,
     'does not exist'),
    (lambda p: os.symlink(p, p), errors.LINK_LOOP, 'circle'),
])
def test_reading_refuses_what_is_not_a_regular_file(tmp_path, make, kind,
                                                    words):
  path = str(tmp_path / 'entry.png')
  make(path)
  with pytest.raises(inputs.ReadError, match=words) as raised:
    processes.within(60, inputs.read_image_file, path, 100)
  assert raised.value.kind == kind


def test_reading_a_socket_and_bad_paths(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # A short path: sockets' names are limited.
  with socket.socket(socket.AF_UNIX) as server:
    server.bind('socket.png')
    cases = {
        str(tmp_path / 'socket.png'): errors.SPECIAL_FILE,
        _write(str(tmp_path / 'file.png')) + '/inside.png': (
            errors.NOT_A_FOLDER),
        str(tmp_path / ('x' * 300 + '.png')): errors.NAME_TOO_LONG,
        str(tmp_path / 'nul\x00.png'): errors.INVALID_NAME,
        's3://bucket/a.png': errors.INVALID_URI,
        str(tmp_path / 'missing' / 'a.png'): errors.NOT_FOUND,
    }
    for uri, kind in cases.items():
      with pytest.raises(inputs.ReadError) as raised:
        inputs.read_image_file(uri, 100)
      assert raised.value.kind == kind, uri


# --------------------------------------------------------------------------
# One --input file: an image or a list, by its name or --input_format.


def test_one_file_is_an_image_or_a_list_by_its_extension(tmp_path):
  corrupt = _write(str(tmp_path / 'photo.JPG'), b'gs://bucket/a.png\n')
  listing = _write(str(tmp_path / 'batch.txt'),
                   image_files.encode(image_files.digits(1)[0][0], 'PNG'))
  bare = _write(str(tmp_path / 'nightly'), b'a.png\n')
  assert inputs.resolve_input(corrupt) == (inputs.SINGLE_FILE, corrupt)
  assert inputs.resolve_input(listing) == (inputs.URI_LIST, listing)
  assert inputs.resolve_input(bare) == (inputs.URI_LIST, bare)
  assert inputs.resolve_input(listing, inputs.IMAGE) == (inputs.SINGLE_FILE,
                                                        listing)
  assert inputs.resolve_input(corrupt, inputs.LIST) == (inputs.URI_LIST,
                                                       corrupt)
  for extension, kind in (('CSV', inputs.CSV_MANIFEST),
                          ('jsonl', inputs.JSONL_MANIFEST)):
    manifest = _write(str(tmp_path / f'manifest.{extension}'), b'uri\n')
    assert inputs.resolve_input(manifest) == (kind, manifest)
    assert inputs.resolve_input(manifest, inputs.LIST).kind == inputs.URI_LIST
  assert inputs.resolve_input(bare, inputs.CSV).kind == inputs.CSV_MANIFEST
  assert inputs.resolve_input(bare, inputs.JSONL).kind == (
      inputs.JSONL_MANIFEST)


def test_input_format_must_fit_the_input(tmp_path):
  image = _write(str(tmp_path / 'images' / 'a.png'))
  with pytest.raises(inputs.InputError,
                     match='use one of auto, image, list, csv, jsonl'):
    inputs.resolve_input(image, 'xml')
  with pytest.raises(inputs.InputError, match='is a folder'):
    inputs.resolve_input(str(tmp_path / 'images'), inputs.LIST)
  with pytest.raises(inputs.InputError, match='is a glob'):
    inputs.resolve_input(str(tmp_path / 'images' / '*.png'), inputs.IMAGE)


def test_an_input_that_is_no_file_or_folder_fails_before_any_work(tmp_path):
  os.mkfifo(tmp_path / 'list.txt')
  with pytest.raises(inputs.InputError, match='named pipe'):
    processes.within(60, inputs.resolve_input, str(tmp_path / 'list.txt'))
  folder = tmp_path / 'only-bad-entries'
  folder.mkdir()
  os.mkfifo(folder / 'pipe.png')
  # A folder whose only entry is bad still names something: it gets its
  # error record.
  assert inputs.resolve_input(str(folder)).kind == inputs.GLOB


def test_uri_list_lines_keep_unicode_and_report_bytes_that_are_not_utf8():
  folder = '/data/lists'
  assert inputs.parse_uri_line(' \ta.png \r\n', folder) == '/data/lists/a.png'
  assert inputs.parse_uri_line('\u2028a\u00a0.png\u0085\n', folder) == (
      '/data/lists/\u2028a\u00a0.png\u0085')
  assert inputs.parse_uri_line('b\u3000.png'.encode(), folder) == (
      '/data/lists/b\u3000.png')
  assert inputs.parse_uri_line(b'# caf\xe9\n', folder) is None
  with pytest.raises(inputs.ReadError) as raised:
    inputs.parse_uri_line(b'caf\xe9.png\n', folder)
  assert raised.value.kind == errors.INVALID_NAME
  assert raised.value.uri == '/data/lists/caf\\xe9.png'
  assert 'not valid UTF-8' in str(raised.value)


@pytest.mark.parametrize('uri,root,label', [
    ('/data/cat/x.png', '/data', 'cat'),
    ('/data/cat/kittens/x.png', '/data', 'cat'),  # Nested: still its class.
    ('/data/x.png', '/data', None),  # Directly in the folder: no class.
    ('/data/cat/x.png', None, 'cat'),
    ('/data/cat/kittens/x.png', None, 'kittens'),
    ('gs://bucket/dog/x.png', None, 'dog'),
    ('gs://bucket/x.png', None, None),  # Top of a bucket: no folder.
    ('gs://bucket/pets/dog/x.png', 'gs://bucket/pets', 'dog'),
])
def test_folder_label_is_the_class_folder(uri, root, label):
  assert inputs.folder_label(uri, root) == label


def test_folder_inputs_have_a_root_and_sorted_class_folder_names(tmp_path):
  for name in ('zebra/a.png', 'ant/b.png', 'ant/deeper/c.png', 'loose.png'):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b'x')
  source = inputs.resolve_input(str(tmp_path))
  assert inputs.folder_root(source) == str(tmp_path)
  assert inputs.class_folder_names(str(tmp_path)) == ('ant', 'zebra')
  assert inputs.folder_root(inputs.resolve_input(
      str(tmp_path / '*' / '*.png'))) is None
