# atelier-classifier: the classifier's worker (`worker --service classifier`), TensorFlow/Keras and never
# torch. VARIANT picks the build of TensorFlow: cpu (tensorflow-cpu, the `classifier` extra as
# pyproject.toml has it) or cuda (tensorflow[and-cuda] with the same version specifier: TensorFlow's own
# pip build with the CUDA libraries as wheels, so the base stays python:3.11-slim and the host needs only
# the NVIDIA driver and container toolkit). Build from the repository root:
#
#   docker build -f deploy/docker/classifier.Dockerfile -t atelier-classifier:latest .
#   docker build -f deploy/docker/classifier.Dockerfile --build-arg VARIANT=cuda \
#       -t atelier-classifier:latest-cuda .
#
# The model is not in the image: the worker reads it from the model repository mounted at /models, and
# exits with status 3 when no version is there. Needs BuildKit for the pip cache mounts.

ARG VARIANT=cpu

FROM python:3.11-slim AS builder

ARG VARIANT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, in their own layer, read from pyproject.toml (deploy/docker/requirements.py,
# which also swaps tensorflow-cpu for tensorflow[and-cuda] in the cuda variant).
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python requirements.py worker,classifier --variant "$VARIANT" > /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "pip>=24" \
    && pip install -r /tmp/requirements.txt

# The project itself, as a wheel, without its dependencies: `.[classifier]` would add tensorflow-cpu
# beside tensorflow[and-cuda]. Then the image's one framework is checked: TensorFlow, never torch.
COPY atelier ./atelier
COPY common ./common
COPY db ./db
COPY gateway ./gateway
COPY services ./services
COPY worker ./worker
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && pip check \
    && python -c "from importlib.util import find_spec as f; assert f('tensorflow') and not f('torch'), 'want TensorFlow, no torch'"


FROM python:3.11-slim AS runtime-base

# A fixed uid, the same on every host and in Kubernetes (runAsUser 10001), so volume ownership agrees.
# /data/blobs and /models are where compose and Kubernetes mount the blobs and the model repository; an
# empty named volume takes the ownership of these directories on first use.
RUN groupadd --system --gid 10001 atelier \
    && useradd --system --uid 10001 --gid atelier --create-home --home-dir /home/atelier \
        --shell /usr/sbin/nologin atelier \
    && install -d -o atelier -g atelier -m 0750 /data/blobs \
    && install -d -o atelier -g atelier -m 0755 /models

COPY --from=builder /opt/venv /opt/venv

# TF_CPP_MIN_LOG_LEVEL=1: TensorFlow's C++ INFO lines are not JSON and say nothing an operator needs.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ATELIER_BLOB_DIR=/data/blobs \
    ATELIER_MODEL_REPOSITORY=/models \
    ATELIER_LOG_FORMAT=json \
    TF_CPP_MIN_LOG_LEVEL=1

# tensorflow-cpu: nothing to add
FROM runtime-base AS runtime-cpu

# TensorFlow takes nearly all of a GPU's memory when it starts; growing on demand lets the detector and
# the segmenter share the GPU with it.
FROM runtime-base AS runtime-cuda
ENV TF_FORCE_GPU_ALLOW_GROWTH=true

# DL3006 (tag the image): runtime-${VARIANT} is a stage of this file, which hadolint cannot resolve
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime

USER 10001:10001
WORKDIR /home/atelier
# Prometheus metrics at /metrics (ATELIER_WORKER_METRICS_PORT)
EXPOSE 9100

# A Celery control ping through the broker that only this container's worker answers (atelier/cli.py).
# The start period covers importing TensorFlow and loading the model.
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD ["atelier", "ping", "--timeout", "5"]

ENTRYPOINT ["atelier"]
CMD ["worker", "--concurrency", "1", "--pool", "solo", "--service", "classifier"]
