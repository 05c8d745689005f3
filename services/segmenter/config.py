"""The segmenter service as the pipeline sees it, and its settings, without importing its framework.

Available once a model version exists in the model repository (``<repo>/segmenter/<version>/manifest.json``);
until then every job records segmenter as skipped with that reason.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.base import ServiceSpec
from services.rcnn.config import SCRATCH_FIELDS, RCNNManifest, RCNNSettings, TrainConfig

# attribute Mask R-CNN (Fashionpedia-style): per-garment masks, style attributes, cut-outs, body regions;
# torch environment


class SegmenterSettings(RCNNSettings):
    """``ATELIER_SEGMENTER_*``: how the segmenter serves."""

    model_config = SettingsConfigDict(env_prefix="ATELIER_SEGMENTER_", extra="ignore")

    attribute_threshold: float | None = Field(
        default=None, description="Attributes reported from this score; unset: the model version's own."
    )
    colours: int = Field(default=3, description="Dominant colours reported per garment.")


@lru_cache
def get_segmenter_settings() -> SegmenterSettings:
    return SegmenterSettings()


SPEC = ServiceSpec(name="segmenter", model_path="services.segmenter.model:build", settings=SegmenterSettings)


class SegmenterTrainConfig(TrainConfig):
    """The Detectron2 services' training config, plus the attribute head's."""

    attribute_loss_weight: float = 1.0
    attribute_threshold: float = 0.5
    # the attribute classifier reads the box head's features (the Fashionpedia baseline) and, for N > 0, a
    # texture descriptor of N convolutions over a pooler of its own (heads.py): patterns need it
    # (tests/services/segmenter: stripe F1 37 -> 75, plain 0 -> 80 at the CI budget); 0 for the baseline alone
    attribute_convs: int = 2


PRESETS: dict[str, SegmenterTrainConfig] = {
    "r50-fpn": SegmenterTrainConfig(),
    "r18-fpn-scratch": SegmenterTrainConfig(**SCRATCH_FIELDS),
}


class SegmenterManifest(RCNNManifest):
    """A segmenter version's manifest: the Detectron2 one, plus each class's supercategory (its body
    region) and the attributes with the dataset's ids and the threshold they were evaluated at."""

    supercategories: list[str] = Field(default_factory=list)
    attributes: list[str] = Field(default_factory=list)
    attribute_ids: list[int] = Field(default_factory=list)
    attribute_threshold: float = 0.5
