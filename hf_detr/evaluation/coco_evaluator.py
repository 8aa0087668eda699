"""COCO box AP: the 12 standard stats, computed with faster-coco-eval (pycocotools as the reference).

`CocoEvaluator` accumulates post-processed detections (absolute x0, y0, x1, y1 boxes of the original
images, as `HfDetrImageProcessor.post_process_object_detection` returns them) per image id, maps the
model's label ids to the ground truth's COCO category ids, and computes AP@[.5:.95], AP50, AP75,
APs/m/l and AR@1/10/100, ARs/m/l exactly as pycocotools does. As the paper evaluates: every query,
its best class, no score threshold (a `top_k` over (query, class) pairs is available).

The same evaluation's precision/recall arrays give the per-class AP / AP50 / AR@100 table
(`per_class`, see `per_class.py`), the precision-recall curves, and, from the kept detections, a
confusion matrix at a chosen score and IoU threshold (`confusion_matrix`, see `confusion.py`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .per_class import IOU_THRESHOLDS, format_per_class, mean_valid, objects_per_category, per_class_stats

logger = logging.getLogger("hf_detr.evaluation")

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
STAT_DESCRIPTIONS = (
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
)
BACKENDS = ("faster_coco_eval", "pycocotools")


def coco_ground_truth(source: str | os.PathLike | Mapping | Any) -> dict:
    """Ground truth as a COCO dict, from a json path, a COCO dict, or a split of the common schema."""
    if isinstance(source, (str, os.PathLike)):
        return json.loads(Path(source).read_text())
    if isinstance(source, Mapping):
        for key in ("images", "annotations", "categories"):
            if key not in source:
                raise ValueError(f"The ground truth dict has no {key!r}: expected a COCO instances dict.")
        return dict(source)
    return split_to_coco(source)


def split_to_coco(split: Any) -> dict:
    """A split of the common schema (hf_detr.data) as a COCO instances dict, in COCO category ids."""
    from ..data.schema import category_ids, class_names

    ids = category_ids(split)
    names = class_names(split)
    light = split.select_columns(["image_id", "width", "height", "objects"])
    images, annotations = [], []
    for record in light:
        images.append(
            {"id": int(record["image_id"]), "width": int(record["width"]), "height": int(record["height"])}
        )
        objects = record["objects"]
        for object_id, bbox, category, area, crowd in zip(
            objects["id"], objects["bbox"], objects["category"], objects["area"], objects["iscrowd"]
        ):
            annotations.append(
                {"id": len(annotations) + 1, "source_id": int(object_id), "image_id": int(record["image_id"]),
                 "bbox": [float(v) for v in bbox], "category_id": ids[category], "area": float(area),
                 "iscrowd": int(crowd)}
            )  # fmt: skip
    categories = [{"id": ids[i], "name": name} for i, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def label_to_category_mapping(
    id2label: Mapping[int, str],
    categories: Sequence[Mapping[str, Any]],
    coco_category_ids: Sequence[int] | None = None,
    annotated_category_ids: Iterable[int] | None = None,
) -> dict[int, int]:
    """Model label id -> ground-truth category id, matched by class name first.

    Only the categories with annotations must be found (`annotated_category_ids`; default: every
    category); names of the dataset without annotations are ignored.
    - When the class names of the two overlap, every annotated category must be one of the model's
      classes by name: the model's other classes are left out (one info line says how many) and
      their detections dropped. An annotated class the model lacks is a `ValueError` listing both sets.
    - When no name is shared (generic names such as "LABEL_0"): the model config's
      `coco_category_ids` if they cover every annotated category, else by position when the counts
      agree, else a `ValueError`.
    """
    annotated = _annotated_categories(categories, annotated_category_ids)
    model_names = {str(name) for name in id2label.values()}
    if model_names & {str(c["name"]) for c in annotated}:
        return _mapping_by_name(id2label, categories, annotated)
    known = {int(c["id"]) for c in categories}
    needed = {int(c["id"]) for c in annotated}
    if coco_category_ids is not None and needed <= {int(cid) for cid in coco_category_ids}:
        return {label: int(cid) for label, cid in enumerate(coco_category_ids) if int(cid) in known}
    if len(id2label) == len(categories):
        ordered = sorted(known)
        return {int(label): ordered[index] for index, label in enumerate(sorted(int(k) for k in id2label))}
    raise ValueError(
        f"Cannot match the model's {len(id2label)} classes to the dataset's {len(categories)}: no class "
        f"name is shared and the counts differ. The model's: {_names(id2label.values())}; the dataset's: "
        f"{_names(c['name'] for c in categories)}. Pass label_to_category_id= explicitly."
    )


def _annotated_categories(
    categories: Sequence[Mapping[str, Any]], annotated_category_ids: Iterable[int] | None
) -> list[Mapping[str, Any]]:
    if annotated_category_ids is None:
        return list(categories)
    annotated = {int(cid) for cid in annotated_category_ids}
    return [c for c in categories if int(c["id"]) in annotated]


def _mapping_by_name(
    id2label: Mapping[int, str], categories: Sequence[Mapping[str, Any]], annotated: list[Mapping[str, Any]]
) -> dict[int, int]:
    """Labels -> categories of the same name; a `ValueError` when an annotated category has no label."""
    model_names = {str(name) for name in id2label.values()}
    missing = sorted({str(c["name"]) for c in annotated} - model_names)
    if missing:
        raise ValueError(
            f"The dataset has classes the model does not predict: {_names(missing)}. The model's "
            f"{len(model_names)} classes: {_names(id2label.values())}; the dataset's annotated classes: "
            f"{_names(c['name'] for c in annotated)}. Evaluate a model trained on these classes, or a "
            "dataset split without them."
        )
    by_name = {str(c["name"]): int(c["id"]) for c in categories}
    mapping = {int(label): by_name[str(name)] for label, name in id2label.items() if str(name) in by_name}
    left_out = len(id2label) - len(mapping)
    if left_out:
        logger.info(
            "Evaluating %d of the model's %d classes (matched by name); its %d other classes are not in "
            "the dataset and their detections are dropped.", len(mapping), len(id2label), left_out,
        )  # fmt: skip
    return mapping


def _names(names: Iterable[Any], limit: int = 12) -> str:
    """A short, sorted list of class names for an error message."""
    unique = sorted({str(name) for name in names})
    shown = ", ".join(unique[:limit])
    return f"[{shown}{f', ... ({len(unique)} in all)' if len(unique) > limit else ''}]"


class CocoEvaluator:
    """Accumulates detections per image and computes the 12 COCO box stats.

    Args:
        ground_truth: a COCO instances json path, a COCO dict, or a split of the common schema.
        label_to_category_id: model label id -> COCO category id (a dict, or a list indexed by label);
            default: identity.
        backend: "faster_coco_eval" (default) or "pycocotools" (the reference implementation).
        num_workers: processes for large evaluations (faster_coco_eval backend; categories are split
            between forked workers). Default: 2 where it is safe (a CPU-only process on a machine with
            2+ cores), else 1.
    """

    def __init__(
        self,
        ground_truth: str | os.PathLike | Mapping | Any,
        label_to_category_id: Mapping[int, int] | Sequence[int] | None = None,
        backend: str = "faster_coco_eval",
        num_workers: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")
        self.backend = backend
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.ground_truth = coco_ground_truth(ground_truth)
        self.image_ids = {int(image["id"]) for image in self.ground_truth["images"]}
        self.category_ids = {int(c["id"]) for c in self.ground_truth["categories"]}
        self._category_of_label = category_table(label_to_category_id, self.category_ids)
        self._chunks: list[np.ndarray] = []  # [n, 7]: image_id, x, y, w, h, score, category_id
        self._evaluated: set[int] = set()
        self.stats: dict[str, float] | None = None
        # of the last compute(), categories in ascending id order
        self.precision: np.ndarray | None = None  # [T, R, K, A, M]
        self.recall: np.ndarray | None = None  # [T, K, A, M]
        self.per_class: list[dict[str, Any]] | None = None

    # ------------------------------------------------------------------------------------------------
    def update(
        self, image_ids: Sequence[int] | torch.Tensor, detections: Sequence[Mapping[str, Any]]
    ) -> None:
        """Add the detections of some images: one `{"scores", "labels", "boxes"}` per image id, boxes
        absolute (x0, y0, x1, y1) in the original image. An image with no detection still counts."""
        image_ids = checked_image_ids(
            image_ids, len(detections), self.image_ids, self._evaluated, "detection"
        )
        self._evaluated.update(image_ids)
        for image_id, detection in zip(image_ids, detections):
            boxes = _as_array(detection["boxes"], np.float64).reshape(-1, 4)
            if len(boxes) == 0:
                continue
            scores = _as_array(detection["scores"], np.float64).reshape(-1)
            labels = _as_array(detection["labels"], np.int64).reshape(-1)
            if not len(boxes) == len(scores) == len(labels):
                raise ValueError(f"Image {image_id}: boxes, scores and labels have different lengths.")
            categories = label_categories(self._category_of_label, labels, image_id)
            keep = categories >= 0
            chunk = np.empty((int(keep.sum()), 7))
            chunk[:, 0] = image_id
            chunk[:, 1:3] = boxes[keep, :2]
            chunk[:, 3:5] = boxes[keep, 2:] - boxes[keep, :2]
            chunk[:, 5] = scores[keep]
            chunk[:, 6] = categories[keep]
            self._chunks.append(chunk)

    def update_from_outputs(
        self,
        outputs: Any,
        image_ids: Sequence[int] | torch.Tensor,
        target_sizes: torch.Tensor | Sequence[Sequence[int]],
        processor: Any = None,
        top_k: int | None = None,
    ) -> None:
        """Post-process model outputs the paper's way (no threshold; optional `top_k`) and add them."""
        if processor is None:
            from ..image_processing_detr import HfDetrImageProcessor

            processor = HfDetrImageProcessor()
        detections = processor.post_process_object_detection(outputs, 0.0, target_sizes, top_k=top_k)
        self.update(image_ids, detections)

    @property
    def num_images(self) -> int:
        return len(self._evaluated)

    @property
    def evaluated_image_ids(self) -> list[int]:
        return sorted(self._evaluated)

    @property
    def detections(self) -> np.ndarray:
        """Every added detection as rows [n, 7]: image_id, x, y, w, h (absolute), score, category_id."""
        return np.concatenate(self._chunks) if self._chunks else np.zeros((0, 7))

    @property
    def sorted_category_ids(self) -> list[int]:
        return sorted(self.category_ids)

    def category_names(self) -> dict[int, str]:
        """COCO category id -> name, from the ground truth."""
        return {int(c["id"]): str(c.get("name", c["id"])) for c in self.ground_truth["categories"]}

    # ------------------------------------------------------------------------------------------------
    def compute(self) -> dict[str, float]:
        """The 12 COCO stats over the images added so far (each in [0, 1]; -1 where undefined)."""
        if not self._evaluated:
            raise ValueError(
                "No detections were added: call update() with at least one image before compute()."
            )
        results = self.detections
        ground_truth = self.ground_truth
        image_ids = self.evaluated_image_ids
        if self.backend == "faster_coco_eval":
            self.precision, self.recall = _evaluate_faster(ground_truth, results, image_ids, self.num_workers)
            stats = summarize(self.precision, self.recall)
        else:
            stats, self.precision, self.recall = _evaluate_pycocotools(ground_truth, results, image_ids)
        self.stats = dict(zip(STAT_NAMES, (float(s) for s in stats[:12])))
        self.per_class = per_class_stats(
            self.precision, self.recall, self.sorted_category_ids, self.category_names(),
            objects_per_category(ground_truth["annotations"], image_ids),
        )  # fmt: skip
        return self.stats

    def summary(self, per_class: bool = False) -> str:
        """The standard COCO table of the last `compute()`, then (`per_class`) the per-class table."""
        if self.stats is None:
            raise ValueError("compute() has not run yet.")
        text = format_stats(self.stats)
        return text + "\n" + format_per_class(self.per_class) if per_class else text

    def confusion_matrix(
        self, score_threshold: float = 0.5, iou_threshold: float = 0.5, names: Mapping[int, str] | None = None
    ) -> Any:
        """The `ConfusionMatrix` of the detections added so far (see `confusion.confusion_matrix`)."""
        from .confusion import confusion_matrix

        return confusion_matrix(
            self.ground_truth, self.detections, self.evaluated_image_ids, score_threshold, iou_threshold,
            names=names,
        )  # fmt: skip


