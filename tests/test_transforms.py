"""The pipeline's steps, in TestPipelines: listing, the bad-input catalogue,
counters and progress logs, and the sharded JSON-lines sink."""

import collections
import functools
import json
import logging
import os
import threading

import apache_beam as beam
from apache_beam import coders
from apache_beam import typehints
from apache_beam.metrics import metric
from apache_beam.ml.inference import base
from apache_beam.options import pipeline_options
from apache_beam.testing import test_pipeline
from apache_beam.testing import util
import numpy as np
import pytest

from batch_predict import inputs
from batch_predict import items
from batch_predict import model_handler
from batch_predict import outputs
from batch_predict import transforms
from tests.helpers import fakes
from tests.helpers import image_files
from tests.helpers import records as record_files
from trainer import artifact
from trainer import errors as errors_lib
from trainer import lease as lease_lib


@pytest.fixture(scope='module')
def catalogue(tmp_path_factory):
  return image_files.write_catalogue(str(tmp_path_factory.mktemp('images')))


def _counters(result):
  query = result.metrics().query(
      metric.MetricsFilter().with_namespace(transforms.NAMESPACE))
  totals = {}
  for counter in query['counters']:
    name = counter.key.metric.name
    totals[name] = totals.get(name, 0) + counter.committed
  return totals


@pytest.mark.slow  # 2.1 s here: over the fast tier's ~1.5 s a test.
def test_bad_input_catalogue_each_gets_its_error_and_good_images_are_scored(
    trained_export, catalogue):
  good, bad = catalogue
  uris = sorted(good) + sorted(bad)
  classifier = model_handler.load_classifier(trained_export)
  expected_labels = {}
  for uri in good:
    with open(uri, 'rb') as f:
      expected_labels[uri] = classifier.labels[int(np.argmax(
          classifier.predict([f.read()])[0]))]
  # One batch for every image that passes the header checks, so the
  # truncated JPEG shares its batch with all the good images: 16 of them,
  # a power of two, so the handler makes one model call of the whole batch.
  assert len(good) + 1 == 16
  handler = model_handler.ImageClassifierHandler(
      trained_export, min_batch_size=len(uris), max_batch_size=len(uris))

  def check_predictions(records):
    by_uri = {r['uri']: r for r in records}
    assert len(by_uri) == len(records) == len(good)
    assert set(by_uri) == set(good)
    for uri, record in by_uri.items():
      assert record['label'] == expected_labels[uri], uri
      assert [c['label'] for c in record['top_k']][0] == record['label']
      assert len(record['top_k']) == 3
      scores = [c['score'] for c in record['top_k']]
      assert scores == sorted(scores, reverse=True)
    # The 16-bit PNG and the CMYK JPEG are valid images: they score like
    # their 8-bit grey and RGB twins (the same digit).
    twin = {os.path.basename(u): r for u, r in by_uri.items()}
    digit_label = next(n for n in twin if n.startswith('digit-0-'))[8]
    assert twin[f'sixteen-bit-{digit_label}.png']['label'] == (
        twin[f'digit-0-{digit_label}.png']['label'])
    assert twin[f'cmyk-{digit_label}.jpg']['label'] == (
        twin[f'digit-0-{digit_label}.jpg']['label'])

  def check_errors(records):
    by_uri = {r['uri']: r for r in records}
    assert len(by_uri) == len(records)
    assert set(by_uri) == set(bad)
    problems = []
    for uri, (kind, words) in bad.items():
      record = by_uri[uri]
      if record['kind'] != kind or words not in record['error']:
        problems.append((os.path.basename(uri), kind, words, record))
    assert not problems, problems

  pipeline = test_pipeline.TestPipeline()
  predictions, errors = (
      pipeline
      | beam.Create(uris)
      | transforms.ClassifyImages(handler, classifier.labels, top_k=3,
                                  max_file_bytes=10**6,
                                  max_image_pixels=100_000_000))
  util.assert_that(predictions, check_predictions, label='CheckPredictions')
  util.assert_that(errors, check_errors, label='CheckErrors')
  result = pipeline.run()
  result.wait_until_finish()
  counters = _counters(result)
  assert counters['images_scored'] == len(good)
  assert counters['batches_split'] >= 1  # The truncated JPEG's batch.
  for kind, count in collections.Counter(k for k, _ in bad.values()).items():
    assert counters[f'errors_{kind}'] == count, kind
  on_disk = sum(os.path.getsize(u) for u in uris if os.path.exists(u))
  assert counters['bytes_read'] == on_disk


