"""The segmenter's tests run in the torch environment (.venv-torch); elsewhere pytest leaves them out.
One small attribute Mask R-CNN is trained per run and shared."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

from services.segmenter.config import PRESETS
from synthetic.attribute_scenes import write_coco
from tests.services.segmenter.support import SIZE, TrainedSegmenter
from tests.support.infra import Infra
from tests.support.training import allow_training_time, shortened

NEEDS_DETECTRON2 = ["test_evaluate.py", "test_heads.py", "test_postprocess.py", "test_segmenter.py"]
collect_ignore = [] if importlib.util.find_spec("detectron2") else NEEDS_DETECTRON2

# the CPU preset (R18-FPN, GroupNorm, light heads, from scratch) with the attribute head, shortened
SMALL = shortened(PRESETS["r18-fpn-scratch"], SIZE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    allow_training_time(items, Path(__file__).parent)


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
