"""A local COCO folder (annotations/instances_{split}.json + image folders) as cached arrow datasets.

Roboflow's export (`{split}/_annotations.coco.json` with the images beside it, splits train, valid,
test) is read too, and the quirks of exported jsons: 0- or 1-based category ids (classes are the
categories sorted by id either way), a category that only names the group (Roboflow's category 0,
whose name is the other categories' supercategory, or one named "background") when no annotation
uses it, missing `area` (the box's), `iscrowd` (0) or image sizes (read from the file), and
`file_name`s relative to the folder instead of the split's image folder. A CVAT export's one split is
`default` (`instances_default.json`): train on it with `--train-split default`.

Each split's json is converted once into the common schema (hf_detr.data.schema) and saved with
`save_to_disk` under a cache folder keyed by the json's content hash and the listing of the split's
image folder (names, sizes, times), so it is re-used while neither changes. The json is read column
by column (`coco_columns`; field by field when it is not in COCO's form). Images stay files on disk:
the cache stores their absolute paths, never their pixels (`cached_dataset`), and a sample reads its
file when it is decoded; a moved folder is converted again (its path is part of the key). An image's
size is the json's (its file's header only when the json has none): the decoding skips, counted, an
image whose size as displayed is not the json's. Objects that cannot be used (see `ObjectChecker`)
and images whose file is missing are skipped, counted and reported; so are images whose id repeats
(with their annotations: whose boxes are whose cannot be told), whose `file_name` points outside the
folder (absolute, `..`), and whose file leads outside it (a symlink: real paths are compared before
a byte is read). A `file_name` is read relative to the folder only when nothing of that name is in
the split's image folder: a broken file there is never replaced by another. Annotations of no image
and repeated annotation ids are reported (the objects are kept; evaluation numbers its ground truth).
A json whose structure or categories table is wrong (not JSON, truncated, `images` not a list, a
category without an integer `id` or a `name`, an id or a name twice) is an error naming the file and
the field (`hf_detr.data.coco_json`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from stat import S_ISREG
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Image, Value, load_from_disk

from .coco_columns import (
    AnnotationColumns,
    InstancesColumns,
    fits_int64,
    image_positions,
    objects_of_images,
    odd_columns,
    read_instances_columns,
)
from .coco_json import checked_categories, coco_tables, read_json
from .folder_reading import (
    SplitColumns,
    SplitRequest,
    as_id,
    examples,
    folder_listing,
    image_header,
    relative_name,
    repeated_ints,
    requested_splits,
    short_text,
    table_dataset,
)
from .schema import PANOPTIC_MASK, ObjectChecker, is_number, logger

# 6: file paths, no pixels; 5: symlinks out of the folder skipped, sizes as displayed (EXIF)
CACHE_FORMAT_VERSION = 6


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
    root: str | os.PathLike, split: SplitRequest = None, cache_dir: str | os.PathLike | None = None
) -> DatasetDict:
    """All splits of a COCO folder (or only `split`) in the common schema."""
    return load_annotated_folder(root, split, cache_dir, "instances", convert_coco_split)


def load_annotated_folder(
    root: str | os.PathLike,
    split: SplitRequest,
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
    wanted = requested_splits(sorted(splits), split, root)
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
    the listing of the split's image folder (the conversion reads the files' headers), and read back
    from there while both are unchanged."""
    digest = hashlib.sha256()
    digest.update(f"v{CACHE_FORMAT_VERSION}:{convert.__name__}:{root.resolve()}:{split}:".encode())
    digest.update(folder_listing(image_folder(root, split), cache_root).encode())
    with open(annotation_file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return cached_dataset(
        cache_root, digest.hexdigest()[:24], lambda: convert(root, split, annotation_file), f"{root} {split}"
    )


def cached_dataset(cache_root: Path, key: str, build: Callable[[], Dataset], what: str = "") -> Dataset:
    """The Dataset saved under `cache_root / key`, else `build()` saved there first (`what`, the split's
    name for the log: one INFO line per conversion).

    The cache holds annotations and file paths, never pixels: `save_to_disk` would copy the bytes of
    every file an `Image()` column names into the arrow files (`datasets` embeds local files), so the
    image columns are saved as strings, the files' absolute paths (their folder's real path), and read
    back as `Image()` columns whose records carry the path only: an image is read from its file when it
    is decoded (and the containment check of the decoding, `DetectionDataset`, sees its real path)."""
    target = cache_root / key
    if not (target / "dataset_info.json").is_file():
        logger.info("Converting %s into the cache %s (once: later loads read it).", what or "a split", target)
        dataset = without_pixels(build())
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".incomplete-"))
        dataset.save_to_disk(str(staging))
        try:
            staging.rename(target)  # atomic: a concurrent or interrupted conversion never leaves half a cache
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
    return with_image_columns(load_from_disk(str(target)))


