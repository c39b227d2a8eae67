"""The artifact contract's reading side: layout, metadata, completeness, and
the whole-artifact check the scorer runs before any work."""

import os
import shutil
import time

import pytest

from tests import helpers
from trainer import artifact
from trainer import export
from trainer import storage


def test_artifact_layout_and_metadata(trained_export):
  assert sorted(os.listdir(trained_export)) == [
      artifact.COMPLETE_MARKER, 'metadata.json', 'model.keras', 'saved_model']
  metadata = artifact.read_metadata(trained_export)
  assert metadata['labels'] == [str(d) for d in range(10)]
  assert metadata['input'] == {'height': 28, 'width': 28, 'channels': 1,
                               'encoded_formats': ['jpeg', 'png', 'gif',
                                                   'bmp'],
                               'jpeg_dct_ratios': [2, 4, 8]}
  assert metadata['dataset'] == 'mnist_sample'
  assert metadata['model'] == 'deep_mnist'
  assert 0 <= metadata['metrics']['test_accuracy'] <= 1
  assert set(metadata['versions']) >= {'tensorflow', 'keras', 'trainer'}


def test_incomplete_artifact_is_refused(trained_export, tmp_path):
  copy = str(tmp_path / 'export')
  shutil.copytree(trained_export, copy)
  os.remove(os.path.join(copy, artifact.COMPLETE_MARKER))
  with pytest.raises(artifact.ArtifactError, match='incomplete'):
    artifact.read_metadata(copy)
  with pytest.raises(artifact.ArtifactError, match='incomplete'):
    export.load_keras_model(copy)
  with pytest.raises(artifact.ArtifactError, match='no such model directory'):
    artifact.read_metadata(str(tmp_path / 'missing'))



def test_an_unknown_format_version_is_refused(trained_export, tmp_path):
  copy = str(tmp_path / 'export')
  os.makedirs(copy)
  for name in (artifact.METADATA_FILE, artifact.COMPLETE_MARKER):
    shutil.copy(os.path.join(trained_export, name), copy)
  path = os.path.join(copy, artifact.METADATA_FILE)
  metadata = helpers.read_json(path)
  metadata['format_version'] = artifact.FORMAT_VERSION + 1
  storage.write_json(path, metadata)
  with pytest.raises(artifact.ArtifactError, match='format_version 2'):
    artifact.read_metadata(copy)


def test_check_returns_the_labels_of_a_whole_artifact(trained_export):
  assert artifact.check(trained_export) == tuple(str(d) for d in range(10))


def test_check_with_embeddings_loads_the_embeddings_signature(
    trained_export):
  # Loads it, and compares its output size with metadata.json's.
  assert artifact.check(trained_export, embeddings=True) == tuple(
      str(d) for d in range(10))


def test_the_checked_artifact_is_warmed_up_once_before_it_is_handed_over(
    trained_export):
  """An in-process runner's first batch finds the signatures called once
  already (on a thread of their own), and takes the artifact only after."""
  artifact.check(trained_export, embeddings=True)
  loaded = artifact._CHECKED[trained_export]  # pylint: disable=protected-access
  calls = []

  def spy(name, signature):
    def call(**kwargs):
      time.sleep(0.3)  # A slow warm-up: the handover waits for it.
      calls.append((name, kwargs['image_bytes'].shape.as_list()))
      return signature(**kwargs)
    return call

  artifact._CHECKED[trained_export] = loaded._replace(  # pylint: disable=protected-access
      serve=spy('serve', loaded.serve), embed=spy('embed', loaded.embed))
  artifact.warm_up_checked(trained_export)
  artifact.warm_up_checked(trained_export)  # Started once only.
  taken = artifact.take_checked(trained_export)
  assert calls == [('serve', [1]), ('embed', [1])]
  assert taken.saved_model is loaded.saved_model
  assert artifact.take_checked(trained_export) is None  # Handed over once.
  artifact.warm_up_checked(trained_export)  # Nothing checked: nothing to do.


def test_a_warm_up_that_fails_leaves_the_failure_to_the_real_call(
    trained_export):
  artifact.check(trained_export)
  loaded = artifact._CHECKED[trained_export]  # pylint: disable=protected-access

  def broken(**kwargs):
    raise ValueError('no such op')

  artifact._CHECKED[trained_export] = loaded._replace(serve=broken)  # pylint: disable=protected-access
  artifact.warm_up_checked(trained_export)
  assert artifact.take_checked(trained_export).serve is broken


def _forget_the_embeddings(export_dir):
  """metadata.json as an artifact from before embeddings has it."""
  path = os.path.join(export_dir, artifact.METADATA_FILE)
  metadata = helpers.read_json(path)
  del metadata['embeddings']
  storage.write_json(path, metadata)


