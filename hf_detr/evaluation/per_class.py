"""Per-class AP, AP50 and AR@100 read from a COCO evaluation's accumulated arrays.

COCO's `accumulate` keeps, per category k, precision[t, r, k, a, m] (IoU threshold t of .50:.05:.95,
recall threshold r of 0:.01:1, area range a of all/small/medium/large, max detections m of 1/10/100)
and recall[t, k, a, m], with -1 where a category has no ground truth. The 12 summary stats are means
over these entries; a category's own AP is the same mean restricted to its slice (as detectron2's
per-category AP table reads it), so it equals the AP of an evaluation with `params.catIds = [k]`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)  # [T]
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)  # [R]
AREA_ALL, MAX_DETS_100 = 0, 2  # indices into the area ranges and maxDets of COCO's default params
PER_CLASS_STATS = ("AP", "AP50", "AR100")


def mean_valid(values: np.ndarray) -> float:
    """Mean of the entries > -1 (COCO's "defined" entries); -1 when there is none."""
    valid = values[values > -1]
    return -1.0 if valid.size == 0 else float(np.mean(valid))


def iou_index(iou: float) -> int:
    """The index of `iou` among COCO's IoU thresholds."""
    matches = np.where(np.isclose(IOU_THRESHOLDS, iou))[0]
    if len(matches) == 0:
        raise ValueError(f"IoU {iou} is not one of COCO's thresholds {IOU_THRESHOLDS.round(2).tolist()}.")
    return int(matches[0])


def per_class_stats(
    precision: np.ndarray,
    recall: np.ndarray,
    category_ids: Sequence[int],
    names: Mapping[int, str] | None = None,
    num_objects: Mapping[int, int] | None = None,
) -> list[dict[str, Any]]:
    """One row per category (in the order of the arrays' category axis): its id, name, number of
    ground-truth objects, AP@[.5:.95], AP50 and AR@100 (area all, 100 detections; -1 without ground
    truth).

    Args:
        precision: accumulated precision [T, R, K, A, M] of the K `category_ids`.
        recall: accumulated recall [T, K, A, M].
    """
    if precision.shape[2] != len(category_ids) or recall.shape[1] != len(category_ids):
        raise ValueError(
            f"The precision/recall arrays hold {precision.shape[2]} categories but {len(category_ids)} "
            "category ids were given."
        )
    names = names or {}
    num_objects = num_objects or {}
    at_50 = iou_index(0.5)
    rows = []
    for k, category in enumerate(category_ids):
        category_precision = precision[:, :, k, AREA_ALL, MAX_DETS_100]  # [T, R]
        rows.append(
            {
                "category_id": int(category),
                "name": str(names.get(int(category), category)),
                "num_objects": int(num_objects.get(int(category), 0)),
                "AP": mean_valid(category_precision),
                "AP50": mean_valid(category_precision[at_50]),
                "AR100": mean_valid(recall[:, k, AREA_ALL, MAX_DETS_100]),
            }
        )
    return rows


def precision_recall_curves(precision: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Interpolated precision at each of COCO's 101 recall points, per category: [R, K] at `iou`
    (area all, 100 detections; -1 columns for categories without ground truth)."""
    return precision[iou_index(iou), :, :, AREA_ALL, MAX_DETS_100]


def objects_per_category(
    annotations: Iterable[Mapping[str, Any]], image_ids: Iterable[int]
) -> dict[int, int]:
    """Number of non-crowd ground-truth objects per category id in the images `image_ids`."""
    images = set(image_ids)
    return dict(
        Counter(
            int(a["category_id"])
            for a in annotations
            if int(a["image_id"]) in images and not int(a.get("iscrowd", 0))
        )
    )


def format_per_class(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-class table as text: class, id, objects, AP, AP50, AR100 ("-" where undefined)."""
    width = max([len("class"), *(len(row["name"]) for row in rows)])
    width = min(width, 32)
    header = f" {'class':<{width}} {'id':>5} {'objects':>8} {'AP':>6} {'AP50':>6} {'AR100':>6}"
    lines = ["Per class (AP @[ IoU=0.50:0.95 ], AP50 @[ IoU=0.50 ], AR100; area=all, maxDets=100):", header]
    for row in rows:
        values = " ".join(f"{row[s]:>6.3f}" if row[s] > -1 else f"{'-':>6}" for s in PER_CLASS_STATS)
        lines.append(
            f" {row['name'][:width]:<{width}} {row['category_id']:>5} {row['num_objects']:>8} {values}"
        )
    return "\n".join(lines)


__all__ = [
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "format_per_class",
    "iou_index",
    "mean_valid",
    "objects_per_category",
    "per_class_stats",
    "precision_recall_curves",
]
