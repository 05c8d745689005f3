"""What ``atelier analyze`` prints (``atelier.report``), from records built by ``common.outputs``."""

from __future__ import annotations

import json
import uuid
from io import StringIO
from typing import Any

from rich.console import Console

from atelier.report import analysis_report, without_masks
from common.outputs import (
    Attribute,
    Background,
    Classification,
    Colour,
    Detection,
    Garment,
    GarmentClassification,
    HeadPrediction,
    LabelScore,
    MaskRLE,
    Properties,
    Regions,
    Segmentation,
)
from common.schemas import ImageView, ItemStatus, ModelState

MASK = MaskRLE(size=[320, 320], counts="PRIVATE-RLE-COUNTS")


def head(label: str, score: float, runner_up: str = "Other") -> HeadPrediction:
    return HeadPrediction(
        label=label,
        score=score,
        top=[LabelScore(label=label, score=score), LabelScore(label=runner_up, score=1 - score)],
    )


def classification(**heads: HeadPrediction) -> dict[str, HeadPrediction]:
    return heads


def properties() -> Properties:
    return Properties(
        width=320,
        height=240,
        colours=[
            Colour(hex="#ffffff", name="White", share=0.5, lab=[100.0, 0.0, 0.0]),
            Colour(hex="#fefefe", name="White", share=0.2),
            Colour(hex="#cc0000", name="Red", share=0.3),
        ],
        sharpness=64.4,
        brightness=0.8,
        phash="c3c3c3c3c3c3c3c3",
        background=Background(plain=True, colour="#f5f5f5", uniformity=0.97),
    )


def image_classifier() -> Classification:
    return Classification(
        classification(
            gender=head("Men", 0.95, "Women"),
            masterCategory=head("Apparel", 0.99),
            articleType=head("Tshirts", 0.91, "Shirts"),
            baseColour=head("Red", 0.88, "Maroon"),
        )
    )


def detection() -> Detection:
    shirt = Garment(
        category="short sleeve top",
        score=0.973,
        box=[10.0, 12.0, 150.0, 170.0],
        body_region="upper body",
        mask=MASK,
        area=15000,
        classification=classification(
            articleType=head("Tshirts", 0.83), baseColour=head("Red", 0.77), gender=head("Men", 0.6)
        ),
    )
    return Detection(
        garments=[shirt],
        garment_classification=GarmentClassification(model="classifier", version="3", crops=1),
    )


def segmentation() -> Segmentation:
    shirt = Garment(
        category="top",
        score=0.912,
        box=[11.0, 12.0, 149.0, 171.0],
        body_region="upper body",
        mask=MASK,
        area=14800,
        attributes=[
            Attribute(name="short sleeve", score=0.93),
            Attribute(name="plain", score=0.81),
            Attribute(name="crew neck", score=0.66),
            Attribute(name="cotton", score=0.51),
        ],
        colours=[
            Colour(hex="#cc0000", name="Red", share=0.9),
            Colour(hex="#ffffff", name="White", share=0.1),
        ],
        cutout="cutout-0.png",
    )
    return Segmentation(
        garments=[shirt],
        regions=Regions(
            map="regions.png", values={0: "background", 1: "upper body"}, fractions={"upper body": 0.3}
        ),
        overlay="overlay.png",
        files={"overlay.png": "blobs/ab/overlay.png"},
    )


def image_view(record: dict[str, Any] | None, models: dict[str, ModelState], **fields: Any) -> dict[str, Any]:
    """A view as ``atelier analyze`` gets it: ``ImageView`` checks the shape, then dumped to JSON."""
    base: dict[str, Any] = {
        "id": uuid.uuid4(),
        "job_id": uuid.uuid4(),
        "position": 0,
        "url": None,
        "filename": "red-shirt.jpg",
        "external_id": None,
        "metadata": None,
        "status": ItemStatus.done,
        "error": None,
        "sha256": "ab" * 32,
        "models": models,
        "record": record,
        "timestamps": {},
    }
    return ImageView(**(base | fields)).model_dump(mode="json")


def full_view() -> dict[str, Any]:
    record = {
        "image": {"sha256": "ab" * 32, "width": 320, "height": 240, "format": "JPEG"},
        "properties": properties().dump(),
        "classifier": image_classifier().dump(),
        "detector": detection().dump(),
        "segmenter": segmentation().dump(),
    }
    done = {name: ModelState(status="done", version="1") for name in record if name != "image"}
    return image_view(record, done)


def rendered(views: list[dict[str, Any]]) -> str:
    # markup and emoji on, as Rich's defaults are: the renderables themselves must be safe
    buffer = StringIO()
    Console(file=buffer, width=200, color_system=None).print(*analysis_report(views))
    return buffer.getvalue()