def test_files_over_max_file_bytes_are_not_read(tmp_path):
  big = tmp_path / 'big.png'
  big.write_bytes(image_files.encode(np.zeros((200, 200), np.uint8), 'PNG') +
                  bytes(5000))
  small = tmp_path / 'small.png'
  small.write_bytes(image_files.encode(image_files.digits(1)[0][0], 'PNG'))
  handler = fakes.FakeClassifierHandler()
  with test_pipeline.TestPipeline() as pipeline:
    predictions, errors = (
        pipeline
        | beam.Create([str(big), str(small)])
        | transforms.ClassifyImages(handler, [str(d) for d in range(10)],
                                    top_k=1, max_file_bytes=4000,
                                    max_image_pixels=10**6))
    util.assert_that(predictions | beam.Map(lambda r: r['uri']),
                     util.equal_to([str(small)]), label='CheckPredictions')
    util.assert_that(errors | beam.Map(lambda r: (r['uri'], r['kind'])),
                     util.equal_to([(str(big), errors_lib.FILE_TOO_LARGE)]),
                     label='CheckErrors')


def test_an_image_the_model_cannot_decode_costs_one_record_not_its_batch(
    tmp_path):
  png = image_files.encode(image_files.digits(1)[0][0], 'PNG')
  # Its header is a good PNG's; the fake model's decoder refuses it.
  contents = {f'{i}.png': png + bytes([i]) for i in range(7)}
  contents['cut.png'] = png + fakes.UNDECODABLE
  for name, content in contents.items():
    (tmp_path / name).write_bytes(content)
  labels = fakes.DIGITS
  expected = {str(tmp_path / name): labels[int(np.argmax(
      fakes.FakeClassifier().probabilities(content)))]
              for name, content in contents.items() if name != 'cut.png'}
  handler = fakes.FakeClassifierHandler(min_batch_size=8, max_batch_size=8)
  with test_pipeline.TestPipeline() as pipeline:
    predictions, errors = (
        pipeline
        | beam.Create(sorted(str(tmp_path / name) for name in contents))
        | transforms.ClassifyImages(handler, labels, top_k=1,
                                    max_file_bytes=10**6,
                                    max_image_pixels=10**6))
    util.assert_that(predictions | beam.Map(lambda r: (r['uri'], r['label'])),
                     util.equal_to(list(expected.items())),
                     label='CheckPredictions')
    util.assert_that(
        errors | beam.Map(lambda r: (r['uri'], r['kind'],
                                     'Graph execution' in r['error'])),
        util.equal_to([(str(tmp_path / 'cut.png'), errors_lib.UNDECODABLE,
                        False)]), label='CheckErrors')


def test_out_of_memory_costs_only_the_image_too_large_alone(tmp_path):
  png = image_files.encode(image_files.digits(1)[0][0], 'PNG')
  contents = {f'{i}.png': png + bytes([i]) for i in range(8)}
  paths = {name: str(tmp_path / name) for name in contents}
  for name, content in contents.items():
    (tmp_path / name).write_bytes(content)
  # Batches of 8; the model fits 2 images at a time, and 3.png not at all.
  handler = fakes.FakeClassifierHandler(
      oom_above=2, oom_on=[contents['3.png']], min_batch_size=8,
      max_batch_size=8)
  pipeline = test_pipeline.TestPipeline()
  predictions, errors = (
      pipeline
      | beam.Create(sorted(paths.values()))
      | transforms.ClassifyImages(handler, fakes.DIGITS, top_k=1,
                                  max_file_bytes=10**6,
                                  max_image_pixels=10**6))
  util.assert_that(predictions | beam.Map(lambda r: r['uri']),
                   util.equal_to([paths[name] for name in contents
                                  if name != '3.png']),
                   label='CheckPredictions')
  util.assert_that(errors | beam.Map(lambda r: (r['uri'], r['kind'])),
                   util.equal_to([(paths['3.png'],
                                   errors_lib.TOO_LARGE_FOR_MEMORY)]),
                   label='CheckErrors')
  counters = _counters(pipeline.run())
  assert counters['errors_too_large_for_memory'] == 1
  assert counters['batches_split_out_of_memory'] >= 3


def _read_batch_log(path):
  with open(path) as f:
    return [tuple(int(n) for n in line.split()) for line in f]


