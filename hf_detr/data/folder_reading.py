"""What the YOLO and Pascal VOC folder loaders share: image files and their sizes, a cache key from the
files a split is read from, and the split's columns gathered into a Dataset of the common schema."""

from __future__ import annotations

import hashlib
import os
import reprlib
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, DatasetInfo, Features
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import InMemoryTable

from ..image_processing_detr import displayed_size, exif_orientation
from .schema import detection_features, logger, set_category_ids, set_image_folders

# the picture formats PIL decodes that annotation tools export (Ultralytics' list, less video and HEIC)
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
OUTSIDE = "whose file leads outside the dataset folder (a symlink)"


# Which splits a loader reads: None (all), a name, names, or a function that picks names from the
# dataset's split names (called before anything is converted; `hf-detr-train` picks its defaults so)
SplitRequest = str | Sequence[str] | Callable[[list[str]], Sequence[str]] | None


def requested_splits(available: Iterable[str], split: SplitRequest, where: str | os.PathLike) -> list[str]:
    """The split names `split` asks for, each checked against `available` (the dataset's) before any
    split is read: an unknown name is a `ValueError` listing the dataset's splits."""
    available = list(available)
    if split is None:
        return available
    wanted = [split] if isinstance(split, str) else list(split(available) if callable(split) else split)
    for name in wanted:
        if name not in available:
            raise ValueError(f"Unknown split {name!r} in {where}; it has {sorted(available)}.")
    return wanted


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def inside_folders(path: str | os.PathLike, folders: Iterable[str | os.PathLike]) -> bool:
    """Whether the real path of `path` (symlinks resolved, even a dangling one's target) lies inside the
    real path of one of `folders`: the one containment check of every folder reader, made before a
    byte of the file is read, when a folder is listed and again when an image is decoded."""
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(os.path.realpath(folder)) for folder in folders)


def image_files(folder: Path, folders: Sequence[Path]) -> list[Path]:
    """The images under `folder` (its sub-folders included, symlinked ones too, each real folder once),
    sorted. A symlinked sub-folder whose real path leaves `folders` is not entered but listed itself,
    so that the loader counts it as outside (`SplitColumns.contained`) instead of passing it over."""
    found, seen = [], {os.path.realpath(folder)}
    for current, subfolders, files in os.walk(folder, followlinks=True):
        for name in list(subfolders):
            path, real = Path(current, name), os.path.realpath(Path(current, name))
            outside = not inside_folders(real, folders)
            if outside or real in seen:
                subfolders.remove(name)
                found.extend([path] if outside else [])
            seen.add(real)
        found.extend(Path(current, name) for name in files if is_image_file(Path(current, name)))
    return sorted(found)


class ImageHeader(NamedTuple):
    """An image file's size as displayed (its EXIF orientation applied, as every image is decoded:
    `hf_detr.image_processing_detr.decode_image`) and that orientation (1 = as stored)."""

    width: int
    height: int
    orientation: int


def image_header(path: str | os.PathLike | BinaryIO) -> ImageHeader | None:
    """The file's size as displayed and its EXIF orientation, from its header (the pixels are not
    decoded); None when it cannot be read."""
    try:
        with PIL.Image.open(path) as image:
            orientation = exif_orientation(image)
            return ImageHeader(*displayed_size(image.width, image.height, orientation), orientation)
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError):
        return None


