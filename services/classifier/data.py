"""The classifier's training data: the Fashion Product Images layout (``styles.csv`` + ``images/<id>.jpg``).

``styles.csv`` is malformed in known ways, and this module reads it as it is rather than as pandas wants it:

* some ``productDisplayName`` values carry unquoted commas, so their rows have more than 10 fields; the
  fields beyond the 10th are folded back into ``productDisplayName`` (it is the last column, so the fold
  is unambiguous unless a comma sits in an earlier column, which no known row does);
* some rows have empty fields; an empty (or all-whitespace) value is a missing value;
* some ids have no image.

Each physical line is one row: a stray quote in a display name must not swallow the rows after it, and the
file has no legitimate multi-line fields. Blank lines are skipped and not counted.

No framework is imported here: the loader, the split and the dataset hash run in the plain environment,
and the Keras training script consumes their output.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from common.blobstore import sha256_file

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
)
# Every column but the key and the free-text name can be a classification head.
HEAD_COLUMNS: tuple[str, ...] = COLUMNS[1:-1]
OTHER = "Other"
IMAGE_SUFFIX = ".jpg"

_ID = re.compile(r"[0-9]+")
_FIELDS_BEFORE_NAME = len(COLUMNS) - 1

RarePolicy = Literal["other", "drop"]


class UntrainableHeadError(ValueError):
    """A head left with fewer classes than training needs after the rare-class rule.

    The message names each such head with the images each of its classes had before the rule, and the
    ``min_images_per_class`` at or below which every head keeps enough classes (or that none does).
    """


@dataclass(frozen=True)
class Sample:
    id: str
    image_path: Path
    # hash=False: a dict is unhashable; equal samples still hash equally through id and image_path
    labels: dict[str, str] = field(hash=False)


@dataclass
class LoadReport:
    """What ``read_styles`` did to the file: ``rows_read == rows_kept + sum(dropped.values())``.

    ``repaired_commas`` counts the well-formed rows (not ``malformed``) that had their display name
    folded back, whether or not a later reason dropped them.
    """

    rows_read: int = 0
    rows_kept: int = 0
    # reason -> count: malformed, duplicate_id, missing_label:<head>, missing_image, rare_class:<head>
    dropped: Counter[str] = field(default_factory=Counter)
    repaired_commas: int = 0
    mapped_to_other: dict[str, int] = field(default_factory=dict)
    # head -> label -> images, of the rows kept: before and after the rare-class rule
    class_counts: dict[str, Counter[str]] = field(default_factory=dict)
    kept_class_counts: dict[str, Counter[str]] = field(default_factory=dict)

    def drop(self, reason: str, line: int | None = None) -> None:
        self.dropped[reason] += 1
        if line is not None:
            logger.debug("styles.csv line %d dropped: %s", line, reason)

    def summary(self) -> str:
        lines = [f"rows read: {self.rows_read}", f"rows kept: {self.rows_kept}"]
        lines += [f"dropped {reason}: {count}" for reason, count in sorted(self.dropped.items())]
        lines.append(f"repaired commas: {self.repaired_commas}")
        lines += [f"mapped to {OTHER} ({head}): {count}" for head, count in self.mapped_to_other.items()]
        return "\n".join(lines)

    def classes_summary(self) -> str:
        """One line per head: its classes after the rare-class rule with their images, largest first."""
        return "\n".join(
            f"{head} ({len(counts)} classes): {_format_counts(counts)}"
            for head, counts in self.kept_class_counts.items()
        )


def read_styles(
    csv_path: Path,
    images_dir: Path,
    heads: Sequence[str],
    *,
    min_images_per_class: int = 500,
    rare: RarePolicy = "other",
    check_images: bool = True,
    min_classes: int = 2,
) -> tuple[list[Sample], LoadReport]:
    """Read ``styles.csv`` into samples labelled for ``heads``, in file order.

    A row is dropped, first matching reason counted, when it is ``malformed`` (fewer than the 9 fields
    before ``productDisplayName``, or an id that is not a non-negative integer), a ``duplicate_id`` (the
    first row with an id wins), ``missing_label:<head>`` (the first configured head whose value is
    missing), or ``missing_image`` (only when ``check_images``). Then, per head, a class with fewer than
    ``min_images_per_class`` samples is rare: with ``rare="other"`` its labels become ``"Other"`` (which is
    kept even if it is itself small); with ``rare="drop"`` its rows are dropped as ``rare_class:<head>``.
    Dropping for one head can make a class of another head rare, so dropping repeats until nothing
    changes: the result is the largest subset in which every class of every head is large enough, and
    does not depend on the order of the heads (only the attribution of a row to a reason does).

    A head left with fewer than ``min_classes`` classes after that (every label ``"Other"``, or every row
    dropped) has nothing to learn: ``UntrainableHeadError``, saying how many images each of its classes
    had and which ``min_images_per_class`` would keep enough. ``min_classes=0`` turns the check off (to
    read a held-out set, say).
    """
    heads = _check_heads(heads)
    if min_images_per_class < 0:
        raise ValueError(f"min_images_per_class must be >= 0, got {min_images_per_class!r}")
    if rare not in ("other", "drop"):
        raise ValueError(f"unknown rare-class policy {rare!r}; expected 'other' or 'drop'")

    report = LoadReport(mapped_to_other={head: 0 for head in heads})
    parsed = _parse_rows(csv_path, images_dir, heads, check_images, report)
    report.class_counts = _class_counts(parsed, heads)
    samples = _apply_rare_rule(parsed, heads, min_images_per_class, rare, report)
    report.rows_kept = len(samples)
    report.kept_class_counts = _class_counts(samples, heads)
    few = [head for head in heads if len(report.kept_class_counts[head]) < min_classes]
    if few:
        raise UntrainableHeadError(
            _untrainable_message(parsed, heads, few, min_images_per_class, rare, min_classes, report)
        )
    return samples, report


def labels_of(samples: Iterable[Sample], heads: Sequence[str]) -> dict[str, list[str]]:
    """The sorted distinct labels of each head; the order a model's output units follow."""
    found: dict[str, set[str]] = {head: set() for head in heads}
    for sample in samples:
        for head in heads:
            found[head].add(_label(sample, head))
    return {head: sorted(values) for head, values in found.items()}


