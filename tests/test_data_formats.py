"""Dataset folders in COCO, YOLO and Pascal VOC form: detected, read into the one schema with the boxes
of the COCO conversion of the same objects, bad records counted, splits found, and trained on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from datasets import Image
from test_training import TINY

from hf_detr.data import category_ids, class_names, load_detection_dataset

NAMES = ["cat", "dog", "fox"]  # sorted, as VOC's classes are
# split -> images (stem, width, height, [(class name, COCO [x, y, w, h] in pixels, difficult)])
SPLITS = {
    "train": [
        ("a", 64, 48, [("cat", [4, 6, 20, 10], 0), ("fox", [30, 20, 25, 20], 0)]),
        ("b", 50, 70, [("dog", [10, 10, 30, 40], 0), ("cat", [0, 0, 8, 9], 1)]),
        ("c", 40, 30, []),
    ],
    "val": [("d", 60, 40, [("dog", [0, 0, 60, 40], 0), ("fox", [5, 5, 1, 1], 0)])],
}


def write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(width * height).integers(0, 255, (height, width, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)


def write_coco(root: Path, splits=SPLITS, first_id: int = 1) -> Path:
    """The reference: COCO's annotations/instances_{split}.json, images in {split}/."""
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": first_id + i, "name": n, "supercategory": "animal"} for i, n in enumerate(NAMES)]
    for split, images in splits.items():
        coco = {"images": [], "annotations": [], "categories": categories}
        for image_id, (stem, width, height, objects) in enumerate(images, start=1):
            write_image(root / split / f"{stem}.png", width, height)
            coco["images"].append(
                {"id": image_id, "file_name": f"{stem}.png", "width": width, "height": height}
            )
            for name, bbox, difficult in objects:
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": image_id, "bbox": bbox,
                    "category_id": first_id + NAMES.index(name), "area": bbox[2] * bbox[3], "iscrowd": difficult,
                })  # fmt: skip
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root


def yolo_lines(objects, width: int, height: int, names=NAMES) -> str:
    lines = []
    for name, (x, y, w, h), _ in objects:
        values = ((x + w / 2) / width, (y + h / 2) / height, w / width, h / height)
        lines.append(" ".join([str(names.index(name)), *(f"{v:.6f}" for v in values)]))
    return "\n".join(lines) + "\n"


def write_yolo(root: Path, layout: str, splits=SPLITS) -> Path:
    """`layout`: "yaml" (images/{split} + labels/{split}, data.yaml with a names list and a relative
    path), "roboflow" ({split}/images + {split}/labels, folders train/valid, names as a mapping,
    `../train/images` paths) or "classes.txt" (images/{split}, no yaml). Difficult objects are left out
    (YOLO has no such flag)."""
    for split, images in splits.items():
        folder = "valid" if layout == "roboflow" and split == "val" else split
        for stem, width, height, objects in images:
            image = root / folder / "images" if layout == "roboflow" else root / "images" / folder
            label = root / folder / "labels" if layout == "roboflow" else root / "labels" / folder
            write_image(image / f"{stem}.png", width, height)
            if objects:  # an image without objects has no label file
                label.mkdir(parents=True, exist_ok=True)
                (label / f"{stem}.txt").write_text(
                    yolo_lines([o for o in objects if not o[2]], width, height)
                )
    if layout == "yaml":
        (root / "data.yaml").write_text(
            # Ultralytics' `path` where the folder was made: not here, so relative to the yaml's folder
            "path: ../datasets/animals\ntrain: images/train\nval: images/val\nnc: 3\nnames: [cat, dog, fox]\n"
        )
    elif layout == "roboflow":
        (root / "data.yaml").write_text(
            "train: ../train/images\nval: ../valid/images\nnc: 3\nnames:\n  0: cat\n  1: dog\n  2: fox\n"
        )
    else:
        (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return root


def voc_xml(filename: str, width: int, height: int, objects) -> str:
    """VOC's 1-based inclusive corners of COCO boxes: xmin = x + 1, xmax = x + w."""
    parts = [f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
             f"<height>{height}</height><depth>3</depth></size>"]  # fmt: skip
    for name, (x, y, w, h), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x + 1}</xmin>"
            f"<ymin>{y + 1}</ymin><xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def write_voc(root: Path, layout: str = "devkit", splits=SPLITS) -> Path:
    """`layout`: "devkit" (Annotations/, JPEGImages/, ImageSets/Main/{split}.txt and a per-class list)
    or "roboflow" ({split}/ folders, each image's .xml beside it)."""
    for split, images in splits.items():
        for stem, width, height, objects in images:
            image_folder, xml_folder = (
                (root / "JPEGImages", root / "Annotations") if layout == "devkit" else (root / split,) * 2
            )
            write_image(image_folder / f"{stem}.png", width, height)
            xml_folder.mkdir(parents=True, exist_ok=True)
            (xml_folder / f"{stem}.xml").write_text(voc_xml(f"{stem}.png", width, height, objects))
        if layout == "devkit":
            lists = root / "ImageSets" / "Main"
            lists.mkdir(parents=True, exist_ok=True)
            (lists / f"{split}.txt").write_text("".join(f"{stem}\n" for stem, *_ in images))
            (lists / f"cat_{split}.txt").write_text("".join(f"{stem} -1\n" for stem, *_ in images))
    return root


