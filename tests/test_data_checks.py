"""Data checked at load time: repeated ids, annotations of unknown images, json sizes that disagree
with the file and file names outside the folder are counted skips or warnings, in every source, and
nothing fails later in training or evaluation."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import PIL.Image
import pytest
import torch
from datasets import Dataset, Image
from test_data import EXPECTED, IMAGES, comparable, make_coco_folder, make_hub_parquet

from hf_detr.data import DetectionDataset, category_ids, load_detection_dataset, load_panoptic_dataset
from hf_detr.evaluation import CocoEvaluator, split_to_coco

WARN = {"level": logging.WARNING, "logger": "hf_detr.data"}


def edit_json(root: Path, edit, split: str = "train") -> None:
    path = root / "annotations" / f"instances_{split}.json"
    instances = json.loads(path.read_text())
    edit(instances)
    path.write_text(json.dumps(instances))


def load(root: Path, tmp_path: Path):
    return load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]


def evaluate_as_the_loop_does(split) -> dict[str, float]:
    """Ground truth from the split, each sample's own boxes as its detections, one update per sample."""
    evaluator = CocoEvaluator(split_to_coco(split), category_ids(split))
    ids = evaluator.sorted_category_ids
    dataset = DetectionDataset(split)
    for sample in (dataset[i] for i in range(len(dataset))):
        annotations = sample["annotation"]["annotations"]
        boxes = torch.tensor([a["bbox"] for a in annotations]).reshape(-1, 4)
        detection = {"boxes": torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1),
                     "scores": torch.ones(len(annotations)),
                     "labels": torch.tensor([a["category_id"] for a in annotations], dtype=torch.long)}  # fmt: skip
        evaluator.update([sample["annotation"]["image_id"]], [detection])
    assert evaluator.num_images == len(split) and ids
    return evaluator.compute()


# ---------------------------------------------------------------------------------------------------
# COCO folders
# ---------------------------------------------------------------------------------------------------
def test_images_with_a_repeated_id_are_skipped_and_evaluation_still_works(tmp_path, caplog):
    root = make_coco_folder(tmp_path / "coco")
    shutil.copy(root / "train" / "2.png", root / "train" / "copy.png")
    edit_json(
        root, lambda c: c["images"].append({"id": 2, "file_name": "copy.png", "width": 50, "height": 70})
    )
    with caplog.at_level(**WARN):
        split = load(root, tmp_path)
    assert comparable(split) == [EXPECTED[0], EXPECTED[2]]  # both images of id 2 left out
    assert sorted(split["image_id"]) == [1, 3]
    assert "skipped 2 image(s) (2 with a repeated image id" in caplog.text and "id 2" in caplog.text
    assert evaluate_as_the_loop_does(split)["AP"] == pytest.approx(1.0)


def test_repeated_annotation_ids_are_reported_and_the_objects_kept(tmp_path, caplog):
    root = make_coco_folder(tmp_path / "coco")
    edit_json(root, lambda c: [a.update(id=7) for a in c["annotations"]])
    with caplog.at_level(**WARN):
        split = load(root, tmp_path)
    assert comparable(split) == EXPECTED
    assert "1 annotation id(s) are used more than once (7); the objects are kept" in caplog.text
    ground_truth = split_to_coco(split)
    assert len({a["id"] for a in ground_truth["annotations"]}) == 3  # evaluation numbers its own
    assert evaluate_as_the_loop_does(split)["AP"] == pytest.approx(1.0)


