"""Listing a dataset's files safely, and the report of what was left out.

An image folder is one sub-folder per class. Listing it must neither hang
nor change the label set behind the user's back, so:

* Every entry is `os.stat`ed before anything opens it. Only regular files
  are ever read: named pipes (a FIFO blocks its reader forever), sockets and
  devices are left out and reported.
* Symlinked folders, class folders included, are followed and reported.
  A folder reached twice (a link loop, or a second link to the same folder)
  is listed once; the second time is reported.
* Dangling links, unreadable sub-folders and names that are not valid UTF-8
  are left out and reported; files with other extensions (notes, .DS_Store)
  are left out and counted.
* A class folder that cannot be listed (unreadable, a dangling link, a name
  that is not UTF-8) or that holds no images stops the run before training:
  leaving it out would silently train on fewer classes than the folder
  shows, and an export whose labels differ from what the user sees is worse
  than an error that says which folder to fix.

What was left out goes into a `Report`, logged once and written to
metrics.json (`data`), with the counts by kind and the first paths.
os.walk cannot do this: it follows links without loop protection or not at
all, and says nothing about what it skips. The walk itself, and what each
entry is (its kind, by the same names and phrases as the scorer's error
records), are `walk.py`'s; this module owns the dataset's rules on top.
"""

import os
import stat

from absl import logging

from trainer import errors
from trainer import storage
from trainer import walk

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')
# The kind data.py counts for images that do not decode (errors' name, kept
# here for data.py's call sites).
UNDECODABLE = errors.UNDECODABLE
# Kinds that are not worth a warning: files the rule leaves out.
_QUIET_KINDS = (errors.OTHER_EXTENSION,)
MAX_LISTED = 20


class ListingError(errors.UserError, ValueError):
  """The folder cannot be listed as a dataset without changing its classes."""

  kind = 'invalid_dataset'


class Report:
  """What a dataset's listing and checks left out, and links they followed."""

  def __init__(self):
    self.counts = {}
    self.listed = []
    self.links = {}

  def skip(self, kind, path, reason):
    """Records one entry left out (only the first MAX_LISTED are kept)."""
    self.counts[kind] = self.counts.get(kind, 0) + 1
    if len(self.listed) < MAX_LISTED:
      self.listed.append({'path': path, 'kind': kind, 'reason': reason})

  def follow(self, path, target):
    self.links[path] = target

  @property
  def skipped(self):
    return sum(self.counts.values())

  def as_dict(self):
    """The metrics.json `data` entry."""
    return {'skipped': dict(sorted(self.counts.items())),
            'skipped_files': list(self.listed),
            'followed_links': dict(sorted(self.links.items()))}

  def log(self, where):
    """Logs the report: one warning line per problem kind, links at INFO."""
    for path, target in sorted(self.links.items()):
      logging.info('Followed the symlinked folder %s -> %s.', path, target)
    for kind, count in sorted(self.counts.items()):
      examples = [entry for entry in self.listed if entry['kind'] == kind]
      shown = '; '.join(f'{e["path"]} ({e["reason"]})' for e in examples[:5])
      more = f'; and {count - 5} more' if count > 5 else ''
      log = logging.info if kind in _QUIET_KINDS else logging.warning
      log('Left out %d %s in %s: %s%s.', count,
          f'entries ({kind})' if count > 1 else f'entry ({kind})', where,
          shown, more)


def _stat(path):
  """(os.stat result, None), or (None, walk.Description) if it fails."""
  try:
    return os.stat(path), None
  except OSError as e:
    return None, walk.describe_error(path, e)


def list_local_class_folders(data_dir, report):
  """The class folders directly under a local `data_dir`.

  Returns:
    Sorted [(class name, folder path)].

  Raises:
    ListingError: a top-level entry that may be a class folder cannot be
      listed (see the module docstring).
  """
  classes, loose = [], 0
  with os.scandir(data_dir) as entries:
    found = sorted((entry.name, entry.path) for entry in entries)
  for name, path in found:
    status, problem = _stat(path)
    if problem is not None:
      raise ListingError(
          f'data_dir {data_dir}: {name!r} is {problem.phrase}; fix or remove '
          'it (if it is a class folder, leaving it out would train on fewer '
          'classes).')
    if stat.S_ISDIR(status.st_mode):
      if not walk.is_utf8(name):
        raise ListingError(
            f'data_dir {data_dir}: the class folder name {name!r} is not '
            'valid UTF-8; rename it.')
      if os.path.islink(path):
        report.follow(name, os.path.realpath(path))
      classes.append((name, path))
    elif stat.S_ISREG(status.st_mode):
      loose += 1
    else:
      report.skip(errors.SPECIAL_FILE, name,
                  walk.describe_mode(status.st_mode))
  if loose:
    logging.warning('Ignoring %d files directly in %s: images must be in '
                    'one sub-folder per class.', loose, data_dir)
  return classes


