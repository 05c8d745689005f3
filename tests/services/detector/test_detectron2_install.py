"""Detectron2 as deploy/detectron2/install.sh installs it from the patched pb1-detectron2 sdist.

They run where it is installed: ``.venv-torch/bin/python -m pytest tests/services/detector``. The tests
of patch.py itself need no detectron2, but this directory's conftest leaves the module out elsewhere.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

PATCH_PY = Path(__file__).resolve().parents[3] / "deploy" / "detectron2" / "patch.py"
MASK_RCNN = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
SCRATCH_GN = "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml"
REMOVED_NUMPY_ALIAS = re.compile(r"\bnp\.(bool|int|float|complex|object|str|long|unicode)\b")


def _load_patch_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("detectron2_patch", PATCH_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


patch = _load_patch_module()


@pytest.fixture(scope="module")
def d2() -> ModuleType:
    module: ModuleType = pytest.importorskip(
        "detectron2", reason="detectron2 is installed in .venv-torch by deploy/detectron2/install.sh"
    )
    return module


@pytest.fixture
def no_c_ops(d2: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every op that asks for detectron2's C++ extension, and refuses it."""
    from detectron2 import _lazy_C

    asked: list[str] = []

    def require(self: Any, op: str) -> None:
        asked.append(op)
        raise ImportError(f"{op} asked for detectron2._C")

    monkeypatch.setattr(_lazy_C.LazyOps, "require", require)
    return asked


# --- patch.py, on small trees made here -------------------------------------------------------------


def test_numpy_aliases_become_builtins_and_numpy_types_stay(tmp_path: Path) -> None:
    # given
    module = tmp_path / "detectron2" / "masks.py"
    module.parent.mkdir()
    removed = ["x.astype(np.bool)", "np.zeros(3, dtype=np.int)", "np.float(1)", "np.loadtxt(f, dtype=np.str)"]
    kept = ["x.astype(np.bool_)", "np.int64(1)", "np.float32", "np.integer", "np.intp", "snp.int"]
    module.write_text("\n".join(removed + kept))

    # when
    patch.numpy_aliases(tmp_path)

    # then
    builtins = ["x.astype(bool)", "np.zeros(3, dtype=int)", "float(1)", "np.loadtxt(f, dtype=str)"]
    assert module.read_text().split("\n") == builtins + kept


def test_a_patch_whose_target_is_missing_fails_loudly(tmp_path: Path) -> None:
    transform = tmp_path / "detectron2" / "data" / "transforms" / "transform.py"
    transform.parent.mkdir(parents=True)
    transform.write_text("def __init__(self, src_rect, output_size, interp=Image.BILINEAR, fill=0): ...\n")

    with pytest.raises(
        RuntimeError, match=r"transform\.py: expected 'interp=Image\.LINEAR,' once, found it 0"
    ):
        patch.pillow_linear(tmp_path)
    with pytest.raises(RuntimeError, match="no removed numpy alias found"):
        patch.numpy_aliases(tmp_path)


def test_lazy_c_ops_refuses_an_sdist_with_another_module_level_import(tmp_path: Path) -> None:
    # given: the known importers, plus one more that the patch does not know about
    for name in patch.C_IMPORTERS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(patch.C_IMPORT)
    (tmp_path / "detectron2/layers/nms.py").write_text(
        "from torchvision.ops import nms  # BC-compat\n"
        "def nms_rotated(boxes, scores, iou_threshold):\n"
        "    return torch.ops.detectron2.nms_rotated(boxes, scores, iou_threshold)\n"
    )
    (tmp_path / "detectron2/layers/new_op.py").write_text("import detectron2._C as _C\n")

    with pytest.raises(RuntimeError, match=r"module-level imports of detectron2\._C left in .*new_op\.py"):
        patch.lazy_c_ops(tmp_path)


# --- the installed package --------------------------------------------------------------------------


def test_installed_from_the_patched_sdist_with_this_checkouts_patches(d2: ModuleType) -> None:
    from detectron2 import atelier_patch

    assert atelier_patch.PATCHED_FROM == "pb1-detectron2==0.6"
    expected = tuple(step.__name__ for step in patch.PATCHES)
    assert atelier_patch.PATCHES == expected, "deploy/detectron2/patch.py changed: run install.sh again"


def test_model_zoo_configs_are_installed(d2: ModuleType) -> None:
    from detectron2 import model_zoo

    assert Path(model_zoo.get_config_file(MASK_RCNN)).is_file()
    scratch = model_zoo.get_config(SCRATCH_GN)
    assert (scratch.MODEL.META_ARCHITECTURE, scratch.MODEL.RESNETS.NORM) == ("GeneralizedRCNN", "GN")
    lazy = model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")  # a Python config
    assert "model" in lazy


