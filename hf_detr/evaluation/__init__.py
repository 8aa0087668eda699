"""COCO detection evaluation (the 12 standard AP/AR stats, fast with faster-coco-eval, distributed; per-class
AP/AP50/AR100, a confusion matrix and precision-recall curves) and panoptic quality (PQ/SQ/RQ, as
panopticapi)."""

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
from .coco_masks import (
    MaskEvaluator,
    encode_masks,
    encode_predictions,
    instance_predictions,
    mask_ground_truth_from_panoptic,
)
from .confusion import ConfusionMatrix, confusion_matrix
from .panoptic import PanopticEvaluator, evaluate_coco_panoptic, read_panoptic_annotation
from .per_class import format_per_class, per_class_stats
from .report import write_evaluation_report, write_metric_plots
from .trainer_metrics import CocoMetrics, load_coco_metric

__all__ = [
    "STAT_NAMES",
    "CocoEvaluator",
    "CocoMetrics",
    "ConfusionMatrix",
    "MaskEvaluator",
    "PanopticEvaluator",
    "coco_ground_truth",
    "confusion_matrix",
    "encode_masks",
    "encode_predictions",
    "evaluate_coco_panoptic",
    "evaluate_detections",
    "format_per_class",
    "format_stats",
    "instance_predictions",
    "label_to_category_mapping",
    "load_coco_metric",
    "mask_ground_truth_from_panoptic",
    "per_class_stats",
    "read_panoptic_annotation",
    "split_to_coco",
    "write_evaluation_report",
    "write_metric_plots",
]
