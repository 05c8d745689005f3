"""The attribute ROI heads, built from the segmenter's own config on random weights: the losses a training
step sees, the gradients they send, and the scores inference attaches — with and without the texture
descriptor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from services.segmenter.config import PRESETS
from services.segmenter.dataset import Taxonomy
from services.segmenter.train import segmenter_cfg
from tests.support.training import shortened

SIZE = 96
TAXONOMY = Taxonomy(["top", "pants"], ["upperbody", "lowerbody"], ["stripe", "dot", "mini"], [142, 150, 317])


def _model(convs: int, tmp_path: Path) -> Any:  # a GeneralizedRCNN: Detectron2 ships no type hints
    config = shortened(PRESETS["r18-fpn-scratch"], SIZE).model_copy(update={"attribute_convs": convs})
    cfg = segmenter_cfg(config, TAXONOMY, "unused-train", "unused-test", tmp_path)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    return build_model(cfg)


def _example(garments: int) -> dict[str, object]:
    instances = Instances((SIZE, SIZE))
    boxes = torch.tensor([[8.0 + 40 * i, 10.0, 40.0 + 40 * i, 80.0] for i in range(garments)]).reshape(-1, 4)
    instances.gt_boxes = Boxes(boxes)
    instances.gt_classes = torch.arange(garments) % 2
    instances.gt_attributes = torch.tensor([[1.0, 0.0, 1.0]] * garments).reshape(-1, 3)
    masks = torch.zeros((garments, SIZE, SIZE), dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[i, y0:y1, x0:x1] = True
    instances.gt_masks = BitMasks(masks)
    return {
        "image": torch.randint(0, 255, (3, SIZE, SIZE), dtype=torch.uint8).float(),
        "instances": instances,
    }


@pytest.mark.parametrize("convs", [0, 2])
def test_training_adds_an_attribute_loss_that_reaches_the_backbone(convs: int, tmp_path: Path) -> None:
    # given
    model = _model(convs, tmp_path)
    model.train()

    # when
    with EventStorage():
        losses = model([_example(2), _example(1)])
    losses["loss_attr"].backward()

    # then: binary cross-entropy of a near-zero logit, ~ln 2, with gradients into the head and backbone
    assert losses["loss_attr"].item() == pytest.approx(0.693, abs=0.05)
    heads = model.roi_heads
    assert heads.attribute_predictor.weight.grad is not None
    assert heads.attribute_predictor.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    if convs:
        assert heads.attribute_predictor.in_features == heads.box_head.output_shape.channels + 2 * 128
        assert all(p.grad is not None for p in heads.texture_head.parameters())
    else:
        assert heads.texture_head is None


def test_an_image_without_garments_costs_no_attribute_loss(tmp_path: Path) -> None:
    model = _model(2, tmp_path)
    model.train()

    with EventStorage():
        losses = model([_example(0), _example(0)])

    assert losses["loss_attr"].item() == 0.0


@pytest.mark.parametrize("convs", [0, 2])
def test_inference_scores_every_instance_on_every_attribute(convs: int, tmp_path: Path) -> None:
    model = _model(convs, tmp_path)
    model.roi_heads.box_predictor.test_score_thresh = 0.0  # random weights: keep what the heads find
    model.eval()

    with torch.no_grad():
        (output,) = model([{"image": _example(1)["image"], "height": SIZE, "width": SIZE}])

    instances = output["instances"]
    assert len(instances) > 0
    assert instances.attribute_scores.shape == (len(instances), 3)
    assert ((instances.attribute_scores > 0) & (instances.attribute_scores < 1)).all()
