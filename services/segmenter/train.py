"""``atelier segmenter train``: COCO-format garments with ``attribute_ids`` in, a segmenter version out.

The Detectron2 services' training (``services.rcnn.train``) with the attribute head (``heads.py``), a mapper
that carries the attributes, and a second evaluator beside ``COCOEvaluator``: attribute precision,
recall and F1 on the detections that match a ground-truth garment.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from pycocotools import mask as mask_utils

from services.artifacts import read_manifest
from services.rcnn.evaluate import evaluate_version
from services.rcnn.masks import encode_masks
from services.rcnn.train import Trainer as RCNNTrainer
from services.rcnn.train import make_cfg, run_training, work_dir
from services.segmenter.config import SegmenterManifest, SegmenterTrainConfig
from services.segmenter.dataset import AttributeMapper, Taxonomy, register
from services.segmenter.evaluate import Garment, combined_ap
from services.segmenter.heads import NAME, add_attribute_config

SERVICE = "segmenter"
TRAIN, TEST, EVAL = "atelier_segmenter_train", "atelier_segmenter_test", "atelier_segmenter_eval"


class Trainer(RCNNTrainer):
    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        return build_detection_train_loader(cfg, mapper=AttributeMapper(cfg, is_train=True))

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluators:
        coco = super().build_evaluator(cfg, dataset_name, output_folder)
        threshold = cfg.MODEL.ROI_ATTRIBUTE_HEAD.SCORE_THRESH_TEST
        return DatasetEvaluators([coco, AttributeEvaluator(dataset_name, threshold)])


def segmenter_cfg(
    config: SegmenterTrainConfig, taxonomy: Taxonomy, train: str, test: str, work: Path
) -> CfgNode:
    cfg = make_cfg(config, taxonomy.classes, train, test, work, extend=add_attribute_config)
    cfg.MODEL.ROI_HEADS.NAME = NAME
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES = len(taxonomy.attributes)
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.LOSS_WEIGHT = config.attribute_loss_weight
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.SCORE_THRESH_TEST = config.attribute_threshold
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.NUM_CONV = config.attribute_convs
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.NORM = cfg.MODEL.ROI_MASK_HEAD.NORM  # GN from scratch, like the mask head
    return cfg


def train(
    train_json: Path,
    train_images: Path,
    test_json: Path,
    test_images: Path,
    config: SegmenterTrainConfig,
    repository: Path,
    *,
    resume: bool = False,
) -> Path:
    """Train, evaluate, publish ``<repository>/segmenter/<N>``."""
    taxonomy = register(TRAIN, train_json, train_images)
    if register(TEST, test_json, test_images) != taxonomy:
        raise ValueError("the test set's categories or attributes differ from the training set's")
    cfg = segmenter_cfg(config, taxonomy, TRAIN, TEST, work_dir(repository, SERVICE))
    describe = partial(
        SegmenterManifest,
        classes=taxonomy.classes,
        supercategories=taxonomy.supercategories,
        attributes=taxonomy.attributes,
        attribute_ids=taxonomy.attribute_ids,
        attribute_threshold=config.attribute_threshold,
    )
    return run_training(Trainer, cfg, config, SERVICE, describe, repository, resume=resume)


def evaluate(version_dir: Path, test_json: Path, test_images: Path) -> dict[str, Any]:
    """Box and mask AP and attribute precision / recall / F1 of a published version on a dataset."""
    taxonomy = register(EVAL, test_json, test_images)
    manifest = read_manifest(SERVICE, version_dir, SegmenterManifest)
    if (taxonomy.classes, taxonomy.attributes) != (manifest.classes, manifest.attributes):
        raise ValueError("the dataset's categories or attributes are not the version's")
    return evaluate_version(version_dir, EVAL, Trainer, SegmenterManifest, add_attribute_config)


class AttributeEvaluator(DatasetEvaluator):  # type: ignore[misc]
    """Attribute precision, recall and F1 (micro over every attribute decision, macro as the mean of the
    attributes present in the ground truth) on detections matched to a ground-truth garment of the same
    category at IoU ≥ ``iou`` (greedily, by score). Unmatched detections and missed garments are the box
    metrics' business, not counted here; ``matched`` says how many pairs were judged. Also, free of the
    threshold, each attribute's average precision over the matched garments ranked by its score
    (``AP-<name>``, their mean ``mAP``): how well the scores order the garments that have it."""

    def __init__(self, dataset_name: str, threshold: float, iou: float = 0.5) -> None:
        self.dataset_name, self.threshold, self.iou = dataset_name, threshold, iou
        self.attributes: list[str] = MetadataCatalog.get(dataset_name).attribute_classes
        self._predictions: dict[int, dict[str, Any]] = {}

    def reset(self) -> None:
        self._predictions = {}

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for given, output in zip(inputs, outputs, strict=True):
            instances = output["instances"].to("cpu")
            self._predictions[given["image_id"]] = {
                "boxes": instances.pred_boxes.tensor,
                "classes": instances.pred_classes.numpy(),
                "scores": instances.scores.numpy(),
                "attributes": instances.attribute_scores.numpy(),
                "masks": encode_masks(instances.pred_masks.numpy()),
            }

    def evaluate(self) -> OrderedDict[str, Any]:
        n = len(self.attributes)
        tp, fp, fn = np.zeros(n), np.zeros(n), np.zeros(n)
        support = np.zeros(n)
        matched = 0
        scores: list[np.ndarray] = []
        truths: list[np.ndarray] = []
        records = [r for r in DatasetCatalog.get(self.dataset_name) if r["image_id"] in self._predictions]
        for record in records:
            predicted = self._predictions[record["image_id"]]
            for p, g in self._match(predicted, record["annotations"]):
                truth = np.zeros(n, dtype=bool)
                truth[record["annotations"][g].get("attribute_index", [])] = True
                guess = predicted["attributes"][p] >= self.threshold
                scores.append(predicted["attributes"][p])
                truths.append(truth)
                tp += guess & truth
                fp += guess & ~truth
                fn += ~guess & truth
                support += truth
                matched += 1
        present = support > 0
        ap = _average_precision(np.array(scores).reshape(-1, n), np.array(truths).reshape(-1, n))
        precision = _ratio(tp, tp + fp)
        recall = _ratio(tp, tp + fn)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        micro_p, micro_r = _ratio(tp.sum(), tp.sum() + fp.sum()), _ratio(tp.sum(), tp.sum() + fn.sum())
        result = {
            "matched": matched,
            "precision_micro": 100 * micro_p,
            "recall_micro": 100 * micro_r,
            "f1_micro": 100 * _ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()),
            "precision_macro": 100 * float(precision[present].mean()) if present.any() else 0.0,
            "recall_macro": 100 * float(recall[present].mean()) if present.any() else 0.0,
            "f1_macro": 100 * float(f1[present].mean()) if present.any() else 0.0,
            "threshold": self.threshold,
            "mAP": 100 * float(ap[present].mean()) if present.any() else 0.0,
            # per attribute, named like COCO's "AP-<class>" (Detectron2 prints only keys without "-")
            **{f"F1-{a}": 100 * float(f1[i]) for i, a in enumerate(self.attributes) if present[i]},
            **{f"AP-{a}": 100 * float(ap[i]) for i, a in enumerate(self.attributes) if present[i]},
            **self._fashionpedia(records),
        }
        return OrderedDict(attributes=result)

    def _fashionpedia(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """Fashionpedia's AP with IoU and attribute-F1 thresholds, on boxes and on masks
        (``fashionpedia_box_AP``, ``fashionpedia_mask_AP_IoU50_F150``, ...), over the predicted records."""
        result: dict[str, float] = {}
        for kind in ("box", "mask"):
            truths = [[_truth(a, r, kind) for a in r["annotations"]] for r in records]
            detections = [self._detections(self._predictions[r["image_id"]], kind) for r in records]
            for name, value in combined_ap(truths, detections, len(self.attributes)).items():
                result[f"fashionpedia_{kind}_{name}"] = value
        return result

    def _detections(self, predicted: dict[str, Any], kind: str) -> list[Garment]:
        boxes = BoxMode.convert(predicted["boxes"].numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
        regions = boxes if kind == "box" else predicted["masks"]
        return [
            Garment(int(c), region, frozenset(np.flatnonzero(a >= self.threshold).tolist()), float(s))
            for c, region, a, s in zip(
                predicted["classes"], regions, predicted["attributes"], predicted["scores"], strict=True
            )
        ]

    def _match(self, predicted: dict[str, Any], annotations: list[dict[str, Any]]) -> list[tuple[int, int]]:
        if not annotations or not len(predicted["scores"]):
            return []
        truth = Boxes(
            torch.tensor(
                [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
                dtype=torch.float32,
            )
        )
        ious = pairwise_iou(Boxes(predicted["boxes"]), truth).numpy()
        classes = np.array([a["category_id"] for a in annotations])
        taken: set[int] = set()
        pairs = []
        for p in np.argsort(-predicted["scores"], kind="stable"):
            candidates = [
                (ious[p, g], g)
                for g in range(len(annotations))
                if g not in taken and classes[g] == predicted["classes"][p] and ious[p, g] >= self.iou
            ]
            if candidates:
                _, g = max(candidates)
                taken.add(g)
                pairs.append((int(p), g))
        return pairs


def _truth(annotation: dict[str, Any], record: dict[str, Any], kind: str) -> Garment:
    """A ground-truth garment of a Detectron2 dataset record, its region an XYWH box or an RLE."""
    if kind == "box":
        region: Any = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYWH_ABS)
    elif isinstance(annotation["segmentation"], dict):  # an RLE, which Detectron2's loader compresses
        region = annotation["segmentation"]
    else:
        polygons = mask_utils.frPyObjects(annotation["segmentation"], record["height"], record["width"])
        region = mask_utils.merge(polygons)
    attributes = frozenset(int(i) for i in annotation.get("attribute_index", []))
    return Garment(annotation["category_id"], region, attributes)


def _average_precision(scores: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """Per column: the mean, over the rows that have the attribute, of the precision among the rows
    scored at least as high (ties broken against the positives); 0 for a column without positives."""
    result = np.zeros(scores.shape[1])
    for j in range(scores.shape[1]):
        positives = truths[:, j]
        if not positives.any():
            continue
        order = np.lexsort((positives, -scores[:, j]))  # by score, negatives first among equals
        hits = positives[order]
        precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        result[j] = float(precision_at[hits].mean())
    return result


def _ratio(numerator: Any, denominator: Any) -> Any:
    return np.divide(
        numerator, denominator, out=np.zeros_like(np.asarray(numerator, dtype=float)), where=denominator > 0
    )