def test_annotations_of_unknown_images_are_counted(tmp_path, caplog):
    extra = [{"id": 90, "image_id": 42, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25},
             {"id": 91, "image_id": "x", "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25}]  # fmt: skip
    root = make_coco_folder(tmp_path / "coco", extra_annotations=extra)
    with caplog.at_level(**WARN):
        split = load(root, tmp_path)
    assert comparable(split) == EXPECTED
    assert (
        "ignored 2 annotation(s) whose image_id is not an image of the json (image_id 42, x)" in caplog.text
    )


def test_a_json_size_that_disagrees_with_the_file_skips_the_image_when_it_is_decoded(tmp_path, caplog):
    root = make_coco_folder(tmp_path / "coco")
    edit_json(root, lambda c: c["images"][0].update(width=128))
    split = load(root, tmp_path)  # sizes are the json's: no file is opened to load a split
    assert comparable(split)[1:] == EXPECTED[1:] and split[0]["width"] == 128
    dataset = DetectionDataset(split)
    with caplog.at_level(**WARN):
        assert dataset[0] is None and dataset.skipped == 1
    assert "1.png): the image is 64x48 but its annotation says 128x48 (skipped, not rescaled)" in caplog.text
    assert [dataset[i]["image"].size for i in (1, 2)] == [(50, 70), (80, 60)]


def test_file_names_outside_the_folder_are_skipped(tmp_path, caplog):
    root = make_coco_folder(tmp_path / "coco")
    outside = tmp_path / "outside.png"
    PIL.Image.new("RGB", (10, 10)).save(outside)

    def add_outside(coco: dict) -> None:
        for image_id, name in ((4, "../../outside.png"), (5, str(outside))):
            coco["images"].append({"id": image_id, "file_name": name, "width": 10, "height": 10})

    edit_json(root, add_outside)
    with caplog.at_level(**WARN):
        split = load(root, tmp_path)
    assert (
        comparable(split) == EXPECTED
        and str(outside) not in split.cast_column("image", Image(decode=False))["image"]
    )
    assert "skipped 2 image(s) (2 whose file name points outside the dataset folder)" in caplog.text


def test_a_broken_image_is_never_replaced_by_a_same_named_file_elsewhere(tmp_path, caplog):
    root = make_coco_folder(tmp_path / "coco")
    width, height, _ = IMAGES[1]
    PIL.Image.new("RGB", (width, height), "red").save(root / "2.png")  # a decoy at the folder root
    (root / "train" / "2.png").write_bytes(b"")  # the split's own file is broken
    # a Roboflow-style name relative to the folder still finds its file (nothing of that name in train/)
    edit_json(root, lambda c: c["images"][2].update(file_name="train/3.png"))
    with caplog.at_level(**WARN):
        split = load(root, tmp_path)
    assert comparable(split) == [EXPECTED[0], EXPECTED[2]]  # the decoy's image 2 is not there
    assert "1 whose file is empty" in caplog.text and "2.png" in caplog.text
    (root / "train" / "2.png").write_bytes(b"broken")  # a broken file that is not empty: kept...
    with caplog.at_level(**WARN):
        split = load(root, tmp_path)  # the same json: the cache notices the changed image file
    dataset = DetectionDataset(split)
    assert dataset[1] is None and dataset.skipped == 1  # ...and counted as undecodable, not the decoy
    assert [dataset[i]["image"].size for i in (0, 2)] == [(64, 48), (80, 60)]


# ---------------------------------------------------------------------------------------------------
# Hub / parquet / save_to_disk
# ---------------------------------------------------------------------------------------------------
def edited_parquet(tmp_path: Path, column: str, values: list) -> Path:
    source = make_hub_parquet(tmp_path / "hub.parquet", "xywh")
    table = Dataset.from_parquet(str(source), cache_dir=str(tmp_path / "hf"))
    table = table.map(lambda _, i: {column: values[i]}, with_indices=True, features=table.features)
    path = tmp_path / f"edited-{column}.parquet"
    table.to_parquet(str(path))
    return path


def test_hub_records_with_a_repeated_image_id_are_skipped(tmp_path, caplog):
    path = edited_parquet(tmp_path, "image_id", [5, 5, 6])
    with caplog.at_level(**WARN):
        split = load_detection_dataset(path)["train"]
    assert comparable(split) == EXPECTED[2:] and split["image_id"] == [6]
    assert "skipped 2 image(s) (2 with a repeated image id" in caplog.text and "image_id 5" in caplog.text
    saved = tmp_path / "saved"
    Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "hf")).save_to_disk(str(saved))
    assert comparable(load_detection_dataset(saved)["train"]) == EXPECTED[2:]


def test_hub_records_whose_size_disagrees_with_the_image_are_skipped(tmp_path, caplog):
    path = edited_parquet(tmp_path, "width", [64, 51, 80])
    with caplog.at_level(**WARN):
        split = load_detection_dataset(path)["train"]
    assert comparable(split) == [EXPECTED[0], EXPECTED[2]]
    assert "1 whose width/height disagree with the image (skipped, not rescaled)" in caplog.text
    streamed = load_detection_dataset(path, streaming=True)["train"]
    assert [r["width"] for r in streamed] == [64, 80]


