"""Settings, training config and manifest of a Detectron2 service, without importing torch (the gateway
and the deploy checks read them where no framework is installed)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.artifacts import Manifest

# the files of a version besides its manifest
WEIGHTS = "model_final.pth"
CONFIG = "config.yaml"


class RCNNSettings(BaseSettings):
    """How a Detectron2 service serves; each service subclasses it with its own ``env_prefix``."""

    model_config = SettingsConfigDict(extra="ignore")

    test_size: int | None = Field(
        default=None, description="Shorter image side at inference; unset: the model version's own."
    )
    max_size: int | None = Field(
        default=None, description="Longer image side limit at inference; unset: the model version's own."
    )
    score_threshold: float | None = Field(
        default=None, description="Garments kept from this score; unset: the model version's own."
    )
    # 0.5, Detectron2's own per-class NMS_THRESH_TEST: 0.7 left 147 of 150 boxes for 82 drawn garments
    # (the duplicates overlap the garment at box IoU 0.45-0.67), 0.5 left 109, none of the 82 lost
    nms_iou: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Class-agnostic suppression: of garments whose boxes overlap above this IoU, whatever "
        "their classes, only the highest-scoring is kept (Detectron2 suppresses per class only, at 0.5); "
        "1: off.",
    )
    min_area: float = Field(
        default=0.001,
        ge=0,
        lt=1,
        description="Garments smaller than this fraction of the image (mask pixels, else the box) are "
        "dropped; 0: none.",
    )
    class_thresholds: bool = Field(
        default=True,
        description="Apply the model version's per-class score thresholds (manifest "
        "class_score_thresholds) in place of the served threshold for those classes.",
    )
    device: str = Field(default="auto", description='"cpu", "cuda", or "auto": cuda when there is a GPU.')
    # None is not "torch's default": workers default BLAS and OpenMP to one thread for the numpy
    # analysers, which would halve a CPU forward pass
    threads: int | None = Field(
        default=None,
        description="torch's intra-op threads in the worker; unset: one per core it sees. Scaling on CPU, "
        "give each replica its share (cores / replicas).",
    )


class TrainConfig(BaseModel):
    """What ``atelier <service> train`` does; stored in the manifest of the version it writes."""

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


class TestInput(BaseModel):
    __test__ = False  # not a pytest class

    min_size_test: int
    max_size_test: int


class RCNNManifest(Manifest):
    """A Detectron2 version's manifest: its classes in the network's order, and how it was trained."""

    classes: list[str]
    torch_version: str | None = None
    input: TestInput | None = None
    score_threshold: float | None = None
    base_config: str | None = None
    # class name -> the score a garment of that class is served from, in place of score_threshold
    # (calibrated per class, e.g. on the test split); absent in older versions: none
    class_score_thresholds: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _thresholds_name_classes(self) -> RCNNManifest:
        unknown = sorted(set(self.class_score_thresholds) - set(self.classes))
        if unknown:
            raise ValueError(
                f"class_score_thresholds for unknown classes {unknown}; the classes are {self.classes}"
            )
        outside = {k: v for k, v in self.class_score_thresholds.items() if not 0 <= v <= 1}
        if outside:
            raise ValueError(f"class_score_thresholds outside [0, 1]: {outside}")
        return self
