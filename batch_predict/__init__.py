"""Score image collections with a trained classifier in an Apache Beam pipeline.

`python -m batch_predict.pipeline --model_dir=EXPORT --input=GLOB
--output=PREFIX` (see README.md and `pipeline.py`).
"""
