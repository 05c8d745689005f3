"""Patches the unpacked pb1-detectron2 0.6 sdist so that it builds and runs on today's stack.

The package registry has Detectron2 only as that sdist: FAIR's 0.6 release without its C++ sources,
written for numpy < 1.24 and Pillow < 10. Each patch below is one function whose docstring says why it
exists. Each fails loudly when the text it rewrites is not there, so a different sdist is noticed here
rather than at inference time. Run by ``install.sh``; usage::

    python deploy/detectron2/patch.py SRC_DIR [--stamp STAMP]
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("detectron2-patch")

PATCHED_FROM = "pb1-detectron2==0.6"

MISSING_OPS = (
    "detectron2 was installed without its C++ ops (pb1-detectron2 sdist has no csrc): {op} is unavailable; "
    "use the upstream build (Dockerfile) for rotated boxes / deformable conv / the fast COCO evaluator"
)

# numpy's aliases of builtins, removed in 1.24 (np.bool_, np.int64, np.float32, ... are other names).
NUMPY_ALIASES = {
    "bool": "bool",
    "int": "int",
    "float": "float",
    "complex": "complex",
    "object": "object",
    "str": "str",
    "long": "int",
    "unicode": "str",
}
NUMPY_ALIAS = re.compile(r"\bnp\.(" + "|".join(NUMPY_ALIASES) + r")\b")

# The modules that import detectron2's C++ extension at module level, each importing it for these ops.
C_IMPORT = "from detectron2 import _C\n"
C_IMPORTERS = (
    "detectron2/layers/deform_conv.py",
    "detectron2/layers/roi_align_rotated.py",
    "detectron2/layers/rotated_boxes.py",
    "detectron2/evaluation/fast_eval_api.py",
)
LAZY_C_IMPORT = "from detectron2._lazy_C import _C  # atelier: the C++ ops load on first use\n"
MODULE_LEVEL_C_IMPORT = re.compile(r"^(from detectron2 import _C\b|import detectron2\._C\b)", re.MULTILINE)

LAZY_C_MODULE = f'''"""Detectron2's C++ ops, imported on first use (written by deploy/detectron2/patch.py).

pb1-detectron2 0.6 ships no csrc, so ``detectron2._C`` does not exist. The modules that imported it at
module level import this stand-in instead: everything else in detectron2 works, and an op that needs
the extension raises ImportError naming itself. An installation that has the real extension uses it.
"""

import importlib

MISSING_OPS = {MISSING_OPS!r}


class LazyOps:
    """Attribute access is forwarded to ``detectron2._C``, imported when first needed."""

    def require(self, op):
        """The extension module, or ImportError naming ``op`` when it was not built."""
        try:
            return importlib.import_module("detectron2._C")
        except ImportError as exc:
            raise ImportError(MISSING_OPS.format(op=op)) from exc

    def __getattr__(self, op):
        if op.startswith("__"):  # copy, pickle and inspect probe dunders; those are no ops
            raise AttributeError(op)
        return getattr(self.require(op), op)


_C = LazyOps()
'''


def replace_once(path: Path, old: str, new: str) -> None:
    """Replaces the single occurrence of ``old`` in ``path``; refuses a file with none or several."""
    text = path.read_text()
    count = text.count(old)
    if count != 1:
        raise RuntimeError(f"{path}: expected {old!r} once, found it {count} times; has the sdist changed?")
    path.write_text(text.replace(old, new))


def sources(root: Path) -> list[Path]:
    """Every Python file the build installs: the detectron2 package and the bundled projects."""
    return sorted([*root.glob("detectron2/**/*.py"), *root.glob("projects/**/*.py")])


def numpy_aliases(root: Path) -> None:
    """``np.int``, ``np.float``, ``np.str``, ``np.bool``, ... were removed in numpy 1.24, and detectron2
    0.6 uses them in masks, the data loader's class histogram, the visualizer and the evaluators
    (AttributeError at run time; numpy 2 brought back only ``np.bool``, now meaning ``np.bool_``). They
    meant the builtins, so they become the builtins; ``np.bool_``, ``np.int64`` and the like stay."""
    changed = 0
    for path in sources(root):
        text = path.read_text()
        new, count = NUMPY_ALIAS.subn(lambda m: NUMPY_ALIASES[m.group(1)], text)
        if count:
            path.write_text(new)
            changed += count
    if changed == 0:
        raise RuntimeError(f"{root}: no removed numpy alias found; has the sdist changed?")
    log.info("numpy aliases: %d replaced", changed)


def pillow_linear(root: Path) -> None:
    """``Image.LINEAR`` was removed in Pillow 10; ``ExtentTransform`` uses it as a default argument,
    so ``import detectron2.data`` itself fails. It was always an alias of ``Image.BILINEAR``."""
    replace_once(
        root / "detectron2/data/transforms/transform.py", "interp=Image.LINEAR,", "interp=Image.BILINEAR,"
    )


def setup_no_extension(root: Path) -> None:
    """The sdist has no ``detectron2/layers/csrc``, yet setup.py declares the ``detectron2._C``
    extension from it, so the build fails on a missing ``vision.cpp``. Build none: ``lazy_c_ops`` makes
    the few ops that need it fail by name instead."""
    if (root / "detectron2/layers/csrc").exists():
        raise RuntimeError(f"{root} ships detectron2/layers/csrc: build the extension instead of this patch")
    build_ext = '    cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},\n'
    replace_once(
        root / "setup.py",
        "    ext_modules=get_extensions(),\n" + build_ext,
        "    ext_modules=[],  # atelier: the sdist has no csrc\n",
    )


def setup_model_zoo_configs(root: Path) -> None:
    """``model_zoo.get_config_file`` reads ``configs/`` inside the installed ``detectron2.model_zoo``
    package. setup.py globs the configs from a top-level ``configs/`` that the sdist does not have
    (they already sit in ``detectron2/model_zoo/configs``), so it installs none. Glob them where they
    are, relative to the package."""
    configs = root / "detectron2/model_zoo/configs"
    if not any(configs.glob("COCO-InstanceSegmentation/*.yaml")):
        raise RuntimeError(f"{configs}: no model-zoo configs; has the sdist changed?")
    replace_once(
        root / "setup.py",
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
        'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
    )


def setup_unpin_black(root: Path) -> None:
    """setup.py pins ``black==21.4b2`` (a 2021 pre-release, whose CLI fails on click >= 8.1) only for
    ``LazyConfig.save``'s ``black.format_str``; upstream Detectron2 has since unpinned it."""
    replace_once(root / "setup.py", '"black==21.4b2",', '"black",')


