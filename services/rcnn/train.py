"""Training a Detectron2 service: COCO-format garments in, a new model-repository version out.

A Detectron2 ``DefaultTrainer`` on a model-zoo config (COCO-pretrained weights through the zoo when
reachable), evaluated with ``COCOEvaluator`` on the pycocotools path (``use_fast_impl=False``: the
registry's Detectron2 has no C++ evaluator), with periodic checkpoints and resume. The version is
published with the evaluator's detections on the test set, which the served model must reproduce.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.env import seed_all_rng

from services.artifacts import PREDICTIONS, hash_files, publish_version, staging_dir, write_manifest
from services.rcnn.config import CONFIG, WEIGHTS, RCNNManifest, TestInput, TrainConfig
from services.rcnn.evaluate import plain
from services.rcnn.model import device_for

ManifestT = TypeVar("ManifestT", bound=RCNNManifest)


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


def work_dir(repository: Path, service: str) -> Path:
    """Where a service's training run keeps its checkpoints (``--resume`` goes on from them)."""
    work = repository / service / ".training"
    work.mkdir(parents=True, exist_ok=True)
    return work


def run_training(
    trainer_class: type[DefaultTrainer],
    cfg: CfgNode,
    config: TrainConfig,
    service: str,
    describe: Callable[..., ManifestT],
    repository: Path,
    *,
    resume: bool,
) -> Path:
    """Train ``cfg`` (in ``cfg.OUTPUT_DIR``), evaluate it on ``DATASETS.TEST``, publish the version of
    ``service`` with the manifest ``describe`` makes (``RCNNManifest`` or a service's own, given its
    own fields already: a ``functools.partial``), then drop the working directory."""
    # the config's seed, applied as Detectron2's default_setup would (DefaultTrainer alone never does):
    # initial weights, data order and augmentations are then the same in every run, whatever ran before
    seed_all_rng(cfg.SEED)
    started = time.monotonic()
    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    seconds = time.monotonic() - started
    # DefaultTrainer's EvalHook evaluates DATASETS.TEST once training ends and keeps the results
    metrics = getattr(trainer, "_last_eval_results", None) or trainer_class.test(cfg, trainer.model)
    version_dir = _publish(cfg, config, service, describe, metrics, seconds, repository)
    shutil.rmtree(cfg.OUTPUT_DIR, ignore_errors=True)
    return version_dir


def _publish(
    cfg: CfgNode,
    config: TrainConfig,
    service: str,
    describe: Callable[..., ManifestT],
    metrics: dict[str, Any],
    train_seconds: float,
    repository: Path,
) -> Path:
    model_dir = repository / service
    staging = staging_dir(model_dir)
    shutil.copy(Path(cfg.OUTPUT_DIR) / "model_final.pth", staging / WEIGHTS)
    serving = cfg.clone()
    serving.MODEL.WEIGHTS = WEIGHTS
    (staging / CONFIG).write_text(serving.dump())
    # the evaluator's own detections on the test set (COCO results): what the served worker must match
    shutil.copy(Path(cfg.OUTPUT_DIR) / "eval" / "coco_instances_results.json", staging / PREDICTIONS)
    manifest = describe(
        name=service,
        framework="detectron2",
        torch_version=torch.__version__,
        input=TestInput(min_size_test=cfg.INPUT.MIN_SIZE_TEST, max_size_test=cfg.INPUT.MAX_SIZE_TEST),
        score_threshold=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        base_config=config.base,
        train_config=config.model_dump(mode="json"),
        train_seconds=round(train_seconds, 1),
        metrics=plain(metrics),
        files=hash_files(staging, (WEIGHTS, CONFIG, PREDICTIONS)),
    )
    write_manifest(staging, manifest)
    return publish_version(staging, model_dir)
