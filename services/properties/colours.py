"""Colour science for the properties analyser: sRGB <-> CIELAB, CIEDE2000, palette names, k-means.

Everything works on plain ``(N, 3)`` pixel arrays so that the same functions can later be applied to
the pixels under a garment mask instead of the whole image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.cluster.vq import kmeans2, vq

FloatArray = NDArray[np.float64]

# Linear sRGB -> CIE XYZ, derived from the sRGB primaries and the D65 white (IEC 61966-2-1; the
# 7-decimal form published by B. Lindbloom). The 4-decimal matrix of the standard's text is off by
# up to 0.01 in L*, which is enough to miss the reference Lab of pure red at 2 decimals.
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
# The white of this matrix: D65 (0.95047, 1.00000, 1.08883) to 5 decimals. Taking it from the matrix
# itself makes sRGB white map to exactly L* = 100, a* = b* = 0.
_WHITE = _RGB_TO_XYZ.sum(axis=1)

_EPSILON = (6 / 29) ** 3  # CIE: below this the cube root is replaced by a straight line
_KAPPA = 3 * (6 / 29) ** 2

# The sRGB decoding of all 256 code values; decoding through a table is several times faster than pow().
_LINEAR_LUT = np.where(
    np.arange(256) / 255.0 <= 0.04045,
    np.arange(256) / 255.0 / 12.92,
    ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4,
)


def srgb_to_lab(rgb: ArrayLike) -> FloatArray:
    """8-bit sRGB ``(..., 3)`` to CIELAB (D65, 2 degree observer), ``(..., 3)`` float64."""
    codes = np.asarray(rgb)
    if codes.shape[-1:] != (3,):
        raise ValueError(f"expected (..., 3) sRGB values, got shape {codes.shape}")
    if codes.dtype != np.uint8:
        if np.any((codes < 0) | (codes > 255)) or np.any(codes != np.round(codes)):
            raise ValueError("sRGB values must be integers in 0..255")
        codes = codes.astype(np.uint8)
    xyz = _LINEAR_LUT[codes] @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), xyz / _KAPPA + 4 / 29)
    lab = np.empty_like(f)
    lab[..., 0] = 116 * f[..., 1] - 16
    lab[..., 1] = 500 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200 * (f[..., 1] - f[..., 2])
    result: FloatArray = lab
    return result


def lab_to_srgb(lab: ArrayLike) -> NDArray[np.uint8]:
    """CIELAB (D65) ``(..., 3)`` to 8-bit sRGB; colours outside the sRGB gamut are clipped."""
    lab_arr = np.asarray(lab, dtype=np.float64)
    if lab_arr.shape[-1:] != (3,):
        raise ValueError(f"expected (..., 3) Lab values, got shape {lab_arr.shape}")
    fy = (lab_arr[..., 0] + 16) / 116
    f = np.stack([fy + lab_arr[..., 1] / 500, fy, fy - lab_arr[..., 2] / 200], axis=-1)
    xyz = np.where(f > 6 / 29, f**3, _KAPPA * (f - 4 / 29)) * _WHITE
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    srgb: NDArray[np.uint8] = np.rint(encoded * 255).astype(np.uint8)
    return srgb


def ciede2000(lab1: ArrayLike, lab2: ArrayLike) -> FloatArray:
    """CIEDE2000 colour difference (kL = kC = kH = 1), broadcasting over leading axes.

    Follows Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes,
    supplementary test data, and mathematical observations", equations (1)-(17), including their
    conventions for the hue when a chroma is zero.
    """
    l1, a1, b1 = np.moveaxis(np.asarray(lab1, dtype=np.float64), -1, 0)
    l2, a2, b2 = np.moveaxis(np.asarray(lab2, dtype=np.float64), -1, 0)

    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360  # arctan2(0, 0) = 0, the paper's convention
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360

    chroma_product = c1p * c2p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(chroma_product == 0, 0.0, dh)
    d_lp = l2 - l1
    d_cp = c2p - c1p
    d_hp = 2 * np.sqrt(chroma_product) * np.sin(np.radians(dh) / 2)

    l_bar = (l1 + l2) / 2
    c_bar_p = (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_bar = np.where(
        np.abs(h1p - h2p) <= 180,
        h_sum / 2,
        np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2),
    )
    h_bar = np.where(chroma_product == 0, h_sum, h_bar)

    t = (
        1
        - 0.17 * np.cos(np.radians(h_bar - 30))
        + 0.24 * np.cos(np.radians(2 * h_bar))
        + 0.32 * np.cos(np.radians(3 * h_bar + 6))
        - 0.20 * np.cos(np.radians(4 * h_bar - 63))
    )
    d_theta = 30 * np.exp(-(((h_bar - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(c_bar_p**7 / (c_bar_p**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / np.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * c_bar_p
    s_h = 1 + 0.015 * c_bar_p * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c

    dl, dc, dh_term = d_lp / s_l, d_cp / s_c, d_hp / s_h
    return np.asarray(np.sqrt(dl**2 + dc**2 + dh_term**2 + r_t * dc * dh_term), dtype=np.float64)


# Every Fashion Product Images ``baseColour`` except "Multi". The hex values are representative
# colours chosen by us for naming, not values taken from the dataset (which has no colour values).
PALETTE: dict[str, str] = {
    "Black": "#111111",
    "White": "#ffffff",
    "Off White": "#f5f2e8",
    "Cream": "#f3e5c0",
    "Grey": "#808080",
    "Grey Melange": "#a4a4a0",
    "Charcoal": "#36454f",
    "Silver": "#c0c0c0",
    "Metallic": "#8c9399",
    "Steel": "#71797e",
    "Navy Blue": "#1b2a5c",
    "Blue": "#2456c8",
    "Turquoise Blue": "#1cb5c4",
    "Teal": "#008080",
    "Green": "#2e7d32",
    "Sea Green": "#2e8b57",
    "Lime Green": "#32cd32",
    "Fluorescent Green": "#39ff14",
    "Olive": "#6b7230",
    "Purple": "#6a2c91",
    "Lavender": "#b8a2d9",
    "Mauve": "#b784a7",
    "Magenta": "#d1108c",
    "Pink": "#f49ac1",
    "Rose": "#d9607f",
    "Peach": "#ffcba4",
    "Red": "#d7262e",
    "Maroon": "#800000",
    "Burgundy": "#800020",
    "Rust": "#b7410e",
    "Orange": "#f57c00",
    "Mustard": "#e1ad01",
    "Yellow": "#ffe600",
    "Gold": "#d4af37",
    "Bronze": "#cd7f32",
    "Copper": "#b87333",
    "Brown": "#6b4226",
    "Coffee Brown": "#4b3621",
    "Mushroom Brown": "#a8968a",
    "Taupe": "#8b7b6b",
    "Tan": "#d2b48c",
    "Khaki": "#c3b091",
    "Beige": "#d8c3a0",
    "Nude": "#e3bc9a",
    "Skin": "#d9a581",
}


def hex_to_rgb(hex_colour: str) -> tuple[int, int, int]:
    digits = hex_colour.removeprefix("#")
    if len(digits) != 6:
        raise ValueError(f"expected a colour like '#rrggbb', got {hex_colour!r}")
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


def rgb_to_hex(rgb: Sequence[int] | NDArray[np.uint8]) -> str:
    r, g, b = (int(c) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


_PALETTE_NAMES = list(PALETTE)
_PALETTE_LAB = srgb_to_lab(np.array([hex_to_rgb(h) for h in PALETTE.values()], dtype=np.uint8))


def nearest_colour_names(lab: ArrayLike) -> list[str]:
    """The palette name nearest by CIEDE2000 to each Lab colour of an ``(N, 3)`` array."""
    lab_arr = np.asarray(lab, dtype=np.float64).reshape(-1, 3)
    distances = ciede2000(lab_arr[:, None, :], _PALETTE_LAB[None, :, :])
    return [_PALETTE_NAMES[i] for i in np.argmin(distances, axis=1)]


def nearest_colour_name(lab: ArrayLike) -> str:
    """The palette name nearest by CIEDE2000 to one Lab colour ``[L, a, b]``."""
    lab_arr = np.asarray(lab, dtype=np.float64)
    if lab_arr.shape != (3,):
        raise ValueError(f"expected one Lab colour [L, a, b], got shape {lab_arr.shape}")
    return nearest_colour_names(lab_arr)[0]


MAX_CLUSTER_SAMPLES = 20_000  # k-means sees at most this many pixels; shares still count every pixel
KMEANS_ITERATIONS = 10  # k-means++ starts close; 10 Lloyd steps settle the 3-D clusters we need


def dominant_colours(
    rgb: ArrayLike, k: int = 5, seed: int = 0, *, lab: FloatArray | None = None
) -> list[dict[str, Any]]:
    """The ``k`` dominant colours of ``(N, 3)`` uint8 sRGB pixels, by k-means in CIELAB.

    Returns at most ``k`` clusters (fewer when the pixels hold fewer distinct colours, never an empty
    one), sorted by share, largest first: ``{"hex", "share", "name", "lab"}``. Shares are fractions
    of all ``N`` pixels and sum to 1. No pixels, no colours: an empty mask gives ``[]``. The result
    depends only on the pixels, ``k`` and ``seed``. ``lab``: ``srgb_to_lab(rgb)``, when the caller
    already has it.
    """
    pixels = np.asarray(rgb)
    if pixels.ndim != 2 or pixels.shape[1] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected (N, 3) uint8 pixels, got shape {pixels.shape} dtype {pixels.dtype}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(pixels) == 0:
        return []

    if lab is None:
        lab = srgb_to_lab(pixels)
    elif lab.shape != pixels.shape:
        raise ValueError(f"lab has shape {lab.shape}; the pixels have {pixels.shape}")
    centres = _cluster_centres(pixels, lab, k, np.random.default_rng(seed))
    labels, _ = vq(lab, centres, check_finite=False)
    counts = np.bincount(labels, minlength=len(centres))
    kept = np.flatnonzero(counts)
    # One last Lloyd step over every pixel, so that each centre is the mean of the pixels it counts.
    sums = np.stack([np.bincount(labels, weights=lab[:, c], minlength=len(centres)) for c in range(3)], 1)
    means = sums[kept] / counts[kept, None]
    shares = counts[kept] / len(pixels)

    names = nearest_colour_names(means)
    clusters = [
        {
            "hex": rgb_to_hex(lab_to_srgb(centre)),
            "share": float(share),
            "name": name,
            "lab": [round(float(v), 2) for v in centre],
        }
        for centre, share, name in zip(means, shares, names, strict=True)
    ]
    # Ties on share are broken by colour so that the order never depends on cluster numbering.
    return sorted(clusters, key=lambda c: (-c["share"], c["lab"]))


def _cluster_centres(
    pixels: NDArray[np.uint8], lab: FloatArray, k: int, rng: np.random.Generator
) -> FloatArray:
    """k-means centres in Lab, fitted on a deterministic sample of at most MAX_CLUSTER_SAMPLES pixels."""
    if len(pixels) > MAX_CLUSTER_SAMPLES:
        sample = np.sort(rng.choice(len(pixels), MAX_CLUSTER_SAMPLES, replace=False))
        pixels, lab = pixels[sample], lab[sample]
    packed = (pixels[:, 0].astype(np.int32) << 16) | (pixels[:, 1].astype(np.int32) << 8) | pixels[:, 2]
    distinct, first = np.unique(packed, return_index=True)
    if len(distinct) <= k:
        # k-means++ cannot seed more centres than there are distinct points: each colour is a cluster.
        return lab[first]
    with warnings.catch_warnings():
        # A cluster k-means leaves empty keeps its old centre; it is dropped after the final assignment.
        warnings.filterwarnings("ignore", message="One of the clusters is empty")
        centres, _ = kmeans2(lab, k, iter=KMEANS_ITERATIONS, minit="++", rng=rng, check_finite=False)
    return np.asarray(centres, dtype=np.float64)
