"""Tests of the embedding cache's contract (names, fingerprint, checks)."""

import numpy as np
import pytest

from trainer import embedding_cache
from trainer import storage


def test_the_fingerprint_changes_with_any_weight_and_not_with_copies():
  weights = [np.arange(6, dtype=np.float32).reshape(2, 3),
             np.ones(3, np.float32)]
  copy = [array.copy() for array in weights]
  changed = [weights[0].copy(), weights[1].copy()]
  changed[1][2] = np.nextafter(np.float32(1), np.float32(2))
  reshaped = [weights[0].reshape(3, 2), weights[1]]
  fingerprint = embedding_cache.fingerprint(weights)
  assert fingerprint.startswith('sha256:')
  assert embedding_cache.fingerprint(copy) == fingerprint
  assert embedding_cache.fingerprint(changed) != fingerprint
  assert embedding_cache.fingerprint(reshaped) != fingerprint
  assert embedding_cache.fingerprint(weights[::-1]) != fingerprint


@pytest.mark.parametrize('data_dir, prefix', [
    ('out/run-embeddings-*', 'out/run'),
    ('gs://b/run-embeddings-00000-of-00002.tfrecord.gz', 'gs://b/run'),
    ('out/run-embeddings.json', 'out/run'),
    ('out/run', 'out/run'),
    ('data/run-embeddings-v2/cache', 'data/run-embeddings-v2/cache'),
    ('data/run-embeddings-v2/cache-embeddings-*',
     'data/run-embeddings-v2/cache'),
])
def test_the_prefix_of_what_data_dir_says(data_dir, prefix):
  assert embedding_cache.prefix_of(data_dir) == prefix


def test_a_glob_that_names_no_cache_is_refused():
  with pytest.raises(embedding_cache.EmbeddingCacheError, match='PREFIX'):
    embedding_cache.prefix_of('out/*.tfrecord')


def test_shard_names_and_only_they_match():
  name = embedding_cache.shard_name('out/run', 3, 12)
  assert name == 'out/run-embeddings-00003-of-00012.tfrecord.gz'
  assert embedding_cache.is_shard_name(name)
  assert not embedding_cache.is_shard_name('out/run-embeddings.json')
  assert not embedding_cache.is_shard_name(name + '.bak')


def _description(**changes):
  values = dict(fingerprint_value='sha256:aa', input_shape=(28, 28, 1),
                embedding_size=64, label_names=['a', 'b'], count=5, shards=1,
                model_dir='base')
  values.update(changes)
  return embedding_cache.describe(**values)


def test_a_description_round_trips_and_a_matching_base_passes(tmp_path):
  prefix = str(tmp_path / 'run')
  storage.write_json(embedding_cache.description_path(prefix), _description())
  description = embedding_cache.read_description(prefix)
  assert embedding_cache.input_shape(description) == (28, 28, 1)
  embedding_cache.check_matches_base(
      description, prefix, base_fingerprint='sha256:aa',
      base_input_shape=(28, 28, 1), base_source='base')


@pytest.mark.parametrize('changes, cause', [
    ({'fingerprint_value': 'sha256:bb'}, 'another feature extractor'),
    ({'input_shape': (96, 96, 3)}, 'input shape'),
])
def test_a_cache_of_another_base_is_refused_naming_the_cause(
    tmp_path, changes, cause):
  prefix = str(tmp_path / 'run')
  with pytest.raises(embedding_cache.EmbeddingCacheError,
                     match=cause) as raised:
    embedding_cache.check_matches_base(
        _description(**changes), prefix, base_fingerprint='sha256:aa',
        base_input_shape=(28, 28, 1), base_source='base')
  assert '--embeddings' in str(raised.value)


def test_a_missing_or_foreign_description_is_refused(tmp_path):
  prefix = str(tmp_path / 'run')
  with pytest.raises(embedding_cache.EmbeddingCacheError, match='no such'):
    embedding_cache.read_description(prefix)
  storage.write_json(embedding_cache.description_path(prefix),
                     {'format_version': 99})
  with pytest.raises(embedding_cache.EmbeddingCacheError, match='version'):
    embedding_cache.read_description(prefix)


@pytest.mark.parametrize('field, value', [
    ('fingerprint', None), ('input', 'x'), ('embedding_size', '64'),
    ('count', None), ('shards', 1.5), ('count', -1), ('count', True),
    ('embedding_size', -64)])
def test_a_description_with_a_broken_field_is_refused_in_one_line(
    tmp_path, field, value):
  prefix = str(tmp_path / 'run')
  description = _description()
  description[field] = value
  storage.write_json(embedding_cache.description_path(prefix), description)
  with pytest.raises(embedding_cache.EmbeddingCacheError,
                     match=field) as raised:
    embedding_cache.read_description(prefix)
  assert '\n' not in str(raised.value)