def test_hub_records_all_with_one_id_are_a_clear_error(tmp_path):
    path = edited_parquet(tmp_path, "image_id", [1, 1, 1])
    with pytest.raises(ValueError, match="no usable image"):
        load_detection_dataset(path)


# ---------------------------------------------------------------------------------------------------
# YOLO and VOC folders
# ---------------------------------------------------------------------------------------------------
def make_yolo_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("car\n")
    for name in ("a.png", "a.jpg", "b.png"):
        PIL.Image.new("RGB", (20, 10)).save(root / "images" / name)
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "labels" / "b.txt").write_text("0 0.25 0.5 0.5 0.5\n")
    (root / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return root


def test_yolo_images_sharing_a_label_file_are_skipped_and_unused_labels_reported(tmp_path, caplog):
    root = make_yolo_folder(tmp_path / "yolo")
    with caplog.at_level(**WARN):
        split = load(root, tmp_path)
    assert [Path(r["path"]).name for r in split.cast_column("image", Image(decode=False))["image"]] == [
        "b.png"
    ]
    assert split[0]["objects"]["bbox"] == [[0.0, 2.5, 10.0, 5.0]]
    assert "2 whose label file another image reads too" in caplog.text
    assert "1 label file(s) have no image and are ignored (orphan.txt)" in caplog.text


def make_voc_folder(root: Path, entries: dict[str, str], split_list: list[str]) -> Path:
    """xml stem -> its `filename`; the train list as given."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for stem, filename in entries.items():
        PIL.Image.new("RGB", (20, 10)).save(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{filename}</filename><size><width>20</width><height>10</height></size>"
            "<object><name>car</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>8</xmax><ymax>8</ymax>"
            "</bndbox></object></annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(split_list) + "\n")
    return root


def test_voc_repeats_and_file_names_outside_the_folder_are_counted(tmp_path, caplog):
    outside = tmp_path / "elsewhere.jpg"
    PIL.Image.new("RGB", (20, 10)).save(outside)
    entries = {"a": "a.jpg", "b": "a.jpg", "c": str(outside), "d": "../../elsewhere.jpg", "e": "e.jpg"}
    root = make_voc_folder(tmp_path / "voc", entries, ["a", "b", "c", "d", "e", "e"])
    with caplog.at_level(**WARN):
        split = load(root, tmp_path)
    assert [Path(r["path"]).name for r in split.cast_column("image", Image(decode=False))["image"]] == [
        "e.jpg"
    ]
    assert "1 id(s) are listed more than once (e); each is read once" in caplog.text
    assert "2 whose file name points outside the dataset folder" in caplog.text
    assert "2 whose image another xml names too" in caplog.text
    assert evaluate_as_the_loop_does(split)["AP"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------
# COCO panoptic
# ---------------------------------------------------------------------------------------------------
def test_panoptic_repeated_ids_and_segments_of_unknown_images_are_counted(shapes, tmp_path, caplog):
    root = tmp_path / "panoptic"
    shutil.copytree(shapes, root)
    path = root / "annotations" / "panoptic_val.json"
    coco = json.loads(path.read_text())
    kept = coco["images"][2]["id"]
    coco["images"][1]["id"] = coco["images"][0]["id"]  # two pictures, one id
    coco["annotations"].append({**coco["annotations"][2], "image_id": 999})  # of no image
    path.write_text(json.dumps(coco))
    with caplog.at_level(**WARN):
        val = load_panoptic_dataset(root, split="val", cache_dir=tmp_path / "cache")["val"]
    assert val["image_id"] == [kept]
    assert "2 with an image id repeated among the images" in caplog.text
    # the second picture's annotation now names an id no image has, as does the added one
    assert (
        "ignored 2 annotation(s) whose image_id is not an image of the json (image_id 2, 999)" in caplog.text
    )
    coco = json.loads((shapes / "annotations" / "panoptic_val.json").read_text())
    coco["annotations"][1]["image_id"] = coco["annotations"][0]["image_id"]  # two annotations, one image
    path.write_text(json.dumps(coco))
    caplog.clear()
    with caplog.at_level(**WARN):
        val = load_panoptic_dataset(root, split="val", cache_dir=tmp_path / "cache")["val"]
    assert val["image_id"] == [kept]
    assert "1 with an image id repeated among the annotations" in caplog.text
    assert "skipped 1 image(s) whose annotation is missing" in caplog.text
