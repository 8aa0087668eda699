"""The files an evaluation leaves for people to read: eval_results.json (the 12 COCO stats and the
per-class table), confusion_matrix.json / .png and pr_curve.png."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .coco_evaluator import CocoEvaluator
from .per_class import precision_recall_curves
from .plots import draw_pr_curve

RESULTS_FILE = "eval_results.json"
CONFUSION_JSON, CONFUSION_PNG, PR_CURVE_PNG = "confusion_matrix.json", "confusion_matrix.png", "pr_curve.png"


def _computed(evaluator: CocoEvaluator) -> CocoEvaluator:
    if not isinstance(evaluator, CocoEvaluator):
        raise TypeError(f"Expected a CocoEvaluator with detections added, got {type(evaluator).__name__}.")
    if evaluator.stats is None:
        evaluator.compute()
    return evaluator


def write_metric_plots(
    evaluator: CocoEvaluator,
    directory: str | os.PathLike,
    names: Mapping[int, str] | None = None,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Write confusion_matrix.json, confusion_matrix.png and pr_curve.png into `directory`.

    The confusion matrix is taken at `score_threshold` and `iou_threshold` (see `confusion.py`); the
    precision-recall curves are COCO's at IoU 0.5 (area all, 100 detections), one line per class and
    their mean (whose area is AP50). `names`: category id -> name (default: the ground truth's).
    Returns {"confusion_matrix": its dict, "files": {kind: path}}.
    """
    evaluator = _computed(evaluator)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    matrix = evaluator.confusion_matrix(score_threshold, iou_threshold, names)
    files = {
        "confusion_matrix_json": matrix.save_json(directory / CONFUSION_JSON),
        "confusion_matrix_png": matrix.save_png(directory / CONFUSION_PNG),
    }
    curves = precision_recall_curves(evaluator.precision, 0.5)  # [R, K]
    title = f"Precision-recall at IoU 0.5 ({evaluator.num_images} images; legend: AP50)"
    draw_pr_curve(curves, matrix.names, title).save(directory / PR_CURVE_PNG)
    files["pr_curve_png"] = directory / PR_CURVE_PNG
    return {"confusion_matrix": matrix.to_dict(), "files": {kind: str(path) for kind, path in files.items()}}


def write_evaluation_report(
    evaluator: CocoEvaluator,
    output_dir: str | os.PathLike,
    names: Mapping[int, str] | None = None,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything an evaluation writes, into `output_dir`: eval_results.json, the confusion matrix
    (JSON and PNG) and the precision-recall curves (PNG). Computes the evaluator if needed.

    Args:
        evaluator: a `CocoEvaluator` holding the detections of the evaluation split.
        names: category id -> class name for the table and pictures (default: the ground truth's).
        score_threshold, iou_threshold: where the confusion matrix is taken.
        extra: more fields for eval_results.json (e.g. {"step": 1200, "epoch": 3}).

    Returns:
        The eval_results.json record: {**extra, "num_images", "stats" (the 12), "per_class" (rows of
        category_id, name, num_objects, AP, AP50, AR100), "confusion_matrix" (thresholds and file),
        "files"}.
    """
    evaluator = _computed(evaluator)
    output_dir = Path(output_dir)
    plots = write_metric_plots(evaluator, output_dir, names, score_threshold, iou_threshold)
    per_class = [
        {**row, "name": (names or {}).get(row["category_id"], row["name"])} for row in evaluator.per_class
    ]
    record = {
        **(extra or {}),
        "num_images": evaluator.num_images,
        "stats": dict(evaluator.stats),
        "per_class": per_class,
        "confusion_matrix": {
            "score_threshold": score_threshold,
            "iou_threshold": iou_threshold,
            "file": CONFUSION_JSON,
        },
        "files": {**plots["files"], "results_json": str(output_dir / RESULTS_FILE)},
    }
    (output_dir / RESULTS_FILE).write_text(json.dumps(record, indent=2))
    return record


__all__ = ["RESULTS_FILE", "write_evaluation_report", "write_metric_plots"]
