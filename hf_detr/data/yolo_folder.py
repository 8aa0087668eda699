"""A YOLO txt folder (Ultralytics, Roboflow, Darknet/LabelImg exports) as cached arrow datasets.

Classes and splits come from the folder's `data.yaml` (or `dataset.yaml`, or another yaml with `names`):
`names` is a list or an {id: name} mapping of integer ids (only `nc`: class_0, class_1, ...; `nc`
with `names` must match it; at most 100,000 classes; a malformed table is an error naming the yaml);
`train`, `val` and `test` each name a folder of images, a list of them, or a .txt list of image
paths, relative to the yaml's `path` (when that exists; else to the yaml's folder). Roboflow's
`../train/images` is read as `train/images` when the first does not exist, as Ultralytics does.
Without a yaml, `classes.txt` (one name per line, in the folder or in `labels/`) names the classes
and the folders are the splits: `images/{split}` + `labels/{split}`, Ultralytics' and Roboflow's
`{split}/images` + `{split}/labels`, or `images` + `labels` (one split, "train").

Each image's labels are in the .txt of the same name, found as Ultralytics does: the last `images`
folder of the path replaced by `labels` (an image without one has no objects). A line is
`class cx cy w h`, normalized by the image's width and height; a polygon line (`class x1 y1 x2 y2
...`, 3 or more points, as in segmentation exports) gives its points' box. The pixel box is
x = (cx - w / 2) W, y = (cy - h / 2) H, w W, h H (clipped to the image), the class id is the YOLO id's
position among the names (the YOLO ids are the split's category ids). Lines with a wrong field count,
non-numbers, a class out of range, coordinates outside [0, 1] or no size are skipped, counted and
reported, like the COCO loader's invalid objects; so are images that cannot be read and images that
share one label file (`a.jpg` and `a.png`); label files that no image reads are reported. The
dataset's folders are the folder and those its yaml names (split folders, the folders of .txt lists):
an image (listed by absolute path too, as Ultralytics allows) or label file whose real path, symlinks
resolved, leaves them is skipped, counted, before a byte of it is read. Sizes are as displayed: the
EXIF orientation is applied, as to every image, so boxes are on the displayed pixels (such images are
counted).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from .coco_folder import cached_dataset, default_cache_dir, valid_objects
from .folder_reading import (
    SplitColumns,
    SplitRequest,
    as_id,
    check_class_names,
    corners_to_box,
    examples,
    files_key,
    image_files,
    image_header,
    is_image_file,
    repeated,
    requested_splits,
    short_text,
    shown,
)
from .schema import MAX_CLASSES, ObjectChecker, logger

# 5: file paths, no pixels; 4: symlinks out of the folder skipped, sizes as displayed (EXIF)
CACHE_FORMAT_VERSION = 5
YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")
SPLIT_KEYS = ("train", "val", "test")
CLASSES_FILE = "classes.txt"
OUTSIDE_LABEL = "whose label file leads outside the dataset folder (a symlink)"


def is_yolo_folder(root: str | os.PathLike) -> bool:
    """A data yaml naming the classes, or image folders with a `labels` folder beside them."""
    root = Path(root)
    return data_yaml(root) is not None or bool(folder_splits(root))


def data_yaml(root: Path) -> Path | None:
    """The folder's YOLO yaml: data.yaml (dataset.yaml) first, else another yaml with `names` or `nc`."""
    candidates = [root / name for name in YAML_NAMES]
    candidates += sorted(p for p in root.glob("*.y*ml") if p not in candidates)
    return next((p for p in candidates if p.is_file() and _is_yolo_yaml(p)), None)


def _is_yolo_yaml(path: Path) -> bool:
    try:
        data = read_yaml(path)
    except ValueError:
        return False
    return "names" in data or "nc" in data


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # hf_detr[train]

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read the yaml ({error}).") from error
    except RecursionError:
        raise ValueError(f"{path}: cannot read the yaml (it nests too deeply).") from None
    return data if isinstance(data, dict) else {}


def folder_splits(root: Path) -> dict[str, list[Path]]:
    """Split -> image folders from the layout: `images/{split}` (or `images`) beside `labels/`, or
    `{split}/images` beside `{split}/labels`."""
    if (root / "images").is_dir() and (root / "labels").is_dir():
        subfolders = sorted(p for p in (root / "images").iterdir() if p.is_dir())
        return {p.name: [p] for p in subfolders} if subfolders else {"train": [root / "images"]}
    return {
        p.name: [p / "images"]
        for p in sorted(root.iterdir())
        if (p / "images").is_dir() and (p / "labels").is_dir()
    }


