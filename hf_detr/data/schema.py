"""The one schema every detection source is brought to, and the checks that keep bad objects out.

Every split has `image` (Image), `image_id`, `width`, `height` and `objects` = {`id`, `area`, `bbox`
(COCO x, y, w, h in pixels), `category` (ClassLabel: contiguous ids, names from the categories),
`iscrowd`}. The original COCO `category_id` of each class is kept in the split's `DatasetInfo`
(`info.description` holds `{"hf_detr": {"coco_category_ids": [...]}}`), so evaluation can report in
COCO ids; `category_ids(split)` reads it back. A split read from a dataset folder also records the
folder's real path (`image_folders`): the data loaders read a stored image path only inside it.

A panoptic split (COCO panoptic; paper section 4.4) has the same columns, one object per segment
(`objects.id` = the segment id in the PNG, `bbox` the segment's box), plus `panoptic_mask` (Image: the
PNG, id = R + 256 G + 256^2 B per pixel, 0 = unlabelled). Its metadata also records which classes are
things (`isthing`; the others are stuff), read back by `is_thing(split)`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
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


def set_image_folders(split: Any, folders: Sequence[str | os.PathLike]) -> Any:
    """Record the real paths of the dataset folders a folder loader read the split from: a stored
    image path is decoded only when it lies inside one of them (`image_folders`)."""
    metadata = _metadata(split)
    metadata["image_folders"] = [os.path.realpath(folder) for folder in folders]
    split.info.description = json.dumps({METADATA_KEY: metadata})
    return split


def image_folders(split: Any) -> list[str] | None:
    """The dataset folders a folder's split was read from (`set_image_folders`); None for other sources."""
    recorded = _metadata(split).get("image_folders")
    return None if recorded is None else [str(folder) for folder in recorded]


def class_names(split: Any) -> list[str]:
    return list(split.features["objects"]["category"].feature.names)


def panoptic_categories(split: Any, coco_ids: list[int]) -> list[dict[str, Any]]:
    """The split's categories as PQ needs them: [{"id" (category id), "name", "isthing"}]."""
    return [
        {"id": int(cid), "name": name, "isthing": int(thing)}
        for cid, name, thing in zip(coco_ids, class_names(split), is_thing(split))
    ]


def stuff_label_ids(split: Any) -> list[int]:
    """The class ids of the split's stuff categories: fused into one segment each at post-processing."""
    return [label for label, thing in enumerate(is_thing(split)) if not thing]


MAX_CLASSES = 100_000  # more classes than any detection dataset has: a larger count is a typo


class ObjectChecker:
    """Validates COCO objects of one image and counts what it drops, by reason.

    The one rule of every loader: a box that overlaps the image is clipped to it (1-pixel overshoots
    are common in exports); an object is dropped, counted, when its box is not 4 finite numbers, has a
    zero or negative width or height, lies entirely outside the image or reaches more than one image
    size beyond an edge (a unit or format error, not an overshoot), when its category is unknown or
    not an id, or when its `area` is not a number >= 0 or its `iscrowd` not 0 or 1. Crowd objects are
    kept (the processor drops them for training; COCO evaluation needs them as ignore regions).
    """

    def __init__(self, known_categories: Mapping[Any, int]) -> None:
        self.known_categories = known_categories
        self.skipped: Counter[str] = Counter()

    def reason(self, bbox: Any, category: Any, width: float, height: float) -> str | None:
        """Why the object's category or box is unusable, or None. `bbox` is COCO (x, y, w, h)."""
        if isinstance(category, bool) or not isinstance(category, Hashable):
            return "category_id not an id"
        if category not in self.known_categories:
            return "unknown category"
        return box_problem(bbox, width, height)

    def checked(self, annotation: Any, width: float, height: float) -> dict[str, Any] | None:
        """A COCO annotation as the schema's object fields: `bbox` clipped to the image, `category`
        (the class id), `area` (the box's when missing, null or 0) and `iscrowd`; None when it is
        unusable (counted by a reason that names the field)."""
        if not isinstance(annotation, Mapping):
            why = "entry that is not a JSON object"
        else:
            bbox, category = annotation.get("bbox"), annotation.get("category_id")
            why = self.reason(bbox, category, width, height) or field_problem(annotation)
        if why is not None:
            self.skipped[why] += 1
            return None
        box = clipped_box([float(v) for v in bbox], width, height)
        area = annotation.get("area")
        return {
            "bbox": box,
            "category": self.known_categories[category],
            "area": float(area) if area else box[2] * box[3],
            "iscrowd": int(annotation.get("iscrowd") or 0),
        }

    def report(self, where: str) -> None:
        if self.skipped:
            details = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
            logger.warning(
                "%s: skipped %d invalid object(s) (%s).", where, sum(self.skipped.values()), details
            )


def box_problem(bbox: Any, width: float, height: float) -> str | None:
    """Why a COCO (x, y, w, h) box cannot be used in an image of `width` x `height`, or None."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "malformed box"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError, OverflowError):
        return "malformed box"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "NaN or infinite box"
    if w <= 0 or h <= 0:
        return "zero or negative size"
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "box outside the image"
    if x < -width or y < -height or x + w > 2 * width or y + h > 2 * height:
        return "box reaching more than an image size past the edge"
    return None


def clipped_box(bbox: list[float], width: float, height: float) -> list[float]:
    """A box that overlaps the image clipped to it (unchanged when it lies inside)."""
    x, y, w, h = bbox
    if x >= 0 and y >= 0 and x + w <= width and y + h <= height:
        return bbox
    x0, y0 = max(x, 0.0), max(y, 0.0)
    return [x0, y0, min(x + w, float(width)) - x0, min(y + h, float(height)) - y0]


def is_number(value: Any) -> bool:
    """A finite JSON number that fits a float (not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits
        return False


def field_problem(annotation: Mapping[str, Any]) -> str | None:
    """Why an annotation's `area` or `iscrowd` is unusable (both may be missing or null), or None."""
    area, crowd = annotation.get("area"), annotation.get("iscrowd")
    if area is not None and not (is_number(area) and area >= 0):
        return "area not a number >= 0"
    if crowd is not None and crowd not in (0, 1):  # true and false are 1 and 0
        return "iscrowd not 0 or 1"
    return None


__all__ = [
    "MAX_CLASSES",
    "PANOPTIC_MASK",
    "ObjectChecker",
    "box_problem",
    "category_ids",
    "class_names",
    "clipped_box",
    "detection_features",
    "image_folders",
    "is_panoptic",
    "is_thing",
    "panoptic_categories",
    "panoptic_features",
    "set_category_ids",
    "set_image_folders",
    "stuff_label_ids",
]
