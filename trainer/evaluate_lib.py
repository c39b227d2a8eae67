"""Evaluation reports of a model on a split of a dataset, and their pictures.

The metrics are evaluation.py's (the one implementation the scorer uses
too); this module feeds them and writes what comes out:

* `add_to_run`: a training run's report (train.py calls it once, after its
  test evaluation): the Keras model on the held-out split it was evaluated
  on, into `metrics["evaluation"]`, and the confusion matrix as a
  TensorBoard image in the run's logs;
* `write_pictures`: evaluation.png and misclassified.png (publish.py,
  beside training_curves.png);
* `evaluate_artifact`: an exported artifact through its serving signature
  (image bytes for file datasets), for `python -m trainer.evaluate`.

Predictions stream batch by batch into `evaluation.Counts`: memory does not
grow with the split. An example's id is its file's URI for file datasets
(`Source.files`), else its index in the split.
"""

import os

from absl import logging
import numpy as np
import tensorflow as tf

from trainer import artifact
from trainer import data
from trainer import evaluation
from trainer import evaluation_charts
from trainer import storage
from trainer.data import pipeline
from trainer.data import preprocessing
from trainer.data import sources

_TENSORBOARD_SUBDIR = 'evaluation'
# trainer.evaluate --split=all: every split of the dataset.
ALL = 'all'

# The batch serving_default is fed when scoring files through it.
_SERVING_BATCH = 64


def _ids(source, split):
  if source.files is None:
    return None
  return [uri for uri, _ in source.files(split)]


def _batch_ids(ids, offset, count):
  if ids is None:
    return range(offset, offset + count)
  return ids[offset:offset + count]


def evaluate_keras_model(model, source, split, image_shape, batch_size):
  """Counts a Keras model's predictions on one split of `source`.

  Returns:
    An evaluation.Counts over `source.info.class_names`.
  """
  dataset = pipeline.make_dataset(source, split, batch_size, image_shape,
                                  training=False, cache='none')
  predict = tf.function(lambda images: model(images, training=False),
                        reduce_retracing=True)
  counts = evaluation.Counts(source.info.class_names)
  ids, offset = _ids(source, split), 0
  for images, labels in dataset:
    probabilities = np.asarray(predict(images), np.float64)
    counts.add(probabilities, labels.numpy(),
               _batch_ids(ids, offset, len(probabilities)))
    offset += len(probabilities)
  return counts


def add_to_run(model, context, source, dirs, metrics):
  """Adds a training run's evaluation report to `metrics` (train.py).

  Evaluated on the split `metrics["evaluated_on"]` names (test, else
  validation); without one, `metrics["evaluation"]` is None. The confusion
  matrix also goes to TensorBoard, in `dirs.log_dir`.
  """
  split = metrics.get('evaluated_on')
  if split is None:
    metrics['evaluation'] = None
    return
  config = context.config
  report = evaluate_keras_model(model, source, split, config.image_shape,
                                config.batch_size).report()
  report['split'] = split
  metrics['evaluation'] = report
  logging.info('Evaluation on the %s split: macro F1 %s, expected '
               'calibration error %s.', split, report['macro_f1'],
               report['expected_calibration_error'])
  write_tensorboard_image(report, dirs.log_dir)


def write_tensorboard_image(report, log_dir):
  """The labelled confusion matrix as an image in LOG_DIR/evaluation."""
  png = evaluation_charts.render_confusion(report)
  if png is None:
    return
  image = tf.io.decode_png(png, channels=3)[tf.newaxis]
  writer = tf.summary.create_file_writer(
      os.path.join(log_dir, _TENSORBOARD_SUBDIR))
  with writer.as_default():
    tf.summary.image('confusion_matrix', image, step=0)
  writer.close()


# --------------------------------------------------------------------------
# Pictures.


def write_pictures(report, source, image_shape, folder, title):
  """Writes evaluation.png and misclassified.png into `folder`.

  Returns:
    The paths written ([] without matplotlib, or without a report).
  """
  if not report:
    return []
  written = []
  png = evaluation_charts.render_report(report, title)
  if png is None:
    logging.info('matplotlib is not installed: no evaluation pictures '
                 "(pip install 'tf-image-classifier[plot]').")
    return []
  written.append(storage.join(folder, evaluation_charts.REPORT_FILE))
  storage.write_bytes(written[-1], png)
  entries = report['misclassified']
  if source.vectors:
    # An embedding cache's images may be long gone (or elsewhere): their
    # ids (uris) are in the report, without pictures.
    return written
  images = misclassified_images(source, report.get('split', 'test'),
                                image_shape, entries)
  png = evaluation_charts.render_misclassified(images, entries)
  if png is not None:
    written.append(storage.join(folder, evaluation_charts.MISCLASSIFIED_FILE))
    storage.write_bytes(written[-1], png)
  return written


