"""Train convolutional image classifiers with tf.distribute and export them.

`python -m trainer.task --job_dir=DIR` trains, evaluates and exports a model
(see README.md). The modules are usable as a library too.
"""

__version__ = '0.1.0'