def yaml_splits(data: Mapping[str, Any], yaml_path: Path) -> dict[str, list[Path]]:
    """Split -> image folders or .txt lists named by the yaml's `train`, `val` and `test`."""
    base = yaml_path.parent
    if data.get("path"):
        declared = Path(str(data["path"]))
        declared = declared if declared.is_absolute() else base / declared
        base = declared if declared.is_dir() else base  # a yaml copied with its folder: its own folder
    splits = {}
    for key in SPLIT_KEYS:
        entries = data.get(key)
        entries = [entries] if isinstance(entries, str) else entries or []
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError(
                f"{yaml_path}: `{key}` must name a folder of images or a .txt list of them (or a list of "
                f"those), not {shown(data.get(key))}."
            )
        if entries:
            splits[key] = [_resolve(base, str(entry), yaml_path, key) for entry in entries]
    return splits


def _resolve(base: Path, entry: str, yaml_path: Path, key: str) -> Path:
    candidates = [Path(entry) if Path(entry).is_absolute() else base / entry]
    if entry.startswith("../"):
        candidates.append(base / entry[3:])  # Roboflow's data.yaml points one level up
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        raise ValueError(
            f"{yaml_path}: the {key!r} images {entry!r} are not there (looked for {candidates[-1]})."
        )
    return found


def yaml_classes(
    data: Mapping[str, Any], yaml_path: Path | None = None
) -> tuple[list[str], list[int]] | None:
    """Class names and their YOLO ids from a yaml's `names` (a list or {id: name}) or `nc`; None when
    it has neither. A `ValueError` naming the yaml when `nc` is not a count up to `MAX_CLASSES` or
    disagrees with `names`, or when `names` is malformed or repeats a name."""
    names, nc = data.get("names"), data.get("nc")
    if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or not 0 <= nc <= MAX_CLASSES):
        raise ValueError(
            f"{yaml_path}: `nc: {short_text(nc)}` is not a number of classes (an integer from 0 to "
            f"{MAX_CLASSES:,}); fix it, or remove it and list the classes in `names`."
        )
    if names is None:
        return None if nc is None else ([f"class_{i}" for i in range(nc)], list(range(nc)))
    labels, ids = class_table(names, yaml_path)
    if nc is not None and nc != len(labels):
        raise ValueError(
            f"{yaml_path}: `nc: {nc}` but `names` has {len(labels)} classes; make them agree (or remove `nc`)."
        )
    check_class_names(labels, yaml_path)
    return labels, ids


def class_table(names: Any, yaml_path: Path | None) -> tuple[list[str], list[int]]:
    """The names and YOLO ids of a yaml's `names`: a list of names, or a mapping of integer ids (>= 0)
    to names; a `ValueError` naming the yaml when it is neither."""
    if isinstance(names, (list, tuple)):
        return [class_name(n, i, yaml_path) for i, n in enumerate(names)], list(range(len(names)))
    if not isinstance(names, Mapping):
        raise ValueError(
            f"{yaml_path}: `names` must list the class names (`names: [car, person]`) or map class ids to "
            f"them (`names: {{0: car, 1: person}}`), not {shown(names)}."
        )
    table: dict[int, str] = {}
    for key, name in names.items():
        class_id = key if isinstance(key, int) and not isinstance(key, bool) else None
        class_id = as_id(key) if isinstance(key, str) else class_id
        if class_id is None or class_id < 0 or class_id in table:
            what = "repeats a class id" if class_id in table else "is not a class id (an integer >= 0)"
            raise ValueError(
                f"{yaml_path}: `names` maps class ids to names, but its key {shown(key)} {what}; "
                "write it as `names: {0: car, 1: person}` or as a list."
            )
        table[class_id] = class_name(name, key, yaml_path)
    ids = sorted(table)
    return [table[i] for i in ids], ids


def class_name(name: Any, key: Any, yaml_path: Path | None) -> str:
    """A class name from the yaml (a number is read as its text); a `ValueError` for anything else."""
    if isinstance(name, (str, int, float)) and str(name).strip():
        return str(name)
    raise ValueError(
        f"{yaml_path}: the name of class {short_text(key)} in `names` is {shown(name)}; class names "
        "must be text."
    )


