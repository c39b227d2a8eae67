"""Writing dataset images out as image files (the library of write_samples).

Files are named `SPLIT-INDEX-LABEL.EXT` (e.g. `test-00042-7.png`), so the
true label of every scored file can be read back from its name. With
`class_folders` they go into one sub-folder per class name (`7/`), the
image_folder layout that `--dataset=image_folder` trains on and
`batch_predict --labels_from_folders` labels by.
"""

import tensorflow as tf

from trainer import storage

FORMATS = ('png', 'jpeg')


def label_from_name(name):
  """The label index encoded in a file name written by `write_samples`."""
  return int(storage.basename(name).rsplit('.', 1)[0].rsplit('-', 1)[1])


def encode(pixels, image_format):
  """uint8 [h, w, c] pixels -> PNG or JPEG bytes (JPEG at quality 95)."""
  if image_format == 'png':
    return tf.io.encode_png(pixels).numpy()
  if image_format == 'jpeg':
    return tf.io.encode_jpeg(pixels, quality=95).numpy()
  raise ValueError(f'Unknown format {image_format!r}; choose from {FORMATS}.')


def class_folder(class_name):
  """A class name as a folder name: '/' (Fashion-MNIST's T-shirt/top) is '_'."""
  return class_name.replace('/', '_')


def write_samples(source, split, output_dir, count=0, image_format='png',
                  class_folders=False):
  """Writes the first `count` images of a split (0 = all) as files.

  Args:
    source: a `data.Source` whose examples are uint8 pixels (the bundled
      digits and the IDX datasets).
    split: 'train', 'validation' or 'test'.
    output_dir: a folder, local or gs://.
    count: how many images (0 = the whole split).
    image_format: 'png' or 'jpeg'.
    class_folders: write each file into OUTPUT_DIR/<class name>/.

  Returns:
    The paths written.
  """
  extension = 'jpg' if image_format == 'jpeg' else image_format
  dataset = source.examples(split)
  if count:
    dataset = dataset.take(count)
  paths = []
  for index, (pixels, label) in enumerate(dataset.as_numpy_iterator()):
    if pixels.dtype != 'uint8':
      raise ValueError('write_samples needs a dataset of uint8 pixels.')
    folder = output_dir
    if class_folders:
      folder = storage.join(output_dir, class_folder(
          source.info.class_names[int(label)]))
    path = storage.join(folder,
                        f'{split}-{index:05d}-{int(label)}.{extension}')
    storage.write_bytes(path, encode(pixels, image_format))
    paths.append(path)
  return paths
