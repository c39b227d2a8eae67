# One image definition, two targets, both with this repository's package
# installed on Apache Beam's own Python SDK image (pinned below):
#
#   trainer  (default)  Vertex AI custom training. Entry point
#                       `python -m trainer.task`; runs as a non-root user;
#                       TensorFlow's CUDA libraries come as pip wheels, so
#                       the same image uses the GPUs Vertex attaches.
#   dataflow            Dataflow custom container for batch_predict. Keeps
#                       the Beam SDK's /opt/apache/beam/boot entry point and
#                       the root user: Dataflow mounts root-owned folders
#                       under /var/opt that the worker must write to.
#   dataflow_gpu        The same for Dataflow GPU workers, with TensorFlow's
#                       CUDA libraries (pip wheels): without them TensorFlow
#                       silently runs on the CPU of a GPU worker.
#
# Build (see README.md, "Containers" and "Scoring on Dataflow GPU workers"):
#   docker build -t IMAGE_URI .                         # trainer
#   docker build --target dataflow -t IMAGE_URI .       # Dataflow workers
#   docker build --target dataflow_gpu -t IMAGE_URI .   # Dataflow GPU workers

ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0

FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /opt/tf-image-classifier
COPY setup.py README.md ./
COPY trainer/ trainer/
COPY batch_predict/ batch_predict/
COPY config/ config/
# The versions setup.py pins (tests/test_docker.py checks they agree).
RUN pip install "tensorflow==2.21.0" "apache-beam[gcp]==2.77.0" ".[hypertune]"

FROM base AS dataflow
# ENTRYPOINT stays the Beam SDK's /opt/apache/beam/boot.

FROM base AS dataflow_gpu
# ENTRYPOINT and the root user stay the Beam SDK's, as in `dataflow`. The
# NVIDIA driver is the VM's (Dataflow installs it with the
# worker_accelerator option's install-nvidia-driver) and is mounted under
# /usr/local/nvidia on Google Cloud's Container-Optimized OS; TensorFlow's
# CUDA wheels bring everything else.
ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib
RUN pip install "tensorflow[and-cuda]==2.21.0"

FROM base AS trainer
ARG TENSORFLOW_CUDA=1
RUN if [ "$TENSORFLOW_CUDA" = 1 ]; then \
      pip install "tensorflow[and-cuda]==2.21.0"; fi && \
    useradd --create-home --uid 1000 trainer
USER trainer
ENTRYPOINT ["python", "-m", "trainer.task"]
