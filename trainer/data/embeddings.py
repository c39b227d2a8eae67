"""The embeddings dataset: an embedding cache's vectors, for a head to train.

Two-stage transfer learning (Contract 4): `batch_predict --embeddings`
runs an export's frozen feature extractor over every image once and writes
`PREFIX-embeddings-*.tfrecord.gz` and `PREFIX-embeddings.json`
(embedding_cache.py owns the names and fields); `--dataset=embeddings
--data_dir='PREFIX-embeddings-*' --base_model=EXPORT` trains only a new head
on those vectors (transfer.build_head) and exports the base's extractor with
it on top (transfer.stitch).

This module owns:

* `check_base`: the refusals that need the base, run when the run starts
  (run_context.create), before any work: a cache made by another extractor
  or at another input shape, a cache without labels;
* `load`: every record read once, checked and held in memory (a vector is a
  few KB: 3,136 floats for a 28x28 cnn_bn, 1,280 for mobilenet_v2), split
  80/10/10 (the configured fractions) by the hash image_folder splits its
  files by (folder.split_of), in its order within each split.

The split key is a record's `uri` relative to the deepest folder that holds
every record's file: for a cache of an image folder scored with
`--labels_from_folders` (`DIR/<class>/<file>`) that is DIR, and the key is
`<class>/<file>`, exactly the key image_folder hashes for the same file. A
two-stage run and a one-stage `--dataset=image_folder` run of the same
folder so train, validate and test on the same images. (The keys differ from
image_folder's only when the files' deepest common folder is not the image
folder: files of several image folders in one cache, or of one class
folder, which is refused anyway.)

On gs://, the shards are copied to local temporary files (storage.py's
client) and read there: the whole cache is read once into memory anyway
(so its size on local disk too), and unlike TensorFlow's own GCS
filesystem this path also works against a GCS emulator, so it is tested.
The vectors are read straight into one array of the description's count
(the shards in parallel), with no per-shard arrays to concatenate after
(loading a 20,000-vector cnn_bn cache: 6.1 -> 5.3 s, median of 5). The
splits are slices of that array, put in split order in place
(`permute_rows`), and tf.data reads them without a copy (`as_tensor`): the
cache is in memory once.
"""

import contextlib
import functools
import os

import numpy as np
import tensorflow as tf

from trainer import embedding_cache
from trainer import extractor
from trainer import storage
from trainer import transfer
from trainer.data import checks
from trainer.data import folder
from trainer.data import sources

_READ_BATCH = 1024
# Shards decompressed at once (gzip is the reading's cost).
_PARALLEL_READS = 4
_UNLABELLED = -1
# What TensorFlow's CPU tensors are aligned to (Eigen's EIGEN_MAX_ALIGN_BYTES):
# an array aligned so becomes a tensor without a copy (`as_tensor`).
_TENSOR_ALIGNMENT = 64
_WAY_OUT_UNLABELLED = (
    'a head needs a label for every vector: rerun batch_predict '
    '--embeddings with --labels_from_folders on an image folder '
    '(DIR/<class>/<file>)')


def _error(message):
  return embedding_cache.EmbeddingCacheError(message)


def prefix(data_dir):
  """The cache's PREFIX from --data_dir ('PREFIX-embeddings-*')."""
  return embedding_cache.prefix_of(storage.normalize(data_dir))


def read_labelled_description(data_dir):
  """PREFIX-embeddings.json, refused when it has no label names.

  Returns:
    (PREFIX, the description).

  Raises:
    embedding_cache.EmbeddingCacheError: naming the file and the way out.
  """
  cache = prefix(data_dir)
  description = embedding_cache.read_description(cache)
  names = description.get('label_names') or ()
  if len(names) < 2:
    raise _error(
        f'{embedding_cache.description_path(cache)}: the cache is '
        f'{"unlabelled" if not names else "of one label only"} (label_names '
        f'{description.get("label_names")!r}): {_WAY_OUT_UNLABELLED}.')
  return cache, description


