"""The segmenter as a served model: the attribute Mask R-CNN, several images per forward pass, then per
image what the masks give: a cut-out per garment, its dominant colours, a body-region map, an overlay.

Per garment: category, score, box, COCO RLE mask, area, body region, attributes above the threshold
(name and score), colours. Pictures go to the blob store through ``Prediction.files``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.config import CfgNode
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from common.errors import ArtifactError
from common.outputs import (
    LOWER_BODY,
    REGIONS,
    UPPER_BODY,
    WHOLE_BODY,
    Attribute,
    BodyRegion,
    Colour,
    Garment,
    Regions,
    Segmentation,
)
from services.base import Prediction, latest_version_factory
from services.properties.colours import dominant_colours
from services.rcnn.model import RCNNModel
from services.segmenter import heads
from services.segmenter.config import SegmenterManifest, SegmenterSettings, get_segmenter_settings

__all__ = ["REGIONS", "SegmenterModel", "build", "cutout", "garment_colours", "overlay", "region_map"]

# Fashionpedia's supercategories name the body part a garment covers
SUPERCATEGORY_REGION: dict[str, BodyRegion] = {
    "upperbody": UPPER_BODY,
    "lowerbody": LOWER_BODY,
    "wholebody": WHOLE_BODY,
}
REGION_COLOURS = ((0, 0, 0), (230, 97, 1), (94, 60, 153), (253, 184, 99))  # of REGIONS, in order
OVERLAY_ALPHA = 0.45
MAX_COLOUR_PIXELS = 20_000


class SegmenterModel(RCNNModel[SegmenterManifest, SegmenterSettings]):
    name = "segmenter"
    manifest_type = SegmenterManifest

    def __init__(self, version_dir: Path, settings: SegmenterSettings | None = None) -> None:
        super().__init__(version_dir, settings or get_segmenter_settings())

    @property
    def attributes(self) -> list[str]:
        return list(self.manifest.attributes)

    @property
    def attribute_threshold(self) -> float:
        configured = self.settings.attribute_threshold
        return self.manifest.attribute_threshold if configured is None else configured

    def _extend_cfg(self, cfg: CfgNode) -> None:
        heads.add_attribute_config(cfg)

    def _check(self, cfg: CfgNode) -> None:
        if cfg.MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES != len(self.attributes):
            raise ArtifactError(
                f"the config has {cfg.MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES} attributes, "
                f"the manifest lists {len(self.attributes)}"
            )

    def _body_regions(self) -> dict[str, BodyRegion]:
        """From each class's supercategory in the training data."""
        return {
            c: r
            for c, s in zip(self.classes, self.manifest.supercategories, strict=False)
            if (r := SUPERCATEGORY_REGION.get(s))
        }

    def _predict(self, image: Image.Image, instances: Any) -> Prediction:
        garments = self.garments(instances)
        masks = instances.pred_masks.numpy().astype(bool)
        rgb = np.asarray(image.convert("RGB"))
        files: dict[str, bytes] = {}
        for i, (garment, mask, scores) in enumerate(
            zip(garments, masks, instances.attribute_scores.numpy(), strict=True)
        ):
            garment.attributes = [
                Attribute(name=self.attributes[a], score=round(float(scores[a]), 4))
                for a in np.argsort(-scores, kind="stable")
                if scores[a] >= self.attribute_threshold
            ]
            garment.colours = [Colour(**c) for c in garment_colours(rgb, mask, self.settings.colours)]
            if mask.any():
                garment.cutout = f"cutout-{i}.png"
                files[garment.cutout] = _png(cutout(rgb, mask))
        regions = region_map(masks, [g.body_region for g in garments], instances.scores.numpy())
        files["regions.png"] = _png(regions)
        files["overlay.png"] = _png(overlay(image, masks, garments))
        counts = np.bincount(np.asarray(regions).ravel(), minlength=len(REGIONS))
        total = float(counts.sum())
        fractions = {name: round(float(c) / total, 6) for name, c in zip(REGIONS, counts, strict=True)}
        output = Segmentation(
            garments=garments,
            regions=Regions(map="regions.png", values=dict(enumerate(REGIONS)), fractions=fractions),
            overlay="overlay.png",
        )
        return Prediction(output=output.dump(), files=files)


def garment_colours(rgb: NDArray[np.uint8], mask: NDArray[np.bool_], k: int) -> list[dict[str, Any]]:
    """The ``properties`` colour analysis restricted to the garment's pixels (a fixed sample of at most
    ``MAX_COLOUR_PIXELS`` of them, so a large garment costs what a small one does), as ``Colour``'s JSON
    without ``lab``."""
    pixels = rgb[mask]
    if len(pixels) > MAX_COLOUR_PIXELS:
        pixels = pixels[np.linspace(0, len(pixels) - 1, MAX_COLOUR_PIXELS).astype(int)]
    return [
        Colour(hex=c["hex"], name=c["name"], share=round(c["share"], 4)).dump()
        for c in dominant_colours(pixels, k)
    ]


def cutout(rgb: NDArray[np.uint8], mask: NDArray[np.bool_]) -> Image.Image:
    """RGBA cropped to the mask's bounding box; alpha 255 inside the mask, 0 everywhere else."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    rgba = np.dstack([rgb[top:bottom, left:right], np.where(mask[top:bottom, left:right], 255, 0)])
    return Image.fromarray(rgba.astype(np.uint8), "RGBA")


def region_map(
    masks: NDArray[np.bool_], regions: list[str | None], scores: NDArray[np.float32]
) -> Image.Image:
    """An indexed PNG the size of the image: 0 background, 1 upper, 2 lower, 3 whole body; where garments
    overlap, the higher-scoring one wins. Garments of no body region (parts, accessories) are skipped."""
    height, width = masks.shape[1:] if len(masks) else (0, 0)
    indices = np.zeros((height, width), dtype=np.uint8)
    for i in np.argsort(scores, kind="stable"):  # ascending: the best garment is painted last
        if regions[i] is not None:
            indices[masks[i]] = REGIONS.index(regions[i])
    picture = Image.fromarray(indices, "P")
    picture.putpalette([v for colour in REGION_COLOURS for v in colour])
    return picture


def overlay(image: Image.Image, masks: NDArray[np.bool_], garments: list[Garment]) -> Image.Image:
    """The image with each garment's mask tinted, its box drawn and labelled, for people to look at."""
    base = np.asarray(image.convert("RGB")).astype(np.float32)
    palette = np.array(
        [(228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163), (255, 127, 0), (166, 86, 40)],
        dtype=np.float32,
    )
    for i, mask in enumerate(masks):
        base[mask] = (1 - OVERLAY_ALPHA) * base[mask] + OVERLAY_ALPHA * palette[i % len(palette)]
    picture = Image.fromarray(base.astype(np.uint8))
    pen = ImageDraw.Draw(picture)
    for i, garment in enumerate(garments):
        colour = tuple(int(v) for v in palette[i % len(palette)])
        x1, y1, x2, y2 = garment.box
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        words = [garment.category, *(a.name for a in garment.attributes[:2])]
        label = f"{', '.join(words)} {garment.score:.2f}"
        left, top, right, bottom = pen.textbbox((x1 + 2, y1 + 2), label)
        pen.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
        pen.text((x1 + 2, y1 + 2), label, fill=(255, 255, 255))
    return picture


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # level 1: the default level took 3.6x as long (bench/segmenter.py)
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


build = latest_version_factory(SegmenterModel)  # SPEC.model_path
