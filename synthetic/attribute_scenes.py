"""Generated garments with style attributes, as COCO JSON in the Fashionpedia layout: each garment is a
silhouette (top / trousers / dress) that is long or short and striped, dotted or plain, with an exact
polygon mask and its ``attribute_ids``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from synthetic.scenes import polygon
from synthetic.scenes import write_coco as write_scenes

CATEGORIES = {1: "top", 8: "pants", 10: "dress"}  # drawn with the silhouettes of ``scenes``
SUPERCATEGORIES = {1: "upperbody", 8: "lowerbody", 10: "wholebody"}  # as Fashionpedia names them
# ids as sparse as Fashionpedia's; names of its kind
ATTRIBUTES = {115: "plain (pattern)", 142: "stripe", 150: "dot", 307: "maxi (length)", 317: "mini (length)"}
PATTERNS = (115, 142, 150)
LENGTHS = (307, 317)


def _pattern_mask(pattern: int, size: int, rng: np.random.Generator) -> Image.Image:
    """Where the pattern's second colour goes (L mode, 255 = second colour)."""
    layer = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(layer)
    if pattern == 142:  # horizontal bands 10-14 px wide: one band per cell of the 7x7 pooled features
        period = int(rng.integers(20, 29))
        for y in range(int(rng.integers(0, period)), size, period):
            pen.rectangle((0, y, size, y + period // 2 - 1), fill=255)
    elif pattern == 150:  # dots 10-12 px across on a 20-26 px grid
        period, r = int(rng.integers(20, 27)), int(rng.integers(5, 7))
        for y in range(period // 2, size, period):
            for x in range(period // 2, size, period):
                pen.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return layer


def scene(rng: np.random.Generator, size: int = 192) -> tuple[Image.Image, list[dict[str, Any]]]:
    """1-3 non-overlapping garments (one per quadrant) on a noisy background."""
    background = rng.integers(0, 256, 3)
    base = np.clip(background + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(base).filter(ImageFilter.GaussianBlur(1))
    garments: list[dict[str, Any]] = []
    for cell in rng.permutation(4)[: int(rng.integers(1, 4))]:
        category = int(rng.choice(list(CATEGORIES)))
        pattern, length = int(rng.choice(PATTERNS)), int(rng.choice(LENGTHS))
        s = float(rng.uniform(0.36, 0.46)) * size
        x = (cell % 2) * size / 2 + float(rng.uniform(0, size / 2 - s))
        y = (cell // 2) * size / 2 + float(rng.uniform(0, size / 2 - s))
        outline = polygon(category, x, y, s)
        if length == 317:  # short: the same silhouette squashed to 55 % of its height
            outline = [(px, y + 0.55 * (py - y)) for px, py in outline]
        colour = tuple(int(v) for v in (255 - background + rng.integers(-30, 30, 3)) % 256)
        shape = Image.new("L", (size, size), 0)
        ImageDraw.Draw(shape).polygon(outline, fill=255)
        image.paste(Image.new("RGB", (size, size), colour), (0, 0), shape)
        second = Image.new("RGB", (size, size), tuple(255 - c for c in colour))
        pattern_in_shape = Image.fromarray(
            np.minimum(np.asarray(shape), np.asarray(_pattern_mask(pattern, size, rng)))
        )
        image.paste(second, (0, 0), pattern_in_shape)
        xs, ys = [p[0] for p in outline], [p[1] for p in outline]
        garments.append(
            {
                "category_id": category,
                "attribute_ids": [pattern, length],
                "polygon": [c for p in outline for c in p],
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
            }
        )
    return image, garments


def write_coco(root: Path, n: int, seed: int, size: int = 192) -> Path:
    """``root/images/*.jpg`` and ``root/instances.json`` with ``attributes``; returns the JSON's path."""
    categories = [
        {"id": i, "name": name, "supercategory": SUPERCATEGORIES[i]} for i, name in CATEGORIES.items()
    ]
    attributes = [{"id": i, "name": n, "supercategory": "style"} for i, n in ATTRIBUTES.items()]
    return write_scenes(
        root, n, seed, size, draw=scene, categories=categories, extra={"attributes": attributes}, quality=95
    )
