"""`load_panoptic_dataset`: COCO panoptic data from every source in the common panoptic schema.

Sources: the built-in shapes set (no argument), a local COCO panoptic folder, a `save_to_disk` folder,
local parquet/arrow files or a Hub dataset. Hub/parquet panoptic datasets store per image the picture
(`image`), the PNG (`panoptic_mask`, `mask`, `label`, `annotation` or `segmentation`) and COCO's
`segments_info` (a list of {"id", "category_id", "iscrowd", "area", "bbox"}, or a dict of lists); a
segment without `bbox` gets the box of its pixels. Which categories are stuff cannot be read from
such data: name them (`stuff_categories`), else every category counts as a thing. Records whose
image id repeats (a stream: not checked) or whose `width`/`height` disagree with the picture are left
out, counted, as for detection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from datasets import (
    ClassLabel,
    DatasetDict,
    IterableDataset,
    IterableDatasetDict,
)

from .coco_folder import valid_objects
from .coco_panoptic import is_coco_panoptic_folder, load_coco_panoptic_folder
from .detection_sources import PROBLEM, drop_unusable_records, load_source, size_problem
from .folder_reading import SplitRequest
from .panoptic_ids import id_map
from .schema import PANOPTIC_MASK, ObjectChecker, is_panoptic, logger, panoptic_features, set_category_ids

PNG_COLUMNS = (PANOPTIC_MASK, "mask", "label", "annotation", "segmentation")
SEGMENT_KEYS = ("id", "category_id", "iscrowd", "area", "bbox")


def load_panoptic_dataset(
    source: str | os.PathLike | None = None,
    *,
    split: SplitRequest = None,
    streaming: bool = False,
    cache_dir: str | os.PathLike | None = None,
    stuff_categories: Sequence[str | int] | None = None,
    **load_kwargs: Any,
) -> DatasetDict | IterableDatasetDict:
    """Load a panoptic dataset in the common panoptic schema (see `hf_detr.data.schema`).

    Args:
        source: None for the built-in shapes set; a COCO panoptic folder; a `save_to_disk` folder; a
            parquet/arrow file or folder; or a Hub dataset name (`load_dataset` arguments in `load_kwargs`).
        split: load only this split, or these splits (a list), or the splits a function picks from the
            dataset's split names; each is checked before anything is converted (the result is a
            DatasetDict of those splits).
        streaming: return an IterableDatasetDict that yields the same records.
        cache_dir: where converted COCO folders are cached (default `$HF_HOME/hf_detr`).
        stuff_categories: names or category ids of the stuff classes of a Hub/parquet source.
    """

    def normalize(dataset: Any, name: str) -> Any:
        return dataset if is_panoptic(dataset) else normalize_panoptic_split(dataset, name, stuff_categories)

    return load_source(
        source, split, streaming, cache_dir, load_kwargs, is_coco_panoptic_folder, load_coco_panoptic_folder,
        normalize,
    )  # fmt: skip


def normalize_panoptic_split(
    dataset: Any, name: str, stuff_categories: Sequence[str | int] | None = None
) -> Any:
    """Bring one split of a Hub-style panoptic dataset to the common panoptic schema."""
    columns = list(dataset.features or [])
    png_column = next((c for c in PNG_COLUMNS if c in columns), None)
    if "image" not in columns or "segments_info" not in columns or png_column is None:
        raise ValueError(
            f"Split {name!r} is not a panoptic dataset: expected an 'image' column, a PNG column (one of "
            f"{list(PNG_COLUMNS)}) and 'segments_info', found {columns}."
        )
    category_ids, names = _categories(dataset, name)
    stuff = {str(s) for s in stuff_categories or []}
    isthing = [str(cid) not in stuff and n not in stuff for cid, n in zip(category_ids, names)]
    if not stuff:
        logger.info("Split %r: no stuff categories named, so every category counts as a thing.", name)
    convert = _PanopticRecordConverter({cid: index for index, cid in enumerate(category_ids)}, png_column)
    features = panoptic_features(names)
    drop = [c for c in columns if c not in features and c != png_column]
    kwargs = {} if isinstance(dataset, IterableDataset) else {"desc": f"Normalizing {name}"}
    converted = dataset.map(convert, with_indices=True, remove_columns=drop, **kwargs)
    if isinstance(dataset, IterableDataset):
        converted = converted.filter(lambda record: not record[PROBLEM]).remove_columns(PROBLEM)
    else:
        converted = drop_unusable_records(converted, f"Split {name!r}")
    if png_column != PANOPTIC_MASK:
        converted = converted.rename_column(png_column, PANOPTIC_MASK)
    converted = converted.cast(features)
    if not isinstance(dataset, IterableDataset):
        convert.checker.report(f"Split {name!r}")
    return set_category_ids(converted, category_ids, isthing=isthing)


def _categories(dataset: Any, name: str) -> tuple[list[int], list[str]]:
    """(category ids, names): a ClassLabel's, else the ids that occur (read from `segments_info` alone)."""
    feature = dataset.features["segments_info"]
    feature = getattr(feature, "feature", feature)
    label = feature.get("category_id") if isinstance(feature, Mapping) else None
    label = getattr(label, "feature", label)
    if isinstance(label, ClassLabel):
        return list(range(label.num_classes)), list(label.names)
    found: set[int] = set()
    records = dataset.select_columns(["segments_info"]) if hasattr(dataset, "select_columns") else dataset
    for number, record in enumerate(records):
        segments = _segments(record["segments_info"])
        found.update(int(s["category_id"]) for s in segments if s.get("category_id") is not None)
        if isinstance(dataset, IterableDataset) and number >= 1000:
            break  # a stream is sampled, not read to its end
    if not found:
        raise ValueError(f"Split {name!r}: no segment has a 'category_id'.")
    ids = sorted(found)
    return ids, [f"class_{i}" for i in ids]


