"""``atelier detector train``: COCO-format garments in, a new model-repository version out.

A Detectron2 ``DefaultTrainer`` on a model-zoo config (COCO-pretrained weights through the zoo when
reachable), evaluated with ``COCOEvaluator`` on the pycocotools path (``use_fast_impl=False``: the
registry's Detectron2 has no C++ evaluator), with periodic checkpoints and resume. The version is
published with the evaluator's detections on the test set, which the served model must reproduce.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from common.blobstore import sha256_file
from services.base import publish_version
from services.detector.config import TrainConfig
from services.detector.dataset import register
from services.detector.model import CONFIG, MANIFEST, WEIGHTS, device_for

PREDICTIONS = "predictions_test.json"

log = logging.getLogger(__name__)


class Trainer(DefaultTrainer):  # type: ignore[misc]
    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> COCOEvaluator:
        folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "eval")
        return COCOEvaluator(dataset_name, output_dir=folder, use_fast_impl=False)


def make_cfg(
    config: TrainConfig,
    classes: list[str],
    train: str,
    test: str,
    output_dir: Path,
    extend: Callable[[CfgNode], None] | None = None,
) -> CfgNode:
    """A model-zoo config for ``classes``; ``extend`` adds config keys (a custom head's) before merging."""
    cfg = get_cfg()
    if extend is not None:
        extend(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(config.base))
    cfg.merge_from_list(config.opts)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), (test,)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(classes)
    cfg.MODEL.DEVICE = device_for("auto")
    cfg.MODEL.WEIGHTS = (
        model_zoo.get_checkpoint_url(config.base) if config.weights == "zoo" else (config.weights or "")
    )
    cfg.SOLVER.IMS_PER_BATCH = config.batch_size
    cfg.SOLVER.BASE_LR = config.base_lr
    cfg.SOLVER.MAX_ITER = config.max_iter
    cfg.SOLVER.WARMUP_ITERS = min(config.warmup_iters, config.max_iter // 2)
    cfg.SOLVER.STEPS = tuple(s for s in config.steps if s < config.max_iter)
    cfg.SOLVER.CHECKPOINT_PERIOD = config.checkpoint_period
    cfg.TEST.EVAL_PERIOD = config.eval_period
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = config.min_size_train, config.max_size_train
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = config.min_size_test, config.max_size_test
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = config.score_threshold
    cfg.DATALOADER.NUM_WORKERS = config.num_workers
    cfg.SEED = config.seed
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


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
    classes = register("atelier_detector_train", train_json, train_images)
    if register("atelier_detector_test", test_json, test_images) != classes:
        raise ValueError(f"the test set's classes differ from the training set's {classes}")
    cfg = make_cfg(
        config, classes, "atelier_detector_train", "atelier_detector_test", _work(repository, "detector")
    )
    return run_training(Trainer, cfg, config, "detector", {"classes": classes}, repository, resume=resume)


def _work(repository: Path, service: str) -> Path:
    work = repository / service / ".training"
    work.mkdir(parents=True, exist_ok=True)
    return work


def run_training(
    trainer_class: type[DefaultTrainer],
    cfg: CfgNode,
    config: TrainConfig,
    service: str,
    described: dict[str, Any],
    repository: Path,
    *,
    resume: bool,
) -> Path:
    """Train ``cfg`` (in ``cfg.OUTPUT_DIR``), evaluate it on ``DATASETS.TEST``, publish the version of
    ``service`` with ``described`` (classes, ...) in its manifest, then drop the working directory."""
    started = time.monotonic()
    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    seconds = time.monotonic() - started
    # DefaultTrainer's EvalHook evaluates DATASETS.TEST once training ends and keeps the results
    metrics = getattr(trainer, "_last_eval_results", None) or trainer_class.test(cfg, trainer.model)
    version_dir = _publish(cfg, config, service, described, metrics, seconds, repository)
    shutil.rmtree(cfg.OUTPUT_DIR, ignore_errors=True)
    return version_dir


def evaluate(version_dir: Path, test_json: Path, test_images: Path) -> dict[str, Any]:
    """A published version's box and mask AP (COCO, pycocotools) on a COCO-format dataset."""
    from services.detector.model import read_manifest

    classes = register("atelier_detector_eval", test_json, test_images)
    if classes != read_manifest(version_dir)["classes"]:
        raise ValueError(f"the dataset's classes {classes} are not the version's")
    return evaluate_version(version_dir, "atelier_detector_eval", Trainer)


def evaluate_version(
    version_dir: Path,
    dataset_name: str,
    trainer_class: type[DefaultTrainer],
    extend: Callable[[CfgNode], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a version, its files checked against its manifest, on a registered dataset with
    ``trainer_class``'s evaluators."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from services.base import read_manifest, verify_files

    service = version_dir.parent.name
    verify_files(service, version_dir, read_manifest(service, version_dir, ("classes",)), (WEIGHTS, CONFIG))
    cfg = get_cfg()
    if extend is not None:
        extend(cfg)
    cfg.merge_from_file(str(version_dir / CONFIG))
    cfg.MODEL.WEIGHTS = str(version_dir / WEIGHTS)
    cfg.MODEL.DEVICE = device_for("auto")
    cfg.DATASETS.TEST = (dataset_name,)
    with tempfile.TemporaryDirectory() as out:
        cfg.OUTPUT_DIR = out
        net = build_model(cfg)
        DetectionCheckpointer(net).load(cfg.MODEL.WEIGHTS)
        return dict(_plain(trainer_class.test(cfg, net)))


def _publish(
    cfg: CfgNode,
    config: TrainConfig,
    service: str,
    described: dict[str, Any],
    metrics: dict[str, Any],
    train_seconds: float,
    repository: Path,
) -> Path:
    model_dir = repository / service
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    shutil.copy(Path(cfg.OUTPUT_DIR) / "model_final.pth", staging / WEIGHTS)
    serving = cfg.clone()
    serving.MODEL.WEIGHTS = WEIGHTS
    (staging / CONFIG).write_text(serving.dump())
    manifest: dict[str, Any] = {
        "name": service,
        "framework": "detectron2",
        "torch_version": torch.__version__,
        **described,
        "input": {"min_size_test": cfg.INPUT.MIN_SIZE_TEST, "max_size_test": cfg.INPUT.MAX_SIZE_TEST},
        "score_threshold": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        "base_config": config.base,
        "train_config": config.model_dump(mode="json"),
        "train_seconds": round(train_seconds, 1),
        "metrics": _plain(metrics),
        "files": {name: sha256_file(staging / name) for name in (WEIGHTS, CONFIG)},
    }
    # the evaluator's own detections on the test set (COCO results): what the served worker must match
    shutil.copy(Path(cfg.OUTPUT_DIR) / "eval" / "coco_instances_results.json", staging / PREDICTIONS)
    manifest["files"][PREDICTIONS] = sha256_file(staging / PREDICTIONS)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return publish_version(staging, model_dir)


def _plain(metrics: Any) -> Any:
    """Detectron2's OrderedDicts of numpy floats → JSON (NaN for classes absent from the test set → None)."""
    if isinstance(metrics, dict):
        return {str(k): _plain(v) for k, v in metrics.items()}
    value = float(metrics)
    return None if value != value else round(value, 4)
