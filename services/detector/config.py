"""The detector service as the pipeline sees it, and its settings, without importing torch.

Available once a model version exists in the model repository (``<repo>/detector/<version>/``);
until then every job records the detector as skipped with that reason.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.base import ServiceSpec

SPEC = ServiceSpec(
    name="detector",
    model_path="services.detector.model:build",
    description=(
        "Detectron2 Mask R-CNN on DeepFashion2: 13 garment categories with boxes and masks; torch environment"
    ),
    crops_to="classifier",
)


class DetectorSettings(BaseSettings):
    """``ATELIER_DETECTOR_*``: how the detector serves."""

    model_config = SettingsConfigDict(env_prefix="ATELIER_DETECTOR_", extra="ignore")

    test_size: int | None = Field(
        default=None, description="Shorter image side at inference; unset: the model version's own."
    )
    max_size: int | None = Field(
        default=None, description="Longer image side limit at inference; unset: the model version's own."
    )
    score_threshold: float | None = Field(
        default=None, description="Detections kept from this score; unset: the model version's own."
    )
    device: str = Field(default="auto", description='"cpu", "cuda", or "auto": cuda when there is a GPU.')
    # None is not "torch's default": workers default BLAS and OpenMP to one thread for the numpy
    # analysers, which would halve a CPU forward pass
    threads: int | None = Field(
        default=None,
        description="torch's intra-op threads in the worker; unset: one per core it sees. Scaling on CPU, "
        "give each replica its share (cores / replicas).",
    )


@lru_cache
def get_detector_settings() -> DetectorSettings:
    return DetectorSettings()


class TrainConfig(BaseModel):
    """What ``atelier detector train`` does; stored with the version it writes."""

    base: str = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"  # a Detectron2 model-zoo config
    weights: str | None = "zoo"  # "zoo": the base config's COCO checkpoint; None: from scratch
    batch_size: int = 4
    base_lr: float = 0.01
    max_iter: int = 20_000
    warmup_iters: int = 500
    steps: tuple[int, ...] = (14_000, 18_000)
    checkpoint_period: int = 2_000
    eval_period: int = 0  # 0: evaluate at the end only
    min_size_train: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    score_threshold: float = 0.5
    num_workers: int = 2
    seed: int = 0
    # further config keys and values, as Detectron2's command line takes them (e.g. lighter heads)
    opts: list[str] = Field(default_factory=list)


# R18-FPN from scratch with GroupNorm and light heads, for machines without pretrained weights or a GPU:
# FrozenBN diverges from scratch; the model zoo's 4-conv GN box head and 256-channel heads cost 4x more
# per iteration on CPU than the whole backbone at these sizes (measured; bench/README.md)
SCRATCH_OPTS = [
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "128",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.ROI_BOX_HEAD.NUM_CONV", "0",
    "MODEL.ROI_BOX_HEAD.NUM_FC", "2",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "512",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "2",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "128",
    "MODEL.ROI_MASK_HEAD.NUM_CONV", "2",
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", "2",
]  # fmt: skip

SCRATCH_FIELDS: dict[str, Any] = {
    "base": "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml",
    "weights": None,
    "base_lr": 0.04,
    "max_iter": 2_000,
    "warmup_iters": 50,
    "steps": (1_500,),
    "min_size_train": (256,),
    "max_size_train": 256,
    "min_size_test": 256,
    "max_size_test": 256,
    "num_workers": 1,
    "opts": SCRATCH_OPTS,
}

PRESETS: dict[str, TrainConfig] = {
    # DeepFashion2 at the zoo's schedule scaled to its 191k training images, COCO-pretrained
    "r50-fpn": TrainConfig(),
    "r101-fpn": TrainConfig(base="COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"),
    "r18-fpn-scratch": TrainConfig(**SCRATCH_FIELDS),
}
