"""The detector's tests run in the torch environment (.venv-torch, Detectron2 from deploy/detectron2);
elsewhere they are skipped. One small detector is trained per run and shared."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("detectron2", reason="the detector tests run in .venv-torch (scripts/test.sh)")

from services.detector.config import TrainConfig  # noqa: E402
from tests.conftest import Infra  # noqa: E402
from tests.detector.scenes import write_coco  # noqa: E402

# R18-FPN from scratch with GroupNorm (FrozenBN diverges without pretrained weights), lighter heads:
# ~1 s per iteration on 2 CPU cores at 256 px
SMALL = TrainConfig(
    base="Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml",
    weights=None,
    batch_size=4,
    base_lr=0.04,
    max_iter=500,
    warmup_iters=50,
    steps=(),
    checkpoint_period=250,
    min_size_train=(256,),
    max_size_train=256,
    min_size_test=256,
    max_size_test=256,
    score_threshold=0.05,
    num_workers=1,
    opts=[
        "MODEL.RESNETS.DEPTH", "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.FPN.OUT_CHANNELS", "128",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128",
    ],
)  # fmt: skip


@dataclass(frozen=True)
class TrainedDetector:
    version_dir: Path
    test_json: Path
    test_images: Path


@pytest.fixture(scope="session")
def trained_detector(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> TrainedDetector:
    from common.settings import get_settings
    from services.detector.train import train

    logging.getLogger("detectron2").setLevel(logging.INFO)
    train_dir, test_dir = tmp_path_factory.mktemp("scenes-train"), tmp_path_factory.mktemp("scenes-test")
    train_json, test_json = write_coco(train_dir, 200, seed=0), write_coco(test_dir, 40, seed=1)
    version_dir = train(
        train_json,
        train_dir / "images",
        test_json,
        test_dir / "images",
        SMALL,
        get_settings().model_repository,
    )
    return TrainedDetector(version_dir, test_json, test_dir / "images")