def category_table(
    label_to_category_id: Mapping[int, int] | Sequence[int] | None, category_ids: Iterable[int]
) -> np.ndarray:
    """Model label id -> COCO category id as an array indexed by label, -1 for labels without a
    category (their predictions are dropped); the identity on `category_ids` by default."""
    if label_to_category_id is None:
        label_to_category_id = {cid: cid for cid in category_ids}
    if not isinstance(label_to_category_id, Mapping):
        label_to_category_id = dict(enumerate(label_to_category_id))
    largest = max(label_to_category_id, default=0)
    table = np.full(largest + 1, -1, dtype=np.int64)
    for label, category in label_to_category_id.items():
        table[int(label)] = int(category)
    return table


def label_categories(table: np.ndarray, labels: np.ndarray, image_id: int) -> np.ndarray:
    """The category of each predicted label (`category_table`), -1 for labels without one: classes of
    the model that the dataset lacks, whose detections are dropped."""
    if len(labels) and labels.min() < 0:
        raise ValueError(f"Image {image_id}: label {labels.min()} is negative; labels are class ids >= 0.")
    inside = labels < len(table)
    return np.where(inside, table[np.where(inside, labels, 0)], -1)


def checked_image_ids(
    image_ids: Sequence[int] | torch.Tensor,
    num_items: int,
    known: set[int],
    evaluated: set[int],
    kind: str = "prediction",
) -> list[int]:
    """`image_ids` as ints, checked: one per `kind` dict, all in the ground truth (`known`), none added
    before (`evaluated`) or twice."""
    image_ids = [int(i) for i in (image_ids.tolist() if isinstance(image_ids, torch.Tensor) else image_ids)]
    if len(image_ids) != num_items:
        raise ValueError(f"Got {len(image_ids)} image ids but {num_items} {kind} dicts.")
    unknown = sorted(set(image_ids) - known)
    if unknown:
        raise ValueError(
            f"Image id(s) {unknown[:10]} are not in the ground truth ({len(known)} images); "
            f"the {kind}s and the annotations do not belong together."
        )
    repeated = sorted(set(image_ids) & evaluated) or sorted(i for i, n in Counter(image_ids).items() if n > 1)
    if repeated:
        raise ValueError(
            f"Image id(s) {repeated[:10]} were added twice; each image must be evaluated once (in "
            "distributed evaluation, gather with accelerator.gather_for_metrics to drop sampler padding)."
        )
    return image_ids


