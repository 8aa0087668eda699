"""The two tasks, one object each: detection (boxes, COCO AP) and panoptic segmentation
(`HfDetrForSegmentation`: masks, PQ; paper section 4.4).

A task owns what differs between them: the dataset it loads (and its dataset class), the model class
of a trained model, the collators' keyword arguments (training and evaluation), the evaluator
factory and the evaluation loop, and the metrics. `hf-detr-evaluate` and the training run both take
their task from `task_for(name)`; training extends each with the model it trains
(hf_detr/training/tasks.py), since evaluation does not import training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from ..data import (
    DetectionCollator,
    DetectionDataset,
    PanopticDataset,
    category_ids,
    load_detection_dataset,
    load_panoptic_dataset,
    panoptic_categories,
)
from ..image_processing_detr import HfDetrImageProcessor
from ..modeling_detr import HfDetrForObjectDetection
from ..modeling_detr_segmentation import HfDetrForSegmentation
from .coco_evaluator import STAT_NAMES, CocoEvaluator, format_stats, label_to_category_mapping, split_to_coco
from .loop import InstanceMasks, evaluate_model, evaluate_panoptic_model
from .panoptic import PanopticEvaluator

DEFAULT_BACKEND = "faster_coco_eval"


class Task:
    """What a task does its own way; `DetectionTask` and `PanopticTask` are the two there are."""

    name: ClassVar[str]
    model_class: ClassVar[type]  # a trained model of the task (`load_model`)
    dataset_class: ClassVar[type]  # samples of a split (`DetectionDataset`, `PanopticDataset`)
    metric_names: ClassVar[tuple[str, ...]]  # what an evaluation reports; the first picks the best model
    streams: ClassVar[bool] = False  # reads streamed sources (--streaming)
    per_class_report: ClassVar[bool] = False  # per-class table, confusion matrix and PR curves (COCO's)
    settings: ClassVar[tuple[str, ...]]  # the settings of `evaluate` that apply (a record names them)

    def load_dataset(
        self, source: Any, split: Any, *, bbox_format: str = "xywh", streaming: bool = False,
        stuff_categories: list[str] | None = None,
    ) -> Any:  # fmt: skip
        """The DatasetDict of `source` in the task's schema (`split`: a name, names, or a chooser)."""
        raise NotImplementedError

    def load_model(self, name_or_path: Any, **kwargs: Any) -> Any:
        return self.model_class.from_pretrained(name_or_path, **kwargs)

    def dataset(self, split: Any, **kwargs: Any) -> Any:
        return self.dataset_class(split, **kwargs)

    def collator_kwargs(self, train: bool) -> dict[str, Any]:
        """`DetectionCollator`'s keyword arguments for training batches (augmented: not resized again)
        or evaluation batches."""
        raise NotImplementedError

    def collator(
        self, processor: HfDetrImageProcessor, train: bool, num_threads: int | None = None
    ) -> DetectionCollator:
        return DetectionCollator(processor, num_threads=num_threads, **self.collator_kwargs(train))

    def evaluator_factory(
        self, model_config: Any, split: Any, backend: str = DEFAULT_BACKEND
    ) -> Callable[[], Any]:
        """A new, empty evaluator per call, for `split` scored with a model of `model_config` (its
        classes matched to the split's categories by name, else by its `coco_category_ids`)."""
        raise NotImplementedError

    def evaluate(
        self, model: Any, loader: Any, evaluator: Any, accelerator: Any = None,
        processor: HfDetrImageProcessor | None = None, *, top_k: int | None = None, threshold: float = 0.85,
        mask_ap: bool = False,
    ) -> dict[str, Any] | None:  # fmt: skip
        """The evaluation loop: `model` over `loader` into `evaluator`; its results on the main process
        (None elsewhere). `top_k`: detection's pairs per image; `threshold`, `mask_ap`: panoptic's."""
        raise NotImplementedError

    def flat_stats(self, results: dict[str, Any]) -> dict[str, float]:
        """`evaluate`'s results as {metric: number} (the training log's form), `metric_names` first."""
        return results

    def summary(self, evaluator: Any, results: dict[str, Any]) -> str:
        """The evaluation as a table to print."""
        return evaluator.summary()