def by_file(split) -> dict[str, tuple]:
    """Per image file name: its size and its objects as sorted (class name, box, iscrowd)."""
    names = class_names(split)
    result = {}
    for record in split.cast_column("image", Image(decode=False)):
        objects = record["objects"]
        boxes = sorted(
            (names[c], tuple(round(v, 3) for v in b), crowd)
            for c, b, crowd in zip(objects["category"], objects["bbox"], objects["iscrowd"])
        )
        result[Path(record["image"]["path"]).name] = (record["width"], record["height"], boxes)
    return result


def without_crowds(files: dict[str, tuple]) -> dict[str, tuple]:
    return {name: (w, h, [o for o in objects if not o[2]]) for name, (w, h, objects) in files.items()}


@pytest.fixture
def coco_reference(tmp_path) -> dict:
    dataset = load_detection_dataset(write_coco(tmp_path / "coco"), cache_dir=tmp_path / "cache")
    assert class_names(dataset["train"]) == NAMES
    return {name: by_file(split) for name, split in dataset.items()}


# ---------------------------------------------------------------------------------------------------
# YOLO
@pytest.mark.parametrize("layout", ["yaml", "roboflow", "classes.txt"])
def test_a_yolo_folder_has_the_boxes_of_the_same_coco_folder(tmp_path, coco_reference, layout):
    dataset = load_detection_dataset(write_yolo(tmp_path / "yolo", layout), cache_dir=tmp_path / "cache")
    assert sorted(dataset) == ["train", "val"]
    for name, split in dataset.items():
        assert class_names(split) == NAMES and category_ids(split) == [0, 1, 2]
        assert by_file(split) == without_crowds(coco_reference[name])


def test_a_yolo_folder_without_splits_or_classes_and_with_gapped_ids(tmp_path, caplog):
    root = tmp_path / "flat"
    write_image(root / "images" / "a.png", 40, 20)
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("5 0.5 0.5 0.5 0.5\n")
    with pytest.raises(ValueError, match=r"needs its class names.*classes\.txt"):
        load_detection_dataset(root, cache_dir=tmp_path / "cache")
    (root / "data.yaml").write_text("names: {2: cat, 5: fox}\n")  # ids with gaps: kept as category ids
    dataset = load_detection_dataset(root, cache_dir=tmp_path / "cache")
    assert list(dataset) == ["train"] and class_names(dataset["train"]) == ["cat", "fox"]
    assert category_ids(dataset["train"]) == [2, 5]
    assert by_file(dataset["train"]) == {"a.png": (40, 20, [("fox", (10.0, 5.0, 20.0, 10.0), 0)])}


def test_bad_yolo_lines_and_images_are_counted_skips(tmp_path, caplog):
    root = write_yolo(tmp_path / "yolo", "yaml", {"train": [("a", 100, 50, [])], "val": SPLITS["val"]})
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"  # kept: (40, 15, 20, 20)
        "2 0.1 0.2 0.5 0.2 0.5 0.6\n"  # a polygon: its box (10, 10, 40, 20)
        "\n"
        "0 0.5 0.5 0.2\n"  # wrong field count
        "0 0.5 0.5 0.2 0.4 0.9\n"  # wrong field count (a prediction's score)
        "1 x 0.5 0.2 0.2\n"  # non-numeric value
        "1.5 0.5 0.5 0.2 0.2\n"  # non-integer class
        "7 0.5 0.5 0.2 0.2\n"  # class out of range
        "0 1.5 0.5 0.2 0.2\n"  # outside [0, 1]
        "0 0.5 nan 0.2 0.2\n"  # outside [0, 1]
        "0 0.5 0.5 0 0.2\n"  # no width
    )
    write_image(root / "images" / "train" / "b.png", 30, 30)  # no label file: no objects
    (root / "images" / "train" / "broken.png").write_bytes(b"not an image")
    caplog.set_level(logging.INFO, logger="hf_detr.data")
    train = load_detection_dataset(root, split="train", cache_dir=tmp_path / "cache")["train"]
    assert by_file(train) == {
        "a.png": (100, 50, [("cat", (40.0, 15.0, 20.0, 20.0), 0), ("fox", (10.0, 10.0, 40.0, 20.0), 0)]),
        "b.png": (30, 30, []),
    }
    text = caplog.text
    assert "skipped 8 invalid object(s)" in text
    for reason in ("2 wrong field count", "1 non-numeric value", "1 non-integer class", "1 unknown category",
                   "2 coordinates outside [0, 1]", "1 zero or negative size"):  # fmt: skip
        assert reason in text, reason
    assert "skipped 1 image(s) (1 missing or unreadable image)" in text
    assert "1 image(s) without labels" in text


