"""A small Detectron2 Mask R-CNN trained on generated garments: accuracy, serving, artifacts, configs."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from common.errors import ArtifactError
from services.detector.config import PRESETS, DetectorSettings
from services.detector.model import DetectorModel
from tests.services.detector.support import ROOT, SIZE, TrainedDetector

# box AP50 (COCO, %) on 40 held-out generated scenes after 300 iterations from scratch (400: 99.9)
REQUIRED_BOX_AP50 = 80.0
REQUIRED_MASK_AP50 = 70.0


def _manifest(version_dir: Path) -> dict[str, Any]:
    return dict(json.loads((version_dir / "manifest.json").read_text()))


def test_the_trained_detector_finds_held_out_garments(trained_detector: TrainedDetector) -> None:
    metrics = _manifest(trained_detector.version_dir)["metrics"]
    assert metrics["bbox"]["AP50"] >= REQUIRED_BOX_AP50, metrics["bbox"]
    assert metrics["segm"]["AP50"] >= REQUIRED_MASK_AP50, metrics["segm"]
    per_class = {f"AP-{name}" for name in ("short sleeve top", "trousers", "short sleeve dress")}
    assert {"AP", "AP50", "AP75", *per_class} <= set(metrics["bbox"])


def test_a_batch_gives_what_each_image_gives_alone(trained_detector: TrainedDetector) -> None:
    model = DetectorModel(trained_detector.version_dir, DetectorSettings(device="cpu"))
    model.load()
    names = [i["file_name"] for i in json.loads(trained_detector.test_json.read_text())["images"]][:4]
    images = [Image.open(trained_detector.test_images / name).convert("RGB") for name in names]

    batched = model.predict(images)
    one_by_one = [model.predict([image])[0] for image in images]

    assert len(batched) == 4
    for together, alone in zip(batched, one_by_one, strict=True):
        got, want = together.output["garments"], alone.output["garments"]
        assert [g["category"] for g in got] == [g["category"] for g in want]
        assert [g["score"] for g in got] == pytest.approx([g["score"] for g in want], abs=1e-3)
    garment = next(g for p in batched for g in p.output["garments"])
    assert set(garment) == {"category", "score", "box", "body_region", "mask", "area"}
    assert garment["body_region"] in {"upper body", "lower body", "whole body"}
    assert garment["mask"]["size"] == [SIZE, SIZE] and garment["area"] > 0


def test_the_evaluate_command_reproduces_the_published_metrics(trained_detector: TrainedDetector) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "atelier", "detector", "evaluate", str(trained_detector.test_json),
            str(trained_detector.test_images), "--version", trained_detector.version_dir.name,
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout)["metrics"]
    published = _manifest(trained_detector.version_dir)["metrics"]
    assert metrics["bbox"]["AP50"] == pytest.approx(published["bbox"]["AP50"], abs=0.01)
    assert metrics["segm"]["AP"] == pytest.approx(published["segm"]["AP"], abs=0.01)


@pytest.fixture
def copy(trained_detector: TrainedDetector, tmp_path: Path) -> Path:
    target = tmp_path / "3"
    shutil.copytree(trained_detector.version_dir, target)
    return target


def test_missing_weights_are_refused(copy: Path) -> None:
    (copy / "model_final.pth").unlink()
    with pytest.raises(ArtifactError, match="model_final.pth is missing"):
        DetectorModel(copy).load()


def test_changed_weights_are_refused(copy: Path) -> None:
    with (copy / "model_final.pth").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="model_final.pth"):
        DetectorModel(copy).load()


def test_a_class_count_mismatch_is_refused(copy: Path) -> None:
    manifest = _manifest(copy)
    manifest["classes"].append("long sleeve dress")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="the config has 3 classes, the manifest lists 4"):
        DetectorModel(copy).load()


def test_a_worker_without_a_version_refuses_to_start(tmp_path: Path) -> None:
    from services.registry import get_spec

    with pytest.raises(ArtifactError, match="no model artifact"):
        get_spec("detector").build(tmp_path)


def _cfg(preset: str, tmp_path: Path) -> Any:
    from services.detector.categories import CATEGORIES
    from services.detector.train import make_cfg

    return make_cfg(PRESETS[preset], list(CATEGORIES), "train", "test", tmp_path)


@pytest.mark.parametrize(("preset", "depth"), [("r50-fpn", 50), ("r101-fpn", 101)])
def test_the_zoo_presets_build_mask_rcnn_for_13_garments(preset: str, depth: int, tmp_path: Path) -> None:
    import torch
    from detectron2.modeling import build_model

    cfg = _cfg(preset, tmp_path)
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.MODEL.RESNETS.DEPTH == depth and cfg.MODEL.MASK_ON
    assert cfg.MODEL.WEIGHTS.startswith(
        "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/"
    )
    net = build_model(cfg).eval()
    assert net.roi_heads.box_predictor.cls_score.out_features == 14  # 13 garments + background
    with torch.no_grad():
        [out] = net([{"image": torch.rand(3, 128, 160) * 255, "height": 128, "width": 160}])
    assert out["instances"].image_size == (128, 160)


def test_zoo_weights_load_from_the_checkpointer_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A randomly initialised COCO (80-class) checkpoint where Detectron2's cache expects the zoo's file:
    the backbone comes from it, the garment heads (13 classes) stay as built."""
    from urllib.parse import urlparse

    import numpy as np
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = _cfg("r50-fpn", tmp_path)
    cfg.MODEL.DEVICE = "cpu"
    coco = cfg.clone()
    coco.MODEL.ROI_HEADS.NUM_CLASSES = 80
    torch.manual_seed(1)
    state = {k: v.numpy() for k, v in build_model(coco).state_dict().items()}
    cached = tmp_path / "cache" / urlparse(cfg.MODEL.WEIGHTS).path.lstrip("/")
    cached.parent.mkdir(parents=True)
    with cached.open("wb") as handle:  # the zoo's layout: a pickled {"model": numpy arrays}
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, handle)
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))

    torch.manual_seed(2)
    net = build_model(cfg)
    head = net.roi_heads.box_predictor.cls_score.weight.detach().clone()
    DetectionCheckpointer(net).load(cfg.MODEL.WEIGHTS)

    stem = "backbone.bottom_up.stem.conv1.weight"
    np.testing.assert_array_equal(net.state_dict()[stem].numpy(), state[stem])
    assert torch.equal(net.roi_heads.box_predictor.cls_score.weight, head)  # 81 ≠ 14 classes: not loaded
