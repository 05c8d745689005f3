# atelier-gateway: the HTTP API (`atelier gateway`), and the migrations (`atelier db upgrade`) run with
# the same image. No worker dependencies and no model framework. Build from the repository root:
#
#   docker build -f deploy/docker/gateway.Dockerfile -t atelier-gateway:latest .
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
# change to the source does not reinstall them.
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python requirements.py gateway > /tmp/requirements.txt
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
# the API, and its Prometheus metrics at /metrics
EXPOSE 8000

# Liveness only (/healthz answers without the database); compose and Kubernetes probe /readyz for
# readiness. python's urllib: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["atelier"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "8000"]
