"""`load_detection_dataset`: every source brought to the common schema.

Sources: the built-in synthetic set (no argument, or "builtin:shapes-new-v1" for the fine-tuning
set), a local COCO, YOLO or Pascal VOC folder (the layout
detected: hf_detr.data.folder_layouts), a `save_to_disk` folder, local parquet/arrow files, or a Hub dataset name. Hub detection datasets differ in their box format
(`detection-datasets/coco` stores x0, y0, x1, y1; `cppe-5` COCO's x, y, w, h), so `bbox_format` is
explicit and checked against the data. Records with a repeated image id or a size that disagrees with
the image are left out with a counted warning (`normalize_split`); objects follow the one rule of every
loader (`ObjectChecker`). A folder whose splits share image files (by real path) is a warning with the
count.
"""

from __future__ import annotations

import io
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    IterableDataset,
    IterableDatasetDict,
    Value,
    load_dataset,
    load_from_disk,
)

from .folder_layouts import is_detection_folder, load_detection_folder
from .folder_reading import (
    SplitRequest,
    image_header,
    log_skipped_images,
    repeated,
    report_shared_images,
    requested_splits,
)
from .schema import (
    MAX_CLASSES,
    ObjectChecker,
    category_ids,
    detection_features,
    logger,
    set_category_ids,
)

BoxFormat = Literal["xywh", "xyxy"]
# how many records per split the box-format check reads before anything else happens
FORMAT_CHECK_RECORDS = 200
CATEGORY_KEYS = ("category", "category_id", "label", "labels")


def load_detection_dataset(
    source: str | os.PathLike | None = None,
    *,
    split: SplitRequest = None,
    bbox_format: BoxFormat = "xywh",
    streaming: bool = False,
    cache_dir: str | os.PathLike | None = None,
    **load_kwargs: Any,
) -> DatasetDict | IterableDatasetDict:
    """Load a detection dataset in the common schema (see `hf_detr.data.schema`).

    Args:
        source: None for the built-in synthetic shapes set ("builtin:NAME" for another built-in set);
            a local COCO (`annotations/instances_{split}.json` or Roboflow's
            `{split}/_annotations.coco.json` + images), YOLO (`images/` + `labels/` + `data.yaml`) or Pascal VOC (`Annotations/` + `JPEGImages/`) folder; a `save_to_disk` folder;
            a parquet/arrow file or folder; or a Hub dataset name (`load_dataset` arguments go in
            `load_kwargs`).
        split: load only this split, or these splits (a list), or the splits a function picks from the
            dataset's split names; each is checked before anything is converted (the result is a
            DatasetDict of those splits).
        bbox_format: the box format of a Hub/parquet source, "xywh" (COCO) or "xyxy"; checked.
        streaming: return an IterableDatasetDict that yields the same records.
        cache_dir: where converted folders are cached (default `$HF_HOME/hf_detr`).
    """
    if bbox_format not in ("xywh", "xyxy"):
        raise ValueError(f"`bbox_format` must be 'xywh' or 'xyxy', got {bbox_format!r}.")
    return load_source(
        source, split, streaming, cache_dir, load_kwargs, is_detection_folder, load_detection_folder,
        lambda dataset, name: normalize_split(dataset, bbox_format, name),
    )  # fmt: skip


BUILTIN_PREFIX = "builtin:"  # "builtin:NAME" names a built-in set (hf_detr.data.builtin.BUILTIN_SETS)


def load_source(
    source: str | os.PathLike | None,
    split: SplitRequest,
    streaming: bool,
    cache_dir: str | os.PathLike | None,
    load_kwargs: Mapping[str, Any],
    is_folder: Callable[[Path], bool],
    load_folder: Callable[[Path, SplitRequest, Any], DatasetDict],
    normalize: Callable[[Any, str], Any],
) -> DatasetDict | IterableDatasetDict:
    """The dispatch of every loader: the built-in set (None, or "builtin:NAME"), a COCO-style folder (`is_folder`, read by
    `load_folder(path, split, cache_dir)`), a `save_to_disk` folder, local parquet/arrow files or a Hub
    name; all but the folder go through `normalize(split_dataset, split_name)`."""
    if source is None or (isinstance(source, str) and source.startswith(BUILTIN_PREFIX)):
        from .builtin import NAME, builtin_dataset_folder

        source = builtin_dataset_folder(name=source[len(BUILTIN_PREFIX) :] if source else NAME)
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if path is not None and path.is_dir() and is_folder(path):
        dataset = load_folder(path, split, cache_dir)
        report_shared_images(dataset, path)
        return _to_iterable(dataset) if streaming else dataset
    if path is not None and path.is_dir() and _is_saved_dataset(path):
        raw = load_from_disk(str(path))
        raw = raw if isinstance(raw, DatasetDict) else DatasetDict({"train": raw})
        raw = _select_split(raw, split, str(path))
        dataset = DatasetDict({name: normalize(ds, name) for name, ds in raw.items()})
        return _to_iterable(dataset) if streaming else dataset
    if path is not None and path.exists():
        raw = _load_files(path, streaming)
    else:
        raw = load_dataset(str(source), streaming=streaming, **load_kwargs)
    raw = _select_split(raw, split, str(source))
    normalized = {name: normalize(ds, name) for name, ds in raw.items()}
    return IterableDatasetDict(normalized) if streaming else DatasetDict(normalized)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()


