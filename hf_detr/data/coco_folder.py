"""A local COCO folder (annotations/instances_{split}.json + image folders) as cached arrow datasets.

Roboflow's export (`{split}/_annotations.coco.json` with the images beside it, splits train, valid,
test) is read too, and the quirks of exported jsons: 0- or 1-based category ids (classes are the
categories sorted by id either way), a category that only names the group (Roboflow's category 0,
whose name is the other categories' supercategory, or one named "background") when no annotation
uses it, missing `area` (the box's), `iscrowd` (0) or image sizes (read from the file), and
`file_name`s relative to the folder instead of the split's image folder. A CVAT export's one split is
`default` (`instances_default.json`): train on it with `--train-split default`.

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

from .folder_common import image_size
from .schema import ObjectChecker, detection_features, logger, set_category_ids

CACHE_FORMAT_VERSION = 2


def default_cache_dir() -> Path:
    """`$HF_DETR_CACHE`, else `$HF_HOME/hf_detr` (default ~/.cache/huggingface/hf_detr)."""
    if os.environ.get("HF_DETR_CACHE"):
        return Path(os.environ["HF_DETR_CACHE"])
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hf_detr"


def is_coco_folder(path: str | os.PathLike) -> bool:
    return bool(coco_splits(path))


ROBOFLOW_ANNOTATIONS = "_annotations.coco.json"


def coco_splits(root: str | os.PathLike, kind: str = "instances") -> dict[str, Path]:
    """Split name -> annotation file, from `annotations/{kind}_{split}.json` (kind: instances, panoptic)
    and, for instances, Roboflow's `{split}/_annotations.coco.json`."""
    splits = {}
    if kind == "instances":
        splits = {f.parent.name: f for f in sorted(Path(root).glob(f"*/{ROBOFLOW_ANNOTATIONS}"))}
    files = sorted((Path(root) / "annotations").glob(f"{kind}_*.json"))
    return {**splits, **{f.stem[len(kind) + 1 :]: f for f in files}}


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
    return cached_dataset(cache_root, digest.hexdigest()[:24], lambda: convert(root, split, annotation_file))


def cached_dataset(cache_root: Path, key: str, build: Callable[[], Dataset]) -> Dataset:
    """The Dataset saved under `cache_root / key`, else `build()` saved there first."""
    target = cache_root / key
    if (target / "dataset_info.json").is_file():
        return load_from_disk(str(target))
    dataset = build()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".incomplete-"))
    dataset.save_to_disk(str(staging))
    try:
        staging.rename(target)  # atomic: a concurrent or interrupted conversion never leaves half a cache
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return load_from_disk(str(target))


def read_coco_json(
    annotation_file: Path, kind: str, drop_group_categories: bool = False
) -> tuple[dict[str, Any], list[dict], ObjectChecker]:
    """A COCO `kind` json (instances, panoptic), its categories sorted by id (class id = position) and
    an `ObjectChecker` over them; with `drop_group_categories`, less the `group_categories`."""
    coco = json.loads(annotation_file.read_text())
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(f"{annotation_file} is not a COCO {kind} file: it has no {key!r}.")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    if drop_group_categories:
        dropped = group_categories(categories, coco["annotations"])
        if dropped:
            names = [c["name"] for c in categories if c["id"] in dropped]
            logger.info("%s: left out the unused group categories %s.", annotation_file, names)
        categories = [c for c in categories if c["id"] not in dropped]
    return coco, categories, ObjectChecker({c["id"]: index for index, c in enumerate(categories)})


def group_categories(categories: list[dict], annotations: list[dict]) -> set[Any]:
    """Ids of the categories no annotation uses that only name a group: "background", or the
    supercategory of another category (Roboflow's category 0, e.g. "objects")."""
    used = {a.get("category_id") for a in annotations}
    return {
        c["id"]
        for c in categories
        if c["id"] not in used
        and (
            str(c["name"]).lower() == "background"
            or any(o["id"] != c["id"] and o.get("supercategory") == c["name"] for o in categories)
        )
    }


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
        area = annotation.get("area")  # missing, null or 0 in some exports: the box's
        objects["area"].append(float(area) if area else float(bbox[2]) * float(bbox[3]))
        objects["bbox"].append([float(v) for v in bbox])
        objects["category"].append(checker.known_categories[category])
        objects["iscrowd"].append(int(annotation.get("iscrowd") or 0))
    return objects


def convert_coco_split(root: Path, split: str, annotation_file: Path) -> Dataset:
    """One COCO json -> a Dataset in the common schema (images referenced by path)."""
    coco, categories, checker = read_coco_json(annotation_file, "instances", drop_group_categories=True)
    per_image = defaultdict(list)
    for annotation in coco["annotations"]:
        per_image[annotation.get("image_id")].append(annotation)

    folder = image_folder(root, split)
    columns: dict[str, list] = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
    missing_images = 0
    for image in coco["images"]:
        path = folder / image["file_name"]
        if not path.is_file() and (root / image["file_name"]).is_file():
            path = root / image["file_name"]  # a file_name relative to the folder
        size = (image.get("width"), image.get("height"))
        size = size if all(size) else image_size(path)
        if not path.is_file() or size is None:
            missing_images += 1
            continue
        width, height = size
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
    "cached_dataset",
    "cached_split",
    "coco_splits",
    "convert_coco_split",
    "default_cache_dir",
    "is_coco_folder",
    "load_coco_folder",
]
