"""The embedding cache's contract (Contract 4): names, fields, fingerprint.

The two-stage transfer pattern: the scorer (`batch_predict.pipeline
--embeddings`) runs an artifact's frozen feature extractor over every image
once and writes the vectors; the trainer (`trainer.task --dataset=embeddings
--base_model=EXPORT`) trains only a new head on them, many times and
cheaply, and exports the base's extractor with that head on top. This module
is what the writer and the reader share:

```
PREFIX-embeddings-SSSSS-of-NNNNN.tfrecord.gz   one tf.train.Example per
    scored image: `uri` (bytes), `embedding` (float list), and for labelled
    inputs `label` (int64, an index into label_names) and `label_name`
    (bytes)
PREFIX-embeddings.json                         the cache's description
    (`describe`): the extractor's fingerprint, the input shape, the
    embedding size, the label names, the number of records
```

The embedding is the artifact's `serving_embeddings` signature's output
(`artifact.EMBEDDINGS_SIGNATURE`): the feature extractor's output pooled as
the model's head pools it (flattened, or averaged over space for a Keras
Applications backbone), i.e. exactly the vector the classifier head's Dense
layer sees. The signature decodes and resizes as `serving_default` does, so
a cached vector and the vector inside the served model cannot differ.

The fingerprint is a digest of the extractor's weights (values, shapes and
dtypes, in the extractor's weight order; not their names, which differ
between a model and a copy nested in another): it is the same for every copy
of an artifact and for every artifact stitched from its extractor, and
differs when any weight does. The exporter records it in metadata.json
(`embeddings.fingerprint`), the scorer copies it into the cache's
description, and the trainer compares it with its base's before any work.

This module imports only numpy (inside `fingerprint`) and the light shared
modules: the scorer's workers import it.
"""

import hashlib
import re

from trainer import errors
from trainer import storage

FORMAT_VERSION = 1
# The output key of artifact.EMBEDDINGS_SIGNATURE.
OUTPUT_KEY = 'embeddings'
# tf.train.Example feature names.
URI_FEATURE = 'uri'
EMBEDDING_FEATURE = 'embedding'
LABEL_FEATURE = 'label'
LABEL_NAME_FEATURE = 'label_name'
# The shards' and the description's names after PREFIX.
SHARD_INFIX = '-embeddings-'
SHARD_SUFFIX = '.tfrecord.gz'
DESCRIPTION_SUFFIX = '-embeddings.json'
_SHARD_NAME = re.compile(r'-embeddings-\d{5}-of-\d{5}\.tfrecord\.gz$')
FINGERPRINT_PREFIX = 'sha256:'


class EmbeddingCacheError(errors.UserError, ValueError):
  """An embedding cache is missing, unreadable or not the base's."""

  kind = 'invalid_embedding_cache'


