"""COCO mask AP (iouType "segm"): the 12 standard stats of instance masks, with faster-coco-eval.

As DETR reports it for its segmentation model (paper, Sec. 4.4): every query, its best class, its mask
binarised at 0.5 at the original image size (`instance_predictions`, the official `PostProcessSegm`),
scored against instance masks by pycocotools' rules (`MaskEvaluator`). On COCO panoptic data the
instances are the segments of the thing categories (`mask_ground_truth_from_panoptic`).

Masks travel as COCO RLE (column-major run lengths, counts as str), which is what gets stored, and what
`encode_predictions` makes of a prediction so that processes can gather a few hundred bytes per mask
rather than the mask itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..image_processing_detr_postprocessing import checked_outputs, target_size_list
from .coco_evaluator import (
    STAT_NAMES,
    _as_array,
    category_table,
    checked_image_ids,
    coco_ground_truth,
    format_stats,
    label_categories,
    summarize,
)
from .panoptic import id_map

MASK_THRESHOLD = 0.5


# ----------------------------------------------------------------------------------------------------
# Post-processing
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def instance_predictions(
    outputs: Any,
    sizes: torch.Tensor | Sequence[Sequence[int]],
    orig_sizes: torch.Tensor | Sequence[Sequence[int]],
    top_k: int | None = None,
    padded_size: Sequence[int] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Segmentation model outputs -> per image `{"scores" [M], "labels" [M], "masks" bool [M, H, W]}`
    at the original size `orig_sizes[i]`, on the outputs' device.

    As the official `PostProcess` and `PostProcessSegm`: scores and labels are the softmax's best
    object class per query; the mask logits are upsampled bilinearly to the padded input size (default
    the largest of `sizes`, which is the padded size of a batch padded to its largest image), thresholded
    at sigmoid 0.5, cropped to the image's unpadded input size `sizes[i]` and resized (nearest) to
    `orig_sizes[i]`. Without `top_k`, M = every query; with it, the best `top_k` (query, class) pairs,
    as `post_process_object_detection(top_k=...)` takes them.
    """
    logits, mask_logits = checked_outputs(outputs, "pred_masks")  # [B, N, K+1], [B, N, h, w]
    batch_size = len(logits)
    input_sizes = target_size_list(sizes, batch_size)
    output_sizes = target_size_list(orig_sizes, batch_size)
    if padded_size is None:
        padded_size = (max(h for h, _ in input_sizes), max(w for _, w in input_sizes))
    padded_size = tuple(int(v) for v in padded_size)
    if any(h > padded_size[0] or w > padded_size[1] for h, w in input_sizes):
        raise ValueError(f"`sizes` {input_sizes} must fit in `padded_size` {list(padded_size)}.")
    scores, labels, queries = _best_classes(logits, top_k)  # [B, M] each
    results = []
    for i in range(batch_size):
        masks = _image_masks(mask_logits[i, queries[i]], padded_size, input_sizes[i], output_sizes[i])
        results.append({"scores": scores[i], "labels": labels[i], "masks": masks})
    return results