def _segments(segments_info: Any) -> list[dict[str, Any]]:
    """`segments_info` as a list of dicts (Hub datasets store a list of dicts or a dict of lists)."""
    if isinstance(segments_info, Mapping):
        count = len(segments_info.get("id") or [])
        return [
            {k: segments_info[k][i] for k in segments_info if segments_info[k] is not None}
            for i in range(count)
        ]
    return [dict(s) for s in segments_info or []]


class _PanopticRecordConverter:
    """One Hub-style panoptic record -> the common schema, unusable segments dropped and counted."""

    def __init__(self, label_of_category: Mapping[int, int], png_column: str) -> None:
        self.png_column = png_column
        self.checker = ObjectChecker(label_of_category)

    def __call__(self, record: Mapping[str, Any], index: int) -> dict[str, Any]:
        image = record["image"]
        stored = (record["width"], record["height"]) if record.get("width") and record.get("height") else None
        problem = size_problem(stored, (image.width, image.height))
        width, height = stored or (image.width, image.height)
        segments = [{k: v for k, v in s.items() if v is not None} for s in _segments(record["segments_info"])]
        ids = None
        for segment in segments:
            if "bbox" not in segment:  # the box of its pixels
                ids = id_map(record[self.png_column], self.png_column) if ids is None else ids
                segment["bbox"] = _box_of(ids == segment.get("id"))
        objects = valid_objects(segments if not problem else [], self.checker, width, height, require_id=True)
        image_id = record.get("image_id", record.get("id"))
        return {"image_id": int(image_id) if image_id is not None else index, "width": int(width),
                "height": int(height), "objects": objects, PROBLEM: problem}  # fmt: skip


def _box_of(pixels: np.ndarray) -> list[float] | None:
    """COCO (x, y, w, h) box of a boolean mask, None when it is empty."""
    ys, xs = np.nonzero(pixels)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


__all__ = ["load_panoptic_dataset", "normalize_panoptic_split"]