def classes_file(root: Path, splits: Mapping[str, list[Path]]) -> Path:
    """The classes.txt: in the folder, in labels/, or in a split's label folder (LabelImg writes it there)."""
    label_folders = [label_file(f / "image", root).parent for folders in splits.values() for f in folders]
    candidates = [
        root / CLASSES_FILE,
        root / "labels" / CLASSES_FILE,
        *(f / CLASSES_FILE for f in label_folders),
    ]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ValueError(
            f"{root}: a YOLO folder needs its class names: a data.yaml with `names:` (a list, or "
            f"id: name) or a {CLASSES_FILE} with one name per line (in the folder or in labels/)."
        )
    return found


def yolo_layout(
    root: Path,
) -> tuple[dict[str, list[Path]], list[str], list[int], list[Path], list[Path]]:
    """Splits (image folders or lists), class names, their YOLO ids, the files that name them, and the
    dataset's folders: `root` and those its yaml names (a split's folder, a .txt list's folder)."""
    yaml_path = data_yaml(root)
    data = read_yaml(yaml_path) if yaml_path is not None else {}
    splits = yaml_splits(data, yaml_path) if yaml_path is not None else {}
    folders = [root, *(f for entries in splits.values() for p in entries for f in declared_folders(p, root))]
    splits = splits or folder_splits(root)
    if not splits:
        raise ValueError(
            f"{root}: no YOLO images found: the yaml names no `train`/`val`/`test` and there is no "
            "images/ + labels/ (or {split}/images + {split}/labels) folder."
        )
    classes = yaml_classes(data, yaml_path)
    if classes is not None:
        return splits, *classes, [yaml_path], folders
    names_file = classes_file(root, splits)
    names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    check_class_names(names, names_file)
    sources = [p for p in (yaml_path, names_file) if p is not None]
    return splits, names, list(range(len(names))), sources, folders


def declared_folders(source: Path, root: Path) -> list[Path]:
    """The folders a yaml's split entry adds to the dataset: an image folder and its label folder, or
    the folder of a .txt list (its entries are relative to it)."""
    return [source, label_file(source / "image", root).parent] if source.is_dir() else [source.parent]


def load_yolo_folder(
    root: str | os.PathLike, split: SplitRequest = None, cache_dir: str | os.PathLike | None = None
) -> DatasetDict:
    """All splits of a YOLO folder (or only `split`) in the common schema, each cached until its files change."""
    root = Path(root)
    splits, names, ids, sources, folders = yolo_layout(root)
    wanted = requested_splits(list(splits), split, root)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "yolo"
    images_of = {name: split_images(entries, folders) for name, entries in splits.items()}
    lists = {source for folders in splits.values() for source in folders if source.is_file()}
    used = [label_file(image, root) for images in images_of.values() for image in images]
    report_unused_labels(root, used, lists)
    result = {}
    for name in wanted:
        images = images_of[name]
        labels = [label_file(image, root) for image in images]
        tag = f"yolo:v{CACHE_FORMAT_VERSION}:{root.resolve()}:{name}:{names}:{ids}"
        key = files_key(tag, [*sources, *images, *labels])
        build = lambda name=name, images=images, labels=labels: convert_yolo_split(  # noqa: E731
            root, name, images, labels, names, ids, folders
        )
        result[name] = cached_dataset(cache_root, key, build, f"{root} {name}")
    return DatasetDict(result)


def split_images(sources: list[Path], folders: list[Path]) -> list[Path]:
    """The images of a split: every image under its folders, and those listed in its .txt files
    (relative paths relative to the list's folder); a symlinked folder that leaves the dataset's
    `folders` is listed itself, for the conversion to count (`image_files`)."""
    images: list[Path] = []
    for source in sources:
        if source.is_dir():
            images.extend(image_files(source, folders))
            continue
        for line in source.read_text().splitlines():
            entry = Path(line.strip())
            if line.strip():
                images.append(entry if entry.is_absolute() else source.parent / entry)
    return list(dict.fromkeys(images))


