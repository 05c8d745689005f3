"""The one preprocessing of the classifier, used by training, evaluation and serving alike.

numpy and Pillow only (no TensorFlow), so the parity between training and serving is testable anywhere.
The seed project served garment crops unresized and unscaled while it trained on resized, scaled images;
here every path goes through ``preprocess``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageEnhance

# keras.applications.vgg19.preprocess_input ("caffe" mode): RGB → BGR, minus the ImageNet mean per channel
VGG_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
PREPROCESSING = "vgg19-caffe: bilinear resize to input_size, RGB->BGR, minus ImageNet BGR mean"

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


def preprocess(image: Image.Image, input_size: tuple[int, int]) -> NDArray[np.float32]:
    """An RGB image → the network's input array (height, width, 3), float32."""
    height, width = input_size
    resized = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)[..., ::-1] - VGG_MEAN_BGR


def preprocess_batch(images: Sequence[Image.Image], input_size: tuple[int, int]) -> NDArray[np.float32]:
    if not images:
        return np.zeros((0, *input_size, 3), dtype=np.float32)
    return np.stack([preprocess(image, input_size) for image in images])


def crop(image: Image.Image, box: Box, margin: float) -> Image.Image:
    """The garment in ``box``, ``margin`` (a fraction of the box) added on each side, clipped to the image."""
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"empty box {box!r}")
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(round(x1 - dx))), max(0, int(round(y1 - dy)))
    right, bottom = min(image.width, int(round(x2 + dx))), min(image.height, int(round(y2 + dy)))
    if right <= left or bottom <= top:
        raise ValueError(f"box {box!r} lies outside the {image.width}x{image.height} image")
    return image.crop((left, top, right, bottom))


def augment(image: Image.Image, rng: np.random.Generator, *, colour_jitter: bool = True) -> Image.Image:
    """Training-time augmentation: flip, a random crop of 80-100 % of each side, and brightness,
    contrast and saturation jitter. Never hue: baseColour is a label, and a hue shift would change it.
    ``colour_jitter=False`` keeps colours exact (saturation changes can move a colour's name too)."""
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = rng.uniform(0.8, 1.0, size=2)
    width, height = int(image.width * scale[0]), int(image.height * scale[1])
    left = int(rng.integers(0, image.width - width + 1))
    top = int(rng.integers(0, image.height - height + 1))
    image = image.crop((left, top, left + width, top + height))
    if colour_jitter:
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhancer(image).enhance(float(rng.uniform(0.85, 1.15)))
    return image
