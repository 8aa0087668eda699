"""A Pascal VOC XML folder as cached arrow datasets.

Layouts: the VOC devkit's (`Annotations/{id}.xml`, `JPEGImages/`, the splits in
`ImageSets/Main/{split}.txt`, one id a line; without those, one split "train" of every xml; the
per-class lists such as `aeroplane_train.txt`, two fields a line, are not splits), or Roboflow's
export (`{split}/` folders with each image's .xml beside it).

Boxes: VOC's `xmin, ymin, xmax, ymax` are 1-based, inclusive pixel indices (xmin = 1, xmax = W covers
the image). As detectron2's VOC loader (after Detectron's) does, the continuous corners are
(xmin - 1, ymin - 1, xmax, ymax), so the COCO box is (xmin - 1, ymin - 1, xmax - xmin + 1,
ymax - ymin + 1); it is then clipped to the image (exports that write 0-based corners would
otherwise stick out by a pixel), or skipped, counted, when it reaches more than an image size past an
edge (`ObjectChecker`, the rule of every loader). torchvision's `VOCDetection` returns the XML's numbers unconverted.

Classes: the objects' names over every xml of the folder, sorted (so every split has the same ones);
their category ids are their positions. `difficult=1` objects are kept as ignore regions
(`iscrowd=1`): the processor drops crowds for training and COCO evaluation ignores them, as VOC's does
with difficult objects. Objects with a malformed box or none of the image, unreadable xml files,
missing images, a `filename` that points outside the folder (absolute, `..`), an image or xml whose real
path leaves the folder (a symlink: nothing of it is read), an xml `size` that disagrees with the image
(its size as displayed: images are read with their EXIF orientation applied, so boxes are on the
displayed pixels) and xml files that name the same image as another are skipped, counted and
reported, like the COCO loader's; an id listed twice in a split's list is read once.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from .coco_folder import cached_dataset, checked_size, default_cache_dir, valid_objects
from .folder_reading import (
    IMAGE_SUFFIXES,
    SplitColumns,
    SplitRequest,
    corners_to_box,
    examples,
    files_key,
    inside_folders,
    is_image_file,
    relative_name,
    repeated,
    requested_splits,
)
from .schema import ObjectChecker, logger

# 5: file paths, no pixels; 4: symlinks out of the folder skipped, sizes checked as displayed (EXIF)
CACHE_FORMAT_VERSION = 5
CORNERS = ("xmin", "ymin", "xmax", "ymax")
SUFFIXES = (*IMAGE_SUFFIXES, *(s.upper() for s in IMAGE_SUFFIXES))  # an image named after its xml


@dataclass
class VocRecord:
    """One parsed xml: the image's file name and size (0 when not written) and its objects."""

    filename: str
    width: int
    height: int
    objects: list[dict[str, Any]] = field(
        default_factory=list
    )  # name, difficult, corners (None if malformed)


def is_voc_folder(root: str | os.PathLike) -> bool:
    root = Path(root)
    return bool(devkit_xml(root)) or bool(roboflow_splits(root))


def devkit_xml(root: Path) -> list[Path]:
    folder = root / "Annotations"
    return sorted(folder.glob("*.xml")) if folder.is_dir() else []


def roboflow_splits(root: Path) -> dict[str, list[Path]]:
    """Split -> xml files of the `{split}/` folders that hold images with their .xml beside them."""
    splits = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "Annotations"):
        files = sorted(folder.glob("*.xml"))
        if files and any(is_image_file(files[0].with_suffix(s)) for s in SUFFIXES):
            splits[folder.name] = files
    return splits