def report_unused_labels(root: Path, labels: list[Path], lists: set[Path]) -> None:
    """Warn about the label files (in the folders of `labels`) that no image of any split reads (the
    splits' image `lists` are not label files)."""
    used = set(labels) | lists
    folders = {label.parent for label in labels}
    unused = sorted(
        p for folder in folders if folder.is_dir() for p in folder.glob("*.txt")
        if p not in used and p.name != CLASSES_FILE
    )  # fmt: skip
    if unused:
        logger.warning(
            "YOLO folder %s: %d label file(s) have no image and are ignored (%s).",
            root, len(unused), examples(p.name for p in unused),
        )  # fmt: skip


def label_file(image: Path, root: Path) -> Path:
    """The label .txt of an image: its path with the last `images` folder (below `root`) replaced by
    `labels` and the suffix by .txt; beside the image when no `images` folder is in the path."""
    try:
        prefix, parts = root, image.relative_to(root).parts
    except ValueError:
        prefix, parts = Path(image.anchor), image.parts[1:]
    if "images" in parts[:-1]:
        last = len(parts) - 2 - parts[:-1][::-1].index("images")
        parts = (*parts[:last], "labels", *parts[last + 1 :])
    return (prefix.joinpath(*parts)).with_suffix(".txt")


def parse_label_line(fields: list[str]) -> tuple[int, tuple[float, float, float, float]] | str:
    """A label line's YOLO class and normalized corners (x0, y0, x1, y1), or why it is unusable."""
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        return "wrong field count"
    try:
        number = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        return "non-numeric value"
    if not number.is_integer():
        return "non-integer class"
    if not all(0.0 <= v <= 1.0 for v in values):  # NaN fails too
        return "coordinates outside [0, 1]"
    if len(fields) == 5:
        cx, cy, w, h = values
        return int(number), (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    xs, ys = values[0::2], values[1::2]  # a polygon: its points' box
    return int(number), (min(xs), min(ys), max(xs), max(ys))


def label_annotations(text: str, width: int, height: int, checker: ObjectChecker) -> list[dict[str, Any]]:
    """The lines of one label file as COCO annotations (pixel boxes); unusable lines counted by `checker`."""
    annotations = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        parsed = parse_label_line(fields)
        if isinstance(parsed, str):
            checker.skipped[parsed] += 1
            continue
        category, (x0, y0, x1, y1) = parsed
        bbox = corners_to_box(x0 * width, y0 * height, x1 * width, y1 * height)
        annotations.append({"id": len(annotations), "bbox": bbox, "category_id": category})
    return annotations


def convert_yolo_split(
    root: Path,
    split: str,
    images: list[Path],
    labels: list[Path],
    names: list[str],
    ids: list[int],
    folders: list[Path],
) -> Dataset:
    """One split's images and label files -> a Dataset in the common schema (images referenced by path);
    nothing is read of a file that leaves the dataset's `folders`."""
    checker = ObjectChecker({yolo_id: index for index, yolo_id in enumerate(ids)})
    columns = SplitColumns(f"YOLO folder {root} ({split})", folders)
    unlabelled = next_id = 0
    shared = repeated(labels)  # a.jpg and a.png: whose boxes the label file holds cannot be told
    for image_id, (image, label) in enumerate(zip(images, labels), start=1):
        if label in shared:
            columns.skip("whose label file another image reads too", f"{image.name} ({label.name})")
            continue
        if not columns.contained(image) or not columns.contained(label, image.name, OUTSIDE_LABEL):
            continue
        header = image_header(image) if is_image_file(image) else None
        if header is None:
            columns.skipped_images["missing or unreadable image"] += 1
            continue
        width, height, orientation = header
        try:
            text = label.read_text() if label.is_file() else ""
        except (OSError, UnicodeDecodeError):
            columns.skipped_images["unreadable label file"] += 1
            continue
        unlabelled += not text.strip()
        annotations = label_annotations(text, width, height, checker)
        for annotation in annotations:  # ids unique in the split
            next_id += 1
            annotation["id"] = next_id
        columns.rotated += orientation != 1
        columns.add(image, image_id, width, height, valid_objects(annotations, checker, width, height))
    checker.report(columns.where)
    if unlabelled:
        logger.info("%s: %d image(s) without labels (no objects).", columns.where, unlabelled)
    return columns.dataset(names, ids, f"YOLO folder {root}, split {split}")


__all__ = ["is_yolo_folder", "label_file", "load_yolo_folder", "parse_label_line"]
