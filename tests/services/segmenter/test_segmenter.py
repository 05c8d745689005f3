"""A small attribute Mask R-CNN trained on generated garments with styles: accuracy, attributes,
serving through its Celery worker, pictures, artifact refusals."""

from __future__ import annotations

import io
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as mask_util

from common.errors import ArtifactError
from services.segmenter.config import SegmenterSettings
from services.segmenter.model import REGIONS, SegmenterModel
from tests.services.segmenter.support import SIZE, TrainedSegmenter
from tests.support.infra import Infra
from tests.support.jobs import wait_for_job

# on 40 held-out generated scenes after 300 iterations from scratch (measured: mask AP50 98.3, micro F1
# 82.3; lengths F1 98.8 / 98.8, AP 100; patterns plain / stripe / dot F1 80 / 75 / 37, AP 82 / 98 / 35;
# Fashionpedia's mask AP at IoU 0.5 and attribute F1 0.5 98.3): at this budget the texture descriptor
# has learned stripes and plain but not yet dots, so the bar is set per group
REQUIRED_MASK_AP50 = 70.0
REQUIRED_ATTRIBUTE_F1 = 70.0  # micro, on matched garments: pattern (3 kinds) and length (2)
REQUIRED_LENGTH_F1 = 90.0  # each of maxi and mini
REQUIRED_PATTERN_AP = 60.0  # each of stripe and plain; a third of the garments have each
REQUIRED_FASHIONPEDIA_AP = 80.0  # mask, IoU ≥ 0.5 and attribute F1 ≥ 0.5
SCENES = 8


def _manifest(version_dir: Path) -> dict[str, Any]:
    return dict(json.loads((version_dir / "manifest.json").read_text()))


def test_the_trained_segmenter_finds_garments_and_their_styles(trained_segmenter: TrainedSegmenter) -> None:
    manifest = _manifest(trained_segmenter.version_dir)
    metrics = manifest["metrics"]
    assert metrics["segm"]["AP50"] >= REQUIRED_MASK_AP50, metrics["segm"]
    assert metrics["attributes"]["f1_micro"] >= REQUIRED_ATTRIBUTE_F1, metrics["attributes"]
    assert metrics["attributes"]["matched"] > 40
    for length in ("maxi (length)", "mini (length)"):
        assert metrics["attributes"][f"F1-{length}"] >= REQUIRED_LENGTH_F1, metrics["attributes"]
        assert metrics["attributes"][f"AP-{length}"] >= REQUIRED_LENGTH_F1, metrics["attributes"]
    for pattern in ("stripe", "plain (pattern)"):
        assert metrics["attributes"][f"AP-{pattern}"] >= REQUIRED_PATTERN_AP, metrics["attributes"]
    assert 0 <= metrics["attributes"]["mAP"] <= 100
    assert metrics["attributes"]["fashionpedia_mask_AP_IoU50_F150"] >= REQUIRED_FASHIONPEDIA_AP
    # without its F1 threshold, Fashionpedia's AP is COCO's: the two evaluators agree on the same output
    assert metrics["attributes"]["fashionpedia_box_AP_IoU"] == pytest.approx(metrics["bbox"]["AP"], abs=1e-3)
    assert metrics["attributes"]["fashionpedia_mask_AP_IoU"] == pytest.approx(metrics["segm"]["AP"], abs=1e-3)
    assert metrics["attributes"]["fashionpedia_mask_AP"] <= metrics["segm"]["AP"]
    assert {k.removeprefix("F1-") for k in metrics["attributes"] if k.startswith("F1-")} == {
        "plain (pattern)",
        "stripe",
        "dot",
        "maxi (length)",
        "mini (length)",
    }
    assert manifest["attributes"] == ["plain (pattern)", "stripe", "dot", "maxi (length)", "mini (length)"]
    assert manifest["attribute_ids"] == [115, 142, 150, 307, 317]


