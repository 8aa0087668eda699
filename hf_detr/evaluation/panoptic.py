"""Panoptic quality (PQ, SQ, RQ; Kirillov et al. 2019), as DETR reports it for panoptic segmentation
(paper, Sec. 4.4), computed exactly as panopticapi's `pq_compute` (cocodataset/panopticapi,
`pq_compute_single_core` and `PQStat.pq_average`), vectorised per image with numpy.

The rules of the reference: a predicted and a ground-truth segment of the same category match when
their IoU > 0.5, where the union leaves out the prediction's pixels on VOID (gt id 0); crowd gt
segments (iscrowd=1) are neither TP nor FN; an unmatched prediction is not a FP when more than half
of it lies on VOID plus the (last listed) crowd segment of its category; classes with no TP, FP or FN
are left out of the averages (`n` counts the others). The area of a gt segment is its "area" in
segments_info when given (as panopticapi reads it from the json), else its pixel count.

`PanopticEvaluator.update` takes per image a ground truth `{"segmentation": ids [H, W] (or RGB
[H, W, 3], id = R + 256 G + 256^2 B), "segments_info": [{"id", "category_id", "iscrowd"?, "area"?}]}`
and a prediction in the same form or as `post_process_panoptic_segmentation` returns it
(`{"segmentation", "segments_info": [{"id", "label_id", ...}]}`, ids 0 or -1 meaning no segment, the
model's label ids mapped to category ids by `label_to_category_id`). Each process can evaluate its
shard and `synchronize()` the per-image statistics, or the main process can evaluate gathered items.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.panoptic_ids import id_map

VOID = 0
# columns of the per-image statistics rows
IMAGE, CATEGORY, TP, FP, FN, IOU = range(6)
NO_CATEGORY = -1  # the marker row every evaluated image has, so images without statistics count too
GROUPS = (("All", None), ("Things", True), ("Stuff", False))


class PanopticEvaluator:
    """Accumulates PQ statistics per image and computes PQ, SQ and RQ for all, things, stuff and classes.

    Args:
        categories: the panoptic categories (`[{"id", "name", "isthing"}]`), a COCO panoptic dict or
            json path that has them.
        label_to_category_id: model label id -> category id (a dict, or a list indexed by label), for
            predictions whose segments carry "label_id"; default: identity.
    """

    def __init__(
        self,
        categories: Sequence[Mapping[str, Any]] | Mapping[str, Any] | str | os.PathLike,
        label_to_category_id: Mapping[int, int] | Sequence[int] | None = None,
    ) -> None:
        self.categories = _panoptic_categories(categories)
        self.category_ids = np.array(sorted(self.categories), dtype=np.int64)  # [C]
        if label_to_category_id is None:
            label_to_category_id = {cid: cid for cid in self.categories}
        elif not isinstance(label_to_category_id, Mapping):
            label_to_category_id = dict(enumerate(label_to_category_id))
        self.label_to_category_id = {int(k): int(v) for k, v in label_to_category_id.items()}
        # image id -> its statistics rows [m, 6] float64: image, category, tp, fp, fn, iou sum
        self._rows: dict[int, np.ndarray] = {}
        self.results: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------------
    def update(
        self,
        image_ids: Sequence[int] | torch.Tensor,
        predictions: Sequence[Mapping[str, Any]],
        ground_truths: Sequence[Mapping[str, Any]],
    ) -> None:
        """Add some images: one prediction and one ground truth dict per image id (see the module doc)."""
        image_ids = [
            int(i) for i in (image_ids.tolist() if isinstance(image_ids, torch.Tensor) else image_ids)
        ]
        if not len(image_ids) == len(predictions) == len(ground_truths):
            raise ValueError(
                f"Got {len(image_ids)} image ids, {len(predictions)} predictions and {len(ground_truths)} "
                "ground truths; expected one of each per image."
            )
        repeated = sorted(set(image_ids) & self._rows.keys()) or sorted(
            i for i, n in Counter(image_ids).items() if n > 1
        )
        if repeated:
            raise ValueError(
                f"Image id(s) {repeated[:10]} were added twice; each image must be evaluated once (in "
                "distributed evaluation, gather with accelerator.gather_for_metrics or use synchronize())."
            )
        for image_id, prediction, ground_truth in zip(image_ids, predictions, ground_truths):
            stats = self.image_statistics(prediction, ground_truth, image_id)  # [C, 4]
            present = np.flatnonzero(stats.any(1))
            rows = np.zeros((len(present) + 1, 6))
            rows[:, IMAGE] = image_id
            rows[0, CATEGORY] = NO_CATEGORY
            rows[1:, CATEGORY] = self.category_ids[present]
            rows[1:, TP:] = stats[present]
            self._rows[image_id] = rows

    def image_statistics(
        self, prediction: Mapping[str, Any], ground_truth: Mapping[str, Any], image_id: int | None = None
    ) -> np.ndarray:
        """TP, FP, FN and the sum of matched IoUs of one image per category: [C, 4] (sorted ids)."""
        where = "" if image_id is None else f"image {image_id}: "
        gt_map = id_map(_segmentation(ground_truth, f"{where}ground truth"), f"{where}ground truth")
        pred_map = id_map(_segmentation(prediction, f"{where}prediction"), f"{where}prediction")
        if gt_map.shape != pred_map.shape:
            raise ValueError(
                f"{where}the ground truth map is {gt_map.shape[0]}x{gt_map.shape[1]} (HxW) but the "
                f"prediction map is {pred_map.shape[0]}x{pred_map.shape[1]}; predict at the original size."
            )
        if gt_map.size == 0:
            raise ValueError(f"{where}the segmentation maps have no pixels ({gt_map.shape}).")
        if gt_map.min() < 0:
            raise ValueError(f"{where}ground truth segment ids must be >= 0 (0 = void), got {gt_map.min()}.")
        pred_map = np.where(pred_map < 0, VOID, pred_map)  # -1 = no segment, as 0
        gt = _ground_truth_segments(ground_truth, self._category_index, where)
        pred = _predicted_segments(prediction, self._category_index, self.label_to_category_id, where)
        return _match(gt_map, gt, pred_map, pred, len(self.category_ids), where)

    def _category_index(self, category_ids: np.ndarray, where: str) -> np.ndarray:
        """Category ids [S] -> indices into `category_ids` [S]; unknown ids are a ValueError."""
        index = np.searchsorted(self.category_ids, category_ids).clip(max=len(self.category_ids) - 1)
        unknown = self.category_ids[index] != category_ids
        if unknown.any():
            raise ValueError(
                f"{where}category_id {int(category_ids[unknown][0])} is not one of the "
                f"{len(self.category_ids)} panoptic categories."
            )
        return index

    @property
    def num_images(self) -> int:
        return len(self._rows)

    # ------------------------------------------------------------------------------------------------
    def state(self) -> np.ndarray:
        """The per-image statistics rows so far: [m, 6] float64 (image, category, tp, fp, fn, iou sum)."""
        return np.concatenate(list(self._rows.values())) if self._rows else np.zeros((0, 6))

    def merge(self, states: Iterable[np.ndarray]) -> None:
        """Add the rows of other evaluators (`state()`). An image that is already here with the very same
        rows is skipped (the distributed sampler's padding repeats images); with other rows, an error."""
        for state in states:
            state = np.asarray(state, dtype=np.float64).reshape(-1, 6)
            for image_id, rows in _rows_by_image(state):
                if image_id not in self._rows:
                    self._rows[image_id] = rows
                elif not np.array_equal(rows, self._rows[image_id]):
                    raise ValueError(f"Image {image_id} was evaluated twice with different results.")

    def synchronize(self) -> PanopticEvaluator:
        """Gather every process's statistics into every process (torch.distributed, as Accelerate
        sets it up); a no-op on one process. Afterwards `compute()` gives the same result everywhere."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            own = self.state()
            gathered = _all_gather_rows(own)
            self._rows = {}
            self.merge([own, *gathered])
        return self

    # ------------------------------------------------------------------------------------------------
    def compute(self) -> dict[str, Any]:
        """`{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id: {"pq", "sq",
        "rq", "tp", "fp", "fn"}}}` as panopticapi's `pq_compute` returns it (values in [0, 1]; a group
        with n = 0, where panopticapi divides by zero, gets -1)."""
        if not self._rows:
            raise ValueError("No images were added: call update() with at least one image before compute().")
        totals = self._totals()  # [C, 4]
        tp, fp, fn, iou = totals.T
        counted = tp + fp + fn > 0  # [C]
        denominator = np.where(counted, tp + 0.5 * fp + 0.5 * fn, 1.0)
        pq = np.where(counted, iou / denominator, 0.0)
        sq = np.where(tp > 0, iou / np.where(tp > 0, tp, 1.0), 0.0)
        rq = np.where(counted, tp / denominator, 0.0)
        isthing = np.array([self.categories[int(c)]["isthing"] == 1 for c in self.category_ids])
        results: dict[str, Any] = {}
        for name, things in GROUPS:
            group = counted & (isthing == things if things is not None else True)
            n = int(group.sum())
            results[name] = {
                key: float(values[group].sum() / n) if n else -1.0
                for key, values in (("pq", pq), ("sq", sq), ("rq", rq))
            } | {"n": n}
        results["per_class"] = {
            int(c): {"pq": float(pq[i]), "sq": float(sq[i]), "rq": float(rq[i]),
                     "tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i])}
            for i, c in enumerate(self.category_ids)
        }  # fmt: skip
        self.results = results
        return results

    def _totals(self) -> np.ndarray:
        """TP, FP, FN and IoU sums per category over all images: [C, 4]."""
        state = self.state()
        rows = state[state[:, CATEGORY] != NO_CATEGORY]
        index = np.searchsorted(self.category_ids, rows[:, CATEGORY].astype(np.int64))
        totals = np.zeros((len(self.category_ids), 4))
        np.add.at(totals, index, rows[:, TP:])
        return totals

    def summary(self) -> str:
        """panopticapi's table (x100) of the last `compute()`."""
        if self.results is None:
            raise ValueError("compute() has not run yet.")
        lines = [f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s}  {'N':>5s}", "-" * 41]
        for name, _ in GROUPS:
            r = self.results[name]
            lines.append(
                f"{name:10s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f}  {r['n']:5d}"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------
def _panoptic_categories(source: Any) -> dict[int, dict[str, Any]]:
    """Category id -> category dict, each with an "isthing"."""
    if isinstance(source, (str, os.PathLike)):
        source = json.loads(Path(source).read_text())
    if isinstance(source, Mapping):
        if "categories" not in source:
            raise ValueError("`categories` is a dict without 'categories': expected a COCO panoptic dict.")
        source = source["categories"]
    categories = {}
    for category in source:
        if not isinstance(category, Mapping) or "id" not in category or "isthing" not in category:
            raise ValueError(
                f"`categories` entries must be dicts with 'id' and 'isthing' (PQ splits things and stuff), "
                f"got {category!r}."
            )
        categories[int(category["id"])] = dict(category)
    if not categories:
        raise ValueError("`categories` is empty: PQ needs the panoptic categories.")
    return categories


def _segmentation(item: Mapping[str, Any], name: str) -> Any:
    """The id map of a `{"segmentation", "segments_info"}` dict."""
    if not isinstance(item, Mapping) or "segmentation" not in item or "segments_info" not in item:
        raise ValueError(
            f"{name}: expected a dict with 'segmentation' and 'segments_info', got "
            f"{sorted(item) if isinstance(item, Mapping) else type(item).__name__}."
        )
    return item["segmentation"]


def _ground_truth_segments(
    ground_truth: Mapping[str, Any], category_index: Any, where: str
) -> dict[str, np.ndarray]:
    """ids, category indices, crowd flags and areas (NaN = count the pixels) of the gt segments [S]."""
    segments = ground_truth["segments_info"]
    try:
        ids = np.array([int(s["id"]) for s in segments], dtype=np.int64)
        categories = np.array([int(s["category_id"]) for s in segments], dtype=np.int64)
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{where}ground truth segments_info entries need 'id' and 'category_id': {error!r}"
        ) from None
    if len(np.unique(ids)) != len(ids) or (ids <= VOID).any():
        raise ValueError(f"{where}ground truth segment ids must be unique and positive, got {ids.tolist()}.")
    return {
        "ids": ids,
        "category": category_index(categories, f"{where}ground truth: "),
        "crowd": np.array([int(s.get("iscrowd", 0)) == 1 for s in segments], dtype=bool),
        "area": np.array([float(s["area"]) if "area" in s else np.nan for s in segments], dtype=np.float64),
    }


