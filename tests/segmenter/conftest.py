"""The segmenter's tests run in the torch environment (.venv-torch); elsewhere they are skipped. One
small attribute Mask R-CNN is trained per run and shared."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("detectron2", reason="the segmenter tests run in .venv-torch (scripts/test.sh)")

from services.segmenter.config import PRESETS  # noqa: E402
from tests.conftest import Infra  # noqa: E402
from tests.segmenter.scenes import write_coco  # noqa: E402

SIZE = 192
TRAINING_TIMEOUT_S = 1800

# the CPU preset (R18-FPN, GroupNorm, light heads, from scratch) with the attribute head, shortened
SMALL = PRESETS["r18-fpn-scratch"].model_copy(
    update={
        "max_iter": 300,
        "steps": (),
        "checkpoint_period": 150,
        "min_size_train": (SIZE,),
        "max_size_train": SIZE,
        "min_size_test": SIZE,
        "max_size_test": SIZE,
        "score_threshold": 0.3,
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The first test to ask for the trained model trains it (~10 min on 2 cores): a longer timeout."""
    for item in items:
        if item.path.parent == Path(__file__).parent:
            item.add_marker(pytest.mark.timeout(TRAINING_TIMEOUT_S))


@dataclass(frozen=True)
class TrainedSegmenter:
    version_dir: Path
    test_json: Path
    test_images: Path


@pytest.fixture(scope="session")
def trained_segmenter(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> TrainedSegmenter:
    from common.settings import get_settings
    from services.segmenter.train import train

    logging.getLogger("detectron2").setLevel(logging.INFO)
    train_dir, test_dir = tmp_path_factory.mktemp("styles-train"), tmp_path_factory.mktemp("styles-test")
    train_json = write_coco(train_dir, 200, seed=0, size=SIZE)
    test_json = write_coco(test_dir, 40, seed=1, size=SIZE)
    repository = get_settings().model_repository
    version_dir = train(train_json, train_dir / "images", test_json, test_dir / "images", SMALL, repository)
    return TrainedSegmenter(version_dir, test_json, test_dir / "images")
