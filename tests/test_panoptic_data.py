"""Panoptic data: the built-in set's COCO panoptic annotations, COCO panoptic folders and Hub/parquet
panoptic datasets in one schema with counted skips, and samples whose masks move with the image."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Image
from torchvision.ops import masks_to_boxes

from hf_detr import HfDetrImageProcessor
from hf_detr.data import (
    DetectionCollator,
    PanopticDataset,
    category_ids,
    class_names,
    detr_train_transforms,
    is_thing,
    load_panoptic_dataset,
)
from hf_detr.data.builtin import CLASSES, STUFF_CLASSES
from hf_detr.evaluation.panoptic import id_map


def png_ids(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return id_map(image)


def test_builtin_panoptic_annotations_cover_every_pixel_once(shapes):
    """Each PNG holds exactly the listed segment ids (no void), areas are pixel counts, boxes enclose the
    pixels, the background is one stuff segment of its texture and every thing lies inside its shape's box."""
    panoptic = json.loads((shapes / "annotations" / "panoptic_train.json").read_text())
    instances = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    names = {c["id"]: (c["name"], c["isthing"]) for c in panoptic["categories"]}
    assert [n for n, _ in names.values()] == [*CLASSES, *STUFF_CLASSES]
    for annotation in panoptic["annotations"]:
        ids = png_ids(shapes / "annotations" / "panoptic_train" / annotation["file_name"])
        segments = annotation["segments_info"]
        assert sorted(np.unique(ids)) == sorted(s["id"] for s in segments)
        assert sum(not names[s["category_id"]][1] for s in segments) == 1  # one background segment
        shapes_boxes = [
            a["bbox"] for a in instances["annotations"] if a["image_id"] == annotation["image_id"]
        ]
        for segment in segments:
            ys, xs = np.nonzero(ids == segment["id"])
            assert segment["area"] == len(xs)
            assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            if names[segment["category_id"]][1]:  # a thing: inside one of the image's shape boxes
                x, y, w, h = segment["bbox"]
                assert any(bx <= x and by <= y and x + w <= bx + bw and y + h <= by + bh
                           for bx, by, bw, bh in shapes_boxes)  # fmt: skip


def test_coco_panoptic_folder_loads_with_categories_and_things(shapes, tmp_path):
    data = load_panoptic_dataset(shapes, cache_dir=tmp_path)
    assert sorted(data) == ["train", "val"]
    val = data["val"]
    assert class_names(val) == [*CLASSES, *STUFF_CLASSES]
    assert is_thing(val) == [True] * 3 + [False] * 3 and category_ids(val) == [1, 2, 3, 4, 5, 6]
    record = val[0]
    panoptic = json.loads((shapes / "annotations" / "panoptic_val.json").read_text())["annotations"][0]
    assert record["objects"]["id"] == [s["id"] for s in panoptic["segments_info"]]
    assert record["panoptic_mask"].size == record["image"].size == (128, 128)


def test_bad_segments_and_missing_files_are_skipped_and_counted(shapes, tmp_path, caplog):
    root = tmp_path / "broken"
    shutil.copytree(shapes, root)
    path = root / "annotations" / "panoptic_val.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["segments_info"][0]["category_id"] = 99  # unknown category
    coco["annotations"][1]["segments_info"][0]["bbox"] = [0, 0, 0, 5]  # zero width
    path.write_text(json.dumps(coco))
    (root / "annotations" / "panoptic_val" / coco["annotations"][2]["file_name"]).unlink()
    with caplog.at_level(logging.WARNING, logger="hf_detr.data"):
        val = load_panoptic_dataset(root, split="val", cache_dir=tmp_path / "cache")["val"]
    assert len(val) == 2
    assert "skipped 2 invalid object(s) (1 unknown category, 1 zero or negative size)" in caplog.text
    assert "skipped 1 image(s) whose PNG is missing" in caplog.text


def hub_style_parquet(shapes: Path, path: Path, drop_boxes: bool) -> Path:
    panoptic = json.loads((shapes / "annotations" / "panoptic_val.json").read_text())["annotations"]
    segments = [[{k: v for k, v in s.items() if not (drop_boxes and k == "bbox")} for s in a["segments_info"]]
                for a in panoptic]  # fmt: skip
    rows = {
        "image": [str(shapes / "val" / a["file_name"]) for a in panoptic],
        "mask": [str(shapes / "annotations" / "panoptic_val" / a["file_name"]) for a in panoptic],
        "segments_info": segments,
        "image_id": [a["image_id"] for a in panoptic],
    }
    Dataset.from_dict(rows).cast_column("image", Image()).cast_column("mask", Image()).to_parquet(path)
    return path


def test_hub_style_panoptic_parquet_gives_the_folders_records(shapes, tmp_path):
    """A parquet file with image, mask (the PNG) and segments_info without boxes: boxes come from the
    PNG, ids are contiguous over the categories present, and the named stuff categories are stuff."""
    parquet = hub_style_parquet(shapes, tmp_path / "panoptic.parquet", drop_boxes=True)
    hub = load_panoptic_dataset(parquet, stuff_categories=["4", "5", "6"])["train"]
    folder = load_panoptic_dataset(shapes, split="val", cache_dir=tmp_path / "cache")["val"]
    present = category_ids(hub)
    assert set(present) <= {1, 2, 3, 4, 5, 6}
    assert is_thing(hub) == [cid <= 3 for cid in present]
    for a, b in zip(hub, folder):
        assert a["objects"]["id"] == b["objects"]["id"] and a["objects"]["bbox"] == b["objects"]["bbox"]
        assert [present[c] for c in a["objects"]["category"]] == [c + 1 for c in b["objects"]["category"]]
        assert np.array_equal(np.asarray(a["panoptic_mask"]), np.asarray(b["panoptic_mask"]))


