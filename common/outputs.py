"""What the model services answer, as types: the JSON each one stores per image (``model_results.output``)
and that the merged record and the wire schemas carry.

The services build their outputs with these types and store ``output.dump()``. Keys a service does not
fill stay out of the JSON rather than appearing as ``null``: a detector garment without a mask has no
``mask`` key, a segmenter colour no ``lab``, as the stored records always had. pydantic and the standard
library only: every deployable (the gateway included) can import this module.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

UPPER_BODY: Final = "upper body"
LOWER_BODY: Final = "lower body"
WHOLE_BODY: Final = "whole body"
BodyRegion = Literal["upper body", "lower body", "whole body"]
# the length of the classifier's L2-normalised embedding: what the pgvector column of the database holds
EMBEDDING_DIM = 512
# the indices of a segmenter's region map (an indexed PNG), in order
REGIONS: tuple[str, ...] = ("background", UPPER_BODY, LOWER_BODY, WHOLE_BODY)


class Output(BaseModel):
    """Base of every output type: ``dump()`` is what the service stores."""

    model_config = ConfigDict(extra="forbid")

    def dump(self) -> dict[str, Any]:
        """JSON-able, with only the fields that were given (absent keys stay absent, ``None`` given is
        ``null``)."""
        return self.model_dump(mode="json", exclude_unset=True)


class Colour(Output):
    """A dominant colour: its hex, its nearest named colour, its share of the pixels (0..1)."""

    hex: str
    name: str
    share: float
    lab: list[float] | None = None  # CIELAB of the cluster centre (the properties analyser gives it)


class Background(Output):
    plain: bool
    colour: str  # hex of the frame's median
    uniformity: float  # fraction of the frame within the colour's tolerance


class Properties(Output):
    """The properties analyser's answer for one image."""

    width: int
    height: int
    colours: list[Colour]
    sharpness: float
    brightness: float
    phash: str
    background: Background


class LabelScore(Output):
    label: str
    score: float


class HeadPrediction(Output):
    """One classifier head's answer: the best label and score, and the top few."""

    label: str
    score: float
    top: list[LabelScore]


class Classification(RootModel[dict[str, HeadPrediction]]):
    """The classifier's answer: per head (``gender``, ``articleType``, ...) its prediction."""

    def dump(self) -> dict[str, Any]:
        dumped: dict[str, Any] = self.model_dump(mode="json", exclude_unset=True)
        return dumped


class MaskRLE(Output):
    """A COCO run-length-encoded mask: ``size`` is (height, width), ``counts`` the compressed string."""

    size: list[int]
    counts: str


class Attribute(Output):
    name: str
    score: float


class Garment(Output):
    """One garment found in an image (detector, segmenter); the classifier's answer for its crop is added
    as ``classification`` when crops are classified."""

    category: str
    score: float
    box: list[float] = Field(min_length=4, max_length=4)  # x1, y1, x2, y2 in pixels
    body_region: BodyRegion | None = None
    mask: MaskRLE | None = None
    area: int | None = None  # pixels in the mask
    attributes: list[Attribute] = Field(default_factory=list)
    colours: list[Colour] = Field(default_factory=list)
    cutout: str | None = None  # name of its RGBA cut-out among the result's files
    classification: dict[str, HeadPrediction] | None = None


class Regions(Output):
    """A segmenter's body-region map: the file's name, what each index means, each region's share."""

    map: str
    values: dict[int, str]
    fractions: dict[str, float]


class GarmentClassification(Output):
    """Added by the worker once a detector's garment crops went through the classifier (or why not)."""

    model: str
    version: str | None = None
    crops: int | None = None
    inference_ms: float | None = None
    skipped: str | None = None  # the reason the crops were not classified


class Detection(Output):
    """The detector's answer for one image."""

    garments: list[Garment]
    garment_classification: GarmentClassification | None = None  # the worker's, after the crops


class Segmentation(Detection):
    """The segmenter's answer for one image: garments with attributes and colours, and pictures."""

    regions: Regions
    overlay: str  # name of the overlay picture among the result's files
    files: dict[str, str] | None = None  # the worker's: blob-store key of each picture, by name