def list_local_images(class_name, folder, report, seen):
  """Relative paths ('class/.../file.png') of the images under one folder.

  Follows symlinked sub-folders, each real folder once; never opens a file.
  Entries left out go to `report`, named by their path relative to the
  data folder.

  Args:
    class_name: the class (the folder's name under the data folder).
    folder: its path.
    report: a Report.
    seen: (st_dev, st_ino) of every folder listed already, in any class,
      and of the data folder and the class folders: a link to one of them
      is a loop, or would list the same images twice (under two labels).

  Raises:
    ListingError: if the class folder itself cannot be read.
  """
  images = []

  def enter(subfolder):  # Folders named in another encoding are left out.
    return _keep_name(subfolder, class_name, report)

  for item in walk.walk(folder, enter=enter, seen=seen):
    relative = f'{class_name}/{item.relative}' if item.relative else class_name
    if isinstance(item, walk.Problem):
      _skip_folder(item, folder, relative, report)
    elif item.is_folder:
      if os.path.islink(item.path):
        report.follow(relative, os.path.realpath(item.path))
    elif _keep_name(item, class_name, report):
      image = _image_or_skip(item.path, relative, report)
      if image:
        images.append(relative)
  return sorted(images)


def _keep_name(entry, class_name, report):
  """Whether an entry's name is UTF-8; reports it if not."""
  if walk.is_utf8(entry.relative):
    return True
  shown = walk.printable(f'{class_name}/{entry.relative}')
  report.skip(errors.INVALID_NAME, shown, 'the name is not valid UTF-8; '
              'rename it')
  return False


def _skip_folder(problem, folder, relative, report):
  """Reports a sub-folder the walk left out; a class folder is fatal."""
  if problem.kind == errors.LINK_LOOP:
    report.skip(errors.LINK_LOOP, relative, 'a folder already listed (a link '
                'loop, or a second link to the same folder)')
  elif problem.path == folder:
    raise ListingError(f'class folder {folder}: cannot be listed '
                       f'({problem.error.strerror}); fix its permissions.'
                      ) from problem.error
  else:
    report.skip(errors.PERMISSION_DENIED, relative,
                problem.error.strerror or str(problem.error))


def _image_or_skip(path, relative, report):
  """Whether a (non-folder) entry is an image file to train on; reports the
  others: special files, broken links, other extensions."""
  status, problem = _stat(path)
  if problem is not None:
    report.skip(problem.kind, relative, problem.phrase)
  elif not stat.S_ISREG(status.st_mode):
    report.skip(errors.SPECIAL_FILE, relative,
                walk.describe_mode(status.st_mode))
  elif path.lower().endswith(IMAGE_EXTENSIONS):
    return True
  else:
    report.skip(errors.OTHER_EXTENSION, relative, 'not a '
                f'{"/".join(e[1:] for e in IMAGE_EXTENSIONS)} file')
  return False


def list_gcs_images(data_dir, report):
  """{class name: relative image paths} under a gs:// folder.

  Object stores have no links or special files; objects directly under
  `data_dir` are ignored (with a warning) as locally.
  """
  by_class, loose = {}, 0
  for path in storage.list_files(data_dir):
    relative = path[len(data_dir) + 1:]
    if '/' not in relative:
      loose += 1
      continue
    class_name = relative.split('/', 1)[0]
    files = by_class.setdefault(class_name, [])
    if relative.lower().endswith(IMAGE_EXTENSIONS):
      files.append(relative)
    elif not relative.endswith('/'):  # Folder placeholder objects: no files.
      report.skip(errors.OTHER_EXTENSION, relative, 'not an image file')
  if loose:
    logging.warning('Ignoring %d files directly in %s: images must be in '
                    'one sub-folder per class.', loose, data_dir)
  return by_class


def list_image_folder(data_dir, report):
  """Lists an image folder: {class name: sorted relative image paths}.

  Args:
    data_dir: a normalized local path or gs:// URI of an existing folder.
    report: a Report that receives the entries left out.

  Raises:
    ListingError: see `list_local_class_folders`, `list_local_images`.
  """
  if storage.is_gcs(data_dir):
    return list_gcs_images(data_dir, report)
  classes = list_local_class_folders(data_dir, report)
  seen = {walk.identity(data_dir)} | {walk.identity(path)
                                      for _, path in classes}
  return {name: list_local_images(name, path, report, seen)
          for name, path in classes}


def regular_files(paths, report, where):
  """The local `paths` that are regular files (others reported); gs:// kept.

  For TFRecord shards, which TensorFlow opens directly: a FIFO among them
  would hang the reader.
  """
  kept = []
  for path in paths:
    if storage.is_gcs(path):
      kept.append(path)
      continue
    status, problem = _stat(path)
    if problem is not None:
      report.skip(problem.kind, path, problem.phrase)
    elif not stat.S_ISREG(status.st_mode):
      report.skip(errors.SPECIAL_FILE, path,
                  walk.describe_mode(status.st_mode))
    else:
      kept.append(path)
  if len(kept) < len(paths):
    logging.warning('Left out %d of the %d files in %s that are not regular '
                    'files.', len(paths) - len(kept), len(paths), where)
  return kept
