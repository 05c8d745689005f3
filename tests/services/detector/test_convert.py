"""DeepFashion2 → COCO, checked on annotations written by hand in the published per-image format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from services.detector.categories import BODY_REGION, CATEGORIES, KEYPOINTS, LANDMARKS, category_id
from services.detector.convert import convert


def _landmarks(n: int, visible: int) -> list[float]:
    """n landmarks as x, y, v; the first ``visible`` have v=2, the rest v=0 (not labelled)."""
    return [v for i in range(n) for v in (10.0 + i, 20.0 + i, 2.0 if i < visible else 0.0)]


def _item(category: int, box: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "category_name": CATEGORIES[category - 1],
        "category_id": category,
        "style": 1,
        "bounding_box": box,
        "landmarks": _landmarks(LANDMARKS[category - 1], 5),
        "segmentation": [[10, 10, 60, 10, 60, 60, 10, 60]],
        "scale": 2,
        "occlusion": 1,
        "zoom_in": 1,
        "viewpoint": 2,
        **extra,
    }


@pytest.fixture
def deepfashion2(tmp_path: Path) -> Path:
    (tmp_path / "annos").mkdir()
    (tmp_path / "image").mkdir()
    annos = {
        "000001": {
            "source": "shop",
            "pair_id": 1,
            "item1": _item(1, [10, 10, 60, 60]),
            "item2": _item(8, [5, 70, 50, 190]),
        },
        "000002": {
            "source": "user",
            "pair_id": 1,
            # items out of order, a 2-point polygon beside a good one, an item with no polygon at all,
            # and a box reaching past the image
            "item2": _item(9, [0, 0, 40, 40], segmentation=[]),
            "item1": _item(11, [-5, 20, 130, 300], segmentation=[[1, 1, 5, 5], [0, 20, 100, 20, 100, 120]]),
        },
        "000003": {
            "source": "user",
            "pair_id": 2,
            "item1": _item(2, [200, 200, 260, 260]),  # wholly outside the 120x200 image
            "item2": {**_item(1, [0, 0, 10, 10]), "category_id": 14},
        },
        "000004": {"source": "user", "pair_id": 3, "item1": _item(1, [0, 0, 10, 10])},  # its image is missing
    }
    for name, raw in annos.items():
        (tmp_path / "annos" / f"{name}.json").write_text(json.dumps(raw))
        if name != "000004":
            Image.new("RGB", (120, 200)).save(tmp_path / "image" / f"{name}.jpg")
    return tmp_path


def test_items_become_coco_annotations_with_keypoints_and_attributes(deepfashion2: Path) -> None:
    coco, report = convert(deepfashion2 / "annos", deepfashion2 / "image")

    assert [c["name"] for c in coco["categories"]] == list(CATEGORIES)
    assert [c["id"] for c in coco["categories"]] == list(range(1, 14))
    assert len(coco["categories"][0]["keypoints"]) == KEYPOINTS == 294
    assert [(i["file_name"], i["width"], i["height"], i["source"], i["pair_id"]) for i in coco["images"]] == [
        ("000001.jpg", 120, 200, "shop", 1),
        ("000002.jpg", 120, 200, "user", 1),
        ("000003.jpg", 120, 200, "user", 2),
    ]
    top, trousers, dress, skirt = coco["annotations"]
    assert (top["category_id"], top["bbox"], top["area"]) == (1, [10.0, 10.0, 50.0, 50.0], 2500.0)
    assert top["attributes"] == {"style": 1, "scale": 2, "occlusion": 1, "zoom_in": 1, "viewpoint": 2}
    # trousers are category 8: their 14 landmarks sit after the 168 of categories 1-7
    offset = 3 * sum(LANDMARKS[:7])
    assert trousers["keypoints"][offset : offset + 3] == [10.0, 20.0, 2.0]
    assert sum(trousers["keypoints"][:offset]) == 0 and trousers["num_keypoints"] == 5
    assert len(trousers["keypoints"]) == 3 * 294
    # item1 comes before item2 whatever the JSON order; the box is clipped, the 2-point polygon dropped
    assert (dress["category_id"], dress["bbox"]) == (11, [0.0, 20.0, 120.0, 180.0])
    assert dress["segmentation"] == [[0.0, 20.0, 100.0, 20.0, 100.0, 120.0]]
    assert dress["area"] == 5000.0
    # no polygon: kept for its box, with an empty segmentation
    assert (skirt["category_id"], skirt["segmentation"], skirt["area"]) == (9, [], 1600.0)
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3, 4]
    assert report.dropped == {"missing_image": 1, "empty_box": 1, "bad_category": 1}
    assert report.repaired == {"box_clipped": 2, "polygon_under_3_points": 1, "no_polygon": 1}
    assert (report.images, report.annotations) == (3, 4)


def test_body_regions_and_category_lookup() -> None:
    assert BODY_REGION["trousers"] == "lower body" and BODY_REGION["vest dress"] == "whole body"
    assert BODY_REGION["sling"] == "upper body"
    assert category_id("skirt") == 9
    with pytest.raises(ValueError, match="unknown DeepFashion2 category 'cape'"):
        category_id("cape")