class DetectionTask(Task):
    name = "detection"
    model_class = HfDetrForObjectDetection
    dataset_class = DetectionDataset
    metric_names = tuple(STAT_NAMES)
    streams = True
    per_class_report = True
    settings = ("top_k", "backend")

    def load_dataset(self, source, split, *, bbox_format="xywh", streaming=False, stuff_categories=None):
        return load_detection_dataset(source, split=split, bbox_format=bbox_format, streaming=streaming)

    def collator_kwargs(self, train: bool) -> dict[str, Any]:
        return {"do_resize": False} if train else {}

    def evaluator_factory(self, model_config, split, backend=DEFAULT_BACKEND):
        ground_truth = split_to_coco(split)
        mapping = label_to_category_mapping(
            model_config.id2label, ground_truth["categories"], getattr(model_config, "coco_category_ids", None),
            annotated_category_ids={a["category_id"] for a in ground_truth["annotations"]},
        )  # fmt: skip
        return lambda: CocoEvaluator(ground_truth, mapping, backend=backend)

    def evaluate(self, model, loader, evaluator, accelerator=None, processor=None, *, top_k=None, threshold=0.85,
                 mask_ap=False):  # fmt: skip
        return evaluate_model(model, loader, evaluator, accelerator, processor, top_k)

    def summary(self, evaluator, results):
        return evaluator.summary(per_class=True)


class PanopticTask(Task):
    name = "panoptic"
    model_class = HfDetrForSegmentation
    dataset_class = PanopticDataset
    metric_names = tuple(name + part for part in ("", "_th", "_st") for name in ("PQ", "SQ", "RQ"))
    settings = ("threshold",)

    def load_dataset(self, source, split, *, bbox_format="xywh", streaming=False, stuff_categories=None):
        return load_panoptic_dataset(source, split=split, stuff_categories=stuff_categories or None)

    def collator_kwargs(self, train: bool) -> dict[str, Any]:
        if train:
            return {"do_resize": False, "format": "coco_panoptic"}
        # PQ reads the annotations' PNG ids at the original size: the labels need no resized masks
        return {"format": "coco_panoptic", "keep_annotations": True, "return_segmentation_masks": False}

    def evaluator_factory(self, model_config, split, backend=DEFAULT_BACKEND):
        categories = panoptic_categories(split, category_ids(split))
        mapping = label_to_category_mapping(
            model_config.id2label, categories, getattr(model_config, "coco_category_ids", None)
        )
        return lambda: PanopticEvaluator(categories, label_to_category_id=mapping)

    def evaluate(self, model, loader, evaluator, accelerator=None, processor=None, *, top_k=None, threshold=0.85,
                 mask_ap=False):  # fmt: skip
        """PQ by the official post-processing, the split's stuff classes fused (as the evaluator maps
        the model's labels to them); with `mask_ap`, the things' mask AP too."""
        categories = list(evaluator.categories.values())  # the split's, in label order
        stuff = {c["id"] for c in categories if not c["isthing"]}
        fuse = [label for label, category in evaluator.label_to_category_id.items() if category in stuff]
        masks = None
        if mask_ap and any(c["isthing"] for c in categories):
            masks = InstanceMasks(categories, evaluator.label_to_category_id)
        ids = [c["id"] for c in categories]
        return evaluate_panoptic_model(
            model, loader, evaluator, accelerator, processor, threshold, fuse, ids, mask_ap=masks
        )

    def flat_stats(self, results):
        """PQ, SQ, RQ (all), then PQ_th, SQ_th, RQ_th and PQ_st, SQ_st, RQ_st."""
        groups = {"": "All", "_th": "Things", "_st": "Stuff"}
        return {name: float(results[groups[name[2:]]][name[:2].lower()]) for name in self.metric_names}

    def summary(self, evaluator, results):
        text = evaluator.summary()
        if results.get("mask_AP") is not None:
            text += "\nMask AP (instance view of the things, COCO segm):\n" + format_stats(results["mask_AP"])
        return text


TASKS: dict[str, Task] = {task.name: task for task in (DetectionTask(), PanopticTask())}


def task_for(name: str) -> Task:
    """The task called `name` (detection, panoptic)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"Unknown task {name!r}; expected one of {', '.join(TASKS)}.") from None


__all__ = ["TASKS", "DetectionTask", "PanopticTask", "Task", "task_for"]