@pytest.mark.slow  # 1.5 s here: over the fast tier's ~1.5 s a test.
def test_batches_are_bounded_by_decoded_pixels_and_count(tmp_path):
  # 6 photos of 500 x 500 and 30 thumbnails: with a budget of 625,000
  # pixels and 8 images, at most 2 photos share a batch, 8 thumbnails do.
  contents = {f'photo-{i}.png': image_files.encode_image(
      image_files.random_pixels(500, 500, channels=1, seed=i) // 64 * 64,
      'PNG') for i in range(6)}
  contents.update({f'thumb-{i}.png': image_files.encode(digit, 'PNG')
                   for i, (digit, _) in enumerate(image_files.digits(30))})
  # Larger than the whole budget: scored in a batch of its own.
  contents['poster.png'] = image_files.encode_image(
      np.zeros((750, 1000), np.uint8), 'PNG')
  paths = []
  for name, content in contents.items():
    (tmp_path / name).write_bytes(content)
    paths.append(str(tmp_path / name))
  log = str(tmp_path / 'batches.log')
  handler = fakes.FakeClassifierHandler(
      batch_log=log, max_batch_size=8, max_batch_pixels=625_000)
  with test_pipeline.TestPipeline() as pipeline:
    predictions, errors = (
        pipeline
        | beam.Create(paths)
        | transforms.ClassifyImages(handler, fakes.DIGITS, top_k=1,
                                    max_file_bytes=10**7,
                                    max_image_pixels=10**7))
    util.assert_that(predictions | beam.Map(lambda r: r['uri']),
                     util.equal_to(paths), label='CheckPredictions')
    util.assert_that(errors, util.equal_to([]), label='CheckErrors')
  batches = _read_batch_log(log)
  assert sum(count for count, _ in batches) == len(paths)
  assert all(count <= 8 and (pixels <= 625_000 or count == 1)
             for count, pixels in batches), batches
  assert (1, 750_000) in batches
  assert max(count for count, _ in batches) > 2  # Thumbnails fill a batch.


def test_a_jpeg_weighs_the_pixels_it_is_decoded_to():
  fn = transforms._CheckImageFn(  # pylint: disable=protected-access
      10**8, functools.partial(artifact.decoded_size, input_size=(28, 28),
                               ratios=(2, 4, 8)))
  jpeg = image_files.encode_image(image_files.random_pixels(300, 400), 'JPEG')
  png = image_files.encode_image(image_files.random_pixels(300, 400), 'PNG')
  # 300 x 400 at 1/8 is 38 x 50 (libjpeg rounds up), still over 28 x 28.
  assert fn.apply(items.Item('a.jpg', jpeg)).pixels == 50 * 38
  assert fn.apply(items.Item('a.png', png)).pixels == 400 * 300


def test_model_is_loaded_once_per_process_and_shared_by_its_threads(tmp_path):
  paths = []
  for index, (digit, _) in enumerate(image_files.digits(40)):
    path = tmp_path / f'{index}.png'
    path.write_bytes(image_files.encode(digit, 'PNG'))
    paths.append(str(path))
  handler = fakes.FakeClassifierHandler(max_batch_size=4)
  pipeline = test_pipeline.TestPipeline(
      options=pipeline_options.PipelineOptions(
          ['--direct_running_mode=multi_threading', '--direct_num_workers=2']))
  predictions, _ = (pipeline
                    | beam.Create(paths)
                    | transforms.ClassifyImages(
                        handler, [str(d) for d in range(10)], top_k=1,
                        max_file_bytes=10**6, max_image_pixels=10**6))
  util.assert_that(predictions | beam.Map(lambda r: r['uri']),
                   util.equal_to(paths))
  result = pipeline.run()
  result.wait_until_finish()
  query = result.metrics().query(metric.MetricsFilter().with_name(
      'load_model_latency_milli_secs'))
  loads = sum(d.committed.count for d in query['distributions'])
  batches = sum(d.committed.count for d in result.metrics().query(
      metric.MetricsFilter().with_name('inference_batch_latency_micro_secs')
  )['distributions'])
  assert loads == 1
  assert batches >= 10  # Many batches, in two worker threads, one model.


@pytest.mark.parametrize('interval, lines', [(1e-9, 4), (3600, 1)])
def test_progress_is_logged_at_the_first_image_then_per_interval(
    tmp_path, caplog, interval, lines):
  paths = []
  for index, (digit, _) in enumerate(image_files.digits(4)):
    path = tmp_path / f'{index}.png'
    path.write_bytes(image_files.encode(digit, 'PNG'))
    paths.append(str(path))
  handler = fakes.FakeClassifierHandler()
  with caplog.at_level(logging.INFO, logger=transforms.__name__):
    with test_pipeline.TestPipeline() as pipeline:
      _ = (pipeline
           | beam.Create(paths)
           | transforms.ClassifyImages(handler, [str(d) for d in range(10)],
                                       top_k=1, max_file_bytes=10**6,
                                       max_image_pixels=10**6,
                                       progress_interval_secs=interval))
  progress = [r.getMessage() for r in caplog.records
              if 'This worker has scored' in r.getMessage()]
  assert len(progress) == lines  # Here, per image; or the first one only.
  assert progress[0].startswith('This worker has scored its first image')
  assert 'images/s' not in progress[0]  # No rate over one image.
  if lines > 1:
    assert progress[1].startswith('This worker has scored 2 images')
    assert 'images/s' in progress[-1]


