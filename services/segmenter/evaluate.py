"""Fashionpedia's combined metric, AP with an IoU *and* an attribute-F1 threshold (Jia et al., ECCV 2020,
"Fashionpedia: Ontology, Segmentation, and an Attribute Localization Dataset", section 5), as its
reference evaluator (``fashionpedia-api``'s ``FPEval``) computes it:

- a detection is a true positive at (τ_IoU, τ_F1) when it is matched to a ground-truth garment of its
  category with IoU ≥ τ_IoU *and* the F1 between their attribute sets ≥ τ_F1 — greedy by score as in
  COCO, a candidate replacing the best so far only when neither its IoU nor its F1 is lower;
- the F1 between two attribute sets is the macro F1 of their multi-hot vectors over the attribute
  vocabulary (scikit-learn's ``f1_score(average="macro")`` on the two vectors: the mean of the F1 of
  "has" and of "has not", over the labels that occur), the reference's ``binary_macro``;
- AP is COCO's 101-point interpolated precision, averaged over τ_IoU ∈ 0.50:0.05:0.95, over
  τ_F1 ∈ 0.50:0.05:0.95 for the categories that have attributes, and over categories; a category without
  attributes counts once, with its IoU-only AP.

The reference package itself cannot serve: its categories, super-categories and the categories with
attributes are Fashionpedia's 46, hard-coded, and it uses ``np.float`` (gone from numpy). Crowd regions
and area ranges are left out (Fashionpedia has no crowd annotations; only "all" areas are reported).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
F1_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100


@dataclass
class Garment:
    """One ground-truth or detected garment: ``region`` is an XYWH box or a COCO RLE (one kind per call)."""

    category: int
    region: Any
    attributes: frozenset[int] = field(default_factory=frozenset)
    score: float = 1.0


def attribute_f1(truth: frozenset[int], predicted: frozenset[int], vocabulary: int) -> float:
    """Macro F1 of the two multi-hot vectors of length ``vocabulary``: the F1 of label 1 and of label 0,
    averaged over the labels that occur in either vector (so two empty sets agree: 1.0)."""
    tp = len(truth & predicted)
    fp, fn = len(predicted - truth), len(truth - predicted)
    tn = vocabulary - len(truth | predicted)
    scores = []
    if truth or predicted:
        scores.append(2 * tp / (2 * tp + fp + fn))
    if tn or fp or fn:  # some zero in either vector
        scores.append(2 * tn / (2 * tn + fp + fn))
    return float(np.mean(scores))


def _match(ious: np.ndarray, f1s: np.ndarray, iou_threshold: float, f1_threshold: float) -> np.ndarray:
    """Which detections (rows, by descending score) are true positives, matched as the reference does."""
    taken = np.zeros(ious.shape[1], dtype=bool)
    hits = np.zeros(ious.shape[0], dtype=bool)
    for d in range(ious.shape[0]):
        best_iou, best_f1, m = min(iou_threshold, 1 - 1e-10), min(f1_threshold, 1 - 1e-10), -1
        for g in range(ious.shape[1]):
            if taken[g] or ious[d, g] < best_iou or f1s[d, g] < best_f1:
                continue
            best_iou, best_f1, m = ious[d, g], f1s[d, g], g
        if m >= 0:
            taken[m] = hits[d] = True
    return hits


def _interpolated_ap(hits: np.ndarray, positives: int) -> float:
    """COCO's 101-point AP of detections already sorted by descending score."""
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def combined_ap(
    truths: Sequence[Sequence[Garment]],
    detections: Sequence[Sequence[Garment]],
    vocabulary: int,
) -> dict[str, float]:
    """``AP`` (IoU and F1 thresholds averaged), ``AP_IoU50_F150``, ``AP_IoU75_F175``, and the IoU-only
    ``AP_IoU`` for comparison, in percent, over images given as parallel lists of garments. The
    categories with attributes are those whose ground truth carries any."""
    with_attributes = {g.category for image in truths for g in image if g.attributes}
    categories = sorted({g.category for image in truths for g in image})
    # per category: every image's (scores, hits[iou, f1, detection]) and the count of ground truth
    table: dict[int, tuple[list[np.ndarray], list[np.ndarray], int]] = {c: ([], [], 0) for c in categories}
    for image_truth, image_detections in zip(truths, detections, strict=True):
        for c in categories:
            gt = [g for g in image_truth if g.category == c]
            dt = sorted((d for d in image_detections if d.category == c), key=lambda d: -d.score)
            dt = dt[:MAX_DETECTIONS]
            scores, hits, positives = table[c]
            table[c] = (scores, hits, positives + len(gt))
            if not dt:
                continue
            scores.append(np.array([d.score for d in dt]))
            hits.append(_image_hits(gt, dt, vocabulary, c in with_attributes))
    aps: dict[int, np.ndarray] = {}
    for c, (scores, hits, positives) in table.items():
        ap = np.zeros((len(IOU_THRESHOLDS), len(F1_THRESHOLDS) + 1))
        if scores:
            order = np.argsort(-np.concatenate(scores), kind="mergesort")
            matched = np.concatenate(hits, axis=2)[:, :, order]
            for i, j in np.ndindex(ap.shape):
                ap[i, j] = _interpolated_ap(matched[i, j], positives)
        aps[c] = ap

    def mean(iou: slice | int, f1s: range) -> float:
        # a category with attributes counts once per F1 threshold, one without once, as the reference
        # does (it lays the F1 thresholds out as further category columns, then averages the columns)
        columns = [
            float(np.mean(aps[c][iou, j]))
            for c in categories
            for j in (f1s if c in with_attributes else [-1])
        ]
        return 100 * float(np.mean(columns)) if columns else 0.0

    i50, i75 = 0, 5
    return {
        "AP": mean(slice(None), range(len(F1_THRESHOLDS))),
        "AP_IoU50_F150": mean(i50, range(i50, i50 + 1)),
        "AP_IoU75_F175": mean(i75, range(i75, i75 + 1)),
        "AP_IoU": _iou_only(aps, categories) if categories else 0.0,
    }


def _iou_only(aps: dict[int, np.ndarray], categories: list[int]) -> float:
    """COCO's AP: the F1 threshold left out for every category."""
    return 100 * float(np.mean([aps[c][:, -1].mean() for c in categories]))


def _image_hits(gt: list[Garment], dt: list[Garment], vocabulary: int, attributes: bool) -> np.ndarray:
    """hits[iou threshold, f1 threshold (the last: none), detection] for one image and category."""
    hits = np.zeros((len(IOU_THRESHOLDS), len(F1_THRESHOLDS) + 1, len(dt)), dtype=bool)
    if not gt:
        return hits
    ious = np.asarray(
        mask_utils.iou([d.region for d in dt], [g.region for g in gt], [0] * len(gt)), dtype=float
    ).reshape(len(dt), len(gt))
    if attributes:
        f1s = np.array([[attribute_f1(g.attributes, d.attributes, vocabulary) for g in gt] for d in dt])
    else:
        f1s = np.ones_like(ious)
    thresholds = [*F1_THRESHOLDS, -1.0]
    for i, t_iou in enumerate(IOU_THRESHOLDS):
        for j, t_f1 in enumerate(thresholds):
            hits[i, j] = _match(ious, f1s, t_iou, t_f1)
    return hits
