"""What a Detectron2 service does to an image's instances before they become garments.

Detectron2's ROI heads threshold and suppress per class, so one garment comes back once per class it
resembles (a dress also boxed as a top and as trousers). Served predictions go through ``postprocess``:
per-class score thresholds (a version's manifest ``class_score_thresholds``, else the served threshold),
a minimum area as a fraction of the image, then class-agnostic suppression of the lower-scoring of
boxes overlapping above an IoU. Evaluation does not use it (COCO AP is per class).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from detectron2.structures import Instances
from torchvision.ops import nms


@dataclass(frozen=True)
class PostProcess:
    """``score_threshold`` for classes without one of their own in ``class_thresholds`` (by class index);
    ``min_area``: fraction of the image; ``nms_iou``: 1 switches class-agnostic suppression off (no IoU
    exceeds it)."""

    score_threshold: float
    min_area: float = 0.0
    nms_iou: float = 1.0
    class_thresholds: Mapping[int, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        classes: Sequence[str],
        score_threshold: float,
        thresholds: Mapping[str, float],
        min_area: float,
        nms_iou: float,
    ) -> PostProcess:
        """From class names as a manifest gives them; an unknown name is refused."""
        unknown = sorted(set(thresholds) - set(classes))
        if unknown:
            raise ValueError(
                f"score thresholds for unknown classes {unknown}; the classes are {list(classes)}"
            )
        by_index = {classes.index(name): value for name, value in thresholds.items()}
        return cls(score_threshold, min_area, nms_iou, by_index)

    @property
    def lowest_threshold(self) -> float:
        """What the ROI heads must keep from so that every class's own threshold can apply."""
        return min([self.score_threshold, *self.class_thresholds.values()])


def postprocess(instances: Instances, rule: PostProcess) -> Instances:
    """``instances`` (one image's, at its size) less those under their class's score threshold, those
    smaller than ``rule.min_area`` of the image (mask pixels, or the box without masks), and, where
    boxes of any classes overlap above ``rule.nms_iou``, all but the highest-scoring; in score order."""
    if not len(instances):
        return instances
    scores, labels = instances.scores, instances.pred_classes
    thresholds = torch.full_like(scores, rule.score_threshold)
    for label, value in rule.class_thresholds.items():
        thresholds[labels == label] = value
    height, width = instances.image_size
    if instances.has("pred_masks"):
        areas = instances.pred_masks.flatten(1).sum(1).to(scores.dtype)
    else:
        areas = instances.pred_boxes.area()
    keep = (scores >= thresholds) & (areas >= rule.min_area * height * width)
    instances = instances[keep]
    if rule.nms_iou < 1 and len(instances):
        instances = instances[
            nms(instances.pred_boxes.tensor.float(), instances.scores.float(), rule.nms_iou)
        ]
    return instances
