"""The detector as a served model: the Detectron2 services' ``RCNNModel`` on DeepFashion2's categories.

Per garment: category, score, box, mask as COCO RLE, area, and the body region the category covers.
"""

from __future__ import annotations

from pathlib import Path

from common.outputs import BodyRegion
from services.base import latest_version_factory
from services.detector.categories import BODY_REGION
from services.detector.config import DetectorSettings, get_detector_settings
from services.rcnn.config import RCNNManifest
from services.rcnn.model import RCNNModel

__all__ = ["DetectorModel", "build"]


class DetectorModel(RCNNModel[RCNNManifest, DetectorSettings]):
    name = "detector"
    manifest_type = RCNNManifest

    def __init__(self, version_dir: Path, settings: DetectorSettings | None = None) -> None:
        super().__init__(version_dir, settings or get_detector_settings())

    def _body_regions(self) -> dict[str, BodyRegion]:
        """DeepFashion2's categories, by name (a version may use a subset)."""
        return {c: BODY_REGION[c] for c in self.classes if c in BODY_REGION}


build = latest_version_factory(DetectorModel)  # SPEC.model_path
