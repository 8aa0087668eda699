"""The one schema every detection source is brought to, and the checks that keep bad objects out.

Every split has `image` (Image), `image_id`, `width`, `height` and `objects` = {`id`, `area`, `bbox`
(COCO x, y, w, h in pixels), `category` (ClassLabel: contiguous ids, names from the categories),
`iscrowd`}. The original COCO `category_id` of each class is kept in the split's `DatasetInfo`
(`info.description` holds `{"hf_detr": {"coco_category_ids": [...]}}`), so evaluation can report in
COCO ids; `category_ids(split)` reads it back.

A panoptic split (COCO panoptic; paper section 4.4) has the same columns, one object per segment
(`objects.id` = the segment id in the PNG, `bbox` the segment's box), plus `panoptic_mask` (Image: the
PNG, id = R + 256 G + 256^2 B per pixel, 0 = unlabelled). Its metadata also records which classes are
things (`isthing`; the others are stuff), read back by `is_thing(split)`.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from datasets import ClassLabel, Features, Image, List, Value

logger = logging.getLogger("hf_detr.data")

METADATA_KEY = "hf_detr"


def detection_features(class_names: Sequence[str]) -> Features:
    """The features of every split: one schema for all sources."""
    return Features(
        {
            "image": Image(),
            "image_id": Value("int64"),
            "width": Value("int32"),
            "height": Value("int32"),
            "objects": {
                "id": List(Value("int64")),
                "area": List(Value("float32")),
                "bbox": List(List(Value("float32"), length=4)),
                "category": List(ClassLabel(names=list(class_names))),
                "iscrowd": List(Value("int8")),
            },
        }
    )


PANOPTIC_MASK = "panoptic_mask"


def panoptic_features(class_names: Sequence[str]) -> Features:
    """The detection schema (one object per segment) plus the panoptic PNG."""
    features = detection_features(class_names)
    features[PANOPTIC_MASK] = Image()
    return features


def is_panoptic(split: Any) -> bool:
    return split.features is not None and PANOPTIC_MASK in split.features


def set_category_ids(
    split: Any, category_ids: Sequence[int], description: str = "", isthing: Sequence[bool] | None = None
) -> Any:
    """Record the COCO category id of each contiguous class id in the split's `DatasetInfo` (and for
    panoptic data whether each class is a thing)."""
    metadata: dict[str, Any] = {
        "coco_category_ids": [int(i) for i in category_ids],
        "description": description,
    }
    if isthing is not None:
        metadata["isthing"] = [bool(v) for v in isthing]
    split.info.description = json.dumps({METADATA_KEY: metadata})
    return split


def _metadata(split: Any) -> dict[str, Any]:
    try:
        payload = json.loads(split.info.description or "{}")
        return dict(payload[METADATA_KEY])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return {}


def is_thing(split: Any) -> list[bool]:
    """Per class of a panoptic split whether it is a thing (True) or stuff; all things when unrecorded."""
    recorded = _metadata(split).get("isthing")
    return [bool(v) for v in recorded] if recorded is not None else [True] * len(class_names(split))


def category_ids(split: Any) -> list[int]:
    """COCO category id of each class of a split (contiguous ids when the source had none)."""
    recorded = _metadata(split).get("coco_category_ids")
    return [int(i) for i in recorded] if recorded is not None else list(range(len(class_names(split))))


def class_names(split: Any) -> list[str]:
    return list(split.features["objects"]["category"].feature.names)


class ObjectChecker:
    """Validates COCO objects of one image and counts what it drops, by reason.

    An object is invalid when its box is not 4 finite numbers, has a zero or negative width or
    height, lies entirely outside the image, or its category is unknown. Crowd objects are kept
    (the processor drops them for training; COCO evaluation needs them as ignore regions).
    """

    def __init__(self, known_categories: Mapping[Any, int]) -> None:
        self.known_categories = known_categories
        self.skipped: Counter[str] = Counter()

    def reason(self, bbox: Any, category: Any, width: float, height: float) -> str | None:
        """Why the object is invalid, or None when it is valid. `bbox` is COCO (x, y, w, h)."""
        if category not in self.known_categories:
            return "unknown category"
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            return "malformed box"
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            return "malformed box"
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            return "NaN or infinite box"
        if w <= 0 or h <= 0:
            return "zero or negative size"
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            return "box outside the image"
        return None

    def keep(self, bbox: Any, category: Any, width: float, height: float) -> bool:
        why = self.reason(bbox, category, width, height)
        if why is not None:
            self.skipped[why] += 1
        return why is None

    def report(self, where: str) -> None:
        if self.skipped:
            details = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
            logger.warning(
                "%s: skipped %d invalid object(s) (%s).", where, sum(self.skipped.values()), details
            )


__all__ = [
    "PANOPTIC_MASK",
    "ObjectChecker",
    "category_ids",
    "class_names",
    "detection_features",
    "is_panoptic",
    "is_thing",
    "panoptic_features",
    "set_category_ids",
]
