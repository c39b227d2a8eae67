"""TFRecord shards of `tf.train.Example`s as scoring input.

`--input='shards/*.tfrecord*'` (or any --input with `--input_format=
tfrecord`): every record is one input, an `items.Item` that carries its
image bytes from the start, so it is never read again:
* its id (the records' `uri`) is the Example's `image/key`, else its
  `image/filename` (what `trainer.make_tfrecords` writes: the file's path in
  its image folder), else `SHARD_URI#INDEX` (the record's position in its
  shard, from 0);
* its label is `image/class/text` when present, else `image/class/label`
  (the class index, as text);
* `image/encoded` is the image.

A record that is not a `tf.train.Example`, or lacks `image/encoded`, is one
error record of kind `bad_record`; a shard whose framing is cut short or
fails its checksum gives one error record for the rest of it (`SHARD#INDEX`
of the first record lost), as the records after it cannot be found. Shards
are read whole, one by one, in parallel across workers; gzip-compressed
shards are recognised by their first bytes, whatever their names.

Why not Beam's `ReadFromTFRecord`: it yields records without their
position, which is the id of a record without a key; it stops the whole
job at a corrupt shard; and it decompresses by file extension. TensorFlow's
own reader (`tf.data.TFRecordDataset`) reads gs:// through TensorFlow's GCS
filesystem, which cannot be pointed at an emulator (DESIGN.md), so the
gs:// path could not be tested. The framing here is the format's own
(length, masked CRC-32C of the length, data, masked CRC-32C of the data),
read through Beam's `FileSystems`; `tf.train.Example` is parsed with
TensorFlow's protobuf class, imported on the workers only.
"""

import gzip
import struct
import zlib

from apache_beam.io import filesystem
from apache_beam.io import filesystems
import google_crc32c  # Installed with google-cloud-storage, which uses it.

from batch_predict import inputs
from batch_predict import items
from trainer import errors

BAD_RECORD = errors.BAD_RECORD
_GZIP_MAGIC = b'\x1f\x8b'
_CRC_MASK_DELTA = 0xa282ead8


class _CorruptShard(Exception):
  """The shard's framing is broken: nothing after this point can be read."""


def _masked_crc(data):
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xffffffff


def _read_exactly(f, count):
  data = f.read(count)
  while len(data) < count:
    more = f.read(count - len(data))
    if not more:
      break
    data += more
  return data


def read_records(f):
  """Yields the records of one TFRecord stream.

  Raises:
    _CorruptShard: at a record cut short or failing its checksum.
  """
  while True:
    header = _read_exactly(f, 12)
    if not header:
      return
    if len(header) < 12:
      raise _CorruptShard('the shard ends inside a record\'s length')
    length, length_crc = struct.unpack('<QI', header)
    if _masked_crc(header[:8]) != length_crc:
      raise _CorruptShard('a record\'s length fails its checksum')
    body = _read_exactly(f, length + 4)
    if len(body) < length + 4:
      raise _CorruptShard('the shard ends inside a record')
    data = body[:length]
    if _masked_crc(data) != struct.unpack('<I', body[length:])[0]:
      raise _CorruptShard('a record fails its checksum')
    yield data


def _open_shard(uri):
  """The shard's stream, gunzipped if its first bytes say gzip."""
  raw = filesystems.FileSystems.open(
      uri, mime_type='application/octet-stream',
      compression_type=filesystem.CompressionTypes.UNCOMPRESSED)
  start = raw.read(2)
  raw.seek(0)
  return gzip.GzipFile(fileobj=raw, mode='rb') if start == _GZIP_MAGIC else raw


def _feature_bytes(features, name):
  feature = features.get(name)
  if feature is None or not feature.bytes_list.value:
    return None
  return feature.bytes_list.value[0]


def _feature_text(features, name):
  value = _feature_bytes(features, name)
  return value.decode('utf-8', 'backslashreplace') if value else None


def example_item(shard, index, serialized, example_class):
  """One record -> its `items.Item`.

  Raises:
    inputs.ReadError: of kind `bad_record`, if it is not an Example with
      `image/encoded` (the error's `uri` is the record's id).
  """
  position = f'{shard}#{index}'
  example = example_class()
  try:
    example.ParseFromString(serialized)
  except Exception as e:  # protobuf's DecodeError; its module varies.
    raise inputs.ReadError(
        f'record {index} of {shard} is not a tf.train.Example ({e}): '
        'rewrite the shard.', BAD_RECORD, uri=position) from e
  features = example.features.feature
  uri = (_feature_text(features, 'image/key') or
         _feature_text(features, 'image/filename') or position)
  label = _feature_text(features, 'image/class/text')
  if label is None and 'image/class/label' in features:
    values = features['image/class/label'].int64_list.value
    label = str(values[0]) if values else None
  encoded = _feature_bytes(features, 'image/encoded')
  if encoded is None:
    error = inputs.ReadError(
        f'record {index} of {shard} has no image/encoded bytes feature: '
        'nothing to score.', BAD_RECORD, uri=uri)
    error.label = label
    raise error
  return items.Item(uri, data=encoded, label=label)


def shard_items(shard, example_class):
  """Yields an Item, or the `inputs.ReadError` of a bad record, per record
  of one shard (and one ReadError for a corrupt rest of the shard)."""
  index = 0
  with _open_shard(shard) as f:
    try:
      for serialized in read_records(f):
        try:
          yield example_item(shard, index, serialized, example_class)
        except inputs.ReadError as e:
          yield e
        index += 1
    # Anything else (a network error, say) propagates: the runner retries.
    except (_CorruptShard, EOFError, gzip.BadGzipFile, zlib.error) as e:
      yield inputs.ReadError(
          f'{e} at record {index}: this record and any after it in the '
          'shard cannot be read; rewrite the shard.', BAD_RECORD,
          uri=f'{shard}#{index}')
