"""COCO-format garment datasets registered with Detectron2's catalogs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

log = logging.getLogger(__name__)

Records = list[dict[str, Any]]


def classes_of(json_file: Path) -> list[str]:
    """A COCO instances file's class names in contiguous order: its categories sorted by id."""
    categories = sorted(json.loads(json_file.read_text())["categories"], key=lambda c: c["id"])
    return [c["name"] for c in categories]


def register(
    name: str,
    json_file: Path,
    image_root: Path,
    *,
    extra_keys: Sequence[str] = (),
    prepare: Callable[[Records], Records] | None = None,
    **metadata: Any,
) -> list[str]:
    """Register (or re-register) a COCO instances file; returns its class names in contiguous order.

    Class names come from the file's own categories, sorted by id: DeepFashion2's 13 in its order for the
    converted dataset (``services.detector.convert``), whatever subset a test dataset uses. Annotations
    keep ``extra_keys``; ``prepare`` then sees the records once garments without a polygon are dropped.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    classes = classes_of(json_file)

    def load() -> Records:
        records = with_masks(load_coco_json(str(json_file), str(image_root), name, list(extra_keys)))
        return prepare(records) if prepare is not None else records

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=str(json_file),
        image_root=str(image_root),
        evaluator_type="coco",
        thing_classes=classes,
        **metadata,
    )
    return classes


def with_masks(records: Records) -> Records:
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