def test_report_shows_classification_garments_and_colours() -> None:
    # when
    output = rendered([full_view()])

    # then the header: input, size, dominant colours (the two whites as one), sharpness, background
    header = output.splitlines()[0]
    for part in ("red-shirt.jpg", "320×240", "White 70%, Red 30%", "sharpness 64", "plain #f5f5f5"):
        assert part in header
    # the whole image's articleType, baseColour and gender, with scores; not the other heads
    assert "Tshirts 0.91, Red 0.88, Men 0.95" in output
    assert "Apparel" not in output
    # the detector's garment with its crop's articleType and baseColour
    detector_row = next(line for line in output.splitlines() if "short sleeve top" in line)
    for part in ("detector", "0.97", "upper body", "Tshirts 0.83, Red 0.77"):
        assert part in detector_row
    assert "0.60" not in detector_row  # the crop's gender is not shown
    # the segmenter's garment with its top three attributes and its colours
    segmenter_row = next(line for line in output.splitlines() if line.split()[:2] == ["segmenter", "top"])
    for part in ("0.91", "short sleeve 0.93, plain 0.81, crew neck 0.66", "Red 90%, White 10%"):
        assert part in segmenter_row
    assert "cotton" not in segmenter_row
    # and never a mask
    assert MASK.counts not in output


def test_report_says_why_a_model_gave_nothing() -> None:
    # given a classifier skipped, a segmenter failed and a detector whose crops were not classified
    detector = Detection(
        garments=[Garment(category="trousers", score=0.8, box=[0.0, 0.0, 10.0, 10.0])],
        garment_classification=GarmentClassification(model="classifier", skipped="no classifier worker"),
    )
    record = {"properties": properties().dump(), "detector": detector.dump()}
    models = {
        "properties": ModelState(status="done", version="1"),
        "classifier": ModelState(status="skipped", reason="no model artifact served"),
        "detector": ModelState(status="done", version="2"),
        "segmenter": ModelState(status="failed", version="1", reason="RuntimeError('out of memory')"),
    }

    # when
    output = rendered([image_view(record, models)])

    # then each reason is shown, and no classification line
    assert "classifier skipped: no model artifact served" in output
    assert "segmenter failed: RuntimeError('out of memory')" in output
    assert "detector crops not classified: no classifier worker" in output
    assert "trousers" in output
    assert "image class" not in output


def test_report_says_once_per_image_which_models_were_skipped_for_one_reason() -> None:
    skipped = ModelState(status="skipped", reason="no model artifact served")
    models = {"properties": ModelState(status="done"), "classifier": skipped, "detector": skipped}

    output = rendered([image_view({"properties": properties().dump()}, models)])

    assert "classifier, detector skipped: no model artifact served" in output


def test_report_leaves_a_reason_shared_by_every_image_to_the_closing_notes() -> None:
    # given three images on which the classifier was skipped for one reason, the segmenter for two
    def models(segmenter_reason: str) -> dict[str, ModelState]:
        return {
            "classifier": ModelState(status="skipped", reason="no classifier worker"),
            "segmenter": ModelState(status="skipped", reason=segmenter_reason),
        }

    views = [image_view(None, models(r), filename=f"{i}.png") for i, r in enumerate("aab")]

    # when
    output = rendered(views)

    # then the classifier's reason is not repeated on each image; the segmenter's are
    assert output.count("classifier skipped on every image (why: below)") == 3
    assert "no classifier worker" not in output
    assert output.count("segmenter skipped: a") == 2
    assert output.count("segmenter skipped: b") == 1


def test_report_shows_a_detector_that_found_nothing() -> None:
    record = {"detector": Detection(garments=[]).dump()}

    output = rendered([image_view(record, {"detector": ModelState(status="done", version="2")})])

    assert "detector: no garments found" in output


def test_report_prints_outside_strings_verbatim() -> None:
    # given a failed URL, a file name and model labels that look like Rich markup and emoji codes
    hostile_url = "http://images.example/a[/x]b[red]c[/red]:x:[link=http://evil.example]d.jpg"
    hostile_label = "[bold]look[/]:smile:"
    view = full_view()
    view["record"]["classifier"]["articleType"]["label"] = hostile_label
    view["record"]["segmenter"]["garments"][0]["attributes"][0]["name"] = hostile_label
    failed = image_view(
        None,
        {"classifier": ModelState(status="failed", reason="[red]boom[/red]")},
        url=hostile_url,
        filename=None,
        status=ItemStatus.failed,
        error={"code": "http_error", "detail": "HTTP 404"},
    )

    # when
    output = rendered([failed, view])

    # then
    assert hostile_url in output
    assert "http_error" in output
    assert f"{hostile_label} 0.91" in output
    assert f"{hostile_label} 0.93" in output
    assert "classifier failed: [red]boom[/red]" in output


def test_without_masks_drops_rle_and_nothing_else() -> None:
    # given a full view, with one more RLE under another name and a "mask" key that is not an RLE
    view = full_view()
    view["record"]["segmenter"]["garments"][0]["segmentation"] = [MASK.dump(), MASK.dump()]
    view["metadata"] = {"mask": "a caption the user gave"}

    # when
    stripped = without_masks(view)

    # then no RLE is left, and everything else is as it was
    assert MASK.counts not in json.dumps(stripped)
    assert stripped["metadata"] == {"mask": "a caption the user gave"}
    for model in ("detector", "segmenter"):
        garment = dict(view["record"][model]["garments"][0])
        garment.pop("mask")
        garment.pop("segmentation", None)
        assert stripped["record"][model]["garments"] == [garment]
    assert stripped["record"]["properties"] == view["record"]["properties"]
    assert MASK.counts in json.dumps(view)  # the input is not changed