def _load_files(path: Path, streaming: bool) -> DatasetDict | IterableDatasetDict:
    """Local parquet or arrow files: one file (split "train"), or a folder that `load_dataset` reads."""
    if path.is_file():
        builder = {".parquet": "parquet", ".arrow": "arrow"}.get(path.suffix)
        if builder is None:
            raise ValueError(
                f"{path}: expected a .parquet or .arrow file, a COCO folder or a dataset folder."
            )
        return load_dataset(builder, data_files={"train": str(path)}, streaming=streaming)
    return load_dataset(str(path), streaming=streaming)


def _select_split(raw: Mapping[str, Any], split: SplitRequest, source: str) -> Mapping[str, Any]:
    return {name: raw[name] for name in requested_splits(raw, split, source)}


def _to_iterable(dataset: DatasetDict) -> IterableDatasetDict:
    iterable = IterableDatasetDict({name: ds.to_iterable_dataset() for name, ds in dataset.items()})
    for name, ds in iterable.items():
        ds.info.description = dataset[name].info.description  # category ids (and things) travel along
    return iterable


# ---------------------------------------------------------------------------------------------------
# Hub / parquet records -> the common schema
# ---------------------------------------------------------------------------------------------------
def normalize_split(dataset: Dataset | IterableDataset, bbox_format: BoxFormat, name: str):
    """Bring one split of a Hub-style detection dataset to the common schema, checking its boxes.

    Records are left out, counted and reported (one warning naming the first image ids) when their
    `image_id` repeats (every record of that id: whose boxes are whose cannot be told; a stream is not
    checked, as it has no end to count to), or when their `width`/`height` disagree with the image's
    header (read from the stored bytes, not decoded; not rescaled), or neither gives a size. An error
    when no record is left."""
    features = dataset.features
    if features is None or "objects" not in features or "image" not in features:
        found = sorted(features) if features is not None else "unknown columns"
        raise ValueError(
            f"Split {name!r} is not an object detection dataset: expected an 'image' column and an "
            f"'objects' column with 'bbox' and 'category', found {found}."
        )
    objects = features["objects"]
    objects = objects.feature if hasattr(objects, "feature") and not isinstance(objects, dict) else objects
    category_key = next((k for k in CATEGORY_KEYS if k in objects), None)
    if "bbox" not in objects or category_key is None:
        raise ValueError(
            f"Split {name!r}: 'objects' must have 'bbox' and 'category', found {sorted(objects)}."
        )
    category_feature = objects[category_key]
    category_feature = getattr(category_feature, "feature", category_feature)
    if isinstance(category_feature, ClassLabel):
        names = list(category_feature.names)
    else:
        names = _integer_class_names(dataset, category_key, name)
    dataset = _undecoded_images(dataset)  # the checks read image headers, never the pixels
    check_box_format(dataset, bbox_format, name)
    target_features = detection_features(names)
    ids = category_ids(dataset) if _has_category_ids(dataset) else list(range(len(names)))
    convert = _RecordConverter(bbox_format, category_key, len(names), name)
    columns = [c for c in (dataset.column_names or []) if c not in target_features]
    with_problem = Features({**target_features, PROBLEM: Value("string")})
    if isinstance(dataset, IterableDataset):
        convert.report_as_it_goes = True  # a stream has no end to count to
        converted = dataset.map(convert, with_indices=True, remove_columns=columns, features=with_problem)
        converted = converted.filter(lambda record: not record[PROBLEM]).remove_columns(PROBLEM)
    else:
        # count on the light columns (no image decoding): the map below may come from datasets' cache
        counter = _RecordConverter(bbox_format, category_key, len(names), name)
        for record in _objects_only(dataset):
            counter.objects(record, _size(record))
        counter.checker.report(f"Split {name!r}")
        converted = dataset.map(
            convert,
            with_indices=True,
            remove_columns=columns,
            features=with_problem,
            desc=f"Normalizing {name}",
        )
        converted = drop_unusable_records(converted, f"Split {name!r}")
    return set_category_ids(converted, ids)


