"""Test helper: random panoptic images and a plain, loop-by-loop transcription of panopticapi's PQ (cocodataset/panopticapi,
panopticapi/evaluation.py: `pq_compute_single_core` and `PQStat.pq_average`), on in-memory id maps.

It is deliberately unoptimised and written to follow the reference statement by statement, so that
`hf_detr.evaluation.PanopticEvaluator` (vectorised) can be checked against it. Used by
tests/test_panoptic_evaluation.py and benchmarks/bench_panoptic_eval.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

VOID = 0
OFFSET = 256 * 256 * 256
CATEGORIES = [{"id": c, "name": f"c{c}", "isthing": int(c < 20)} for c in (1, 3, 7, 12, 21, 30, 44)]
THINGS = [c["id"] for c in CATEGORIES if c["isthing"]]


def random_image(rng: np.random.Generator, height: int = 24, width: int = 32, segments: int = 4) -> dict:
    """A gt map of random rectangles over void (0 to 2x `segments` of them, large ids, some crowd, one
    unlisted id) and a prediction derived from it: relabelled, partly moved, wrong classes, extras."""
    gt = np.zeros((height, width), np.int64)
    count = int(rng.choice([0, segments // 2, segments, 3 * segments // 2, 2 * segments]))
    ids = rng.choice(np.arange(1, 2**24), size=count + 1, replace=False)
    for segment_id in ids:
        y, x = rng.integers(0, height - height // 6), rng.integers(0, width - width // 8)
        gt[
            y : y + rng.integers(height // 6, height * 7 // 12),
            x : x + rng.integers(width // 8, width * 9 // 16),
        ] = segment_id
    categories = rng.choice([c["id"] for c in CATEGORIES], size=count)
    crowd = rng.random(count) < 0.2
    crowd_category = rng.choice(THINGS)  # two crowd segments of one category: the last one counts
    categories[crowd & (rng.random(count) < 0.5)] = crowd_category
    gt_segments = [
        {"id": int(i), "category_id": int(c), "iscrowd": int(k), "area": int((gt == i).sum())}
        for i, c, k in zip(ids[:count], categories, crowd)
    ]  # ids[count] stays in the map unlisted: neither void nor a segment
    return {"gt": gt, "gt_segments": gt_segments, **_prediction_from(rng, gt, gt_segments)}


def _prediction_from(rng: np.random.Generator, gt: np.ndarray, gt_segments: list[dict]) -> dict:
    height, width = gt.shape
    pred = np.zeros_like(gt)
    category_of = {}
    for new_id, segment in enumerate(gt_segments, start=1):
        if rng.random() < 0.85:
            mask = gt == segment["id"]
            if rng.random() < 0.5:  # moved by a few pixels, partly onto void: IoU near 0.5
                mask = np.roll(
                    mask, tuple(rng.integers(-(height // 8), height // 8 + 1, size=2)), axis=(0, 1)
                )
            pred[mask] = new_id
            wrong = rng.random() < 0.15
            category_of[new_id] = int(rng.choice(THINGS)) if wrong else segment["category_id"]
    extras = int(rng.integers(0, max(4, len(gt_segments) // 2)))
    for extra in range(len(gt_segments) + 1, len(gt_segments) + 1 + extras):
        y, x = rng.integers(0, height - height // 8), rng.integers(0, width - width // 10)
        box = (
            slice(y, y + rng.integers(height // 8, height // 2)),
            slice(x, x + rng.integers(width // 10, width * 3 // 8)),
        )
        pred[box] = extra if rng.random() < 0.8 else 0
        category_of[extra] = int(rng.choice([c["id"] for c in CATEGORIES]))
    present = set(np.unique(pred).tolist()) - {0}
    segments = [{"id": i, "category_id": c} for i, c in category_of.items() if i in present]
    if rng.random() < 0.1:  # no prediction at all
        pred[:], segments = 0, []
    return {"pred": pred, "pred_segments": segments}


class CategoryStat:
    def __init__(self) -> None:
        self.iou, self.tp, self.fp, self.fn = 0.0, 0, 0, 0


def reference_image_stats(
    gt_ids: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_ids: np.ndarray,
    pred_segments: Sequence[Mapping[str, Any]],
    categories: Mapping[int, Mapping[str, Any]],
    stats: dict[int, CategoryStat] | None = None,
) -> dict[int, CategoryStat]:
    """One image of `pq_compute_single_core`; gt segments need "area" (as in the COCO json)."""
    stats = defaultdict(CategoryStat) if stats is None else stats
    gt_segms = {int(s["id"]): dict(s) for s in gt_segments}
    pred_segms = {int(s["id"]): dict(s) for s in pred_segments}

    # predicted segments area calculation + prediction sanity checks
    pred_labels_set = set(pred_segms)
    labels, labels_cnt = np.unique(pred_ids, return_counts=True)
    for label, label_cnt in zip(labels.tolist(), labels_cnt.tolist()):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(f"segment {label} is in the map and not in segments_info")
        pred_segms[label]["area"] = label_cnt
        pred_labels_set.remove(label)
        if pred_segms[label]["category_id"] not in categories:
            raise KeyError(f"segment {label} has an unknown category")
    if pred_labels_set:
        raise KeyError(f"segments {sorted(pred_labels_set)} are in segments_info and not in the map")

    # confusion matrix
    combined = gt_ids.astype(np.uint64) * OFFSET + pred_ids.astype(np.uint64)
    gt_pred_map = {}
    labels, labels_cnt = np.unique(combined, return_counts=True)
    for label, intersection in zip(labels.tolist(), labels_cnt.tolist()):
        gt_pred_map[(label // OFFSET, label % OFFSET)] = intersection

    # matched pairs
    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), intersection in gt_pred_map.items():
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        if gt_segms[gt_label]["iscrowd"] == 1:
            continue
        if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
            continue
        union = (
            pred_segms[pred_label]["area"]
            + gt_segms[gt_label]["area"]
            - intersection
            - gt_pred_map.get((VOID, pred_label), 0)
        )
        iou = intersection / union
        if iou > 0.5:
            stats[gt_segms[gt_label]["category_id"]].tp += 1
            stats[gt_segms[gt_label]["category_id"]].iou += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    # false negatives; crowd segments are ignored (the last one of a category is remembered)
    crowd_labels = {}
    for gt_label, gt_info in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt_info["iscrowd"] == 1:
            crowd_labels[gt_info["category_id"]] = gt_label
            continue
        stats[gt_info["category_id"]].fn += 1

    # false positives, unless more than half of the segment lies on void or a same-class crowd
    for pred_label, pred_info in pred_segms.items():
        if pred_label in pred_matched:
            continue
        intersection = gt_pred_map.get((VOID, pred_label), 0)
        if pred_info["category_id"] in crowd_labels:
            intersection += gt_pred_map.get((crowd_labels[pred_info["category_id"]], pred_label), 0)
        if intersection / pred_info["area"] > 0.5:
            continue
        stats[pred_info["category_id"]].fp += 1
    return stats


def reference_average(
    stats: Mapping[int, CategoryStat], categories: Mapping[int, Mapping[str, Any]], isthing: bool | None
) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """`PQStat.pq_average`; raises ZeroDivisionError when no class counts (as the reference does)."""
    pq, sq, rq, n = 0.0, 0.0, 0.0, 0
    per_class = {}
    for label, info in categories.items():
        if isthing is not None and isthing != (info["isthing"] == 1):
            continue
        stat = stats.get(label, CategoryStat())
        iou, tp, fp, fn = stat.iou, stat.tp, stat.fp, stat.fn
        if tp + fp + fn == 0:
            per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        pq_class = iou / (tp + 0.5 * fp + 0.5 * fn)
        sq_class = iou / tp if tp != 0 else 0
        rq_class = tp / (tp + 0.5 * fp + 0.5 * fn)
        per_class[label] = {"pq": pq_class, "sq": sq_class, "rq": rq_class}
        pq, sq, rq = pq + pq_class, sq + sq_class, rq + rq_class
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def reference_pq(
    images: Iterable[tuple[np.ndarray, Sequence[Mapping], np.ndarray, Sequence[Mapping]]],
    categories: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """`pq_compute` over (gt ids, gt segments, pred ids, pred segments) tuples, as panopticapi returns it."""
    by_id = {int(c["id"]): c for c in categories}
    stats: dict[int, CategoryStat] = defaultdict(CategoryStat)
    for gt_ids, gt_segments, pred_ids, pred_segments in images:
        reference_image_stats(gt_ids, gt_segments, pred_ids, pred_segments, by_id, stats)
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = reference_average(stats, by_id, isthing)
        if name == "All":
            results["per_class"] = per_class
    return results
