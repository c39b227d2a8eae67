"""Walking a local folder safely, and saying what a local entry is.

Both commands list local folders themselves: the trainer an `image_folder`
dataset (`listing.py`), the scorer a local `--input` folder or glob
(`batch_predict/inputs.py`). `os.walk` follows symlinked folders without
loop protection (or not at all) and leaves out what it cannot list without
a word, Beam's local listing is `os.walk`, and a named pipe among the files
blocks whoever opens it. This module owns what the two have in common:

* `walk`: a depth-first walk that never opens a file. Symlinked folders
  are followed; one that would walk a folder again (a link back up, or, if
  asked, any second way to the same folder) is reported instead, as is a
  folder that cannot be listed. Every other entry is yielded once.
* `describe_error` (errno -> kind and a phrase) and `describe_mode` (what a
  special file is): what an entry is, from `os.stat` alone.
* `is_utf8`, `printable`: names that are not valid UTF-8.

What to do with each entry (count it in the trainer's report of what was
left out, or make it the scorer's error record, with advice for that
command) stays with the caller. The kind names are `errors`'.
"""

import errno
import os
import stat
from typing import NamedTuple

from trainer import errors

_SPECIAL_FILE_TYPES = ((stat.S_ISFIFO, 'a named pipe (FIFO)'),
                       (stat.S_ISSOCK, 'a socket'),
                       (stat.S_ISCHR, 'a character device'),
                       (stat.S_ISBLK, 'a block device'))


def is_utf8(name):
  """Whether a name (as `os.fsdecode` gives it) is valid UTF-8."""
  try:
    name.encode('utf-8')
  except UnicodeEncodeError:  # os.fsdecode's surrogate escapes.
    return False
  return True


def printable(name):
  """`name` with the bytes that are not UTF-8 as backslash escapes.

  Args:
    name: a path as Python decodes file names (undecodable bytes become
      lone surrogates, `os.fsdecode`).
  """
  return name.encode('utf-8', 'surrogateescape').decode('utf-8',
                                                        'backslashreplace')


def describe_mode(mode):
  """What an entry that is not a regular file or folder is, in words."""
  for test, name in _SPECIAL_FILE_TYPES:
    if test(mode):
      return name
  return 'not a regular file'


class Description(NamedTuple):
  """What is wrong with an entry: its kind, and a phrase that names it
  ("a symlink to x.png, which does not exist")."""
  kind: str
  phrase: str


_ERRNO_KINDS = {
    errno.ELOOP: (errors.LINK_LOOP,
                  'a symlink loop (links that lead in a circle)'),
    errno.ENOTDIR: (errors.NOT_A_FOLDER,
                    'a part of the path is a file, not a folder'),
    errno.ENAMETOOLONG: (errors.NAME_TOO_LONG,
                         'the name is too long for the filesystem'),
    errno.EISDIR: (errors.NOT_A_FILE, 'a folder, not a file'),
    errno.EACCES: (errors.PERMISSION_DENIED, 'permission denied'),
    errno.EPERM: (errors.PERMISSION_DENIED, 'operation not permitted'),
}


def describe_error(path, error):
  """The kind and phrase of an `OSError` that a local `path` raised.

  Args:
    path: the path whose stat, open or read failed.
    error: the OSError.

  Returns:
    A `Description`; for an errno without a kind of its own, READ_FAILED.
  """
  code = error.errno
  if code == errno.ENOENT:
    if os.path.islink(path):
      try:
        target = printable(os.readlink(path))
      except OSError:  # Replaced since; the kind still holds.
        target = 'a path'
      return Description(errors.DANGLING_LINK,
                         f'a symlink to {target}, which does not exist')
    return Description(errors.NOT_FOUND, 'no such file')
  if code in _ERRNO_KINDS:
    return Description(*_ERRNO_KINDS[code])
  return Description(errors.READ_FAILED, f'unreadable ({error.strerror}, '
                     f'{errno.errorcode.get(code, code)})')


# --------------------------------------------------------------------------
# The walk.