def test_a_first_image_that_fails_is_not_logged_as_scored(caplog):
  progress = transforms._ProgressLog(3600)  # pylint: disable=protected-access
  with caplog.at_level(logging.INFO, logger=transforms.__name__):
    progress.record(0, 1)
  assert [r.getMessage() for r in caplog.records] == [
      'This worker has scored 0 images (1 could not be decoded) in 0 s: '
      '0 images/s.']


def _read_ahead_inputs(folder):
  """Inputs of every kind the read step takes, and what each must become:
  (inputs, {uri: 'image' or an error kind}, bytes read from files)."""
  inputs_, expected, on_disk = [], {}, 0
  for index, (digit, _) in enumerate(image_files.digits(7)):
    path = os.path.join(folder, f'{index}.png')
    with open(path, 'wb') as f:
      f.write(image_files.encode(digit, 'PNG'))
    on_disk += os.path.getsize(path)
    inputs_.append(items.Item(path) if index % 2 else path)
    expected[path] = 'image'
  not_an_image = os.path.join(folder, 'notes.png')
  with open(not_an_image, 'wb') as f:
    f.write(b'not an image at all')
  on_disk += os.path.getsize(not_an_image)
  missing = os.path.join(folder, 'missing.png')
  held = items.Item('shard.tfrecord#0', image_files.encode(
      image_files.digits(1)[0][0], 'PNG'))  # A TFRecord's: not read again.
  listing_error = outputs.error_record('bad\\xff.png', errors_lib.INVALID_NAME,
                                       'not UTF-8')
  inputs_ += [not_an_image, missing, held, listing_error]
  expected.update({not_an_image: errors_lib.NOT_AN_IMAGE,
                   missing: errors_lib.NOT_FOUND, held.uri: 'image',
                   listing_error['uri']: errors_lib.INVALID_NAME})
  return inputs_, expected, on_disk


def _what_each_became(images, error_records):
  became = [(key.uri, 'image') for key, _ in images]
  became += [(record['uri'], record['kind']) for record in error_records]
  return sorted(became)


@pytest.mark.parametrize('group_images, group_bytes', [
    (64, 16 << 20), (3, 16 << 20), (1, 16 << 20), (64, 1)])
def test_read_ahead_gives_every_input_one_output_however_it_groups(
    tmp_path, group_images, group_bytes):
  inputs_, expected, on_disk = _read_ahead_inputs(str(tmp_path))
  serial = transforms._ReadCheckAndKeyFn(10**6, 10**8)  # pylint: disable=protected-access
  outputs_ = [serial.output(element) for element in inputs_]
  serial_images = [o for o in outputs_
                   if not isinstance(o, beam.pvalue.TaggedOutput)]
  serial_errors = [o.value for o in outputs_
                   if isinstance(o, beam.pvalue.TaggedOutput)]
  assert _what_each_became(serial_images, serial_errors) == sorted(
      expected.items())
  pipeline = test_pipeline.TestPipeline()
  results = (pipeline
             | beam.Create(inputs_, reshuffle=False)
             | beam.ParDo(transforms._ReadAheadFn(  # pylint: disable=protected-access
                 10**6, 10**8, group_images=group_images,
                 group_bytes=group_bytes)).with_outputs(
                     outputs.ERRORS, main='images'))
  util.assert_that(results.images, util.equal_to(serial_images),
                   label='SameImages')
  util.assert_that(results[outputs.ERRORS], util.equal_to(serial_errors),
                   label='SameErrors')
  result = pipeline.run()
  result.wait_until_finish()
  assert _counters(result)['bytes_read'] == on_disk


def test_a_group_stops_at_the_file_that_fills_its_bytes(tmp_path,
                                                        monkeypatch):
  inputs_, expected, _ = _read_ahead_inputs(str(tmp_path))
  files_read = []
  reads_per_group = []
  read = inputs.read_image_file
  read_group = transforms._ReadAheadFn._read_group  # pylint: disable=protected-access

  def counted_read(uri, max_bytes):
    files_read.append(uri)
    return read(uri, max_bytes)

  def counted_group(self, group):
    before = len(files_read)
    outcome = read_group(self, group)
    reads_per_group.append(len(files_read) - before)
    return outcome

  monkeypatch.setattr(inputs, 'read_image_file', counted_read)
  monkeypatch.setattr(transforms._ReadAheadFn, '_read_group', counted_group)  # pylint: disable=protected-access
  fn = transforms._ReadAheadFn(10**6, 10**8, group_images=4, group_bytes=1)  # pylint: disable=protected-access
  got = _run_dofn(fn, inputs_)
  assert len(got) == len(expected)
  # A group that has read one file's bytes is full: the rest waits.
  assert max(reads_per_group) == 1
  assert len(files_read) == len(set(files_read)) == sum(
      1 for uri in expected if os.path.isabs(uri) and 'missing' not in uri
  ) + 1  # The missing file is tried too.


