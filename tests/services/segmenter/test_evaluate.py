"""Fashionpedia's combined AP (IoU and attribute-F1 thresholds), checked against its definition, against
scikit-learn's F1 and against pycocotools' COCO AP where the attributes play no part."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.metrics import f1_score

from services.segmenter.evaluate import Garment, _match, attribute_f1, combined_ap

VOCABULARY = 5


@pytest.mark.parametrize("seed", range(40))
def test_attribute_f1_is_scikit_learns_macro_f1_of_the_multi_hot_vectors(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.random(VOCABULARY) < rng.random()
    predicted = rng.random(VOCABULARY) < rng.random()
    expected = f1_score(truth.astype(int), predicted.astype(int), average="macro", zero_division=0)

    got = attribute_f1(frozenset(np.flatnonzero(truth)), frozenset(np.flatnonzero(predicted)), VOCABULARY)

    assert got == pytest.approx(expected)


def test_attribute_f1_edges() -> None:
    everything = frozenset(range(VOCABULARY))
    assert attribute_f1(frozenset(), frozenset(), VOCABULARY) == 1.0
    assert attribute_f1(everything, everything, VOCABULARY) == 1.0
    assert attribute_f1(everything, frozenset(), VOCABULARY) == 0.0
    # {0,3} vs {0,4}: "has" F1 1/2, "has not" F1 (2*2)/(2*2+2) = 2/3
    assert attribute_f1(frozenset({0, 3}), frozenset({0, 4}), VOCABULARY) == pytest.approx(
        (1 / 2 + 2 / 3) / 2
    )


def box(x: float, y: float, size: float = 10) -> list[float]:
    return [x, y, size, size]


def test_right_boxes_with_wrong_attributes_score_only_without_the_f1_threshold() -> None:
    # given two garments of a category with attributes, and one of a category without
    truths = [
        [
            Garment(1, box(0, 0), frozenset({0, 3})),
            Garment(1, box(50, 50), frozenset({1, 3})),
            Garment(2, box(100, 0)),
        ]
    ]
    right = [[Garment(g.category, g.region, g.attributes, 0.9) for g in truths[0]]]
    wrong = [
        [
            Garment(g.category, g.region, frozenset({2, 4}) if g.attributes else g.attributes, 0.9)
            for g in truths[0]
        ]
    ]

    # when
    perfect, mislabelled = combined_ap(truths, right, VOCABULARY), combined_ap(truths, wrong, VOCABULARY)

    # then: every threshold passes for the right ones; the wrong attributes fail category 1 at every F1
    # threshold while category 2 (no attributes) keeps its AP: 1 column of 100 against 10 of 0
    assert perfect == pytest.approx(
        {"AP": 100.0, "AP_IoU50_F150": 100.0, "AP_IoU75_F175": 100.0, "AP_IoU": 100.0}
    )
    assert mislabelled["AP_IoU"] == pytest.approx(100.0)
    assert mislabelled["AP"] == pytest.approx(100 / 11)
    assert mislabelled["AP_IoU50_F150"] == pytest.approx(50.0)


def test_a_detection_between_the_f1_thresholds_counts_at_the_lower_only() -> None:
    # given: the first detection is right; the second has attribute F1 ((1/2 + 2/3) / 2 ≈ 0.58)
    truths = [[Garment(1, box(0, 0), frozenset({0, 3})), Garment(1, box(50, 50), frozenset({1, 3}))]]
    detections = [
        [Garment(1, box(0, 0), frozenset({0, 3}), 0.9), Garment(1, box(50, 50), frozenset({1, 4}), 0.8)]
    ]

    result = combined_ap(truths, detections, VOCABULARY)

    # then: at F1 ≥ 0.75 one of two garments is found, at precision 1 up to recall 0.5: 51 of the 101
    # recall points
    assert result["AP_IoU50_F150"] == pytest.approx(100.0)
    assert result["AP_IoU75_F175"] == pytest.approx(100 * 51 / 101)
    # F1 thresholds 0.50 and 0.55 of ten pass the second detection
    assert result["AP"] == pytest.approx(100 * (2 * 1.0 + 8 * 51 / 101) / 10)


def test_a_candidate_replaces_the_best_match_only_when_neither_iou_nor_f1_is_lower() -> None:
    # one detection, two free garments: the first has the higher IoU, the second the higher F1
    ious, f1s = np.array([[0.9, 0.8]]), np.array([[0.6, 1.0]])

    # at F1 ≥ 0.5 the first is kept (the second's IoU is lower); at F1 ≥ 0.75 only the second qualifies
    assert _match(ious, f1s, 0.5, 0.5).tolist() == [True]
    assert _match(ious, f1s, 0.85, 0.75).tolist() == [False]
    assert _match(ious, f1s, 0.5, 0.75).tolist() == [True]


def test_without_the_f1_threshold_it_is_cocos_ap() -> None:
    # given: random boxes, two categories, detections jittered, some missing, some false
    rng = np.random.default_rng(0)
    images = 12
    truths: list[list[Garment]] = []
    detections: list[list[Garment]] = []
    for _ in range(images):
        gt = [
            Garment(int(rng.integers(1, 3)), box(*_corner(rng), float(rng.uniform(10, 60)))) for _ in range(4)
        ]
        dt = [
            Garment(g.category, [v + rng.normal(0, 4) for v in g.region], score=float(rng.random()))
            for g in gt
            if rng.random() < 0.8
        ]
        dt += [Garment(int(rng.integers(1, 3)), box(*_corner(rng), 30), score=float(rng.random()))]
        truths.append(gt)
        detections.append(dt)

    # when
    ours = combined_ap(truths, detections, VOCABULARY)
    reference = _coco_ap(truths, detections)

    # then
    assert 10 < reference < 90  # neither trivial
    assert ours["AP_IoU"] == pytest.approx(reference)
    assert ours["AP"] == pytest.approx(reference)  # no category has attributes


def _corner(rng: np.random.Generator) -> tuple[float, float]:
    x, y = rng.uniform(0, 200, 2)
    return float(x), float(y)


def _coco_ap(truths: list[list[Garment]], detections: list[list[Garment]]) -> float:
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i} for i in range(len(truths))],
        "categories": [{"id": 1}, {"id": 2}],
        "annotations": [
            {
                "id": n,
                "image_id": i,
                "category_id": g.category,
                "bbox": g.region,
                "area": g.region[2] * g.region[3],
                "iscrowd": 0,
            }
            for n, (i, g) in enumerate(((i, g) for i, image in enumerate(truths) for g in image), start=1)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(
            [
                {"image_id": i, "category_id": d.category, "bbox": d.region, "score": d.score}
                for i, image in enumerate(detections)
                for d in image
            ]
        )
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return 100 * float(evaluation.stats[0])
