"""The RunInference handler: loading the artifact, isolating bad images.

Loading is tested with the trained artifact; batching, isolating images the
decoder refuses and RunInference's plumbing with the fake classifier
(tests/helpers/fakes.py), except where a real decoder's errors are the point.
"""

import os
import shutil
import threading

import apache_beam as beam
from apache_beam.ml.inference import base
from apache_beam.testing import test_pipeline
from apache_beam.testing import util
import numpy as np
import pytest

from batch_predict import items
from batch_predict import model_handler
from tests import test_devices
from tests.helpers import fakes
from tests.helpers import image_files
from trainer import artifact
from trainer import errors
from trainer import storage


@pytest.fixture(scope='module')
def classifier(trained_export):
  return model_handler.load_classifier(trained_export)


def _good_images(count):
  return [(image_files.encode(digit, 'PNG'), label)
          for digit, label in image_files.digits(count)]


def test_loads_the_artifact_with_its_labels(classifier):
  assert classifier.labels == tuple(str(d) for d in range(10))
  images = [image for image, _ in _good_images(4)]
  probabilities = classifier.predict(images)
  assert probabilities.shape == (4, 10)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_a_worker_in_the_launchers_process_scores_with_the_checked_model(
    trained_export, monkeypatch):
  loads = []
  real_load = artifact.load
  monkeypatch.setattr(artifact, 'load',
                      lambda model_dir, **kwargs: loads.append(model_dir) or
                      real_load(model_dir, **kwargs))
  artifact.check(trained_export)
  assert len(loads) == 1
  checked = model_handler.load_classifier(trained_export)
  assert len(loads) == 1  # The launcher's SavedModel, not a second load.
  assert checked.predict([_good_images(1)[0][0]]).shape == (1, 10)
  again = model_handler.load_classifier(trained_export)
  assert len(loads) == 2  # Taken once: a later load reads the artifact.
  assert again.labels == checked.labels
  artifact.check(trained_export)
  model_handler.load_classifier(trained_export, device='/CPU:0')
  assert len(loads) == 4  # A chosen device loads its own copy there.
  # Checked without the embeddings signature: a worker that needs it loads.
  embedding = model_handler.load_classifier(trained_export, embeddings=True)
  assert len(loads) == 5
  assert isinstance(embedding.predict([_good_images(1)[0][0]])[0],
                    model_handler.Embedded)


def test_one_undecodable_image_costs_one_result_not_the_batch(classifier):
  good = _good_images(9)
  digit = image_files.digits(1)[0][0]
  truncated = image_files.truncated_jpeg(digit)
  corrupt_png = bytearray(image_files.encode(digit, 'PNG'))
  corrupt_png[60:80] = bytes(20)  # Zeroes over the compressed pixels.
  batch = [image for image, _ in good]
  batch[2:2] = [truncated]
  batch[7:7] = [bytes(corrupt_png)]
  splits = []
  results = model_handler.predict_isolating_failures(
      classifier, batch, on_split=lambda: splits.append(1))
  assert len(results) == len(batch)
  failures = [i for i, r in enumerate(results)
              if isinstance(r, model_handler.DecodeFailure)]
  assert failures == [2, 7]
  assert results[2].kind == errors.UNDECODABLE
  assert 'truncated or corrupt' in results[2].message
  assert 'Graph execution error' not in results[2].message
  assert splits  # The batch was split to find them.
  # Every good image got the probabilities it gets on its own.
  alone = classifier.predict([image for image, _ in good])
  scored = np.stack([r for i, r in enumerate(results) if i not in (2, 7)])
  np.testing.assert_allclose(scored, alone, atol=1e-5)


def test_a_batch_of_good_images_is_one_call():
  classifier = fakes.FakeClassifier()
  splits = []
  results = model_handler.predict_isolating_failures(
      classifier, [image for image, _ in _good_images(5)],
      on_split=lambda: splits.append(1))
  assert not splits
  assert classifier.calls == [5]
  assert all(isinstance(r, np.ndarray) for r in results)


def test_out_of_memory_halves_the_batch_until_every_image_is_scored():
  classifier = fakes.FakeClassifier(oom_above=3)
  images = [image for image, _ in _good_images(16)]
  halvings = []
  results = model_handler.predict_isolating_failures(
      classifier, images, on_out_of_memory=lambda: halvings.append(1))
  assert all(isinstance(r, np.ndarray) for r in results)
  np.testing.assert_allclose(
      np.stack(results), fakes.FakeClassifier().predict(images), atol=1e-6)
  # 16 -> 8 -> 4 -> 2: the batches that ran out of memory were halved.
  assert len(halvings) == 1 + 2 + 4
  assert max(classifier.calls) == 16 and set(classifier.calls) == {16, 8, 4, 2}