def _run_dofn(fn, elements):
  """Runs a DoFn's bundle by hand; returns its outputs' values."""
  fn.setup()
  try:
    fn.start_bundle()
    got = [o for e in elements for o in fn.process(e)]
    got += list(fn.finish_bundle())
  finally:
    fn.teardown()
  return [getattr(o, 'value', o) for o in got]


def test_read_ahead_reads_the_next_group_while_the_last_is_handed_on(
    tmp_path, monkeypatch):
  paths = []
  for index, (digit, _) in enumerate(image_files.digits(4)):
    path = str(tmp_path / f'{index}.png')
    with open(path, 'wb') as f:
      f.write(image_files.encode(digit, 'PNG'))
    paths.append(path)
  third_started, release = threading.Event(), threading.Event()
  readers = set()
  read = inputs.read_image_file

  def slow_third(uri, max_bytes):
    readers.add(threading.get_ident())
    if uri == paths[2]:
      third_started.set()
      assert release.wait(timeout=30)
    return read(uri, max_bytes)

  monkeypatch.setattr(inputs, 'read_image_file', slow_third)
  fn = transforms._ReadAheadFn(10**6, 10**8, group_images=2)  # pylint: disable=protected-access
  fn.setup()
  try:
    fn.start_bundle()
    assert not list(fn.process(paths[0]))
    assert not list(fn.process(paths[1]))  # The first group is being read.
    assert not list(fn.process(paths[2]))
    handed_on = fn.process(paths[3])  # Submits the second group.
    first = next(handed_on)
    # The first group's images go on while the second is still being read.
    assert first[0].uri == paths[0]
    assert third_started.wait(timeout=30)
    assert next(handed_on)[0].uri == paths[1]
    release.set()
    assert not list(handed_on)
    rest = list(fn.finish_bundle())
  finally:
    release.set()
    fn.teardown()
  assert [o.value[0].uri for o in rest] == paths[2:]
  assert readers and threading.get_ident() not in readers


def test_a_failure_that_is_not_the_inputs_fails_the_bundle(tmp_path,
                                                           monkeypatch):
  def network_down(uri, max_bytes):
    raise ConnectionError(f'{uri}: connection reset')

  monkeypatch.setattr(inputs, 'read_image_file', network_down)
  fn = transforms._ReadAheadFn(10**6, 10**8, group_images=2)  # pylint: disable=protected-access
  with pytest.raises(ConnectionError, match='connection reset'):
    _run_dofn(fn, [str(tmp_path / 'a.png')])


def test_classify_images_refuses_a_windowed_input():
  pipeline = test_pipeline.TestPipeline()
  windowed = (pipeline | beam.Create(['a.png'])
              | beam.WindowInto(beam.window.FixedWindows(60)))
  with pytest.raises(ValueError, match='global window'):
    _ = windowed | transforms.ClassifyImages(
        fakes.FakeClassifierHandler(), ['0'], top_k=1, max_file_bytes=10,
        max_image_pixels=10)


class _Uris(beam.PTransform):
  """Listed Items -> their URIs; error records pass as they are."""

  def expand(self, listed):
    return listed | beam.Map(
        lambda item: item.uri if isinstance(item, items.Item) else item)


def test_list_images_reads_a_uri_list(tmp_path):
  listing = tmp_path / 'lists' / 'images.txt'
  listing.parent.mkdir()
  listing.write_text('# scored nightly\n\nrelative.png\n/abs/a.png\n'
                     '/gcs/bucket/b.png\nhttp://example.com/c.png\n')
  with test_pipeline.TestPipeline() as pipeline:
    uris = pipeline | transforms.ListImages(
        inputs.InputSource(inputs.URI_LIST, str(listing))) | _Uris()
    util.assert_that(uris, util.equal_to([
        str(tmp_path / 'lists' / 'relative.png'), '/abs/a.png',
        'gs://bucket/b.png', 'http://example.com/c.png']))


