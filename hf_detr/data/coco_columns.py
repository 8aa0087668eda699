"""A COCO instances json read column by column: numpy arrays of the boxes, not a Python object per box.

`read_instances_columns` decodes the file with msgspec against the form COCO's own files have (an
image: an integer `id`, a string `file_name`, numbers `width`/`height`; an annotation: integer
`image_id` and `category_id`, a `bbox` of 4 numbers, optional integer `id`, number `area`, integer
`iscrowd`). The annotations are first kept as raw JSON slices and decoded in batches into flat arrays,
so the peak is the file's bytes plus ~50 bytes a box (pycocotools and `json` hold ~1.3 KB a box). A
batch with any other entry (a string id, a bbox of 5, `true`, NaN) is decoded as plain JSON and its
entries are kept as they are (`AnnotationColumns.odd`), for the full per-object checks; a file whose
images, categories or top level are not in that form is not read here (None): the caller reads it
with `json` and checks every field (`coco_json`). Either way the split converts to the same records.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np

from .schema import logger

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
BATCH = 65_536  # annotations decoded at a time: a few MB of structs


class ImageEntry(msgspec.Struct, gc=False):
    id: Int64
    file_name: str
    width: int | float | None = None
    height: int | float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "file_name": self.file_name, "width": self.width, "height": self.height}


class AnnotationEntry(msgspec.Struct, gc=False):
    image_id: Int64
    category_id: Int64
    bbox: tuple[float, float, float, float]
    id: Int64 | None = None
    area: float | None = None
    iscrowd: Int64 | None = None


class InstancesFile(msgspec.Struct, gc=False):
    images: list[ImageEntry]
    annotations: list[msgspec.Raw]
    categories: list[Any]


ARRAYS = ("image_ids", "category_ids", "boxes", "ids", "has_id", "areas", "crowds", "has_crowd")


@dataclass
class AnnotationColumns:
    """Every annotation of a json, in file order: typed rows as arrays (`boxes` [n, 4] x, y, w, h;
    `ids`, `areas`, `crowds`, with `has_id`, NaN areas, `has_crowd` where missing) and the others as
    they are in `odd` (row -> the decoded JSON value), their array entries unused."""

    image_ids: np.ndarray  # [n] int64 (odd rows: 0)
    category_ids: np.ndarray  # [n] int64
    boxes: np.ndarray  # [n, 4] float64
    ids: np.ndarray  # [n] int64
    has_id: np.ndarray  # [n] bool
    areas: np.ndarray  # [n] float64, NaN: missing or null
    crowds: np.ndarray  # [n] int64
    has_crowd: np.ndarray  # [n] bool
    odd: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def from_batches(cls, batches: Iterable[list[Any]]) -> AnnotationColumns:
        """Columns from batches of annotations: typed entries (`AnnotationEntry`) go into the arrays,
        the values of any other batch are kept as they are (`odd`)."""
        chunks: list[dict[str, Any]] = []
        odd: dict[int, Any] = {}
        rows = 0
        for batch in batches:
            if all(type(entry) is AnnotationEntry for entry in batch):
                chunks.append(typed_chunk(batch))
            else:
                chunks.append({"rows": len(batch)})
                odd.update((rows + offset, value) for offset, value in enumerate(batch))
            rows += len(batch)
        columns = {}
        for name in ARRAYS:  # a column at a time, its chunks released as it is joined
            parts = [chunk.pop(name, None) for chunk in chunks]
            parts = [empty_part(name, c["rows"]) if p is None else p for p, c in zip(parts, chunks)]
            columns[name] = np.concatenate(parts) if parts else empty_part(name, 0)
        return cls(**columns, odd=odd)

    def __len__(self) -> int:
        return len(self.image_ids)

    def release(self) -> None:
        """Drop every row (the arrays' memory goes back at once, whoever else holds this object)."""
        for name in ARRAYS:
            setattr(self, name, getattr(self, name)[:0].copy())
        self.odd = {}

    def typed(self) -> np.ndarray:
        """Which rows are typed (not odd)."""
        typed = np.ones(len(self), bool)
        typed[list(self.odd)] = False
        return typed

    def drop(self, rows: list[int]) -> None:
        """Remove `rows` (odd rows: entries that are not JSON objects)."""
        keep = np.ones(len(self), bool)
        keep[rows] = False
        for name in ARRAYS:
            setattr(self, name, getattr(self, name)[keep])
        new_row = np.cumsum(keep) - 1
        self.odd = {int(new_row[row]): value for row, value in self.odd.items() if keep[row]}

    def entry(self, row: int) -> Any:
        """Row `row` as the JSON object it was (an odd row's own value)."""
        if row in self.odd:
            return self.odd[row]
        annotation = {
            "image_id": int(self.image_ids[row]),
            "category_id": int(self.category_ids[row]),
            "bbox": [float(v) for v in self.boxes[row]],
        }
        if self.has_id[row]:
            annotation["id"] = int(self.ids[row])
        if not math.isnan(self.areas[row]):
            annotation["area"] = float(self.areas[row])
        if self.has_crowd[row]:
            annotation["iscrowd"] = int(self.crowds[row])
        return annotation


def typed_chunk(entries: list[AnnotationEntry]) -> dict[str, Any]:
    """The arrays of typed entries (`AnnotationColumns`' columns)."""
    ids, crowds = [a.id for a in entries], [a.iscrowd for a in entries]
    return {
        "rows": len(entries),
        "image_ids": np.array([a.image_id for a in entries], np.int64),
        "category_ids": np.array([a.category_id for a in entries], np.int64),
        "boxes": np.array([a.bbox for a in entries], np.float64).reshape(-1, 4),
        "ids": np.array([0 if i is None else i for i in ids], np.int64),
        "has_id": np.array([i is not None for i in ids], bool),
        "areas": np.array([math.nan if a.area is None else a.area for a in entries], np.float64),
        "crowds": np.array([0 if c is None else c for c in crowds], np.int64),
        "has_crowd": np.array([c is not None for c in crowds], bool),
    }


def empty_part(name: str, rows: int) -> np.ndarray:
    """The `name` column of `rows` odd rows (unused: NaN areas, zeros)."""
    if name == "boxes":
        return np.zeros((rows, 4))
    if name == "areas":
        return np.full(rows, np.nan)
    return np.zeros(rows, bool if name.startswith("has_") else np.int64)


def odd_columns(annotations: list[Any]) -> AnnotationColumns:
    """Annotations read as plain JSON values (`coco_json`) as columns whose every row is odd."""
    return AnnotationColumns.from_batches([annotations] if annotations else [])


@dataclass
class InstancesColumns:
    images: list[dict[str, Any]]
    annotations: AnnotationColumns
    categories: list[Any]


STREAM_BYTES = 1 << 30  # larger jsons are streamed (HF_DETR_JSON_STREAM_BYTES): never all in memory


def stream_bytes() -> int:
    """The json size past which a file is streamed: `HF_DETR_JSON_STREAM_BYTES`, else `STREAM_BYTES`."""
    text = os.environ.get("HF_DETR_JSON_STREAM_BYTES", "").strip()
    if not text:
        return STREAM_BYTES
    if not text.isdigit():
        raise ValueError(f"HF_DETR_JSON_STREAM_BYTES must be a whole number of bytes, got {text!r}.")
    return int(text)


def read_instances_columns(path: Path) -> InstancesColumns | None:
    """The json at `path` as columns, or None when its top level, images or categories are not in
    COCO's form (the caller then reads it with every field checked). A file larger than
    `HF_DETR_JSON_STREAM_BYTES` (1 GiB) is streamed (`stream_instances_columns`)."""
    if path.stat().st_size > stream_bytes():
        return stream_instances_columns(path)
    data = path.read_bytes()
    try:
        top = msgspec.json.decode(data, type=InstancesFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        logger.debug("%s: read field by field (%s).", path, error)
        return None
    raws, top.annotations = top.annotations, []
    del data  # the raw slices keep the buffer alive until the batches below are decoded
    try:
        annotations = AnnotationColumns.from_batches(raw_batches(raws))
    except NotPythonJson:
        return None
    images = [image.as_dict() for image in top.images]  # the checks of an image read it as a mapping
    return InstancesColumns(images, annotations, top.categories)


class NotPythonJson(ValueError):
    """A part of the json that Python's `json` cannot read (nested too deeply, say)."""


def raw_batches(raws: list[msgspec.Raw]) -> Iterator[list[Any]]:
    """The raw annotations a batch at a time: typed entries (`AnnotationEntry`), or the batch's JSON
    values as `json` reads them (NaN and all) when one of them is not in COCO's form."""
    decoder = msgspec.json.Decoder(list[AnnotationEntry])
    for start in range(0, len(raws), BATCH):
        text = b"[" + b",".join(raws[start : start + BATCH]) + b"]"
        try:
            yield decoder.decode(text)
        except msgspec.ValidationError:
            try:
                yield json.loads(text)
            except (ValueError, RecursionError) as error:
                raise NotPythonJson(str(error)) from None


def stream_instances_columns(path: Path) -> InstancesColumns | None:
    """`read_instances_columns` for a json too large to hold: three passes of ijson (categories,
    images, annotations a batch at a time), so memory holds the columns, not the text or its objects.
    None when it is not JSON or its images or categories are not in COCO's form."""
    import ijson

    logger.info("%s: %.1f GB, read as a stream (three passes).", path, path.stat().st_size / 1e9)
    try:
        with open(path, "rb") as handle:
            categories = list(ijson.items(handle, "categories.item", use_float=True))
        with open(path, "rb") as handle:
            entries = batched(ijson.items(handle, "images.item", use_float=True))
            images = [
                image.as_dict() for batch in entries for image in msgspec.convert(batch, list[ImageEntry])
            ]
        with open(path, "rb") as handle:
            entries = batched(ijson.items(handle, "annotations.item", use_float=True))
            annotations = AnnotationColumns.from_batches(typed_batches(entries))
    except (ijson.JSONError, msgspec.ValidationError, UnicodeDecodeError) as error:
        logger.debug("%s: read field by field (%s).", path, error)
        return None
    return InstancesColumns(images, annotations, categories) if categories else None


def batched(values: Iterable[Any]) -> Iterator[list[Any]]:
    """`values` in lists of `BATCH`."""
    batch: list[Any] = []
    for value in values:
        batch.append(value)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def typed_batches(batches: Iterable[list[Any]]) -> Iterator[list[Any]]:
    """Each batch of JSON values as typed entries, or as it is when one is not in COCO's form."""
    for batch in batches:
        try:
            yield msgspec.convert(batch, list[AnnotationEntry])
        except msgspec.ValidationError:
            yield batch


@dataclass
class ImageObjects:
    """The objects of each kept image, flat: image i's are rows offsets[i]:offsets[i + 1]."""

    offsets: np.ndarray  # [images + 1] int64
    ids: np.ndarray  # [m] int64
    areas: np.ndarray  # [m] float64
    boxes: np.ndarray  # [m, 4] float64 x, y, w, h
    categories: np.ndarray  # [m] int64 class ids
    crowds: np.ndarray  # [m] int64


# (entry, width, height) -> (id or None, area, box, class id, iscrowd), or None: the per-object checks
SlowCheck = Callable[[Any, float, float], "tuple[int | None, float, list[float], int, int] | None"]


def image_positions(kept_ids: np.ndarray, image_ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each annotation's place among the kept images (`kept_ids`, unique), -1 when its image is not
    kept or its `image_id` not `valid`."""
    if not len(kept_ids):
        return np.full(len(image_ids), -1, np.int64)
    order = np.argsort(kept_ids)
    found = np.searchsorted(kept_ids[order], image_ids).clip(max=len(kept_ids) - 1)
    return np.where(valid & (kept_ids[order][found] == image_ids), order[found], -1)


def objects_of_images(
    annotations: AnnotationColumns,
    positions: np.ndarray,
    sizes: np.ndarray,
    known: Mapping[int, int],
    slow_check: SlowCheck,
) -> ImageObjects:
    """The usable objects of each kept image, in file order within an image. `positions` [n]: each
    annotation's kept image (-1: none), `sizes` [images, 2]: their (width, height), `known`: category
    id -> class id. A typed row of COCO's plain form (a known category, a box of positive size inside
    the image, `area` >= 0 and `iscrowd` 0/1 or missing) is taken here, column-wise; every other row
    goes through `slow_check`, one by one. An object without an id is numbered by its place among its
    image's objects. `annotations` is consumed: its arrays are released once read."""
    rows = np.flatnonzero(positions >= 0)
    plain = annotations.typed()[rows]
    plain &= plain_rows(annotations, rows, sizes[positions[rows]], known)
    fast, slow = rows[plain], rows[~plain]
    del rows, plain
    category_ids = np.array(sorted(typed_ids(known)), np.int64)
    class_of = np.array([known[c] for c in category_ids.tolist()], np.int64)
    boxes = annotations.boxes[fast]
    areas = annotations.areas[fast]
    kept = {
        "row": fast,
        "ids": annotations.ids[fast],
        "has_id": annotations.has_id[fast],
        "areas": np.where(np.isnan(areas) | (areas == 0), boxes[:, 2] * boxes[:, 3], areas),
        "boxes": boxes,
        "categories": class_of[np.searchsorted(category_ids, annotations.category_ids[fast])],
        "crowds": np.where(annotations.has_crowd[fast], annotations.crowds[fast], 0),
    }
    del boxes, areas
    extra = checked_slow_rows(annotations, slow, positions, sizes, slow_check)
    annotations.release()
    if len(extra["row"]):
        kept = {key: np.concatenate([kept[key], extra[key]]) for key in kept}
    return grouped_objects(kept, positions, len(sizes))


def typed_ids(known: Mapping[int, int]) -> list[int]:
    """The category ids a typed row can have (int64: a larger id is the per-object checks' to find)."""
    return [c for c in known if fits_int64(c)]


def fits_int64(value: int) -> bool:
    """Whether an integer id fits the int64 columns (JSON integers have no limit)."""
    return -(2**63) <= value < 2**63


def plain_rows(
    annotations: AnnotationColumns, rows: np.ndarray, sizes: np.ndarray, known: Mapping[int, int]
) -> np.ndarray:
    """Which of `rows` are of COCO's plain form in an image of `sizes` [len(rows), 2]: the rows
    `coco_folder.plain_object` takes as they are. One column at a time (a 25M-box json's rows)."""
    plain = np.isin(annotations.category_ids[rows], np.array(typed_ids(known), np.int64))
    for axis in (0, 1):  # x, w against the width; y, h against the height
        start, extent = annotations.boxes[rows, axis], annotations.boxes[rows, axis + 2]
        plain &= (start >= 0) & (extent > 0) & (start + extent <= sizes[:, axis])
        del start, extent
    areas = annotations.areas[rows]
    plain &= np.isnan(areas) | (areas >= 0)
    del areas
    crowds = annotations.crowds[rows]
    return plain & (~annotations.has_crowd[rows] | (crowds == 0) | (crowds == 1))


def checked_slow_rows(
    annotations: AnnotationColumns,
    rows: np.ndarray,
    positions: np.ndarray,
    sizes: np.ndarray,
    slow_check: SlowCheck,
) -> dict[str, np.ndarray]:
    """The objects of `rows` that `slow_check` keeps, as the columns of `objects_of_images`."""
    kept: dict[str, list] = {
        key: [] for key in ("row", "ids", "has_id", "areas", "boxes", "categories", "crowds")
    }
    for row in rows.tolist():
        width, height = sizes[positions[row]].tolist()
        checked = slow_check(annotations.entry(row), width, height)
        if checked is None:
            continue
        object_id, area, box, category, crowd = checked
        for key, value in zip(kept, (row, object_id or 0, object_id is not None, area, box, category, crowd)):
            kept[key].append(value)
    types = {"row": np.int64, "ids": np.int64, "has_id": bool, "areas": np.float64, "boxes": np.float64,
             "categories": np.int64, "crowds": np.int64}  # fmt: skip
    out = {key: np.array(values, types[key]) for key, values in kept.items()}
    out["boxes"] = out["boxes"].reshape(-1, 4)
    return out


def grouped_objects(kept: dict[str, np.ndarray], positions: np.ndarray, num_images: int) -> ImageObjects:
    """`kept` (objects of any rows, its arrays consumed) ordered by image, then by row; an object
    without an id is numbered by its place among its image's objects."""
    rows = kept.pop("row")
    image = positions[rows]
    order = np.lexsort((rows, image))
    del rows
    image = image[order]
    counts = np.bincount(image, minlength=num_images)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    for key in kept:  # one array at a time: a 25M-box json's objects are reordered in place of two copies
        kept[key] = kept[key][order]
    place = np.arange(len(order)) - offsets[image]
    ids = np.where(kept.pop("has_id"), kept.pop("ids"), place)
    return ImageObjects(offsets, ids, kept["areas"], kept["boxes"], kept["categories"], kept["crowds"])


__all__ = [
    "AnnotationColumns",
    "ImageObjects",
    "InstancesColumns",
    "fits_int64",
    "image_positions",
    "objects_of_images",
    "odd_columns",
    "read_instances_columns",
]