@pytest.fixture(scope="module")
def served(
    trained_segmenter: TrainedSegmenter, infra: Infra
) -> Iterator[tuple[TestClient, list[dict[str, Any]]]]:
    """Held-out scenes through gateway → fetch → segmenter worker → Postgres and the blob store, with the
    served post-processing off (tests/services/detector/test_postprocess.py tests it): what is served is
    then what Detectron2's evaluator kept."""
    from atelier.stack import Stack, WorkerPlan
    from gateway.app import app

    workers = (
        WorkerPlan(None, concurrency=4, pool="threads"),
        WorkerPlan("segmenter", python=sys.executable),
    )
    names = [i["file_name"] for i in json.loads(trained_segmenter.test_json.read_text())["images"]][:SCENES]
    files = [("files", (n, (trained_segmenter.test_images / n).read_bytes(), "image/jpeg")) for n in names]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATELIER_SEGMENTER_NMS_IOU", "1")
        patch.setenv("ATELIER_SEGMENTER_MIN_AREA", "0")
        with Stack(infra.home / "stack-segmenter", workers=workers), TestClient(app) as client:
            response = client.post(
                "/v1/jobs/upload", files=files, data={"models": ["segmenter"], "external_ids": names}
            )
            assert response.status_code == 202, response.text
            job = wait_for_job(client, response.json()["job_id"], timeout=600)
            assert job["counts"]["done"] == len(names), job
            yield client, [client.get(f"/v1/images/{ref['id']}").json() for ref in response.json()["items"]]


def test_served_instances_equal_the_evaluators(
    trained_segmenter: TrainedSegmenter, served: tuple[TestClient, list[dict[str, Any]]]
) -> None:
    test = json.loads(trained_segmenter.test_json.read_text())
    ids = {i["file_name"]: i["id"] for i in test["images"]}
    names = {c["id"]: c["name"] for c in test["categories"]}
    evaluated = json.loads((trained_segmenter.version_dir / "predictions_test.json").read_text())
    _, views = served
    assert sum(len(v["record"]["segmenter"]["garments"]) for v in views) >= SCENES
    for view in views:
        stored = view["record"]["segmenter"]["garments"]
        wanted = [d for d in evaluated if d["image_id"] == ids[view["external_id"]]]
        assert [g["category"] for g in stored] == [names[d["category_id"]] for d in wanted]
        for got, want in zip(stored, wanted, strict=True):
            assert got["score"] == pytest.approx(want["score"], abs=1e-3)
            x, y, w, h = want["bbox"]
            assert got["box"] == pytest.approx([x, y, x + w, y + h], abs=0.5)


def test_served_pictures_follow_the_masks(served: tuple[TestClient, list[dict[str, Any]]]) -> None:
    client, views = served
    view = next(v for v in views if v["record"]["segmenter"]["garments"])
    record = view["record"]["segmenter"]
    assert set(record["files"]) >= {"regions.png", "overlay.png"}

    def picture(name: str) -> Image.Image:
        response = client.get(f"/v1/images/{view['id']}/files/segmenter/{name}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        return Image.open(io.BytesIO(response.content))

    regions = picture("regions.png")
    assert regions.size == (SIZE, SIZE) and regions.mode == "P"
    fractions = record["regions"]["fractions"]
    assert set(fractions) == set(REGIONS) and sum(fractions.values()) == pytest.approx(1.0, abs=1e-5)
    counts = np.bincount(np.asarray(regions).ravel(), minlength=len(REGIONS))
    assert [fractions[r] for r in REGIONS] == pytest.approx(list(counts / counts.sum()), abs=1e-5)
    for garment in record["garments"]:
        mask = mask_util.decode(
            {"size": garment["mask"]["size"], "counts": garment["mask"]["counts"].encode()}
        )
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        alpha = np.asarray(picture(garment["cutout"]))[:, :, 3]
        box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(bool)
        np.testing.assert_array_equal(alpha, np.where(box, 255, 0))
        assert garment["body_region"] in {"upper body", "lower body", "whole body"}
        assert {a["name"] for a in garment["attributes"]} <= {
            "plain (pattern)",
            "stripe",
            "dot",
            "maxi (length)",
            "mini (length)",
        }
        assert garment["colours"] and garment["colours"][0]["hex"].startswith("#")
    assert picture("overlay.png").size == (SIZE, SIZE)
    assert client.get(f"/v1/images/{view['id']}/files/segmenter/nothing.png").status_code == 404


@pytest.fixture
def copy(trained_segmenter: TrainedSegmenter, tmp_path: Path) -> Path:
    target = tmp_path / "2"
    shutil.copytree(trained_segmenter.version_dir, target)
    return target


def test_missing_weights_are_refused(copy: Path) -> None:
    (copy / "model_final.pth").unlink()
    with pytest.raises(ArtifactError, match="model_final.pth is missing"):
        SegmenterModel(copy, SegmenterSettings(device="cpu")).load()


def test_an_attribute_count_mismatch_is_refused(copy: Path) -> None:
    manifest = _manifest(copy)
    manifest["attributes"].append("floral")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="the config has 5 attributes, the manifest lists 6"):
        SegmenterModel(copy, SegmenterSettings(device="cpu")).load()
