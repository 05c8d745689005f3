"""Generated detection data: garment-like shapes on varied backgrounds, with exact masks, as COCO JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# three DeepFashion2 categories drawn as recognisable silhouettes (id, name, drawer)
SHAPES = {1: "short sleeve top", 8: "trousers", 10: "short sleeve dress"}


def polygon(category: int, x: float, y: float, s: float) -> list[tuple[float, float]]:
    """The silhouette's outline in a box of side ``s`` at (x, y)."""
    if category == 1:  # a T: body and two sleeves
        return [
            (x + 0.3 * s, y),
            (x + 0.7 * s, y),
            (x + s, y + 0.25 * s),
            (x + 0.85 * s, y + 0.4 * s),
            (x + 0.72 * s, y + 0.3 * s),
            (x + 0.72 * s, y + s),
            (x + 0.28 * s, y + s),
            (x + 0.28 * s, y + 0.3 * s),
            (x + 0.15 * s, y + 0.4 * s),
            (x, y + 0.25 * s),
        ]
    if category == 8:  # two legs joined at the waist
        return [
            (x + 0.2 * s, y),
            (x + 0.8 * s, y),
            (x + 0.85 * s, y + s),
            (x + 0.58 * s, y + s),
            (x + 0.5 * s, y + 0.35 * s),
            (x + 0.42 * s, y + s),
            (x + 0.15 * s, y + s),
        ]
    return [
        (x + 0.35 * s, y),
        (x + 0.65 * s, y),
        (x + 0.7 * s, y + 0.3 * s),
        (x + s, y + s),
        (x, y + s),
        (x + 0.3 * s, y + 0.3 * s),
    ]  # a dress: narrow top, wide hem


def scene(rng: np.random.Generator, size: int = 256) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One image with 1-3 garments that do not overlap, on a noisy or striped background."""
    background = rng.integers(0, 256, 3)
    base = np.clip(background + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        base[:: int(rng.integers(6, 20))] //= 2  # stripes
    image = Image.fromarray(base).filter(ImageFilter.GaussianBlur(1))
    pen = ImageDraw.Draw(image)
    garments: list[dict[str, Any]] = []
    cells = rng.permutation(4)[: int(rng.integers(1, 4))]  # quadrants, so garments never overlap
    for cell in cells:
        category = int(rng.choice(list(SHAPES)))
        s = float(rng.uniform(0.28, 0.45)) * size
        x = (cell % 2) * size / 2 + float(rng.uniform(0, size / 2 - s))
        y = (cell // 2) * size / 2 + float(rng.uniform(0, size / 2 - s))
        outline = polygon(category, x, y, s)
        colour = tuple(int(v) for v in (255 - background + rng.integers(-40, 40, 3)) % 256)
        pen.polygon(outline, fill=colour)
        xs, ys = [p[0] for p in outline], [p[1] for p in outline]
        garments.append(
            {
                "category_id": category,
                "polygon": [c for p in outline for c in p],
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
            }
        )
    return image, garments


Scene = Callable[[np.random.Generator, int], tuple[Image.Image, list[dict[str, Any]]]]


def write_coco(
    root: Path,
    n: int,
    seed: int,
    size: int = 256,
    *,
    draw: Scene = scene,
    categories: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    quality: int = 92,
) -> Path:
    """``root/images/*.jpg`` and ``root/instances.json`` of ``n`` scenes by ``draw``; returns the JSON's
    path. Each garment's keys besides ``polygon`` (``category_id``, ``bbox``, e.g. ``attribute_ids``)
    go into its annotation; ``extra`` adds top-level keys (e.g. ``attributes``)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id in range(1, n + 1):
        picture, garments = draw(rng, size)
        name = f"{seed}-{image_id:05d}.jpg"
        picture.save(root / "images" / name, quality=quality)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for garment in garments:
            fields = {k: v for k, v in garment.items() if k != "polygon"}
            w, h = garment["bbox"][2], garment["bbox"][3]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    **fields,
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [garment["polygon"]],
                }
            )
    if categories is None:
        categories = [
            {"id": i, "name": name, "supercategory": "clothes"} for i, name in sorted(SHAPES.items())
        ]
    data = {"images": images, "annotations": annotations, "categories": categories, **(extra or {})}
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path
