"""Odd data never trains wrong or ends a run (issue 36): each case, from the user's side, is a clear
error naming the file and the field, a counted skip, or a warning; boxes follow one rule in every
loader; extreme aspect ratios train; a reporting error never loses the trained model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from unittest import mock

import PIL.Image
import pytest
from test_data import EXPECTED, comparable, make_coco_folder, make_hub_parquet
from test_data_formats import write_voc

from hf_detr import HfDetrImageProcessor
from hf_detr.data import DetectionCollator, DetectionDataset, detr_train_transforms, load_detection_dataset

WARN = {"level": logging.WARNING, "logger": "hf_detr.data"}
HUGE_BOX = "box reaching more than an image size past the edge"


def load(root: Path, tmp_path: Path):
    return load_detection_dataset(root, cache_dir=tmp_path / "cache")


def coco_json(root: Path) -> Path:
    return root / "annotations" / "instances_train.json"


def rewrite(edit):
    """A file edit that applies `edit` to the parsed json."""

    def apply(path: Path) -> None:
        coco = json.loads(path.read_text())
        edit(coco)
        path.write_text(json.dumps(coco))

    return apply


def set_category(index: int, drop: str = "", **fields):
    """A file edit that sets `fields` of category `index` and removes its field `drop`."""

    def edit(coco: dict) -> None:
        category = {**coco["categories"][index], **fields}
        coco["categories"][index] = {k: v for k, v in category.items() if k != drop}

    return rewrite(edit)


# ---------------------------------------------------------------------------------------------------
# COCO json: a broken structure or categories table is an error naming the file and the field
# ---------------------------------------------------------------------------------------------------
JSON_ERRORS = {
    "truncated": (
        lambda p: p.write_text(p.read_text()[:-40]),
        r"not valid JSON: .* \(line 1, column \d+\); the file ends early: it is truncated",
    ),
    "nested too deeply": (
        lambda p: p.write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        "the JSON nests too deeply to be read",
    ),
    "top-level number": (lambda p: p.write_text("5"), "its top level is a number, not an object"),
    "images as an object": (
        rewrite(lambda c: c.update(images={"1": c["images"][0]})),
        "'images' must be a list of objects, but it is an object",
    ),
    "annotations as a number": (
        rewrite(lambda c: c.update(annotations=3)),
        "'annotations' must be a list of objects, but it is a number",
    ),
    "category without a name": (
        set_category(0, drop="name"),
        r"category 0 of 'categories' \(\{'id': 3\}\) has no 'name'",
    ),
    "category without an id": (set_category(1, drop="id"), r"category 1 of 'categories' .* has no 'id'"),
    "mixed string and integer ids": (
        set_category(0, id="3"),
        "has the id '3', which is a string: category ids must be integers",
    ),
    "repeated category ids": (
        set_category(1, id=3),
        r"category id\(s\) 3 are used by more than one category \(car, dog\)",
    ),
    "repeated category names": (
        set_category(1, name="car"),
        r"the class name\(s\) car are given to more than one class",
    ),
}


@pytest.mark.parametrize("case", list(JSON_ERRORS))
def test_a_broken_coco_json_is_an_error_naming_the_file_and_the_field(tmp_path, case):
    edit, message = JSON_ERRORS[case]
    root = make_coco_folder(tmp_path / "coco")
    edit(coco_json(root))
    with pytest.raises(ValueError, match=message) as error:
        load(root, tmp_path)
    assert str(coco_json(root)) in str(error.value)


def test_null_annotations_are_read_as_none(tmp_path, caplog):
    root = make_coco_folder(tmp_path / "coco")
    rewrite(lambda c: c.update(annotations=None))(coco_json(root))
    with caplog.at_level(**WARN):
        split = load(root, tmp_path)["train"]
    assert [objects["bbox"] for objects in split["objects"]] == [[], [], []]
    assert f"{coco_json(root)}: 'annotations' is null: read as no annotations" in caplog.text


# ---------------------------------------------------------------------------------------------------
# COCO annotations: a bad field skips that object, counted under a reason that names the field
# ---------------------------------------------------------------------------------------------------
GOOD = {"id": 90, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
OBJECT_SKIPS = {
    "category_id as a list": ({"category_id": [3]}, "1 category_id not an id"),
    "area as text": ({"area": "big"}, "1 area not a number >= 0"),
    "iscrowd as text": ({"iscrowd": "no"}, "1 iscrowd not 0 or 1"),
    "a box 1e30 wide": ({"bbox": [4, 6, 1e30, 10]}, f"1 {HUGE_BOX}"),
    "a box starting an image size left of the image": ({"bbox": [-70, 6, 90, 10]}, f"1 {HUGE_BOX}"),
    "an infinite box": ({"bbox": [4, 6, float("inf"), 10]}, "1 NaN or infinite box"),
}


@pytest.mark.parametrize("case", list(OBJECT_SKIPS))
def test_an_annotation_with_a_bad_field_is_a_counted_skip(tmp_path, caplog, case):
    fields, reason = OBJECT_SKIPS[case]
    root = make_coco_folder(tmp_path / "coco", extra_annotations=[{**GOOD, **fields}])
    with caplog.at_level(**WARN):
        split = load(root, tmp_path)["train"]
    assert comparable(split) == EXPECTED
    assert f"{coco_json(root)} (train): skipped 1 invalid object(s) ({reason})" in caplog.text


def test_entries_that_are_not_objects_are_counted(tmp_path, caplog):
    root = make_coco_folder(tmp_path / "coco")
    rewrite(lambda c: (c["annotations"].append(5), c["images"].append("x.png")))(coco_json(root))
    with caplog.at_level(**WARN):
        split = load(root, tmp_path)["train"]
    assert comparable(split) == EXPECTED
    assert "ignored 1 entries of 'images' that are not JSON objects" in caplog.text
    assert "ignored 1 entries of 'annotations' that are not JSON objects" in caplog.text


# ---------------------------------------------------------------------------------------------------
# Boxes: one rule in every loader (clip an overshoot, skip a box far past the edge)
# ---------------------------------------------------------------------------------------------------
def coco_with_boxes(tmp_path: Path, overshoot: list, huge: list) -> Path:
    extra = [{**GOOD, "id": 90, "bbox": overshoot}, {**GOOD, "id": 91, "bbox": huge}]
    return make_coco_folder(tmp_path / "coco", extra_annotations=extra)


def voc_with_boxes(tmp_path: Path, overshoot: list, huge: list) -> Path:
    objects = [("car", tuple(overshoot), 0), ("car", tuple(huge), 0)]
    return write_voc(tmp_path / "voc", splits={"train": [("a", 64, 48, objects)]})


def hub_with_boxes(tmp_path: Path, overshoot: list, huge: list) -> Path:
    images = [(64, 48, [(3, overshoot), (3, huge)])]
    with mock.patch("test_data.IMAGES", images):
        return make_hub_parquet(tmp_path / "hub.parquet", "xywh")


@pytest.mark.parametrize(
    "make", [coco_with_boxes, voc_with_boxes, hub_with_boxes], ids=["coco", "voc", "hub"]
)
def test_boxes_that_overshoot_are_clipped_and_boxes_far_past_the_edge_skipped(tmp_path, caplog, make):
    root = make(tmp_path, overshoot=[60, 40, 5, 9], huge=[4, 6, 1e30, 10])  # in a 64x48 image
    with caplog.at_level(**WARN):
        split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    assert [60.0, 40.0, 4.0, 8.0] in split[0]["objects"]["bbox"]
    assert all(x + w <= 64 and y + h <= 48 for x, y, w, h in split[0]["objects"]["bbox"])
    assert f"skipped 1 invalid object(s) (1 {HUGE_BOX})" in caplog.text


def test_the_same_image_files_in_two_splits_are_a_warning_with_the_count(tmp_path, caplog):
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in ("a", "b"):
        PIL.Image.new("RGB", (20, 10)).save(root / "images" / f"{name}.png")
        (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("train: images\nval: images\nnames: [car]\n")
    with caplog.at_level(**WARN):
        data = load(root, tmp_path)
    assert sorted(data) == ["train", "val"]
    assert "2 image file(s) are in more than one split (2 in train and val; e.g. a.png, b.png)" in caplog.text
    caplog.clear()
    with caplog.at_level(**WARN):
        load_detection_dataset(root, split="train", cache_dir=tmp_path / "cache")
    assert "more than one split" not in caplog.text


# ---------------------------------------------------------------------------------------------------
# YOLO data.yaml: class tables that cannot be right are errors naming the yaml
# ---------------------------------------------------------------------------------------------------
YAML_ERRORS = {
    "absurd nc": ("nc: 1000000000\n", r"`nc: 1000000000` is not a number of classes \(an integer from 0 to 100,000\)"),
    "nc beyond the names": ("nc: 3\nnames: [car]\n", r"`nc: 3` but `names` has 1 classes"),
    "names keyed by words": ("names: {a: red}\n", r"`names` maps class ids to names, but its key 'a' is not a class id"),
    "a name that is a list": ("names: {0: [red]}\n", r"the name of class 0 in `names` is \[.red.\]; class names must be text"),
    "names as one word": ("names: car\n", r"`names` must list the class names"),
    "a repeated name": ("names: [car, car]\n", r"the class name\(s\) car are given to more than one class"),
    "train as a number": ("train: 5\nnames: [car]\n", r"`train` must name a folder of images"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(YAML_ERRORS))
def test_a_malformed_yolo_class_table_is_an_error_naming_the_yaml(tmp_path, case):
    text, message = YAML_ERRORS[case]
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    PIL.Image.new("RGB", (20, 10)).save(root / "images" / "a.png")
    (root / "data.yaml").write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load(root, tmp_path)
    assert str(root / "data.yaml") in str(error.value)


# ---------------------------------------------------------------------------------------------------
# Extreme aspect ratios and a reporting error during training
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["paper", "flip"])
@pytest.mark.parametrize("size", [(20000, 10), (10, 20000)], ids=["wide", "tall"])
def test_extreme_aspect_ratios_are_augmented_without_failing(tmp_path, policy, size):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    PIL.Image.new("RGB", size, "white").save(root / "train" / "strip.png")
    box = [0, 0, size[0] / 2, size[1] / 2]
    coco = {"images": [{"id": 1, "file_name": "strip.png", "width": size[0], "height": size[1]}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 1.0}],
            "categories": [{"id": 1, "name": "strip"}]}  # fmt: skip
    coco_json(root).write_text(json.dumps(coco))
    split = load(root, tmp_path)["train"]
    dataset = DetectionDataset(split, transforms=detr_train_transforms(policy=policy), on_error="replace")
    collate = DetectionCollator(HfDetrImageProcessor(do_resize=False))
    for epoch in range(8):  # both branches of the paper's augmentation are drawn
        dataset.set_epoch(epoch)
        sample = dataset[0]
        assert min(sample["image"].size) >= 1 and max(sample["image"].size) <= 1333
        assert collate([sample])["pixel_values"].shape[0] == 1


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_a_reporting_error_is_logged_after_the_final_model_is_written(tmp_path, shapes, caplog):
    from test_training import arguments, events

    from hf_detr.training import train

    out = tmp_path / "run"
    model_written_first = []

    def broken_plot(*args, **kwargs):
        model_written_first.append((out / "model.safetensors").is_file())
        raise ValueError("a plotting bug")

    plots = mock.patch("hf_detr.evaluation.report.draw_pr_curve", broken_plot)
    with plots, caplog.at_level(logging.WARNING, logger="hf_detr.training"):
        result = train(arguments(out, shapes, max_steps=1))
    assert result.stop_reason == "completed" and (out / "model.safetensors").is_file()
    assert model_written_first == [True]
    assert "the evaluation report in" in caplog.text and "ValueError: a plotting bug" in caplog.text
    assert events(out, "report_failed") == [
        {"event": "report_failed", "step": 1, "error": "ValueError: a plotting bug"}
    ]
