# The worker, Flower and queue-exporter image of compose/docker-compose.yml. Two targets:
#   espeak     (the default, last stage): the embedded engine, a small image
#   cosyvoice  the CosyVoice-300M-SFT runtime on CPU torch as well (about 3 GB more); the model
#              itself is not in the image: Compose mounts it read-only (docs/deployment.md)
# docker build --target cosyvoice -t tts-batch:cosyvoice .
FROM python:3.11-slim-bookworm AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng libsndfile1 \
 && rm -rf /var/lib/apt/lists/*
# A virtualenv, so that the CosyVoice stage can install into it with the project's own script
# and the final stage can copy it whole.
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
# Only what the worker side runs: the shared core, the worker, and the queue exporter.
COPY core core
COPY worker worker
COPY monitoring monitoring
RUN pip install --no-cache-dir '.[worker,stack]'
# The user `nobody` has no home: caches (numba, the CosyVoice engine's exported graphs when the
# model directory is read-only) go to /cache, a volume in Compose.
RUN mkdir -p /cache && chown nobody:nogroup /cache
ENV HOME=/cache XDG_CACHE_HOME=/cache
CMD ["celery", "-A", "worker.app", "worker", "-E", "-Q", "tts", "--loglevel", "INFO"]

# Build stage: pyworld builds from source (a C++ compiler), the rest comes as wheels.
FROM base AS cosyvoice-build
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
# PyTorch's CPU wheel index: PyPI's Linux torch is a CUDA build of several GB. The script
# refuses a CUDA torch, so a wrong index fails the build rather than bloating the image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY scripts/install-cosyvoice.sh scripts/cosyvoice-requirements.txt scripts/
RUN PIP_NO_CACHE_DIR=1 TORCH_INDEX_URL="$TORCH_INDEX_URL" scripts/install-cosyvoice.sh /opt/venv

FROM base AS cosyvoice
COPY --from=cosyvoice-build /opt/venv /opt/venv
ENV TTS_ENGINE=cosyvoice
USER nobody

FROM base AS espeak
USER nobody