def test_list_images_of_a_folder_is_recursive(tmp_path):
  for name in ('a.png', 'sub/b.jpg', 'sub/deeper/c.gif'):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b'x')
  source = inputs.resolve_input(str(tmp_path))
  with test_pipeline.TestPipeline() as pipeline:
    uris = pipeline | transforms.ListImages(source) | _Uris()
    util.assert_that(uris, util.equal_to([
        str(tmp_path / 'a.png'), str(tmp_path / 'sub/b.jpg'),
        str(tmp_path / 'sub/deeper/c.gif')]))


def test_labels_from_folders_label_each_listed_item(tmp_path):
  for name in ('cat/a.png', 'cat/kittens/b.png', 'dog/c.png', 'loose.png'):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b'x')
  source = inputs.resolve_input(str(tmp_path))
  with test_pipeline.TestPipeline() as pipeline:
    listed = pipeline | transforms.ListImages(source, labels_from_folders=True)
    util.assert_that(listed | beam.Map(lambda item: (item.uri, item.label)),
                     util.equal_to([
                         (str(tmp_path / 'cat/a.png'), 'cat'),
                         (str(tmp_path / 'cat/kittens/b.png'), 'cat'),
                         (str(tmp_path / 'dog/c.png'), 'dog'),
                         (str(tmp_path / 'loose.png'), None)]))


def test_items_cross_the_shuffle_as_tuples_beams_coder_encodes_itself():
  item = items.Item('/a/b.png', b'\x89PNG', 'cat', (('id', 7), ('n', None)),
                    784)
  coder = coders.registry.get_coder(typehints.Any)
  # An Item itself is pickled (its class named in every element); its tuple
  # is Beam's own encoding of its fields.
  assert b'batch_predict.items' in coder.encode(item)
  encoded = coder.encode(items.as_tuple(item))
  assert b'batch_predict.items' not in encoded
  assert items.as_item(coder.decode(encoded)) == item
  assert items.as_item('/a/c.png') == items.Item('/a/c.png')
  record = {'uri': '/a/d.png', 'kind': 'not_found'}
  assert items.as_tuple(record) is record


def test_an_items_label_reaches_its_prediction_and_error_records(tmp_path):
  good = tmp_path / 'good.png'
  good.write_bytes(image_files.encode(image_files.digits(1)[0][0], 'PNG'))
  elements = [items.Item(str(good), label='cat', fields=(('id', '7'),)),
              items.Item(str(tmp_path / 'gone.png'), label='dog'),
              items.Item(str(good) + '.copy')]
  (tmp_path / 'good.png.copy').write_bytes(good.read_bytes())
  with test_pipeline.TestPipeline() as pipeline:
    predictions, errors = (
        pipeline
        | beam.Create(elements)
        | transforms.ClassifyImages(fakes.FakeClassifierHandler(),
                                    fakes.DIGITS, top_k=1,
                                    max_file_bytes=10**6,
                                    max_image_pixels=10**6))
    util.assert_that(
        predictions | 'P' >> beam.Map(
            lambda r: (r['uri'], r.get('true_label'), r.get('id'),
                       list(r)[-2:])),
        util.equal_to([
            (str(good), 'cat', '7', ['true_label', 'id']),
            (str(good) + '.copy', None, None, ['score', 'top_k'])]),
        label='CheckPredictions')
    util.assert_that(
        errors | 'E' >> beam.Map(lambda r: (r['uri'], r['true_label'])),
        util.equal_to([(str(tmp_path / 'gone.png'), 'dog')]),
        label='CheckErrors')


def _records(count):
  return [outputs.error_record(f'/images/{i}.png', 'not_found', 'gone')
          for i in range(count)]


def _write(prefix, records, num_shards):
  with test_pipeline.TestPipeline() as pipeline:
    paths = (pipeline
             | beam.Create(records)
             | transforms.WriteRecords(prefix, outputs.ERRORS, num_shards))
    util.assert_that(paths, util.equal_to([
        outputs.shard_path(prefix, outputs.ERRORS, i, num_shards)
        for i in range(num_shards)]))


def test_csv_and_parquet_outputs_hold_the_json_records_in_their_shards(
    tmp_path):
  fields = (('id', 'a,"b"\nc'), ('region', 'eu'))
  records = [outputs.prediction_record(
      f'/images/{i}.png', np.eye(3)[i % 3] * 0.5 + 0.1, ['x', 'y', 'z'], 2,
      fields if i % 2 else (), 'y' if i % 3 else None) for i in range(12)]
  as_json = [json.loads(outputs.to_json_line(r)) for r in records]
  prefixes = {f: str(tmp_path / f / 'run')
              for f in (outputs.CSV, outputs.PARQUET)}
  with test_pipeline.TestPipeline() as pipeline:
    created = pipeline | beam.Create(records)
    for output_format, prefix in prefixes.items():
      _ = created | f'Write{output_format}' >> transforms.WriteRecords(
          prefix, outputs.PREDICTIONS, 3, output_format=output_format,
          field_names=('id', 'region'))
  for output_format, prefix in prefixes.items():
    read, paths = record_files.read_output(prefix, outputs.PREDICTIONS,
                                           output_format)
    assert [os.path.basename(p) for p in paths] == [
        f'run-predictions-0000{i}-of-00003.{output_format}' for i in range(3)]
    assert record_files.by_uri(read) == record_files.by_uri(as_json)
    for index, path in enumerate(paths):  # The same shards as JSON lines.
      assert all(outputs.shard_of(r['uri'], 3) == index
                 for r in record_files.read_shard(path))