def as_id(value: Any) -> int | None:
    """An image or annotation id as an int (an int, or a string or float that holds one), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def repeated(values: Iterable[Hashable]) -> set[Hashable]:
    """The values that occur more than once (None left out)."""
    counts = Counter(v for v in values if v is not None)
    return {v for v, n in counts.items() if n > 1}


def repeated_ints(values: Iterable[int | None], more: np.ndarray | None = None) -> set[int]:
    """`repeated` for ids (ints, None left out; `more`: an int64 array of further ids), counted with
    numpy: 8 bytes an id where a Counter of a COCO-size json's annotation ids costs about 100 (ids past
    int64 are counted by `repeated`)."""
    values = [v for v in values if v is not None]
    extra = np.empty(0, np.int64) if more is None else more
    try:
        ids = np.sort(np.concatenate([np.array(values, dtype=np.int64), extra]))
    except OverflowError:
        return repeated([*values, *extra.tolist()])
    return set(ids[1:][ids[1:] == ids[:-1]].tolist())


def relative_name(name: Any) -> PurePath | str:
    """A file name from an annotation file as a path inside the dataset folder, or why it is not one:
    an absolute path or one with `..` would read a file outside the folder."""
    if not isinstance(name, str) or not name.strip():
        return "without a file name"
    path = PurePath(name)
    if path.is_absolute() or ".." in path.parts:
        return "whose file name points outside the dataset folder"
    return path


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def short_text(value: Any, limit: int = 120) -> str:
    """A value read from an annotation file as text for a message: strings and numbers as they are,
    others (lists, objects) as a shortened repr; never longer than `limit`, never the whole of a long
    or deeply nested value (whose full repr could even exceed Python's recursion limit)."""
    text = str(value) if isinstance(value, (str, int, float)) else _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: Any) -> str:
    """A value read from an annotation file for a message: strings quoted, others as `short_text`."""
    return repr(short_text(value)) if isinstance(value, str) else short_text(value)


def examples(values: Iterable[Any], limit: int = 5) -> str:
    """The first `limit` values, comma-separated, "..." when there are more."""
    values = list(values)
    text = ", ".join(short_text(v) for v in values[:limit])
    return text + (", ..." if len(values) > limit else "")


def check_class_names(names: Sequence[str], source: Any) -> None:
    """A `ValueError` naming `source` (the file that names the classes) when a class name repeats:
    two classes of one name cannot be told apart in predictions."""
    twice = repeated(names)
    if twice:
        raise ValueError(
            f"{source}: the class name(s) {examples(sorted(twice))} are given to more than one class; "
            "give each class its own name, or merge the classes."
        )


def files_key(tag: str, files: Iterable[Path]) -> str:
    """A cache key from `tag` and each file's path, size and modification time (a missing file counts)."""
    digest = hashlib.sha256(tag.encode())
    for path in files:
        try:
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}:missing\n".encode())
    return digest.hexdigest()[:24]


