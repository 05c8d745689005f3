"""A generated Fashion Product Images-style dataset: drawn garments, a styles.csv with the real faults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "Red": (200, 30, 40),
    "Blue": (30, 60, 200),
    "Green": (40, 160, 60),
    "Yellow": (230, 200, 40),
    "Black": (25, 25, 25),
}
ARTICLES = {"Tshirts": "Topwear", "Trousers": "Bottomwear", "Dresses": "Dress", "Handbags": "Bags"}
HEADS = ["gender", "articleType", "baseColour", "usage"]


def gender(article: str, colour: str) -> str:
    """The rule the gender head must learn: it depends on shape and colour together."""
    return "Women" if article in ("Dresses", "Handbags") or colour == "Red" else "Men"


def usage(article: str, colour: str) -> str:
    return "Sports" if colour in ("Green", "Yellow") and article != "Handbags" else "Casual"


def draw(article: str, colour: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(215, 250, 3))
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    fill = tuple(int(np.clip(v + rng.integers(-20, 20), 0, 255)) for v in COLOURS[colour])
    s = size

    def jitter() -> int:
        return int(rng.integers(-s // 16, s // 16 + 1))

    if article == "Tshirts":
        pen.rectangle(
            [s * 0.32 + jitter(), s * 0.25 + jitter(), s * 0.68 + jitter(), s * 0.85 + jitter()], fill=fill
        )
        pen.polygon(
            [(s * 0.32, s * 0.25), (s * 0.12, s * 0.45), (s * 0.22, s * 0.52), (s * 0.34, s * 0.4)], fill=fill
        )
        pen.polygon(
            [(s * 0.68, s * 0.25), (s * 0.88, s * 0.45), (s * 0.78, s * 0.52), (s * 0.66, s * 0.4)], fill=fill
        )
    elif article == "Trousers":
        pen.rectangle([s * 0.3 + jitter(), s * 0.15, s * 0.7 + jitter(), s * 0.35], fill=fill)
        pen.rectangle([s * 0.3, s * 0.3, s * 0.47, s * 0.9 + jitter()], fill=fill)
        pen.rectangle([s * 0.53, s * 0.3, s * 0.7, s * 0.9 + jitter()], fill=fill)
    elif article == "Dresses":
        pen.polygon(
            [
                (s * 0.4 + jitter(), s * 0.12),
                (s * 0.6 + jitter(), s * 0.12),
                (s * 0.8, s * 0.9),
                (s * 0.2, s * 0.9),
            ],
            fill=fill,
        )
    else:
        pen.rectangle([s * 0.25 + jitter(), s * 0.4 + jitter(), s * 0.75 + jitter(), s * 0.85], fill=fill)
        pen.arc([s * 0.35, s * 0.2, s * 0.65, s * 0.6], 180, 360, fill=fill, width=max(2, s // 20))
    return image


def write_dataset(root: Path, n: int, seed: int, *, first_id: int = 1000) -> list[dict[str, str]]:
    """``root/styles.csv`` + ``root/images/<id>.jpg``; every combination of article and colour in turn.

    Like the real file, some display names carry unquoted commas, and two extra rows are faulty: one
    with an empty baseColour, one with too few fields. Returns the rows that are valid."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = [
        "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
    ]
    rows = []
    for i in range(n):
        article = list(ARTICLES)[i % len(ARTICLES)]
        colour = list(COLOURS)[(i // len(ARTICLES)) % len(COLOURS)]
        row = {
            "id": str(first_id + i),
            "gender": gender(article, colour),
            "articleType": article,
            "baseColour": colour,
            "usage": usage(article, colour),
        }
        draw(article, colour, rng).save(root / "images" / f"{row['id']}.jpg", quality=95)
        name = (
            f"Atelier {colour}, {article}" if i % 7 == 0 else f"Atelier {colour} {article}"
        )  # unquoted comma
        master = "Accessories" if article == "Handbags" else "Apparel"
        lines.append(
            f"{row['id']},{row['gender']},{master},{ARTICLES[article]},{article},{colour},Summer,2012,{row['usage']},{name}"
        )
        rows.append(row)
    lines.append(f"{first_id + n},Men,Apparel,Topwear,Tshirts,,Summer,2012,Casual,No colour")
    lines.append(f"{first_id + n + 1},Men,Apparel")
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return rows