def _best_classes(logits: torch.Tensor, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores, labels and query indices [B, M]: the best object class of every query, or the best
    `top_k` (query, class) pairs of each image."""
    probabilities = logits.float().softmax(-1)[..., :-1]  # [B, N, K]
    if top_k is None:
        scores, labels = probabilities.max(-1)
        queries = torch.arange(logits.shape[1], device=logits.device).expand_as(labels)
        return scores, labels, queries
    num_classes = probabilities.shape[-1]
    scores, index = probabilities.flatten(1).topk(min(top_k, num_classes * logits.shape[1]), dim=1)
    return scores, index % num_classes, index // num_classes


def _image_masks(
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
    orig_size: tuple[int, int],
) -> torch.Tensor:
    """Mask logits [M, h, w] of one image -> bool masks [M, H, W] at its original size."""
    upsampled = F.interpolate(
        mask_logits[None].float(), size=padded_size, mode="bilinear", align_corners=False
    )
    height, width = input_size
    binary = upsampled[0, :, :height, :width].sigmoid() > MASK_THRESHOLD  # [M, height, width]
    # nearest copies values, so uint8 gives what the official float does, in a quarter of the memory
    resized = F.interpolate(binary[None].to(torch.uint8), size=orig_size, mode="nearest")  # [1, M, H, W]
    return resized[0].bool()


# ----------------------------------------------------------------------------------------------------
# RLE
# ----------------------------------------------------------------------------------------------------
def encode_masks(masks: torch.Tensor | np.ndarray) -> list[dict[str, Any]]:
    """Binary masks [M, H, W] (bool, or probabilities binarised at 0.5) -> COCO RLEs, counts as str."""
    from faster_coco_eval.core import mask as mask_api

    if not isinstance(masks, torch.Tensor):
        masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"`masks` must be [M, H, W], got shape {list(masks.shape)}.")
    if len(masks) == 0:
        return []
    # COCO's RLE runs down the columns: [H, W, M] in Fortran order, i.e. [M, W, H] in C order, transposed
    # where the masks are (on the GPU, before the copy, when they are there)
    if isinstance(masks, torch.Tensor):
        binary = masks.detach() if masks.dtype == torch.bool else masks.detach().float() > MASK_THRESHOLD
        columns = binary.transpose(1, 2).contiguous().cpu().numpy()  # [M, W, H]
    else:
        binary = masks if masks.dtype == np.bool_ else masks > MASK_THRESHOLD
        columns = np.ascontiguousarray(binary.transpose(0, 2, 1))  # [M, W, H]
    column_major = columns.view(np.uint8).T  # [H, W, M], Fortran order
    rles = mask_api.encode(column_major)
    return [{"size": [int(v) for v in rle["size"]], "counts": _text(rle["counts"])} for rle in rles]


def encode_predictions(predictions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`{"masks", "scores", "labels"}` per image -> `{"rles", "scores", "labels"}` (CPU, compact): what
    to gather across processes before `MaskEvaluator.update`, which takes either form."""
    return [
        {"rles": encode_masks(p["masks"]), "scores": _as_array(p["scores"], np.float64).reshape(-1),
         "labels": _as_array(p["labels"], np.int64).reshape(-1)}
        for p in predictions
    ]  # fmt: skip


def _text(counts: bytes | str) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


# ----------------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------------
def mask_ground_truth_from_panoptic(
    images: Sequence[Mapping[str, Any]],
    annotations: Iterable[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """COCO instances dict (RLE masks) of the thing segments of COCO panoptic ground truth.

    `annotations`: per image `{"image_id", "segmentation": id map [H, W] (or RGB [H, W, 3]), as
    `read_panoptic_annotation` gives it, "segments_info": [{"id", "category_id", "iscrowd"?}]}`. Only
    categories with isthing=1 become instances (and the categories of the dict); iscrowd is kept, the
    area is the pixel count and the bbox that of the mask.
    """
    from faster_coco_eval.core import mask as mask_api

    things = [dict(c) for c in categories if int(c.get("isthing", 0)) == 1]
    if not things:
        raise ValueError("No category has isthing=1: panoptic ground truth without things has no instances.")
    thing_ids = {int(c["id"]) for c in things}
    sizes = {int(image["id"]): (int(image["height"]), int(image["width"])) for image in images}
    instances: list[dict[str, Any]] = []
    for annotation in annotations:
        image_id = int(annotation["image_id"])
        ids = id_map(annotation["segmentation"], f"image {image_id}: segmentation")  # [H, W]
        if image_id not in sizes:
            raise ValueError(f"Annotation of image {image_id}, which is not in `images`.")
        if sizes[image_id] != ids.shape:
            raise ValueError(
                f"Image {image_id}: the id map is {list(ids.shape)} but the image is {list(sizes[image_id])}."
            )
        segments = [s for s in annotation["segments_info"] if int(s["category_id"]) in thing_ids]
        if not segments:
            continue
        masks = ids[None] == np.array([int(s["id"]) for s in segments])[:, None, None]  # [S, H, W]
        rles = encode_masks(masks)
        boxes = mask_api.toBbox(rles)  # [S, 4] x, y, w, h
        for segment, rle, area, box in zip(segments, rles, masks.sum((1, 2)).tolist(), boxes.tolist()):
            instances.append(
                {"id": len(instances) + 1, "image_id": image_id, "category_id": int(segment["category_id"]),
                 "segmentation": rle, "area": float(area), "bbox": box,
                 "iscrowd": int(segment.get("iscrowd", 0)), "segment_id": int(segment["id"])}
            )  # fmt: skip
    return {"images": [dict(image) for image in images], "annotations": instances, "categories": things}


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------
class MaskEvaluator:
    """Accumulates instance masks per image and computes the 12 COCO mask stats (iouType "segm").

    Args:
        ground_truth: a COCO instances dict or json path whose annotations carry "segmentation"
            (polygons, RLE or uncompressed RLE) and "area"; see `mask_ground_truth_from_panoptic`.
        label_to_category_id: model label id -> COCO category id (a dict, or a list indexed by label);
            default: identity. Predictions of labels without a category are dropped.

    As `CocoEvaluator`: add each image once (`update`), on one process (gather the `encode_predictions`
    of every process with `accelerator.gather_for_metrics(..., use_gather_object=True)`), then `compute`.
    """

    def __init__(
        self,
        ground_truth: str | os.PathLike | Mapping[str, Any],
        label_to_category_id: Mapping[int, int] | Sequence[int] | None = None,
    ) -> None:
        self.ground_truth = coco_ground_truth(ground_truth)
        _check_masks(self.ground_truth["annotations"])
        self.image_sizes = {
            int(image["id"]): (int(image["height"]), int(image["width"]))
            for image in self.ground_truth["images"]
        }
        self.category_ids = {int(c["id"]) for c in self.ground_truth["categories"]}
        self._category_of_label = category_table(label_to_category_id, self.category_ids)
        self._results: list[dict[str, Any]] = []  # COCO result annotations
        self._evaluated: set[int] = set()
        self.stats: dict[str, float] | None = None

    @classmethod
    def from_panoptic(
        cls,
        images: Sequence[Mapping[str, Any]],
        annotations: Iterable[Mapping[str, Any]],
        categories: Sequence[Mapping[str, Any]],
        label_to_category_id: Mapping[int, int] | Sequence[int] | None = None,
    ) -> MaskEvaluator:
        """An evaluator of the thing instances of COCO panoptic ground truth."""
        return cls(mask_ground_truth_from_panoptic(images, annotations, categories), label_to_category_id)

    @property
    def num_images(self) -> int:
        return len(self._evaluated)

    # ------------------------------------------------------------------------------------------------
    def update(
        self, image_ids: Sequence[int] | torch.Tensor, predictions: Sequence[Mapping[str, Any]]
    ) -> None:
        """Add the predictions of some images: per image id `{"masks" [M, H, W] (bool, or probabilities
        binarised at 0.5) at the original image size, "scores" [M], "labels" [M]}`, or the same with
        "rles" (`encode_predictions`) in place of "masks". An image with no prediction still counts."""
        image_ids = checked_image_ids(image_ids, len(predictions), set(self.image_sizes), self._evaluated)
        results = [
            annotation for i, p in zip(image_ids, predictions) for annotation in self._annotations(i, p)
        ]
        self._evaluated.update(image_ids)
        self._results.extend(results)

    def _annotations(self, image_id: int, prediction: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One image's prediction as COCO result annotations (checked, labels mapped to categories)."""
        from faster_coco_eval.core import mask as mask_api

        rles = prediction["rles"] if "rles" in prediction else encode_masks(prediction["masks"])
        scores = _as_array(prediction["scores"], np.float64).reshape(-1)
        labels = _as_array(prediction["labels"], np.int64).reshape(-1)
        if not len(rles) == len(scores) == len(labels):
            raise ValueError(
                f"Image {image_id}: {len(rles)} masks, {len(scores)} scores and {len(labels)} labels; "
                "expected one of each per instance."
            )
        if len(rles) == 0:
            return []
        size = self.image_sizes[image_id]
        wrong = [list(rle["size"]) for rle in rles if tuple(rle["size"]) != size]
        if wrong:
            raise ValueError(
                f"Image {image_id}: masks of size {wrong[0]}, but the image is {list(size)} (height, width); "
                "masks must be at the original image size."
            )
        categories = label_categories(self._category_of_label, labels, image_id).tolist()
        areas, boxes = mask_api.area(rles).tolist(), mask_api.toBbox(rles).tolist()
        return [
            {"image_id": image_id, "category_id": category, "segmentation": rle, "score": score,
             "area": float(area), "bbox": box, "iscrowd": 0}
            for rle, score, category, area, box in zip(rles, scores.tolist(), categories, areas, boxes)
            if category >= 0
        ]  # fmt: skip

    # ------------------------------------------------------------------------------------------------
    def compute(self) -> dict[str, float]:
        """The 12 COCO mask stats over the images added so far (each in [0, 1]; -1 where undefined), as
        pycocotools' `COCOeval(iouType="segm")`."""
        from faster_coco_eval import COCO, COCOeval_faster

        if not self._evaluated:
            raise ValueError(
                "No predictions were added: call update() with at least one image before compute()."
            )
        gt = COCO()
        # shallow copies: the evaluation writes into the annotation dicts
        gt.dataset = {**self.ground_truth, "annotations": [dict(a) for a in self.ground_truth["annotations"]]}
        gt.createIndex()
        dt = COCO()
        dt.dataset = {
            "images": self.ground_truth["images"],
            "categories": self.ground_truth["categories"],
            "annotations": [{**a, "id": index} for index, a in enumerate(self._results, start=1)],
        }
        dt.createIndex()
        evaluator = COCOeval_faster(gt, dt, iouType="segm", print_function=lambda *a, **k: None)
        evaluator.params.imgIds = sorted(self._evaluated)
        evaluator.params.catIds = sorted(self.category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        stats = summarize(evaluator.eval["precision"], evaluator.eval["recall"])
        self.stats = dict(zip(STAT_NAMES, (float(s) for s in stats)))
        return self.stats

    def summary(self) -> str:
        """The standard COCO table of the last `compute()`."""
        if self.stats is None:
            raise ValueError("compute() has not run yet.")
        return format_stats(self.stats)


def _check_masks(annotations: Sequence[Mapping[str, Any]]) -> None:
    """Every ground-truth annotation must carry a mask and its area (COCOeval's area ranges use it)."""
    for annotation in annotations:
        missing = [key for key in ("segmentation", "area") if key not in annotation]
        if missing:
            raise ValueError(
                f"Ground-truth annotation {annotation.get('id')} (image {annotation.get('image_id')}) has no "
                f"{' and no '.join(map(repr, missing))}: mask AP needs COCO instances with masks."
            )


__all__ = [
    "MaskEvaluator",
    "encode_masks",
    "encode_predictions",
    "instance_predictions",
    "mask_ground_truth_from_panoptic",
]