# ---------------------------------------------------------------------------------------------------
# Pascal VOC
@pytest.mark.parametrize("layout", ["devkit", "roboflow"])
def test_a_voc_folder_has_the_boxes_of_the_same_coco_folder(tmp_path, coco_reference, layout):
    dataset = load_detection_dataset(write_voc(tmp_path / "voc", layout), cache_dir=tmp_path / "cache")
    assert sorted(dataset) == ["train", "val"]  # the per-class list cat_train.txt is no split
    for name, split in dataset.items():
        assert class_names(split) == NAMES  # every xml's names, sorted: the same in every split
        assert by_file(split) == coco_reference[name]  # difficult = crowd (ignored by COCO evaluation)
    assert by_file(dataset["train"])["b.png"][2][0] == ("cat", (0.0, 0.0, 8.0, 9.0), 1)


def test_bad_voc_records_are_counted_skips(tmp_path, caplog):
    root = write_voc(tmp_path / "voc", splits={"train": [("a", 50, 40, [("dog", [10, 10, 20, 20], 0)])]})
    xml = (root / "Annotations" / "a.xml").read_text()
    bad = (
        "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax></bndbox></object>"
        "<object><name>cat</name><bndbox><xmin>9</xmin><ymin>1</ymin><xmax>4</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>cat</name><bndbox><xmin>x</xmin><ymin>1</ymin><xmax>4</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name></name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>cat</name><bndbox><xmin>60</xmin><ymin>1</ymin><xmax>70</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>cat</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object>"
    )  # fmt: skip
    (root / "Annotations" / "a.xml").write_text(xml.replace("</annotation>", bad + "</annotation>"))
    (root / "Annotations" / "b.xml").write_text("<annotation><filename>b.png")  # unparsable
    (root / "Annotations" / "c.xml").write_text(voc_xml("c.png", 10, 10, []))  # its image is missing
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\nc\n")
    caplog.set_level(logging.WARNING, logger="hf_detr.data")
    train = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    assert class_names(train) == ["cat", "dog"]
    assert by_file(train) == {  # a 0-based corner (xmin 0) is clipped to the image
        "a.png": (50, 40, [("cat", (0.0, 0.0, 50.0, 40.0), 0), ("dog", (10.0, 10.0, 20.0, 20.0), 0)])
    }
    text = caplog.text
    assert "skipped 5 invalid object(s)" in text
    assert "2 malformed box" in text and "1 zero or negative size" in text
    assert "1 unknown category" in text and "1 box outside the image" in text
    assert "skipped 2 image(s) (1 missing or unreadable image, 1 missing or unreadable xml)" in text


# ---------------------------------------------------------------------------------------------------
# COCO exports
def test_a_roboflow_coco_export_with_its_group_category_and_without_area_or_iscrowd(tmp_path, coco_reference):
    reference = write_coco(tmp_path / "reference")
    root = tmp_path / "roboflow"
    for split, folder in (("train", "train"), ("val", "valid")):
        coco = json.loads((reference / "annotations" / f"instances_{split}.json").read_text())
        coco["categories"] = [{"id": 0, "name": "animals", "supercategory": "none"}] + [
            {**c, "supercategory": "animals"} for c in coco["categories"]
        ]
        for annotation in coco["annotations"]:
            del annotation["area"], annotation["iscrowd"]
        (root / folder).mkdir(parents=True)
        (root / folder / "_annotations.coco.json").write_text(json.dumps(coco))
        for image in coco["images"]:
            (root / folder / image["file_name"]).write_bytes(
                (reference / split / image["file_name"]).read_bytes()
            )
    dataset = load_detection_dataset(root, cache_dir=tmp_path / "cache")
    assert sorted(dataset) == ["train", "valid"]
    assert class_names(dataset["train"]) == NAMES and category_ids(dataset["valid"]) == [1, 2, 3]
    for split, reference_split in (("train", "train"), ("valid", "val")):  # no iscrowd: not crowds
        expected = {
            f: (w, h, sorted((n, b, 0) for n, b, _ in o))
            for f, (w, h, o) in coco_reference[reference_split].items()
        }
        assert by_file(dataset[split]) == expected
    assert dataset["train"][0]["objects"]["area"] == [200.0, 500.0]  # the boxes' areas


