"""COCO-format datasets whose garments carry ``attribute_ids`` (the Fashionpedia layout), registered
with Detectron2's catalogs, and the mapper that turns the attributes into a multi-hot target.

Categories and attributes come from the dataset's own JSON (``categories``, ``attributes``, each with
``id`` and ``name``), in id order: nothing about Fashionpedia's 46 categories or 294 attributes is
written in code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils

from services.rcnn.dataset import Records
from services.rcnn.dataset import register as register_coco


@dataclass(frozen=True)
class Taxonomy:
    classes: list[str]
    supercategories: list[str]  # of each class: Fashionpedia's say upperbody, lowerbody, wholebody, ...
    attributes: list[str]
    attribute_ids: list[int]  # the dataset's ids, in the order of ``attributes``


def read_taxonomy(json_file: Path) -> Taxonomy:
    data = json.loads(json_file.read_text())
    if not data.get("attributes"):
        raise ValueError(f"{json_file} has no 'attributes' list (the Fashionpedia layout)")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    attributes = sorted(data["attributes"], key=lambda a: a["id"])
    return Taxonomy(
        [c["name"] for c in categories],
        [c.get("supercategory") or "" for c in categories],
        [a["name"] for a in attributes],
        [a["id"] for a in attributes],
    )


def register(name: str, json_file: Path, image_root: Path) -> Taxonomy:
    """Register (or re-register) a COCO + attributes file; returns its classes and attributes."""
    taxonomy = read_taxonomy(json_file)
    index = {attribute_id: i for i, attribute_id in enumerate(taxonomy.attribute_ids)}

    def attribute_indices(records: Records) -> Records:
        for record in records:
            for annotation in record["annotations"]:
                annotation["attribute_index"] = [index[a] for a in annotation.get("attribute_ids") or []]
        return records

    register_coco(
        name,
        json_file,
        image_root,
        extra_keys=["attribute_ids"],
        prepare=attribute_indices,
        attribute_classes=taxonomy.attributes,
    )
    return taxonomy


class AttributeMapper(DatasetMapper):  # type: ignore[misc]
    """Detectron2's ``DatasetMapper``, plus ``gt_attributes`` (instances × attributes, 0/1) aligned
    with the other ground-truth fields through the same empty-instance filter."""

    def __init__(self, cfg: CfgNode, is_train: bool = True) -> None:
        super().__init__(cfg, is_train)
        self.num_attributes = cfg.MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES

    def _transform_annotations(self, dataset_dict: dict[str, Any], transforms: Any, image_shape: Any) -> None:
        for obj in dataset_dict["annotations"]:
            if not self.use_instance_mask:
                obj.pop("segmentation", None)
            obj.pop("keypoints", None)
        annotations = [
            utils.transform_instance_annotations(obj, transforms, image_shape)
            for obj in dataset_dict.pop("annotations")
            if obj.get("iscrowd", 0) == 0
        ]
        mask_format = self.instance_mask_format
        instances = utils.annotations_to_instances(annotations, image_shape, mask_format=mask_format)
        targets = torch.zeros((len(annotations), self.num_attributes), dtype=torch.float32)
        for row, obj in enumerate(annotations):
            targets[row, obj.get("attribute_index", [])] = 1.0
        instances.gt_attributes = targets
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
