"""COCO detection evaluation (the 12 standard AP/AR stats, fast with faster-coco-eval, distributed) and
panoptic quality (PQ/SQ/RQ, as panopticapi)."""

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
from .panoptic import PanopticEvaluator, evaluate_coco_panoptic, read_panoptic_annotation

__all__ = [
    "STAT_NAMES",
    "CocoEvaluator",
    "MaskEvaluator",
    "PanopticEvaluator",
    "coco_ground_truth",
    "encode_masks",
    "encode_predictions",
    "evaluate_coco_panoptic",
    "evaluate_detections",
    "format_stats",
    "instance_predictions",
    "label_to_category_mapping",
    "mask_ground_truth_from_panoptic",
    "read_panoptic_annotation",
    "split_to_coco",
]
