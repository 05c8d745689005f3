from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from services.base import Prediction
from services.properties.colours import hex_to_rgb
from services.properties.config import PROPERTIES_VERSION, SPEC
from services.properties.model import PropertiesModel, build

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def model() -> PropertiesModel:
    loaded = build(SPEC, Path("/nonexistent/model-repository"))
    loaded.load()
    return loaded


def _predict(model: PropertiesModel, image: Image.Image) -> dict[str, Any]:
    [prediction] = model.predict([image])
    return prediction.output


def _solid(rgb: tuple[int, int, int], size: tuple[int, int] = (300, 200)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def _photo_like(seed: int, size: tuple[int, int] = (400, 300)) -> Image.Image:
    """Smooth random colour fields: low-resolution noise scaled up, as a stand-in for a photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def _checkerboard(side: int, square: int) -> Image.Image:
    cells = (np.indices((side, side)) // square).sum(axis=0) % 2
    return Image.fromarray((cells * 255).astype(np.uint8)).convert("RGB")


def _studio_shot(rng: np.random.Generator) -> Image.Image:
    """A white backdrop with a little sensor noise and a dark dress in the middle."""
    image = Image.new("RGB", (400, 600), (250, 250, 250))
    ImageDraw.Draw(image).polygon([(170, 80), (230, 80), (300, 520), (100, 520)], fill=(40, 30, 90))
    noisy = np.asarray(image).astype(float) + rng.normal(0.0, 2.0, size=(600, 400, 3))
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def _assert_plain_json(value: Any) -> None:
    """Only JSON's own types: numpy scalars would pass json.dumps (np.float64) or break it later."""
    if isinstance(value, dict):
        assert all(type(k) is str for k in value)
        for item in value.values():
            _assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            _assert_plain_json(item)
    else:
        assert type(value) in (str, int, float, bool), f"{value!r} is a {type(value)}"


# --- the service around the model --------------------------------------------------------------------


def test_spec_names_a_builtin_analyser_served_by_this_module(tmp_path: Path) -> None:
    assert SPEC.name == "properties"
    assert SPEC.local_version(tmp_path).available
    assert SPEC.local_version(tmp_path).version == PROPERTIES_VERSION

    built = SPEC.build(tmp_path)

    assert isinstance(built, PropertiesModel)
    assert (built.name, built.version) == ("properties", PROPERTIES_VERSION)


def test_build_refuses_a_spec_for_another_version(tmp_path: Path) -> None:
    stale = SPEC.__class__(name="properties", model_path=SPEC.model_path, builtin_version="0.0.1")

    with pytest.raises(ValueError, match="0.0.1"):
        build(stale, tmp_path)


def test_importing_the_config_stays_cheap() -> None:
    code = (
        "import sys, services.properties.config; "
        "print(','.join(m for m in ('numpy', 'scipy', 'imagehash') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60
    )

    assert result.stdout.strip() == ""


def test_predict_before_load_is_refused() -> None:
    with pytest.raises(RuntimeError, match="before load"):
        PropertiesModel().predict([_solid((0, 0, 0))])


def test_load_is_idempotent(model: PropertiesModel) -> None:
    model.load()

    assert _predict(model, _solid((0, 0, 0)))["brightness"] == 0.0


def test_non_rgb_images_are_refused(model: PropertiesModel) -> None:
    with pytest.raises(ValueError, match="'RGBA'"):
        model.predict([Image.new("RGBA", (10, 10))])


def test_batch_gives_one_prediction_per_image_in_order(model: PropertiesModel) -> None:
    images = [_solid((255, 0, 0), (50, 40)), _photo_like(1, (120, 80)), _solid((0, 0, 255), (30, 90))]

    predictions = model.predict(images)

    assert all(isinstance(p, Prediction) and p.embedding is None for p in predictions)
    assert [(p.output["width"], p.output["height"]) for p in predictions] == [(50, 40), (120, 80), (30, 90)]
    assert [p.output["colours"][0]["name"] for p in predictions[::2]] == ["Red", "Blue"]
    assert model.predict([]) == []


def test_output_is_plain_json_and_deterministic(model: PropertiesModel) -> None:
    image = _photo_like(5, (1024, 768))

    first, second = _predict(model, image), _predict(model, image.copy())

    _assert_plain_json(first)
    assert json.loads(json.dumps(first)) == first
    assert first == second
    assert set(first) == {"width", "height", "colours", "sharpness", "brightness", "phash", "background"}
    assert len(first["colours"]) == 5


# --- colours -----------------------------------------------------------------------------------------


def test_red_and_navy_image_gives_two_clusters_of_seventy_and_thirty_percent(model: PropertiesModel) -> None:
    # given a 400x300 image, 70 % pure red on the left and 30 % navy on the right: larger than the
    # colour size, so this also proves that resizing invents no blended colours
    image = Image.new("RGB", (400, 300), (255, 0, 0))
    ImageDraw.Draw(image).rectangle([(280, 0), (399, 299)], fill=(0, 0, 128))

    # when
    colours = _predict(model, image)["colours"]

    # then
    assert [c["name"] for c in colours] == ["Red", "Navy Blue"]
    assert [c["share"] for c in colours] == pytest.approx([0.7, 0.3], abs=0.02)
    assert [c["hex"] for c in colours] == ["#ff0000", "#000080"]


# --- background --------------------------------------------------------------------------------------


def test_white_studio_shot_has_a_plain_white_background(model: PropertiesModel) -> None:
    background = _predict(model, _studio_shot(np.random.default_rng(0)))["background"]

    assert background["plain"] is True
    assert background["uniformity"] >= 0.99
    assert all(channel >= 245 for channel in hex_to_rgb(background["colour"]))


def test_random_noise_background_is_not_plain(model: PropertiesModel) -> None:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8))
    ImageDraw.Draw(image).rectangle([(100, 100), (200, 200)], fill=(40, 30, 90))

    background = _predict(model, image)["background"]

    assert background["plain"] is False
    assert background["uniformity"] < 0.1


