# The worker, Flower and queue-exporter image of compose/docker-compose.yml (espeak engine).
# CosyVoice needs its runtime on top: see docs/cosyvoice.md.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng libsndfile1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
# Only what the worker side runs: the shared core, the worker, and the queue exporter.
COPY core core
COPY worker worker
COPY monitoring monitoring
RUN pip install --no-cache-dir '.[worker,stack]'
USER nobody
CMD ["celery", "-A", "worker.app", "worker", "-E", "-Q", "tts", "--loglevel", "INFO"]