def stratified_split(
    samples: Sequence[Sample],
    key_head: str,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Split into (train, val, test), stratified by ``key_head``'s label.

    Per class of ``n`` samples: fewer than 3 all go to train; otherwise val gets ``n * fractions[1]`` and
    test ``n * fractions[2]``, rounded half up but at least 1 where the fraction is positive, and train
    the rest, at least 1 (taken back from the larger of val and test). So every class of 3 or more
    appears in all three parts whenever val and test have a positive fraction.

    Which samples land where depends only on the set of samples and the seed: classes are visited in
    sorted order and each class is shuffled from id order by one ``numpy.random.default_rng(seed)``.
    Each part keeps the input order.
    """
    fractions = _check_fractions(fractions)
    ids = [sample.id for sample in samples]
    duplicates = sorted(id_ for id_, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate sample ids {duplicates[:10]!r}; a split would leak them across parts")

    by_class: dict[str, list[str]] = defaultdict(list)
    for sample in samples:
        by_class[_label(sample, key_head)].append(sample.id)

    rng = np.random.default_rng(seed)
    part_of: dict[str, int] = {}
    for label in sorted(by_class):
        class_ids = sorted(by_class[label])
        n_val, n_test = _val_test_sizes(len(class_ids), fractions)
        shuffled = [class_ids[i] for i in rng.permutation(len(class_ids))]
        for position, id_ in enumerate(shuffled):
            part_of[id_] = 1 if position < n_val else 2 if position < n_val + n_test else 0

    parts: tuple[list[Sample], list[Sample], list[Sample]] = ([], [], [])
    for sample in samples:
        parts[part_of[sample.id]].append(sample)
    return parts


def dataset_hash(samples: Iterable[Sample]) -> str:
    """The sha256 (hex) identifying a training set: every sample's id, labels and image bytes.

    Samples are taken in id order, so the input order does not matter; the image path does not enter
    the hash either, so moving the data set keeps it. Images are read in chunks, never whole.
    """
    records = sorted(
        (sample.id, json.dumps(sorted(sample.labels.items()), ensure_ascii=False), sample.image_path)
        for sample in samples
    )
    digest = hashlib.sha256()
    for id_, labels, image_path in records:
        record = json.dumps([id_, labels, sha256_file(image_path)], ensure_ascii=False)
        digest.update(record.encode("utf-8") + b"\n")
    return digest.hexdigest()


def _check_heads(heads: Sequence[str]) -> list[str]:
    if isinstance(heads, str):  # a lone "gender" would otherwise be six one-letter heads
        raise TypeError(f"heads must be a sequence of names, got the string {heads!r}")
    if not heads:
        raise ValueError(f"no heads configured; expected at least one of {HEAD_COLUMNS}")
    for name in heads:
        if name not in HEAD_COLUMNS:
            raise ValueError(f"unknown head {name!r}; expected one of {HEAD_COLUMNS}")
    repeated = sorted({name for name in heads if heads.count(name) > 1})
    if repeated:
        raise ValueError(f"heads configured more than once: {repeated!r}")
    return list(heads)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(not math.isfinite(f) or f < 0 for f in fractions):
        raise ValueError(f"fractions must be three finite non-negative numbers, got {fractions!r}")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fractions)!r})")
    if fractions[0] <= 0:
        raise ValueError(f"the train fraction must be positive, got {fractions!r}")
    return fractions[0], fractions[1], fractions[2]


def _val_test_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    if n < 3:
        return 0, 0
    sizes = [max(1, math.floor(n * f + 0.5)) if f > 0 else 0 for f in fractions[1:]]
    while n - sum(sizes) < 1:  # n >= 3, so both stay >= 1: the larger is >= 2 whenever this runs
        sizes[0 if sizes[0] > sizes[1] else 1] -= 1
    return sizes[0], sizes[1]


def _lines(csv_path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) per non-blank physical line, each parsed on its own."""
    with csv_path.open(encoding="utf-8-sig", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, next(csv.reader([line]))


def _check_header(csv_path: Path, header: list[str] | None) -> None:
    if header is None:
        raise ValueError(f"{csv_path}: empty file; expected a header {','.join(COLUMNS)!r}")
    names = [name.strip() for name in header]
    missing = [name for name in COLUMNS if name not in names]
    if missing:
        raise ValueError(f"{csv_path}: header {names!r} lacks the columns {missing!r}")
    if tuple(names) != COLUMNS:
        # the comma repair relies on productDisplayName being the last of exactly these columns
        raise ValueError(f"{csv_path}: header {names!r} is not in the expected order {list(COLUMNS)!r}")


def _parse_rows(
    csv_path: Path, images_dir: Path, heads: list[str], check_images: bool, report: LoadReport
) -> list[Sample]:
    rows = _lines(csv_path)
    first = next(rows, None)
    _check_header(csv_path, None if first is None else first[1])

    column = {name: index for index, name in enumerate(COLUMNS)}
    seen: set[str] = set()
    samples: list[Sample] = []
    for number, fields in rows:
        report.rows_read += 1
        values = [value.strip() for value in fields[:_FIELDS_BEFORE_NAME]]
        if len(values) < _FIELDS_BEFORE_NAME or not _ID.fullmatch(values[0]):
            report.drop("malformed", number)
            continue
        if len(fields) > len(COLUMNS):
            # unquoted commas in productDisplayName: everything from the 10th field on is the name, so
            # the labels are positionally right; the name itself is not kept (a Sample has only labels)
            report.repaired_commas += 1
        id_ = values[0]
        if id_ in seen:
            report.drop("duplicate_id", number)
            continue
        seen.add(id_)
        labels = {head: values[column[head]] for head in heads}
        missing = next((head for head in heads if not labels[head]), None)
        if missing is not None:
            report.drop(f"missing_label:{missing}", number)
            continue
        image_path = images_dir / f"{id_}{IMAGE_SUFFIX}"
        if check_images and not image_path.is_file():
            report.drop("missing_image", number)
            continue
        samples.append(Sample(id=id_, image_path=image_path, labels=labels))
    return samples


def _class_counts(samples: Sequence[Sample], heads: Sequence[str]) -> dict[str, Counter[str]]:
    return {head: Counter(sample.labels[head] for sample in samples) for head in heads}


def _format_counts(counts: Counter[str]) -> str:
    if not counts:
        return "no images"
    return ", ".join(
        f"{label} {count}" for label, count in sorted(counts.items(), key=lambda i: (-i[1], i[0]))
    )


def _apply_rare_rule(
    samples: list[Sample], heads: list[str], min_count: int, rare: RarePolicy, report: LoadReport
) -> list[Sample]:
    if rare == "other":
        return _map_rare_to_other(samples, heads, min_count, report)
    return _drop_rare(samples, heads, min_count, report)


def _largest_threshold(
    samples: list[Sample], heads: list[str], below: int, rare: RarePolicy, min_classes: int
) -> int | None:
    """The largest ``min_images_per_class`` under ``below`` that leaves every head ``min_classes``
    classes, or None when even 1 (nothing rare) does not.

    Lowering the threshold only makes fewer classes rare, so the kept classes never shrink: the
    predicate is monotone and a bisection finds the boundary."""

    def enough(threshold: int) -> bool:
        kept = _apply_rare_rule(
            samples, heads, threshold, rare, LoadReport(mapped_to_other=dict.fromkeys(heads, 0))
        )
        return all(len(counts) >= min_classes for counts in _class_counts(kept, heads).values())

    if below <= 1 or not enough(1):
        return None
    good, bad = 1, below  # enough(good), not enough(bad)
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if enough(middle) else (good, middle)
    return good


def _untrainable_message(
    samples: list[Sample],
    heads: list[str],
    few: list[str],
    min_count: int,
    rare: RarePolicy,
    min_classes: int,
    report: LoadReport,
) -> str:
    outcome = "mapped to Other" if rare == "other" else "dropped"
    lines = [
        f"with min_images_per_class={min_count} (classes with fewer images {outcome}), "
        f"{len(few)} of {len(heads)} heads would be left with fewer than {min_classes} classes: "
        "nothing to learn, so nothing is trained."
    ]
    for head in few:
        kept = report.kept_class_counts[head]
        lines.append(
            f"  {head}: {len(kept)} class{'' if len(kept) == 1 else 'es'} left ({_format_counts(kept)}); "
            f"images per class before the rule: {_format_counts(report.class_counts[head])}"
        )
    threshold = _largest_threshold(samples, heads, min_count, rare, min_classes)
    if threshold is not None:
        lines.append(
            f"--min-images-per-class {threshold} (or lower) keeps at least {min_classes} classes "
            "in every head."
        )
    else:
        single = [head for head in heads if len(report.class_counts[head]) < min_classes]
        lines.append(
            f"no --min-images-per-class does: {', '.join(single)} "
            f"{'has' if len(single) == 1 else 'have'} fewer than {min_classes} distinct labels in the data; "
            "add images of other classes or leave the head out (heads in --config)."
        )
    return "\n".join(lines)


def _rare_classes(samples: list[Sample], head: str, min_count: int) -> set[str]:
    counts = Counter(sample.labels[head] for sample in samples)
    return {label for label, count in counts.items() if count < min_count}


def _map_rare_to_other(
    samples: list[Sample], heads: list[str], min_count: int, report: LoadReport
) -> list[Sample]:
    # heads are independent here: mapping a label never changes another head's counts
    rare = {head: _rare_classes(samples, head, min_count) for head in heads}
    mapped: list[Sample] = []
    for sample in samples:
        labels = dict(sample.labels)
        for head in heads:
            if labels[head] in rare[head] and labels[head] != OTHER:
                labels[head] = OTHER
                report.mapped_to_other[head] += 1
        mapped.append(Sample(id=sample.id, image_path=sample.image_path, labels=labels))
    return mapped


def _drop_rare(samples: list[Sample], heads: list[str], min_count: int, report: LoadReport) -> list[Sample]:
    while True:
        rare = {head: _rare_classes(samples, head, min_count) for head in heads}
        kept: list[Sample] = []
        for sample in samples:
            head = next((head for head in heads if sample.labels[head] in rare[head]), None)
            if head is None:
                kept.append(sample)
            else:
                report.drop(f"rare_class:{head}")
        if len(kept) == len(samples):
            return kept
        samples = kept


def _label(sample: Sample, head: str) -> str:
    try:
        return sample.labels[head]
    except KeyError:
        raise ValueError(
            f"sample {sample.id!r} has no label for head {head!r}; it has {sorted(sample.labels)!r}"
        ) from None
