"""Detection data: one schema from every source, bad-data skips, augmentation, EXIF, collation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import real_coco_folder
from datasets import Dataset
from detr_testing import hub_detection_features

from hf_detr import HfDetrImageProcessor
from hf_detr.data import (
    DetectionCollator,
    DetectionDataset,
    RandomSizeCrop,
    category_ids,
    class_names,
    detection_features,
    detr_train_transforms,
    load_detection_dataset,
    write_shapes_coco,
)

CATEGORIES = [{"id": 3, "name": "car"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "tree"}]
# per image: (width, height, [(category_id, [x, y, w, h]), ...]) -- the same content in every source
IMAGES = [
    (64, 48, [(3, [4.0, 6.0, 20.0, 10.0]), (12, [30.0, 20.0, 25.0, 20.0])]),
    (50, 70, [(7, [10.0, 10.0, 30.0, 40.0])]),
    (80, 60, []),
]


def _draw(width: int, height: int, boxes) -> PIL.Image.Image:
    array = np.full((height, width, 3), 30, np.uint8)
    for _, (x, y, w, h) in boxes:
        array[int(y) : int(y + h), int(x) : int(x + w)] = 220
    return PIL.Image.fromarray(array)


def make_coco_folder(root: Path, extra_annotations=(), split: str = "train") -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    images, annotations = [], []
    for index, (width, height, boxes) in enumerate(IMAGES, start=1):
        _draw(width, height, boxes).save(root / split / f"{index}.png")
        images.append({"id": index, "file_name": f"{index}.png", "width": width, "height": height})
        for category, bbox in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": index, "category_id": category,
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})  # fmt: skip
    annotations.extend(extra_annotations)
    instances = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))
    return root


def make_hub_parquet(path: Path, bbox_format: str) -> Path:
    """A tiny Hub-style detection dataset (cppe-5 / detection-datasets layout) as one parquet file."""
    names = [c["name"] for c in CATEGORIES]
    features = hub_detection_features(names)
    rows = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
    contiguous = {c["id"]: i for i, c in enumerate(CATEGORIES)}
    for index, (width, height, boxes) in enumerate(IMAGES, start=1):
        rows["image_id"].append(index)
        rows["image"].append(_draw(width, height, boxes))
        rows["width"].append(width)
        rows["height"].append(height)
        bboxes = [b if bbox_format == "xywh" else [b[0], b[1], b[0] + b[2], b[1] + b[3]] for _, b in boxes]
        rows["objects"].append({"id": list(range(len(boxes))), "area": [b[2] * b[3] for _, b in boxes],
                                "bbox": bboxes, "category": [contiguous[c] for c, _ in boxes]})  # fmt: skip
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def comparable(split) -> list[tuple]:
    """Records as comparable tuples (image size, boxes, class names)."""
    names = class_names(split)
    result = []
    for record in split:
        objects = record["objects"]
        result.append((
            record["width"], record["height"],
            [tuple(round(v, 3) for v in b) for b in objects["bbox"]],
            [names[c] for c in objects["category"]],
        ))  # fmt: skip
    return result


EXPECTED = [
    (64, 48, [(4.0, 6.0, 20.0, 10.0), (30.0, 20.0, 25.0, 20.0)], ["car", "tree"]),
    (50, 70, [(10.0, 10.0, 30.0, 40.0)], ["dog"]),
    (80, 60, [], []),
]


# ---------------------------------------------------------------------------------------------------
# Sources and schema
# ---------------------------------------------------------------------------------------------------
def test_local_coco_folder_has_the_common_schema_and_keeps_coco_ids(tmp_path):
    dataset = load_detection_dataset(make_coco_folder(tmp_path / "coco"), cache_dir=tmp_path / "cache")
    split = dataset["train"]
    assert split.features == detection_features(["car", "dog", "tree"])
    assert comparable(split) == EXPECTED
    assert category_ids(split) == [3, 7, 12]
    assert split[0]["image_id"] == 1 and isinstance(split[0]["image"], PIL.Image.Image)


def test_coco_folder_is_converted_once_and_again_when_its_json_changes(tmp_path, monkeypatch):
    from hf_detr.data import coco_folder

    root = make_coco_folder(tmp_path / "coco")
    conversions = []
    real = coco_folder.convert_coco_split
    monkeypatch.setattr(coco_folder, "convert_coco_split", lambda *a: conversions.append(a) or real(*a))
    load_detection_dataset(root, cache_dir=tmp_path / "cache")
    load_detection_dataset(root, cache_dir=tmp_path / "cache")
    assert len(conversions) == 1
    make_coco_folder(
        root,
        extra_annotations=[{"id": 99, "image_id": 3, "category_id": 7, "bbox": [1, 1, 5, 5], "area": 25}],
    )
    assert len(load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"][2]["objects"]["bbox"]) == 1
    assert len(conversions) == 2


@pytest.mark.parametrize("bbox_format", ["xywh", "xyxy"])
def test_parquet_hub_datasets_in_both_box_formats_give_the_same_records(tmp_path, bbox_format):
    path = make_hub_parquet(tmp_path / f"{bbox_format}.parquet", bbox_format)
    dataset = load_detection_dataset(path, bbox_format=bbox_format)
    assert dataset["train"].features == detection_features(["car", "dog", "tree"])
    assert comparable(dataset["train"]) == EXPECTED
    assert category_ids(dataset["train"]) == [0, 1, 2]  # no COCO ids in the source: contiguous ones


def test_saved_datasets_load_too(tmp_path):
    path = make_hub_parquet(tmp_path / "hub.parquet", "xywh")
    load_detection_dataset(path).save_to_disk(str(tmp_path / "saved"))
    assert comparable(load_detection_dataset(tmp_path / "saved")["train"]) == EXPECTED


def test_streaming_yields_the_same_records(tmp_path):
    path = make_hub_parquet(tmp_path / "hub.parquet", "xyxy")
    streamed = load_detection_dataset(path, bbox_format="xyxy", streaming=True)["train"]
    regular = load_detection_dataset(path, bbox_format="xyxy")["train"]
    streamed_records = [
        (r["width"], r["height"], r["objects"]["bbox"], r["objects"]["category"]) for r in streamed
    ]
    regular_records = [
        (r["width"], r["height"], r["objects"]["bbox"], r["objects"]["category"]) for r in regular
    ]
    assert streamed_records == regular_records
    coco_stream = load_detection_dataset(
        make_coco_folder(tmp_path / "coco"), streaming=True, cache_dir=tmp_path / "c"
    )
    assert [r["width"] for r in coco_stream["train"]] == [64, 50, 80]
    assert category_ids(coco_stream["train"]) == [3, 7, 12]


def test_boxes_that_do_not_fit_the_declared_format_are_rejected(tmp_path):
    xywh = make_hub_parquet(tmp_path / "xywh.parquet", "xywh")
    with pytest.raises(ValueError, match="x1 < x0.*bbox_format='xywh'"):
        load_detection_dataset(xywh, bbox_format="xyxy")
    # xyxy boxes read as xywh stick out of the image
    wide = [(100, 100, [(3, [50.0, 50.0, 90.0, 95.0])] * 3), (100, 100, [(7, [60.0, 10.0, 95.0, 90.0])] * 3)]
    from unittest import mock

    with mock.patch(f"{__name__}.IMAGES", wide):
        xyxy = make_hub_parquet(tmp_path / "xyxy.parquet", "xywh")  # stored as given: really x0, y0, x1, y1
    with pytest.raises(ValueError, match="look like \\(x0, y0, x1, y1\\).*bbox_format='xyxy'"):
        load_detection_dataset(xyxy, bbox_format="xywh")


def test_unknown_or_empty_splits_are_clear_errors(tmp_path):
    root = make_coco_folder(tmp_path / "coco")
    with pytest.raises(ValueError, match=r"Unknown split 'validation'.*\['train'\]"):
        load_detection_dataset(root, split="validation", cache_dir=tmp_path / "cache")
    empty = tmp_path / "empty"
    (empty / "annotations").mkdir(parents=True)
    (empty / "annotations" / "instances_val.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": CATEGORIES})
    )
    with pytest.raises(ValueError, match="no usable image"):
        load_detection_dataset(empty, cache_dir=tmp_path / "cache")
    path = make_hub_parquet(tmp_path / "hub.parquet", "xywh")
    with pytest.raises(ValueError, match=r"Unknown split 'test'.*\['train'\]"):
        load_detection_dataset(path, split="test")


def test_the_real_coco_image_loads_with_its_annotations(tmp_path, coco_image_dir):
    root = real_coco_folder(tmp_path / "coco", coco_image_dir, "val2017")
    split = load_detection_dataset(root, split="val2017", cache_dir=tmp_path / "cache")["val2017"]
    record = split[0]
    assert (record["image_id"], record["width"], record["height"]) == (39769, 640, 480)
    names = class_names(split)
    assert sorted(names[c] for c in record["objects"]["category"]) == [
        "bed",
        "cat",
        "cat",
        "couch",
        "remote",
        "remote",
    ]
    assert category_ids(split) == [17, 63, 65, 75]
    assert split.features == detection_features(names)


# ---------------------------------------------------------------------------------------------------
# Bad data
# ---------------------------------------------------------------------------------------------------
def test_invalid_annotations_and_missing_images_are_skipped_and_counted(tmp_path, caplog):
    bad = [
        {"id": 50, "image_id": 1, "category_id": 3, "bbox": [1, 1, -4, 5], "area": 1},  # negative width
        {"id": 51, "image_id": 1, "category_id": 3, "bbox": [1, float("nan"), 4, 5], "area": 1},  # NaN
        {"id": 52, "image_id": 2, "category_id": 7, "bbox": [500, 500, 4, 5], "area": 1},  # outside
        {"id": 53, "image_id": 2, "category_id": 99, "bbox": [1, 1, 4, 5], "area": 1},  # unknown category
    ]
    root = make_coco_folder(tmp_path / "coco", extra_annotations=bad)
    instances = json.loads((root / "annotations" / "instances_train.json").read_text())
    instances["images"].append({"id": 4, "file_name": "missing.png", "width": 10, "height": 10})
    (root / "annotations" / "instances_train.json").write_text(json.dumps(instances))
    with caplog.at_level(logging.WARNING, logger="hf_detr.data"):
        split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    assert comparable(split) == EXPECTED
    text = caplog.text
    assert "skipped 4 invalid object(s)" in text
    for reason in (
        "zero or negative size",
        "NaN or infinite box",
        "box outside the image",
        "unknown category",
    ):
        assert f"1 {reason}" in text
    assert "skipped 1 image(s) whose file is missing" in text


def test_undecodable_images_are_skipped_with_a_count(tmp_path, caplog):
    root = make_coco_folder(tmp_path / "coco")
    (root / "train" / "2.png").write_bytes(b"this is not a png")
    split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    dataset = DetectionDataset(split)
    with caplog.at_level(logging.WARNING, logger="hf_detr.data"):
        samples = [dataset[i] for i in range(len(dataset))]
    assert samples[1] is None and dataset.skipped == 1
    assert "cannot decode the image" in caplog.text and "1 sample(s) skipped" in caplog.text
    batch = DetectionCollator(HfDetrImageProcessor(do_resize=False))(samples)
    assert batch["pixel_values"].shape[0] == 2 and len(batch["labels"]) == 2


# ---------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------
def _covered(image: PIL.Image.Image, boxes: list[list[float]]) -> float:
    """Fraction of the bright (drawn) pixels that lie inside the boxes."""
    bright = np.asarray(image.convert("L")) > 128
    inside = np.zeros_like(bright)
    for x, y, w, h in boxes:
        inside[
            max(0, int(np.floor(y))) : int(np.ceil(y + h)), max(0, int(np.floor(x))) : int(np.ceil(x + w))
        ] = True
    return (bright & inside).sum() / max(1, bright.sum())


def test_augmented_boxes_still_cover_the_drawn_objects(tmp_path):
    root = make_coco_folder(tmp_path / "coco")
    split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    dataset = DetectionDataset(split, transforms=detr_train_transforms(scale=0.1), seed=3)
    checked = 0
    for epoch in range(12):
        dataset.set_epoch(epoch)
        for index in range(2):  # the images with objects
            sample = dataset[index]
            boxes = [a["bbox"] for a in sample["annotation"]["annotations"]]
            image = sample["image"]
            assert _covered(image, boxes) > 0.97, (epoch, index)
            for x, y, w, h in boxes:
                assert x >= 0 and y >= 0 and x + w <= image.width + 1e-3 and y + h <= image.height + 1e-3
            checked += len(boxes)
    assert checked > 0


def test_augmentation_sizes_follow_the_scaled_paper_settings(tmp_path):
    image = PIL.Image.new("RGB", (1000, 750))
    from torchvision import tv_tensors

    sides = set()
    for seed in range(40):
        torch.manual_seed(seed)
        sample = {"image": image, "boxes": tv_tensors.BoundingBoxes(torch.tensor([[10.0, 10.0, 200.0, 200.0]]),
                  format="XYWH", canvas_size=(750, 1000)), "labels": torch.tensor([1])}  # fmt: skip
        out = detr_train_transforms(scale=0.5)(sample)
        sides.add(min(out["image"].size))
        assert max(out["image"].size) <= round(1333 * 0.5)
    assert sides <= {round(s * 0.5) for s in range(480, 801, 32)}
    assert len(sides) > 3


def test_augmentation_is_seeded_by_seed_epoch_and_index(tmp_path):
    root = make_coco_folder(tmp_path / "coco")
    split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    first = DetectionDataset(split, transforms=detr_train_transforms(scale=0.1), seed=5)
    second = DetectionDataset(split, transforms=detr_train_transforms(scale=0.1), seed=5)
    torch.manual_seed(123)  # the global RNG does not matter
    a = [first[0]["annotation"]["annotations"][0]["bbox"] for _ in range(3)]
    torch.manual_seed(456)
    b = second[0]["annotation"]["annotations"][0]["bbox"]
    assert a[0] == a[1] == a[2] == b
    outcomes = set()
    for epoch in range(8):
        first.set_epoch(epoch)
        outcomes.add(tuple(first[0]["annotation"]["annotations"][0]["bbox"]))
    assert len(outcomes) > 1


def test_random_size_crop_keeps_sizes_in_range():
    crop = RandomSizeCrop(20, 30)
    for seed in range(20):
        torch.manual_seed(seed)
        out = crop(torch.zeros(3, 50, 100))
        assert 20 <= out.shape[1] <= 30 and 20 <= out.shape[2] <= 30
    with pytest.raises(ValueError, match="min_size"):
        RandomSizeCrop(30, 20)


# ---------------------------------------------------------------------------------------------------
# EXIF and collation
# ---------------------------------------------------------------------------------------------------
def test_boxes_stay_on_their_objects_in_exif_rotated_images(tmp_path, caplog):
    """Images are read as displayed (EXIF orientation applied), so COCO boxes and sizes are the displayed
    picture's; a json that gives such an image's stored size instead is a counted skip when decoded."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    box = [5.0, 4.0, 10.0, 20.0]
    stored = _draw(30, 60, [(3, box)]).transpose(PIL.Image.Transpose.ROTATE_90)  # 60 x 30 in the file
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise on display": displayed 30 wide, 60 high
    for name in ("1.jpg", "2.jpg"):
        stored.save(root / "train" / name, exif=exif, quality=95)
    instances = {"images": [{"id": 1, "file_name": "1.jpg", "width": 30, "height": 60},
                            {"id": 2, "file_name": "2.jpg", "width": 60, "height": 30}],  # the stored size
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": box, "area": 200}],
                 "categories": CATEGORIES}  # fmt: skip
    (root / "annotations" / "instances_train.json").write_text(json.dumps(instances))
    with caplog.at_level(logging.WARNING, logger="hf_detr.data"):
        split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    assert split["image_id"] == [1, 2]  # the json's sizes are taken: a file is opened when it is decoded
    dataset = DetectionDataset(split)
    assert dataset[1] is None and dataset.skipped == 1
    assert (
        "2.jpg): the image is 30x60 but its annotation says 60x30 (the annotation gives an EXIF-rotated "
        "image's stored size; images are read as displayed)" in caplog.text
    )
    sample = dataset[0]
    assert sample["image"].size == (30, 60)
    assert _covered(sample["image"], [a["bbox"] for a in sample["annotation"]["annotations"]]) > 0.97