class Entry(NamedTuple):
  """An entry under the walked folder.

  `path` is as `os.scandir` gives it (a name that is not UTF-8 holds
  surrogate escapes), `relative` the same relative to the walked folder.
  `is_folder` is true for a folder (links followed) the walk goes into.
  """
  path: str
  relative: str
  is_folder: bool = False


class Problem(NamedTuple):
  """A folder the walk did not go into.

  `kind` is LINK_LOOP (a link to a folder the walk was in or, with `seen`,
  had been in) or UNREADABLE_FOLDER (`error`, the OSError, says why).
  """
  path: str
  relative: str
  kind: str
  error: OSError = None


def _folder_id(entry):
  """(st_dev, st_ino) of a folder entry, following links; None otherwise.

  An entry whose `stat` fails (a link loop, a file gone meanwhile) is not a
  folder to walk: it is yielded as an entry, and its caller's stat says
  what it is.
  """
  try:
    if not entry.is_dir():
      return None
    info = entry.stat()
  except OSError:
    return None
  return info.st_dev, info.st_ino


def identity(path):
  """(st_dev, st_ino) of a path, links followed: the key of `seen`."""
  info = os.stat(path)
  return info.st_dev, info.st_ino


def _ancestor_ids(folder):
  """(st_dev, st_ino) of `folder` and of every folder above it."""
  ids = set()
  path = os.path.realpath(folder)
  while True:
    ids.add(identity(path))
    parent = os.path.dirname(path)
    if parent == path:
      return frozenset(ids)
    path = parent


def walk(top, *, enter=None, seen=None):
  """Yields every entry under the local folder `top`, depth first, once.

  Lazily, in the order the filesystem lists each folder, holding only the
  folders still to walk: a folder of millions of files costs no memory.
  Nothing is opened but folders. A sub-folder is announced by its `Entry`
  (with `is_folder`) just before what it holds, once its parent's own
  entries are done. Every other entry (a regular or special file, a
  dangling link, a broken link chain, an entry gone meanwhile) is yielded
  as an `Entry`, for the caller to `os.stat`.

  Args:
    top: a local folder.
    enter: called with the `Entry` of each sub-folder (symlinked ones
      included) before the loop check; the walk goes into the folder only
      if it returns true. Default: every sub-folder.
    seen: a set of folder ids (`(st_dev, st_ino)`), updated as the walk
      goes: each real folder is then walked once, across calls, and a
      second way to one (a link loop, or a second link to the same folder)
      is a LINK_LOOP `Problem`. Without it, only a link to a folder the walk
      is in (the folder itself or one above it, up to `/`) is: two links to
      one folder walk it twice.

  Yields:
    `Entry`s, and a `Problem` for each folder not walked into: a link loop
    (not followed), or a folder whose listing failed (`top` included).
  """
  try:
    ancestors = _ancestor_ids(top) if seen is None else frozenset()
  except OSError as e:  # Gone, or never there.
    yield Problem(top, '', errors.UNREADABLE_FOLDER, e)
    return
  pending = [(Entry(top, '', is_folder=True), ancestors)]
  while pending:
    folder, ancestors = pending.pop()
    if folder.relative:
      yield folder
    subfolders = []
    try:
      with os.scandir(folder.path) as entries:
        yield from _sort_out(folder, entries, ancestors, enter, seen,
                             subfolders)
    except OSError as e:
      yield Problem(folder.path, folder.relative, errors.UNREADABLE_FOLDER, e)
    pending.extend(reversed(subfolders))


def _sort_out(folder, entries, ancestors, enter, seen, subfolders):
  """Yields a folder's entries that are no folder to walk, and loops;
  appends the sub-folders to walk, with their ancestors, to `subfolders`."""
  for entry in entries:
    found = Entry(entry.path, os.path.join(folder.relative, entry.name))
    folder_id = _folder_id(entry)
    if folder_id is None:
      yield found
      continue
    found = found._replace(is_folder=True)
    if enter is not None and not enter(found):
      continue
    if folder_id in (ancestors if seen is None else seen):
      yield Problem(found.path, found.relative, errors.LINK_LOOP)
      continue
    if seen is not None:
      seen.add(folder_id)
    subfolders.append((found, ancestors | {folder_id}))