def voc_splits(root: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Split -> xml files, and every xml of the folder (the classes are read from them all)."""
    everything = devkit_xml(root)
    if not everything:
        splits = roboflow_splits(root)
        return splits, sorted({f for files in splits.values() for f in files})
    lists = root / "ImageSets" / "Main"
    splits = {}
    for split_file in sorted(lists.glob("*.txt")) if lists.is_dir() else []:
        ids = [line.split() for line in split_file.read_text().splitlines() if line.strip()]
        if ids and all(len(fields) == 1 for fields in ids):  # not a per-class list ("000005 -1")
            unique = list(dict.fromkeys(fields[0] for fields in ids))
            if len(unique) < len(ids):  # one image twice would be evaluated twice
                twice = sorted(repeated(fields[0] for fields in ids))
                logger.warning(
                    "%s: %d id(s) are listed more than once (%s); each is read once.",
                    split_file, len(twice), examples(twice),
                )  # fmt: skip
            splits[split_file.stem] = [root / "Annotations" / f"{name}.xml" for name in unique]
    return splits or {"train": everything}, everything


def parse_voc_xml(path: Path) -> VocRecord | None:
    """One annotation file, None when it cannot be read or parsed."""
    try:
        tree = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    record = VocRecord(
        tree.findtext("filename", "").strip(), _number(tree, "size/width"), _number(tree, "size/height")
    )
    for element in tree.iter("object"):
        box = element.find("bndbox")
        try:
            corners = tuple(float(box.findtext(key)) for key in CORNERS) if box is not None else None
        except (TypeError, ValueError):
            corners = None
        record.objects.append({
            "name": (element.findtext("name") or "").strip(),
            "difficult": _number(element, "difficult") == 1,
            "corners": corners,
        })  # fmt: skip
    return record


def _number(element: ET.Element, path: str) -> int:
    try:
        return int(float(element.findtext(path) or 0))
    except ValueError:
        return 0


def voc_box(corners: tuple[float, float, float, float]) -> list[float]:
    """VOC's 1-based inclusive (xmin, ymin, xmax, ymax) -> COCO (x, y, w, h), unclipped (`ObjectChecker`
    clips it to the image or counts it)."""
    xmin, ymin, xmax, ymax = corners
    return corners_to_box(xmin - 1, ymin - 1, xmax, ymax)


def load_voc_folder(
    root: str | os.PathLike, split: SplitRequest = None, cache_dir: str | os.PathLike | None = None
) -> DatasetDict:
    """All splits of a Pascal VOC folder (or only `split`) in the common schema, each cached until its
    files change."""
    root = Path(root)
    splits, everything = voc_splits(root)
    if not everything:
        raise FileNotFoundError(
            f"{root} has no Annotations/*.xml nor {{split}}/ folders of images with their .xml."
        )
    wanted = requested_splits(list(splits), split, root)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "voc"
    folders = sorted({f.parent for f in everything} | {root / "JPEGImages"})
    listing = files_key("voc files", [p for f in folders if f.is_dir() for p in sorted(f.iterdir())])
    records: dict[Path, VocRecord | None] = {}
    result = {}
    for name in wanted:
        split_list = root / "ImageSets" / "Main" / f"{name}.txt"
        key = files_key(f"voc:v{CACHE_FORMAT_VERSION}:{root.resolve()}:{name}:{listing}", [split_list])
        build = lambda name=name: convert_voc_split(root, name, splits[name], everything, records)  # noqa: E731
        result[name] = cached_dataset(cache_root, key, build, f"{root} {name}")
    return DatasetDict(result)


def voc_classes(everything: list[Path], records: dict[Path, VocRecord | None], root: Path) -> list[str]:
    """The sorted object names over every xml (parsed once into `records`) inside the folder (`root`)."""
    for path in everything:
        if path not in records:
            records[path] = parse_voc_xml(path) if inside_folders(path, [root]) else None
    return sorted({o["name"] for r in records.values() if r is not None for o in r.objects if o["name"]})


def image_path(xml_file: Path, record: VocRecord, root: Path) -> Path | str | None:
    """The image of an xml: its `filename` in JPEGImages/ or beside the xml, else the xml's stem with an
    image suffix; None when there is none; a reason string when `filename` points outside the folder."""
    folders = (
        [root / "JPEGImages", xml_file.parent] if xml_file.parent.name == "Annotations" else [xml_file.parent]
    )
    filename = relative_name(record.filename) if record.filename else None
    if isinstance(filename, str):
        return filename
    names = [filename] if filename else []
    names += [xml_file.stem + s for s in SUFFIXES]
    return next((f / n for f in folders for n in names if is_image_file(f / n)), None)


def split_records(
    xml_files: list[Path], records: dict[Path, VocRecord | None], root: Path, columns: SplitColumns
) -> list[tuple[Path, VocRecord, Path]]:
    """(xml, record, image) of each usable xml of a split; the others counted in `columns`, and every
    xml whose image another xml names too (whose boxes are the image's cannot be told)."""
    found = []
    for xml_file in xml_files:
        if not columns.contained(xml_file):
            continue
        record = records.get(xml_file) if xml_file in records else parse_voc_xml(xml_file)
        path = image_path(xml_file, record, root) if record is not None else None
        if record is None:
            columns.skipped_images["missing or unreadable xml"] += 1
        elif isinstance(path, str):
            columns.skip(path, f"{xml_file.name} ({record.filename})")
        elif path is None:
            columns.skipped_images["missing or unreadable image"] += 1
        elif columns.contained(path, f"{xml_file.name} ({path.name})"):
            found.append((xml_file, record, path))
    shared = repeated(path for _, _, path in found)
    for xml_file, _, path in found:
        if path in shared:
            columns.skip("whose image another xml names too", f"{xml_file.name} ({path.name})")
    return [item for item in found if item[2] not in shared]


def convert_voc_split(
    root: Path,
    split: str,
    xml_files: list[Path],
    everything: list[Path],
    records: dict[Path, VocRecord | None],
) -> Dataset:
    """One split's xml files -> a Dataset in the common schema (images referenced by path). Image ids
    are the positions among every xml of the folder, the same in every split."""
    names = voc_classes(everything, records, root)
    checker = ObjectChecker({name: index for index, name in enumerate(names)})
    image_ids = {path: index for index, path in enumerate(everything, start=1)}
    columns = SplitColumns(f"VOC folder {root} ({split})", [root])
    next_id = 0
    for xml_file, record, path in split_records(xml_files, records, root, columns):
        written = {"width": record.width, "height": record.height}  # 0 when not written
        checked = checked_size(path, written, f"{xml_file.name} ({path.name})", columns, "xml")
        if checked is None:
            continue
        size = checked[:2]
        annotations = []
        for item in record.objects:
            if item["corners"] is None:
                checker.skipped["malformed box"] += 1
                continue
            next_id += 1
            annotations.append({"id": next_id, "bbox": voc_box(item["corners"]),
                                "category_id": item["name"], "iscrowd": int(item["difficult"])})  # fmt: skip
        objects = valid_objects(annotations, checker, *size)
        columns.add(path, image_ids.get(xml_file, len(image_ids) + 1), *size, objects)
    checker.report(columns.where)
    return columns.dataset(names, list(range(len(names))), f"VOC folder {root}, split {split}")


__all__ = ["is_voc_folder", "load_voc_folder", "parse_voc_xml", "voc_box"]
