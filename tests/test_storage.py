"""The path layer, on local disk and against a real GCS-compatible server."""

import os

import pytest

from tests.helpers import disks
from trainer import storage


def test_normalize_maps_the_vertex_fuse_mount_to_gs():
  assert storage.normalize('/gcs/bucket/a/b/') == 'gs://bucket/a/b'
  assert storage.normalize('gs://bucket/') == 'gs://bucket'
  assert storage.normalize('relative/dir') == os.path.abspath('relative/dir')


@pytest.mark.parametrize('bad', ['', 's3://bucket/x', 'gs:///nobucket'])
def test_normalize_rejects_what_it_cannot_serve(bad):
  with pytest.raises(ValueError):
    storage.normalize(bad)


def _exercise(root):
  """The same sequence of operations on any root (local or gs://)."""
  storage.write_text(storage.join(root, 'a/one.txt'), 'one')
  storage.write_json(storage.join(root, 'a/b/two.json'), {'x': 2})
  with storage.open_write(storage.join(root, 'big.bin')) as f:
    f.write(b'x' * 100_000)
  assert storage.read_text(storage.join(root, 'a/one.txt')) == 'one'
  assert storage.read_json(storage.join(root, 'a/b/two.json')) == {'x': 2}
  assert len(storage.read_bytes(storage.join(root, 'big.bin'))) == 100_000
  assert storage.exists(storage.join(root, 'a'))
  assert storage.isdir(storage.join(root, 'a/b'))
  assert not storage.exists(storage.join(root, 'nope'))
  assert storage.scan_folder(root) == [
      storage.FolderEntry('a', True), storage.FolderEntry('big.bin', False)]
  assert storage.list_files(storage.join(root, 'a')) == [
      storage.join(root, 'a/b/two.json'), storage.join(root, 'a/one.txt')]
  assert storage.glob(storage.join(root, 'a/*.txt')) == [
      storage.join(root, 'a/one.txt')]
  with pytest.raises(FileNotFoundError, match='nope'):
    storage.read_bytes(storage.join(root, 'nope'))
  storage.delete(storage.join(root, 'big.bin'))
  storage.delete(storage.join(root, 'big.bin'))  # Deleting twice is fine.
  storage.delete_tree(storage.join(root, 'a'))
  assert not storage.exists(storage.join(root, 'a'))


def test_local_operations(tmp_path):
  _exercise(str(tmp_path / 'root'))


def test_gcs_operations(gcs_server):
  _exercise('gs://test-bucket/root')


def test_fuse_paths_reach_the_bucket(gcs_server):
  storage.write_text('/gcs/test-bucket/via-fuse.txt', 'hi')
  assert storage.read_text('gs://test-bucket/via-fuse.txt') == 'hi'


@pytest.mark.parametrize('on_gcs', [False, True])
def test_local_file_is_the_file_itself_or_a_temporary_copy(
    tmp_path, on_gcs, request):
  if on_gcs:
    request.getfixturevalue('gcs_server')
  path = 'gs://test-bucket/w.h5' if on_gcs else str(tmp_path / 'w.h5')
  storage.write_bytes(path, b'weights')
  with storage.local_file(path) as local:
    with open(local, 'rb') as f:
      assert f.read() == b'weights'
    assert (local != path) == on_gcs
  assert os.path.exists(local) != on_gcs  # The copy is gone, not the file.


def _folder(tmp_path, files):
  local = tmp_path / 'folder'
  for name, body in files.items():
    path = local / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
  return str(local)


@pytest.mark.parametrize('on_gcs', [False, True])
def test_publish_tree_replaces_the_old_folder_and_writes_the_marker_last(
    tmp_path, on_gcs, request):
  if on_gcs:
    request.getfixturevalue('gcs_server')
    destination = 'gs://test-bucket/export'
  else:
    destination = str(tmp_path / 'export')
  old = _folder(tmp_path / 'old', {'stale.txt': b'old', 'keep.txt': b'v1'})
  storage.publish_tree(old, destination, '_COMPLETE')
  new = _folder(tmp_path / 'new', {'keep.txt': b'v2', 'sub/new.txt': b'n'})
  storage.publish_tree(new, destination, '_COMPLETE')
  names = sorted(p[len(destination) + 1:]
                 for p in storage.list_files(destination))
  assert names == ['_COMPLETE', 'keep.txt', 'sub/new.txt']
  assert storage.read_text(storage.join(destination, 'keep.txt')) == 'v2'
  if not on_gcs:
    # No staging folders are left beside the destination.
    assert [n for n in os.listdir(tmp_path) if n.startswith('.export')] == []


def test_publish_tree_on_a_full_disk_leaves_the_old_folder_and_no_staging(
    tmp_path):
  with disks.small_disk(str(tmp_path / 'disk'), 1) as disk:
    destination = os.path.join(disk, 'export')
    storage.publish_tree(_folder(tmp_path / 'old', {'model': b'v1'}),
                         destination, '_COMPLETE')
    big = _folder(tmp_path / 'new', {'model': os.urandom(2 * 2**20)})
    with pytest.raises(OSError) as raised:
      storage.publish_tree(big, destination, '_COMPLETE')
    assert 'No space left on device' in storage.describe_os_error(
        raised.value)
    assert sorted(os.listdir(disk)) == ['export']
    assert storage.read_text(os.path.join(destination, 'model')) == 'v1'
    assert os.path.exists(os.path.join(destination, '_COMPLETE'))
    with pytest.raises(storage.WriteError, match=f'Not enough space in '
                       f'{destination} for the export'):
      storage.check_free_space(destination, 2 * 2**20, 'the export')


def test_sync_tree_mirrors_additions_changes_and_deletions(tmp_path,
                                                           gcs_server):
  local = _folder(tmp_path, {'a.txt': b'1', 'd/b.txt': b'2'})
  storage.sync_tree(local, 'gs://test-bucket/mirror')
  os.remove(os.path.join(local, 'a.txt'))
  with open(os.path.join(local, 'd/b.txt'), 'wb') as f:
    f.write(b'3')  # Same size, new content.
  with open(os.path.join(local, 'c.txt'), 'wb') as f:
    f.write(b'new')
  storage.sync_tree(local, 'gs://test-bucket/mirror')
  assert storage.list_files('gs://test-bucket/mirror') == [
      'gs://test-bucket/mirror/c.txt', 'gs://test-bucket/mirror/d/b.txt']
  assert storage.read_text('gs://test-bucket/mirror/d/b.txt') == '3'
  restored = str(tmp_path / 'restored')
  assert sorted(storage.download_tree('gs://test-bucket/mirror', restored)) == [
      'c.txt', 'd/b.txt']


def test_missing_credentials_give_an_actionable_error(monkeypatch, tmp_path):
  monkeypatch.delenv('STORAGE_EMULATOR_HOST', raising=False)
  monkeypatch.setenv('GOOGLE_APPLICATION_CREDENTIALS',
                     str(tmp_path / 'missing.json'))
  storage._client.cache_clear()  # pylint: disable=protected-access
  try:
    with pytest.raises(storage.StorageError, match='gcloud auth'):
      storage.read_bytes('gs://some-bucket/x')
  finally:
    storage._client.cache_clear()  # pylint: disable=protected-access