@pytest.mark.parametrize(
    ("config", "min_instances"),
    [
        # FrozenBN without pretrained weights: activations explode and nothing survives inference
        (MASK_RCNN, 0),
        # the same R50-FPN Mask R-CNN with GroupNorm: random weights still give detections and masks
        (SCRATCH_GN, 1),
    ],
)
def test_mask_rcnn_r50_fpn_predicts_on_cpu_without_the_c_ops(
    d2: ModuleType, no_c_ops: list[str], config: str, min_instances: int
) -> None:
    # given: random weights, every proposal kept, a 96x128 BGR image
    import torch
    from detectron2 import model_zoo
    from detectron2.engine import DefaultPredictor

    torch.manual_seed(0)
    cfg = model_zoo.get_config(config)
    cfg.merge_from_list(
        ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]
    )
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 128])
    predictor = DefaultPredictor(cfg)
    image = np.random.default_rng(0).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)

    # when
    with torch.no_grad():
        instances = predictor(image)["instances"]

    # then: boxes, scores, classes and masks at the input's size; no C++ op was asked for
    assert no_c_ops == []
    assert min_instances <= len(instances) <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert instances.image_size == (96, 128)
    assert instances.pred_boxes.tensor.shape == (len(instances), 4)
    assert instances.scores.shape == instances.pred_classes.shape == (len(instances),)
    assert instances.pred_masks.shape == (len(instances), 96, 128)
    assert bool((instances.pred_classes < cfg.MODEL.ROI_HEADS.NUM_CLASSES).all())


def _rotated_ops() -> list[tuple[str, str]]:
    return [
        ("detectron2.layers.nms_rotated", "nms_rotated"),
        ("detectron2.layers.rotated_boxes.pairwise_iou_rotated", "box_iou_rotated"),
        ("detectron2.layers.roi_align_rotated", "roi_align_rotated_forward"),
    ]


@pytest.mark.parametrize(("function", "op"), _rotated_ops())
def test_an_op_that_needs_the_c_extension_fails_naming_it(d2: ModuleType, function: str, op: str) -> None:
    import torch

    module_name, name = function.rsplit(".", 1)
    call = getattr(importlib.import_module(module_name), name)
    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 30.0]])
    args: tuple[Any, ...] = {
        "nms_rotated": (boxes, torch.ones(1), 0.5),
        "box_iou_rotated": (boxes, boxes),
        "roi_align_rotated_forward": (
            torch.rand(1, 1, 16, 16),
            torch.cat([torch.zeros(1, 1), boxes], 1),
            (2, 2),
            1.0,
            0,
        ),
    }[op]

    message = f"without its C++ ops (pb1-detectron2 sdist has no csrc): {op} is unavailable"
    with pytest.raises(ImportError, match=re.escape(message)):
        call(*args)


def _tiny_coco(name: str) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    if name in DatasetCatalog.list():
        return
    polygon = [[8.0, 8.0, 40.0, 8.0, 40.0, 32.0, 8.0, 32.0]]
    record = {
        "file_name": "garment.jpg",
        "image_id": 0,
        "height": 48,
        "width": 64,
        "annotations": [
            {
                "bbox": [8.0, 8.0, 32.0, 24.0],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": 0,
                "segmentation": polygon,
            }
        ],
    }
    DatasetCatalog.register(name, lambda: [record])
    MetadataCatalog.get(name).set(thing_classes=["dress"])


def _perfect_prediction() -> dict[str, Any]:
    import torch
    from detectron2.structures import Boxes, Instances

    instances = Instances((48, 64))
    instances.pred_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 32.0]]))
    instances.scores = torch.tensor([0.9])
    instances.pred_classes = torch.tensor([0])
    return {"instances": instances}


def test_coco_evaluator_scores_with_the_official_implementation(d2: ModuleType, tmp_path: Path) -> None:
    from detectron2.evaluation import COCOEvaluator

    _tiny_coco("atelier_tiny_coco")
    evaluator = COCOEvaluator(
        "atelier_tiny_coco", tasks=("bbox",), distributed=False, output_dir=str(tmp_path), use_fast_impl=False
    )
    evaluator.reset()
    evaluator.process([{"image_id": 0}], [_perfect_prediction()])

    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)


def test_the_fast_coco_evaluator_fails_naming_its_op(d2: ModuleType, tmp_path: Path) -> None:
    from detectron2.evaluation import COCOEvaluator

    _tiny_coco("atelier_tiny_coco")
    evaluator = COCOEvaluator(
        "atelier_tiny_coco", tasks=("bbox",), distributed=False, output_dir=str(tmp_path)
    )
    evaluator.reset()
    evaluator.process([{"image_id": 0}], [_perfect_prediction()])

    with pytest.raises(ImportError, match="InstanceAnnotation is unavailable"):
        evaluator.evaluate()


def test_installed_source_has_no_removed_numpy_or_pillow_names(d2: ModuleType) -> None:
    assert d2.__file__ is not None
    package = Path(d2.__file__).parent
    files = sorted(package.rglob("*.py"))
    assert len(files) > 150, f"only {len(files)} Python files under {package}"

    offending = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if REMOVED_NUMPY_ALIAS.search(line) or "Image.LINEAR" in line
    ]

    assert offending == []
