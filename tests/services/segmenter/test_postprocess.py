"""Cut-outs, region maps and colours from masks, on masks drawn by hand (no model needed)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("detectron2", reason="the segmenter tests run in .venv-torch (scripts/test.sh)")

from services.properties.colours import dominant_colours  # noqa: E402
from services.segmenter.model import REGIONS, cutout, garment_colours, region_map  # noqa: E402


def _masks() -> np.ndarray:
    masks = np.zeros((3, 40, 60), dtype=bool)
    masks[0, 5:20, 10:30] = True  # upper body
    masks[1, 15:35, 20:50] = True  # lower body, overlapping the first
    masks[2, 30:38, 2:8] = True  # a garment part: no region
    return masks


def test_a_cutout_is_transparent_exactly_outside_the_mask() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:30, 5:25] = True
    mask[10:15, 5:10] = False  # a notch inside the box

    picture = cutout(rgb, mask)

    assert picture.mode == "RGBA" and picture.size == (20, 20)  # cropped to the mask's box
    alpha = np.asarray(picture)[:, :, 3]
    np.testing.assert_array_equal(alpha, np.where(mask[10:30, 5:25], 255, 0))
    np.testing.assert_array_equal(np.asarray(picture)[:, :, :3][mask[10:30, 5:25]], rgb[mask])


def test_the_region_map_covers_the_image_and_the_best_garment_wins() -> None:
    masks = _masks()
    picture = region_map(masks, ["upper body", "lower body", None], np.array([0.9, 0.6, 0.8]))

    assert picture.mode == "P" and picture.size == (60, 40)
    indices = np.asarray(picture)
    assert set(np.unique(indices)) == {0, 1, 2}
    assert indices[17, 25] == REGIONS.index("upper body")  # overlap: the 0.9 garment wins over 0.6
    assert indices[30, 40] == REGIONS.index("lower body")
    assert indices[32, 4] == 0  # the part has no body region
    round_trip = Image.open(io.BytesIO(_png(picture)))
    np.testing.assert_array_equal(np.asarray(round_trip), indices)


def test_garment_colours_come_from_the_mask_alone() -> None:
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[:] = (20, 200, 20)  # green around
    rgb[5:20, 10:30] = (200, 20, 20)  # a red garment
    mask = _masks()[0]

    colours = garment_colours(rgb, mask, 3)

    assert [c["hex"] for c in colours] == [c["hex"] for c in dominant_colours(rgb[mask], 3)]
    assert len(colours) == 1 and colours[0]["share"] == 1.0 and colours[0]["hex"] == "#c81414"


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def test_attribute_average_precision_ranks_the_garments_by_score() -> None:
    from services.segmenter.train import _average_precision

    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.5], [0.3, 0.3, 0.5], [0.1, 0.3, 0.5]])
    truths = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    # column 0: positives ranked 1st and 3rd → (1 + 2/3) / 2; column 1: the positive ranked 3rd of 4 (the
    # two 0.3s above it) → 1/3; column 2: no positive → 0
    np.testing.assert_allclose(_average_precision(scores, truths), [5 / 6, 1 / 3, 0.0])
    # a tie is broken against the positive: all equal scores give the base rate
    assert _average_precision(np.full((4, 1), 0.5), truths[:, :1])[0] == pytest.approx((1 / 3 + 2 / 4) / 2)