def check_base(data_dir, base):
  """Refuses a cache that `base` did not make, or one without labels.

  Run when the run starts, once the base is loaded and before any work.

  Args:
    data_dir: --data_dir ('PREFIX-embeddings-*').
    base: the transfer.Base of --base_model.

  Returns:
    The cache's description.

  Raises:
    embedding_cache.EmbeddingCacheError: naming the cause and the way out.
  """
  cache, description = read_labelled_description(data_dir)
  embedding_cache.check_matches_base(
      description, cache, base_fingerprint=extractor.fingerprint(
          base.extractor), base_input_shape=base.input_shape,
      base_source=base.source)
  where = embedding_cache.description_path(cache)
  if description.get('unlabelled'):  # Absent in caches written before it.
    raise _error(f'{where}: {description["unlabelled"]} of '
                 f'{description["count"]} records have no label: '
                 f'{_WAY_OUT_UNLABELLED}.')
  _shards(cache, description)  # All there, before any work.
  size = transfer.embedding_size(base)
  if description.get('embedding_size') != size:
    raise _error(
        f'{embedding_cache.description_path(cache)}: says embedding_size '
        f'{description.get("embedding_size")}, but the extractor of '
        f'{base.source} gives vectors of {size}: rerun batch_predict '
        f'--model_dir={base.source} --embeddings.')
  return description


# --------------------------------------------------------------------------
# Reading the records.


def _shards(cache, description):
  """The shard paths the description's `shards` count names, all present."""
  count = description.get('shards')
  expected = [embedding_cache.shard_name(cache, index, count)
              for index in range(count or 0)]
  found = set(storage.glob(cache + embedding_cache.SHARD_INFIX + '*'))
  missing = [path for path in expected if path not in found]
  if not expected or missing:
    raise _error(
        f'{embedding_cache.description_path(cache)} names {count} shard(s), '
        f'and {len(missing) if expected else "none"} of them '
        f'{"are" if len(missing) != 1 else "is"} missing'
        f'{" (" + missing[0] + ")" if missing else ""}: rerun batch_predict '
        '--embeddings to write the whole cache again.')
  return expected


def _features(size):
  return {
      embedding_cache.URI_FEATURE: tf.io.FixedLenFeature([], tf.string),
      embedding_cache.EMBEDDING_FEATURE: tf.io.FixedLenFeature([size],
                                                               tf.float32),
      embedding_cache.LABEL_FEATURE: tf.io.FixedLenFeature(
          [], tf.int64, default_value=_UNLABELLED),
  }


def _batches(local_paths, size):
  """The shards' parsed records, in batches of `_READ_BATCH` (numpy dicts).

  The shards are decompressed and parsed in parallel (tf.data's
  interleave, in a fixed order), a batch at a time: the array
  `read_records` fills is the only copy of every vector it reads.
  """
  features = _features(size)
  dataset = tf.data.TFRecordDataset(
      local_paths, compression_type='GZIP',
      num_parallel_reads=min(len(local_paths), _PARALLEL_READS) or None)
  return dataset.batch(_READ_BATCH).map(
      lambda records: tf.io.parse_example(records, features),
      num_parallel_calls=tf.data.AUTOTUNE).prefetch(1).as_numpy_iterator()


def _fill(local_paths, size, capacity):
  """(uris, vectors [capacity, size], labels [capacity], records read): the
  first `capacity` records in the arrays, every record counted."""
  try:
    vectors = aligned_empty((capacity, size), np.float32)
  except (MemoryError, ValueError):  # ValueError: beyond any address space.
    raise _error(f'{capacity:,} vectors of {size} floats do not fit in this '
                 'machine\'s memory: train on a machine with more, or on '
                 'fewer images.') from None
  labels = np.empty((capacity,), np.int64)
  uris, read = [], 0
  for batch in _batches(local_paths, size):
    batch_uris = batch[embedding_cache.URI_FEATURE]
    kept = batch_uris[:max(0, capacity - read)]
    vectors[read:read + len(kept)] = batch[
        embedding_cache.EMBEDDING_FEATURE][:len(kept)]
    labels[read:read + len(kept)] = batch[
        embedding_cache.LABEL_FEATURE][:len(kept)]
    uris += [uri.decode('utf-8') for uri in kept]
    read += len(batch_uris)
  return uris, vectors, labels, read


