"""DeepFashion2 annotations (one JSON per image) → one COCO instances JSON that Detectron2 reads.

Per item: the box (clipped to the image), the segmentation polygons (those with at least 3 points),
the landmarks as COCO keypoints (all 294 DeepFashion2 landmarks per annotation, the category's own at
its offset, as the dataset's official conversion lays them out), and style, scale, occlusion, zoom_in
and viewpoint as attributes. Images keep their source and pair_id. What is dropped or repaired is
counted in the report.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from services.detector.categories import CATEGORIES, KEYPOINTS, LANDMARK_OFFSET, LANDMARKS

ITEM_KEY = re.compile(r"^item(\d+)$")
ATTRIBUTES = ("style", "scale", "occlusion", "zoom_in", "viewpoint")
MIN_BOX_SIDE = 1.0


@dataclass
class ConversionReport:
    images: int = 0
    annotations: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        lines = [f"images: {self.images}", f"annotations: {self.annotations}"]
        lines += [f"dropped {reason}: {n}" for reason, n in sorted(self.dropped.items())]
        lines += [f"repaired {reason}: {n}" for reason, n in sorted(self.repaired.items())]
        return "\n".join(lines)


def coco_categories() -> list[dict[str, Any]]:
    keypoint_names = [str(i + 1) for i in range(KEYPOINTS)]
    return [
        {"id": i + 1, "name": name, "supercategory": "clothes", "keypoints": keypoint_names, "skeleton": []}
        for i, name in enumerate(CATEGORIES)
    ]


def convert(annos_dir: Path, images_dir: Path) -> tuple[dict[str, Any], ConversionReport]:
    """Every ``annos_dir/<name>.json`` with its ``images_dir/<name>.jpg``, in name order."""
    report = ConversionReport()
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, path in enumerate(sorted(annos_dir.glob("*.json")), start=1):
        image_path = images_dir / f"{path.stem}.jpg"
        if not image_path.is_file():
            report.dropped["missing_image"] += 1
            continue
        with Image.open(image_path) as picture:  # the header is enough for the size
            width, height = picture.size
        raw = json.loads(path.read_text())
        images.append(
            {
                "id": image_id,
                "file_name": image_path.name,
                "width": width,
                "height": height,
                "source": raw.get("source"),
                "pair_id": raw.get("pair_id"),
            }
        )
        for item in _items(raw):
            annotation = _annotation(item, image_id, width, height, report)
            if annotation is not None:
                annotation["id"] = len(annotations) + 1
                annotations.append(annotation)
    report.images, report.annotations = len(images), len(annotations)
    coco = {
        "info": {"description": "DeepFashion2 converted by Atelier"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    return coco, report


def _items(raw: dict[str, Any]) -> Iterable[dict[str, Any]]:
    numbered = [(int(m.group(1)), value) for key, value in raw.items() if (m := ITEM_KEY.match(key))]
    return [value for _, value in sorted(numbered, key=lambda pair: pair[0])]


def _annotation(
    item: dict[str, Any], image_id: int, width: int, height: int, report: ConversionReport
) -> dict[str, Any] | None:
    category = int(item.get("category_id", 0))
    if not 1 <= category <= len(CATEGORIES):
        report.dropped["bad_category"] += 1
        return None
    box = _clip_box(item.get("bounding_box") or [], width, height, report)
    if box is None:
        return None
    polygons = _polygons(item.get("segmentation") or [], report)
    if not polygons:
        report.repaired["no_polygon"] += 1  # kept for boxes; mask training filters it out
    keypoints, visible = _keypoints(category, item.get("landmarks") or [], report)
    x1, y1, x2, y2 = box
    return {
        "image_id": image_id,
        "category_id": category,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": polygon_area(polygons) if polygons else (x2 - x1) * (y2 - y1),
        "iscrowd": 0,
        "segmentation": polygons,
        "keypoints": keypoints,
        "num_keypoints": visible,
        "attributes": {name: item.get(name) for name in ATTRIBUTES},
    }


def _clip_box(
    box: Sequence[float], width: int, height: int, report: ConversionReport
) -> tuple[float, ...] | None:
    if len(box) != 4:
        report.dropped["bad_box"] += 1
        return None
    x1, y1, x2, y2 = (float(v) for v in box)
    clipped = (
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    )
    if clipped != (x1, y1, x2, y2):
        report.repaired["box_clipped"] += 1
    if clipped[2] - clipped[0] < MIN_BOX_SIDE or clipped[3] - clipped[1] < MIN_BOX_SIDE:
        report.dropped["empty_box"] += 1
        return None
    return clipped


def _polygons(segmentation: Sequence[Sequence[float]], report: ConversionReport) -> list[list[float]]:
    kept = []
    for polygon in segmentation:
        if len(polygon) < 6 or len(polygon) % 2:
            report.repaired["polygon_under_3_points"] += 1
            continue
        kept.append([float(v) for v in polygon])
    return kept


def _keypoints(
    category: int, landmarks: Sequence[float], report: ConversionReport
) -> tuple[list[float], int]:
    keypoints = [0.0] * (3 * KEYPOINTS)
    expected = 3 * LANDMARKS[category - 1]
    if len(landmarks) != expected:
        report.repaired["landmarks_wrong_length"] += 1
        landmarks = list(landmarks[:expected]) + [0.0] * max(0, expected - len(landmarks))
    start = 3 * LANDMARK_OFFSET[category - 1]
    keypoints[start : start + expected] = [float(v) for v in landmarks]
    visible = sum(1 for v in landmarks[2::3] if v > 0)
    return keypoints, visible


def polygon_area(polygons: Sequence[Sequence[float]]) -> float:
    """The shoelace area, summed over polygons."""
    total = 0.0
    for polygon in polygons:
        xs, ys = polygon[0::2], polygon[1::2]
        total += abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2.0
    return total
