"""DeepFashion2's 13 garment categories, in its own id order (1..13), and what each covers of the body."""

from __future__ import annotations

from common.outputs import LOWER_BODY, UPPER_BODY, WHOLE_BODY, BodyRegion

CATEGORIES: tuple[str, ...] = (
    "short sleeve top",
    "long sleeve top",
    "short sleeve outwear",
    "long sleeve outwear",
    "vest",
    "sling",
    "shorts",
    "trousers",
    "skirt",
    "short sleeve dress",
    "long sleeve dress",
    "vest dress",
    "sling dress",
)
# landmarks per category, in category order: DeepFashion2 numbers its 294 landmarks category after category
LANDMARKS: tuple[int, ...] = (25, 33, 31, 39, 15, 15, 10, 14, 8, 29, 37, 19, 19)
KEYPOINTS = sum(LANDMARKS)  # 294
LANDMARK_OFFSET: tuple[int, ...] = tuple(sum(LANDMARKS[:i]) for i in range(len(LANDMARKS)))

BODY_REGION: dict[str, BodyRegion] = {
    **{name: UPPER_BODY for name in CATEGORIES[:6]},
    **{name: LOWER_BODY for name in CATEGORIES[6:9]},
    **{name: WHOLE_BODY for name in CATEGORIES[9:]},
}


def category_id(name: str) -> int:
    try:
        return CATEGORIES.index(name) + 1
    except ValueError:
        raise ValueError(
            f"unknown DeepFashion2 category {name!r}; expected one of {list(CATEGORIES)}"
        ) from None