def misclassified_images(source, split, image_shape, entries):
  """The images of the report's `misclassified` entries, in their order.

  Files are read again by URI; other examples are found by their index in
  the split (one pass over it).
  """
  if not entries:
    return []
  if source.files is not None:
    return [preprocessing.decode_image(storage.read_bytes(entry['id']),
                                       *image_shape).numpy()
            for entry in entries]
  # Ids of split 'all' are SPLIT/INDEX (see evaluate_export).
  where = [entry['id'].split('/') if split == ALL else (split, entry['id'])
           for entry in entries]
  found = {}
  for name in sorted({name for name, _ in where}):
    wanted = {int(index) for other, index in where if other == name}
    for index, (image, _) in enumerate(source.examples(name)):
      if index in wanted:
        found[name, index] = image.numpy()
        if len(found) == len(where):
          break
  return [found[name, int(index)] for name, index in where]


# --------------------------------------------------------------------------
# An exported artifact (python -m trainer.evaluate).


def _label_map(dataset_labels, model_labels):
  """Index in the dataset's classes -> index in the model's labels."""
  missing = [name for name in dataset_labels if name not in model_labels]
  if missing:
    raise sources.DataError(
        f'The dataset has classes the model does not know: '
        f'{", ".join(missing[:5])} (the model\'s labels: '
        f'{", ".join(model_labels[:10])}). Evaluate it on a dataset of its '
        'own labels.')
  return np.array([model_labels.index(name) for name in dataset_labels])


def evaluate_export(model_dir, dataset, data_dir, split, validation_fraction,
                    test_fraction, output_dir):
  """Evaluates an artifact on a dataset; writes the report and pictures.

  Args:
    model_dir: the artifact (local or gs://).
    dataset, data_dir: as trainer.task's flags.
    split: 'test', 'validation', 'train', or ALL (every split; the ids of
      array datasets are then SPLIT/INDEX).
    validation_fraction, test_fraction: how the splits are cut.
    output_dir: where evaluation.REPORT_FILE and the pictures go.

  Returns:
    The report (Contract 5, with `split`, `dataset` and `model_dir`).

  Raises:
    artifact.ArtifactError, data.DataError: one line naming the problem.
  """
  loaded = artifact.load(model_dir)
  shape = tuple(loaded.metadata['input'][key]
                for key in ('height', 'width', 'channels'))
  source = data.load_source(data.Options(
      dataset=dataset, validation_fraction=validation_fraction,
      test_fraction=test_fraction, data_dir=data_dir, image_shape=shape))
  names = sources.SPLITS if split == ALL else (split,)
  if not any(source.info.sizes.get(name) for name in names):
    raise sources.DataError(
        f'The {split} split of {dataset} is empty (sizes '
        f'{source.info.sizes}); pick another --split, or --split=all.')
  counts = evaluation.Counts(loaded.labels)
  for name in names:
    if source.info.sizes.get(name):
      counts.merge(evaluate_artifact(loaded, source, name, shape,
                                     id_prefix=f'{name}/' if split == ALL
                                     else None))
  report = counts.report()
  report.update(split=split, dataset=dataset,
                model_dir=storage.normalize(model_dir))
  output_dir = storage.normalize(output_dir)
  storage.write_json(storage.join(output_dir, evaluation.REPORT_FILE), report)
  write_pictures(report, source, shape, output_dir,
                 f'{loaded.metadata.get("model")} on {dataset} ({split})')
  return report


def evaluate_artifact(loaded, source, split, image_shape, id_prefix=None):
  """Counts an artifact's predictions on a split, through its signatures.

  Files go through `serving_default` as their bytes, as the scorer sends
  them; array datasets through `serving_pixels`, on the input pipeline's
  pixels.

  Args:
    loaded: an artifact.Loaded.
    source: the data.sources.Source.
    split: which split ('train', 'validation' or 'test').
    image_shape: the artifact's input (height, width, channels).
    id_prefix: if given, index ids become strings PREFIX + index.

  Returns:
    An evaluation.Counts over the artifact's labels.
  """
  to_model = _label_map(source.info.class_names, loaded.labels)
  counts = evaluation.Counts(loaded.labels)
  for probabilities, labels, ids in _served_batches(loaded, source, split,
                                                    image_shape):
    if id_prefix is not None and source.files is None:
      ids = [f'{id_prefix}{index}' for index in ids]
    counts.add(probabilities, to_model[labels], ids)
  return counts


def _served_batches(loaded, source, split, image_shape):
  """(probabilities, dataset label indices, ids) per batch."""
  if source.files is not None:
    files = source.files(split)
    for start in range(0, len(files), _SERVING_BATCH):
      chunk = files[start:start + _SERVING_BATCH]
      encoded = tf.constant([storage.read_bytes(uri) for uri, _ in chunk])
      outputs = loaded.serve(image_bytes=encoded)
      yield (outputs['probabilities'].numpy(),
             np.array([label for _, label in chunk], np.int64),
             [uri for uri, _ in chunk])
    return
  pixels = loaded.saved_model.signatures[artifact.PIXELS_SIGNATURE]
  offset = 0
  for images, labels in pipeline.make_dataset(
      source, split, _SERVING_BATCH, image_shape, training=False,
      cache='none'):
    probabilities = pixels(images=images)['probabilities'].numpy()
    yield probabilities, labels.numpy(), range(offset, offset + len(labels))
    offset += len(labels)
