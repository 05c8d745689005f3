"""A Detectron2 service's served model: a published version's ``GeneralizedRCNN``, several images in one
forward pass, each image's instances post-processed (``postprocess``: per-class thresholds, minimum area,
class-agnostic suppression) and turned into garments (``masks.garments``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from common.errors import ArtifactError
from common.outputs import BodyRegion, Detection, Garment
from services.artifacts import read_manifest, verify_files
from services.base import Model, Prediction
from services.rcnn.config import CONFIG, WEIGHTS, RCNNManifest, RCNNSettings
from services.rcnn.masks import garments
from services.rcnn.postprocess import PostProcess, postprocess

log = logging.getLogger(__name__)

ManifestT = TypeVar("ManifestT", bound=RCNNManifest)
SettingsT = TypeVar("SettingsT", bound=RCNNSettings)


def device_for(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class RCNNModel(Model, Generic[ManifestT, SettingsT]):
    """A published Detectron2 version (weights, config, manifest with ``classes``), served batched.

    Subclasses name the service and its manifest type, may add config keys before the version's config
    is read (``_extend_cfg``: a custom head's), say which body region each class covers
    (``_body_regions``) and turn each image's instances into a prediction (``_predict``).
    """

    name: str
    manifest_type: type[ManifestT]

    def __init__(self, version_dir: Path, settings: SettingsT) -> None:
        self.version_dir = version_dir
        self.version = version_dir.name
        self.settings = settings
        self._manifest: ManifestT | None = None
        self.regions: dict[str, BodyRegion] = {}
        self.cfg: CfgNode | None = None
        self.net: torch.nn.Module | None = None
        self.resize: T.ResizeShortestEdge | None = None
        self.post = PostProcess(score_threshold=0.0)

    @property
    def manifest(self) -> ManifestT:
        if self._manifest is None:
            raise RuntimeError("call load() before reading the manifest")
        return self._manifest

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    def load(self) -> None:
        if self.net is not None:
            return
        self._manifest = read_manifest(self.name, self.version_dir, self.manifest_type)
        verify_files(self.name, self.version_dir, self.manifest, (WEIGHTS, CONFIG))
        cfg = get_cfg()
        self._extend_cfg(cfg)
        cfg.merge_from_file(str(self.version_dir / CONFIG))
        cfg.MODEL.WEIGHTS = str(self.version_dir / WEIGHTS)
        cfg.MODEL.DEVICE = device_for(self.settings.device)
        if self.settings.score_threshold is not None:
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = self.settings.score_threshold
        self.post = PostProcess.of(
            self.classes,
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            self.manifest.class_score_thresholds if self.settings.class_thresholds else {},
            self.settings.min_area,
            self.settings.nms_iou,
        )
        # the heads keep down to the lowest class threshold; postprocess applies each class's own
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = self.post.lowest_threshold
        if cfg.MODEL.ROI_HEADS.NUM_CLASSES != len(self.classes):
            raise ArtifactError(
                f"the config has {cfg.MODEL.ROI_HEADS.NUM_CLASSES} classes, "
                f"the manifest lists {len(self.classes)}"
            )
        check_checkpoint_classes(self.version_dir / WEIGHTS, len(self.classes))
        self._check(cfg)
        self.regions = self._body_regions()
        torch.set_num_threads(self.settings.threads or len(os.sched_getaffinity(0)))
        net = build_model(cfg)
        DetectionCheckpointer(net).load(cfg.MODEL.WEIGHTS)
        net.eval()
        size = self.settings.test_size or cfg.INPUT.MIN_SIZE_TEST
        self.resize = T.ResizeShortestEdge([size, size], self.settings.max_size or cfg.INPUT.MAX_SIZE_TEST)
        self.cfg, self.net = cfg, net
        log.info(
            "%s %s loaded: %d classes, test size %d, %s, on %s (%d threads)",
            self.name,
            self.version,
            len(self.classes),
            size,
            self.post,
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
            self._predict(image, postprocess(out["instances"].to("cpu"), self.post))
            for image, out in zip(images, outputs, strict=True)
        ]

    def _extend_cfg(self, cfg: CfgNode) -> None:
        """Config keys of custom heads, added before the version's config is merged; none here."""

    def _check(self, cfg: CfgNode) -> None:
        """Refuse a version whose config and manifest disagree beyond the classes; nothing more here."""

    def _body_regions(self) -> dict[str, BodyRegion]:
        """The body region each class covers, by class name; none here."""
        return {}

    def _predict(self, image: Image.Image, instances: Any) -> Prediction:
        return Prediction(output=Detection(garments=self.garments(instances)).dump())

    def garments(self, instances: Any) -> list[Garment]:
        """Each instance as a garment (``masks.garments``) of this version's classes and regions."""
        return garments(instances, self.classes, self.regions)

    def _input(self, image: Image.Image) -> dict[str, Any]:
        assert self.resize is not None
        bgr = np.asarray(image.convert("RGB"))[:, :, ::-1]
        resized = self.resize.get_transform(bgr).apply_image(bgr)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
        return {"image": tensor, "height": image.height, "width": image.width}


def check_checkpoint_classes(weights: Path, classes: int) -> None:
    """Detectron2's checkpointer only warns on a shape mismatch; a wrong class count must stop the load."""
    state = torch.load(weights, map_location="cpu", weights_only=False)
    tensors = state.get("model", state)
    head = tensors.get("roi_heads.box_predictor.cls_score.weight")
    if head is None:
        raise ArtifactError(f"{weights} has no box predictor (roi_heads.box_predictor.cls_score.weight)")
    if head.shape[0] != classes + 1:  # + background
        raise ArtifactError(f"{weights} predicts {head.shape[0] - 1} classes, the manifest lists {classes}")