def test_an_image_that_alone_exhausts_memory_gets_one_failure():
  images = [image for image, _ in _good_images(8)]
  huge = images[5]
  classifier = fakes.FakeClassifier(oom_on=[huge])
  results = model_handler.predict_isolating_failures(classifier, images)
  failures = [i for i, r in enumerate(results)
              if isinstance(r, model_handler.DecodeFailure)]
  assert failures == [5]
  assert results[5].kind == errors.TOO_LARGE_FOR_MEMORY
  assert '--max_image_pixels' in results[5].message
  others = [image for i, image in enumerate(images) if i != 5]
  np.testing.assert_allclose(
      np.stack([r for i, r in enumerate(results) if i != 5]),
      fakes.FakeClassifier().predict(others), atol=1e-6)


def test_pixel_bounded_batching_weighs_each_image_at_least_a_slot():
  kwargs = model_handler.batching_kwargs(4, 16, max_batch_pixels=1600)
  weigh = kwargs['element_size_fn']
  # A fixed target: BatchElements never adapts it below an image's weight.
  assert (kwargs['min_batch_size'], kwargs['max_batch_size']) == (1600, 1600)
  # Keyed elements (the scorer's) weigh their key's pixels, at least 100
  # (a 16th of the budget) and at most the budget.
  assert weigh((items.Item('a', pixels=900), b'...')) == 900
  assert weigh((items.Item('b', pixels=3), b'...')) == 100
  assert weigh((items.Item('c', pixels=10**6), b'...')) == 1600
  assert weigh(items.Item('d', pixels=250)) == 250
  assert weigh(b'bytes alone') == 100
  # Without a pixel bound, batches are counted as before.
  for off in (None, 0):
    assert model_handler.batching_kwargs(4, 16, off) == {
        'min_batch_size': 4, 'max_batch_size': 16}


def test_each_model_copy_goes_to_the_next_gpu_with_memory_growth_on():
  recorder = test_devices.GrowthRecorder()
  two = test_devices.gpus(2)
  picked = [model_handler.prepare_device(two, recorder) for _ in range(4)]
  names = [device for device, _ in picked]
  assert sorted(set(names)) == ['/GPU:0', '/GPU:1']
  assert names[0] != names[1] and names[:2] == names[2:]  # Round robin.
  assert all(enable for _, enable in recorder.calls)
  assert 'Found 2 GPU(s)' in picked[0][1]
  assert model_handler.prepare_device([], recorder) == (
      None, 'No GPU found: running on the CPU.')


@pytest.mark.slow
def test_the_gpu_code_path_runs_on_the_cpu(trained_export, classifier, caplog):
  # An explicit device, as a GPU worker gets one: here the CPU.
  on_device = model_handler.load_classifier(trained_export, device='/CPU:0')
  images = [image for image, _ in _good_images(3)]
  np.testing.assert_allclose(on_device.predict(images),
                             classifier.predict(images), atol=1e-6)
  handler = model_handler.ImageClassifierHandler(trained_export,
                                                 model_copies=1)
  assert handler.share_model_across_processes()
  with caplog.at_level('INFO', logger=model_handler.__name__):
    loaded = handler.load_model()
  assert loaded.device is None
  assert "on the CPU (one of 1 copies shared by this worker's processes)" in (
      caplog.text)


@pytest.mark.slow
def test_a_model_shared_across_processes_still_isolates_failures():
  # model_copies: RunInference serves the model from a proxy process
  # (Beam's multi_process_shared); errors come back through it.
  good = _good_images(6)
  elements = [(f'digit-{i}.png', image) for i, (image, _) in enumerate(good)]
  elements.append(('cut.png', b'\x89PNG' + fakes.UNDECODABLE))
  handler = fakes.FakeClassifierHandler(
      model_copies=1, oom_above=2, min_batch_size=7, max_batch_size=7)

  def kind(element):
    uri, result = element
    inference = result.inference
    if isinstance(inference, model_handler.DecodeFailure):
      return uri, inference.kind
    return uri, 'scored'

  with test_pipeline.TestPipeline() as pipeline:
    kinds = (pipeline
             | beam.Create(elements)
             | base.RunInference(base.KeyedModelHandler(handler))
             | beam.Map(kind))
    util.assert_that(kinds, util.equal_to(
        [(uri, 'scored') for uri, _ in elements[:-1]] +
        [('cut.png', errors.UNDECODABLE)]))


