"""A local COCO folder (annotations/instances_{split}.json + image folders) as cached arrow datasets.

Each split's json is converted once into the common schema (hf_detr.data.schema) and saved with
`save_to_disk` under a cache folder keyed by the json's content hash, so it is re-used while the json
is unchanged. Images stay files on disk: the arrow table stores their paths. Objects that cannot be
used (see `ObjectChecker`) and images whose file is missing are skipped, counted and reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_from_disk

from .schema import ObjectChecker, detection_features, logger, set_category_ids

CACHE_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """`$HF_DETR_CACHE`, else `$HF_HOME/hf_detr` (default ~/.cache/huggingface/hf_detr)."""
    if os.environ.get("HF_DETR_CACHE"):
        return Path(os.environ["HF_DETR_CACHE"])
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hf_detr"


def is_coco_folder(path: str | os.PathLike) -> bool:
    return bool(coco_splits(path))


def coco_splits(root: str | os.PathLike, kind: str = "instances") -> dict[str, Path]:
    """Split name -> annotation file, from `annotations/{kind}_{split}.json` (kind: instances, panoptic)."""
    files = sorted((Path(root) / "annotations").glob(f"{kind}_*.json"))
    return {f.stem[len(kind) + 1 :]: f for f in files}


def image_folder(root: Path, split: str) -> Path:
    """Where a split's `file_name`s live: `root/{split}`, `root/images/{split}`, `root/images` or `root`."""
    for candidate in (root / split, root / "images" / split, root / "images", root):
        if candidate.is_dir() and candidate != root / "annotations":
            return candidate
    return root


def load_coco_folder(
    root: str | os.PathLike, split: str | None = None, cache_dir: str | os.PathLike | None = None
) -> DatasetDict:
    """All splits of a COCO folder (or only `split`) in the common schema."""
    return load_annotated_folder(root, split, cache_dir, "instances", convert_coco_split)


def load_annotated_folder(
    root: str | os.PathLike,
    split: str | None,
    cache_dir: str | os.PathLike | None,
    kind: str,
    convert: Callable[[Path, str, Path], Dataset],
) -> DatasetDict:
    """The splits of `annotations/{kind}_{split}.json` (or only `split`), each `convert`ed once and cached."""
    root = Path(root)
    splits = coco_splits(root, kind)
    if not splits:
        what = "a COCO panoptic folder" if kind == "panoptic" else "a COCO folder"
        raise FileNotFoundError(f"{root} has no annotations/{kind}_{{split}}.json: not {what}.")
    if split is not None and split not in splits:
        raise ValueError(f"Unknown split {split!r} in {root}; it has {sorted(splits)}.")
    wanted = [split] if split is not None else sorted(splits)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "coco"
    return DatasetDict({name: cached_split(root, name, splits[name], cache_root, convert) for name in wanted})


def cached_split(
    root: Path,
    split: str,
    annotation_file: Path,
    cache_root: Path,
    convert: Callable[[Path, str, Path], Dataset],
) -> Dataset:
    """`convert(root, split, annotation_file)`, saved under `cache_root` by the json's content hash and
    read back from there while the json is unchanged."""
    digest = hashlib.sha256()
    digest.update(f"v{CACHE_FORMAT_VERSION}:{convert.__name__}:{root.resolve()}:{split}:".encode())
    with open(annotation_file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    target = cache_root / digest.hexdigest()[:24]
    if (target / "dataset_info.json").is_file():
        return load_from_disk(str(target))
    dataset = convert(root, split, annotation_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".incomplete-"))
    dataset.save_to_disk(str(staging))
    try:
        staging.rename(target)  # atomic: a concurrent or interrupted conversion never leaves half a cache
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return load_from_disk(str(target))


def read_coco_json(annotation_file: Path, kind: str) -> tuple[dict[str, Any], list[dict], ObjectChecker]:
    """A COCO `kind` json (instances, panoptic), its categories sorted by id (class id = position) and
    an `ObjectChecker` over them."""
    coco = json.loads(annotation_file.read_text())
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(f"{annotation_file} is not a COCO {kind} file: it has no {key!r}.")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    return coco, categories, ObjectChecker({c["id"]: index for index, c in enumerate(categories)})


def valid_objects(
    annotations: Iterable[Mapping[str, Any]],
    checker: ObjectChecker,
    width: float,
    height: float,
    require_id: bool = False,
) -> dict[str, list]:
    """One image's usable annotations (or panoptic segments, whose `id` is required) as the schema's
    `objects`; the others are counted by `checker`."""  # fmt: skip
    objects: dict[str, list] = {"id": [], "area": [], "bbox": [], "category": [], "iscrowd": []}
    for annotation in annotations:
        bbox, category = annotation.get("bbox"), annotation.get("category_id")
        if require_id and not isinstance(annotation.get("id"), int):
            checker.skipped["missing or non-integer segment id"] += 1
            continue
        if not checker.keep(bbox, category, width, height):
            continue
        objects["id"].append(int(annotation.get("id", len(objects["id"]))))
        objects["area"].append(float(annotation.get("area", bbox[2] * bbox[3])))
        objects["bbox"].append([float(v) for v in bbox])
        objects["category"].append(checker.known_categories[category])
        objects["iscrowd"].append(int(annotation.get("iscrowd", 0)))
    return objects


def convert_coco_split(root: Path, split: str, annotation_file: Path) -> Dataset:
    """One COCO json -> a Dataset in the common schema (images referenced by path)."""
    coco, categories, checker = read_coco_json(annotation_file, "instances")
    per_image = defaultdict(list)
    for annotation in coco["annotations"]:
        per_image[annotation.get("image_id")].append(annotation)

    folder = image_folder(root, split)
    columns: dict[str, list] = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
    missing_images = 0
    for image in coco["images"]:
        path = folder / image["file_name"]
        if not path.is_file():
            missing_images += 1
            continue
        width, height = image["width"], image["height"]
        columns["image"].append(str(path))
        columns["image_id"].append(int(image["id"]))
        columns["width"].append(int(width))
        columns["height"].append(int(height))
        columns["objects"].append(valid_objects(per_image.get(image["id"], []), checker, width, height))
    where = f"{annotation_file} ({split})"
    checker.report(where)
    if missing_images:
        logger.warning(
            "%s: skipped %d image(s) whose file is missing under %s.", where, missing_images, folder
        )
    if not columns["image"]:
        raise ValueError(f"{where}: no usable image (the split is empty or every image file is missing).")
    features = detection_features([c["name"] for c in categories])
    dataset = Dataset.from_dict(columns, features=features)
    return set_category_ids(dataset, [c["id"] for c in categories], f"COCO folder {root}, split {split}")


__all__ = [
    "cached_split",
    "coco_splits",
    "convert_coco_split",
    "default_cache_dir",
    "is_coco_folder",
    "load_coco_folder",
]
