from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from pathlib import Path

import pytest
from PIL import Image

from services.classifier.data import (
    COLUMNS,
    LoadReport,
    Sample,
    UntrainableHeadError,
    dataset_hash,
    labels_of,
    read_styles,
    stratified_split,
)

HEADER = ",".join(COLUMNS)
HEADS = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "usage"]

# The known faults of the real styles.csv, one per row (ids without an image are listed below).
MESSY_ROWS = [
    "1001,Men,Apparel,Topwear,Tshirts,Black,Summer,2012,Casual,Puma Men Black T-shirt",
    "1002,Men,Apparel,Topwear,Tshirts,Black,Summer,2012,Casual,Puma Men, Black T-shirt",
    "1003,Women,Apparel,Bottomwear,Jeans,Blue,Fall,2011,Casual,Levis Women, Blue, Jeans",
    "1004,Women,Footwear,Shoes,Heels,,Winter,2013,Casual,Catwalk Heels",
    "1005,Men,Accessories,Watches,Watches,Silver,Winter,2016,,Titan Watch",
    "1006,Men,Apparel,Topwear,Shirts",
    "abc7,Men,Apparel,Topwear,Shirts,White,Summer,2012,Formal,Arrow Shirt",
    '1008,Women,Apparel,Topwear,Kurtas,Red,Summer,2012,Ethnic,"Fabindia Women, Red Kurta"',
    "1009 ,Men ,Apparel,Topwear,Tshirts , Black,Summer,2012,Casual ,Nike Tee   ",
    "1010,Men,Apparel,Topwear,Tshirts,Black,Summer,2012,Casual,Tee without an image",
    "",
    "1001,Men,Apparel,Topwear,Tshirts,Black,Summer,2012,Casual,The same id again",
    "1011,Men,Apparel,Topwear,Tshirts,Black,Summer,2012,Casual",
    '1012,Women,Apparel,Topwear,Tops,White,Summer,2012,Casual,"Unclosed quote top',
    "1013,Women,Footwear,Shoes,Flats,,Summer,2012,,Neither colour nor usage",
]
WITHOUT_IMAGE = {"1010"}


def write_jpeg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path, "JPEG")


def write_dataset(root: Path, rows: list[str], without_image: Collection[str] = ()) -> tuple[Path, Path]:
    csv_path, images = root / "styles.csv", root / "images"
    csv_path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    images.mkdir(parents=True, exist_ok=True)
    for row in rows:
        id_ = row.split(",", 1)[0].strip()
        if id_.isdigit() and id_ not in without_image:
            write_jpeg(images / f"{id_}.jpg")
    return csv_path, images


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, Path]:
    return write_dataset(tmp_path, MESSY_ROWS, WITHOUT_IMAGE)


def test_messy_file_keeps_exactly_the_good_rows(messy: tuple[Path, Path]) -> None:
    # given
    csv_path, images = messy

    # when
    samples, report = read_styles(csv_path, images, HEADS, min_images_per_class=1, min_classes=0)

    # then
    assert [s.id for s in samples] == ["1001", "1002", "1003", "1008", "1009", "1011", "1012"]
    assert report.rows_read == 14
    assert report.rows_kept == 7
    assert report.dropped == Counter(
        {
            "malformed": 2,
            "duplicate_id": 1,
            "missing_label:baseColour": 2,
            "missing_label:usage": 1,
            "missing_image": 1,
        }
    )
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())
    assert report.repaired_commas == 2
    assert report.mapped_to_other == {head: 0 for head in HEADS}


def test_labels_are_stripped_positionally_right_and_only_for_heads(messy: tuple[Path, Path]) -> None:
    csv_path, images = messy

    samples, _ = read_styles(
        csv_path, images, ["gender", "articleType", "usage"], min_images_per_class=1, min_classes=0
    )
    by_id = {s.id: s for s in samples}

    assert by_id["1009"] == Sample(
        id="1009",
        image_path=images / "1009.jpg",
        labels={"gender": "Men", "articleType": "Tshirts", "usage": "Casual"},
    )
    # the rows whose display name held commas keep their labels in the right columns
    assert by_id["1003"].labels == {"gender": "Women", "articleType": "Jeans", "usage": "Casual"}
    # a head that is not configured does not filter: 1004 lacks only baseColour
    assert "1004" in by_id


