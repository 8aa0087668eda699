"""A local COCO panoptic folder (`annotations/panoptic_{split}.json` + its PNG folder + the images) in
the common schema's panoptic form (hf_detr.data.schema), cached like a COCO detection folder.

COCO's layout: images in `{split}/` (e.g. `val2017/`), PNGs in `annotations/panoptic_{split}/` (as
the annotation zip unpacks) or `panoptic_{split}/`. Each segment becomes an object (its `bbox` from
`segments_info`, its id the PNG's). Segments with an unknown category or an unusable box, and images
whose picture or PNG is missing, are skipped, counted and reported, as for detection.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, DatasetDict

from .coco_folder import coco_splits, image_folder, load_annotated_folder, read_coco_json, valid_objects
from .schema import logger, panoptic_features, set_category_ids


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
    root: str | os.PathLike, split: str | None = None, cache_dir: str | os.PathLike | None = None
) -> DatasetDict:
    """All splits of a COCO panoptic folder (or only `split`) in the common panoptic schema."""
    return load_annotated_folder(root, split, cache_dir, "panoptic", convert_coco_panoptic_split)


def convert_coco_panoptic_split(root: Path, split: str, annotation_file: Path) -> Dataset:
    """One COCO panoptic json -> a Dataset in the panoptic schema (images and PNGs referenced by path)."""
    coco, categories, checker = read_coco_json(annotation_file, "panoptic")
    annotation_of = {a.get("image_id"): a for a in coco["annotations"]}
    pictures, pngs = image_folder(root, split), panoptic_png_folder(root, split)
    columns: dict[str, list] = {"image": [], "panoptic_mask": [], "image_id": [], "width": [], "height": [],
                                "objects": []}  # fmt: skip
    missing = {"image": 0, "PNG": 0, "annotation": 0}
    for image in coco["images"]:
        annotation = annotation_of.get(image["id"])
        picture = pictures / image["file_name"]
        png = (
            pngs / annotation["file_name"]
            if annotation and isinstance(annotation.get("file_name"), str)
            else None
        )
        problem = ("annotation" if annotation is None else "image" if not picture.is_file()
                   else "PNG" if png is None or not png.is_file() else None)  # fmt: skip
        if problem is not None:
            missing[problem] += 1
            continue
        width, height = image["width"], image["height"]
        objects = valid_objects(
            annotation.get("segments_info") or [], checker, width, height, require_id=True
        )
        for column, value in (("image", str(picture)), ("panoptic_mask", str(png)), ("image_id", int(image["id"])),
                              ("width", int(width)), ("height", int(height)), ("objects", objects)):  # fmt: skip
            columns[column].append(value)
    where = f"{annotation_file} ({split})"
    checker.report(where)
    for what, count in missing.items():
        if count:
            logger.warning("%s: skipped %d image(s) whose %s is missing.", where, count, what)
    if not columns["image"]:
        raise ValueError(f"{where}: no usable image (the split is empty or every image or PNG is missing).")
    dataset = Dataset.from_dict(columns, features=panoptic_features([c["name"] for c in categories]))
    return set_category_ids(
        dataset,
        [c["id"] for c in categories],
        f"COCO panoptic folder {root}, split {split}",
        isthing=[bool(c.get("isthing", 1)) for c in categories],
    )


__all__ = ["convert_coco_panoptic_split", "is_coco_panoptic_folder",
           "load_coco_panoptic_folder", "panoptic_png_folder"]  # fmt: skip
