"""Post-processing for HfDetrImageProcessor: the checks of its arguments and of the model outputs it
reads, and the outputs of a segmentation model as panoptic and instance maps (transformers' rules and
output formats, and the official `PostProcessPanoptic`).

Part of the self-contained "model files": `image_processing_detr.py` imports this module; it imports
only the value checks of `validation_detr.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.nn import functional as F
from torchvision.ops import box_convert
from transformers.image_processing_utils import BatchFeature

from .validation_detr import check_positive_integer, check_threshold, is_finite_real

try:  # transformers >= 5.x: the output type of semantic post-processing with scores
    from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
except ImportError:  # pragma: no cover - older 5.x releases
    SemanticSegmentationPostProcessorOutput = BatchFeature


# ----------------------------------------------------------------------------------------------------
# Detections and semantic maps
# ----------------------------------------------------------------------------------------------------
def object_detections(outputs: Any, threshold: Any, target_sizes: Any, top_k: Any) -> list[dict[str, Any]]:
    """The work of `HfDetrImageProcessor.post_process_object_detection` (see there)."""
    outputs, from_numpy = _tensor_outputs(outputs, ("logits", "pred_boxes"))
    logits, boxes = checked_outputs(outputs, "pred_boxes")  # [B, N, K+1], [B, N, 4]
    threshold, top_k = check_threshold("threshold", threshold), check_positive_integer("top_k", top_k)
    batch_size = logits.shape[0]
    probabilities = logits.float().softmax(-1)[..., :-1]  # [B, N, K]
    corners = box_convert(boxes.float(), "cxcywh", "xyxy")
    if target_sizes is None:
        sizes = torch.ones(batch_size, 2, device=boxes.device)
    else:
        checked = checked_target_sizes(target_sizes, batch_size, integer=False)
        sizes = torch.tensor(checked, dtype=torch.float32).reshape(batch_size, 2).to(boxes.device)
    scale = sizes.flip(-1).repeat(1, 2)[:, None, :]  # [B, 1, 4] = (w, h, w, h)
    corners = torch.minimum(corners.clamp(min=0) * scale, scale)
    if top_k is not None:
        flat = probabilities.flatten(1)  # [B, N*K]
        scores, index = flat.topk(min(top_k, flat.shape[1]), dim=1)
        num_classes = probabilities.shape[-1]
        labels = index % num_classes
        corners = corners.gather(1, (index // num_classes)[..., None].expand(-1, -1, 4))
    else:
        scores, labels = probabilities.max(-1)
    results = []
    for image_scores, image_labels, image_boxes in zip(scores, labels, corners):
        keep = image_scores > threshold
        results.append(
            {"scores": image_scores[keep], "labels": image_labels[keep], "boxes": image_boxes[keep]}
        )
    if from_numpy:  # numpy in (an exported model's outputs), numpy out
        results = [{key: value.numpy() for key, value in result.items()} for result in results]
    return results


def semantic_maps(outputs: Any, target_sizes: Any) -> list[SemanticSegmentationPostProcessorOutput]:
    """The work of `HfDetrImageProcessor.post_process_semantic_segmentation` (see there)."""
    logits, mask_logits = checked_outputs(outputs, "pred_masks")
    classes = logits.float().softmax(-1)[..., :-1]  # [B, N, K]
    scores = torch.einsum("bqc,bqhw->bchw", classes, mask_logits.float().sigmoid())  # [B, K, h, w]
    results = []
    for image_scores, size in zip(scores, target_size_list(target_sizes, len(scores))):
        if size is not None:
            image_scores = F.interpolate(image_scores[None], size, mode="bilinear", align_corners=False)[0]
        results.append(
            SemanticSegmentationPostProcessorOutput(
                data={"segmentation": image_scores.argmax(0), "segmentation_scores": image_scores}
            )
        )
    return results


def _tensor_outputs(outputs: Any, names: tuple[str, ...]) -> tuple[Any, bool]:
    """Model outputs with fields `names` -> an object with those fields as tensors, and whether they
    were numpy arrays. Takes a model's output, any object with the fields, or a mapping such as
    `dict(zip(output_names, onnx_session.run(...)))`."""
    if isinstance(outputs, Mapping):
        missing = [name for name in names if name not in outputs]
        if missing:
            raise KeyError(f"`outputs` has no {', '.join(missing)}; it has {sorted(outputs)}.")
        values = {name: outputs[name] for name in names}
    else:
        values = {name: getattr(outputs, name, None) for name in names}
    if all(isinstance(value, np.ndarray) for value in values.values()):
        return SimpleNamespace(**{k: torch.from_numpy(v) for k, v in values.items()}), True
    return SimpleNamespace(**values), False


# ----------------------------------------------------------------------------------------------------
# Segmentation post-processing helpers
# ----------------------------------------------------------------------------------------------------
def checked_outputs(outputs: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`outputs.logits` [B, N, K+1] (K >= 1) and `outputs.<name>` (`pred_boxes` [B, N, 4] or `pred_masks`
    [B, N, h, w]) with the same B and N, floating, real and finite: NaN or inf (a diverged model,
    usually) is an error naming the output and the image instead of silently empty results."""
    logits, other = getattr(outputs, "logits", None), getattr(outputs, name, None)
    shape = "[B, N, 4]" if name == "pred_boxes" else "[B, N, h, w]"
    if not isinstance(logits, torch.Tensor) or not isinstance(other, torch.Tensor):
        kind = "tensors (or numpy arrays)" if name == "pred_boxes" else "tensors"
        raise TypeError(
            f"`outputs` must have {kind} `logits` [B, N, K+1] and `{name}` {shape} (the outputs of a DETR "
            f"model), got logits={type(logits).__name__}, {name}={type(other).__name__}."
        )
    other_ok = other.ndim == 3 and other.shape[-1] == 4 if name == "pred_boxes" else other.ndim == 4
    if logits.ndim != 3 or logits.shape[-1] < 2 or other.shape[:2] != logits.shape[:2] or not other_ok:
        raise ValueError(
            f"`outputs.logits` must be [B, N, K+1] (K >= 1) and `outputs.{name}` {shape} with the same B and "
            f"N, got {list(logits.shape)} and {list(other.shape)}."
        )
    for field, tensor in (("logits", logits), (name, other)):
        if not tensor.is_floating_point():
            raise TypeError(f"`outputs.{field}` must be a floating tensor, got {tensor.dtype}.")
        finite = torch.isfinite(tensor).flatten(1).all(1).tolist()
        if not all(finite):
            raise ValueError(
                f"`outputs.{field}` of image {finite.index(False)} contains NaN or inf: the model's outputs "
                "are not finite (a diverged model, or inputs the model could not take)."
            )
    return logits, other