IMAGE_COLUMNS = ("image", PANOPTIC_MASK)  # the common schema's Image() columns (a path each in the cache)


def without_pixels(dataset: Dataset) -> Dataset:
    """`dataset` with its image columns (`IMAGE_COLUMNS`) as strings: each file's path, absolute, its
    folder's real path and its name (a symlinked file's own link is left to the decoding's check). A
    column with stored bytes (none of the folder loaders stores any) is left as it is."""
    table = dataset.with_format("arrow")[:]
    features = dataset.features.copy()
    real_folders: dict[str, str] = {}
    for name in IMAGE_COLUMNS:
        if not isinstance(features.get(name), Image):
            continue
        column = table.column(name)
        if column.null_count or pc.struct_field(column, "bytes").null_count != len(column):
            continue
        paths = []
        for path in pc.struct_field(column, "path").to_pylist():
            folder, file_name = os.path.split(os.path.abspath(path))
            if folder not in real_folders:
                real_folders[folder] = os.path.realpath(folder)
            paths.append(os.path.join(real_folders[folder], file_name))
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(paths, pa.string()))
        features[name] = Value("string")
    if features == dataset.features:
        return dataset
    info = dataset.info.copy()
    info.features = features
    return table_dataset(table.replace_schema_metadata(None), info)


def with_image_columns(dataset: Dataset) -> Dataset:
    """A cached split with its path columns (`without_pixels`) as `Image()` columns again: a record's
    `image` is {"bytes": None, "path": ...}, decoded from its file (a PIL image, as any `Image()`)."""
    for name in IMAGE_COLUMNS:
        if dataset.features.get(name) == Value("string"):
            dataset = dataset.cast_column(name, Image())
    return dataset


def read_coco_json(annotation_file: Path, kind: str) -> tuple[dict[str, Any], list[dict], ObjectChecker]:
    """A COCO `kind` json (panoptic) with its structure and categories checked (`coco_json.coco_tables`),
    its categories sorted by id (class id = position) and an `ObjectChecker` over them."""
    coco = coco_tables(read_json(annotation_file), annotation_file, kind)
    categories = coco["categories"]
    return coco, categories, ObjectChecker({c["id"]: index for index, c in enumerate(categories)})


def group_categories(categories: list[dict], used: set[Any]) -> set[Any]:
    """Ids of the categories no annotation uses (`used`: the ids they use) that only name a group:
    "background", or the supercategory of another category (Roboflow's category 0, e.g. "objects")."""
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
    known = checker.known_categories
    for annotation in annotations:
        plain = None if require_id else plain_object(annotation, known, width, height)
        if plain is not None:
            for key, value in zip(("id", "area", "bbox", "category", "iscrowd"), plain):
                objects[key].append(value if key != "id" or value is not None else len(objects["id"]))
            continue
        if require_id and isinstance(annotation, Mapping) and not isinstance(annotation.get("id"), int):
            checker.skipped["missing or non-integer segment id"] += 1
            continue
        fields = checker.checked(annotation, width, height)
        if fields is None:
            continue
        object_id = as_id(annotation.get("id"))
        objects["id"].append(object_id if object_id is not None else len(objects["id"]))
        for key in ("area", "bbox", "category", "iscrowd"):
            objects[key].append(fields[key])
    return objects


