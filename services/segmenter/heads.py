"""Mask R-CNN with an attribute head, as in the Fashionpedia baseline: a multi-label classifier (one
sigmoid per attribute) on the box head's features, trained on foreground proposals with their matched
garment's attributes. Registered with Detectron2's ROI-heads registry (``ROI_HEADS.NAME``), not forked.
"""

from __future__ import annotations

from typing import Any

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Instances
from torch import nn
from torch.nn import functional as F

NAME = "AttributeROIHeads"


def add_attribute_config(cfg: CfgNode) -> None:
    """``MODEL.ROI_ATTRIBUTE_HEAD``: attribute count, loss weight, and the score an attribute needs."""
    cfg.MODEL.ROI_ATTRIBUTE_HEAD = CfgNode()
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES = 0
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.LOSS_WEIGHT = 1.0
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.SCORE_THRESH_TEST = 0.5


@ROI_HEADS_REGISTRY.register()
class AttributeROIHeads(StandardROIHeads):  # type: ignore[misc]
    """Standard box and mask heads, plus ``attribute_predictor`` on the box features.

    Training adds ``loss_attr`` (binary cross-entropy over the attributes, foreground proposals only).
    Inference adds ``attribute_scores`` (N × attributes, sigmoid) to every predicted instance.
    """

    @configurable
    def __init__(self, *, num_attributes: int, attribute_loss_weight: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_attributes < 1:
            raise ValueError("MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES must be at least 1")
        self.num_attributes = num_attributes
        self.attribute_loss_weight = attribute_loss_weight
        width = self.box_head.output_shape
        features = width.channels * (width.height or 1) * (width.width or 1)
        self.attribute_predictor = nn.Linear(features, num_attributes)
        nn.init.normal_(self.attribute_predictor.weight, std=0.01)
        nn.init.constant_(self.attribute_predictor.bias, 0.0)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        arguments: dict[str, Any] = super().from_config(cfg, input_shape)
        arguments["num_attributes"] = cfg.MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES
        arguments["attribute_loss_weight"] = cfg.MODEL.ROI_ATTRIBUTE_HEAD.LOSS_WEIGHT
        return arguments

    def _box_features(self, features: dict[str, torch.Tensor], boxes: list[Any]) -> torch.Tensor:
        pooled = self.box_pooler([features[f] for f in self.box_in_features], boxes)
        return torch.flatten(self.box_head(pooled), start_dim=1)

    def _forward_box(
        self, features: dict[str, torch.Tensor], proposals: list[Instances]
    ) -> dict[str, torch.Tensor] | list[Instances]:
        box_features = self._box_features(features, [p.proposal_boxes for p in proposals])
        predictions = self.box_predictor(box_features)
        if self.training:
            losses: dict[str, torch.Tensor] = self.box_predictor.losses(predictions, proposals)
            losses["loss_attr"] = self._attribute_loss(self.attribute_predictor(box_features), proposals)
            return losses
        instances, _ = self.box_predictor.inference(predictions, proposals)
        boxes = [i.pred_boxes for i in instances]
        if sum(len(b) for b in boxes):
            scores = torch.sigmoid(self.attribute_predictor(self._box_features(features, boxes)))
        else:
            scores = box_features.new_zeros((0, self.num_attributes))
        per_image = scores.split([len(b) for b in boxes])
        for image_instances, image_scores in zip(instances, per_image, strict=True):
            image_instances.attribute_scores = image_scores
        return list(instances)

    def _attribute_loss(self, logits: torch.Tensor, proposals: list[Instances]) -> torch.Tensor:
        """Mean binary cross-entropy over the foreground proposals' attributes (0 when there are none)."""
        classes = torch.cat([p.gt_classes for p in proposals])
        foreground = (classes >= 0) & (classes < self.num_classes)
        if not foreground.any():
            return logits.sum() * 0.0
        # an image without garments has proposals without gt_attributes (all background)
        targets = torch.cat(
            [
                p.gt_attributes if p.has("gt_attributes") else logits.new_zeros((len(p), self.num_attributes))
                for p in proposals
            ]
        )[foreground]
        loss = F.binary_cross_entropy_with_logits(logits[foreground], targets.to(logits.dtype))
        return loss * self.attribute_loss_weight