def folder_listing(folder: Path, leave_out: Path | None = None) -> str:
    """A digest of every file under `folder` (name, size, modification time), less `leave_out` (a cache
    folder inside it): a cached conversion that read the files is redone when one of them changes."""
    digest = hashlib.sha256()
    pending, seen = [folder], {os.path.realpath(folder)}
    while pending:
        current = pending.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir():
                real = os.path.realpath(entry.path)  # each real folder once: a symlink loop ends
                if real not in seen and (leave_out is None or Path(real) != leave_out.resolve()):
                    pending.append(Path(entry.path))
                seen.add(real)
                continue
            try:
                stat = entry.stat()
            except OSError:
                continue
            digest.update(f"{entry.path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def corners_to_box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """COCO (x, y, w, h) of the corners, unclipped: `ObjectChecker` clips or counts it (one rule for
    every loader)."""
    return [x0, y0, x1 - x0, y1 - y0]


def image_paths(split: Dataset) -> list[str]:
    """The paths of a split's image files, read from the arrow column (nothing decoded)."""
    table = split.select_columns(["image"]).with_format("arrow")[:]
    return [p for p in pc.struct_field(table.column("image"), "path").to_pylist() if p]


def real_paths(paths: Iterable[str]) -> Iterable[str]:
    """Each path with its symlinks resolved: its folder's real path (resolved once per folder) and its
    name, or the file's own real path when it is a symlink."""
    folders: dict[str, str] = {}
    for path in paths:
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        yield os.path.realpath(path) if os.path.islink(path) else os.path.join(folders[folder], name)


def report_shared_images(dataset: DatasetDict, where: Any) -> None:
    """Warn when image files (by real path) are in more than one split: an evaluation on images the
    model trained on overstates its accuracy."""
    if len(dataset) < 2:
        return
    splits_of: dict[str, set[str]] = defaultdict(set)
    for name, split in dataset.items():
        for path in real_paths(image_paths(split)):
            splits_of[path].add(name)
    shared = {path: names for path, names in splits_of.items() if len(names) > 1}
    if not shared:
        return
    pairs = Counter(" and ".join(sorted(names)) for names in shared.values())
    logger.warning(
        "%s: %d image file(s) are in more than one split (%s; e.g. %s). An evaluation on images the model "
        "trained on overstates its accuracy: give each split its own images.",
        where, len(shared), ", ".join(f"{n} in {p}" for p, n in sorted(pairs.items())),
        examples(sorted(Path(p).name for p in shared)),
    )  # fmt: skip


def log_skipped_images(where: str, counts: Mapping[str, int], named: Mapping[str, list[str]]) -> None:
    """One warning: how many images were left out, by reason, and the first few of each."""
    if not counts:
        return
    details = ", ".join(f"{n} {why}" for why, n in sorted(counts.items()))
    first = "; ".join(f"{why}: {examples(named[why], 6)}" for why in sorted(counts) if named.get(why))
    logger.warning(
        "%s: skipped %d image(s) (%s)%s.",
        where,
        sum(counts.values()),
        details,
        f"; first of each: {first}" if first else "",
    )


def table_dataset(table: pa.Table, info: DatasetInfo) -> Dataset:
    """A Dataset over an in-memory arrow table, with a fingerprint of its own: datasets would hash the
    whole table for one (pickling it: a second copy of a COCO-size split at the peak)."""
    return Dataset(InMemoryTable(table), info=info, fingerprint=generate_random_fingerprint())


class SplitColumns:
    """The columns of one split, gathered image by image, with the images left out counted by reason.
    `folders` are the dataset's folders: an image (or its label file) whose real path leaves them is
    never read (`contained`), and the split records them for the decoding to check again."""

    def __init__(self, where: str, folders: Sequence[Path]) -> None:
        self.where = where
        self.folders = list(folders)
        self.columns: dict[str, list] = {
            "image": [],
            "image_id": [],
            "width": [],
            "height": [],
        }
        # the images' objects, flat (a box is 4 floats, not 5 Python objects): the arrow column's buffers
        self._offsets, self._ids, self._areas = array("q", [0]), array("q"), array("d")
        self._boxes, self._categories, self._crowds = array("d"), array("q"), array("b")
        self.skipped_images: Counter[str] = Counter()
        self.skipped_examples: dict[str, list[str]] = {}
        self.rotated = 0
        self._folders_inside: dict[str, bool] = {}

    def skip(self, reason: str, example: Any) -> None:
        """Count an image left out for `reason`; the first few `example`s are named in the report."""
        self.skipped_images[reason] += 1
        self.skipped_examples.setdefault(reason, [])
        named, text = self.skipped_examples[reason], short_text(example)
        if text not in named and len(named) <= 5:
            named.append(text if len(named) < 5 else "...")

    def folder_inside(self, folder: str) -> bool:
        """Whether the real path of `folder` lies inside the dataset's folders (remembered per folder)."""
        inside = self._folders_inside.get(folder)
        if inside is None:
            inside = self._folders_inside[folder] = inside_folders(folder, self.folders)
        return inside

    def contained(self, path: Path, example: Any = None, reason: str = OUTSIDE) -> bool:
        """Whether `path` lies inside the dataset's folders (`inside_folders`); when it does not, the
        image is counted as skipped for `reason` (`example`, else the file's name, is named)."""
        if inside_folders(path, self.folders):
            return True
        self.skip(reason, path.name if example is None else example)
        return False

    def add_image(self, path: Path | str, image_id: int, width: int, height: int) -> None:
        """An image whose objects `set_objects` gives later (all images' at once)."""
        self.columns["image"].append(str(path))
        self.columns["image_id"].append(int(image_id))
        self.columns["width"].append(int(width))
        self.columns["height"].append(int(height))

    def set_objects(self, objects: Any) -> None:
        """The objects of every image added by `add_image`, flat (`coco_columns.ImageObjects`)."""
        if len(objects.offsets) != len(self.columns["image"]) + 1:
            raise ValueError(
                f"{self.where}: objects for {len(objects.offsets) - 1} images, not {len(self.columns['image'])}."
            )
        # numpy arrays in place of the typed arrays: `objects_array` reads either through their buffers
        self._offsets = np.ascontiguousarray(objects.offsets, np.int64)
        self._ids = np.ascontiguousarray(objects.ids, np.int64)
        self._areas = np.ascontiguousarray(objects.areas, np.float64)
        self._boxes = np.ascontiguousarray(objects.boxes, np.float64).reshape(-1)
        self._categories = np.ascontiguousarray(objects.categories, np.int64)
        self._crowds = np.ascontiguousarray(objects.crowds, np.int8)

    def add(self, path: Path, image_id: int, width: int, height: int, objects: dict[str, list]) -> None:
        self.add_image(path, image_id, width, height)
        self._ids.extend(objects["id"])
        self._areas.extend(objects["area"])
        for box in objects["bbox"]:
            if len(box) != 4:
                raise ValueError(f"{self.where}: a box of {len(box)} numbers, not 4: {short_text(box)}")
            self._boxes.extend(box)
        self._categories.extend(objects["category"])
        self._crowds.extend(objects["iscrowd"])
        self._offsets.append(len(self._ids))
        if not (
            len(self._areas)
            == len(self._categories)
            == len(self._crowds)
            == len(self._boxes) // 4
            == len(self._ids)
        ):
            raise ValueError(
                f"{self.where}: the objects of image {image_id} have fields of different lengths."
            )

    def objects_array(self, objects_type: pa.DataType) -> pa.Array:
        """The `objects` column (a struct of lists, one entry per image) from the flat arrays."""
        offsets = pa.array(np.frombuffer(self._offsets, np.int64).astype(np.int32))
        fields = {
            "id": pa.array(np.frombuffer(self._ids, np.int64)),
            "area": pa.array(np.frombuffer(self._areas, np.float64).astype(np.float32)),
            "bbox": pa.FixedSizeListArray.from_arrays(
                pa.array(np.frombuffer(self._boxes, np.float64).astype(np.float32)), 4
            ),
            "category": pa.array(np.frombuffer(self._categories, np.int64)),
            "iscrowd": pa.array(np.frombuffer(self._crowds, np.int8)),
        }
        lists = [pa.ListArray.from_arrays(offsets, fields[f.name]).cast(f.type) for f in objects_type]
        return pa.StructArray.from_arrays(lists, fields=list(objects_type))

    def dataset(
        self,
        names: Sequence[str],
        category_ids: Sequence[int],
        description: str,
        features: Features | None = None,
        isthing: Sequence[bool] | None = None,
    ) -> Dataset:
        """The split in the common schema (or `features`); the images left out reported; an error when
        none is left."""
        log_skipped_images(self.where, self.skipped_images, self.skipped_examples)
        if self.rotated:
            logger.warning(
                "%s: %d image(s) have an EXIF orientation: they are read as displayed (rotated), as every "
                "image is, so their boxes must be on the displayed pixels.",
                self.where,
                self.rotated,
            )
        if not self.columns["image"]:
            raise ValueError(
                f"{self.where}: no usable image (the split is empty or every image was skipped)."
            )
        if features is None and all(type(path) is str for path in self.columns["image"]):
            # the detection schema straight to arrow: `from_dict` encodes every object in Python
            features = detection_features(names)
            schema = features.arrow_schema
            columns = {**self.columns, "image": [{"bytes": None, "path": p} for p in self.columns["image"]]}
            arrays = [
                self.objects_array(field.type)
                if field.name == "objects"
                else pa.array(columns[field.name], field.type)
                for field in schema
            ]
            table = pa.Table.from_arrays(arrays, schema=schema)
            dataset = table_dataset(table, DatasetInfo(features=features))
        else:
            features = features or detection_features(names)
            objects = self.objects_array(features.arrow_schema.field("objects").type).to_pylist()
            dataset = Dataset.from_dict({**self.columns, "objects": objects}, features=features)
        set_category_ids(dataset, category_ids, description, isthing=isthing)
        return set_image_folders(dataset, self.folders)


__all__ = [
    "IMAGE_SUFFIXES",
    "OUTSIDE",
    "ImageHeader",
    "SplitColumns",
    "SplitRequest",
    "as_id",
    "check_class_names",
    "corners_to_box",
    "examples",
    "files_key",
    "folder_listing",
    "image_files",
    "image_header",
    "inside_folders",
    "is_image_file",
    "log_skipped_images",
    "relative_name",
    "repeated",
    "repeated_ints",
    "report_shared_images",
    "requested_splits",
    "short_text",
    "shown",
    "table_dataset",
]
