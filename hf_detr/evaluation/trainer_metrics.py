"""COCO box AP as a `compute_metrics` for transformers' `Trainer` (the object-detection task guide's
path), computed with hf_detr's `CocoEvaluator`: no torchmetrics, no pycocotools.

    compute_metrics = CocoMetrics(image_processor, id2label=model.config.id2label)
    trainer = Trainer(model=model, args=TrainingArguments(..., eval_do_concat_batches=False,
                      remove_unused_columns=False), data_collator=collate_fn,
                      compute_metrics=compute_metrics, ...)
    trainer.evaluate()  # {"eval_map": ..., "eval_map_50": ..., "eval_map_<class>": ..., ...}

The labels are the processor's (`class_labels`, normalized (cx, cy, w, h) `boxes`, `orig_size`,
`size`, `area`, `iscrowd`); the ground truth is rebuilt from them at the original image size. The
keys are those of the guide's torchmetrics `MeanAveragePrecision`, so `metric_for_best_model="map"`
works as there. `load_coco_metric()` gives the same evaluator as an `evaluate` metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .coco_evaluator import CocoEvaluator

# CocoEvaluator's stat names -> the guide's (torchmetrics MeanAveragePrecision) names
METRIC_NAMES = {
    "AP": "map", "AP50": "map_50", "AP75": "map_75", "APs": "map_small", "APm": "map_medium",
    "APl": "map_large", "AR1": "mar_1", "AR10": "mar_10", "AR100": "mar_100", "ARs": "mar_small",
    "ARm": "mar_medium", "ARl": "mar_large",
}  # fmt: skip


class CocoMetrics:
    """`Trainer(compute_metrics=CocoMetrics(processor, id2label))`: COCO box AP of the evaluation set.

    Args:
        image_processor: the processor that made the labels (its `post_process_object_detection`).
        id2label: the model's classes (names for the per-class keys); default: "0", "1", ...
        threshold: score threshold of the detections; 0 scores every query as the paper does.
        top_k: keep the best k (query, class) pairs per image instead of each query's best class.
        per_class: also return `map_<name>` and `mar_100_<name>` for each class.
    """

    def __init__(
        self,
        image_processor: Any,
        id2label: Mapping[int, str] | None = None,
        threshold: float = 0.0,
        top_k: int | None = None,
        per_class: bool = True,
    ) -> None:
        self.image_processor = image_processor
        self.id2label = {int(k): str(v) for k, v in (id2label or {}).items()}
        self.threshold, self.top_k, self.per_class = threshold, top_k, per_class

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        predictions, labels = _batches(eval_pred.predictions), _batches(eval_pred.label_ids)
        images, annotations, detections = [], [], []
        for batch_outputs, batch_labels in zip(predictions, labels):
            logits, boxes = logits_and_boxes(batch_outputs)  # [B, N, K+1], [B, N, 4]
            sizes = [[int(v) for v in np.asarray(label["orig_size"])] for label in batch_labels]
            detections += self.image_processor.post_process_object_detection(
                {"logits": logits, "pred_boxes": boxes}, self.threshold, sizes, self.top_k
            )
            for label in batch_labels:
                image_id = len(images) + 1
                images.append(_image_entry(image_id, label))
                annotations += _annotations(image_id, label, first_id=len(annotations) + 1)
        if len(detections) != len(images):
            raise ValueError(
                f"compute_metrics got {len(detections)} predictions for {len(images)} labelled images: "
                "set eval_do_concat_batches=False in TrainingArguments, as the object-detection guide does."
            )
        evaluator = CocoEvaluator(
            {"images": images, "annotations": annotations, "categories": self._categories(annotations)}
        )
        evaluator.update([image["id"] for image in images], detections)
        return self._named(evaluator.compute(), evaluator.per_class or [])

    def _categories(self, annotations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = sorted(set(self.id2label) | {a["category_id"] for a in annotations})
        return [{"id": i, "name": self.id2label.get(i, str(i))} for i in ids]

    def _named(self, stats: Mapping[str, float], per_class: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        metrics = {METRIC_NAMES[name]: float(value) for name, value in stats.items() if name in METRIC_NAMES}
        if self.per_class:
            for row in per_class:
                if row["num_objects"] > 0:
                    metrics[f"map_{row['name']}"] = float(row["AP"])
                    metrics[f"mar_100_{row['name']}"] = float(row["AR100"])
        return metrics


def logits_and_boxes(outputs: Any) -> tuple[np.ndarray, np.ndarray]:
    """A batch's class logits [B, N, K+1] and boxes [B, N, 4] from what `Trainer` collects: the
    model's outputs without the loss, in field order (loss_dict, logits, pred_boxes, ...): the first
    two arrays."""
    if isinstance(outputs, Mapping):
        return np.asarray(outputs["logits"]), np.asarray(outputs["pred_boxes"])
    arrays = [np.asarray(x) for x in outputs if isinstance(x, np.ndarray) or hasattr(x, "__array__")]
    if len(arrays) < 2 or arrays[0].ndim != 3 or arrays[1].shape[-1:] != (4,):
        raise ValueError(
            "compute_metrics could not find the logits and pred_boxes among the predictions: pass the "
            "model's outputs (Trainer does), with eval_do_concat_batches=False."
        )
    return arrays[0], arrays[1]


def _batches(values: Any) -> list[Any]:
    """Trainer's per-batch lists (eval_do_concat_batches=False), or one batch."""
    if isinstance(values, list) and values and isinstance(values[0], (tuple, list)):
        return values
    return [values]


