"""``atelier detector train`` / ``evaluate``: COCO-format garments (``convert`` makes them from
DeepFashion2) in, a new detector version out; a published version's box and mask AP on a dataset.

The Detectron2 services' training (``services.rcnn.train``) with nothing of the detector's own but
its name: its classes are the dataset's.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from services.artifacts import read_manifest
from services.rcnn.config import RCNNManifest, TrainConfig
from services.rcnn.dataset import register
from services.rcnn.evaluate import evaluate_version
from services.rcnn.train import Trainer, make_cfg, run_training, work_dir

__all__ = ["evaluate", "make_cfg", "train"]  # make_cfg: the bench and tests build configs with it

SERVICE = "detector"
TRAIN, TEST, EVAL = "atelier_detector_train", "atelier_detector_test", "atelier_detector_eval"


def train(
    train_json: Path,
    train_images: Path,
    test_json: Path,
    test_images: Path,
    config: TrainConfig,
    repository: Path,
    *,
    resume: bool = False,
) -> Path:
    """Train, evaluate, publish ``<repository>/detector/<N>``; an interrupted run resumes with ``resume``."""
    classes = register(TRAIN, train_json, train_images)
    if register(TEST, test_json, test_images) != classes:
        raise ValueError(f"the test set's classes differ from the training set's {classes}")
    cfg = make_cfg(config, classes, TRAIN, TEST, work_dir(repository, SERVICE))
    describe = partial(RCNNManifest, classes=classes)
    return run_training(Trainer, cfg, config, SERVICE, describe, repository, resume=resume)


def evaluate(version_dir: Path, test_json: Path, test_images: Path) -> dict[str, Any]:
    """A published version's box and mask AP (COCO, pycocotools) on a COCO-format dataset."""
    classes = register(EVAL, test_json, test_images)
    if classes != read_manifest(SERVICE, version_dir, RCNNManifest).classes:
        raise ValueError(f"the dataset's classes {classes} are not the version's")
    return evaluate_version(version_dir, EVAL, Trainer)