_NUMBER = (int, float)


def plain_object(
    annotation: Any, known: Mapping[Any, int], width: float, height: float
) -> tuple[int | None, float, list[float], int, int] | None:
    """(id, area, bbox, category, iscrowd) of an annotation in the common form (a JSON object, a box of
    4 finite numbers inside the image, a known integer category, `area` and `iscrowd` missing or plain),
    exactly as `ObjectChecker.checked` gives it; None for any other, left to the checker."""
    if type(annotation) is not dict:
        return None
    bbox, category = annotation.get("bbox"), annotation.get("category_id")
    if type(bbox) is not list or len(bbox) != 4 or type(category) is not int or category not in known:
        return None
    x, y, w, h = bbox
    if type(x) not in _NUMBER or type(y) not in _NUMBER or type(w) not in _NUMBER or type(h) not in _NUMBER:
        return None
    try:
        x, y, w, h = float(x), float(y), float(w), float(h)
    except OverflowError:
        return None
    # NaN fails every comparison; inf fails x + w <= width: the inside box needs no clipping
    if not (x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height):
        return None
    area, crowd = annotation.get("area"), annotation.get("iscrowd")
    if area is not None and not (type(area) in _NUMBER and is_number(area) and area >= 0):
        return None
    if crowd is not None and (type(crowd) is not int or crowd not in (0, 1)):
        return None
    object_id = annotation.get("id")
    object_id = object_id if type(object_id) is int else as_id(object_id)
    box = [x, y, w, h]
    return object_id, float(area) if area else w * h, box, known[category], crowd or 0


def coco_image_file(root: Path, folder: Path, file_name: Any) -> Path | str:
    """The file of an image's `file_name`: in the split's image folder; under `root` (a name relative to
    the folder, as some exports write) only when nothing of that name is in the image folder, so a
    broken file there is never replaced by another. A reason string when the name is unusable."""
    name = relative_name(file_name)
    if isinstance(name, str):
        return name
    path = folder / name
    if not os.path.lexists(path) and (root / name).is_file():
        return root / name
    return path


def plain_file(folder: Path, file_name: Any, columns: SplitColumns) -> tuple[str, int] | None:
    """(path, size) of an image whose `file_name` is a plain relative name (no `..`, not absolute) of a
    regular file (not a symlink) in the split's image folder inside the dataset's folders; None when
    any of that is not so, for `checked_coco_image`'s full checks. Costs one lstat (and one realpath
    per sub-folder), where those checks cost several system calls and path objects per image."""
    if not isinstance(file_name, str) or not file_name.strip() or file_name.startswith("/"):
        return None
    if ".." in file_name.split("/") or "\0" in file_name:
        return None
    path = os.path.join(folder, file_name)
    try:
        stat = os.lstat(path)
    except (OSError, ValueError):
        return None
    if not S_ISREG(stat.st_mode) or not columns.folder_inside(os.path.dirname(path)):
        return None
    return path, stat.st_size


def json_size(image: Mapping[str, Any]) -> tuple[int, int] | None:
    """The image's (width, height) as the json writes it, None when missing or not positive numbers."""
    size = image.get("width"), image.get("height")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in size):
        return round(size[0]), round(size[1])
    return None


