# atelier-worker: the orchestrating worker (job dispatch and image fetching, the default command) and
# the properties analyser (`worker --concurrency 1 --pool solo --service properties`), which needs
# numpy and scipy only. No model framework: the classifier, detector and segmenter have images of their
# own. Build from the repository root:
#
#   docker build -f deploy/docker/worker.Dockerfile -t atelier-worker:latest .
#
# Needs BuildKit (the default builder since Docker Engine 23) for the pip cache mounts, which keep the
# cache out of every layer. deploy/README.md lists every image.

FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, in their own layer, read from pyproject.toml (deploy/docker/requirements.py): a
# change to the source does not reinstall numpy and scipy.
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python requirements.py worker > /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "pip>=24" \
    && pip install -r /tmp/requirements.txt

# The project itself, as a wheel (not editable), without its dependencies: they are the layer above.
COPY atelier ./atelier
COPY common ./common
COPY db ./db
COPY gateway ./gateway
COPY services ./services
COPY worker ./worker
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && pip check


FROM python:3.11-slim AS runtime

# A fixed uid, the same on every host and in Kubernetes (runAsUser 10001), so volume ownership agrees.
# /data/blobs is where compose and Kubernetes mount the blobs; an empty named volume takes the ownership
# of the directory on first use. Nothing mounts the model repository here (only the model services read
# it; this image's processes read the served versions from Postgres): /models and
# ATELIER_MODEL_REPOSITORY stay so that every image agrees on where it would be.
RUN groupadd --system --gid 10001 atelier \
    && useradd --system --uid 10001 --gid atelier --create-home --home-dir /home/atelier \
        --shell /usr/sbin/nologin atelier \
    && install -d -o atelier -g atelier -m 0750 /data/blobs \
    && install -d -o atelier -g atelier -m 0755 /models

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ATELIER_BLOB_DIR=/data/blobs \
    ATELIER_MODEL_REPOSITORY=/models \
    ATELIER_LOG_FORMAT=json

USER 10001:10001
WORKDIR /home/atelier
# Prometheus metrics at /metrics (ATELIER_WORKER_METRICS_PORT)
EXPOSE 9100

# A Celery control ping through the broker that only this container's worker answers (atelier/cli.py).
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["atelier", "ping", "--timeout", "5"]

ENTRYPOINT ["atelier"]
CMD ["worker", "--concurrency", "8", "--pool", "threads"]
