"""A detection confusion matrix with a background row and column.

Rows are the ground-truth class, columns the predicted class, both in ascending COCO category id
order with "background" last: entry [g, p] counts objects of class g detected as class p; the
background row counts detections that match no object (false positives), the background column
objects no detection matched (missed). The background/background corner is always 0.

Matching, per image, among the detections scoring at least `score_threshold`, visited by descending
score (greedy by score, as COCO matches and as the usual confusion-matrix tools, e.g. ultralytics'
`ConfusionMatrix`, pair boxes one-to-one at an IoU threshold):

1. each detection takes the still unmatched object *of its own class* with the highest IoU, if that
   IoU is at least `iou_threshold` (so the diagonal counts COCO's true positives at this IoU);
2. each detection still unmatched then takes the still unmatched object *of any class* with the
   highest IoU >= `iou_threshold` (a confusion between classes, off the diagonal);
3. a detection still unmatched is a false positive (background row), unless it lies on a crowd
   region (`iscrowd`, or VOC's "difficult"): intersection over the detection's area >= `iou_threshold`,
   as COCO ignores such detections; those are counted in `num_ignored`, not in the matrix. Crowd
   regions are never objects to be found.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BACKGROUND = "background"


@dataclass
class ConfusionMatrix:
    """`matrix` [K + 1, K + 1] int64: rows ground truth, columns prediction, index K = background."""

    matrix: np.ndarray
    category_ids: list[int]
    names: list[str]
    score_threshold: float
    iou_threshold: float
    num_ignored: int = 0

    @property
    def labels(self) -> list[str]:
        """Row and column names: the class names, then "background"."""
        return [*self.names, BACKGROUND]

    def class_precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Per class precision (diagonal / column sum) and recall (diagonal / row sum) at the
        thresholds, each [K] with NaN where the class has no detection / no object."""
        counts = self.matrix.astype(np.float64)
        diagonal = np.diag(counts)[:-1]  # [K]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = diagonal / counts[:, :-1].sum(axis=0)
            recall = diagonal / counts[:-1].sum(axis=1)
        return precision, recall

    def to_dict(self) -> dict[str, Any]:
        precision, recall = self.class_precision_recall()
        return {
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "rows": "ground truth",
            "columns": "prediction",
            "labels": self.labels,
            "category_ids": [*self.category_ids, None],
            "matrix": self.matrix.tolist(),
            "num_ignored_on_crowd": self.num_ignored,
            "precision": [None if np.isnan(v) else float(v) for v in precision],
            "recall": [None if np.isnan(v) else float(v) for v in recall],
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def save_png(self, path: str | os.PathLike) -> Path:
        from .plots import draw_confusion_matrix

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        title = f"Confusion matrix (score >= {self.score_threshold:g}, IoU >= {self.iou_threshold:g})"
        draw_confusion_matrix(self.matrix, self.labels, title).save(path)
        return path


def confusion_matrix(
    ground_truth: Mapping[str, Any],
    detections: np.ndarray,
    image_ids: Sequence[int] | None = None,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    names: Mapping[int, str] | None = None,
) -> ConfusionMatrix:
    """The confusion matrix of `detections` against a COCO ground-truth dict (module docstring).

    Args:
        ground_truth: a COCO instances dict (absolute x, y, w, h boxes).
        detections: rows [n, 7] of image_id, x, y, w, h (absolute), score, category_id, as
            `CocoEvaluator.detections`.
        image_ids: the evaluated images (their objects count even without detections); default all.
        names: category id -> name; default the ground truth's category names.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"`iou_threshold` must be in [0, 1], got {iou_threshold}.")
    detections = np.asarray(detections, dtype=np.float64).reshape(-1, 7)
    category_ids = sorted(int(c["id"]) for c in ground_truth["categories"])
    known_names = {int(c["id"]): str(c.get("name", c["id"])) for c in ground_truth["categories"]}
    names = {**known_names, **(names or {})}
    index = {category: k for k, category in enumerate(category_ids)}
    unknown = sorted(set(detections[:, 6].astype(np.int64).tolist()) - set(index))
    if unknown:
        raise ValueError(f"Detections of category id(s) {unknown[:10]} that the ground truth does not have.")
    strays = sorted({int(a["category_id"]) for a in ground_truth["annotations"]} - set(index))
    if strays:
        raise ValueError(f"Annotations of category id(s) {strays[:10]} that `categories` does not list.")
    if image_ids is None:
        image_ids = [int(image["id"]) for image in ground_truth["images"]]
    objects = _objects_by_image(ground_truth["annotations"], set(int(i) for i in image_ids))
    kept = detections[detections[:, 5] >= score_threshold]
    by_image = defaultdict(list)
    for row in kept:
        by_image[int(row[0])].append(row)

    background = len(category_ids)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    ignored = 0
    for image_id in image_ids:
        boxes, classes, crowd = objects.get(int(image_id), _NO_OBJECTS)
        rows = np.array(by_image.get(int(image_id), []), dtype=np.float64).reshape(-1, 7)
        detected_classes = np.array([index[int(c)] for c in rows[:, 6]], dtype=np.int64)
        classes = np.array([index[int(c)] for c in classes], dtype=np.int64)
        object_of, is_ignored = match_detections(
            _xyxy(rows[:, 1:5]), rows[:, 5], detected_classes, boxes, classes, crowd, iou_threshold
        )
        real = np.flatnonzero(~crowd)
        found = np.zeros(len(boxes), dtype=bool)
        for detection, target in enumerate(object_of):
            if target >= 0:
                matrix[classes[target], detected_classes[detection]] += 1
                found[target] = True
            elif not is_ignored[detection]:
                matrix[background, detected_classes[detection]] += 1
        ignored += int(is_ignored.sum())
        for target in real[~found[real]]:
            matrix[classes[target], background] += 1
    return ConfusionMatrix(
        matrix, category_ids, [names[c] for c in category_ids], float(score_threshold), float(iou_threshold),
        ignored,
    )  # fmt: skip


def match_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    object_boxes: np.ndarray,
    object_classes: np.ndarray,
    crowd: np.ndarray,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One image's detections (boxes [d, 4] x0, y0, x1, y1, scores [d], classes [d]) matched to its
    objects (object_boxes [g, 4], object_classes [g], crowd [g] bool) by the rule of the module
    docstring. Returns the matched object of each detection ([d], -1 for none) and whether an
    unmatched detection is ignored on a crowd region ([d] bool)."""
    object_of = np.full(len(boxes), -1, dtype=np.int64)
    ignored = np.zeros(len(boxes), dtype=bool)
    if len(boxes) == 0:
        return object_of, ignored
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(boxes, object_boxes)  # [d, g]
    taken = crowd.copy()  # crowd regions are never matched as objects
    for same_class_only in (True, False):
        for detection in order:
            if object_of[detection] >= 0:
                continue
            candidates = ~taken & (iou[detection] >= iou_threshold)
            if same_class_only:
                candidates &= object_classes == classes[detection]
            if candidates.any():
                target = int(np.argmax(np.where(candidates, iou[detection], -1.0)))
                object_of[detection] = target
                taken[target] = True
    if crowd.any():
        on_crowd = intersection_over_first(boxes, object_boxes[crowd]).max(axis=1) >= iou_threshold  # [d]
        ignored = (object_of < 0) & on_crowd
    return object_of, ignored


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pairwise IoU of x0, y0, x1, y1 boxes: [n, 4] x [m, 4] -> [n, m]."""
    intersection = _intersection(first, second)
    union = _area(first)[:, None] + _area(second)[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def intersection_over_first(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Intersection over the area of the `first` box ([n, m]): COCO's IoU against a crowd region."""
    area = _area(first)[:, None]
    return np.where(area > 0, _intersection(first, second) / np.where(area > 0, area, 1.0), 0.0)


def _intersection(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])  # [n, m, 2]
    bottom_right = np.minimum(first[:, None, 2:], second[None, :, 2:])  # [n, m, 2]
    sides = np.clip(bottom_right - top_left, 0.0, None)
    return sides[..., 0] * sides[..., 1]


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


_NO_OBJECTS = (np.zeros((0, 4)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))


def _objects_by_image(
    annotations: Sequence[Mapping[str, Any]], image_ids: set[int]
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """image id -> (boxes [g, 4] x0, y0, x1, y1, category ids [g], crowd [g] bool)."""
    grouped: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for annotation in annotations:
        if int(annotation["image_id"]) in image_ids:
            grouped[int(annotation["image_id"])].append(annotation)
    objects = {}
    for image_id, items in grouped.items():
        boxes = _xyxy(np.array([a["bbox"] for a in items], dtype=np.float64).reshape(-1, 4))
        classes = np.array([int(a["category_id"]) for a in items], dtype=np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in items], dtype=bool)
        objects[image_id] = (boxes, classes, crowd)
    return objects


__all__ = ["BACKGROUND", "ConfusionMatrix", "box_iou", "confusion_matrix", "match_detections"]