def _misstate_the_embedding_size(export_dir):
  path = os.path.join(export_dir, artifact.METADATA_FILE)
  metadata = helpers.read_json(path)
  metadata['embeddings']['size'] = 5
  storage.write_json(path, metadata)


@pytest.mark.parametrize('damage,words', [
    (_forget_the_embeddings, 'exported before embeddings existed'),
    (_misstate_the_embedding_size, 'embeddings of size 3136 but '
     'metadata.json says 5'),
])
def test_check_with_embeddings_refuses_an_artifact_without_them(
    trained_export, tmp_path, damage, words):
  copy = str(tmp_path / 'export')
  shutil.copytree(trained_export, copy)
  damage(copy)
  with pytest.raises(artifact.ArtifactError, match=words) as raised:
    artifact.check(copy, embeddings=True)
  assert '\n' not in str(raised.value)


def _remove_saved_model(export_dir):
  shutil.rmtree(os.path.join(export_dir, artifact.SAVED_MODEL_DIR))


def _rename_the_signature(export_dir):
  """A SavedModel whose only signature has another name."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  module = tf.Module()
  module.serve = tf.function(
      lambda image_bytes: {'probabilities': tf.zeros([1, 10])},
      input_signature=[tf.TensorSpec([None], tf.string, name='image_bytes')])
  target = os.path.join(export_dir, artifact.SAVED_MODEL_DIR)
  shutil.rmtree(target)
  tf.saved_model.save(module, target, signatures={'other': module.serve})


def _change_the_labels(export_dir):
  path = os.path.join(export_dir, artifact.METADATA_FILE)
  metadata = helpers.read_json(path)
  metadata['labels'] = ['cat', 'dog', 'bird']
  storage.write_json(path, metadata)


@pytest.mark.parametrize('damage,words', [
    (_remove_saved_model, 'no SavedModel that loads in saved_model/'),
    (_rename_the_signature, "has no 'serving_default' signature"),
    (_change_the_labels, 'returns 10 probabilities but metadata.json lists 3 '
     'labels'),
])
def test_check_refuses_a_broken_artifact_in_one_line(trained_export, tmp_path,
                                                     damage, words):
  copy = str(tmp_path / 'export')
  shutil.copytree(trained_export, copy)
  damage(copy)
  with pytest.raises(artifact.ArtifactError, match=words) as raised:
    artifact.check(copy)
  assert '\n' not in str(raised.value)
  assert raised.value.kind == artifact.ArtifactError.kind


def test_a_jpeg_decodes_at_the_largest_scale_still_over_the_input():
  # 4000 x 3000 for 28 x 28: 1/8 gives 500 x 375, still over 28.
  assert artifact.jpeg_dct_ratio(4000, 3000, (28, 28)) == 8
  # 100 x 60 for 28 x 28: 1/2 gives 50 x 30; 1/4 would give 25 x 15.
  assert artifact.jpeg_dct_ratio(100, 60, (28, 28)) == 2
  # The smaller side counts against the larger target side (EXIF may turn
  # the image), and libjpeg rounds up: 57 / 2 -> 29 >= 28.
  assert artifact.jpeg_dct_ratio(1000, 57, (20, 28)) == 2
  assert artifact.jpeg_dct_ratio(55, 55, (28, 28)) == 2  # 28 x 28.
  assert artifact.jpeg_dct_ratio(54, 54, (28, 28)) == 1  # 27 < 28.
  assert artifact.jpeg_dct_ratio(4000, 3000, (28, 28), ratios=()) == 1
  assert artifact.decoded_size('jpeg', 4001, 3000, (28, 28)) == (501, 375)
  assert artifact.decoded_size('PNG', 4000, 3000, (28, 28)) == (4000, 3000)


def test_artifacts_from_before_dct_scaling_decode_at_full_size():
  old = {'input': {'height': 28, 'width': 20, 'channels': 1}}
  assert artifact.jpeg_dct_ratios(old) == ()
  assert artifact.input_size(old) == (28, 20)
  new = {'input': {'height': 28, 'width': 28, 'jpeg_dct_ratios': [2, 4, 8]}}
  assert artifact.jpeg_dct_ratios(new) == (2, 4, 8)


def test_a_job_dir_as_model_dir_is_no_artifact_and_names_its_export(
    trained_job_dir):
  with pytest.raises(artifact.ArtifactError) as error:
    artifact.read_metadata(trained_job_dir)
  message = str(error.value)
  assert 'no model artifact there' in message
  assert f'--model_dir={os.path.join(trained_job_dir, "export")}' in message
  assert 'still be running' not in message


def test_an_empty_folder_as_model_dir_is_no_artifact(tmp_path):
  with pytest.raises(artifact.ArtifactError,
                     match='no model artifact there .*JOB_DIR/export'):
    artifact.read_metadata(str(tmp_path))
