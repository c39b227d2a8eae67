"""The input side of training: datasets, their checks, and tf.data pipelines."""