def _predicted_segments(
    prediction: Mapping[str, Any], category_index: Any, label_to_category_id: Mapping[int, int], where: str
) -> dict[str, np.ndarray]:
    """ids and category indices of the predicted segments [S], from "category_id" or mapped "label_id".
    A fused segment listed once per query (post-processing's `was_fused`) is kept once."""
    segments: dict[int, int] = {}
    for segment in prediction["segments_info"]:
        if "category_id" in segment:
            category = int(segment["category_id"])
        elif "label_id" in segment:
            label = int(segment["label_id"])
            if label not in label_to_category_id:
                raise ValueError(f"{where}predicted label_id {label} has no category (label_to_category_id).")
            category = label_to_category_id[label]
        else:
            raise ValueError(
                f"{where}predicted segments need 'category_id' or 'label_id', got {dict(segment)}."
            )
        segment_id = int(segment["id"])
        if segment_id <= VOID or segments.get(segment_id, category) != category:
            raise ValueError(
                f"{where}predicted segment id {segment_id} is not positive or has two categories."
            )
        segments[segment_id] = category
    ids = np.array(list(segments), dtype=np.int64)
    categories = np.array(list(segments.values()), dtype=np.int64)
    return {"ids": ids, "category": category_index(categories, f"{where}prediction: ")}


