"""COCO annotations to DETR targets, for HfDetrImageProcessor.

Annotations come in COCO detection form (boxes, optionally polygon/RLE masks) or COCO panoptic form
(segment ids in a PNG: id = R + 256 G + 256^2 B). A raw target holds numpy boxes (absolute x0, y0, x1, y1)
and areas in the original image, numpy class_labels and iscrowd, the image id, and optionally torch bool
masks [n, H, W]; it is then resized as the image was (masks with PIL's nearest rule) and padded like the
pixels, as the official `ConvertCocoPolysToMask` and `coco_panoptic.py` of DETR (Carion et al. 2020).

Part of the self-contained "model files": `image_processing_detr.py` imports this module; it imports
only the value checks of `validation_detr.py`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision.ops import box_convert, masks_to_boxes

from .validation_detr import is_finite_real, is_int64

PANOPTIC_IMAGE_KEY = "panoptic_image"  # a decoded panoptic PNG carried in the annotation itself


def convert_annotation(
    annotation: Any,
    index: int,
    original_size: tuple[int, int],
    output_size: tuple[int, int],
    padded_size: tuple[int, int] | None,
    annotation_format: str,
    normalize_boxes: bool,
    return_masks: bool | None,
    masks_path: str | os.PathLike | None,
) -> dict[str, torch.Tensor]:
    """One COCO annotation -> DETR target: parsed in the original image, then resized, normalized and
    (masks) padded to `padded_size` as the image was. Panoptic targets carry masks unless `return_masks`
    is False; detection targets only when it is True."""
    if annotation_format == "coco_panoptic":
        target = _panoptic_target(annotation, index, original_size, masks_path)
        if return_masks is False:
            del target["masks"]
    else:
        target = _detection_target(annotation, index, original_size, bool(return_masks))
    target = _resize_target(target, original_size, output_size, normalize_boxes)
    if "masks" in target and padded_size is not None:  # padded bottom-right with False, as the pixels
        masks = target["masks"]
        target["masks"] = torch.zeros(len(masks), *padded_size, dtype=torch.bool)
        target["masks"][:, : masks.shape[1], : masks.shape[2]] = masks
    return target


def _checked_items(annotation: Any, index: int, field: str) -> list[Mapping[str, Any]]:
    """The objects (`field` "annotations") of a COCO detection annotation or the segments ("segments_info")
    of a panoptic one, each checked: a finite `bbox` (objects), an integer `id` (segments), and for
    both a `category_id` integer >= 0 within int64, an `area` finite and >= 0, an `iscrowd` 0 or 1."""
    panoptic = field == "segments_info"
    if not (
        isinstance(annotation, Mapping)
        and "image_id" in annotation
        and isinstance(annotation.get(field), (list, tuple))
    ):
        keys = sorted(annotation) if isinstance(annotation, Mapping) else []
        expected = (
            "{'image_id', 'file_name', 'segments_info': [...]} for format='coco_panoptic'"
            if panoptic
            else "{'image_id', 'annotations': [...]}"
        )
        raise ValueError(  # transformers' message
            f"Invalid COCO {'panoptic' if panoptic else 'detection'} annotations: annotations[{index}] must "
            f"be a dict {expected}, got {type(annotation).__name__} with keys {keys}."
        )
    for number, obj in enumerate(annotation[field]):
        where = (
            f"annotations[{index}] segments_info[{number}]"
            if panoptic
            else f"annotations[{index}] (image_id {annotation['image_id']}), object {number}"
        )
        if not isinstance(obj, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(obj).__name__}.")
        if panoptic and not is_int64(obj.get("id")):
            raise ValueError(f"{where}: 'id' must be an integer, got {obj.get('id')!r}.")
        if not panoptic:
            _check_bbox(obj, where)
        category = obj.get("category_id")
        if not (is_int64(category) and category >= 0):
            raise ValueError(f"{where}: 'category_id' must be an integer >= 0, got {category!r}.")
        if "area" in obj and not (is_finite_real(obj["area"]) and obj["area"] >= 0):
            raise ValueError(f"{where}: 'area' must be a finite number >= 0, got {obj['area']!r}.")
        crowd = obj.get("iscrowd", 0)
        if not (isinstance(crowd, (bool, np.bool_)) or (is_int64(crowd) and crowd in (0, 1))):
            raise ValueError(f"{where}: 'iscrowd' must be 0 or 1, got {crowd!r}.")
    return list(annotation[field])


def _check_bbox(obj: Mapping[str, Any], where: str) -> None:
    """A detection object has a `category_id` and a `bbox` of 4 finite numbers (x, y, w, h), w and h >= 0."""
    for field in ("bbox", "category_id"):
        if field not in obj:
            raise ValueError(f"{where} has no '{field}'.")
    bbox = obj["bbox"]
    if (
        not isinstance(bbox, (list, tuple, np.ndarray))
        or len(bbox) != 4
        or not all(is_finite_real(v) for v in bbox)
    ):
        raise ValueError(f"{where}: 'bbox' must be 4 finite numbers (x, y, w, h), got {bbox!r}.")
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(
            f"{where}: 'bbox' {list(bbox)!r} has a negative width or height; COCO boxes are "
            "(x, y, width, height)."
        )


def image_id_of(annotation: Mapping[str, Any], index: int, default: int) -> int:
    """The annotation's `image_id`: an integer within int64 (an integer-valued float, or a one-element
    integer array or tensor, is taken as that integer); `default` when absent."""
    value = annotation.get("image_id", default)
    if isinstance(value, (np.ndarray, torch.Tensor)) and tuple(value.shape) in ((), (1,)):
        value = value.reshape(-1)[0].item()  # e.g. the `image_id` tensor of a processed label
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        value = int(value)
    if not is_int64(value):
        raise ValueError(
            f"annotations[{index}]: 'image_id' must be an integer within int64 (COCO image ids are ints), "
            f"got {value!r}."
        )
    return int(value)


def _detection_target(
    annotation: Mapping[str, Any], index: int, original_size: tuple[int, int], return_masks: bool
) -> dict[str, Any]:
    """COCO detection objects: crowds dropped, boxes xywh -> xyxy clipped to the image, empty boxes dropped."""
    height, width = original_size
    objects = [obj for obj in _checked_items(annotation, index, "annotations") if not obj.get("iscrowd", 0)]
    boxes = np.asarray([obj["bbox"] for obj in objects], dtype=np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    boxes = boxes.clip(0, np.asarray([width, height, width, height], dtype=np.float32))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    area = np.asarray([obj.get("area", obj["bbox"][2] * obj["bbox"][3]) for obj in objects], dtype=np.float32)
    target = {
        "image_id": image_id_of(annotation, index, index),
        "class_labels": np.asarray([obj["category_id"] for obj in objects], dtype=np.int64)[keep],
        "boxes": boxes[keep],
        "area": area[keep],
        "iscrowd": np.zeros(int(keep.sum()), dtype=np.int64),
    }
    if return_masks:
        kept = [obj for obj, k in zip(objects, keep) if k]
        target["masks"] = _object_masks(kept, index, height, width)
    return target


def _coco_mask_api() -> Any:
    """The COCO mask codec: faster-coco-eval's, else pycocotools'."""
    try:
        from faster_coco_eval.core import mask
    except ImportError:
        try:
            from pycocotools import mask
        except ImportError as error:
            raise ImportError(
                "return_segmentation_masks=True with COCO detection annotations decodes polygons and RLE "
                "with faster-coco-eval or pycocotools: `pip install faster-coco-eval`."
            ) from error
    return mask


def _object_masks(objects: Sequence[Mapping[str, Any]], index: int, height: int, width: int) -> torch.Tensor:
    """Polygon or RLE `segmentation` of each object -> bool masks [n, H, W]."""
    masks = torch.zeros(len(objects), height, width, dtype=torch.bool)
    api = _coco_mask_api() if objects else None
    for number, obj in enumerate(objects):
        where = f"annotations[{index}], object {number}"
        segmentation = obj.get("segmentation")
        if isinstance(segmentation, Mapping) and {"counts", "size"} <= set(segmentation):
            if [int(v) for v in segmentation["size"]] != [height, width]:
                raise ValueError(
                    f"{where}: RLE 'size' {list(segmentation['size'])} differs from the image "
                    f"({height}x{width})."
                )
            rle = {"size": [height, width], "counts": segmentation["counts"]}  # compressed: str or bytes
            if isinstance(rle["counts"], list):  # uncompressed RLE
                rle = api.frPyObjects(rle, height, width)
            decoded = api.decode(rle)  # [H, W] uint8
        elif isinstance(segmentation, (list, tuple)) and all(
            isinstance(p, (list, tuple, np.ndarray)) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation
        ):
            if not segmentation:
                continue
            decoded = api.decode(api.frPyObjects([list(p) for p in segmentation], height, width)).any(-1)
        else:
            raise ValueError(
                f"{where}: return_segmentation_masks=True needs a 'segmentation' of polygons "
                f"([[x0, y0, x1, y1, x2, y2, ...], ...]) or an RLE {{'size', 'counts'}}, got {segmentation!r:.80}."
            )
        masks[number] = torch.from_numpy(np.ascontiguousarray(decoded, dtype=bool))
    return masks


def _panoptic_target(
    annotation: Any, index: int, original_size: tuple[int, int], masks_path: str | os.PathLike | None
) -> dict[str, Any]:
    """COCO panoptic segments: one bool mask per segment id, boxes around the masks (official
    `coco_panoptic.py`: `masks_to_boxes`, last pixel index as x1, y1), areas from `segments_info`."""
    segments = _checked_items(annotation, index, "segments_info")
    ids = torch.as_tensor([int(segment["id"]) for segment in segments], dtype=torch.int64)
    id_map = _panoptic_ids(annotation, index, original_size, masks_path)  # [H, W]
    masks = id_map[None] == ids[:, None, None]  # [n, H, W]
    missing = ids[~masks.flatten(1).any(1)].tolist()
    if missing:
        found = torch.unique(id_map)[:10].tolist()
        raise ValueError(
            f"annotations[{index}] (image_id {annotation['image_id']}): segment id(s) {missing} of "
            f"'segments_info' do not occur in the panoptic PNG (its ids include {found})."
        )
    area = [segment.get("area", float(mask.sum())) for segment, mask in zip(segments, masks)]
    return {
        "image_id": image_id_of(annotation, index, annotation.get("id", index)),
        "class_labels": np.asarray([s["category_id"] for s in segments], dtype=np.int64),
        "boxes": masks_to_boxes(masks).numpy(),
        "area": np.asarray(area, dtype=np.float32),
        "iscrowd": np.asarray([int(s.get("iscrowd", 0)) for s in segments], dtype=np.int64),
        "masks": masks,
    }


def _panoptic_ids(
    annotation: Mapping[str, Any], index: int, original_size: tuple[int, int], masks_path: Any
) -> torch.Tensor:
    """The segment id of every pixel [H, W] int64, from `annotation["panoptic_image"]` or the PNG file."""
    image = annotation.get(PANOPTIC_IMAGE_KEY)
    source = f"annotations[{index}][{PANOPTIC_IMAGE_KEY!r}]"
    if image is None:
        if masks_path is None:
            raise ValueError(
                f"format='coco_panoptic' needs `masks_path` (the folder of the panoptic PNGs) or the decoded "
                f"PNG under annotations[{index}][{PANOPTIC_IMAGE_KEY!r}]; got neither."
            )
        if not isinstance(masks_path, (str, os.PathLike)):
            raise ValueError(f"`masks_path` must be a str or path, got {type(masks_path).__name__}.")
        file_name = annotation.get("file_name")
        if not isinstance(file_name, str):
            raise ValueError(f"annotations[{index}] needs a 'file_name' (str) of its PNG, got {file_name!r}.")
        source = Path(masks_path) / file_name
        if not source.is_file():
            raise ValueError(f"annotations[{index}]: the panoptic PNG {str(source)!r} does not exist.")
        with PIL.Image.open(source) as opened:
            image = opened.copy()
    ids = _segment_ids(image, source)
    if tuple(ids.shape) != tuple(original_size):
        raise ValueError(
            f"The panoptic PNG {str(source)!r} is {ids.shape[0]}x{ids.shape[1]} (HxW) but its image is "
            f"{original_size[0]}x{original_size[1]}."
        )
    return ids


def _segment_ids(image: Any, source: Any) -> torch.Tensor:
    """RGB-encoded ids (id = R + 256 G + 256^2 B, panopticapi's `rgb2id`) or a single-channel id map."""
    if isinstance(image, PIL.Image.Image):
        if image.mode in ("P", "PA", "LA"):  # palette colours are the RGB code; gray + alpha is gray
            image = image.convert("L" if image.mode == "LA" else "RGB")
        image = np.array(image)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor) or image.is_floating_point() or image.dtype == torch.bool:
        raise ValueError(
            f"{source!s}: expected a PIL image or an integer array [H, W, 3] (RGB) or [H, W] (ids), got "
            f"{type(image).__name__}{'' if not hasattr(image, 'dtype') else f' of dtype {image.dtype}'}."
        )
    image = image.to(torch.int64).cpu()
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return image[..., 0] + 256 * image[..., 1] + 256 * 256 * image[..., 2]
    raise ValueError(f"{source!s}: expected shape [H, W, 3] or [H, W], got {list(image.shape)}.")


