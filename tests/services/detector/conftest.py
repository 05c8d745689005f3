"""The detector's tests that need Detectron2 run in the torch environment (.venv-torch, Detectron2 from
deploy/detectron2); elsewhere pytest leaves them out. The DeepFashion2 converter's need no framework and
run in .venv (scripts/test.sh). One small detector is trained per run and shared."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from services.detector.config import PRESETS
from synthetic.scenes import write_coco
from tests.services.detector.support import ROOT, SIZE, RunClassifier, TrainedDetector
from tests.support.infra import Infra
from tests.support.training import allow_training_time, shortened

NEEDS_DETECTRON2 = [
    "test_detector.py",
    "test_detectron2_install.py",
    "test_pipeline.py",
    "test_postprocess.py",
]
collect_ignore = [] if importlib.util.find_spec("detectron2") else NEEDS_DETECTRON2

# the CPU preset (R18-FPN, GroupNorm, light heads, from scratch), shortened: ~1.5 s per iteration here
SMALL = shortened(PRESETS["r18-fpn-scratch"], SIZE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    allow_training_time(items, Path(__file__).parent)


@pytest.fixture(scope="session")
def trained_detector(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> TrainedDetector:
    from common.settings import get_settings
    from services.detector.train import train

    logging.getLogger("detectron2").setLevel(logging.INFO)
    train_dir, test_dir = tmp_path_factory.mktemp("scenes-train"), tmp_path_factory.mktemp("scenes-test")
    train_json = write_coco(train_dir, 200, seed=0, size=SIZE)
    test_json = write_coco(test_dir, 40, seed=1, size=SIZE)
    repository = get_settings().model_repository
    version_dir = train(train_json, train_dir / "images", test_json, test_dir / "images", SMALL, repository)
    return TrainedDetector(version_dir, test_json, test_dir / "images")


@pytest.fixture(scope="session")
def classifier_python() -> Path:
    """The classifier's own interpreter (TensorFlow never loads beside torch); skips without one."""
    configured = os.environ.get("ATELIER_CLASSIFIER_PYTHON")
    path = Path(configured) if configured else ROOT / ".venv-classifier" / "bin" / "python"
    if not path.exists():
        pytest.skip(f"no classifier environment at {path} (scripts/test.sh builds .venv-classifier)")
    return path


@pytest.fixture(scope="session")
def run_classifier(classifier_python: Path) -> RunClassifier:
    def run(*args: str) -> str:
        done = subprocess.run(
            [str(classifier_python), "-m", "atelier", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    return run


@pytest.fixture(scope="session")
def crop_classifier(
    infra: Infra,
    tmp_path_factory: pytest.TempPathFactory,
    classifier_python: Path,
    run_classifier: RunClassifier,
) -> Path:
    """A small classifier version (generated garments, 32 px, from scratch) trained in its own environment:
    what the detector's garment crops go to."""
    from common.settings import get_settings

    data = tmp_path_factory.mktemp("garments")
    subprocess.run(
        [
            str(classifier_python),
            "-c",
            "from pathlib import Path; from synthetic.garments import write_dataset; "
            f"write_dataset(Path({str(data)!r}), 120, 0)",
        ],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    config = data / "config.json"
    config.write_text(json.dumps({"heads": ["gender", "articleType"], "pooling": "flatten"}))
    out = run_classifier(
        "classifier", "train", str(data), "--config", str(config), "--input-size", "32", "--head-epochs", "1",
        "--finetune-epochs", "1", "--min-images-per-class", "5", "--weights", "none",
    )  # fmt: skip
    version_dir = Path(json.loads(out)["path"])
    assert version_dir.parent == get_settings().model_repository / "classifier"
    return version_dir