def test_unchecked_images_keep_the_row_without_an_image(messy: tuple[Path, Path]) -> None:
    csv_path, images = messy

    samples, report = read_styles(
        csv_path, images, HEADS, min_images_per_class=1, check_images=False, min_classes=0
    )

    assert "1010" in [s.id for s in samples]
    assert "missing_image" not in report.dropped


def test_summary_has_one_line_per_reason(messy: tuple[Path, Path]) -> None:
    csv_path, images = messy

    _, report = read_styles(csv_path, images, ["gender", "baseColour"], min_images_per_class=1, min_classes=0)
    lines = report.summary().splitlines()

    assert "rows read: 14" in lines
    assert "dropped missing_label:baseColour: 2" in lines
    assert "repaired commas: 2" in lines
    assert len([line for line in lines if line.startswith("dropped ")]) == len(report.dropped)


def test_unknown_head_is_refused(messy: tuple[Path, Path]) -> None:
    csv_path, images = messy

    with pytest.raises(ValueError, match=r"unknown head 'colour'; expected one of"):
        read_styles(csv_path, images, ["gender", "colour"])
    with pytest.raises(ValueError, match=r"unknown head 'productDisplayName'"):
        read_styles(csv_path, images, ["productDisplayName"])


def test_header_is_required_and_checked(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    missing.write_text("id,gender,masterCategory,subCategory,articleType,season,year,productDisplayName\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    headerless = tmp_path / "headerless.csv"
    headerless.write_text(MESSY_ROWS[0] + "\n")

    with pytest.raises(ValueError, match=r"lacks the columns \['baseColour', 'usage'\]"):
        read_styles(missing, tmp_path, ["gender"])
    with pytest.raises(ValueError, match="empty file"):
        read_styles(empty, tmp_path, ["gender"])
    with pytest.raises(ValueError, match="lacks the columns"):
        read_styles(headerless, tmp_path, ["gender"])


# gender: Men 2, Women 2, Boys 1; articleType: Tshirts 3, Jeans 1, Shirts 1
RARE_ROWS = [
    "1,Men,Apparel,Topwear,Tshirts,Black,Summer,2012,Casual,a",
    "2,Men,Apparel,Topwear,Tshirts,Black,Summer,2012,Casual,b",
    "3,Women,Apparel,Topwear,Tshirts,Black,Summer,2012,Casual,c",
    "4,Women,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,d",
    "5,Boys,Apparel,Topwear,Shirts,White,Summer,2012,Casual,e",
]


def test_rare_classes_become_other(tmp_path: Path) -> None:
    csv_path, images = write_dataset(tmp_path, RARE_ROWS)

    samples, report = read_styles(csv_path, images, ["gender", "articleType"], min_images_per_class=2)

    assert [s.id for s in samples] == ["1", "2", "3", "4", "5"]
    assert [s.labels["gender"] for s in samples] == ["Men", "Men", "Women", "Women", "Other"]
    assert [s.labels["articleType"] for s in samples] == ["Tshirts", "Tshirts", "Tshirts", "Other", "Other"]
    assert report.mapped_to_other == {"gender": 1, "articleType": 2}
    assert not report.dropped
    assert labels_of(samples, ["articleType", "gender"]) == {
        "articleType": ["Other", "Tshirts"],
        "gender": ["Men", "Other", "Women"],
    }


def test_rare_classes_are_dropped_until_stable(tmp_path: Path) -> None:
    csv_path, images = write_dataset(tmp_path, RARE_ROWS)

    samples, report = read_styles(
        csv_path, images, ["gender", "articleType"], min_images_per_class=2, rare="drop", min_classes=0
    )
    reversed_heads, _ = read_styles(
        csv_path, images, ["articleType", "gender"], min_images_per_class=2, rare="drop", min_classes=0
    )

    # dropping 4 (Jeans) leaves Women with one sample, so 3 goes in a second round
    assert [s.id for s in samples] == ["1", "2"]
    assert report.dropped == Counter({"rare_class:gender": 2, "rare_class:articleType": 1})
    assert report.rows_kept == 2
    assert report.mapped_to_other == {"gender": 0, "articleType": 0}
    assert [s.id for s in reversed_heads] == ["1", "2"]


def test_a_head_left_with_one_class_is_refused_with_its_counts(tmp_path: Path) -> None:
    # given: five garments and the default threshold of 500, which maps every label to Other
    csv_path, images = write_dataset(tmp_path, RARE_ROWS)

    # when
    with pytest.raises(UntrainableHeadError) as refused:
        read_styles(csv_path, images, ["gender", "articleType"])

    # then: each head's original counts, and the threshold that keeps two classes in both
    lines = str(refused.value).splitlines()
    assert lines[0].startswith("with min_images_per_class=500 (classes with fewer images mapped to Other)")
    assert lines[1:] == [
        "  gender: 1 class left (Other 5); images per class before the rule: Men 2, Women 2, Boys 1",
        "  articleType: 1 class left (Other 5); "
        "images per class before the rule: Tshirts 3, Jeans 1, Shirts 1",
        "--min-images-per-class 2 (or lower) keeps at least 2 classes in every head.",
    ]
    # the advice holds: 2 trains (two and three classes), 3 is refused again
    _, report = read_styles(csv_path, images, ["gender", "articleType"], min_images_per_class=2)
    assert report.classes_summary().splitlines() == [
        "gender (3 classes): Men 2, Women 2, Other 1",
        "articleType (2 classes): Tshirts 3, Other 2",
    ]
    with pytest.raises(UntrainableHeadError, match="  gender: 1 class left"):
        read_styles(csv_path, images, ["gender", "articleType"], min_images_per_class=3)


def test_dropping_rare_classes_advises_a_threshold_for_all_heads_together(tmp_path: Path) -> None:
    csv_path, images = write_dataset(tmp_path, RARE_ROWS)

    # gender alone keeps Men and Women at 2, but dropping Jeans (articleType) leaves Women one image
    with pytest.raises(UntrainableHeadError) as refused:
        read_styles(csv_path, images, ["gender", "articleType"], min_images_per_class=2, rare="drop")

    message = str(refused.value)
    assert (
        "  gender: 1 class left (Men 2); images per class before the rule: Men 2, Women 2, Boys 1" in message
    )
    assert "  articleType: 1 class left (Tshirts 2)" in message
    assert message.endswith("--min-images-per-class 1 (or lower) keeps at least 2 classes in every head.")


def test_a_head_with_one_label_in_the_data_has_no_threshold_to_advise(tmp_path: Path) -> None:
    csv_path, images = write_dataset(tmp_path, [row.replace("Women", "Men") for row in RARE_ROWS[:4]])

    with pytest.raises(UntrainableHeadError) as refused:
        read_styles(csv_path, images, ["gender", "articleType"], min_images_per_class=1)

    assert str(refused.value).splitlines()[1:] == [
        "  gender: 1 class left (Men 4); images per class before the rule: Men 4",
        "no --min-images-per-class does: gender has fewer than 2 distinct labels in the data; add images of "
        "other classes or leave the head out (heads in --config).",
    ]


def test_labels_of_is_sorted_and_names_a_missing_head() -> None:
    samples = [Sample(str(i), Path(f"{i}.jpg"), {"gender": g}) for i, g in enumerate("bcab")]

    assert labels_of(samples, ["gender"]) == {"gender": ["a", "b", "c"]}
    assert labels_of(list(reversed(samples)), ["gender"]) == {"gender": ["a", "b", "c"]}
    with pytest.raises(ValueError, match="no label for head 'usage'"):
        labels_of(samples, ["usage"])


def synthetic(sizes: dict[str, int]) -> list[Sample]:
    samples, next_id = [], 0
    for label, size in sizes.items():
        for _ in range(size):
            samples.append(Sample(str(next_id), Path(f"{next_id}.jpg"), {"articleType": label}))
            next_id += 1
    return samples


def ids(part: list[Sample]) -> list[str]:
    return [s.id for s in part]


def test_stratified_split_is_deterministic_disjoint_and_covering() -> None:
    # given
    samples = synthetic({f"class{k}": 20 for k in range(5)} | {"pair": 2, "triple": 3})

    # when
    train, val, test = stratified_split(samples, "articleType", seed=7)

    # then
    assert (train, val, test) == stratified_split(samples, "articleType", seed=7)
    shuffled_input = stratified_split(list(reversed(samples)), "articleType", seed=7)
    assert [sorted(ids(part)) for part in shuffled_input] == [sorted(ids(p)) for p in (train, val, test)]
    assert ids(stratified_split(samples, "articleType", seed=8)[1]) != ids(val)
    all_ids = ids(train) + ids(val) + ids(test)
    assert len(all_ids) == len(set(all_ids)) == len(samples)

    per_part = [Counter(s.labels["articleType"] for s in part) for part in (train, val, test)]
    for k in range(5):
        assert [counts[f"class{k}"] for counts in per_part] == [16, 2, 2]
    assert [counts["triple"] for counts in per_part] == [1, 1, 1]
    assert [counts["pair"] for counts in per_part] == [2, 0, 0]


def test_stratified_split_keeps_train_for_small_classes_and_checks_its_input() -> None:
    samples = synthetic({"a": 4, "b": 5})

    train, val, test = stratified_split(samples, "articleType", fractions=(0.2, 0.4, 0.4))

    for label in "ab":
        assert [sum(s.labels["articleType"] == label for s in part) >= 1 for part in (train, val, test)] == [
            True,
            True,
            True,
        ]
    with pytest.raises(ValueError, match=r"sum to 1, got \(0.8, 0.1, 0.2\)"):
        stratified_split(samples, "articleType", fractions=(0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="duplicate sample ids"):
        stratified_split(samples + samples[:1], "articleType")


def test_dataset_hash_follows_image_bytes_and_labels(tmp_path: Path) -> None:
    # given
    for id_ in "123":
        (tmp_path / f"{id_}.jpg").write_bytes(bytes(range(256)) * 10 + id_.encode())
    samples = [Sample(id_, tmp_path / f"{id_}.jpg", {"gender": "Men", "usage": "Casual"}) for id_ in "123"]
    original = dataset_hash(samples)
    image = tmp_path / "2.jpg"
    content = image.read_bytes()

    # then: stable, and independent of order and of where the images lie
    assert dataset_hash(samples) == original
    assert len(original) == 64
    assert dataset_hash(list(reversed(samples))) == original
    moved = tmp_path / "moved"
    moved.mkdir()
    for s in samples:
        (moved / s.image_path.name).write_bytes(s.image_path.read_bytes())
    assert dataset_hash([Sample(s.id, moved / s.image_path.name, s.labels) for s in samples]) == original

    # one image byte
    image.write_bytes(content[:100] + bytes([content[100] ^ 1]) + content[101:])
    assert dataset_hash(samples) != original
    image.write_bytes(content)
    assert dataset_hash(samples) == original

    # one label
    relabelled = [*samples[:2], Sample("3", samples[2].image_path, {"gender": "Women", "usage": "Casual"})]
    assert dataset_hash(relabelled) != original


def test_load_report_starts_empty() -> None:
    report = LoadReport()

    assert report.summary().splitlines() == ["rows read: 0", "rows kept: 0", "repaired commas: 0"]
