"""Panoptic segment id maps: integer ids [H, W], or COCO panoptic's RGB code (id = R + 256 G + 256^2 B)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def id_map(value: Any, name: str = "segmentation") -> np.ndarray:
    """A segment id map as int64 [H, W], from ids [H, W] or panopticapi's RGB code [H, W, 3]
    (id = R + 256 G + 256^2 B): a numpy array, a torch tensor or a PIL image."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    elif not isinstance(value, np.ndarray) and hasattr(value, "mode") and hasattr(value, "size"):
        value = np.asarray(value.convert("RGB") if value.mode in ("P", "RGBA", "CMYK") else value)
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.integer):
        kind = type(value).__name__ + (f" of dtype {value.dtype}" if hasattr(value, "dtype") else "")
        raise TypeError(f"{name}: expected an integer id map [H, W] or RGB [H, W, 3], got {kind}.")
    if value.ndim == 3 and value.shape[-1] in (3, 4):
        rgb = value[..., :3].astype(np.int64)
        return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    if value.ndim != 2:
        raise ValueError(
            f"{name}: expected an id map [H, W] or RGB [H, W, 3], got shape {list(value.shape)}."
        )
    return value.astype(np.int64, copy=False)


__all__ = ["id_map"]