PROBLEM = "_hf_detr_problem"  # why a record is left out ("" when it is kept), a column of the map only
REPEATED_ID = "with a repeated image id (their boxes cannot be told apart)"


def drop_unusable_records(converted: Dataset, where: str) -> Dataset:
    """`converted` less its `PROBLEM` column and the records it names, and less every record whose
    image id repeats; the records left out counted and reported; an error when none is left."""
    problems, image_ids = list(converted[PROBLEM]), list(converted["image_id"])
    twice = repeated(image_ids)
    counts: Counter[str] = Counter()
    named: dict[str, list[str]] = defaultdict(list)
    keep = []
    for index, (problem, image_id) in enumerate(zip(problems, image_ids)):
        why = problem or (REPEATED_ID if image_id in twice else "")
        if not why:
            keep.append(index)
            continue
        counts[why] += 1
        if f"image_id {image_id}" not in named[why] and len(named[why]) <= 5:
            named[why].append(f"image_id {image_id}" if len(named[why]) < 5 else "...")
    log_skipped_images(where, counts, named)
    if not keep:
        raise ValueError(f"{where}: no usable image (the split is empty or every record was skipped).")
    converted = converted.remove_columns(PROBLEM)
    return converted.select(keep) if len(keep) < len(converted) else converted


def _undecoded_images(dataset: Dataset | IterableDataset) -> Dataset | IterableDataset:
    """The split with its `image` column left undecoded ({"bytes", "path"}), when it is an Image."""
    if isinstance(dataset.features["image"], Image) and dataset.features["image"].decode:
        return dataset.cast_column("image", Image(decode=False))
    return dataset


def _objects_only(dataset: Dataset) -> Dataset:
    """The columns the checks need; the image only when the sizes are not stored."""
    needed = (
        ["objects", "width", "height"]
        if {"width", "height"} <= set(dataset.column_names)
        else ["objects", "image"]
    )
    return dataset.select_columns(needed)


def _has_category_ids(dataset) -> bool:
    return '"coco_category_ids"' in (dataset.info.description or "")


def _integer_class_names(dataset, category_key: str, name: str) -> list[str]:
    """class_0 ... class_N for categories stored as plain integers (N: the largest in the first 1000
    records); a `ValueError` when N is beyond `MAX_CLASSES` (they are not class ids)."""
    largest = -1
    for record in islice(iter(dataset), 1000):
        values = [v for v in _records_objects(record)[category_key] if isinstance(v, int)]
        largest = max([largest, *values])
    if largest >= MAX_CLASSES:
        raise ValueError(
            f"Split {name!r}: category {largest} in 'objects' is beyond {MAX_CLASSES:,} classes; the "
            "categories must be class ids 0, 1, 2, ... (or a ClassLabel)."
        )
    return [f"class_{i}" for i in range(largest + 1)]


def _records_objects(record: Mapping) -> dict[str, list]:
    """`objects` as a dict of lists (Hub datasets store either that or a list of dicts)."""
    objects = record["objects"]
    if isinstance(objects, list):
        keys = objects[0].keys() if objects else ("bbox", "category")
        return {k: [o[k] for o in objects] for k in keys}
    return objects


def _stored_size(record: Mapping) -> tuple[int, int] | None:
    """The record's `width` and `height` columns, None when it has none."""
    if record.get("width") and record.get("height"):
        return int(record["width"]), int(record["height"])
    return None


def _image_header(image: Any) -> tuple[int, int] | None:
    """(width, height) of a record's image as displayed (its EXIF orientation applied, as images are
    decoded) from its header (an undecoded {"bytes", "path"}, a path or a decoded image, which
    `datasets` rotated already); None when it cannot be read."""
    if hasattr(image, "width") and hasattr(image, "height"):
        return int(image.width), int(image.height)
    if isinstance(image, Mapping) and image.get("bytes"):
        source = io.BytesIO(image["bytes"])
    else:
        source = image.get("path") if isinstance(image, Mapping) else image
    if not isinstance(source, (str, os.PathLike, io.BytesIO)):
        return None
    header = image_header(source)
    return None if header is None else (header.width, header.height)


def _size(record: Mapping) -> tuple[int, int] | None:
    """The record's stored size, else its image's; None when neither is known."""
    return _stored_size(record) or _image_header(record["image"])


def size_problem(stored: tuple[int, int] | None, header: tuple[int, int] | None) -> str:
    """Why a record's size is unusable ("" when it is not)."""
    if stored is None and header is None:
        return "unreadable, with no width/height columns"
    if stored is not None and header is not None and stored != header:
        return "whose width/height disagree with the image (skipped, not rescaled)"
    return ""


