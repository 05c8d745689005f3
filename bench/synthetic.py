"""Distinct, deterministic garment-like JPEGs: a light studio background, one garment shape, sensor noise."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from synthetic.imageserver import jpeg_bytes

Mask = NDArray[np.bool_]


def garment_jpegs(count: int, *, seed: int = 0, size: int = 512, quality: int = 90) -> list[bytes]:
    """``count`` JPEGs of ``size``×``size``; the noise alone makes every one distinct (another sha256)."""
    rng = np.random.default_rng(seed)
    return [jpeg_bytes(Image.fromarray(_garment(rng, size)), quality=quality) for _ in range(count)]


def _garment(rng: np.random.Generator, size: int) -> NDArray[np.uint8]:
    y, x = np.mgrid[0:size, 0:size] / size
    pixels = np.empty((size, size, 3), dtype=np.float32)
    pixels[:] = rng.integers(200, 256, size=3)
    shape = (_shirt, _dress, _trousers)[rng.integers(3)]
    pixels[shape(rng, y, x)] = rng.integers(0, 256, size=3)
    pixels += rng.normal(0.0, 6.0, size=pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _shirt(rng: np.random.Generator, y: NDArray[np.float64], x: NDArray[np.float64]) -> Mask:
    top, bottom, half = rng.uniform(0.12, 0.22), rng.uniform(0.7, 0.88), rng.uniform(0.14, 0.22)
    sleeve_end, reach = top + rng.uniform(0.15, 0.3), half + rng.uniform(0.1, 0.2)
    body = (y > top) & (y < bottom) & (np.abs(x - 0.5) < half)
    sleeves = (y > top) & (y < sleeve_end) & (np.abs(x - 0.5) < reach)
    neck = (y - top) ** 2 + (x - 0.5) ** 2 < rng.uniform(0.003, 0.006)
    return (body | sleeves) & ~neck


def _dress(rng: np.random.Generator, y: NDArray[np.float64], x: NDArray[np.float64]) -> Mask:
    top, bottom = rng.uniform(0.08, 0.18), rng.uniform(0.8, 0.95)
    waist, hem = rng.uniform(0.08, 0.14), rng.uniform(0.25, 0.4)
    depth = np.clip((y - top) / (bottom - top), 0.0, 1.0)
    return (y > top) & (y < bottom) & (np.abs(x - 0.5) < waist + (hem - waist) * depth**1.5)


def _trousers(rng: np.random.Generator, y: NDArray[np.float64], x: NDArray[np.float64]) -> Mask:
    top, bottom, half = rng.uniform(0.08, 0.15), rng.uniform(0.82, 0.95), rng.uniform(0.16, 0.24)
    crotch, gap = rng.uniform(0.35, 0.45), rng.uniform(0.02, 0.05)
    legs = (y > top) & (y < bottom) & (np.abs(x - 0.5) < half)
    return legs & ~((y > crotch) & (np.abs(x - 0.5) < gap))
