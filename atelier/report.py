"""What ``atelier analyze`` prints: each image's merged record, compactly, as Rich renderables.

Pure functions of the image views as JSON (``ImageView.model_dump(mode="json")``, whose ``record`` holds
each finished model's output, ``common.outputs``): nothing here reads the database or a model. Every
string that came from outside (URLs, file names, labels, reasons) goes into a ``Text``, never through
Rich markup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

# the classifier heads shown for the whole image and for a garment's crop, in this order
IMAGE_HEADS: Final = ("articleType", "baseColour", "gender")
CROP_HEADS: Final = ("articleType", "baseColour")
TOP_ATTRIBUTES: Final = 3
TOP_COLOURS: Final = 3
# keys that hold a run-length-encoded mask in a record (``--no-masks`` drops them)
MASK_KEYS: Final = frozenset({"mask", "rle", "segmentation"})
GARMENT_MODELS: Final = ("detector", "segmenter")
_SKIPPED_EVERYWHERE: Final = "skipped on every image (why: below)"
_STYLES: Final = {"failed": "red", "skipped": "yellow", "pending": "yellow", _SKIPPED_EVERYWHERE: "yellow"}


def analysis_report(views: Sequence[Mapping[str, Any]]) -> list[RenderableType]:
    """One block per image: a header line (input, status, size, colours, sharpness, background), the
    whole-image classification, a table of the garments each model found, and why a model gave nothing.

    A model skipped for the same reason on every image is named per image, its reason left to the
    closing notes (``atelier analyze`` prints them once on stderr); any other reason is shown in place.
    """
    common = _common_skips(views)
    return [_image_block(view, common) for view in views]


def named_shares(colours: Iterable[Mapping[str, Any]]) -> list[tuple[str, float]]:
    """Clusters that share a palette name (two whites from JPEG noise) read as one colour to people."""
    shares: dict[str, float] = {}
    for colour in colours:
        shares[colour["name"]] = shares.get(colour["name"], 0.0) + colour["share"]
    return sorted(shares.items(), key=lambda kv: -kv[1])


def without_masks(value: Any) -> Any:
    """``value`` (JSON) without its run-length-encoded masks: every ``mask`` / ``rle`` / ``segmentation``
    key whose value is an RLE (``{"size", "counts"}``, or a list of them) is left out."""
    if isinstance(value, Mapping):
        return {k: without_masks(v) for k, v in value.items() if not (k in MASK_KEYS and _is_rle(v))}
    if isinstance(value, list):
        return [without_masks(v) for v in value]
    return value


def _is_rle(value: Any) -> bool:
    if isinstance(value, Mapping):
        return "counts" in value and "size" in value
    return isinstance(value, list) and bool(value) and all(_is_rle(v) for v in value)


def _common_skips(views: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The models skipped on every image that reached the models (two or more), each for one reason."""
    reasons: list[dict[str, str]] = [
        {n: s.get("reason") or "" for n, s in (v.get("models") or {}).items() if s.get("status") == "skipped"}
        for v in views
        if v.get("models")  # an image that failed before the models has none: it does not count
    ]
    if len(reasons) < 2:
        return {}
    first, *rest = reasons
    return {n: r for n, r in first.items() if all(other.get(n) == r for other in rest)}


def _image_block(view: Mapping[str, Any], common_skips: Mapping[str, str]) -> RenderableType:
    record = view.get("record") or {}
    models: Mapping[str, Mapping[str, Any]] = view.get("models") or {}
    lines: list[RenderableType] = [_header(view, record.get("properties") or {})]
    if "classifier" in record:
        lines.append(
            _indented(Text.assemble(("image class ", "bold"), _heads(record["classifier"], IMAGE_HEADS)))
        )
    rows = [(name, g) for name in GARMENT_MODELS for g in (record.get(name) or {}).get("garments", [])]
    if rows:
        lines.append(_indented(_garment_table(rows)))
    for name in GARMENT_MODELS:
        crops = (record.get(name) or {}).get("garment_classification") or {}
        if crops.get("skipped"):
            lines.append(_indented(Text(f"{name} crops not classified: {crops['skipped']}", style="yellow")))
        if name in record and not (record[name] or {}).get("garments"):
            lines.append(_indented(Text(f"{name}: no garments found")))
    lines += [_indented(line) for line in _model_notes(models, common_skips)]
    return Group(*lines, Text(""))


def _model_notes(models: Mapping[str, Mapping[str, Any]], common_skips: Mapping[str, str]) -> list[Text]:
    """A line per model that gave nothing, with its reason; models skipped for one reason share a line."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for name, state in models.items():
        if state.get("status") in ("skipped", "failed", "pending"):
            status, reason = state["status"], state.get("reason") or ""
            if status == "skipped" and common_skips.get(name) == reason:
                status, reason = _SKIPPED_EVERYWHERE, ""
            grouped.setdefault((status, reason), []).append(name)
    return [
        Text(f"{', '.join(names)} {status}" + (f": {reason}" if reason else ""), style=_STYLES[status])
        for (status, reason), names in grouped.items()
    ]


def _header(view: Mapping[str, Any], props: Mapping[str, Any]) -> Text:
    parts: list[Text] = [
        Text(view.get("url") or view.get("filename") or "", style="bold"),
        Text(str(view["status"])),
    ]
    if props:
        parts.append(Text(f"{props['width']}×{props['height']}"))
        shares = named_shares(props.get("colours", []))[:TOP_COLOURS]
        parts.append(Text(", ".join(f"{name} {share:.0%}" for name, share in shares)))
        if "sharpness" in props:
            parts.append(Text(f"sharpness {props['sharpness']:.0f}"))
        background = props.get("background") or {}
        if background:
            parts.append(
                Text("background " + (f"plain {background['colour']}" if background["plain"] else "busy"))
            )
    error = view.get("error")
    if error:
        parts.append(Text(f"{error['code']}", style="red"))
    return Text(" · ").join(parts)


def _heads(classification: Mapping[str, Mapping[str, Any]], heads: Sequence[str]) -> Text:
    """The chosen heads' top labels with their scores; every head when none of the chosen is there."""
    shown = [h for h in heads if h in classification] or list(classification)
    return Text(", ").join(
        Text(f"{classification[h]['label']} {classification[h]['score']:.2f}") for h in shown
    )


def _garment_table(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> Table:
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in ("model", "garment", "score", "region", "crop class", "attributes", "colours"):
        table.add_column(column, overflow="fold")
    for model, garment in rows:
        crop = garment.get("classification")
        attributes = garment.get("attributes", [])[:TOP_ATTRIBUTES]
        colours = named_shares(garment.get("colours", []))[:TOP_COLOURS]
        table.add_row(
            Text(model),
            Text(garment["category"]),
            Text(f"{garment['score']:.2f}"),
            Text(garment.get("body_region") or ""),
            _heads(crop, CROP_HEADS) if crop else Text(""),
            Text(", ".join(f"{a['name']} {a['score']:.2f}" for a in attributes)),
            Text(", ".join(f"{name} {share:.0%}" for name, share in colours)),
        )
    return table


def _indented(renderable: RenderableType) -> Padding:
    return Padding(renderable, (0, 0, 0, 2), expand=False)
