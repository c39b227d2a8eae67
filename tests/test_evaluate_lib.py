"""A training run's evaluation report: metrics.json, the export's metadata,
the pictures and the TensorBoard image (of the session's trained run)."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from trainer import artifact
from trainer import config as config_lib
from trainer import data
from trainer import evaluation
from trainer import evaluation_charts
from trainer.data import pipeline


def _evaluation(job_dir):
  return helpers.read_json(os.path.join(job_dir, 'metrics.json'))


def test_the_report_counts_the_test_split_and_implies_test_accuracy(
    trained_job_dir):
  metrics = _evaluation(trained_job_dir)
  report = metrics['evaluation']
  labels = artifact.read_metadata(os.path.join(trained_job_dir,
                                               'export'))['labels']
  confusion = np.array(report['confusion_matrix'])
  assert confusion.shape == (len(labels), len(labels))
  assert confusion.sum() == metrics['examples']['test'] == report['examples']
  assert evaluation.accuracy(report) == pytest.approx(
      metrics['test_accuracy'], abs=1e-6)
  assert report['top_k_accuracy']['1'] == pytest.approx(
      metrics['test_accuracy'], abs=1e-6)
  assert report['top_k_accuracy']['5'] >= report['top_k_accuracy']['1']
  assert [entry['label'] for entry in report['per_class']] == labels
  assert sum(entry['support'] for entry in report['per_class']) == (
      confusion.sum())
  assert 0 <= report['expected_calibration_error'] <= 1
  assert sum(entry['count'] for entry in report['calibration']) == (
      confusion.sum())
  assert report['split'] == 'test'


def test_the_export_says_how_far_to_trust_each_label(trained_job_dir):
  report = _evaluation(trained_job_dir)['evaluation']
  metadata = artifact.read_metadata(os.path.join(trained_job_dir, 'export'))
  assert metadata['metrics']['per_class'] == report['per_class']
  assert metadata['metrics']['expected_calibration_error'] == (
      report['expected_calibration_error'])


def _test_split(job_dir):
  """(pixels as the model takes them, labels) of the run's test split."""
  config = config_lib.build(config_lib.load_file(
      os.path.join(job_dir, 'config.yaml')))
  source = data.load_source(data.Options.from_config(config))
  images, labels = next(iter(pipeline.make_dataset(
      source, 'test', 10_000, config.image_shape, training=False)))
  return images, labels.numpy(), source.info.class_names


@pytest.mark.slow  # Reads the bundled digits and loads the export: ~5 s.
def test_misclassified_examples_are_really_wrong_and_most_confident_first(
    trained_job_dir):
  report = _evaluation(trained_job_dir)['evaluation']
  mistakes = report['misclassified']
  assert 0 < len(mistakes) <= evaluation.MAX_MISCLASSIFIED
  scores = [entry['score'] for entry in mistakes]
  assert scores == sorted(scores, reverse=True)
  images, labels, class_names = _test_split(trained_job_dir)
  loaded = artifact.load(os.path.join(trained_job_dir, 'export'))
  pixels = loaded.saved_model.signatures[artifact.PIXELS_SIGNATURE]
  indices = [entry['id'] for entry in mistakes]
  probabilities = pixels(images=tf.gather(images, indices))[
      'probabilities'].numpy()
  for entry, row in zip(mistakes, probabilities):
    assert class_names[labels[entry['id']]] == entry['true']
    assert loaded.labels[int(np.argmax(row))] == entry['predicted']
    assert entry['true'] != entry['predicted']
    assert float(np.max(row)) == pytest.approx(entry['score'], abs=1e-4)


@pytest.mark.parametrize('name, minimum', [
    (evaluation_charts.REPORT_FILE, (300, 600)),
    (evaluation_charts.MISCLASSIFIED_FILE, (400, 400)),
])
def test_the_pictures_decode_and_have_a_sensible_size(trained_job_dir, name,
                                                      minimum):
  with open(os.path.join(trained_job_dir, name), 'rb') as f:
    image = tf.io.decode_png(f.read())
  height, width, _ = image.shape
  assert height >= minimum[0] and width >= minimum[1]
  assert height <= 4000 and width <= 4000
  assert float(tf.math.reduce_std(tf.cast(image, tf.float32))) > 10  # Drawn.


def test_the_confusion_matrix_is_a_tensorboard_image(trained_job_dir):
  events, = glob.glob(os.path.join(trained_job_dir, 'logs', 'evaluation',
                                   'events.out.tfevents.*'))
  images = [value for event in tf.compat.v1.train.summary_iterator(events)
            for value in event.summary.value if value.tag == 'confusion_matrix']
  assert len(images) == 1
  encoded = tf.make_ndarray(images[0].tensor)[2]  # [width, height, PNG].
  assert tf.io.decode_png(encoded).shape[0] >= 300
