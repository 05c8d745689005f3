"""The trained detector behind the real pipeline: its Celery worker batches images through one forward
pass, and each garment it finds is cropped and classified by the classifier's worker (its own environment)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.services.detector.support import RunClassifier, TrainedDetector
from tests.support.infra import Infra
from tests.support.jobs import wait_for_job

pytestmark = pytest.mark.e2e

SCENES = 12


@pytest.fixture(scope="module")
def served(
    trained_detector: TrainedDetector, crop_classifier: Path, classifier_python: Path, infra: Infra
) -> Iterator[list[dict[str, Any]]]:
    """One job of held-out scenes through gateway → fetch → detector worker → classifier worker → Postgres,
    with the served post-processing off (tests/services/detector/test_postprocess.py tests it): what is
    served is then what Detectron2's evaluator kept."""
    from atelier.stack import Stack, WorkerPlan
    from gateway.app import app

    workers = (
        WorkerPlan(None, concurrency=4, pool="threads"),
        WorkerPlan("detector", python=sys.executable),
        WorkerPlan("classifier", python=str(classifier_python)),
    )
    names = [i["file_name"] for i in json.loads(trained_detector.test_json.read_text())["images"]][:SCENES]
    files = [("files", (n, (trained_detector.test_images / n).read_bytes(), "image/jpeg")) for n in names]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATELIER_DETECTOR_NMS_IOU", "1")
        patch.setenv("ATELIER_DETECTOR_MIN_AREA", "0")
        with Stack(infra.home / "stack-detector", workers=workers), TestClient(app) as client:
            response = client.post(
                "/v1/jobs/upload", files=files, data={"models": ["detector"], "external_ids": names}
            )
            assert response.status_code == 202, response.text
            job = wait_for_job(client, response.json()["job_id"], timeout=600)
            assert job["counts"]["done"] == len(names), job
            yield [client.get(f"/v1/images/{ref['id']}").json() for ref in response.json()["items"]]


def _evaluation_detections(trained: TrainedDetector) -> dict[str, list[dict[str, Any]]]:
    """The COCO evaluator's detections kept in the version, by file name, in its order (by score)."""
    test = json.loads(trained.test_json.read_text())
    files = {i["id"]: i["file_name"] for i in test["images"]}
    names = {c["id"]: c["name"] for c in test["categories"]}
    by_file: dict[str, list[dict[str, Any]]] = {name: [] for name in files.values()}
    for d in json.loads((trained.version_dir / "predictions_test.json").read_text()):
        x, y, w, h = d["bbox"]
        by_file[files[d["image_id"]]].append(
            {"category": names[d["category_id"]], "score": d["score"], "box": [x, y, x + w, y + h]}
        )
    return by_file


def test_served_detections_equal_the_evaluators(
    trained_detector: TrainedDetector, served: list[dict[str, Any]]
) -> None:
    expected = _evaluation_detections(trained_detector)
    assert sum(len(v["record"]["detector"]["garments"]) for v in served) >= SCENES  # it finds garments
    for view in served:
        stored, wanted = view["record"]["detector"]["garments"], expected[view["external_id"]]
        assert [g["category"] for g in stored] == [g["category"] for g in wanted], view["external_id"]
        for got, want in zip(stored, wanted, strict=True):
            assert got["score"] == pytest.approx(want["score"], abs=1e-3)
            assert got["box"] == pytest.approx(want["box"], abs=0.5)
        state = view["models"]["detector"]
        assert state["status"] == "done" and state["version"] == trained_detector.version_dir.name


def test_each_garment_crop_is_classified_by_the_classifier(
    trained_detector: TrainedDetector,
    crop_classifier: Path,
    run_classifier: RunClassifier,
    served: list[dict[str, Any]],
) -> None:
    view = next(v for v in served if len(v["record"]["detector"]["garments"]) >= 2)
    detector = view["record"]["detector"]
    assert detector["garment_classification"]["model"] == "classifier"
    assert detector["garment_classification"]["version"] == crop_classifier.name
    boxes = [",".join(str(v) for v in g["box"]) for g in detector["garments"]]
    image = trained_detector.test_images / view["external_id"]
    direct = json.loads(run_classifier("classifier", "predict", str(image), *[f"--box={b}" for b in boxes]))
    for garment, alone in zip(detector["garments"], direct["predictions"], strict=True):
        for head in ("gender", "articleType"):
            assert garment["classification"][head]["label"] == alone[head]["label"]
            assert garment["classification"][head]["score"] == pytest.approx(alone[head]["score"], abs=1e-4)


def test_garments_are_not_classified_without_a_classifier(clean_db: Infra) -> None:
    """With no classifier version served, the detector's result says so instead of waiting for one."""
    from worker import crops

    output: dict[str, Any] = {"garments": [{"box": [0, 0, 4, 4]}]}
    assert crops.crops_service("detector", output) is None
    assert crops.crops_service("detector", {"garments": []}) is None
    assert output["garment_classification"]["model"] == "classifier"
    assert "no model artifact" in output["garment_classification"]["skipped"]