def _image_entry(image_id: int, label: Mapping[str, Any]) -> dict[str, Any]:
    height, width = (int(v) for v in np.asarray(label["orig_size"]))
    return {"id": image_id, "height": height, "width": width}


def _annotations(image_id: int, label: Mapping[str, Any], first_id: int) -> list[dict[str, Any]]:
    """The labels of one image as COCO ground truth at its original size: the boxes are normalized
    by the unpadded resized size, so the original size scales them back; areas by the size ratio."""
    height, width = (float(v) for v in np.asarray(label["orig_size"]))
    resized = np.asarray(label.get("size", label["orig_size"]), dtype=np.float64)
    boxes = np.asarray(label["boxes"], dtype=np.float64).reshape(-1, 4) * [width, height, width, height]
    corner = boxes[:, :2] - boxes[:, 2:] / 2  # [n, 2] x0, y0
    classes = np.asarray(label["class_labels"]).reshape(-1)
    crowd = np.asarray(label.get("iscrowd", np.zeros(len(classes)))).reshape(-1)
    area_scale = height * width / float(resized[0] * resized[1])
    areas = np.asarray(label.get("area", boxes[:, 2] * boxes[:, 3] / area_scale)).reshape(-1) * area_scale
    return [
        {"id": first_id + i, "image_id": image_id, "category_id": int(classes[i]), "iscrowd": int(crowd[i]),
         "bbox": [*corner[i].tolist(), *boxes[i, 2:].tolist()], "area": float(areas[i])}
        for i in range(len(classes))
    ]  # fmt: skip


def load_coco_metric(**kwargs: Any) -> Any:
    """hf_detr's COCO box AP as an `evaluate` metric (`evaluation/coco_detection.py`; `evaluate.load`
    reads metrics by name from the Hub or by file path, and this one ships inside the package):
    `add_batch(predictions=[{"image_id", "boxes" (x0, y0, x1, y1), "scores", "labels"}],
    references=[{"image_id", "width", "height", "boxes" (x, y, w, h), "labels", "iscrowd", "area"}])`,
    then `compute()` gives AP, AP50, ..., ARl. `kwargs` go to `evaluate.load`."""
    import evaluate

    return evaluate.load(str(Path(__file__).with_name("coco_detection.py")), **kwargs)


__all__ = ["METRIC_NAMES", "CocoMetrics", "load_coco_metric", "logits_and_boxes"]