def fingerprint(arrays):
  """The digest of an extractor's weights: 'sha256:<hex>'.

  Args:
    arrays: the extractor's weights as numpy arrays (or anything
      `numpy.asarray` takes), in the extractor's weight order.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  for array in arrays:
    array = np.ascontiguousarray(np.asarray(array))
    digest.update(f'{array.dtype.str}{array.shape};'.encode('ascii'))
    digest.update(array.tobytes())
  return FINGERPRINT_PREFIX + digest.hexdigest()


def shard_name(prefix, index, count):
  """PREFIX-embeddings-SSSSS-of-NNNNN.tfrecord.gz."""
  return f'{prefix}{SHARD_INFIX}{index:05d}-of-{count:05d}{SHARD_SUFFIX}'


def is_shard_name(path):
  """Whether `path` names a shard of a cache (and nothing else)."""
  return bool(_SHARD_NAME.search(path))


def description_path(prefix):
  """PREFIX-embeddings.json."""
  return prefix + DESCRIPTION_SUFFIX


def prefix_of(data_dir):
  """PREFIX from what --data_dir says: 'PREFIX-embeddings-*', a shard's
  name, or PREFIX itself.

  Raises:
    EmbeddingCacheError: if the pattern names no cache's shards.
  """
  # Only the file name: a folder may be called `run-embeddings-v2`.
  folder_end = data_dir.rfind('/') + 1
  if SHARD_INFIX in data_dir[folder_end:]:
    return data_dir[:data_dir.rindex(SHARD_INFIX)]
  if data_dir.endswith(DESCRIPTION_SUFFIX):
    return data_dir[:-len(DESCRIPTION_SUFFIX)]
  if any(character in data_dir for character in '*?['):
    raise EmbeddingCacheError(
        f'--data_dir={data_dir}: an embedding cache is named '
        f"'PREFIX{SHARD_INFIX}*' (the --output PREFIX of batch_predict "
        '--embeddings).')
  return data_dir


def describe(*, fingerprint_value, input_shape, embedding_size, label_names,
             count, shards, model_dir, unlabelled=0):
  """The PREFIX-embeddings.json document (`unlabelled`: how many of the
  `count` records have no label; the trainer refuses a cache with any)."""
  height, width, channels = input_shape
  return {
      'format_version': FORMAT_VERSION,
      'fingerprint': fingerprint_value,
      'input': {'height': height, 'width': width, 'channels': channels},
      'embedding_size': int(embedding_size),
      'label_names': list(label_names) if label_names else None,
      'count': int(count),
      'unlabelled': int(unlabelled),
      'shards': int(shards),
      'model_dir': model_dir,
  }


def read_description(prefix):
  """Reads PREFIX-embeddings.json.

  Raises:
    EmbeddingCacheError: naming the file, if it is missing or unreadable or
      of another format version.
  """
  path = description_path(prefix)
  if not storage.exists(path):
    raise EmbeddingCacheError(
        f'{path}: no such file: not an embedding cache, or its writer '
        '(batch_predict --embeddings) did not finish; rerun it.')
  try:
    description = storage.read_json(path)
  except ValueError as e:
    raise EmbeddingCacheError(f'{path}: unreadable: {e}') from e
  if not isinstance(description, dict) or description.get(
      'format_version') != FORMAT_VERSION:
    version = (description.get('format_version')
               if isinstance(description, dict) else None)
    raise EmbeddingCacheError(
        f'{path}: embedding cache format_version {version!r}; this code '
        f'reads version {FORMAT_VERSION}. Rerun batch_predict --embeddings.')
  _check_fields(description, path)
  return description


# What `describe` writes that a reader relies on, and its type.
_FIELDS = {'fingerprint': str, 'input': dict, 'embedding_size': int,
           'count': int, 'shards': int}


def _check_fields(description, path):
  """Refuses a description with a field missing or of the wrong type
  (edited by hand, or written by something else), in one line."""
  for name, kind in _FIELDS.items():
    value = description.get(name)
    # bool is an int; a negative count or size is no cache's.
    if (not isinstance(value, kind) or isinstance(value, bool) or
        (kind is int and value < 0)):
      raise EmbeddingCacheError(
          f'{path}: no valid {name!r} ({description.get(name)!r}): not an '
          'embedding cache description batch_predict --embeddings wrote; '
          'rerun it.')
  shape = description['input']
  if not all(isinstance(shape.get(key), int)
             for key in ('height', 'width', 'channels')):
    raise EmbeddingCacheError(
        f'{path}: no valid input shape ({shape!r}); rerun batch_predict '
        '--embeddings.')


def input_shape(description):
  """(height, width, channels) from a description or metadata `input`."""
  shape = description['input']
  return shape['height'], shape['width'], shape['channels']


def check_matches_base(description, prefix, *, base_fingerprint,
                       base_input_shape, base_source):
  """Refuses a cache that another extractor (or input shape) made.

  Raises:
    EmbeddingCacheError: naming both fingerprints or shapes and the way out.
  """
  way_out = (f'rerun batch_predict --model_dir={base_source} --embeddings '
             'to embed the images with this base, or pass the --base_model '
             'the cache was made with.')
  if description['fingerprint'] != base_fingerprint:
    raise EmbeddingCacheError(
        f'{description_path(prefix)}: made by another feature extractor '
        f'(fingerprint {description["fingerprint"]}, from '
        f'{description.get("model_dir")}), not the base {base_source}\'s '
        f'({base_fingerprint}): {way_out}')
  if tuple(input_shape(description)) != tuple(base_input_shape):
    raise EmbeddingCacheError(
        f'{description_path(prefix)}: made at input shape '
        f'{input_shape(description)}, but the base {base_source} takes '
        f'{tuple(base_input_shape)}: {way_out}')
