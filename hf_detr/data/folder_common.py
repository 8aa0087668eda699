"""What the YOLO and Pascal VOC folder loaders share: image files and their sizes, a cache key from the
files a split is read from, and the split's columns gathered into a Dataset of the common schema."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import PIL.Image
from datasets import Dataset

from .schema import detection_features, logger, set_category_ids

# the picture formats PIL decodes that annotation tools export (Ultralytics' list, less video and HEIC)
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION = 0x0112


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def image_files(folder: Path) -> list[Path]:
    """The images under `folder` (its sub-folders included), sorted."""
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def image_header(path: Path) -> tuple[int, int, bool] | None:
    """(width, height) of the stored pixels from the file's header and whether it carries an EXIF
    orientation other than "as stored" (hf_detr reads the stored pixels); None when it cannot be read."""
    try:
        with PIL.Image.open(path) as image:
            return image.width, image.height, image.getexif().get(EXIF_ORIENTATION, 1) != 1
    except (OSError, ValueError, PIL.Image.DecompressionBombError):
        return None


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of the stored pixels, None when the file cannot be read."""
    header = image_header(path)
    return None if header is None else header[:2]


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


def corners_to_box(x0: float, y0: float, x1: float, y1: float, width: float, height: float) -> list[float]:
    """COCO (x, y, w, h) of the corners, clipped to the image when the box overlaps it; a box that does
    not (outside, or of no size) is returned unclipped for `ObjectChecker` to count."""
    if x1 > max(x0, 0) and y1 > max(y0, 0) and x0 < width and y0 < height:
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    return [x0, y0, x1 - x0, y1 - y0]


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
        self.rotated = 0

    def add(self, path: Path, image_id: int, width: int, height: int, objects: dict[str, list]) -> None:
        self.columns["image"].append(str(path))
        self.columns["image_id"].append(int(image_id))
        self.columns["width"].append(int(width))
        self.columns["height"].append(int(height))
        self.columns["objects"].append(objects)

    def dataset(self, names: Sequence[str], category_ids: Sequence[int], description: str) -> Dataset:
        """The split in the common schema; the images left out reported; an error when none is left."""
        if self.skipped_images:
            details = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped_images.items()))
            logger.warning(
                "%s: skipped %d image(s) (%s).", self.where, sum(self.skipped_images.values()), details
            )
        if self.rotated:
            logger.warning(
                "%s: %d image(s) have an EXIF orientation; their boxes are read against the stored pixels.",
                self.where,
                self.rotated,
            )
        if not self.columns["image"]:
            raise ValueError(
                f"{self.where}: no usable image (the split is empty or every image was skipped)."
            )
        dataset = Dataset.from_dict(self.columns, features=detection_features(names))
        return set_category_ids(dataset, category_ids, description)


__all__ = [
    "IMAGE_SUFFIXES",
    "SplitColumns",
    "corners_to_box",
    "files_key",
    "image_files",
    "image_header",
    "image_size",
    "is_image_file",
]
