"""Embedding caches (Contract 4) as the scorer writes them, for trainer tests.

Stands in for `batch_predict.pipeline --embeddings --labels_from_folders`
(its own tests are the scorer's): the images are decoded with the serving
signature's decoder (preprocessing.decode_images), embedded with
`extractor.embedding_model` of the export's model.keras, and written as gzip
TFRecord shards named by `embedding_cache.shard_name`, with the
description `embedding_cache.describe` gives, fingerprint included.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from trainer import artifact
from trainer import embedding_cache
from trainer import export
from trainer import extractor
from trainer import storage
from trainer.data import preprocessing


def base_fingerprint(model):
  """The fingerprint the exporter records: the weights up to the cut."""
  cut, _ = extractor.find_output(model, 'the base')
  return extractor.fingerprint(keras.Model(model.inputs, cut))


def embed_files(export_dir, paths):
  """The export's embeddings of image files, as the scorer computes them."""
  model = export.load_keras_model(export_dir)
  shape = embedding_cache.input_shape(artifact.read_metadata(export_dir))
  images = preprocessing.decode_images(
      tf.constant([storage.read_bytes(path) for path in paths]), *shape)
  return extractor.embedding_model(model)(images).numpy(), model, shape


def _feature(values, kind):
  if kind == 'bytes':
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
  if kind == 'int64':
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _example(uri, vector, label, label_name):
  features = {
      embedding_cache.URI_FEATURE: _feature([uri.encode()], 'bytes'),
      embedding_cache.EMBEDDING_FEATURE: _feature(vector.tolist(), 'float'),
  }
  if label is not None:
    features[embedding_cache.LABEL_FEATURE] = _feature([label], 'int64')
    features[embedding_cache.LABEL_NAME_FEATURE] = _feature(
        [label_name.encode()], 'bytes')
  return tf.train.Example(features=tf.train.Features(feature=features))


def write_cache(export_dir, prefix, files, *, labelled=True, shards=2,
                fingerprint=None):
  """Writes PREFIX-embeddings-* and PREFIX-embeddings.json.

  Args:
    export_dir: the export whose extractor embeds the images.
    prefix: the --output PREFIX.
    files: (path, label name) pairs, the labels being the parent folders.
    labelled: write `label`/`label_name` and `label_names`.
    shards: how many shards (records go round-robin).
    fingerprint: the description's fingerprint (default: the export's).

  Returns:
    {uri: embedding} of what was written.
  """
  paths = [path for path, _ in files]
  vectors, model, shape = embed_files(export_dir, paths)
  names = sorted({name for _, name in files})
  writers = [tf.io.TFRecordWriter(
      embedding_cache.shard_name(prefix, index, shards), options='GZIP')
             for index in range(shards)]
  for index, ((path, name), vector) in enumerate(zip(files, vectors)):
    label = names.index(name) if labelled else None
    writers[index % shards].write(
        _example(path, vector, label, name).SerializeToString())
  for writer in writers:
    writer.close()
  storage.write_json(embedding_cache.description_path(prefix),
                     embedding_cache.describe(
                         fingerprint_value=fingerprint or base_fingerprint(
                             model),
                         input_shape=shape, embedding_size=vectors.shape[1],
                         label_names=names if labelled else None,
                         count=len(files), shards=shards,
                         model_dir=export_dir,
                         unlabelled=0 if labelled else len(files)))
  return dict(zip(paths, np.asarray(vectors)))


def folder_files(root):
  """(path, class folder) pairs of an image folder ROOT/<class>/<file>."""
  return [(os.path.join(root, name, file_name), name)
          for name in sorted(os.listdir(root))
          for file_name in sorted(os.listdir(os.path.join(root, name)))]


def read_cache(prefix):
  """{uri: (embedding, label or None, label_name or None)} of every record,
  and how many records there are (to see duplicates)."""
  folder = os.path.dirname(prefix)
  shards = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if embedding_cache.is_shard_name(name) and
                  name.startswith(os.path.basename(prefix) + '-'))
  found, count = {}, 0
  for record in tf.data.TFRecordDataset(shards, compression_type='GZIP'):
    features = tf.train.Example.FromString(record.numpy()).features.feature
    uri = features[embedding_cache.URI_FEATURE].bytes_list.value[0].decode()
    label = features[embedding_cache.LABEL_FEATURE].int64_list.value
    name = features[embedding_cache.LABEL_NAME_FEATURE].bytes_list.value
    found[uri] = (
        np.array(features[embedding_cache.EMBEDDING_FEATURE].float_list.value,
                 np.float32),
        label[0] if label else None, name[0].decode() if name else None)
    count += 1
  return found, count, shards