def test_a_dataset_without_segments_is_a_clear_error(tmp_path):
    path = tmp_path / "detection.parquet"
    Dataset.from_dict({"image_id": [1], "objects": [{"bbox": [[0, 0, 1, 1]]}]}).to_parquet(path)
    with pytest.raises(ValueError, match="is not a panoptic dataset: expected an 'image' column"):
        load_panoptic_dataset(path)


@pytest.mark.parametrize("policy", [None, "paper"])
def test_sample_masks_follow_the_image_and_reach_the_processor(shapes, tmp_path, policy):
    """Without augmentation the labels' masks are the PNG's segments; with the paper's crops the masks
    still partition the picture's labelled pixels and the boxes are the masks' boxes."""
    split = load_panoptic_dataset(shapes, split="train", cache_dir=tmp_path)["train"]
    transforms = detr_train_transforms(0.16, policy) if policy else None
    dataset = PanopticDataset(split, transforms, seed=3)
    processor = HfDetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 213}, do_pad=False)
    collate = DetectionCollator(
        processor, do_resize=policy is None, format="coco_panoptic", keep_annotations=True
    )
    for index in range(len(dataset)):
        batch = collate([dataset[index]])
        labels, annotation = batch["labels"][0], batch["annotations"][0]
        masks = labels["masks"]  # [n, H, W]
        assert masks.shape[1:] == batch["pixel_values"].shape[2:]
        assert (masks.sum(0) <= 1).all() and masks.flatten(1).any(1).all()
        ids = torch.as_tensor(annotation["panoptic_image"])
        expected = torch.stack([ids == s["id"] for s in annotation["segments_info"]])
        assert torch.equal(masks, expected)
        if policy is None:
            record = split[index]
            assert torch.equal(ids, torch.from_numpy(png_ids_of(record)))
        height, width = masks.shape[1:]
        scale = torch.tensor([width, height, width, height])
        corners = masks_to_boxes(masks) / scale
        cx, cy = (corners[:, 0] + corners[:, 2]) / 2, (corners[:, 1] + corners[:, 3]) / 2
        assert torch.allclose(labels["boxes"][:, :2], torch.stack([cx, cy], 1), atol=1e-5)


def png_ids_of(record) -> np.ndarray:
    return id_map(record["panoptic_mask"])


def test_segments_missing_from_the_png_and_mismatched_pngs_are_counted(shapes, tmp_path, caplog):
    root = shutil.copytree(shapes, tmp_path / "shapes")  # the edited PNG must be inside the folder
    split = load_panoptic_dataset(root, split="val", cache_dir=tmp_path / "cache")["val"]
    objects = [dict(o) for o in list(split["objects"])]
    objects[0] = {k: [*v, v[-1]] for k, v in objects[0].items()}
    objects[0]["id"][-1] = 777  # not in the PNG
    edited = split.remove_columns("objects").add_column("objects", objects).cast(split.features)
    small = root / "small.png"
    split[1]["panoptic_mask"].resize((64, 64), PIL.Image.NEAREST).save(small)
    masks = list(edited.cast_column("panoptic_mask", Image(decode=False))["panoptic_mask"])
    masks[1] = {"path": str(small), "bytes": None}
    edited = edited.remove_columns("panoptic_mask").add_column("panoptic_mask", masks).cast(split.features)
    dataset = PanopticDataset(edited)
    with caplog.at_level(logging.WARNING, logger="hf_detr.data"):
        first, second = dataset[0], dataset[1]
    assert 777 not in [s["id"] for s in first["annotation"]["segments_info"]]
    assert "dropped 1 segment(s) whose id is not in its panoptic PNG" in caplog.text
    assert second is None and dataset.skipped == 1
    assert "cannot decode the image or its panoptic PNG" in caplog.text and "64x64" in caplog.text


def test_folders_without_panoptic_files_are_clear_errors(shapes, tmp_path):
    from hf_detr.data import load_coco_panoptic_folder

    with pytest.raises(
        FileNotFoundError, match="has no annotations/panoptic_{split}.json: not a COCO panoptic"
    ):
        load_coco_panoptic_folder(tmp_path)
    root = tmp_path / "no-pngs"
    shutil.copytree(shapes, root)
    shutil.rmtree(root / "annotations" / "panoptic_val")
    with pytest.raises(FileNotFoundError, match="no folder of panoptic PNGs for split 'val'"):
        load_coco_panoptic_folder(root, split="val", cache_dir=tmp_path / "cache")


def test_segments_without_an_integer_id_are_counted(shapes, tmp_path, caplog):
    root = tmp_path / "ids"
    shutil.copytree(shapes, root)
    path = root / "annotations" / "panoptic_val.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["segments_info"][0]["id"] = "4000"
    path.write_text(json.dumps(coco))
    with caplog.at_level(logging.WARNING, logger="hf_detr.data"):
        val = load_panoptic_dataset(root, split="val", cache_dir=tmp_path / "cache")["val"]
    assert len(val[0]["objects"]["id"]) == len(coco["annotations"][0]["segments_info"]) - 1
    assert "skipped 1 invalid object(s) (1 missing or non-integer segment id)" in caplog.text


def test_hub_segments_without_categories_are_a_clear_error(shapes, tmp_path):
    path = tmp_path / "nocategory.parquet"
    png = str(shapes / "annotations" / "panoptic_val" / "000001.png")
    rows = {"image": [str(shapes / "val" / "000001.png")], "mask": [png], "segments_info": [[{"id": 4000}]]}
    Dataset.from_dict(rows).cast_column("image", Image()).cast_column("mask", Image()).to_parquet(path)
    with pytest.raises(ValueError, match="no segment has a 'category_id'"):
        load_panoptic_dataset(path)
