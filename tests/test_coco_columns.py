"""A COCO instances json converts to the same split however it is read: column by column (msgspec, for
files in COCO's form) or field by field (`json`, for any other: here the same file with a UTF-8 BOM,
as Windows tools write it), with the same objects kept, clipped, numbered and counted."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import PIL.Image
import pytest

from hf_detr.data import load_detection_dataset

SIZES = [(40, 30), (64, 48), (30, 50)]


def messy_annotation(rng: random.Random, image: dict, next_id: int) -> dict:
    """An annotation of COCO's form whose values exercise every rule: boxes inside, across an edge
    (clipped), outside or of no size (skipped), categories known or not, area missing, 0 or negative,
    iscrowd missing, 0, 1 or 2, ids missing or repeated."""
    w, h = image["width"], image["height"]
    x, y = rng.uniform(-0.3, 1.1) * w, rng.uniform(-0.3, 1.1) * h
    box = [round(x, 2), round(y, 2), round(rng.uniform(-2, 0.8) * w, 2), round(rng.uniform(-2, 0.8) * h, 2)]
    if rng.random() < 0.5:  # most boxes plain: inside the image
        box = [round(rng.uniform(0, 0.5) * w, 1), round(rng.uniform(0, 0.5) * h, 1), 5, 4]
    if rng.random() < 0.1:  # a fraction of a pixel past the right or bottom edge: clipped
        box = [w - 5, h - 4, 5.5, 4] if rng.random() < 0.5 else [w - 5, h - 4, 5, 4.25]
    annotation = {"image_id": image["id"], "category_id": rng.choice([1, 2, 2, 5, 7, 99]), "bbox": box}
    if rng.random() < 0.8:
        annotation["id"] = next_id if rng.random() < 0.95 else 1
    if rng.random() < 0.7:
        annotation["area"] = rng.choice([0, 12.5, -3, 40, None])
    if rng.random() < 0.6:
        annotation["iscrowd"] = rng.choice([0, 0, 0, 1, 2, None])
    return annotation


def messy_folder(root: Path, seed: int) -> Path:
    rng = random.Random(seed)
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    images = []
    for index in range(24):
        w, h = SIZES[index % len(SIZES)]
        name = f"{index:04d}.png"
        PIL.Image.new("RGB", (w, h), (index * 9, 60, 90)).save(root / "train" / name)
        images.append({"id": 100 + index * 2, "file_name": name, "width": w, "height": h})
    images.append({"id": 100, "file_name": "0000.png", "width": 40, "height": 30})  # a repeated id
    images.append({"id": 999, "file_name": "missing.png", "width": 40, "height": 30})
    annotations = [messy_annotation(rng, rng.choice(images), 1000 + i) for i in range(400)]
    annotations.append({"image_id": 12345, "category_id": 1, "bbox": [1, 1, 2, 2], "id": 5000})  # no image
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "bird"},
                  {"id": 7, "name": "animals"}, {"id": 8, "name": "background"},
                  {"id": 9, "name": "fish", "supercategory": "animals"}]  # fmt: skip
    path = root / "annotations" / "instances_train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def converted(folder: Path, cache: Path, caplog) -> tuple[list[dict], list[str]]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="hf_detr"):
        split = load_detection_dataset(str(folder), split="train", cache_dir=str(cache))["train"]
    records = split.cast_column("image", split.features["image"].__class__(decode=False)).to_list()
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    messages = [m for m in messages if not m.startswith("Converting")]  # names the cache: the json's hash
    return records, messages


def read_field_by_field(caplog) -> bool:
    return any("read field by field" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_column_and_field_readings_give_the_same_split(tmp_path, caplog, monkeypatch, seed, streamed):
    if streamed:  # as a json larger than HF_DETR_JSON_STREAM_BYTES (1 GiB) is read
        monkeypatch.setenv("HF_DETR_JSON_STREAM_BYTES", "0")
    path = messy_folder(tmp_path / "data", seed)
    by_columns, columns_log = converted(tmp_path / "data", tmp_path / "cache-columns", caplog)
    assert not read_field_by_field(caplog)
    assert any("read as a stream" in m for m in columns_log) == streamed
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a BOM: not msgspec's JSON, read with json
    by_fields, fields_log = converted(tmp_path / "data", tmp_path / "cache-fields", caplog)
    assert read_field_by_field(caplog)
    assert by_columns == by_fields
    assert columns_log == fields_log
    assert any("skipped" in m and "invalid object(s)" in m for m in columns_log)  # the rules were exercised
    boxes = [box for record in by_columns for box in record["objects"]["bbox"]]
    assert len(boxes) > 100 and any(record["objects"]["id"] for record in by_columns)


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_one_odd_annotation_is_read_with_its_batch_field_by_field(tmp_path, caplog, monkeypatch, streamed):
    if streamed:
        monkeypatch.setenv("HF_DETR_JSON_STREAM_BYTES", "0")
    path = messy_folder(tmp_path / "data", 3)
    data = json.loads(path.read_text())
    reference, _ = converted(tmp_path / "data", tmp_path / "cache-plain", caplog)
    data["annotations"].append({"image_id": 102, "category_id": 1, "bbox": "1 2 3 4", "id": "x"})
    data["annotations"].append(["not", "an", "object"])
    path.write_text(json.dumps(data))
    records, log = converted(tmp_path / "data", tmp_path / "cache-odd", caplog)
    assert not read_field_by_field(caplog)  # the images and categories were in COCO's form
    assert records == reference  # the odd box is skipped, counted; the list entry ignored
    assert any("1 malformed box" in m for m in log)
    assert any("ignored 1 entries of 'annotations' that are not JSON objects" in m for m in log)


def test_a_malformed_stream_threshold_is_named(tmp_path, monkeypatch):
    messy_folder(tmp_path / "data", 0)
    monkeypatch.setenv("HF_DETR_JSON_STREAM_BYTES", "1GB")
    with pytest.raises(
        ValueError, match="HF_DETR_JSON_STREAM_BYTES must be a whole number of bytes, got '1GB'"
    ):
        load_detection_dataset(str(tmp_path / "data"), split="train", cache_dir=str(tmp_path / "cache"))