def checked_target_sizes(target_sizes: Any, batch_size: int, integer: bool) -> list[tuple[float, float]]:
    """`target_sizes` (a [B, 2] tensor or array, or a list of (height, width)) as a list of positive
    finite (height, width) pairs, one per image; with `integer`, whole numbers of pixels (as ints)."""
    sizes = target_sizes.tolist() if isinstance(target_sizes, (torch.Tensor, np.ndarray)) else target_sizes
    kind = "whole numbers of pixels" if integer else "finite numbers"
    message = (
        f"`target_sizes` must hold one positive (height, width) per image ({batch_size}), as {kind}; "
        f"got {target_sizes!r:.200}."
    )
    if not isinstance(sizes, (list, tuple)) or len(sizes) != batch_size:
        raise ValueError(message)
    checked = []
    for size in sizes:
        size = size.tolist() if isinstance(size, (torch.Tensor, np.ndarray)) else size
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ValueError(message)
        if not all(is_finite_real(v) and v > 0 and (not integer or float(v).is_integer()) for v in size):
            raise ValueError(message)
        checked.append(tuple(int(v) if integer else float(v) for v in size))
    return checked


def unpadded_segmentation_outputs(
    outputs: Any, pixel_mask: torch.Tensor | None, index: int
) -> SimpleNamespace:
    """Image `index`'s `logits` [1, N, K+1] and `pred_masks` [1, N, h, w] cut to its unpadded part.

    Post-processing resizes the whole mask map to the target size, so the padding that larger images
    bring into a batch would stretch the masks; the official `PostProcessSegm` crops the same way.
    """
    masks = outputs.pred_masks[index : index + 1]  # [1, N, h, w] of the padded batch
    if pixel_mask is not None:
        padded_height, padded_width = pixel_mask.shape[-2:]
        rows, columns = int(pixel_mask[index].any(1).sum()), int(pixel_mask[index].any(0).sum())
        height = math.ceil(rows * masks.shape[-2] / padded_height)
        width = math.ceil(columns * masks.shape[-1] / padded_width)
        masks = masks[..., :height, :width]
    return SimpleNamespace(logits=outputs.logits[index : index + 1], pred_masks=masks)


