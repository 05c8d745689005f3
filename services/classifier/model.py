"""The multi-head VGG19: one forward pass answers every head and gives the search embedding.

Network: VGG19 convolutional backbone → pooling → a shared dense layer (the embedding, L2-normalised on
its own output) → one softmax head per attribute. The head layout and labels come from the artifact's
manifest, never from constants here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from common.errors import ArtifactError
from common.outputs import EMBEDDING_DIM, Classification, HeadPrediction, LabelScore
from services.artifacts import read_manifest, verify_files
from services.base import Model, Prediction, latest_version_factory
from services.classifier.config import (
    MODEL_FILE,
    ClassifierManifest,
    ClassifierSettings,
    TrainConfig,
    get_classifier_settings,
)
from services.classifier.preprocess import PREPROCESSING, Box, crop, preprocess_batch

__all__ = ["ClassifierModel", "build", "build_network", "check_heads"]

log = logging.getLogger(__name__)

EMBEDDING = "embedding"
LAST_CONV = "block5_conv4"


def build_network(
    heads: Mapping[str, Sequence[str]],
    input_size: tuple[int, int],
    *,
    embedding_dim: int = EMBEDDING_DIM,
    pooling: str = "avg",
    dropout: float = 0.3,
    backbone_weights: str | Path | None = None,
) -> tuple[keras.Model, keras.Model, keras.Model]:
    """(net, backbone, top): ``net`` = ``top(backbone(image))``, with one output per head plus the embedding.

    ``top`` is a model of its own so that training can fit it on cached backbone features.
    """
    backbone = keras.applications.VGG19(
        include_top=False,
        weights=str(backbone_weights) if backbone_weights else None,
        input_shape=(*input_size, 3),
    )
    features = keras.Input(backbone.output.shape[1:], name="features")
    pooled = (
        keras.layers.GlobalAveragePooling2D()(features)
        if pooling == "avg"
        else keras.layers.Flatten()(features)
    )
    shared = keras.layers.Dense(embedding_dim, activation="relu", name="shared")(pooled)
    dropped = keras.layers.Dropout(dropout)(shared)
    outputs: dict[str, Any] = {
        head: keras.layers.Dense(len(labels), activation="softmax", dtype="float32", name=head)(dropped)
        for head, labels in heads.items()
    }
    outputs[EMBEDDING] = keras.layers.UnitNormalization(dtype="float32", name=EMBEDDING)(shared)
    top = keras.Model(features, outputs, name="top")
    image = keras.Input((*input_size, 3), name="image")
    net = keras.Model(image, top(backbone(image)), name="classifier")
    return net, backbone, top


def network_manifest(
    heads: Mapping[str, Sequence[str]], config: TrainConfig, files: dict[str, str], **recorded: Any
) -> ClassifierManifest:
    """The manifest of a version holding a network built by ``build_network``: what the serving code
    checks (heads, input, preprocessing, embedding) and how it was made; ``recorded`` adds the rest
    (training-data hash, timings, metrics)."""
    return ClassifierManifest(
        name="classifier",
        framework="keras",
        framework_version=keras.__version__,
        backend=keras.backend.backend(),
        backbone="vgg19",
        heads={head: list(labels) for head, labels in heads.items()},
        input_size=config.input_size,
        preprocessing=PREPROCESSING,
        embedding_dim=config.embedding_dim,
        train_config=config.model_dump(mode="json"),
        files=files,
        **recorded,
    )


class ClassifierModel(Model):
    """A version of the classifier loaded from the model repository."""

    name = "classifier"

    def __init__(self, version_dir: Path, settings: ClassifierSettings | None = None) -> None:
        self.version_dir = version_dir
        self.version = version_dir.name
        self.settings = settings or get_classifier_settings()
        self.net: keras.Model | None = None
        self._manifest: ClassifierManifest | None = None

    @property
    def manifest(self) -> ClassifierManifest:
        if self._manifest is None:
            raise RuntimeError("call load() before reading the manifest")
        return self._manifest

    @property
    def heads(self) -> dict[str, list[str]]:
        return dict(self.manifest.heads)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.manifest.input_size

    def load(self) -> None:
        if self.net is not None:
            return
        manifest = read_manifest(self.name, self.version_dir, ClassifierManifest)
        verify_files(self.name, self.version_dir, manifest, (MODEL_FILE,))
        net = keras.models.load_model(self.version_dir / MODEL_FILE, compile=False)
        check_heads(net, manifest)
        self._manifest = manifest
        self.net = net
        log.info("classifier %s loaded: heads %s, input %s", self.version, list(self.heads), self.input_size)

    def predict(self, images: Sequence[Image.Image]) -> list[Prediction]:
        return self.predict_arrays(preprocess_batch(images, self.input_size))

    def explain(self, image: Image.Image, prediction: Prediction) -> dict[str, bytes]:
        """A Grad-CAM overlay per head, for the label the head chose."""
        from services.classifier.explain import gradcam, overlay_png

        rgb = image.convert("RGB")
        return {
            head: overlay_png(rgb, gradcam(self, rgb, head, prediction.output[head]["label"]))
            for head in self.heads
        }

    def predict_crops(self, image: Image.Image, boxes: Sequence[Sequence[float]]) -> list[Prediction]:
        """Each garment box cropped (with the configured margin), then the same preprocessing."""
        return self.predict([crop(image, _box(box), self.settings.crop_margin) for box in boxes])

    def predict_arrays(self, batch: NDArray[np.float32]) -> list[Prediction]:
        if self.net is None:
            raise RuntimeError("call load() before predict()")
        if len(batch) == 0:
            return []
        raw = self.net.predict_on_batch(batch)
        return [self._prediction(raw, i) for i in range(len(batch))]

    def _prediction(self, raw: Mapping[str, Any], i: int) -> Prediction:
        output: dict[str, HeadPrediction] = {}
        for head, labels in self.heads.items():
            probabilities = np.asarray(raw[head][i], dtype=np.float64)
            order = np.argsort(-probabilities, kind="stable")[: self.settings.top_k]
            top = [LabelScore(label=labels[j], score=round(float(probabilities[j]), 6)) for j in order]
            output[head] = HeadPrediction(label=top[0].label, score=top[0].score, top=top)
        embedding = np.asarray(raw[EMBEDDING][i], dtype=np.float64)
        return Prediction(output=Classification(output).dump(), embedding=[float(v) for v in embedding])


def _box(box: Sequence[float]) -> Box:
    x1, y1, x2, y2 = box
    return (x1, y1, x2, y2)


def check_heads(net: keras.Model, manifest: ClassifierManifest) -> None:
    """The label lists must match the network's heads, and the embedding the database column."""
    shapes = {name: tuple(tensor.shape) for name, tensor in net.output.items()}
    for head, labels in manifest.heads.items():
        if head not in shapes:
            raise ArtifactError(f"the manifest names head {head!r}; the network has {sorted(shapes)}")
        if shapes[head][-1] != len(labels):
            raise ArtifactError(
                f"head {head!r} has {shapes[head][-1]} outputs but the manifest lists {len(labels)} labels"
            )
    if shapes.get(EMBEDDING, (None,))[-1] != EMBEDDING_DIM:
        raise ArtifactError(
            f"the embedding has {shapes.get(EMBEDDING)} dimensions; the database column holds {EMBEDDING_DIM}"
        )


build = latest_version_factory(ClassifierModel)  # SPEC.model_path