def checked_coco_image(
    image: Mapping[str, Any], root: Path, folder: Path, repeated_ids: set[int], columns: SplitColumns
) -> tuple[Path, int, int] | str | None:
    """(file, width, height) of a json image; "missing" for a missing file; None when it is skipped for
    another reason (counted in `columns`). The file's header is read (not the pixels) to check the
    json's size: an unreadable file the json gives a size for is kept (the data loaders skip it, counted)."""
    image_id, file_name = as_id(image.get("id")), image.get("file_name")
    if image_id is None:
        columns.skip("without an integer id", file_name)
        return None
    if image_id in repeated_ids:
        columns.skip("with a repeated image id (their boxes cannot be told apart)", f"id {image_id}")
        return None
    plain = plain_file(folder, file_name, columns)
    if plain is not None:  # the common case, from one lstat: the checks below give the same answer
        path, size = plain
        if size == 0:
            columns.skip("whose file is empty", file_name)
            return None
        checked = checked_size(path, image, file_name, columns)
        return None if checked is None else (path, *checked[:2])
    path = coco_image_file(root, folder, file_name)
    if isinstance(path, str):
        columns.skip(path, f"{short_text(file_name)} (id {image_id})")
        return None
    if not columns.contained(path, file_name):
        return None
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:  # never decodable (and stored as no bytes: read as its path)
        columns.skip("whose file is empty", file_name)
        return None
    checked = checked_size(path, image, file_name, columns)
    return None if checked is None else (path, *checked[:2])


def checked_size(
    path: Path, image: Mapping[str, Any], file_name: Any, columns: SplitColumns, source: str = "json"
) -> tuple[int, int] | None:
    """(width, height) of an image whose file exists: the size its annotation `source` (json, xml)
    gives, else its file header's as displayed (the EXIF orientation applied, as every image is
    decoded; the pixels are not read); None, counted in `columns`, when neither is known. A given size
    is taken without opening the file (a header read per image is most of a COCO-size load): the
    decoding skips an image whose size is not its annotation's, counted (`collate.size_problem`). An
    unreadable file given a size is kept the same way; EXIF-rotated images read for their size are
    counted for the split's report."""
    size = json_size(image)
    if size is not None:
        return size
    header = image_header(path)
    if header is None:
        columns.skip(f"unreadable, with no size in the {source}", file_name)
        return None
    columns.rotated += header.orientation != 1
    return header[:2]


def read_instances(annotation_file: Path) -> InstancesColumns:
    """A COCO instances json as columns (`coco_columns`), its structure and categories checked: read
    with msgspec when it has COCO's form, else with `json` and every field checked (`coco_json`)."""
    coco = read_instances_columns(annotation_file)
    if coco is None:
        tables = coco_tables(read_json(annotation_file), annotation_file, "instances")
        return InstancesColumns(tables["images"], odd_columns(tables["annotations"]), tables["categories"])
    coco.categories = checked_categories(coco.categories, annotation_file)
    not_objects = [row for row, value in coco.annotations.odd.items() if not isinstance(value, dict)]
    if not_objects:
        logger.warning(
            "%s: ignored %d entries of 'annotations' that are not JSON objects.",
            annotation_file,
            len(not_objects),
        )
        coco.annotations.drop(not_objects)
    return coco


def annotation_image_ids(annotations: AnnotationColumns) -> tuple[np.ndarray, np.ndarray]:
    """Each annotation's `image_id` as an int64 and whether it is one (`as_id` of an odd row's)."""
    valid = np.ones(len(annotations), bool)
    image_ids = annotations.image_ids.copy() if annotations.odd else annotations.image_ids
    for row, value in annotations.odd.items():
        image_id = as_id(value.get("image_id"))
        valid[row] = image_id is not None and fits_int64(image_id)
        image_ids[row] = image_id if valid[row] else 0
    return image_ids, valid


def report_annotation_ids(
    annotations: AnnotationColumns, image_ids: np.ndarray, known: np.ndarray, where: str
) -> None:
    """Warn about annotations of no image of the json (`known`: whether each one's image is) and
    about repeated annotation ids (the objects are kept: evaluation numbers its ground truth itself)."""
    unknown = np.flatnonzero(~known)
    if len(unknown):
        values = {short_text(annotations.entry(row).get("image_id")) for row in unknown[:10_000].tolist()}
        logger.warning(
            "%s: ignored %d annotation(s) whose image_id is not an image of the json (image_id %s).",
            where, len(unknown), examples(sorted(values)),
        )  # fmt: skip
    odd_ids = [i for i in (as_id(value.get("id")) for value in annotations.odd.values()) if i is not None]
    twice = repeated_ints(odd_ids, annotations.ids[annotations.typed() & annotations.has_id])
    if twice:
        logger.warning(
            "%s: %d annotation id(s) are used more than once (%s); the objects are kept.",
            where, len(twice), examples(sorted(twice)),
        )  # fmt: skip