@pytest.mark.slow  # 2.1 s here: over the fast tier's ~1.5 s a test.
def test_write_records_writes_every_shard_whole_and_rewrites_on_rerun(
    tmp_path):
  prefix = str(tmp_path / 'out' / 'run')
  records = _records(3)  # Fewer records than shards: some shards are empty.
  _write(prefix, records, num_shards=5)
  files = sorted(os.listdir(tmp_path / 'out'))
  assert files == [f'run-errors-0000{i}-of-00005.jsonl' for i in range(5)]
  for index, name in enumerate(files):
    with open(tmp_path / 'out' / name) as f:
      lines = [json.loads(line) for line in f]
    expected = [r for r in records if outputs.shard_of(r['uri'], 5) == index]
    assert sorted(lines, key=str) == sorted(expected, key=str)
  _write(prefix, records, num_shards=5)  # A retry or re-run: no duplicates.
  assert sorted(os.listdir(tmp_path / 'out')) == files
  assert sorted(outputs.read_records(prefix, outputs.ERRORS),
                key=str) == sorted(records, key=str)


# --------------------------------------------------------------------------
# Hostile inputs, broken models and the publishing step.


class _FixedOutputHandler(base.ModelHandler):
  """A fake model: each image's probabilities are `rows[its bytes]`."""

  def __init__(self, rows):
    super().__init__()
    self._rows = rows

  def load_model(self):
    return None

  def run_inference(self, batch, model, inference_args=None):
    return [base.PredictionResult(image, np.asarray(self._rows[image],
                                                    np.float32))
            for image in batch]


def _strict_json(line):
  def refuse(constant):
    raise ValueError(f'not JSON: {constant}')
  return json.loads(line, parse_constant=refuse)


@pytest.mark.slow  # 1.8 s here: over the fast tier's ~1.5 s a test.
def test_non_finite_model_outputs_become_error_records(tmp_path):
  png = image_files.encode(image_files.digits(1)[0][0], 'PNG')
  rows = {png: [0.25, 0.75, 0.0], png + b'\x00': [float('nan')] * 3,
          png + b'\x00\x00': [float('inf'), 0.0, 0.0]}
  paths = {}
  for index, content in enumerate(rows):
    paths[index] = tmp_path / f'{index}.png'
    paths[index].write_bytes(content)
  prefix = str(tmp_path / 'out' / 'run')
  with test_pipeline.TestPipeline() as pipeline:
    predictions, errors = (
        pipeline
        | beam.Create([str(p) for p in paths.values()])
        | transforms.ClassifyImages(_FixedOutputHandler(rows), ['a', 'b', 'c'],
                                    top_k=2, max_file_bytes=10**6,
                                    max_image_pixels=10**6))
    util.assert_that(errors | beam.Map(lambda r: (r['uri'], r['kind'])),
                     util.equal_to([
                         (str(paths[1]), errors_lib.NON_FINITE_OUTPUT),
                         (str(paths[2]), errors_lib.NON_FINITE_OUTPUT)]),
                     label='CheckErrors')
    _ = predictions | 'WritePredictions' >> transforms.WriteRecords(
        prefix, outputs.PREDICTIONS, 1)
    _ = errors | 'WriteErrors' >> transforms.WriteRecords(
        prefix, outputs.ERRORS, 1)
  lines = []
  for path in outputs.find_shards(prefix):
    lines += (tmp_path / 'out' / path).read_text().splitlines()
  records = [_strict_json(line) for line in lines]
  assert len(records) == 3
  assert [r['score'] for r in records if 'score' in r] == [0.75]
  assert all('retrain' in r['error'].lower() for r in records if 'error' in r)