def _name_the_bad_shard(cache, paths, local_paths, size, error):
  """The error naming the shard TensorFlow could not read (each read alone;
  only once a read of them all failed)."""
  for path, local in zip(paths, local_paths):
    try:
      for _ in _batches([local], size):
        pass
    except tf.errors.OpError as e:
      return _error(f'{path}: not a shard of {size}-float embeddings: '
                    f'{checks.short_message(e)}. Rerun batch_predict '
                    '--embeddings.')
  # Each shard reads alone: the reading itself failed (memory, disk).
  return _error(f'Reading the cache {cache} failed: '
                f'{checks.short_message(error)}.')


def read_records(cache, description):
  """Every record of the cache, checked against its description.

  Returns:
    (uris [n], float32 vectors [n, size], int32 labels [n]).

  Raises:
    embedding_cache.EmbeddingCacheError: naming the shard or the file.
  """
  size = description['embedding_size']
  count = description['count']
  paths = _shards(cache, description)
  with contextlib.ExitStack() as stack:
    try:
      local_paths = [stack.enter_context(storage.local_file(path))
                     for path in paths]
    except OSError as e:  # A gs:// cache larger than the local disk.
      raise _error(f'Copying the cache {cache} to local disk failed ({e}): '
                   'set TMPDIR to a folder with room for its shards.') from None
    try:
      uris, vectors, labels, read = _fill(local_paths, size, count)
    except tf.errors.OpError as e:
      raise _name_the_bad_shard(cache, paths, local_paths, size,
                                e) from None
  where = embedding_cache.description_path(cache)
  if read != count:
    raise _error(f'{where} says {count} records, and its shards hold '
                 f'{read}: rerun batch_predict --embeddings.')
  unlabelled = int(np.sum(labels == _UNLABELLED))
  if unlabelled:
    raise _error(f'{where}: {unlabelled} of {len(uris)} records have no '
                 f'label: {_WAY_OUT_UNLABELLED}.')
  names = description['label_names']
  outside = labels[(labels < 0) | (labels >= len(names))]
  if outside.size:
    raise _error(f'{where}: label {int(outside[0])} is not an index into '
                 f'its {len(names)} label_names: rerun batch_predict '
                 '--embeddings.')
  return uris, vectors, labels.astype(np.int32)


# --------------------------------------------------------------------------
# The split.


def split_keys(uris):
  """Each uri relative to the deepest folder holding all of them.

  The key image_folder hashes for the same file (see the module docstring).
  """
  if not uris:
    return []
  # The characters every uri starts with are those the first and the last
  # in sorted order share; the folder is that prefix up to its last '/'.
  # (Splitting every uri into its folders took 0.3 s for 20,000 here.)
  shared = os.path.commonprefix([min(uris), max(uris)])
  cut = shared.rfind('/') + 1
  return [uri[cut:] for uri in uris]


def split_records(uris, validation_fraction, test_fraction):
  """{split: record indices}, by image_folder's hash and in its order."""
  by_split = {split: [] for split in sources.SPLITS}
  keys = split_keys(uris)
  for index in sorted(range(len(uris)),
                      key=lambda index: folder.order_of(keys[index])):
    by_split[folder.split_of(keys[index], validation_fraction,
                             test_fraction)].append(index)
  return {split: np.array(indices, np.int64)
          for split, indices in by_split.items()}