def target_size_list(target_sizes: Any, batch_size: int) -> list[tuple[int, int] | None]:
    """`target_sizes` as one (height, width) per image, or None per image when not given."""
    if target_sizes is None:
        return [None] * batch_size
    return checked_target_sizes(target_sizes, batch_size, integer=True)


def segments_per_image(
    outputs: Any,
    threshold: float,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    label_ids_to_fuse: set[int],
    target_sizes: Any,
) -> list[dict[str, Any]]:
    """Per image `{"segmentation", "segments_info"}` from the queries whose best class is an object
    scoring above `threshold` (see `HfDetrImageProcessor.post_process_panoptic_segmentation`)."""
    logits, mask_logits = checked_outputs(outputs, "pred_masks")
    threshold = check_threshold("threshold", threshold)
    mask_threshold = check_threshold("mask_threshold", mask_threshold)
    overlap_mask_area_threshold = check_threshold("overlap_mask_area_threshold", overlap_mask_area_threshold)
    probabilities = mask_logits.float().sigmoid()  # [B, N, h, w]
    scores, labels = logits.float().softmax(-1).max(-1)  # [B, N]
    keep = labels.ne(logits.shape[-1] - 1) & (scores > threshold)  # [B, N]
    thresholds = (mask_threshold, overlap_mask_area_threshold)
    results = []
    for i, size in enumerate(target_size_list(target_sizes, len(logits))):
        kept = (probabilities[i][keep[i]], scores[i][keep[i]], labels[i][keep[i]])
        results.append(_image_segments(*kept, size, *thresholds, label_ids_to_fuse))
    return results


def _image_segments(
    probabilities: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    size: tuple[int, int] | None,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    label_ids_to_fuse: set[int],
) -> dict[str, Any]:
    """The kept queries of one image (mask probabilities [M, h, w], scores [M], labels [M]) -> segments."""
    height, width = size if size is not None else probabilities.shape[-2:]
    if len(scores) == 0:
        segmentation = torch.full((height, width), -1, dtype=torch.int32, device=probabilities.device)
        return {"segmentation": segmentation, "segments_info": []}
    if size is not None:
        probabilities = F.interpolate(probabilities[None], size=size, mode="bilinear", align_corners=False)[0]
    weighted = probabilities * scores[:, None, None]  # [M, H, W]
    owner = weighted.argmax(0)  # [H, W]: the query each pixel goes to
    won = torch.bincount(owner.flatten(), minlength=len(scores))  # [M]
    own = (weighted >= mask_threshold).flatten(1).sum(1)  # [M]
    # the ratio in float32, compared in float64 with the threshold, as transformers' `.item() >`
    valid = (won > 0) & (own > 0) & ((won / own).double() > overlap_mask_area_threshold)
    segment_of_query, segments = _number_segments(
        valid.tolist(), labels.tolist(), scores.tolist(), label_ids_to_fuse
    )
    lookup = torch.tensor(segment_of_query, dtype=torch.int32, device=owner.device)  # [M]
    return {"segmentation": lookup[owner], "segments_info": segments}


def _number_segments(
    valid: list[bool], labels: list[int], scores: list[float], label_ids_to_fuse: set[int]
) -> tuple[list[int], list[dict[str, Any]]]:
    """Segment id of each query (0 if none) in query order; queries of a fused label share one id."""
    segment_of_query, segments, fused, last_id = [0] * len(valid), [], {}, 0
    for query, (is_segment, label, score) in enumerate(zip(valid, labels, scores)):
        if not is_segment:
            continue
        should_fuse = label in label_ids_to_fuse
        if not (should_fuse and label in fused):
            last_id += 1
        segment_id = fused.setdefault(label, last_id) if should_fuse else last_id
        segment_of_query[query] = segment_id
        segments.append(
            {"id": segment_id, "label_id": label, "was_fused": should_fuse, "score": round(score, 6)}
        )
    return segment_of_query, segments