def _resize_target(
    target: dict[str, Any], original_size: tuple[int, int], output_size: tuple[int, int], convert: bool
) -> dict[str, torch.Tensor]:
    """Scale boxes and areas to the resized image, resize masks; boxes to (cx, cy, w, h) in [0, 1] of the
    unpadded resized size when `convert` (the official DETR `Normalize`)."""
    (height, width), (out_height, out_width) = original_size, output_size
    ratio_height, ratio_width = out_height / height, out_width / width
    boxes = target["boxes"] * np.asarray([ratio_width, ratio_height, ratio_width, ratio_height], np.float32)
    boxes = torch.from_numpy(boxes)
    if convert:
        boxes = box_convert(boxes, "xyxy", "cxcywh") / torch.tensor(
            [out_width, out_height, out_width, out_height], dtype=torch.float32
        )
    resized = {
        "image_id": torch.tensor([target["image_id"]]),
        "class_labels": torch.from_numpy(target["class_labels"]),
        "boxes": boxes,
        "area": torch.from_numpy(target["area"] * (ratio_width * ratio_height)),
        "iscrowd": torch.from_numpy(target["iscrowd"]),
        "orig_size": torch.tensor([height, width]),
        "size": torch.tensor([out_height, out_width]),
    }
    if "masks" in target:  # [n, H, W] -> [n, h, w], nearest as transformers' PIL backend (rows, then columns)
        masks = target["masks"]
        if tuple(masks.shape[-2:]) != tuple(output_size):
            masks = masks[:, _nearest_indices(height, out_height)][:, :, _nearest_indices(width, out_width)]
        resized["masks"] = masks
    return resized


def _nearest_indices(size_in: int, size_out: int) -> torch.Tensor:
    """Source index of each output pixel under PIL's NEAREST resize (its fixed-point rule, which torch's
    'nearest-exact' misses by one pixel now and then): read off a resized 1-pixel-high index image."""
    line = PIL.Image.fromarray(np.arange(size_in, dtype=np.int32)[None, :])  # mode "I"
    return torch.from_numpy(np.asarray(line.resize((size_out, 1), PIL.Image.NEAREST))[0].astype(np.int64))
