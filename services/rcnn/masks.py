"""Detectron2 instances → garments: category, score, box, body region, and the mask as a COCO RLE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pycocotools import mask as mask_util

from common.outputs import BodyRegion, Garment, MaskRLE


def encode_masks(masks: NDArray[Any]) -> list[dict[str, Any]]:
    """pycocotools' RLEs (``counts`` as bytes) of N x H x W boolean masks, in one call."""
    if not len(masks):
        return []
    stacked = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    encoded: list[dict[str, Any]] = mask_util.encode(stacked)
    return encoded


def encode_mask(mask: NDArray[Any]) -> MaskRLE:
    """One H x W mask as the JSON-able RLE the outputs carry."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return MaskRLE(size=[int(v) for v in rle["size"]], counts=rle["counts"].decode("ascii"))


def garments(instances: Any, classes: Sequence[str], regions: Mapping[str, BodyRegion]) -> list[Garment]:
    """Per predicted instance (on the CPU): category, score, box, body region, and with masks, the mask
    and its area."""
    found = []
    masks = instances.pred_masks.numpy() if instances.has("pred_masks") else [None] * len(instances)
    for box, score, label, mask in zip(
        instances.pred_boxes.tensor.numpy(),
        instances.scores.numpy(),
        instances.pred_classes.numpy(),
        masks,
        strict=True,
    ):
        category = classes[int(label)]
        garment = Garment(
            category=category,
            score=round(float(score), 6),
            box=[round(float(v), 2) for v in box],
            body_region=regions.get(category),
        )
        if mask is not None:
            garment.mask = encode_mask(mask)
            garment.area = int(mask.sum())
        found.append(garment)
    return found