def detr_panoptic_segments(
    logits: torch.Tensor,
    mask_logits: torch.Tensor,
    threshold: float,
    stuff_label_ids: set[int],
    processed_sizes: list[tuple[int, int]],
    target_sizes: list[tuple[int, int] | None],
) -> list[dict[str, Any]]:
    """Per image `{"segmentation", "segments_info"}` by the rule of the official DETR's
    `PostProcessPanoptic` (see `HfDetrImageProcessor.post_process_panoptic_segmentation`) from
    checked outputs (`checked_outputs`): logits [B, N, K+1], mask logits [B, N, h, w]."""
    threshold = check_threshold("threshold", threshold)
    scores, labels = logits.float().softmax(-1).max(-1)  # [B, N]
    keep = labels.ne(logits.shape[-1] - 1) & (scores > threshold)  # [B, N]
    results = []
    for i, (processed, target) in enumerate(zip(processed_sizes, target_sizes)):
        masks = mask_logits[i][keep[i]].float()  # [M, h, w]
        masks = F.interpolate(masks[:, None], size=processed, mode="bilinear", align_corners=False)[:, 0]
        kept = (scores[i][keep[i]], labels[i][keep[i]])
        results.append(_detr_image_segments(masks, *kept, target or processed, stuff_label_ids))
    return results


def _detr_image_segments(
    masks: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    size: tuple[int, int],
    stuff_label_ids: set[int],
) -> dict[str, Any]:
    """One image's kept queries (mask logits [M, h, w] at the processed size, scores [M], labels [M])
    -> segments by the official rule (`HfDetrImageProcessor.post_process_panoptic_segmentation`)."""
    first_of_label: dict[int, int] = {}
    merged = [first_of_label.setdefault(label, query) if label in stuff_label_ids else query
              for query, label in enumerate(labels.tolist())]  # fmt: skip
    owner, areas = _query_map(masks, size, torch.tensor(merged, dtype=torch.long))
    while len(areas) and min(areas) <= 4:
        large = torch.tensor([area > 4 for area in areas])
        masks, scores, labels = masks[large], scores[large], labels[large]
        owner, areas = _query_map(masks, size, None)
    segments = [
        {"id": query + 1, "label_id": label, "was_fused": label in stuff_label_ids, "score": round(score, 6)}
        for query, (label, score) in enumerate(zip(labels.tolist(), scores.tolist()))
    ]
    segmentation = (owner + 1 if len(areas) else owner).to(torch.int32)  # ids from 1; 0: no segment
    return {"segmentation": segmentation, "segments_info": segments}


def _query_map(
    masks: torch.Tensor, size: tuple[int, int], merged: torch.Tensor | None
) -> tuple[torch.Tensor, list[int]]:
    """The query of each pixel at `size` (height, width) and each query's pixel count: the argmax of
    the softmax over queries at the masks' size (`merged`: the query each query's pixels go to), then a
    nearest resize with PIL, as the official code resizes its PNG."""
    height, width = masks.shape[-2:]
    if len(masks) == 0:
        return torch.zeros(size, dtype=torch.long), []
    owner = masks.flatten(1).transpose(0, 1).softmax(-1).argmax(-1).view(height, width)  # [h, w]
    if merged is not None:
        owner = merged.to(owner.device)[owner]
    picture = PIL.Image.fromarray(owner.cpu().numpy().astype(np.int32))  # mode "I"
    owner = torch.from_numpy(
        np.asarray(picture.resize((size[1], size[0]), PIL.Image.NEAREST), dtype=np.int64)
    )
    return owner, torch.bincount(owner.flatten(), minlength=len(masks)).tolist()


def run_length_encoding(segmentation: torch.Tensor) -> list[list[int]]:
    """Per segment id (increasing), `[start, length, ...]` runs of its row-major pixels, starts from 1."""
    values, lengths = torch.unique_consecutive(segmentation.flatten().cpu(), return_counts=True)  # [R] runs
    starts = lengths.cumsum(0) - lengths  # [R] 0-based run starts
    order = torch.sort(values, stable=True).indices  # runs grouped by id, in pixel order within an id
    pairs = torch.stack([starts[order] + 1, lengths[order]], 1)  # [R, 2]
    counts = torch.unique_consecutive(values[order], return_counts=True)[1].tolist()
    return [group.flatten().tolist() for group in torch.split(pairs, counts)]
