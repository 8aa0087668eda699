"""Which annotation layout a local folder holds: COCO json, YOLO txt or Pascal VOC XML.

`load_detection_dataset(path)` (and so `hf-detr-train --dataset PATH`) reads a folder with the one
layout that matches it. A folder that matches none, and holds no files `datasets` can load (a
`save_to_disk` folder, parquet/arrow files, an imagefolder's metadata), or matches several, is an
error that says which layouts were looked for and what each needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from .coco_folder import is_coco_folder, load_coco_folder
from .folder_reading import SplitRequest
from .voc_folder import is_voc_folder, load_voc_folder
from .yolo_folder import is_yolo_folder, load_yolo_folder


@dataclass(frozen=True)
class FolderLayout:
    """An annotation layout: its name, what a folder needs to hold it, its test and its loader."""

    name: str
    needs: str
    matches: Callable[[Path], bool]
    load: Callable[[Path, SplitRequest, Any], DatasetDict]


LAYOUTS = (
    FolderLayout(
        "COCO",
        "annotations/instances_{split}.json with the images in {split}/, images/{split}/ or images/; or "
        "Roboflow's {split}/_annotations.coco.json with the images beside it",
        is_coco_folder,
        load_coco_folder,
    ),
    FolderLayout(
        "YOLO",
        "images/ + labels/ (or images/{split} + labels/{split}, or {split}/images + {split}/labels), one "
        ".txt of `class cx cy w h` lines per image, and the class names in data.yaml (`names:`) or classes.txt",
        is_yolo_folder,
        load_yolo_folder,
    ),
    FolderLayout(
        "Pascal VOC",
        "Annotations/*.xml + JPEGImages/ (splits in ImageSets/Main/{split}.txt), or {split}/ folders with "
        "each image's .xml beside it",
        is_voc_folder,
        load_voc_folder,
    ),
)
DATASETS_FILES = ("*.parquet", "*.arrow", "metadata.jsonl", "metadata.csv")  # what `load_dataset` reads


def matching_layouts(path: str | os.PathLike) -> list[FolderLayout]:
    return [layout for layout in LAYOUTS if layout.matches(Path(path))]


def is_detection_folder(path: str | os.PathLike) -> bool:
    """Whether `load_detection_folder` reads `path`: a layout matches it, or nothing else could (no file
    that `datasets` loads), so that its error explains what was looked for."""
    path = Path(path)
    if matching_layouts(path):
        return True
    saved = (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()
    return not saved and next(chain.from_iterable(path.rglob(p) for p in DATASETS_FILES), None) is None


def load_detection_folder(
    path: str | os.PathLike, split: SplitRequest = None, cache_dir: str | os.PathLike | None = None
) -> DatasetDict:
    """The splits of a COCO, YOLO or Pascal VOC folder in the common schema (the layout detected)."""
    path = Path(path)
    layouts = matching_layouts(path)
    if len(layouts) != 1:
        raise ValueError(layout_error(path, layouts))
    return layouts[0].load(path, split, cache_dir)


def layout_error(path: Path, found: list[FolderLayout]) -> str:
    """Why a folder cannot be read: no layout or several matched; each layout and what it needs."""
    wanted = "\n".join(f"  - {layout.name}: {layout.needs}" for layout in LAYOUTS)
    if found:
        names = " and ".join(layout.name for layout in found)
        return (
            f"{path} holds more than one annotation layout ({names}): point at a folder that holds only "
            f"one. The layouts looked for:\n{wanted}"
        )
    return (
        f"{path} is not a dataset folder hf_detr recognises. Looked for these annotation layouts:\n{wanted}\n"
        "  - or a save_to_disk folder, or parquet/arrow files."
    )


__all__ = ["LAYOUTS", "FolderLayout", "is_detection_folder", "layout_error", "load_detection_folder"]
