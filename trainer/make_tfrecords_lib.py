"""Converting an image folder to TFRecord shards the trainer reads.

The library of `python -m trainer.make_tfrecords`. Each record is a
tf.train.Example in the schema of data/tfrecords.py: `image/encoded` (the
file's bytes, unchanged), `image/class/label` (int64) and `image/class/text`
and `image/filename` for people reading the shards. Files are split into
train-*, validation-* and test-* shards with the same stable hash the
image_folder dataset uses, and `labels.txt` lists the class names.
"""

import os
import tempfile

from absl import logging
import tensorflow as tf

from trainer import storage
from trainer.data import folder
from trainer.data import sources
from trainer.data import tfrecords


def _is_decodable(encoded):
  try:
    tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return True
  except (tf.errors.InvalidArgumentError, ValueError):
    return False


def convert_image_folder(image_dir, output_dir, num_shards=4,
                         validation_fraction=0.1, test_fraction=0.1):
  """Writes TFRecord shards and labels.txt for an image folder.

  Args:
    image_dir: one sub-folder per class (local or gs://).
    output_dir: where the shards go (local or gs://).
    num_shards: shards of the train split, exactly; validation and test
      get as many as their size relative to train's (at least one each).
    validation_fraction: share of images for validation.
    test_fraction: share of images for test.

  Returns:
    A dict of counts: examples per split, and `skipped` for files that are
    not decodable images (logged with their paths).
  """
  image_dir = storage.normalize(image_dir)
  class_names, by_split = folder.split_image_folder(
      image_dir, validation_fraction, test_fraction)
  # labels.txt holds one name per line: a name with a line break in it
  # would read back as two classes.
  broken = [name for name in class_names if '\n' in name or '\r' in name]
  if broken:
    raise sources.DataError(
        f'image_dir {image_dir}: class folder name(s) {broken!r} hold a line '
        'break, which labels.txt cannot; rename them.')
  train_size = len(by_split.get('train', ())) or 1
  counts = {'skipped': 0}
  with tempfile.TemporaryDirectory(prefix='tfrecords-') as staging:
    for split, items in by_split.items():
      shards = num_shards if split == 'train' else max(
          1, round(num_shards * len(items) / train_size))
      counts[split] = _write_split(image_dir, class_names, split, items,
                                   shards, staging, counts)
    with open(os.path.join(staging, tfrecords.LABELS_FILE), 'w') as f:
      f.write('\n'.join(class_names) + '\n')
    storage.upload_tree(staging, output_dir)
  logging.info('Wrote %s to %s.', counts, output_dir)
  return counts


def _write_split(image_dir, class_names, split, items, shards, staging,
                 counts):
  # Every split gets at least one file, even an empty one: a folder of
  # shards always has all three splits.
  writers = [tf.io.TFRecordWriter(
      os.path.join(staging, f'{split}-{i:05d}-of-{shards:05d}.tfrecord'))
             for i in range(shards)]
  written = 0
  try:
    for path, label in items:
      relative = path[len(image_dir) + 1:]
      encoded = storage.read_bytes(path)
      if not _is_decodable(encoded):
        logging.warning('Skipping %s: not a decodable image.', relative)
        counts['skipped'] += 1
        continue
      example = tfrecords.make_example(encoded, label, class_names[label],
                                       relative)
      writers[written % shards].write(example.SerializeToString())
      written += 1
  finally:
    for writer in writers:
      writer.close()
  return written