def _to_xywh(bbox, bbox_format: str):
    if bbox_format == "xyxy" and isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        x0, y0, x1, y1 = bbox
        return [x0, y0, x1 - x0, y1 - y0]
    return bbox


def check_box_format(dataset, bbox_format: BoxFormat, name: str) -> None:
    """Reject boxes that do not fit the declared format, on the first records of the split.

    xyxy boxes must have x1 >= x0 and y1 >= y0. Read as xywh, boxes of an xyxy dataset stick out of
    the image: when most do, the format is wrong.
    """
    checked = outside = 0
    records = _objects_only(dataset) if isinstance(dataset, Dataset) else dataset
    for record in islice(iter(records), FORMAT_CHECK_RECORDS):
        size = _size(record)
        if size is None:
            continue
        width, height = size
        for bbox in _records_objects(record)["bbox"]:
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                continue
            x0, y0, a, b = bbox
            if bbox_format == "xyxy" and (a < x0 or b < y0):
                raise ValueError(
                    f"Split {name!r}: box {list(bbox)} has x1 < x0 or y1 < y0, so it is not (x0, y0, x1, y1); "
                    "load it with bbox_format='xywh'."
                )
            checked += 1
            outside += (x0 + a > width + 1) or (y0 + b > height + 1)
    if bbox_format == "xywh" and checked >= 5 and outside > 0.5 * checked:
        raise ValueError(
            f"Split {name!r}: {outside} of {checked} boxes extend past the image when read as (x, y, w, h); "
            "the boxes look like (x0, y0, x1, y1): load it with bbox_format='xyxy'."
        )


class _RecordConverter:
    """One Hub-style record -> the common schema, invalid objects dropped (and counted)."""

    def __init__(self, bbox_format: str, category_key: str, num_classes: int, split: str) -> None:
        self.bbox_format = bbox_format
        self.category_key = category_key
        self.checker = ObjectChecker({i: i for i in range(num_classes)})
        self.split = split
        self.report_as_it_goes = False

    def objects(self, record: Mapping, size: tuple[int, int] | None = None) -> dict[str, list]:
        """The valid objects of a record, in the common schema (counting the invalid ones); none when
        the image's size is unknown (the record is left out)."""
        objects = {"id": [], "area": [], "bbox": [], "category": [], "iscrowd": []}
        if size is None:  # a record left out: its objects are not counted
            return objects
        width, height = size
        source = _records_objects(record)
        count = len(source["bbox"])
        ids = source.get("id") or source.get("bbox_id") or [None] * count
        areas = source.get("area") or [None] * count
        crowds = source.get("iscrowd") or [0] * count
        for index in range(count):
            bbox = _to_xywh(source["bbox"][index], self.bbox_format)
            annotation = {"bbox": bbox, "category_id": source[self.category_key][index],
                          "area": areas[index], "iscrowd": crowds[index]}  # fmt: skip
            fields = self.checker.checked(annotation, width, height)  # the rule of every loader
            if fields is None:
                self._maybe_report()
                continue
            objects["id"].append(int(ids[index]) if ids[index] is not None else index)
            for key in ("area", "bbox", "category", "iscrowd"):
                objects[key].append(fields[key])
        return objects

    def __call__(self, record: Mapping, index: int) -> dict:
        """`datasets.map(with_indices=True)`: the image column is left as it is; `PROBLEM` says why the
        record is to be left out (its size unknown, or disagreeing with its image's)."""
        stored, header = _stored_size(record), _image_header(record["image"])
        problem = size_problem(stored, header)
        width, height = stored or header or (0, 0)
        image_id = record.get("image_id", record.get("id"))
        image_id = int(image_id) if image_id is not None else index
        if problem and self.report_as_it_goes:
            logger.warning("Split %r: skipped image_id %d (%s).", self.split, image_id, problem)
        return {
            "image_id": image_id,
            "width": int(width),
            "height": int(height),
            "objects": self.objects(record, None if problem else (width, height)),
            PROBLEM: problem,
        }

    def _maybe_report(self) -> None:
        total = sum(self.checker.skipped.values())
        if self.report_as_it_goes and total & (total - 1) == 0:  # 1, 2, 4, 8, ... skipped so far
            logger.warning("Split %r: skipped %d invalid object(s) so far.", self.split, total)


__all__ = [
    "PROBLEM",
    "check_box_format",
    "drop_unusable_records",
    "load_detection_dataset",
    "load_source",
    "normalize_split",
    "size_problem",
]