# ---------------------------------------------------------------------------------------------------
# One image (pq_compute_single_core, vectorised)
# ---------------------------------------------------------------------------------------------------
def _pixel_index(ids_map: np.ndarray, segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's bucket [H*W]: 0 = void, 1..S = the listed ids in increasing order, S + 1 = an id
    not listed; and the bucket of each listed segment, in listed order [S]. A lookup table for small ids (post-processing's),
    else a binary search over the few listed ids; no sort of the pixels, as `np.unique` would do."""
    order = np.argsort(segment_ids)
    keys = np.concatenate([[VOID], segment_ids[order]])  # [1 + S], sorted: ids are positive
    flat = ids_map.ravel()
    largest = int(flat.max())
    if largest <= 4 * flat.size:
        table = np.full(max(largest, int(keys[-1])) + 1, len(keys), dtype=np.int64)
        table[keys] = np.arange(len(keys))
        bucket = table[flat]  # [H*W]
    else:
        position = np.searchsorted(keys, flat).clip(max=len(keys) - 1)
        bucket = np.where(keys[position] == flat, position, len(keys))  # [H*W]
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return bucket, rank


def _match(
    gt_map: np.ndarray, gt: dict[str, np.ndarray], pred_map: np.ndarray, pred: dict[str, np.ndarray],
    num_categories: int, where: str,
) -> np.ndarray:  # fmt: skip
    """TP, FP, FN, IoU sum per category [C, 4] of one image."""
    gt_bucket, gt_row = _pixel_index(gt_map, gt["ids"])  # buckets 0..Sg+1, rows of gt segments [Sg]
    pred_bucket, pred_column = _pixel_index(pred_map, pred["ids"])  # [H*W], [Sp]
    columns = len(pred["ids"]) + 2
    counts = np.bincount(gt_bucket * columns + pred_bucket, minlength=(len(gt["ids"]) + 2) * columns)
    counts = counts.reshape(-1, columns)  # [Sg + 2, Sp + 2] pixels of (gt bucket, pred bucket)
    _check_prediction_ids(pred_map, pred_bucket, counts[:, pred_column].sum(0), pred["ids"], where)
    by_pred = counts[:, pred_column]  # [Sg + 2, Sp]
    inter = by_pred[gt_row]  # [Sg, Sp]
    on_void = by_pred[0]  # [Sp] prediction pixels on void
    pred_area = by_pred.sum(0)  # [Sp]
    gt_area = np.where(np.isnan(gt["area"]), counts[gt_row].sum(1), gt["area"])  # [Sg]

    # matches: same category, not crowd, IoU > 0.5 with the prediction's void pixels out of the union
    candidate = (inter > 0) & (gt["category"][:, None] == pred["category"][None]) & ~gt["crowd"][:, None]
    union = pred_area[None] + gt_area[:, None] - inter - on_void[None]  # [Sg, Sp]
    iou = np.divide(inter, union, out=np.zeros(inter.shape), where=candidate)
    matched = candidate & (iou > 0.5)  # [Sg, Sp]
    pair_category = np.broadcast_to(gt["category"][:, None], matched.shape)[matched]

    # unmatched predictions on void plus their category's (last listed) crowd segment are not FP
    crowd_row = _last_crowd_segment(gt, num_categories)[pred["category"]]  # [Sp], -1 = none
    on_crowd = np.zeros(len(pred_area))
    has_crowd = np.flatnonzero(crowd_row >= 0)
    on_crowd[has_crowd] = inter[crowd_row[has_crowd], has_crowd]
    ignored = (on_void + on_crowd) / pred_area > 0.5
    false_positive = ~matched.any(0) & ~ignored
    false_negative = ~matched.any(1) & ~gt["crowd"]

    stats = np.zeros((num_categories, 4))
    stats[:, 0] = np.bincount(pair_category, minlength=num_categories)
    stats[:, 1] = np.bincount(pred["category"][false_positive], minlength=num_categories)
    stats[:, 2] = np.bincount(gt["category"][false_negative], minlength=num_categories)
    stats[:, 3] = np.bincount(pair_category, weights=iou[matched], minlength=num_categories)
    return stats


def _check_prediction_ids(
    pred_map: np.ndarray, bucket: np.ndarray, area: np.ndarray, listed: np.ndarray, where: str
) -> None:
    """The map's segment ids (void aside) and segments_info's ids must be the same set."""
    unlisted = bucket == len(listed) + 1
    if unlisted.any() or (area == 0).any():
        raise ValueError(
            f"{where}the predicted map's segment ids and segments_info disagree: in the map only "
            f"{np.unique(pred_map.ravel()[unlisted])[:10].tolist()}, in segments_info only "
            f"{listed[area == 0][:10].tolist()}."
        )


def _last_crowd_segment(gt: dict[str, np.ndarray], num_categories: int) -> np.ndarray:
    """Per category the row of its last listed crowd gt segment (panopticapi keeps one per category)."""
    rows = np.flatnonzero(gt["crowd"])[::-1]
    crowd = np.full(num_categories, -1, dtype=np.int64)
    categories, first = np.unique(gt["category"][rows], return_index=True)
    crowd[categories] = rows[first]
    return crowd


def _rows_by_image(state: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
    """(image id, its rows in their order) for each image of a state."""
    ordered = state[np.argsort(state[:, IMAGE], kind="stable")]
    image_ids, starts = np.unique(ordered[:, IMAGE], return_index=True)
    return zip(image_ids.astype(np.int64).tolist(), np.split(ordered, starts[1:]))


def _all_gather_rows(rows: np.ndarray) -> list[np.ndarray]:
    """The statistics rows of every other process (tensors, padded to the longest; no pickling)."""
    dist = torch.distributed
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    local = torch.as_tensor(rows, dtype=torch.float64, device=device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(local)], device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, 6), dtype=torch.float64, device=device)
    padded[: len(local)] = local
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    rank = dist.get_rank()
    return [g[: int(s.item())].cpu().numpy() for r, (g, s) in enumerate(zip(gathered, sizes)) if r != rank]


# ---------------------------------------------------------------------------------------------------
# COCO panoptic files
# ---------------------------------------------------------------------------------------------------
def read_panoptic_annotation(annotation: Mapping[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """A COCO panoptic annotation (`{"file_name", "segments_info", ...}`) with its PNG read as ids."""
    import PIL.Image

    path = Path(folder) / annotation["file_name"]
    if not path.is_file():
        raise ValueError(
            f"The panoptic PNG {str(path)!r} of image {annotation.get('image_id')} does not exist."
        )
    with PIL.Image.open(path) as image:
        ids = id_map(image, str(path))
    return {**annotation, "segmentation": ids}


def evaluate_coco_panoptic(
    gt_json: str | os.PathLike | Mapping[str, Any],
    pred_json: str | os.PathLike | Mapping[str, Any],
    gt_folder: str | os.PathLike,
    pred_folder: str | os.PathLike,
) -> dict[str, Any]:
    """panopticapi's `pq_compute` on COCO panoptic json + PNG folders (predictions matched by image_id)."""
    gt, pred = (
        json.loads(Path(j).read_text()) if isinstance(j, (str, os.PathLike)) else j
        for j in (gt_json, pred_json)
    )
    predictions = {int(a["image_id"]): a for a in pred["annotations"]}
    missing = [a["image_id"] for a in gt["annotations"] if int(a["image_id"]) not in predictions]
    if missing:
        raise ValueError(f"No prediction for image id(s) {missing[:10]} ({len(missing)} in all).")
    evaluator = PanopticEvaluator(gt["categories"])
    for annotation in gt["annotations"]:
        image_id = int(annotation["image_id"])
        evaluator.update(
            [image_id],
            [read_panoptic_annotation(predictions[image_id], pred_folder)],
            [read_panoptic_annotation(annotation, gt_folder)],
        )
    return evaluator.compute()


__all__ = ["PanopticEvaluator", "evaluate_coco_panoptic", "id_map", "read_panoptic_annotation"]
