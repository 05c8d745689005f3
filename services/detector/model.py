"""The detector as a served model: Detectron2's GeneralizedRCNN, several images in one forward pass.

Per garment: category, score, box, mask as COCO RLE, area, and the body region the category covers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image
from pycocotools import mask as mask_util

from common.errors import ArtifactError
from services.base import Model, Prediction, ServiceSpec, latest_version_dir
from services.base import read_manifest as base_read_manifest
from services.base import verify_files as base_verify_files
from services.detector.categories import BODY_REGION
from services.detector.config import DetectorSettings, get_detector_settings

log = logging.getLogger(__name__)

WEIGHTS = "model_final.pth"
CONFIG = "config.yaml"
MANIFEST = "manifest.json"


def device_for(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class ServingSettings(Protocol):
    test_size: int | None
    max_size: int | None
    score_threshold: float | None
    device: str
    threads: int | None


class RCNNModel(Model):
    """A published Detectron2 version (weights, config, manifest with ``classes``), served batched.

    Subclasses name the service, may add config keys before the version's config is read
    (``_extend_cfg``: a custom head's) and turn each image's instances into a prediction (``_predict``).
    """

    name: str

    def __init__(self, version_dir: Path, settings: ServingSettings) -> None:
        self.version_dir = version_dir
        self.version = version_dir.name
        self.settings = settings
        self.manifest: dict[str, Any] = {}
        self.cfg: CfgNode | None = None
        self.net: torch.nn.Module | None = None
        self.resize: T.ResizeShortestEdge | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    def load(self) -> None:
        if self.net is not None:
            return
        self.manifest = base_read_manifest(self.name, self.version_dir, ("classes",))
        base_verify_files(self.name, self.version_dir, self.manifest, (WEIGHTS, CONFIG))
        cfg = get_cfg()
        self._extend_cfg(cfg)
        cfg.merge_from_file(str(self.version_dir / CONFIG))
        cfg.MODEL.WEIGHTS = str(self.version_dir / WEIGHTS)
        cfg.MODEL.DEVICE = device_for(self.settings.device)
        if self.settings.score_threshold is not None:
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = self.settings.score_threshold
        if cfg.MODEL.ROI_HEADS.NUM_CLASSES != len(self.classes):
            raise ArtifactError(
                f"the config has {cfg.MODEL.ROI_HEADS.NUM_CLASSES} classes, "
                f"the manifest lists {len(self.classes)}"
            )
        check_checkpoint_classes(self.version_dir / WEIGHTS, len(self.classes))
        torch.set_num_threads(self.settings.threads or len(os.sched_getaffinity(0)))
        net = build_model(cfg)
        DetectionCheckpointer(net).load(cfg.MODEL.WEIGHTS)
        net.eval()
        size = self.settings.test_size or cfg.INPUT.MIN_SIZE_TEST
        self.resize = T.ResizeShortestEdge([size, size], self.settings.max_size or cfg.INPUT.MAX_SIZE_TEST)
        self.cfg, self.net = cfg, net
        log.info(
            "%s %s loaded: %d classes, test size %d, on %s (%d threads)",
            self.name,
            self.version,
            len(self.classes),
            size,
            cfg.MODEL.DEVICE,
            torch.get_num_threads(),
        )

    def predict(self, images: Sequence[Image.Image]) -> list[Prediction]:
        """All images through one ``GeneralizedRCNN`` forward (Detectron2 batches a list of inputs)."""
        if self.net is None or self.resize is None:
            raise RuntimeError("call load() before predict()")
        if not images:
            return []
        inputs = [self._input(image) for image in images]
        with torch.no_grad():
            outputs = self.net(inputs)
        return [
            self._predict(image, out["instances"].to("cpu"))
            for image, out in zip(images, outputs, strict=True)
        ]

    def body_region(self, category: str) -> str | None:
        """The part of the body a category covers: DeepFashion2's categories here."""
        return BODY_REGION.get(category)

    def _extend_cfg(self, cfg: CfgNode) -> None:
        """Config keys of custom heads, added before the version's config is merged; none here."""

    def _predict(self, image: Image.Image, instances: Any) -> Prediction:
        return Prediction(output={"garments": self.garments(instances)})

    def _input(self, image: Image.Image) -> dict[str, Any]:
        assert self.resize is not None
        bgr = np.asarray(image.convert("RGB"))[:, :, ::-1]
        resized = self.resize.get_transform(bgr).apply_image(bgr)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
        return {"image": tensor, "height": image.height, "width": image.width}

    def garments(self, instances: Any) -> list[dict[str, Any]]:
        """Per instance: category, score, box, body region, COCO RLE mask and its area."""
        garments = []
        masks = instances.pred_masks.numpy() if instances.has("pred_masks") else [None] * len(instances)
        for box, score, label, mask in zip(
            instances.pred_boxes.tensor.numpy(),
            instances.scores.numpy(),
            instances.pred_classes.numpy(),
            masks,
            strict=True,
        ):
            category = self.classes[int(label)]
            garment: dict[str, Any] = {
                "category": category,
                "score": round(float(score), 6),
                "box": [round(float(v), 2) for v in box],
                "body_region": self.body_region(category),
            }
            if mask is not None:
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                garment["mask"] = {
                    "size": [int(v) for v in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                }
                garment["area"] = int(mask.sum())
            garments.append(garment)
        return garments


class DetectorModel(RCNNModel):
    name = "detector"

    def __init__(self, version_dir: Path, settings: DetectorSettings | None = None) -> None:
        super().__init__(version_dir, settings or get_detector_settings())


def read_manifest(version_dir: Path) -> dict[str, Any]:
    return base_read_manifest("detector", version_dir, ("classes",))


def verify_files(version_dir: Path, manifest: dict[str, Any]) -> None:
    base_verify_files("detector", version_dir, manifest, (WEIGHTS, CONFIG))


def check_checkpoint_classes(weights: Path, classes: int) -> None:
    """Detectron2's checkpointer only warns on a shape mismatch; a wrong class count must stop the load."""
    state = torch.load(weights, map_location="cpu", weights_only=False)
    tensors = state.get("model", state)
    head = tensors.get("roi_heads.box_predictor.cls_score.weight")
    if head is None:
        raise ArtifactError(f"{weights} has no box predictor (roi_heads.box_predictor.cls_score.weight)")
    if head.shape[0] != classes + 1:  # + background
        raise ArtifactError(f"{weights} predicts {head.shape[0] - 1} classes, the manifest lists {classes}")


def build(spec: ServiceSpec, repository: Path) -> DetectorModel:
    version_dir = latest_version_dir(repository / spec.name)
    if version_dir is None:
        raise ArtifactError(f"no detector version in {repository / spec.name}")
    return DetectorModel(version_dir)
