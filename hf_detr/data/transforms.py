"""The paper's augmentation with `torchvision.transforms.v2` (boxes move with the image).

Train (official `make_coco_transforms("train")`): horizontal flip (p=0.5); then with p=0.5 either a
resize of the shorter side to one of 480..800 (step 32, longer side at most 1333), or a resize to
400/500/600, a random crop of 384..600 px per side and the same multi-scale resize; boxes that fall
out are dropped (`SanitizeBoundingBoxes`). Validation resizes to 800/1333 (the image processor does
it). All sizes are multiplied by one `scale` for datasets of small images.

Extreme aspect ratios (a 20000x10 strip) never fail: every resize keeps each side at least 1 pixel,
as the image processor does, and the resize before the crop keeps the longer side at most
4 x 1333 (the paper's leaves it unbounded: a 20000x10 image would become 800000x400 pixels first;
only images over about 9:1 are affected).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

TRAIN_SHORTER_SIDES = tuple(range(480, 801, 32))
CROP_RESIZE_SIDES = (400, 500, 600)
CROP_SIZE = (384, 600)
MAX_SIZE = 1333
PRE_CROP_MAX_SIZE = 4 * MAX_SIZE  # bounds the pre-crop resize of extreme aspect ratios only
VAL_SHORTER_SIDE = 800


class RandomSizeCrop(v2.Transform):
    """Crop a random region whose width and height are drawn in [min_size, min(side, max_size)]
    (the official DETR `RandomSizeCrop`; torchvision has no equivalent)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"RandomSizeCrop needs 0 < min_size <= max_size, got {min_size}, {max_size}.")
        self.min_size = min_size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        crop_width = int(torch.randint(min(self.min_size, width), min(width, self.max_size) + 1, ()))
        crop_height = int(torch.randint(min(self.min_size, height), min(height, self.max_size) + 1, ()))
        top = int(torch.randint(0, height - crop_height + 1, ()))
        left = int(torch.randint(0, width - crop_width + 1, ()))
        return {"top": top, "left": left, "height": crop_height, "width": crop_width}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class ShortestSize(v2.RandomShortestSize):
    """`v2.RandomShortestSize` (the shorter side drawn from `min_size`, the longer at most `max_size`)
    that keeps each side at least 1 pixel: at an extreme aspect ratio torchvision's rounds the shorter
    side to 0 and the resize fails. The same draws as torchvision's, so seeded samples are unchanged."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        min_size = self.min_size[int(torch.randint(len(self.min_size), ()))]
        ratio = min_size / min(height, width)
        if self.max_size is not None:
            ratio = min(ratio, self.max_size / max(height, width))
        return {"size": (max(1, int(height * ratio)), max(1, int(width * ratio)))}


def _scaled(sizes, scale: float) -> list[int]:
    return [max(1, round(size * scale)) for size in sizes]


AUGMENTATIONS = ("paper", "flip")


def detr_train_transforms(scale: float = 1.0, policy: str = "paper") -> v2.Transform:
    """The paper's training augmentation, every size multiplied by `scale`.

    `policy="flip"` keeps only the horizontal flip and the evaluation resize (for short runs, where
    the multi-scale crops make the task harder than the time allows to learn).
    Call it on a dict with `image` (PIL or tensor), `boxes` (`tv_tensors.BoundingBoxes`) and the
    per-box tensors `labels`, `area`, `iscrowd`, which are dropped with their boxes.
    """
    if policy not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation policy {policy!r}; expected one of {AUGMENTATIONS}.")
    max_size = round(MAX_SIZE * scale)
    if policy == "flip":
        return v2.Compose(
            [
                v2.RandomHorizontalFlip(p=0.5),
                ShortestSize([round(VAL_SHORTER_SIDE * scale)], max_size=max_size),
                v2.ClampBoundingBoxes(),
                v2.SanitizeBoundingBoxes(min_size=1, labels_getter=_per_box_fields),
            ]
        )
    multi_scale = ShortestSize(_scaled(TRAIN_SHORTER_SIDES, scale), max_size=max_size)
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomChoice(
                [
                    multi_scale,
                    v2.Compose(
                        [
                            ShortestSize(_scaled(CROP_RESIZE_SIDES, scale), round(PRE_CROP_MAX_SIZE * scale)),
                            RandomSizeCrop(*_scaled(CROP_SIZE, scale)),
                            ShortestSize(_scaled(TRAIN_SHORTER_SIDES, scale), max_size=max_size),
                        ]
                    ),
                ]
            ),
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(min_size=1, labels_getter=_per_box_fields),
        ]
    )


def detr_val_size(scale: float = 1.0) -> dict[str, int]:
    """The evaluation resize as an image-processor `size`: shorter side 800, longer at most 1333."""
    return {"shortest_edge": round(VAL_SHORTER_SIDE * scale), "longest_edge": round(MAX_SIZE * scale)}


def _per_box_fields(sample: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    return tuple(sample[key] for key in ("labels", "area", "iscrowd", "ids") if key in sample)


__all__ = ["RandomSizeCrop", "ShortestSize", "detr_train_transforms", "detr_val_size"]