def test_a_garment_reaching_one_edge_still_leaves_a_plain_background(model: PropertiesModel) -> None:
    # Cropped catalogue shots often cut the garment at the bottom edge; that is still a studio shot.
    image = _solid((235, 235, 235), (400, 600))
    ImageDraw.Draw(image).rectangle([(150, 200), (250, 599)], fill=(20, 20, 20))

    background = _predict(model, image)["background"]

    assert background["plain"] is True
    assert background["colour"] == "#ebebeb"
    assert 0.9 <= background["uniformity"] < 1.0


# --- sharpness, brightness, phash --------------------------------------------------------------------


def test_sharp_checkerboard_is_far_sharper_than_its_blurred_copy(model: PropertiesModel) -> None:
    sharp = _checkerboard(512, 16)
    blurred = sharp.filter(ImageFilter.GaussianBlur(3))

    sharp_value, blurred_value = _predict(model, sharp)["sharpness"], _predict(model, blurred)["sharpness"]

    assert blurred_value > 0
    assert sharp_value > 10 * blurred_value


def test_sharpness_is_comparable_across_resolutions(model: PropertiesModel) -> None:
    # given a detailed photo and the same photo delivered at twice the size: the raw Laplacian variance
    # of the larger one is about 6 times smaller, since each edge is spread over twice the pixels
    rng = np.random.default_rng(0)
    detail = Image.fromarray(rng.integers(0, 256, size=(384, 512, 3), dtype=np.uint8))
    photo = detail.filter(ImageFilter.GaussianBlur(1)).resize((1024, 768), Image.Resampling.BICUBIC)
    enlarged = photo.resize((2048, 1536), Image.Resampling.BICUBIC)

    # when
    at_1024, at_2048 = _predict(model, photo)["sharpness"], _predict(model, enlarged)["sharpness"]

    # then both are measured at 512 px and agree
    assert at_2048 == pytest.approx(at_1024, rel=0.1)


def test_images_smaller_than_the_sharpness_size_are_enlarged_to_it(model: PropertiesModel) -> None:
    # Measured as it comes, the 384 px copy would score about 3 times higher than the 768 px one.
    rng = np.random.default_rng(0)
    detail = Image.fromarray(rng.integers(0, 256, size=(288, 384, 3), dtype=np.uint8))
    small = detail.filter(ImageFilter.GaussianBlur(2))
    large = small.resize((768, 576), Image.Resampling.BICUBIC)

    assert _predict(model, small)["sharpness"] == pytest.approx(_predict(model, large)["sharpness"], rel=0.2)


def test_brightness_of_black_is_zero_and_of_white_is_one(model: PropertiesModel) -> None:
    assert _predict(model, _solid((0, 0, 0)))["brightness"] == 0.0
    assert _predict(model, _solid((255, 255, 255)))["brightness"] == pytest.approx(1.0, abs=1e-4)
    assert 0.4 < _predict(model, _solid((119, 119, 119)))["brightness"] < 0.6


def test_phash_survives_a_slight_resize_and_tells_other_images_apart(model: PropertiesModel) -> None:
    image = _photo_like(11)
    resized = image.resize((380, 285), Image.Resampling.BILINEAR)

    original, same, other = (_predict(model, im)["phash"] for im in (image, resized, _photo_like(12)))

    assert len(original) == 16 and int(original, 16) >= 0
    assert original == same
    assert imagehash.hex_to_hash(original) - imagehash.hex_to_hash(other) > 10