def default_num_workers() -> int:
    """2 evaluation processes when forking is safe and useful: a POSIX system with 2+ cores and no
    CUDA context in this process (a forked child must not inherit one)."""
    if "fork" not in multiprocessing.get_all_start_methods() or (os.cpu_count() or 1) < 2:
        return 1
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return 1
    return 2


def format_stats(stats: Mapping[str, float]) -> str:
    return "\n".join(f" {text} = {stats[name]:0.3f}" for name, text in zip(STAT_NAMES, STAT_DESCRIPTIONS))


def _as_array(value: Any, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64 if dtype == np.float64 else torch.int64).numpy()
    return np.asarray(value, dtype=dtype)


def _result_annotations(results: np.ndarray) -> list[dict]:
    """[n, 7] rows -> COCO result annotations, in one pass over plain Python lists."""
    image_ids, xs, ys, ws, hs, scores, categories = (column.tolist() for column in results.T)
    return [
        {"id": index, "image_id": int(image_id), "bbox": [x, y, w, h], "area": w * h, "score": score,
         "category_id": int(category), "iscrowd": 0}
        for index, (image_id, x, y, w, h, score, category) in enumerate(
            zip(image_ids, xs, ys, ws, hs, scores, categories), start=1
        )
    ]  # fmt: skip


