"""A full train -> export -> write samples -> score run whose only storage is
buckets on a real GCS-compatible server (fake-gcs-server)."""

import gzip
import json
import struct

import numpy as np
import pytest

from batch_predict import pipeline
from trainer import config as config_lib
from trainer import data
from trainer.data import samples
from trainer import storage
from tests import helpers
from trainer import artifact
from trainer.data import sources


def _idx_bytes(array):
  header = struct.pack('>HBB', 0, 0x08, array.ndim)
  header += struct.pack(f'>{array.ndim}I', *array.shape)
  return gzip.compress(header + array.astype(np.uint8).tobytes())


def _upload_digits_as_idx(folder, n_train=1200, n_test=300):
  """The bundled digits, in MNIST's own IDX .gz format, in a bucket."""
  source = sources.load_mnist_sample(0.0, 0.2)
  for split, prefix, count in (('train', 'train', n_train),
                               ('test', 't10k', n_test)):
    images, labels = next(source.examples(split).batch(count)
                          .as_numpy_iterator())
    storage.write_bytes(f'{folder}/{prefix}-images-idx3-ubyte.gz',
                        _idx_bytes(images[..., 0]))
    storage.write_bytes(f'{folder}/{prefix}-labels-idx1-ubyte.gz',
                        _idx_bytes(labels))


@pytest.mark.slow
def test_train_export_and_score_with_buckets_only(gcs_server,
                                                  beam_gcs_anonymous):
  bucket = 'gs://test-bucket'
  _upload_digits_as_idx(f'{bucket}/data/digits')
  # Vertex's Cloud Storage FUSE path names the same bucket. What
  # `python -m trainer.task --dataset=mnist ...` trains, in this process (the
  # command on a gs:// job dir runs in test_resume.py).
  helpers.train_in_process(
      dataset='mnist', data_dir=f'{bucket}/data/digits',
      job_dir='/gcs/test-bucket/runs/digits', model='deep_mnist', epochs=1,
      batch_size=64)
  job_dir = f'{bucket}/runs/digits'
  names = {uri[len(job_dir) + 1:].split('/')[0]
           for uri in storage.list_files(job_dir)}
  assert names == {'checkpoints', 'config.yaml', 'evaluation.png', 'export',
                   'logs', 'metrics.json', 'misclassified.png',
                   'training_curves.png'}
  assert artifact.is_complete(f'{job_dir}/export')
  metrics = storage.read_json(f'{job_dir}/metrics.json')
  assert metrics['examples'] == {'train': 1080, 'validation': 120,
                                 'test': 300}

  # What `python -m trainer.write_samples --dataset=mnist --count=300` does
  # (its command runs in test_pipeline.py), without a second process
  # importing TensorFlow.
  source = data.load_source(data.Options(
      'mnist', data_dir=f'{bucket}/data/digits',
      validation_fraction=config_lib.default('validation_fraction'),
      test_fraction=config_lib.default('test_fraction')))
  samples.write_samples(source, 'test', f'{bucket}/samples', 300)
  storage.write_bytes(f'{bucket}/samples/broken.png', b'\x89PNG\r\n\x1a\n')
  result = pipeline.run([
      f'--model_dir={job_dir}/export', f'--input={bucket}/samples/*.png',
      f'--output={bucket}/scores/digits', '--num_shards=2'])
  assert result.state == 'DONE'

  def records(name):
    found = []
    for uri in storage.glob(f'{bucket}/scores/digits-{name}-*.jsonl'):
      found += [json.loads(line) for line in
                storage.read_text(uri).splitlines()]
    return found

  predictions, errors = records('predictions'), records('errors')
  assert len(storage.glob(f'{bucket}/scores/digits-*')) == 4
  assert [e['uri'] for e in errors] == [f'{bucket}/samples/broken.png']
  assert len(predictions) == 300
  # Scoring the whole test split as PNG files reproduces the trainer's own
  # test accuracy: no skew between training and scoring.
  correct = sum(samples.label_from_name(p['uri']) == int(p['label'])
                for p in predictions)
  assert correct / 300 == pytest.approx(metrics['test_accuracy'], abs=0.005)
