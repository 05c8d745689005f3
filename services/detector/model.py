"""The detector as a served model: Detectron2's GeneralizedRCNN, several images in one forward pass.

Per garment: category, score, box, mask as COCO RLE, area, and the body region the category covers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


class DetectorModel(Model):
    name = "detector"

    def __init__(self, version_dir: Path, settings: DetectorSettings | None = None) -> None:
        self.version_dir = version_dir
        self.version = version_dir.name
        self.settings = settings or get_detector_settings()
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
        self.manifest = read_manifest(self.version_dir)
        verify_files(self.version_dir, self.manifest)
        cfg = get_cfg()
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
        net = build_model(cfg)
        DetectionCheckpointer(net).load(cfg.MODEL.WEIGHTS)
        net.eval()
        size = self.settings.test_size or cfg.INPUT.MIN_SIZE_TEST
        self.resize = T.ResizeShortestEdge([size, size], self.settings.max_size or cfg.INPUT.MAX_SIZE_TEST)
        self.cfg, self.net = cfg, net
        log.info(
            "detector %s loaded: %d classes, test size %d, on %s",
            self.version,
            len(self.classes),
            size,
            cfg.MODEL.DEVICE,
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
            Prediction(output={"garments": self._garments(out["instances"].to("cpu"))}) for out in outputs
        ]

    def _input(self, image: Image.Image) -> dict[str, Any]:
        assert self.resize is not None
        bgr = np.asarray(image.convert("RGB"))[:, :, ::-1]
        resized = self.resize.get_transform(bgr).apply_image(bgr)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
        return {"image": tensor, "height": image.height, "width": image.width}

    def _garments(self, instances: Any) -> list[dict[str, Any]]:
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
                "body_region": BODY_REGION.get(category),
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