def test_a_coco_json_with_0_based_ids_a_background_category_and_no_image_sizes(tmp_path, coco_reference):
    root = write_coco(tmp_path / "export", first_id=0)
    path = root / "annotations" / "instances_train.json"
    coco = json.loads(path.read_text())
    coco["categories"].append({"id": 3, "name": "background"})
    for image in coco["images"]:
        del image["width"], image["height"]
        image["file_name"] = f"train/{image['file_name']}"  # relative to the folder
    path.write_text(json.dumps(coco))
    dataset = load_detection_dataset(root, cache_dir=tmp_path / "cache")
    assert class_names(dataset["train"]) == NAMES and category_ids(dataset["train"]) == [0, 1, 2]
    assert by_file(dataset["train"]) == coco_reference["train"]


@pytest.mark.parametrize("layout", ["yolo", "voc"])
def test_a_folder_is_converted_once_and_again_when_one_of_its_files_changes(tmp_path, monkeypatch, layout):
    from hf_detr.data import voc_folder, yolo_folder

    module, name = (
        (yolo_folder, "convert_yolo_split") if layout == "yolo" else (voc_folder, "convert_voc_split")
    )
    conversions, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: conversions.append(a[1]) or real(*a))
    root = write_yolo(tmp_path / "data", "yaml") if layout == "yolo" else write_voc(tmp_path / "data")

    def objects_of_a() -> list:
        train = load_detection_dataset(root, split="train", cache_dir=tmp_path / "cache")["train"]
        return by_file(train)["a.png"][2]

    assert len(objects_of_a()) == 2 and len(objects_of_a()) == 2
    assert conversions == ["train"]  # the second load read the cache
    one = [SPLITS["train"][0][3][0]]
    if layout == "yolo":
        (root / "labels" / "train" / "a.txt").write_text(yolo_lines(one, 64, 48))
    else:
        (root / "Annotations" / "a.xml").write_text(voc_xml("a.png", 64, 48, one))
    assert len(objects_of_a()) == 1 and conversions == ["train", "train"]


# ---------------------------------------------------------------------------------------------------
# Detection errors, training
def test_an_ambiguous_or_unknown_folder_says_which_layouts_were_looked_for(tmp_path):
    both = write_yolo(write_coco(tmp_path / "both"), "yaml")
    with pytest.raises(ValueError, match=r"more than one annotation layout \(COCO and YOLO\)") as error:
        load_detection_dataset(both, cache_dir=tmp_path / "cache")
    assert "Pascal VOC: Annotations/*.xml" in str(error.value)
    unknown = tmp_path / "pictures"
    write_image(unknown / "a.png", 8, 8)
    (unknown / "notes.json").write_text("{}")
    with pytest.raises(ValueError, match="not a dataset folder hf_detr recognises") as error:
        load_detection_dataset(unknown, cache_dir=tmp_path / "cache")
    message = str(error.value)
    for needs in ("COCO: annotations/instances_{split}.json", "YOLO: images/ + labels/", "data.yaml",
                  "Pascal VOC: Annotations/*.xml + JPEGImages/"):  # fmt: skip
        assert needs in message, needs


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.parametrize("layout", ["yolo", "voc"])
def test_training_runs_on_a_yolo_and_a_voc_folder(tmp_path, layout):
    from hf_detr.training import resolve_arguments, train

    root = write_yolo(tmp_path / "data", "roboflow") if layout == "yolo" else write_voc(tmp_path / "data")
    out = tmp_path / "run"
    result = train(resolve_arguments({**TINY, "dataset": str(root), "output_dir": str(out), "max_steps": 2}))
    assert result.global_step == 2 and "AP" in result.stats  # evaluated on the val split
    config = json.loads((out / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(3)] == NAMES
    assert (out / "model.safetensors").is_file()