# Work shared with forked evaluation workers (inherited, not pickled): (ground truth, results, image ids)
_SHARED_WORK: tuple[dict, np.ndarray, list[int]] | None = None
# below this many detections a second process costs more than it saves
PARALLEL_MIN_DETECTIONS = 20_000


def _evaluate_faster(
    ground_truth: dict, results: np.ndarray, image_ids: list[int], workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accumulated precision [T, R, K, A, M] and recall [T, K, A, M] (categories in ascending id
    order) by faster-coco-eval, optionally over category groups in forked processes.

    COCO accumulates every category independently and the summary stats are means over
    (IoU, recall, category) entries, so evaluating disjoint category groups and joining their
    precision/recall arrays gives the same arrays and stats as one evaluation.
    """
    categories = sorted(int(c["id"]) for c in ground_truth["categories"])
    if workers <= 1 or len(results) < PARALLEL_MIN_DETECTIONS or len(categories) < 2:
        return _faster_arrays(ground_truth, results, image_ids, categories)
    groups = _balanced_category_groups(results, categories, workers)
    global _SHARED_WORK
    _SHARED_WORK = (ground_truth, results, image_ids)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=len(groups), mp_context=context) as pool:
            parts = list(pool.map(_faster_arrays_of_group, groups))
    finally:
        _SHARED_WORK = None
    order = np.argsort([category for group in groups for category in group])  # back to ascending ids
    precision = np.concatenate([p for p, _ in parts], axis=2)[:, :, order]  # [T, R, K, A, M]
    recall = np.concatenate([r for _, r in parts], axis=1)[:, order]  # [T, K, A, M]
    return precision, recall


def _balanced_category_groups(results: np.ndarray, categories: list[int], workers: int) -> list[list[int]]:
    """Split categories into groups with about the same number of detections each."""
    counts = dict(zip(*np.unique(results[:, 6].astype(np.int64), return_counts=True)))
    groups: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for category in sorted(categories, key=lambda c: -counts.get(c, 0)):
        lightest = loads.index(min(loads))
        groups[lightest].append(category)
        loads[lightest] += counts.get(category, 0) + 1
    return [sorted(g) for g in groups if g]


def _faster_arrays_of_group(categories: list[int]) -> tuple[np.ndarray, np.ndarray]:
    ground_truth, results, image_ids = _SHARED_WORK
    subset = results[np.isin(results[:, 6].astype(np.int64), categories)]
    return _faster_arrays(ground_truth, subset, image_ids, categories)


def _faster_arrays(
    ground_truth: dict, results: np.ndarray, image_ids: list[int], categories: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Accumulated precision [T, R, K, A, M] and recall [T, K, A, M] of `categories`."""
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO()
    gt.dataset = copy.copy(ground_truth)
    gt.createIndex()
    dt = COCO()
    dt.dataset = {
        "images": ground_truth["images"],
        "categories": ground_truth["categories"],
        "annotations": _result_annotations(results),
    }
    dt.createIndex()
    evaluator = COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *a, **k: None)
    evaluator.params.imgIds = image_ids
    evaluator.params.catIds = categories
    evaluator.evaluate()
    evaluator.accumulate()
    return evaluator.eval["precision"], evaluator.eval["recall"]


