"""The classifier service as the pipeline sees it, and its settings, without importing TensorFlow.

Available once a model version exists in the model repository (``<repo>/classifier/<version>/``);
until then every job records the classifier as skipped with that reason.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.artifacts import Manifest
from services.base import ServiceSpec

# VGG19 multi-head classifier (Fashion Product Images attributes) with a search embedding; Keras on
# TensorFlow, in its own environment

MODEL_FILE = "model.keras"  # the network, in a version directory beside its manifest

FASHION_HEADS = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")


class ClassifierSettings(BaseSettings):
    """``ATELIER_CLASSIFIER_*``: how the classifier is served."""

    model_config = SettingsConfigDict(env_prefix="ATELIER_CLASSIFIER_", extra="ignore")

    top_k: int = Field(default=3, description="Labels reported per head, best first.")
    crop_margin: float = Field(
        default=0.1,
        description="Fraction of a garment box added on each side before a detector crop is classified.",
    )
    keras_cache_dir: Path | None = Field(
        default=None,
        description="Where Keras keeps downloaded weights (the zoo's cache, training only); unset: Keras' "
        "own, ~/.keras.",
    )


@lru_cache
def get_classifier_settings() -> ClassifierSettings:
    return ClassifierSettings()


SPEC = ServiceSpec(
    name="classifier",
    model_path="services.classifier.model:build",
    explains=True,
    settings=ClassifierSettings,
)


class TrainConfig(BaseModel):
    """What ``atelier classifier train`` does; stored in the manifest of the version it writes."""

    heads: list[str] = Field(default_factory=lambda: list(FASHION_HEADS))
    input_size: tuple[int, int] = (224, 224)  # height, width
    embedding_dim: int = 512
    pooling: Literal["avg", "flatten"] = "avg"
    weights: Literal["imagenet"] | None = "imagenet"
    dropout: float = 0.3
    min_images_per_class: int = 500
    rare: Literal["other", "drop"] = "other"
    key_head: str = "articleType"  # the split is stratified on it
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    batch_size: int = 32
    head_epochs: int = 10
    head_lr: float = 1e-3
    finetune_blocks: int = 2  # the last N VGG blocks are trained in stage 2
    finetune_epochs: int = 5
    finetune_lr: float = 1e-5
    patience: int = 3
    augment: bool = True
    class_weighting: bool = True


class ClassifierManifest(Manifest):
    """A classifier version's manifest: the label list of each head, the input, the embedding."""

    heads: dict[str, list[str]]
    input_size: tuple[int, int]  # height, width
    embedding_dim: int
    framework_version: str | None = None
    backend: str | None = None
    backbone: str | None = None
    preprocessing: str | None = None
    training_data_hash: str | None = None
