"""The detector service as the pipeline sees it, and its settings, without importing torch.

Available once a model version exists in the model repository (``<repo>/detector/<version>/``);
until then every job records the detector as skipped with that reason.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import SettingsConfigDict

from services.base import ServiceSpec
from services.rcnn.config import SCRATCH_FIELDS, RCNNSettings, TrainConfig

# Detectron2 Mask R-CNN on DeepFashion2: 13 garment categories with boxes and masks; torch environment


class DetectorSettings(RCNNSettings):
    """``ATELIER_DETECTOR_*``: how the detector serves."""

    model_config = SettingsConfigDict(env_prefix="ATELIER_DETECTOR_", extra="ignore")


@lru_cache
def get_detector_settings() -> DetectorSettings:
    return DetectorSettings()


SPEC = ServiceSpec(
    name="detector",
    model_path="services.detector.model:build",
    crops_to="classifier",
    settings=DetectorSettings,
)


PRESETS: dict[str, TrainConfig] = {
    # DeepFashion2 at the zoo's schedule scaled to its 191k training images, COCO-pretrained
    "r50-fpn": TrainConfig(),
    "r101-fpn": TrainConfig(base="COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"),
    "r18-fpn-scratch": TrainConfig(**SCRATCH_FIELDS),
}