def summarize(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """The 12 stats of pycocotools' `COCOeval.summarize` from accumulated precision and recall
    (IoU thresholds .50:.05:.95; areas all, small, medium, large; maxDets 1, 10, 100)."""

    def ap(area: int, iou: float | None = None) -> float:
        values = precision[..., area, 2]
        return mean_valid(values if iou is None else values[np.where(iou == IOU_THRESHOLDS)[0]])

    def ar(area: int, max_dets: int) -> float:
        return mean_valid(recall[:, :, area, max_dets])

    return np.array(
        [
            ap(0),
            ap(0, 0.5),
            ap(0, 0.75),
            ap(1),
            ap(2),
            ap(3),
            ar(0, 0),
            ar(0, 1),
            ar(0, 2),
            ar(1, 2),
            ar(2, 2),
            ar(3, 2),
        ]
    )


def _evaluate_pycocotools(
    ground_truth: dict, results: np.ndarray, image_ids: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pycocotools' 12 stats, precision [T, R, K, A, M] and recall [T, K, A, M] (ascending ids)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        dt = gt.loadRes(_result_annotations(results)) if len(results) else _empty_results(gt)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats), evaluator.eval["precision"], evaluator.eval["recall"]


def _empty_results(gt: Any) -> Any:
    from pycocotools.coco import COCO

    dt = COCO()
    dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
    dt.createIndex()
    return dt


def evaluate_detections(
    ground_truth: Any, detections: Iterable[tuple[int, Mapping[str, Any]]], **kwargs: Any
) -> dict[str, float]:
    """One-shot helper: (image_id, detection dict) pairs -> the 12 stats."""
    evaluator = CocoEvaluator(ground_truth, **kwargs)
    pairs = list(detections)
    evaluator.update([i for i, _ in pairs], [d for _, d in pairs])
    return evaluator.compute()


__all__ = [
    "STAT_NAMES",
    "CocoEvaluator",
    "coco_ground_truth",
    "evaluate_detections",
    "format_stats",
    "label_categories",
    "label_to_category_mapping",
    "split_to_coco",
    "summarize",
]
