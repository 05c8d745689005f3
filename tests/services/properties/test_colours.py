from __future__ import annotations

import math

import numpy as np
import pytest

from services.properties.colours import (
    PALETTE,
    ciede2000,
    dominant_colours,
    hex_to_rgb,
    lab_to_srgb,
    nearest_colour_name,
    srgb_to_lab,
)

# The Fashion Product Images baseColour values, less "Multi".
FASHION_BASE_COLOURS = {
    "Navy Blue", "Blue", "Silver", "Black", "Grey", "Green", "Purple", "White", "Beige", "Brown",
    "Bronze", "Teal", "Copper", "Pink", "Off White", "Maroon", "Red", "Khaki", "Orange", "Coffee Brown",
    "Yellow", "Charcoal", "Gold", "Steel", "Tan", "Magenta", "Lavender", "Sea Green", "Cream", "Peach",
    "Olive", "Skin", "Burgundy", "Grey Melange", "Rust", "Rose", "Lime Green", "Mauve", "Turquoise Blue",
    "Metallic", "Mustard", "Taupe", "Nude", "Mushroom Brown", "Fluorescent Green",
}  # fmt: skip

# Sharma, Wu & Dalal (2005), Table 1: the complete CIEDE2000 test data, ΔE00 to 4 decimals.
SHARMA_PAIRS = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -1.1848, -84.8006), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -0.9009, -85.5211), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, -1.0000, 2.0000), (50.0000, 0.0000, 0.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0010), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0012), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0010, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2972, 0.0000), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 1.8634, 0.5757), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2592, 0.3350), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]

RED = (255, 0, 0)
NAVY = (0, 0, 128)


# --- sRGB <-> CIELAB ---------------------------------------------------------------------------------


def test_lab_of_white_black_and_red_match_the_reference_values() -> None:
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], RED], dtype=np.uint8))

    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.005)


def test_lab_of_a_dark_grey_uses_the_linear_segment_of_both_curves() -> None:
    # sRGB 5 is below the 0.04045 knee, and its Y is below the CIE (6/29)^3 knee.
    lab = srgb_to_lab(np.array([5, 5, 5], dtype=np.uint8))

    assert lab[0] == pytest.approx(903.2963 * (5 / 255 / 12.92), rel=1e-4)
    assert lab[1:] == pytest.approx([0.0, 0.0], abs=1e-9)


def test_srgb_lab_round_trip_is_exact_to_one_code_value() -> None:
    rng = np.random.default_rng(42)
    rgb = rng.integers(0, 256, size=(50_000, 3), dtype=np.uint8)

    back = lab_to_srgb(srgb_to_lab(rgb))

    assert back.dtype == np.uint8
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 1


def test_conversions_keep_leading_axes() -> None:
    image = np.zeros((4, 5, 3), dtype=np.uint8)

    assert srgb_to_lab(image).shape == (4, 5, 3)
    assert lab_to_srgb(srgb_to_lab(image)).shape == (4, 5, 3)


def test_out_of_range_srgb_is_refused() -> None:
    with pytest.raises(ValueError, match="0..255"):
        srgb_to_lab([256, 0, 0])
    with pytest.raises(ValueError, match="shape"):
        srgb_to_lab([1, 2])


# --- CIEDE2000 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lab1", "lab2", "expected"), SHARMA_PAIRS)
def test_ciede2000_matches_sharma_test_data(
    lab1: tuple[float, float, float], lab2: tuple[float, float, float], expected: float
) -> None:
    assert round(float(ciede2000(lab1, lab2)), 4) == expected


def test_ciede2000_is_vectorised_and_symmetric() -> None:
    lab1 = np.array([p[0] for p in SHARMA_PAIRS])
    lab2 = np.array([p[1] for p in SHARMA_PAIRS])
    expected = np.array([p[2] for p in SHARMA_PAIRS])

    forward, backward = ciede2000(lab1, lab2), ciede2000(lab2, lab1)

    assert forward.shape == (len(SHARMA_PAIRS),)
    np.testing.assert_allclose(forward, expected, atol=5e-5)
    np.testing.assert_allclose(forward, backward, atol=1e-12)


def test_ciede2000_of_a_colour_with_itself_is_zero_also_for_greys() -> None:
    labs = np.array([[50.0, 0.0, 0.0], [0.0, 0.0, 0.0], [70.0, 20.0, -30.0]])

    np.testing.assert_array_equal(ciede2000(labs, labs), [0.0, 0.0, 0.0])


# --- palette -----------------------------------------------------------------------------------------


def test_palette_names_every_fashion_base_colour_except_multi() -> None:
    assert set(PALETTE) == FASHION_BASE_COLOURS
    assert len(set(PALETTE.values())) == len(PALETTE), "two names share one colour"


