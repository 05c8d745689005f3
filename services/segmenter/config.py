"""The segmenter service as the pipeline sees it, and its settings, without importing its framework.

Available once a model version exists in the model repository (``<repo>/segmenter/<version>/manifest.json``);
until then every job records segmenter as skipped with that reason.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.base import ServiceSpec
from services.detector.config import SCRATCH_FIELDS, TrainConfig

SPEC = ServiceSpec(
    name="segmenter",
    model_path="services.segmenter.model:build",
    description=(
        "Attribute Mask R-CNN (Fashionpedia-style): per-garment masks, style attributes, "
        "cut-outs, body regions; torch environment"
    ),
)


class SegmenterSettings(BaseSettings):
    """``ATELIER_SEGMENTER_*``: how the segmenter serves."""

    model_config = SettingsConfigDict(env_prefix="ATELIER_SEGMENTER_", extra="ignore")

    test_size: int | None = Field(
        default=None, description="Shorter image side at inference; unset: the model version's own."
    )
    max_size: int | None = Field(
        default=None, description="Longer image side limit at inference; unset: the model version's own."
    )
    score_threshold: float | None = Field(
        default=None, description="Garments kept from this score; unset: the model version's own."
    )
    attribute_threshold: float | None = Field(
        default=None, description="Attributes reported from this score; unset: the model version's own."
    )
    device: str = Field(default="auto", description='"cpu", "cuda", or "auto": cuda when there is a GPU.')
    # None is not "torch's default": workers default BLAS and OpenMP to one thread for the numpy
    # analysers, which would halve a CPU forward pass
    threads: int | None = Field(
        default=None,
        description="torch's intra-op threads in the worker; unset: one per core it sees. Scaling on CPU, "
        "give each replica its share (cores / replicas).",
    )
    colours: int = Field(default=3, description="Dominant colours reported per garment.")


@lru_cache
def get_segmenter_settings() -> SegmenterSettings:
    return SegmenterSettings()


class SegmenterTrainConfig(TrainConfig):
    """The detector's training settings, plus the attribute head's."""

    attribute_loss_weight: float = 1.0
    attribute_threshold: float = 0.5
    # the attribute classifier reads the box head's features (the Fashionpedia baseline) and, for N > 0, a
    # texture descriptor of N convolutions over a pooler of its own (heads.py): patterns need it
    # (tests/segmenter: stripe F1 37 -> 75, plain 0 -> 80 at the CI budget); 0 for the baseline alone
    attribute_convs: int = 2


PRESETS: dict[str, SegmenterTrainConfig] = {
    "r50-fpn": SegmenterTrainConfig(),
    "r18-fpn-scratch": SegmenterTrainConfig(**SCRATCH_FIELDS),
}