def permute_rows(array, order):
  """Reorders `array`'s rows in place: row i becomes the old row order[i].

  `order` is a permutation of range(len(array)). One row of scratch space:
  each cycle of the permutation is followed once.
  """
  done = np.zeros(len(order), bool)
  scratch = np.empty_like(array[:1])
  for start in range(len(order)):
    if done[start]:
      continue
    done[start] = True
    if order[start] == start:
      continue
    scratch[0] = array[start]
    here = start
    while True:
      source = order[here]
      if source == start:
        array[here] = scratch[0]
        break
      array[here] = array[source]
      done[source] = True
      here = source


def load(options):
  """An embedding cache, as `data.load_source` asks for it.

  Raises:
    embedding_cache.EmbeddingCacheError: if the cache is incomplete,
      unlabelled or malformed, naming the file.
  """
  cache, description = read_labelled_description(options.data_dir)
  uris, vectors, labels = read_records(cache, description)
  by_split = split_records(uris, options.validation_fraction,
                           options.test_fraction)
  # The records in split order, in the array they were read into: each
  # split is then a slice of it, not a copy (vectors[indices] allocated the
  # whole cache again, 2.2 s of fresh memory for 20,000 cnn_bn vectors
  # measured here, against 0.1 s for this).
  order = np.concatenate([by_split[split] for split in sources.SPLITS])
  permute_rows(vectors, order)
  labels, uris = labels[order], np.array(uris, dtype=object)[order]
  arrays, start = {}, 0
  for split in sources.SPLITS:
    stop = start + len(by_split[split])
    end = stop
    if split == 'train' and options.train_examples:
      end = min(stop, start + options.train_examples)
    arrays[split] = (vectors[start:end], labels[start:end], uris[start:end])
    start = stop
  sizes = {split: len(array[0]) for split, array in arrays.items()}
  info = sources.DatasetInfo(
      'embeddings', tuple(description['label_names']), sizes,
      report={'cache': cache, 'fingerprint': description['fingerprint'],
              'model_dir': description.get('model_dir')})
  return sources.Source(info, functools.partial(_examples, arrays),
                        element_bytes=vectors.shape[1] * 4,
                        files=functools.partial(_files, arrays), vectors=True)


def _examples(arrays, split, shard=None):
  """Source.examples of a cache: (float32 vector, int32 label) pairs."""
  vectors, labels, _ = arrays[split]
  if shard:
    count, index = shard
    vectors, labels = vectors[index::count], labels[index::count]
  return tf.data.Dataset.from_tensor_slices((as_tensor(vectors), labels))


def aligned_empty(shape, dtype):
  """`np.empty(shape, dtype)`, starting at a multiple of 64 bytes (numpy
  aligns to 16), so that `as_tensor` can share it with TensorFlow."""
  dtype = np.dtype(dtype)
  size = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(size + _TENSOR_ALIGNMENT, np.uint8)
  start = -raw.ctypes.data % _TENSOR_ALIGNMENT
  return raw[start:start + size].view(dtype).reshape(shape)


def as_tensor(array):
  """A float32 array as a TensorFlow tensor, sharing its memory when it
  can (through DLPack: a C-contiguous array starting at a multiple of 64
  bytes), else copied.

  `from_tensor_slices` copies a numpy array into a new tensor: 200 MB of
  fresh memory for the training split of 20,000 cnn_bn vectors, 1.3 s of a
  two-stage run here (py-spy), where sharing it takes 2 ms. The cache's
  array is never written once its splits are made. (TensorFlow aborts the
  process on a DLPack buffer it finds misaligned, hence the check first.)
  """
  if (array.flags.c_contiguous and array.size and
      array.ctypes.data % _TENSOR_ALIGNMENT == 0):
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
  return tf.constant(array)


def _files(arrays, split):
  """Source.files of a cache: (uri, label) in split order (report ids)."""
  _, labels, uris = arrays[split]
  return list(zip(uris.tolist(), labels.tolist()))