@pytest.mark.parametrize("name", sorted(FASHION_BASE_COLOURS))
def test_each_palette_colour_is_named_by_its_own_name(name: str) -> None:
    assert nearest_colour_name(srgb_to_lab(hex_to_rgb(PALETTE[name]))) == name


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        (RED, "Red"),
        (NAVY, "Navy Blue"),
        ((0, 0, 255), "Blue"),
        ((255, 255, 255), "White"),
        ((0, 0, 0), "Black"),
        ((128, 128, 128), "Grey"),
        ((0, 128, 0), "Green"),
        ((255, 255, 0), "Yellow"),
        ((128, 0, 128), "Purple"),
    ],
)
def test_nearest_colour_name_of_plain_colours(rgb: tuple[int, int, int], name: str) -> None:
    assert nearest_colour_name(srgb_to_lab(rgb)) == name


def test_nearest_colour_name_wants_one_colour() -> None:
    with pytest.raises(ValueError, match="one Lab colour"):
        nearest_colour_name([[50.0, 0.0, 0.0], [60.0, 0.0, 0.0]])


# --- dominant colours --------------------------------------------------------------------------------


def _pixels(*parts: tuple[tuple[int, int, int], int]) -> np.ndarray:
    return np.concatenate([np.tile(np.array(rgb, dtype=np.uint8), (n, 1)) for rgb, n in parts])


def _noisy(rgb: tuple[int, int, int], n: int, rng: np.random.Generator, sigma: float = 6.0) -> np.ndarray:
    values = np.array(rgb, dtype=float) + rng.normal(0.0, sigma, size=(n, 3))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def test_two_colours_give_two_clusters_with_their_shares_and_names() -> None:
    pixels = _pixels((RED, 7_000), (NAVY, 3_000))

    colours = dominant_colours(pixels, k=5)

    assert [c["name"] for c in colours] == ["Red", "Navy Blue"]
    assert [c["hex"] for c in colours] == ["#ff0000", "#000080"]
    assert [c["share"] for c in colours] == pytest.approx([0.7, 0.3], abs=1e-12)
    assert colours[0]["lab"] == [53.24, 80.09, 67.2]


def test_one_colour_gives_one_cluster_and_no_pixels_no_clusters() -> None:
    one = dominant_colours(_pixels(((10, 200, 30), 500)), k=5)

    assert len(one) == 1 and one[0]["share"] == 1.0 and one[0]["hex"] == "#0ac81e"
    assert dominant_colours(np.zeros((0, 3), dtype=np.uint8)) == []


def test_kmeans_on_sampled_noisy_clusters_recovers_shares_and_names() -> None:
    # given 100k pixels (so k-means sees a sample) in three noisy colour clouds
    rng = np.random.default_rng(7)
    pixels = np.concatenate(
        [_noisy(RED, 50_000, rng), _noisy(NAVY, 30_000, rng), _noisy((250, 250, 250), 20_000, rng)]
    )
    rng.shuffle(pixels)

    # when
    colours = dominant_colours(pixels, k=3)

    # then shares count every pixel, not only the sample
    assert [c["name"] for c in colours] == ["Red", "Navy Blue", "White"]
    assert [c["share"] for c in colours] == pytest.approx([0.5, 0.3, 0.2], abs=0.02)
    assert math.fsum(c["share"] for c in colours) == pytest.approx(1.0, abs=1e-12)


def test_cluster_centres_are_the_means_of_all_their_pixels() -> None:
    # Then the share-weighted centres give back the mean colour of the whole image.
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(60_000, 3), dtype=np.uint8)

    colours = dominant_colours(pixels, k=4)

    weighted = np.sum([np.multiply(c["share"], c["lab"]) for c in colours], axis=0)
    np.testing.assert_allclose(weighted, srgb_to_lab(pixels).mean(axis=0), atol=0.006)


def test_many_colours_give_k_sorted_finite_clusters_deterministically() -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(30_000, 3), dtype=np.uint8)

    first, again, other_seed = (
        dominant_colours(pixels),
        dominant_colours(pixels),
        dominant_colours(pixels, seed=1),
    )

    assert first == again
    assert len(first) == 5 and len(other_seed) == 5
    shares = [c["share"] for c in first]
    assert shares == sorted(shares, reverse=True) and all(s > 0 for s in shares)
    assert math.fsum(shares) == pytest.approx(1.0, abs=1e-12)
    assert all(math.isfinite(v) for c in first for v in c["lab"])
    assert all(c["name"] in PALETTE for c in first)


def test_fewer_distinct_colours_than_k_never_gives_empty_clusters() -> None:
    pixels = _pixels((RED, 100), (NAVY, 50), ((255, 255, 255), 25))

    colours = dominant_colours(pixels, k=8)

    assert len(colours) == 3
    assert [c["share"] for c in colours] == pytest.approx([100 / 175, 50 / 175, 25 / 175])


def test_dominant_colours_refuses_what_is_not_uint8_pixels() -> None:
    with pytest.raises(ValueError, match=r"\(N, 3\) uint8"):
        dominant_colours(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3\) uint8"):
        dominant_colours(np.zeros((4, 3), dtype=np.float64))
    with pytest.raises(ValueError, match="k must be"):
        dominant_colours(np.zeros((4, 3), dtype=np.uint8), k=0)