@pytest.mark.slow  # 1.6 s here: over the fast tier's ~1.5 s a test.
def test_list_images_gives_every_entry_of_a_hostile_folder_once(tmp_path):
  folder = str(tmp_path / 'images')
  expected = image_files.write_hostile_folder(folder)
  # These the listing reports; the other entries are URIs, which reading
  # sorts out (test_pipeline.py runs the whole folder).
  listing_errors = {
      os.path.join(folder, 'caf\\xe9.png'): errors_lib.INVALID_NAME,
      os.path.join(folder, 'sub', 'up'): errors_lib.LINK_LOOP}
  assert set(listing_errors) < set(expected)
  with test_pipeline.TestPipeline() as pipeline:
    listed = pipeline | transforms.ListImages(inputs.resolve_input(folder))
    util.assert_that(listed | beam.Map(
        lambda item: (item['uri'], item['kind']) if isinstance(item, dict)
        else (item.uri, None)), util.equal_to(
            [(uri, listing_errors.get(uri)) for uri in expected]))


def test_list_images_of_a_list_with_a_line_that_is_not_utf8(tmp_path):
  listing = tmp_path / 'list.txt'
  listing.write_bytes(b'a\xe2\x80\xa8.png\ncaf\xe9.png\r\n# caf\xe9\n')
  with test_pipeline.TestPipeline() as pipeline:
    listed = pipeline | transforms.ListImages(inputs.resolve_input(
        str(listing))) | _Uris()
    util.assert_that(listed, util.equal_to([
        str(tmp_path / 'a\u2028.png'),
        outputs.error_record(str(tmp_path / 'caf\\xe9.png'),
                             errors_lib.INVALID_NAME,
                             _invalid_name_message())]))


def _invalid_name_message():
  with pytest.raises(inputs.ReadError) as raised:
    inputs.parse_uri_line(b'\xff', '/')
  return str(raised.value)


def test_publishing_refuses_once_the_lease_was_taken_over(tmp_path):
  prefix = str(tmp_path / 'run')
  earlier = tmp_path / 'run-errors-00000-of-00001.jsonl'
  earlier.write_text('{"uri": "kept"}\n')
  run_id = outputs.new_run_id()
  staged = os.path.join(outputs.staging_folder(prefix, run_id),
                        earlier.name)
  os.makedirs(os.path.dirname(staged))
  with open(staged, 'w') as f:
    f.write('{"uri": "new"}\n')
  publish = transforms._PublishFn(prefix, run_id, [outputs.ERRORS], 1)  # pylint: disable=protected-access
  held = lease_lib.Lease(outputs.lease_path(prefix), 'scoring').acquire()
  try:
    held.lost = True  # What a gs:// heartbeat sets when another took over.
    with transforms.holding_lease(held):
      with pytest.raises(lease_lib.LeaseError, match='not publishing'):
        list(publish.process([staged]))
  finally:
    held.release()
  assert earlier.read_text() == '{"uri": "kept"}\n'
  assert os.path.exists(staged)
  assert list(publish.process([staged])) == [str(earlier)]  # No lease held.
  assert earlier.read_text() == '{"uri": "new"}\n'


def test_each_input_keeps_its_fields_and_bytes_it_came_with(tmp_path):
  good = tmp_path / 'good.png'
  good.write_bytes(image_files.encode(image_files.digits(1)[0][0], 'PNG'))
  inline = image_files.encode(image_files.digits(2)[1][0], 'PNG')
  handler = fakes.FakeClassifierHandler()
  elements = [
      items.Item(str(good), fields=(('id', 7), ('shop', 'north'))),
      # Already holding its bytes (a TFRecord's): never read from a file.
      items.Item('shards/a.tfrecord#3', data=inline, label='1',
                 fields=(('id', 8),)),
      items.Item(str(tmp_path / 'gone.png'), fields=(('id', 9),)),
  ]
  with test_pipeline.TestPipeline() as pipeline:
    predictions, errors = (
        pipeline
        | beam.Create(elements)
        | transforms.ClassifyImages(handler, list(fakes.DIGITS), top_k=1,
                                    max_file_bytes=10**6,
                                    max_image_pixels=10**6))
    util.assert_that(
        predictions | 'Predicted' >> beam.Map(
            lambda r: (r['uri'], r['id'], r.get('shop'), sorted(r))),
        util.equal_to([
            (str(good), 7, 'north',
             ['id', 'label', 'score', 'shop', 'top_k', 'uri']),
            ('shards/a.tfrecord#3', 8, None,
             ['id', 'label', 'score', 'top_k', 'true_label', 'uri'])]),
        label='CheckPredictions')
    util.assert_that(
        errors | 'Failed' >> beam.Map(lambda r: (r['uri'], r['kind'],
                                                 r['id'])),
        util.equal_to([(str(tmp_path / 'gone.png'), errors_lib.NOT_FOUND,
                        9)]), label='CheckErrors')
