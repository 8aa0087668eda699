"""COCO detection evaluation: the 12 standard AP/AR stats, fast (faster-coco-eval) and distributed."""

from ..extras import require_extra

require_extra("hf_detr.evaluation (COCO evaluation, hf-detr-evaluate)")

from .coco_evaluator import (
    STAT_NAMES,
    CocoEvaluator,
    coco_ground_truth,
    evaluate_detections,
    format_stats,
    label_to_category_mapping,
    split_to_coco,
)

__all__ = [
    "STAT_NAMES",
    "CocoEvaluator",
    "coco_ground_truth",
    "evaluate_detections",
    "format_stats",
    "label_to_category_mapping",
    "split_to_coco",
]
