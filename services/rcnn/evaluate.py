"""Evaluating a published Detectron2 version, its files checked against its manifest, on a registered
dataset with a trainer's evaluators (COCO box and mask AP, and whatever a service adds)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import DefaultTrainer
from detectron2.modeling import build_model

from services.artifacts import read_manifest, verify_files
from services.rcnn.config import CONFIG, WEIGHTS, RCNNManifest
from services.rcnn.model import device_for


def evaluate_version(
    version_dir: Path,
    dataset_name: str,
    trainer_class: type[DefaultTrainer],
    manifest_type: type[RCNNManifest] = RCNNManifest,
    extend: Callable[[CfgNode], None] | None = None,
) -> dict[str, Any]:
    """The metrics of ``version_dir`` (files checked) on ``dataset_name`` by ``trainer_class``'s
    evaluators; ``extend`` adds a custom head's config keys before the version's config is merged."""
    service = version_dir.parent.name
    verify_files(service, version_dir, read_manifest(service, version_dir, manifest_type), (WEIGHTS, CONFIG))
    cfg = get_cfg()
    if extend is not None:
        extend(cfg)
    cfg.merge_from_file(str(version_dir / CONFIG))
    cfg.MODEL.WEIGHTS = str(version_dir / WEIGHTS)
    cfg.MODEL.DEVICE = device_for("auto")
    cfg.DATASETS.TEST = (dataset_name,)
    with tempfile.TemporaryDirectory() as out:
        cfg.OUTPUT_DIR = out
        net = build_model(cfg)
        DetectionCheckpointer(net).load(cfg.MODEL.WEIGHTS)
        return dict(plain(trainer_class.test(cfg, net)))


def plain(metrics: Any) -> Any:
    """Detectron2's OrderedDicts of numpy floats → JSON (NaN for classes absent from the test set → None)."""
    if isinstance(metrics, dict):
        return {str(k): plain(v) for k, v in metrics.items()}
    value = float(metrics)
    return None if value != value else round(value, 4)
