"""Training labels built straight from the augmented tensors.

A training sample of `DetectionDataset` / `PanopticDataset` (with transforms) carries its annotation as
an `AugmentedAnnotation`: the tensors the augmentation moved (boxes as corners, class ids, crowd flags,
object ids; panoptic: one mask per segment) and the image size. `DetectionCollator` turns it into the
model's labels in one step (`labels`): the filtering, keys, dtypes and values of
`HfDetrImageProcessor`'s annotation conversion without resizing (image_processing_detr_annotations.py),
without its round trip through COCO dicts.

Box conversions on the training path: two, as in the official DETR (`ConvertCocoPolysToMask`, then
`Normalize`): COCO (x, y, w, h) -> corners when a record is loaded (`DetectionDataset._augment`), and
corners -> (cx, cy, w, h) normalized by the image size here. (Before, the labels took five: xywh ->
xyxy tv_tensors -> COCO xywh dicts -> absolute xyxy -> normalized cxcywh.) Panoptic boxes are the
masks' boxes, as the processor makes them.

It is also a read-only mapping in COCO form (detection: {"image_id", "annotations": [{"bbox", ...}]};
panoptic: {"image_id", "segments_info", "panoptic_image"}), built on first access only, so code that
reads a sample's `annotation` as before still can, and the processor's route (resizing collators,
`keep_annotations`) takes it as any COCO annotation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_convert, masks_to_boxes

from ..image_processing_detr_annotations import convert_annotation


class AugmentedAnnotation(Mapping):
    """The augmented annotation of one image (subclasses: detection, panoptic); as a mapping: its COCO
    form."""

    format = "coco_detection"  # the processor's annotation format of the COCO form
    keys_of_coco: tuple[str, ...] = ()

    def __init__(self, image_id: int, size: tuple[int, int]) -> None:
        self.image_id = int(image_id)
        self.size = (int(size[0]), int(size[1]))  # (height, width) of the augmented image
        self._coco: dict[str, Any] | None = None

    def coco(self) -> dict[str, Any]:
        """The COCO form (built once)."""
        if self._coco is None:
            self._coco = self._build_coco()
        return self._coco

    def _build_coco(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.coco()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_of_coco)

    def __len__(self) -> int:
        return len(self.keys_of_coco)

    def labels(
        self,
        index: int,
        padded_size: tuple[int, int] | None,
        annotation_format: str,
        return_masks: bool | None,
    ) -> dict[str, torch.Tensor]:
        """The processor's labels for this annotation (`do_resize=False`, normalized boxes): built from the
        tensors, or, for what only the processor's conversion handles as it should (another `format`, a
        value it refuses, masks asked of detection), by that conversion of the COCO form."""
        direct = self._direct_labels(padded_size, return_masks) if annotation_format == self.format else None
        if direct is not None:
            return direct
        return convert_annotation(
            self.coco(), index, self.size, self.size, padded_size, annotation_format, True, return_masks, None
        )

    def _direct_labels(
        self, padded_size: tuple[int, int] | None, return_masks: bool | None
    ) -> dict[str, torch.Tensor] | None:
        raise NotImplementedError

    def _labels(
        self, class_labels: torch.Tensor, corners: np.ndarray, area: torch.Tensor, iscrowd: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The label dict in the processor's key order, `corners` ([n, 4] float32 x0, y0, x1, y1 pixels)
        as (cx, cy, w, h) normalized by the unpadded image size (the official `Normalize`): the second
        and last box conversion of the training path."""
        height, width = self.size
        x0, y0, x1, y1 = corners.T
        boxes = np.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), axis=-1).reshape(-1, 4)
        boxes /= np.asarray([width, height, width, height], dtype=np.float32)
        return {
            "image_id": torch.tensor([self.image_id]),
            "class_labels": class_labels,
            "boxes": torch.from_numpy(boxes),
            "area": area,
            "iscrowd": iscrowd,
            "orig_size": torch.tensor([height, width]),
            "size": torch.tensor([height, width]),
        }


