# atelier-detector: the detector's worker (`worker --service detector`), torch + upstream Detectron2 and
# never TensorFlow. segmenter.Dockerfile is this file with the other service name (a test keeps the two
# in step). VARIANT picks the build of torch:
#   cpu   torch and torchvision from PyTorch's CPU wheel index (no CUDA libraries: gigabytes smaller);
#   cuda  the package registry's default build, which is the CUDA one and brings the CUDA libraries as
#         wheels, so the base stays python:3.11-slim and the host needs only the NVIDIA driver and
#         container toolkit.
# Build from the repository root:
#
#   docker build -f deploy/docker/detector.Dockerfile -t atelier-detector:latest .
#   docker build -f deploy/docker/detector.Dockerfile --build-arg VARIANT=cuda \
#       -t atelier-detector:latest-cuda .
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

# The compiler for Detectron2's C++ ops and git for its source: in this stage only.
# DL3008 (pin apt versions): Debian's point releases replace pinned versions, and nothing of these
# packages reaches the runtime stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ git \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, read from pyproject.toml (deploy/docker/requirements.py). torch and torchvision
# come first, from the variant's index, with the versions the `detector` extra pins; the rest then
# finds them installed and leaves them.
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python requirements.py worker,detector --variant "$VARIANT" > /tmp/requirements.txt \
    && python requirements.py worker,detector --variant "$VARIANT" --only torch,torchvision > /tmp/torch.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "$VARIANT" = cpu ]; then index=https://download.pytorch.org/whl/cpu; \
    else index=https://pypi.org/simple; fi \
    && pip install "pip>=24" \
    && pip install --index-url "$index" -r /tmp/torch.txt \
    && pip install -r /tmp/requirements.txt

# Upstream Detectron2 from its repository at a pinned commit, built against the torch above (hence
# --no-build-isolation). setuptools<81: detectron2.model_zoo imports pkg_resources, which 81 drops.
#
# Its C++ ops are built without CUDA kernels, in both variants: there is no nvcc here and no GPU at
# build time, so setup.py builds a CppExtension (FORCE_CUDA=0 says so). Those ops serve only rotated
# boxes, deformable convolution and the fast COCO evaluator; the Mask R-CNN FPN models of the detector
# and the segmenter use torchvision's RoIAlign and NMS, whose CUDA kernels ship in the cuda variant's
# torchvision wheel, so inference runs wholly on the GPU. Compiling the kernels would take an
# nvidia/cuda devel builder matching torch's CUDA version, a Python 3.11 of its own (the venv would then
# not fit python:3.11-slim) and a list of GPU architectures, for ops nothing here calls; a config that
# needs them fails loudly ("not compiled with GPU support"), and then is the time to add that stage.
ARG DETECTRON2_REF=02b5c4e295e990042a714712c21dc79b731e8833
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "setuptools<81" "wheel>=0.43" \
    && FORCE_CUDA=0 pip install --no-build-isolation \
        "detectron2 @ git+https://github.com/facebookresearch/detectron2.git@${DETECTRON2_REF}"

# The project itself, as a wheel, without its dependencies: they are the layers above. Then the image's
# one framework is checked: torch and Detectron2's ops, never TensorFlow.
COPY atelier ./atelier
COPY common ./common
COPY db ./db
COPY gateway ./gateway
COPY services ./services
COPY worker ./worker
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && pip check \
    && python -c "import torch, detectron2._C, detectron2.modeling; from importlib.util import find_spec as f; assert not f('tensorflow'), 'TensorFlow beside torch'"


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

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ATELIER_BLOB_DIR=/data/blobs \
    ATELIER_MODEL_REPOSITORY=/models \
    ATELIER_LOG_FORMAT=json

# On CPU one image per predict() call: micro-batching Mask R-CNN was measured slower per image there.
FROM runtime-base AS runtime-cpu
ENV ATELIER_WORKER_MAX_BATCH=1

# On a GPU a batch fills the device better.
FROM runtime-base AS runtime-cuda
ENV ATELIER_WORKER_MAX_BATCH=8

# DL3006 (tag the image): runtime-${VARIANT} is a stage of this file, which hadolint cannot resolve
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime

USER 10001:10001
WORKDIR /home/atelier
# Prometheus metrics at /metrics (ATELIER_WORKER_METRICS_PORT)
EXPOSE 9100

# A Celery control ping through the broker that only this container's worker answers (atelier/cli.py).
# The start period covers importing torch and loading the model.
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD ["atelier", "ping", "--timeout", "5"]

ENTRYPOINT ["atelier"]
CMD ["worker", "--concurrency", "1", "--pool", "solo", "--service", "detector"]
