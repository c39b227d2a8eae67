"""The scoring outputs (Contract 3): record formats, shard names, clean-up.

```
PREFIX-predictions-SSSSS-of-NNNNN.jsonl  {"uri", "label", "score", "top_k": [{"label", "score"}, ...]}
PREFIX-errors-SSSSS-of-NNNNN.jsonl       {"uri", "error", "kind"}
```

Each record goes to the shard `crc32(uri) % NNNNN`, and every shard is
written whole, even when empty, so a finished run always has NNNNN files of
each. Because names and contents depend only on the inputs, a retried bundle
or a re-run overwrites files instead of adding duplicates; `delete_outputs`
removes what an earlier (possibly killed) run left before a run starts.
"""

import json
import zlib

import numpy as np

from trainer import storage

PREDICTIONS = 'predictions'
ERRORS = 'errors'
OUTPUT_NAMES = (PREDICTIONS, ERRORS)
_SCORE_DIGITS = 6


def prediction_record(uri, probabilities, labels, top_k):
  """The predictions record of one image.

  Args:
    uri: the image's URI.
    probabilities: one probability per class, in `labels` order.
    labels: the class names.
    top_k: how many classes to list, most probable first.

  Returns:
    {"uri", "label", "score", "top_k": [{"label", "score"}, ...]}.
  """
  # A stable sort keeps ties in label order, so outputs are reproducible.
  best = np.argsort(-np.asarray(probabilities), kind='stable')[:top_k]
  ranked = [{'label': labels[i], 'score': round(float(probabilities[i]),
                                                _SCORE_DIGITS)}
            for i in best]
  return {'uri': uri, 'label': ranked[0]['label'], 'score': ranked[0]['score'],
          'top_k': ranked}


def error_record(uri, kind, message):
  """The errors record of one input: what is wrong, in words, and its kind."""
  return {'uri': uri, 'error': message, 'kind': kind}


def to_json_line(record):
  return json.dumps(record, ensure_ascii=False)


def shard_of(uri, num_shards):
  """A shard index from the URI alone, stable across processes and runs."""
  return zlib.crc32(uri.encode('utf-8')) % num_shards


def shard_path(prefix, name, index, num_shards):
  """E.g. `PREFIX-predictions-00003-of-00010.jsonl`."""
  return f'{prefix}-{name}-{index:05d}-of-{num_shards:05d}.jsonl'


def output_pattern(prefix, name):
  """The glob matching every file of one output, and any leftovers."""
  return f'{prefix}-{name}-*'


def delete_outputs(prefix):
  """Deletes the outputs (and temporary files) of earlier runs at `prefix`.

  Args:
    prefix: the `--output` prefix, normalized.

  Returns:
    The paths deleted.
  """
  deleted = []
  for name in OUTPUT_NAMES:
    for path in storage.glob(output_pattern(prefix, name)):
      storage.delete(path)
      deleted.append(path)
  return deleted


def read_records(prefix, name):
  """Reads every record of one output (for tests, tools and notebooks).

  Args:
    prefix: the `--output` prefix.
    name: PREDICTIONS or ERRORS.

  Returns:
    The records of all shards, shard by shard.
  """
  records = []
  for path in storage.glob(output_pattern(storage.normalize(prefix), name)):
    records.extend(json.loads(line)
                   for line in storage.read_text(path).splitlines() if line)
  return records
