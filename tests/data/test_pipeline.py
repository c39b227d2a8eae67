"""make_dataset: shapes and colours of other inputs, shuffling each epoch."""

import numpy as np

from tests.helpers import datasets
from trainer.data import pipeline
from trainer.data import sources


def test_array_source_resizes_and_colours_for_other_input_shapes():
  source = sources.load_mnist_sample(0.1, 0.1)
  images, _ = datasets.batches(source, 'validation', (32, 32, 3))
  assert images.shape == (500, 32, 32, 3)
  np.testing.assert_allclose(images[..., 0], images[..., 2])


def test_training_pipeline_shuffles_each_epoch():
  source = sources.load_mnist_sample(0.1, 0.1, train_examples=256)
  dataset = pipeline.make_dataset(source, 'train', 256, (28, 28, 1),
                                  training=True, seed=3)
  first, second = [y for _, y in dataset.take(1)], [y for _, y in
                                                    dataset.take(1)]
  assert sorted(first[0].numpy()) == sorted(second[0].numpy())
  assert list(first[0].numpy()) != list(second[0].numpy())