def convert_coco_split(root: Path, split: str, annotation_file: Path) -> Dataset:
    """One COCO json -> a Dataset in the common schema (images referenced by path)."""
    coco = read_instances(annotation_file)
    where = f"{annotation_file} ({split})"
    annotations = coco.annotations
    dropped = group_categories(coco.categories, used_category_ids(annotations))
    if dropped:
        names = [c["name"] for c in coco.categories if c["id"] in dropped]
        logger.info("%s: left out the unused group categories %s.", annotation_file, names)
    categories = [c for c in coco.categories if c["id"] not in dropped]
    checker = ObjectChecker({c["id"]: index for index, c in enumerate(categories)})
    image_ids = [as_id(image.get("id")) for image in coco.images]
    row_image_ids, valid = annotation_image_ids(annotations)
    json_ids = np.array(sorted({i for i in image_ids if i is not None and fits_int64(i)}), np.int64)
    report_annotation_ids(annotations, row_image_ids, valid & np.isin(row_image_ids, json_ids), where)
    columns = kept_images(coco.images, root, image_folder(root, split), repeated_ints(image_ids), where)
    coco.images = image_ids = []  # 1.7M of them in an Objects365-size json: released before the objects
    positions = image_positions(np.array(columns.columns["image_id"], np.int64), row_image_ids, valid)
    del row_image_ids, valid
    sizes = np.array([columns.columns["width"], columns.columns["height"]], np.float64).T.reshape(-1, 2)
    known = checker.known_categories
    objects = objects_of_images(
        annotations, positions, sizes, known, lambda entry, w, h: checked_object(entry, checker, w, h)
    )
    del coco, annotations  # the parsed json: freed before the arrow table is built
    columns.set_objects(objects)
    checker.report(where)
    names, ids = [c["name"] for c in categories], [c["id"] for c in categories]
    return columns.dataset(names, ids, f"COCO folder {root}, split {split}")


def kept_images(
    images: list[Mapping[str, Any]], root: Path, folder: Path, repeated_ids: set[int], where: str
) -> SplitColumns:
    """The json's images whose file and size check out, in json order (their objects to be set)."""
    columns, missing_images = SplitColumns(where, [root]), 0
    for image in images:
        checked = checked_coco_image(image, root, folder, repeated_ids, columns)
        missing_images += checked == "missing"
        if isinstance(checked, tuple):
            columns.add_image(*checked[:1], as_id(image["id"]), *checked[1:])
    if missing_images:
        logger.warning(
            "%s: skipped %d image(s) whose file is missing under %s.", where, missing_images, folder
        )
    return columns


def checked_object(
    annotation: Any, checker: ObjectChecker, width: float, height: float
) -> tuple[int | None, float, list[float], int, int] | None:
    """(id, area, bbox, class id, iscrowd) of one annotation by the per-object checks, None when the
    checker skips it (counted)."""
    plain = plain_object(annotation, checker.known_categories, width, height)
    if plain is not None:
        return plain
    fields = checker.checked(annotation, width, height)
    if fields is None:
        return None
    object_id = as_id(annotation.get("id")) if isinstance(annotation, Mapping) else None
    return object_id, fields["area"], fields["bbox"], fields["category"], fields["iscrowd"]


def used_category_ids(annotations: AnnotationColumns) -> set[Any]:
    """The `category_id`s the annotations use."""
    used = set(np.unique(annotations.category_ids[annotations.typed()]).tolist())
    odd = (value.get("category_id") for value in annotations.odd.values())
    return used | {c for c in odd if isinstance(c, Hashable)}


__all__ = [
    "cached_dataset",
    "cached_split",
    "coco_splits",
    "convert_coco_split",
    "default_cache_dir",
    "is_coco_folder",
    "load_coco_folder",
]
