"""The Detectron2 services' post-processing on instances built by hand: cross-class duplicates suppressed,
tiny garments dropped, a version's per-class thresholds applied (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from detectron2.structures import Boxes, Instances

from common.errors import ArtifactError
from services.artifacts import read_manifest
from services.rcnn.config import RCNNManifest, RCNNSettings
from services.rcnn.postprocess import PostProcess, postprocess

CLASSES = ["short sleeve top", "trousers", "short sleeve dress"]
TOP, TROUSERS, DRESS = range(3)
SIZE = (200, 100)  # height, width


def _instances(boxes: list[list[float]], scores: list[float], classes: list[int], masks: bool) -> Instances:
    instances = Instances(SIZE)
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.scores = torch.tensor(scores)
    instances.pred_classes = torch.tensor(classes)
    if masks:  # each mask fills its box
        filled = torch.zeros((len(boxes), *SIZE), dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            filled[i, int(y0) : int(y1), int(x0) : int(x1)] = True
        instances.pred_masks = filled
    return instances


def _flat_lay(masks: bool) -> Instances:
    """A dress (0.9) also boxed as a top (0.6) and as trousers (0.5), a top of its own (0.45), and a
    speck (0.95) - in Detectron2's order: by score."""
    return _instances(
        boxes=[[40, 40, 42, 42], [10, 10, 90, 150], [12, 8, 90, 146], [10, 12, 88, 150], [10, 160, 60, 195]],
        scores=[0.95, 0.9, 0.6, 0.5, 0.45],
        classes=[TOP, DRESS, TOP, TROUSERS, TOP],
        masks=masks,
    )


@pytest.mark.parametrize("masks", [True, False], ids=["by-mask-area", "by-box-area"])
def test_postprocess_keeps_one_garment_per_place_drops_specks_and_applies_class_thresholds(
    masks: bool,
) -> None:
    # given: suppression at 0.7 IoU, 0.1 % of the image at least, tops served from 0.5
    rule = PostProcess.of(CLASSES, 0.3, {"short sleeve top": 0.5}, min_area=0.001, nms_iou=0.7)

    # when
    kept = postprocess(_flat_lay(masks), rule)

    # then: the dress alone where the three boxes overlap; the speck (4 px of 20,000) is gone; the lone top
    # (0.45) passes the served 0.3 but not the tops' own 0.5
    assert kept.pred_classes.tolist() == [DRESS]
    assert kept.scores.tolist() == pytest.approx([0.9])


def test_postprocess_without_class_thresholds_keeps_the_garment_that_overlaps_nothing() -> None:
    kept = postprocess(_flat_lay(masks=True), PostProcess.of(CLASSES, 0.3, {}, min_area=0.001, nms_iou=0.7))

    assert kept.pred_classes.tolist() == [DRESS, TOP]
    assert kept.pred_boxes.tensor[1].tolist() == [10, 160, 60, 195]


def test_postprocess_switched_off_keeps_what_detectron2_kept() -> None:
    instances = _flat_lay(masks=True)

    kept = postprocess(instances, PostProcess.of(CLASSES, 0.3, {}, min_area=0.0, nms_iou=1.0))

    assert kept.scores.tolist() == instances.scores.tolist()


def test_a_lower_class_threshold_lowers_what_the_heads_keep() -> None:
    rule = PostProcess.of(CLASSES, 0.5, {"trousers": 0.2}, min_area=0.0, nms_iou=1.0)

    kept = postprocess(_instances([[0, 0, 50, 50]], [0.3], [TROUSERS], masks=False), rule)

    assert rule.lowest_threshold == 0.2
    assert len(kept) == 1


def test_postprocess_refuses_thresholds_of_unknown_classes() -> None:
    with pytest.raises(ValueError, match="unknown classes \\['skirt'\\]"):
        PostProcess.of(CLASSES, 0.5, {"skirt": 0.4}, min_area=0.0, nms_iou=0.7)


def test_the_served_defaults_suppress_cross_class_duplicates() -> None:
    settings = RCNNSettings()

    assert settings.nms_iou == 0.5
    assert settings.min_area == 0.001
    assert settings.class_thresholds


def _write_manifest(tmp_path: Path, **extra: object) -> Path:
    manifest = {"name": "detector", "framework": "detectron2", "files": {}, "classes": CLASSES, **extra}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_manifests_postprocess_thresholds_are_optional_and_checked(tmp_path: Path) -> None:
    old = read_manifest("detector", _write_manifest(tmp_path), RCNNManifest)
    assert old.class_score_thresholds == {}

    new = read_manifest(
        "detector", _write_manifest(tmp_path, class_score_thresholds={"trousers": 0.4}), RCNNManifest
    )
    assert new.class_score_thresholds == {"trousers": 0.4}

    with pytest.raises(ArtifactError, match="unknown classes \\['skirt'\\]"):
        read_manifest(
            "detector", _write_manifest(tmp_path, class_score_thresholds={"skirt": 0.4}), RCNNManifest
        )
