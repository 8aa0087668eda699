"""What the YOLO and Pascal VOC folder loaders share: image files and their sizes, a cache key from the
files a split is read from, and the split's columns gathered into a Dataset of the common schema."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import PIL.Image
from datasets import Dataset, Features

from .schema import detection_features, logger, set_category_ids

# the picture formats PIL decodes that annotation tools export (Ultralytics' list, less video and HEIC)
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION = 0x0112


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


def image_files(folder: Path) -> list[Path]:
    """The images under `folder` (its sub-folders included), sorted."""
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def image_header(path: Path) -> tuple[int, int, bool] | None:
    """(width, height) of the stored pixels from the file's header and whether it carries an EXIF
    orientation other than "as stored" (hf_detr reads the stored pixels; a PNG's EXIF is looked for
    before its pixels only, so the file is not decoded); None when it cannot be read."""
    try:
        with PIL.Image.open(path) as image:
            if image.format == "PNG" and "exif" not in image.info:  # PIL would decode it to look further
                return image.width, image.height, False
            return image.width, image.height, image.getexif().get(EXIF_ORIENTATION, 1) != 1
    except (OSError, ValueError, PIL.Image.DecompressionBombError):
        return None


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of the stored pixels, None when the file cannot be read."""
    header = image_header(path)
    return None if header is None else header[:2]


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


def relative_name(name: Any) -> PurePath | str:
    """A file name from an annotation file as a path inside the dataset folder, or why it is not one:
    an absolute path or one with `..` would read a file outside the folder."""
    if not isinstance(name, str) or not name.strip():
        return "without a file name"
    path = PurePath(name)
    if path.is_absolute() or ".." in path.parts:
        return "whose file name points outside the dataset folder"
    return path


def examples(values: Iterable[Any], limit: int = 5) -> str:
    """The first `limit` values, comma-separated, "..." when there are more."""
    values = list(values)
    text = ", ".join(str(v) for v in values[:limit])
    return text + (", ..." if len(values) > limit else "")


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
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():
                if leave_out is None or path.resolve() != leave_out.resolve():
                    pending.append(path)
                continue
            try:
                stat = entry.stat()
            except OSError:
                continue
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def corners_to_box(x0: float, y0: float, x1: float, y1: float, width: float, height: float) -> list[float]:
    """COCO (x, y, w, h) of the corners, clipped to the image when the box overlaps it; a box that does
    not (outside, or of no size) is returned unclipped for `ObjectChecker` to count."""
    if x1 > max(x0, 0) and y1 > max(y0, 0) and x0 < width and y0 < height:
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    return [x0, y0, x1 - x0, y1 - y0]


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


class SplitColumns:
    """The columns of one split, gathered image by image, with the images left out counted by reason."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.columns: dict[str, list] = {
            "image": [],
            "image_id": [],
            "width": [],
            "height": [],
            "objects": [],
        }
        self.skipped_images: Counter[str] = Counter()
        self.skipped_examples: dict[str, list[str]] = {}
        self.rotated = 0
        self.unreadable = 0  # kept: the data loaders skip them, counted, when they decode them

    def skip(self, reason: str, example: Any) -> None:
        """Count an image left out for `reason`; the first few `example`s are named in the report."""
        self.skipped_images[reason] += 1
        self.skipped_examples.setdefault(reason, [])
        named = self.skipped_examples[reason]
        if str(example) not in named and len(named) <= 5:
            named.append(str(example) if len(named) < 5 else "...")

    def add(self, path: Path, image_id: int, width: int, height: int, objects: dict[str, list]) -> None:
        self.columns["image"].append(str(path))
        self.columns["image_id"].append(int(image_id))
        self.columns["width"].append(int(width))
        self.columns["height"].append(int(height))
        self.columns["objects"].append(objects)

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
                "%s: %d image(s) have an EXIF orientation; their boxes are read against the stored pixels.",
                self.where,
                self.rotated,
            )
        if self.unreadable:
            logger.warning(
                "%s: %d image file(s) cannot be read; they are kept, and the data loaders skip them "
                "(counted) when they decode them.",
                self.where,
                self.unreadable,
            )
        if not self.columns["image"]:
            raise ValueError(
                f"{self.where}: no usable image (the split is empty or every image was skipped)."
            )
        dataset = Dataset.from_dict(self.columns, features=features or detection_features(names))
        return set_category_ids(dataset, category_ids, description, isthing=isthing)


__all__ = [
    "IMAGE_SUFFIXES",
    "SplitColumns",
    "SplitRequest",
    "as_id",
    "corners_to_box",
    "examples",
    "files_key",
    "folder_listing",
    "image_files",
    "image_header",
    "image_size",
    "is_image_file",
    "log_skipped_images",
    "relative_name",
    "repeated",
    "requested_splits",
]
