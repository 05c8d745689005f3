"""Mask R-CNN with an attribute head: a multi-label classifier (one sigmoid per attribute) trained on
foreground proposals with their matched garment's attributes. Registered with Detectron2's ROI-heads
registry (``ROI_HEADS.NAME``), not forked.

The classifier reads the box head's features, as in the Fashionpedia baseline, and with
``ROI_ATTRIBUTE_HEAD.NUM_CONV`` > 0 also a texture descriptor: a pooler of its own at
``POOLER_RESOLUTION``, N 3x3 convolutions, then each channel's spatial mean and maximum. Patterns
(stripes, dots) are texture: the box head's 7x7 pooled and flattened features keep the silhouette (what
lengths need) but average a repeating pattern away; pooled conv responses say how much of it there is
wherever it sits in the garment.
"""

from __future__ import annotations

from typing import Any

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.poolers import ROIPooler
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
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.NUM_CONV = 0  # 0: on the box head's features
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.CONV_DIM = 128
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.NORM = ""  # "" or "GN" (from scratch)
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.POOLER_RESOLUTION = 14
    cfg.MODEL.ROI_ATTRIBUTE_HEAD.POOLER_SAMPLING_RATIO = 2


class TextureHead(nn.Module):  # type: ignore[misc, unused-ignore]  # torch is Any where not installed
    """Convolutions over the pooled region, then each channel's spatial mean and maximum."""

    def __init__(self, channels: int, dim: int, convs: int, norm: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            conv = Conv2d(
                channels if i == 0 else dim,
                dim,
                kernel_size=3,
                padding=1,
                bias=not norm,
                norm=get_norm(norm, dim),
                activation=F.relu,
            )
            weight_init.c2_msra_fill(conv)
            layers.append(conv)
        self.convs = nn.Sequential(*layers)
        self.output_size = 2 * dim

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.convs(pooled)
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


@ROI_HEADS_REGISTRY.register()
class AttributeROIHeads(StandardROIHeads):  # type: ignore[misc]
    """Standard box and mask heads, plus ``attribute_predictor`` on the box features (and the texture's).

    Training adds ``loss_attr`` (binary cross-entropy over the attributes, foreground proposals only).
    Inference adds ``attribute_scores`` (N × attributes, sigmoid) to every predicted instance.
    """

    @configurable  # type: ignore[untyped-decorator, unused-ignore]
    def __init__(
        self,
        *,
        num_attributes: int,
        attribute_loss_weight: float,
        attribute_pooler: ROIPooler | None = None,
        texture_head: TextureHead | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_attributes < 1:
            raise ValueError("MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES must be at least 1")
        self.num_attributes = num_attributes
        self.attribute_loss_weight = attribute_loss_weight
        self.attribute_pooler = attribute_pooler
        self.texture_head = texture_head
        width = self.box_head.output_shape
        features = width.channels * (width.height or 1) * (width.width or 1)
        if texture_head is not None:
            features += texture_head.output_size
        self.attribute_predictor = nn.Linear(features, num_attributes)
        nn.init.normal_(self.attribute_predictor.weight, std=0.01)
        nn.init.constant_(self.attribute_predictor.bias, 0.0)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        arguments: dict[str, Any] = super().from_config(cfg, input_shape)
        head = cfg.MODEL.ROI_ATTRIBUTE_HEAD
        arguments["num_attributes"] = head.NUM_ATTRIBUTES
        arguments["attribute_loss_weight"] = head.LOSS_WEIGHT
        if head.NUM_CONV > 0:
            in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
            arguments["attribute_pooler"] = ROIPooler(
                output_size=head.POOLER_RESOLUTION,
                scales=tuple(1.0 / input_shape[f].stride for f in in_features),
                sampling_ratio=head.POOLER_SAMPLING_RATIO,
                pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
            )
            channels = {input_shape[f].channels for f in in_features}
            if len(channels) != 1:
                raise ValueError(f"the attribute head needs one channel count, the features have {channels}")
            arguments["texture_head"] = TextureHead(channels.pop(), head.CONV_DIM, head.NUM_CONV, head.NORM)
        return arguments

    def _box_features(self, features: dict[str, torch.Tensor], boxes: list[Any]) -> torch.Tensor:
        pooled = self.box_pooler([features[f] for f in self.box_in_features], boxes)
        return torch.flatten(self.box_head(pooled), start_dim=1)

    def _attribute_logits(
        self, features: dict[str, torch.Tensor], boxes: list[Any], box_features: torch.Tensor
    ) -> torch.Tensor:
        if self.texture_head is not None and self.attribute_pooler is not None:
            pooled = self.attribute_pooler([features[f] for f in self.box_in_features], boxes)
            box_features = torch.cat([box_features, self.texture_head(pooled)], dim=1)
        logits: torch.Tensor = self.attribute_predictor(box_features)
        return logits

    def _forward_box(
        self, features: dict[str, torch.Tensor], proposals: list[Instances]
    ) -> dict[str, torch.Tensor] | list[Instances]:
        box_features = self._box_features(features, [p.proposal_boxes for p in proposals])
        predictions = self.box_predictor(box_features)
        if self.training:
            losses: dict[str, torch.Tensor] = self.box_predictor.losses(predictions, proposals)
            losses["loss_attr"] = self._attribute_loss(features, proposals, box_features)
            return losses
        instances, _ = self.box_predictor.inference(predictions, proposals)
        boxes = [i.pred_boxes for i in instances]
        if sum(len(b) for b in boxes):
            logits = self._attribute_logits(features, boxes, self._box_features(features, boxes))
            scores = torch.sigmoid(logits)
        else:
            scores = box_features.new_zeros((0, self.num_attributes))
        per_image = torch.split(scores, [len(b) for b in boxes])
        for image_instances, image_scores in zip(instances, per_image, strict=True):
            image_instances.attribute_scores = image_scores
        return list(instances)

    def _attribute_loss(
        self, features: dict[str, torch.Tensor], proposals: list[Instances], box_features: torch.Tensor
    ) -> torch.Tensor:
        """Mean binary cross-entropy over the foreground proposals' attributes (0 when there are none)."""
        foreground = [(p.gt_classes >= 0) & (p.gt_classes < self.num_classes) for p in proposals]
        if not any(f.any() for f in foreground):
            return self.attribute_predictor.weight.sum() * 0.0
        boxes = [p.proposal_boxes[f] for p, f in zip(proposals, foreground, strict=True)]
        logits = self._attribute_logits(features, boxes, box_features[torch.cat(foreground)])
        # an image without garments has proposals without gt_attributes (all background)
        targets = torch.cat(
            [
                p.gt_attributes[f] if p.has("gt_attributes") else logits.new_zeros((0, self.num_attributes))
                for p, f in zip(proposals, foreground, strict=True)
            ]
        )
        loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
        return loss * self.attribute_loss_weight