def test_power_of_two_chunks_cover_the_batch_in_order():
  batch = list(range(37))
  chunks = model_handler.power_of_two_chunks(batch)
  assert [len(c) for c in chunks] == [32, 4, 1]
  assert [x for c in chunks for x in c] == batch
  assert [len(c) for c in model_handler.power_of_two_chunks(range(64))] == [64]
  assert model_handler.power_of_two_chunks([]) == []


def test_handler_returns_prediction_results_for_a_batch():
  handler = fakes.FakeClassifierHandler(max_batch_size=16)
  assert handler.batch_elements_kwargs() == {'max_batch_size': 16}
  model = handler.load_model()
  # 7 images: model calls of 4, 2 and 1 images; the bad one is in the 2.
  images = [image for image, _ in _good_images(6)]
  images.insert(5, b'\xff\xd8\xff' + fakes.UNDECODABLE)
  results = list(handler.run_inference(images, model))
  assert [r.example for r in results] == images
  assert all(r.model_id == 'fake://model' for r in results)
  assert [isinstance(r.inference, model_handler.DecodeFailure)
          for r in results] == [False] * 5 + [True, False]
  # The call of 2 fails and is split in two calls of 1; then the last 1.
  assert model.calls == [4, 2, 1, 1, 1]
  alone = model.predict(images[:5] + images[6:])
  np.testing.assert_allclose(
      np.stack([r.inference for i, r in enumerate(results) if i != 5]),
      alone, atol=1e-5)
  assert handler.get_num_bytes(images) == sum(len(i) for i in images)


@pytest.mark.slow  # 1.9 s here: over the fast tier's ~1.5 s a test.
def test_loads_an_artifact_from_a_bucket(gcs_server, trained_export,
                                         classifier):
  storage.upload_tree(trained_export, 'gs://test-bucket/run/export')
  remote = model_handler.load_classifier('gs://test-bucket/run/export')
  images = [image for image, _ in _good_images(3)]
  np.testing.assert_allclose(remote.predict(images),
                             classifier.predict(images), atol=1e-6)


def test_refuses_an_incomplete_artifact(trained_export, tmp_path):
  copy = str(tmp_path / 'export')
  shutil.copytree(trained_export, copy)
  os.remove(os.path.join(copy, artifact.COMPLETE_MARKER))
  handler = model_handler.ImageClassifierHandler(copy)
  with pytest.raises(artifact.ArtifactError, match='incomplete'):
    handler.load_model()


def test_runinference_keeps_each_uri_with_its_result():
  good = _good_images(5)
  elements = [(f'digit-{i}.png', image) for i, (image, _) in enumerate(good)]
  truncated = image_files.truncated_jpeg(image_files.digits(1)[0][0])
  elements.append(('cut.jpg', truncated))
  expected_labels = {f'digit-{i}.png': str(np.argmax(p)) for i, p in
                     enumerate(fakes.FakeClassifier().predict(
                         [g for g, _ in good]))}
  expected_labels['cut.jpg'] = errors.UNDECODABLE

  def label(element):
    uri, result = element
    if isinstance(result.inference, model_handler.DecodeFailure):
      return uri, result.inference.kind
    return uri, str(np.argmax(result.inference))

  handler = fakes.FakeClassifierHandler(
      fail_on=[truncated], min_batch_size=len(elements),
      max_batch_size=len(elements))
  with test_pipeline.TestPipeline() as pipeline:
    labels = (pipeline
              | beam.Create(elements)
              | base.RunInference(base.KeyedModelHandler(handler))
              | beam.Map(label))
    util.assert_that(labels, util.equal_to(list(expected_labels.items())))


def test_the_keyed_handler_counts_a_batchs_image_bytes_without_its_keys():
  handler = model_handler.KeyedImageHandler(
      model_handler.ImageClassifierHandler('unused', max_batch_size=8))
  # Keys that cannot be pickled: Beam's own count pickles every batch's keys.
  batch = [(threading.Lock(), b'abc'), (threading.Lock(), b'de')]
  with pytest.raises(TypeError):
    base.KeyedModelHandler(handler._unkeyed).get_num_bytes(batch)  # pylint: disable=protected-access
  assert handler.get_num_bytes(batch) == 5
  # Batching is the image handler's own (pixel-bounded weights).
  assert handler.batch_elements_kwargs() == (
      handler._unkeyed.batch_elements_kwargs())  # pylint: disable=protected-access
