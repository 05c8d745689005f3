"""The properties analyser: measurements of an image that need no trained model.

Every constant below is part of the algorithm, not of the deployment: changing one changes the stored
results, so it is a code change with a bump of ``PROPERTIES_VERSION``, not a setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imagehash
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

from common.outputs import Background, Colour, Properties
from services.base import Model, Prediction, ServiceSpec
from services.properties.colours import dominant_colours, rgb_to_hex, srgb_to_lab
from services.properties.config import PROPERTIES_VERSION

# Colours, brightness and background are measured, for speed, on a copy whose longer side is at most
# this (65k pixels at most instead of millions). The copy is taken by nearest-neighbour sampling, so it
# holds only colours that are in the photo: averaging filters would invent blends along every edge.
COLOUR_MAX_SIDE = 256
N_COLOURS = 5
COLOUR_SEED = 0

# Sharpness is measured after resizing the longer side to exactly this (up or down): the variance of
# the Laplacian grows with resolution, so only a fixed size makes it comparable across images.
SHARPNESS_SIDE = 512

# The background is judged on a frame this fraction of each side wide: on catalogue shots the garment
# rarely reaches into the outer 4 %, so the frame sees background only.
BORDER_FRACTION = 0.04
# A frame pixel matches the background colour when it is within this CIE76 distance of the frame's
# median; ~10 keeps studio shading and JPEG noise in, and a different object out.
BACKGROUND_DELTA_E = 10.0
# Plain when at least 90 % of the frame matches: a studio backdrop with a shadow or a stray hanger
# still counts as plain, while a street, room or pattern does not.
PLAIN_BACKGROUND_UNIFORMITY = 0.9


class PropertiesModel(Model):
    """Size, dominant colours, sharpness, brightness, perceptual hash and background of each image."""

    name = "properties"
    version = PROPERTIES_VERSION

    def __init__(self) -> None:
        self._loaded = False

    def load(self) -> None:
        # Nothing to read from disk; the flag keeps the load-then-predict life cycle of every model.
        self._loaded = True

    def predict(self, images: Sequence[Image.Image]) -> list[Prediction]:
        if not self._loaded:
            raise RuntimeError(f"{type(self).__name__}.predict() called before load()")
        return [Prediction(output=analyse(image).dump()) for image in images]


def build(spec: ServiceSpec, repository: Path) -> PropertiesModel:
    """Factory named by ``SPEC.model_path``; there is no artifact, so ``repository`` is not read."""
    if spec.builtin_version != PROPERTIES_VERSION:
        raise ValueError(
            f"spec {spec.name!r} asks for version {spec.builtin_version!r}; "
            f"this code is {PROPERTIES_VERSION!r}"
        )
    return PropertiesModel()


def analyse(image: Image.Image) -> Properties:
    """The properties of one RGB image."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
    small = np.asarray(_fit(image, COLOUR_MAX_SIDE, Image.Resampling.NEAREST, upscale=False))
    pixels = small.reshape(-1, 3)
    lab = srgb_to_lab(pixels)
    return Properties(
        width=image.width,
        height=image.height,
        colours=[Colour(**c) for c in dominant_colours(pixels, k=N_COLOURS, seed=COLOUR_SEED, lab=lab)],
        sharpness=sharpness(image),
        brightness=round(float(np.mean(lab[:, 0])) / 100, 4),
        phash=str(imagehash.phash(image)),
        background=background(small, lab.reshape(small.shape)),
    )


def sharpness(image: Image.Image) -> float:
    """Variance of the Laplacian of the grey image (0..255) resized to a longer side of SHARPNESS_SIDE."""
    grey = _fit(image.convert("L"), SHARPNESS_SIDE, Image.Resampling.BILINEAR, upscale=True)
    laplacian = ndimage.laplace(np.asarray(grey, dtype=np.float32))
    return round(float(np.var(laplacian, dtype=np.float64)), 2)


def background(rgb: NDArray[np.uint8], lab: NDArray[np.float64] | None = None) -> Background:
    """Whether the frame around an ``(H, W, 3)`` image is one plain colour, and which.

    ``lab``: ``srgb_to_lab(rgb)``, when the caller already has it.
    """
    height, width = rgb.shape[:2]
    frame_h = max(1, round(height * BORDER_FRACTION))
    frame_w = max(1, round(width * BORDER_FRACTION))
    in_frame = np.zeros((height, width), dtype=bool)
    in_frame[:frame_h] = in_frame[-frame_h:] = True
    in_frame[:, :frame_w] = in_frame[:, -frame_w:] = True
    frame = rgb[in_frame]
    frame_lab = srgb_to_lab(frame) if lab is None else lab[in_frame]

    median = np.rint(np.median(frame, axis=0)).astype(np.uint8)
    distance = np.linalg.norm(frame_lab - srgb_to_lab(median), axis=1)
    uniformity = float(np.mean(distance < BACKGROUND_DELTA_E))
    return Background(
        plain=uniformity >= PLAIN_BACKGROUND_UNIFORMITY,
        colour=rgb_to_hex(median),
        uniformity=round(uniformity, 4),
    )


def _fit(image: Image.Image, side: int, resample: Image.Resampling, *, upscale: bool) -> Image.Image:
    """``image`` scaled, keeping its aspect ratio, so that its longer side is ``side``."""
    longer = max(image.size)
    if longer == side or (longer < side and not upscale):
        return image
    scale = side / longer
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, resample)