def test_collation_equals_the_image_processor(tmp_path):
    root = make_coco_folder(tmp_path / "coco")
    split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    dataset = DetectionDataset(split)
    processor = HfDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 100})
    samples = [dataset[i] for i in range(3)]
    batch = DetectionCollator(processor)(samples)
    expected = processor([s["image"] for s in samples], annotations=[s["annotation"] for s in samples])
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    assert torch.equal(batch["pixel_mask"], expected["pixel_mask"])
    for ours, theirs in zip(batch["labels"], expected["labels"]):
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert batch["labels"][0]["class_labels"].tolist() == [0, 2]  # contiguous ids: car, tree


def test_builtin_set_is_deterministic_and_documented(tmp_path):
    from hf_detr.data import builtin

    write_shapes_coco(tmp_path / "a", {"train": 6, "val": 2})
    write_shapes_coco(tmp_path / "b", {"train": 6, "val": 2})
    for split in ("train", "val"):
        a = (tmp_path / "a" / "annotations" / f"instances_{split}.json").read_text()
        assert a == (tmp_path / "b" / "annotations" / f"instances_{split}.json").read_text()
        for file in (tmp_path / "a" / split).iterdir():
            assert file.read_bytes() == (tmp_path / "b" / split / file.name).read_bytes()
    instances = json.loads((tmp_path / "a" / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in instances["categories"]] == list(builtin.CLASSES)
    per_image = {}
    for annotation in instances["annotations"]:
        per_image[annotation["image_id"]] = per_image.get(annotation["image_id"], 0) + 1
        w, h = annotation["bbox"][2:]
        assert builtin.OBJECT_SIZE[0] - 2 <= max(w, h) <= builtin.OBJECT_SIZE[1]
    assert set(per_image.values()) <= {1, 2, 3} and len(per_image) == 6
    split = load_detection_dataset(tmp_path / "a", cache_dir=tmp_path / "cache")["train"]
    assert class_names(split) == list(builtin.CLASSES) and category_ids(split) == [1, 2, 3]
    assert split[0]["image"].size == (builtin.IMAGE_SIZE, builtin.IMAGE_SIZE)


@pytest.mark.slow
def test_the_fine_tuning_set_draws_three_other_shapes_and_loads_by_name():
    from hf_detr.data import builtin

    data = load_detection_dataset("builtin:shapes-new-v1")
    assert {name: len(split) for name, split in data.items()} == {"train": 200, "val": 200}
    train = data["train"]
    assert class_names(train) == ["star", "cross", "ring"] and category_ids(train) == [1, 2, 3]
    # each shape fills its box as its geometry says: cross 5/9, ring 3/4 of a disc, star well under half
    fill = {1: [], 2: [], 3: []}
    for record in train.select(range(40)):
        for category, area, (_, _, w, h) in zip(
            record["objects"]["category"], record["objects"]["area"], record["objects"]["bbox"]
        ):
            fill[category_ids(train)[category]].append(area / (w * h))
    assert all(0.2 < f < 0.45 for f in fill[1]), fill[1]
    assert all(abs(f - 5 / 9) < 0.06 for f in fill[2]), fill[2]
    assert all(abs(f - 0.75 * np.pi / 4) < 0.06 for f in fill[3]), fill[3]
    main_set = load_detection_dataset()["val"]  # the main job's set is still its own
    assert class_names(main_set) == list(builtin.CLASSES) and len(main_set) == 200
    with pytest.raises(ValueError, match=r"Unknown built-in dataset 'shapes-v9'.*shapes-new-v1"):
        load_detection_dataset("builtin:shapes-v9")


def test_training_datasets_replace_undecodable_images(tmp_path):
    root = make_coco_folder(tmp_path / "coco")
    (root / "train" / "1.png").write_bytes(b"broken")
    split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    dataset = DetectionDataset(split, on_error="replace")
    assert dataset[0]["annotation"]["image_id"] == 2 and dataset.skipped == 1
    with pytest.raises(ValueError, match="on_error"):
        DetectionDataset(split, on_error="ignore")


def test_the_flip_policy_keeps_sizes_and_boxes(tmp_path):
    root = make_coco_folder(tmp_path / "coco")
    split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    dataset = DetectionDataset(split, transforms=detr_train_transforms(scale=0.06, policy="flip"), seed=1)
    for epoch in range(4):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        assert min(sample["image"].size) == round(800 * 0.06)
        assert _covered(sample["image"], [a["bbox"] for a in sample["annotation"]["annotations"]]) > 0.97
    with pytest.raises(ValueError, match="augmentation policy"):
        detr_train_transforms(policy="mosaic")
