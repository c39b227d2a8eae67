"""Walking a local folder safely, and what each local entry is: the one
classification both commands use."""

import errno
import os
import socket

import pytest

from trainer import errors
from trainer import walk


def _touch(path, content=b'x'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(content)


def _walked(top, **kwargs):
  """walk's items as (kind, relative): 'file', 'folder' or a Problem kind."""
  found = []
  for item in walk.walk(str(top), **kwargs):
    if isinstance(item, walk.Problem):
      found.append((item.kind, item.relative))
    else:
      found.append(('folder' if item.is_folder else 'file', item.relative))
  return found


def test_a_walk_goes_depth_first_announcing_each_folder_before_its_entries(
    tmp_path):
  for name in ('b.png', 'a/z.png', 'a/deeper/y.png', 'c/x.png'):
    _touch(str(tmp_path / name))
  walked = _walked(tmp_path)
  assert sorted(walked) == [
      ('file', 'a/deeper/y.png'), ('file', 'a/z.png'), ('file', 'b.png'),
      ('file', 'c/x.png'), ('folder', 'a'), ('folder', 'a/deeper'),
      ('folder', 'c')]
  at = {relative: index for index, (_, relative) in enumerate(walked)}
  # A folder's own entries first, then each sub-folder and all it holds.
  assert at['b.png'] < at['a'] < at['a/z.png'] < at['a/deeper'] < at[
      'a/deeper/y.png']
  assert at['c'] < at['c/x.png']
  assert at['a/deeper/y.png'] < at['c'] or at['c/x.png'] < at['a']


def test_entries_that_are_no_folder_are_yielded_without_being_opened(
    tmp_path):
  os.mkfifo(tmp_path / 'pipe.png')  # Opening it would block.
  os.symlink('missing.png', tmp_path / 'gone.png')
  os.symlink('self.png', tmp_path / 'self.png')
  assert sorted(_walked(tmp_path)) == [
      ('file', 'gone.png'), ('file', 'pipe.png'), ('file', 'self.png')]


def test_a_link_back_up_is_a_loop_but_two_links_to_a_folder_walk_it_twice(
    tmp_path):
  _touch(str(tmp_path / 'photos' / 'a.png'))
  os.symlink('photos', tmp_path / 'again')
  os.symlink('..', tmp_path / 'photos' / 'up')
  assert sorted(_walked(tmp_path)) == [
      ('file', 'again/a.png'), ('file', 'photos/a.png'), ('folder', 'again'),
      ('folder', 'photos'), ('link_loop', 'again/up'),
      ('link_loop', 'photos/up')]
  # A link to / (a folder above every other) loops too.
  os.symlink('/', tmp_path / 'photos' / 'root')
  assert ('link_loop', 'root') in _walked(tmp_path / 'photos')


def test_with_seen_each_real_folder_is_walked_once_across_walks(tmp_path):
  _touch(str(tmp_path / 'photos' / 'a.png'))
  os.symlink('photos', tmp_path / 'again')
  seen = set()
  walked = sorted(_walked(tmp_path, seen=seen))
  # Whichever of the two the folder lists first is walked, the other not.
  assert walked in ([('file', 'again/a.png'), ('folder', 'again'),
                     ('link_loop', 'photos')],
                    [('file', 'photos/a.png'), ('folder', 'photos'),
                     ('link_loop', 'again')])
  assert _walked(tmp_path / 'photos', seen=seen) == [('file', 'a.png')]
  os.mkdir(tmp_path / 'photos' / 'sub')
  assert sorted(_walked(tmp_path / 'photos', seen=seen)) == [
      ('file', 'a.png'), ('folder', 'sub')]
  assert sorted(_walked(tmp_path / 'photos', seen=seen)) == [
      ('file', 'a.png'), ('link_loop', 'sub')]


def test_enter_decides_which_folders_are_walked(tmp_path):
  for name in ('keep/a.png', 'skip/b.png'):
    _touch(str(tmp_path / name))
  assert _walked(tmp_path, enter=lambda f: f.relative != 'skip') == [
      ('folder', 'keep'), ('file', 'keep/a.png')]


def test_a_folder_that_cannot_be_listed_is_a_problem_not_a_failure(tmp_path):
  [problem] = walk.walk(str(tmp_path / 'missing'))
  assert problem.kind == errors.UNREADABLE_FOLDER
  assert problem.error.errno == errno.ENOENT


def test_names_that_are_not_utf8_are_found_and_shown_with_escapes(tmp_path):
  _touch(os.path.join(os.fsencode(tmp_path), b'caf\xe9.png'))
  [entry] = walk.walk(str(tmp_path))
  assert not walk.is_utf8(entry.relative)
  assert walk.printable(entry.relative) == 'caf\\xe9.png'
  assert walk.is_utf8('caf\u00e9 \u2028.png')


def _error_of(path):
  try:
    os.stat(path)
  except OSError as e:
    return walk.describe_error(path, e)
  raise AssertionError(f'{path} has a stat')


def test_each_errno_has_its_kind_and_phrase(tmp_path):
  os.symlink('missing.png', tmp_path / 'gone.png')
  os.symlink('loop.png', tmp_path / 'loop.png')
  _touch(str(tmp_path / 'file.png'))
  assert _error_of(str(tmp_path / 'gone.png')) == (
      errors.DANGLING_LINK, 'a symlink to missing.png, which does not exist')
  assert _error_of(str(tmp_path / 'nothing.png')) == (errors.NOT_FOUND,
                                                     'no such file')
  assert _error_of(str(tmp_path / 'loop.png')).kind == errors.LINK_LOOP
  assert _error_of(str(tmp_path / 'file.png' / 'x')).kind == (
      errors.NOT_A_FOLDER)
  assert _error_of(str(tmp_path / ('x' * 300))).kind == errors.NAME_TOO_LONG
  for code, kind in ((errno.EACCES, errors.PERMISSION_DENIED),
                     (errno.EPERM, errors.PERMISSION_DENIED),
                     (errno.EISDIR, errors.NOT_A_FILE),
                     (errno.EIO, errors.READ_FAILED)):
    described = walk.describe_error('/x', OSError(code, os.strerror(code)))
    assert described.kind == kind, code
  assert walk.describe_error('/x', OSError(errno.EIO, 'I/O error')).phrase == (
      'unreadable (I/O error, EIO)')


def test_special_files_are_named(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # A short path: sockets' names are limited.
  os.mkfifo('pipe')
  with socket.socket(socket.AF_UNIX) as server:
    server.bind('socket')
    names = [walk.describe_mode(os.stat(path).st_mode)
             for path in ('pipe', 'socket', '/dev/null')]
  assert names == ['a named pipe (FIFO)', 'a socket', 'a character device']
  assert walk.describe_mode(os.stat(tmp_path).st_mode) == 'not a regular file'


@pytest.mark.parametrize('name', ['a.png', 'sub/b.png'])
def test_entries_carry_their_path_and_relative_path(tmp_path, name):
  _touch(str(tmp_path / name))
  files = [item for item in walk.walk(str(tmp_path)) if not item.is_folder]
  assert files == [walk.Entry(str(tmp_path / name), name)]
