"""COCO-format garment datasets registered with Detectron2's catalogs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

log = logging.getLogger(__name__)


def register(name: str, json_file: Path, image_root: Path) -> list[str]:
    """Register (or re-register) a COCO instances file; returns its class names in contiguous order.

    Class names come from the file's own categories, sorted by id: DeepFashion2's 13 in its order for the
    converted dataset (``services.detector.convert``), whatever subset a test dataset uses.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    categories = sorted(json.loads(json_file.read_text())["categories"], key=lambda c: c["id"])
    classes = [c["name"] for c in categories]
    DatasetCatalog.register(name, lambda: with_masks(load_coco_json(str(json_file), str(image_root), name)))
    MetadataCatalog.get(name).set(
        json_file=str(json_file), image_root=str(image_root), evaluator_type="coco", thing_classes=classes
    )
    return classes


def with_masks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the garments that have no polygon (the converter keeps them, counted): Detectron2 builds an
    image's masks only when its first annotation has one, and then expects one for every annotation."""
    dropped = 0
    for record in records:
        kept = [a for a in record["annotations"] if a.get("segmentation")]
        dropped += len(record["annotations"]) - len(kept)
        record["annotations"] = kept
    if dropped:
        log.warning("%d garments without a polygon left out of mask training", dropped)
    return records