def lazy_c_ops(root: Path) -> None:
    """Four modules import ``detectron2._C`` at module level, and ``detectron2.layers`` imports two of
    them, so without the extension nothing imports at all. The ops they need serve only rotated boxes,
    deformable convolution and the fast COCO evaluator; Mask/Faster R-CNN FPN runs on torchvision's
    ops. Those imports go through ``detectron2._lazy_C``, which imports the extension on first use and
    otherwise raises ImportError naming the op. ``nms_rotated`` calls a torch op that only importing the
    extension registers, so it asks for the extension first."""
    (root / "detectron2/_lazy_C.py").write_text(LAZY_C_MODULE)
    for name in C_IMPORTERS:
        replace_once(root / name, C_IMPORT, LAZY_C_IMPORT)
    nms = root / "detectron2/layers/nms.py"
    bc_import = "from torchvision.ops import nms  # BC-compat\n"
    replace_once(nms, bc_import, bc_import + "\nfrom detectron2._lazy_C import _C\n")
    replace_once(
        nms,
        "    return torch.ops.detectron2.nms_rotated(",
        '    _C.require("nms_rotated")  # atelier: registers torch.ops.detectron2\n'
        "    return torch.ops.detectron2.nms_rotated(",
    )
    left = [str(path) for path in sources(root) if MODULE_LEVEL_C_IMPORT.search(path.read_text())]
    if left:
        raise RuntimeError(f"module-level imports of detectron2._C left in {left}")


PATCHES: tuple[Callable[[Path], None], ...] = (
    numpy_aliases,
    pillow_linear,
    setup_no_extension,
    setup_model_zoo_configs,
    setup_unpin_black,
    lazy_c_ops,
)


def write_marker(root: Path, stamp: str) -> None:
    """``detectron2.atelier_patch`` tells an installation made here from upstream's, and install.sh
    compares its stamp to skip a second run with the same patches."""
    names = tuple(patch.__name__ for patch in PATCHES)
    (root / "detectron2/atelier_patch.py").write_text(
        '"""This detectron2 was built by Atelier\'s deploy/detectron2/install.sh from a patched sdist."""\n\n'
        f"PATCHED_FROM = {PATCHED_FROM!r}\n"
        f"PATCHES = {names!r}\n"
        f"INSTALL_STAMP = {stamp!r}\n"
    )


def patch(root: Path, stamp: str = "") -> None:
    """Applies every patch to the sdist unpacked at ``root``, then writes the marker module."""
    if not (root / "setup.py").is_file() or not (root / "detectron2/__init__.py").is_file():
        raise FileNotFoundError(f"{root} is not an unpacked detectron2 sdist (no setup.py / detectron2/)")
    if (root / "detectron2/atelier_patch.py").exists():
        raise RuntimeError(f"{root} is already patched; unpack the sdist afresh")
    for step in PATCHES:
        step(root)
        log.info("applied %s", step.__name__)
    write_marker(root, stamp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("src", type=Path, help="the unpacked pb1-detectron2 0.6 sdist")
    parser.add_argument("--stamp", default="", help="recorded as detectron2.atelier_patch.INSTALL_STAMP")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="detectron2:   %(message)s")
    patch(args.src, args.stamp)


if __name__ == "__main__":
    main()
