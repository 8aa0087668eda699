"""A local COCO panoptic folder (`annotations/panoptic_{split}.json` + its PNG folder + the images) in
the common schema's panoptic form (hf_detr.data.schema), cached like a COCO detection folder.

COCO's layout: images in `{split}/` (e.g. `val2017/`), PNGs in `annotations/panoptic_{split}/` (as
the annotation zip unpacks) or `panoptic_{split}/`. Each segment becomes an object (its `bbox` from
`segments_info`, its id the PNG's). Segments with an unknown category or an unusable box, and images
whose picture or PNG is missing or leads outside the folder (a symlink), are skipped, counted and
reported, as for detection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from .coco_folder import (
    checked_size,
    coco_splits,
    image_folder,
    load_annotated_folder,
    read_coco_json,
    valid_objects,
)
from .folder_reading import SplitColumns, SplitRequest, as_id, examples, relative_name, repeated, short_text
from .schema import PANOPTIC_MASK, logger, panoptic_features


def is_coco_panoptic_folder(path: str | os.PathLike) -> bool:
    return bool(coco_splits(path, "panoptic"))


def panoptic_png_folder(root: Path, split: str) -> Path:
    """Where a split's PNGs live: `annotations/panoptic_{split}` or `panoptic_{split}`."""
    for candidate in (root / "annotations" / f"panoptic_{split}", root / f"panoptic_{split}"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"{root}: no folder of panoptic PNGs for split {split!r} (looked for annotations/panoptic_{split}/ "
        f"and panoptic_{split}/)."
    )


def load_coco_panoptic_folder(
    root: str | os.PathLike, split: SplitRequest = None, cache_dir: str | os.PathLike | None = None
) -> DatasetDict:
    """All splits of a COCO panoptic folder (or only `split`) in the common panoptic schema."""
    return load_annotated_folder(root, split, cache_dir, "panoptic", convert_coco_panoptic_split)


def annotation_per_image(coco: dict, where: str) -> tuple[dict[int, dict], set[int], set[int]]:
    """Image id -> its panoptic annotation; the image ids that repeat among the images and among the
    annotations (both unusable: which segments belong to which picture cannot be told). Annotations of
    no image of the json are reported and left out."""
    image_ids = [as_id(image.get("id")) for image in coco["images"]]
    known = {i for i in image_ids if i is not None}
    annotated = [as_id(a.get("image_id")) for a in coco["annotations"]]
    unknown = [a.get("image_id") for a, i in zip(coco["annotations"], annotated) if i not in known]
    if unknown:
        logger.warning(
            "%s: ignored %d annotation(s) whose image_id is not an image of the json (image_id %s).",
            where, len(unknown), examples(sorted(set(map(short_text, unknown)))),
        )  # fmt: skip
    annotation_of = {i: a for a, i in zip(coco["annotations"], annotated) if i in known}
    return annotation_of, repeated(image_ids), repeated(i for i in annotated if i in known)


def checked_panoptic_image(
    image: Mapping[str, Any],
    annotation_of: Mapping[int, dict],
    repeats: tuple[set[int], set[int]],
    folders: tuple[Path, Path],
    columns: SplitColumns,
) -> tuple[Path, Path, int, int] | str | None:
    """(picture, PNG, width, height) of a json image; "image", "PNG" or "annotation" when that is
    missing; None when skipped for another reason (counted in `columns`)."""
    image_id, file_name = as_id(image.get("id")), image.get("file_name")
    if image_id is None:
        columns.skip("without an integer id", file_name)
        return None
    if image_id in repeats[0] or image_id in repeats[1]:
        where = "images" if image_id in repeats[0] else "annotations"
        columns.skip(f"with an image id repeated among the {where}", f"id {image_id}")
        return None
    annotation = annotation_of.get(image_id)
    if annotation is None:
        return "annotation"
    names = relative_name(file_name), relative_name(annotation.get("file_name"))
    bad = next((n for n in names if isinstance(n, str)), None)
    if bad is not None:
        columns.skip(bad, f"id {image_id}")
        return None
    picture, png = folders[0] / names[0], folders[1] / names[1]
    if not (columns.contained(picture, file_name) and columns.contained(png, annotation.get("file_name"))):
        return None
    if not picture.is_file() or not png.is_file():
        return "image" if not picture.is_file() else "PNG"
    if picture.stat().st_size == 0 or png.stat().st_size == 0:  # never decodable
        columns.skip("whose picture or PNG is empty", f"id {image_id}")
        return None
    checked = checked_size(picture, image, file_name, columns)
    return None if checked is None else (picture, png, *checked[:2])


def convert_coco_panoptic_split(root: Path, split: str, annotation_file: Path) -> Dataset:
    """One COCO panoptic json -> a Dataset in the panoptic schema (images and PNGs referenced by path)."""
    coco, categories, checker = read_coco_json(annotation_file, "panoptic")
    where = f"{annotation_file} ({split})"
    annotation_of, *repeats = annotation_per_image(coco, where)
    folders = image_folder(root, split), panoptic_png_folder(root, split)
    columns, masks = SplitColumns(where, [root]), []
    missing = {"image": 0, "PNG": 0, "annotation": 0}
    for image in coco["images"]:
        checked = checked_panoptic_image(image, annotation_of, tuple(repeats), folders, columns)
        if isinstance(checked, str):
            missing[checked] += 1
        if not isinstance(checked, tuple):
            continue
        picture, png, width, height = checked
        image_id = as_id(image["id"])
        segments = annotation_of[image_id].get("segments_info") or []
        segments = segments if isinstance(segments, list) else [segments]  # not a list: counted unusable
        columns.add(
            picture, image_id, width, height, valid_objects(segments, checker, width, height, require_id=True)
        )
        masks.append(str(png))
    checker.report(where)
    for what, count in missing.items():
        if count:
            logger.warning("%s: skipped %d image(s) whose %s is missing.", where, count, what)
    columns.columns[PANOPTIC_MASK] = masks
    return columns.dataset(
        [c["name"] for c in categories],
        [c["id"] for c in categories],
        f"COCO panoptic folder {root}, split {split}",
        features=panoptic_features([c["name"] for c in categories]),
        isthing=[bool(c.get("isthing", 1)) for c in categories],
    )


__all__ = ["convert_coco_panoptic_split", "is_coco_panoptic_folder",
           "load_coco_panoptic_folder", "panoptic_png_folder"]  # fmt: skip