class AugmentedDetection(AugmentedAnnotation):
    """Augmented boxes [n, 4] float32 (x0, y0, x1, y1 pixels) with their class ids, crowd flags and ids."""

    keys_of_coco = ("image_id", "annotations")

    def __init__(
        self,
        image_id: int,
        size: tuple[int, int],
        boxes: torch.Tensor,
        labels: torch.Tensor,
        iscrowd: torch.Tensor,
        ids: torch.Tensor,
    ) -> None:
        super().__init__(image_id, size)
        self.boxes = boxes.as_subclass(torch.Tensor)  # a plain tensor (not tv_tensors.BoundingBoxes)
        self.class_ids = labels
        self.iscrowd = iscrowd
        self.ids = ids

    def _build_coco(self) -> dict[str, Any]:
        # augmented boxes carry their own area (as the official crop does); only COCO evaluation reads it
        boxes = box_convert(self.boxes, "xyxy", "xywh")
        annotations = [
            {"bbox": box.tolist(), "category_id": int(label), "area": float(box[2] * box[3]), "iscrowd": int(crowd),
             "id": int(i)}
            for box, label, crowd, i in zip(boxes, self.class_ids, self.iscrowd, self.ids)
        ]  # fmt: skip
        return {"image_id": self.image_id, "annotations": annotations}

    def _direct_labels(
        self, padded_size: tuple[int, int] | None, return_masks: bool | None
    ) -> dict[str, torch.Tensor] | None:
        """As the processor's `_detection_target`: crowds dropped, boxes clipped to the image, empty boxes
        dropped; the area is the augmented box's, before clipping. None (the processor's conversion decides)
        for masks, which augmented detection samples have none of, and for values the processor refuses
        (non-finite boxes, negative extents or areas, negative class ids)."""
        # numpy: its operations on a few boxes cost a fraction of torch's
        boxes = self.boxes.numpy().astype(np.float32, copy=False)  # [n, 4]
        sides = boxes[:, 2:] - boxes[:, :2]  # (w, h), as the COCO form's
        area = sides[:, 0] * sides[:, 1]
        class_ids = self.class_ids.numpy().astype(np.int64, copy=False)
        if return_masks or not _acceptable(boxes, sides, area, class_ids):
            return None
        objects = self.iscrowd.numpy() == 0
        height, width = self.size
        corners = boxes[objects].clip(0, np.asarray([width, height, width, height], dtype=np.float32))
        keep = (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
        return self._labels(
            torch.from_numpy(class_ids[objects][keep]),
            corners[keep],
            torch.from_numpy(area[objects][keep]),
            torch.zeros(int(keep.sum()), dtype=torch.int64),
        )


def _acceptable(boxes: np.ndarray, sides: np.ndarray, area: np.ndarray, class_ids: np.ndarray) -> bool:
    """Whether the processor's checks of the COCO form pass: finite (x, y, w, h) with w, h >= 0, a finite
    area and class ids >= 0 (it raises otherwise, naming the object)."""
    finite = np.isfinite(boxes[:, :2]).all() and np.isfinite(sides).all() and np.isfinite(area).all()
    return bool(finite and (sides >= 0).all() and (class_ids >= 0).all())


class AugmentedPanoptic(AugmentedAnnotation):
    """Augmented segment masks [n, H, W] bool (each with pixels) with their class ids, crowd flags and
    segment ids."""

    format = "coco_panoptic"
    keys_of_coco = ("image_id", "segments_info", "panoptic_image")

    def __init__(
        self,
        image_id: int,
        masks: torch.Tensor,
        labels: torch.Tensor,
        iscrowd: torch.Tensor,
        ids: torch.Tensor,
    ) -> None:
        super().__init__(image_id, tuple(masks.shape[-2:]))
        self.masks = masks.as_subclass(torch.Tensor)  # a plain tensor (not tv_tensors.Mask)
        self.class_ids = labels
        self.iscrowd = iscrowd
        self.ids = ids

    def _build_coco(self) -> dict[str, Any]:
        ids = (self.masks.long() * self.ids[:, None, None]).sum(0).numpy()  # [H, W]
        segments = [
            {"id": int(i), "category_id": int(c), "iscrowd": int(crowd)}
            for i, c, crowd in zip(self.ids, self.class_ids, self.iscrowd)
        ]
        return {"image_id": self.image_id, "segments_info": segments, "panoptic_image": ids}

    def _direct_labels(
        self, padded_size: tuple[int, int] | None, return_masks: bool | None
    ) -> dict[str, torch.Tensor] | None:
        """As the processor's `_panoptic_target`: every segment (crowds too), the masks' boxes (last pixel
        index as x1, y1), pixel counts as areas, masks padded as the pixels. None (the processor's
        conversion decides) when a segment id is 0 or repeated (the id map of the COCO form then is not
        one mask per segment) or a class id is negative (which it refuses)."""
        repeated = len(torch.unique(self.ids)) != len(self.ids)
        if repeated or bool((self.ids == 0).any() or (self.class_ids < 0).any()):
            return None
        labels = self._labels(
            self.class_ids.clone(),
            masks_to_boxes(self.masks).numpy(),
            self.masks.flatten(1).sum(1).to(torch.float32),
            self.iscrowd.clone(),
        )
        if return_masks is not False:
            labels["masks"] = self.masks.clone() if padded_size is None else _padded(self.masks, padded_size)
        return labels


def _padded(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks padded bottom-right with False to `size`, as the pixels are padded."""
    padded = torch.zeros(masks.shape[0], *size, dtype=torch.bool)
    padded[:, : masks.shape[1], : masks.shape[2]] = masks
    return padded


def coco_form(annotation: Any) -> Any:
    """An annotation as the processor takes it: an `AugmentedAnnotation`'s COCO form, any other as it is."""
    return annotation.coco() if isinstance(annotation, AugmentedAnnotation) else annotation


__all__ = ["AugmentedAnnotation", "AugmentedDetection", "AugmentedPanoptic", "coco_form"]
