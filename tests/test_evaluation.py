"""COCO evaluation: equal to pycocotools, perfect detections, label mapping, metric, CLI, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO_ROOT, real_coco_folder
from synthetic_coco import pycocotools_stats, synthetic_coco

from hf_detr.evaluation import CocoEvaluator, label_to_category_mapping, split_to_coco
from hf_detr.evaluation import coco_evaluator as coco_evaluator_module


@pytest.fixture(scope="module")
def synthetic():
    ground_truth, image_ids, detections = synthetic_coco(60, detections_per_image=30, seed=1)
    # an image without ground truth and all three area ranges must be present
    assert any(not any(a["image_id"] == i for a in ground_truth["annotations"]) for i in image_ids)
    areas = [a["bbox"][2] * a["bbox"][3] for a in ground_truth["annotations"]]
    assert min(areas) < 32**2 and max(areas) > 96**2 and any(32**2 < a < 96**2 for a in areas)
    assert any(a["iscrowd"] for a in ground_truth["annotations"]) and any(
        len(d["boxes"]) == 0 for d in detections
    )
    return ground_truth, image_ids, detections


@pytest.mark.parametrize(
    ("backend", "workers"), [("faster_coco_eval", 1), ("faster_coco_eval", 2), ("pycocotools", 1)]
)
def test_stats_equal_pycocotools_to_1e9(synthetic, backend, workers, monkeypatch):
    monkeypatch.setattr(coco_evaluator_module, "PARALLEL_MIN_DETECTIONS", 0)  # exercise the worker split
    ground_truth, image_ids, detections = synthetic
    evaluator = CocoEvaluator(ground_truth, backend=backend, num_workers=workers)
    for start in range(0, len(image_ids), 7):
        evaluator.update(image_ids[start : start + 7], detections[start : start + 7])
    stats = evaluator.compute()
    reference = pycocotools_stats(ground_truth, image_ids, detections)
    assert 0.05 < stats["AP50"] < 0.95  # a non-trivial case
    np.testing.assert_allclose(list(stats.values()), reference[:12], rtol=0, atol=1e-9)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] =" in evaluator.summary()


def test_perfect_detections_give_ap_1(synthetic):
    ground_truth, image_ids, _ = synthetic
    perfect = []
    for image_id in image_ids:
        objects = [a for a in ground_truth["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in objects)]).reshape(
            -1, 4
        )
        perfect.append(
            {
                "boxes": boxes,
                "scores": torch.ones(len(objects)),
                "labels": torch.tensor([a["category_id"] for a in objects], dtype=torch.long),
            }
        )
    evaluator = CocoEvaluator(ground_truth)
    evaluator.update(image_ids, perfect)
    stats = evaluator.compute()
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    assert stats["APs"] == pytest.approx(1.0) and stats["APl"] == pytest.approx(1.0)


def test_the_real_coco_image(coco_image_dir):
    ground_truth = json.loads((coco_image_dir / "instances.json").read_text())
    objects = ground_truth["annotations"]
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in objects)])
    labels = torch.tensor([a["category_id"] for a in objects])
    scores = torch.linspace(0.9, 0.4, len(objects))
    evaluator = CocoEvaluator(coco_image_dir / "instances.json")
    evaluator.update([39769], [{"boxes": boxes, "scores": scores, "labels": labels}])
    assert evaluator.compute()["AP"] == pytest.approx(1.0)
    shifted = boxes.clone()
    shifted[0] += torch.tensor([15.0, 0.0, 15.0, 0.0])  # the small remote moved by 40% of its width
    evaluator = CocoEvaluator(ground_truth)
    evaluator.update([39769], [{"boxes": shifted, "scores": scores, "labels": labels}])
    stats = evaluator.compute()
    assert stats["AP"] < 1.0
    np.testing.assert_allclose(
        list(stats.values()),
        pycocotools_stats(ground_truth, [39769], [{"boxes": shifted, "scores": scores, "labels": labels}])[
            :12
        ],
        atol=1e-9,
    )


def test_empty_and_mismatched_inputs_are_clear_errors(synthetic):
    ground_truth, image_ids, detections = synthetic
    with pytest.raises(ValueError, match="No detections were added"):
        CocoEvaluator(ground_truth).compute()
    with pytest.raises(ValueError, match=r"Image id\(s\) \[9999\] are not in the ground truth"):
        CocoEvaluator(ground_truth).update([9999], detections[:1])
    evaluator = CocoEvaluator(ground_truth)
    evaluator.update(image_ids[:2], detections[:2])
    with pytest.raises(ValueError, match="added twice.*gather_for_metrics"):
        evaluator.update(image_ids[1:3], detections[1:3])
    with pytest.raises(ValueError, match="2 image ids but 1 detection"):
        CocoEvaluator(ground_truth).update(image_ids[:2], detections[:1])
    with pytest.raises(ValueError, match="backend"):
        CocoEvaluator(ground_truth, backend="detectron")


def test_label_mapping_by_name_first_then_coco_ids_then_position(caplog):
    categories = [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]
    assert label_to_category_mapping({0: "cat", 1: "dog"}, categories, coco_category_ids=[17, 18]) == {
        0: 17,
        1: 18,
    }
    official = {0: "N/A", 17: "cat", 18: "dog", 19: "horse"}  # a 91-class checkpoint, abridged
    with caplog.at_level("INFO", logger="hf_detr"):
        assert label_to_category_mapping(official, categories) == {17: 17, 18: 18}
    assert "Evaluating 2 of the model's 4 classes" in caplog.text and "2 other classes" in caplog.text
    assert label_to_category_mapping({0: "LABEL_0", 1: "LABEL_1"}, categories) == {0: 17, 1: 18}
    generic = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert label_to_category_mapping(generic, categories, coco_category_ids=[18, 5, 17]) == {0: 18, 2: 17}
    with pytest.raises(ValueError, match="Cannot match the model's 3 classes"):
        label_to_category_mapping({0: "a", 1: "b", 2: "c"}, categories)
    far = {"id": 1, "image_id": 1, "category_id": 17, "bbox": [6, 6, 3, 3], "area": 9, "iscrowd": 0}
    evaluator = CocoEvaluator({"images": [{"id": 1, "width": 10, "height": 10}], "annotations": [far], "categories": categories},
                              label_to_category_id={0: 17})  # fmt: skip
    evaluator.update([1], [{"boxes": [[1, 1, 5, 5], [1, 1, 4, 4]], "scores": [0.5, 0.4], "labels": [0, 0]}])
    assert evaluator.compute()["AP"] == 0.0  # both detections land in category 17, away from its object


def test_names_win_over_stale_coco_ids_and_unannotated_dataset_classes_are_ignored():
    """A Hub-layout dataset (0-based ClassLabel ids, one unused name) and a model trained on a COCO
    folder (coco_category_ids 1..3): matching by the ids scored AP 0 in silence."""
    model = {0: "circle", 1: "square", 2: "triangle"}
    categories = [{"id": i, "name": n} for i, n in enumerate(["circle", "square", "triangle", "unused"])]
    mapping = label_to_category_mapping(model, categories, [1, 2, 3], annotated_category_ids=[0, 1, 2])
    assert mapping == {0: 0, 1: 1, 2: 2}
    with pytest.raises(ValueError, match=r"classes the model does not predict: \[unused\]"):
        label_to_category_mapping(model, categories, [1, 2, 3], annotated_category_ids=[0, 3])


def test_ground_truth_from_a_dataset_split(tmp_path, coco_image_dir):
    from hf_detr.data import load_detection_dataset

    root = real_coco_folder(tmp_path / "coco", coco_image_dir, "val")
    split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["val"]
    converted = split_to_coco(split)
    original = json.loads((coco_image_dir / "instances.json").read_text())
    assert {c["id"]: c["name"] for c in converted["categories"]} == {
        c["id"]: c["name"] for c in original["categories"]
    }
    key = lambda a: (a["category_id"], [round(v, 2) for v in a["bbox"]], a["iscrowd"])  # noqa: E731
    assert sorted(map(key, converted["annotations"])) == sorted(map(key, original["annotations"]))


def test_evaluate_metric_loads_from_its_file_and_agrees(synthetic):
    from hf_detr.evaluation import load_coco_metric

    ground_truth, image_ids, detections = synthetic
    metric = load_coco_metric()
    images = {i["id"]: i for i in ground_truth["images"]}
    for start in range(0, len(image_ids), 20):
        predictions, references = [], []
        for image_id, detection in zip(image_ids[start : start + 20], detections[start : start + 20]):
            predictions.append({"image_id": image_id, "boxes": detection["boxes"].tolist(),
                                "scores": detection["scores"].tolist(), "labels": detection["labels"].tolist()})  # fmt: skip
            objects = [a for a in ground_truth["annotations"] if a["image_id"] == image_id]
            references.append({"image_id": image_id, "width": images[image_id]["width"], "height": images[image_id]["height"],
                               "boxes": [a["bbox"] for a in objects], "labels": [a["category_id"] for a in objects],
                               "iscrowd": [a["iscrowd"] for a in objects], "area": [a["area"] for a in objects]})  # fmt: skip
        metric.add_batch(predictions=predictions, references=references)
    stats = metric.compute()
    np.testing.assert_allclose(
        list(stats.values()), pycocotools_stats(ground_truth, image_ids, detections)[:12], atol=1e-9
    )


# ---------------------------------------------------------------------------------------------------
# The command line, on one process and on two
# ---------------------------------------------------------------------------------------------------
KNOWN_BOX = [0.5, 0.4, 0.5, 0.6]  # normalized (cx, cy, w, h) every query predicts, class 0


def write_known_model(directory: Path) -> None:
    from detr_testing import tiny_hf_detr_config

    from hf_detr import HfDetrForObjectDetection, HfDetrImageProcessor

    model = HfDetrForObjectDetection(tiny_hf_detr_config(num_queries=1, num_labels=2))
    with torch.no_grad():
        model.class_labels_classifier.weight.zero_()
        model.class_labels_classifier.bias.copy_(torch.tensor([3.0, 0.0, 0.0]))
        model.bbox_predictor.layers[2].weight.zero_()
        model.bbox_predictor.layers[2].bias.copy_(torch.logit(torch.tensor(KNOWN_BOX)))
    model.save_pretrained(directory)
    HfDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(directory)


def write_val_folder(root: Path, count: int = 7) -> Path:
    """Images whose single object is (or, every third image, is not) where the known model looks."""
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    images, annotations = [], []
    for index in range(1, count + 1):
        width, height = 60 + 10 * index, 50 + 5 * index
        PIL.Image.new("RGB", (width, height), (index * 20, 90, 160)).save(root / "val" / f"{index}.png")
        cx, cy, w, h = KNOWN_BOX if index % 3 else (0.2, 0.2, 0.2, 0.2)
        bbox = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
        images.append({"id": index, "file_name": f"{index}.png", "width": width, "height": height})
        annotations.append(
            {
                "id": index,
                "image_id": index,
                "category_id": 5,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "iscrowd": 0,
            }
        )
    categories = [{"id": 5, "name": "LABEL_0"}, {"id": 9, "name": "LABEL_1"}]
    (root / "annotations" / "instances_val.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root


@pytest.mark.multiprocess
def test_command_line_on_one_and_two_processes_gives_the_same_stats(tmp_path):
    from hf_detr.evaluation.cli import main

    write_known_model(tmp_path / "model")
    dataset = write_val_folder(tmp_path / "coco")
    single = tmp_path / "single.json"
    args = [
        "--model",
        str(tmp_path / "model"),
        "--dataset",
        str(dataset),
        "--split",
        "val",
        "--batch-size",
        "2",
    ]
    assert main([*args, "--output", str(single)]) == 0
    one = json.loads(single.read_text())
    assert one["num_images"] == 7
    # 5 of 7 images have their object where every query looks: AP50 = 5/7 precision-weighted, neither 0 nor 1
    assert 0.3 < one["stats"]["AP50"] < 1.0

    double = tmp_path / "double.json"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO_ROOT / "scripts" / "evaluate_coco.py"), *args, "--output", str(double)]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    two = json.loads(double.read_text())
    assert two["num_processes"] == 2 and two["num_images"] == 7  # 8 sampler slots, the padding dropped
    assert two["stats"] == pytest.approx(one["stats"], abs=1e-12)


def write_hub_layout_split(root: Path, names: list[str], labels: list[int], count: int = 4) -> Path:
    """`count` images in the cppe-5 layout (`image` + `objects` {bbox xywh, 0-based ClassLabel
    `category`, area, id}) saved with `save_to_disk`, each object where write_known_model's query looks."""
    from datasets import Dataset, DatasetDict
    from detr_testing import hub_detection_features

    features = hub_detection_features(names)
    rows = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
    for index in range(1, count + 1):
        width, height = 60 + 8 * index, 50
        cx, cy, w, h = KNOWN_BOX
        box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
        label = labels[index % len(labels)]
        rows["image_id"].append(index)
        rows["image"].append(PIL.Image.new("RGB", (width, height), (30 * index, 90, 160)))
        rows["width"].append(width)
        rows["height"].append(height)
        rows["objects"].append({"id": [index], "area": [box[2] * box[3]], "bbox": [box], "category": [label]})
    DatasetDict({"val": Dataset.from_dict(rows, features=features)}).save_to_disk(str(root))
    return root


def test_evaluate_matches_a_hub_layout_dataset_to_the_model_by_class_name(tmp_path, capsys):
    """The model was trained on a COCO folder (coco_category_ids 1, 2); the Hub-layout dataset numbers
    its classes from 0 and has one more name without annotations. Matching by the ids gave AP 0."""
    from transformers import AutoConfig

    from hf_detr.evaluation.cli import main

    write_known_model(tmp_path / "model")  # predicts LABEL_0 (label 0) at KNOWN_BOX
    config = AutoConfig.from_pretrained(tmp_path / "model")
    config.id2label, config.label2id = {0: "apple", 1: "pear"}, {"apple": 0, "pear": 1}
    config.coco_category_ids = [1, 2]
    config.save_pretrained(tmp_path / "model")
    dataset = write_hub_layout_split(tmp_path / "hub", ["apple", "pear", "unused"], labels=[0])
    output = tmp_path / "results.json"
    assert main(["--model", str(tmp_path / "model"), "--dataset", str(dataset), "--output", str(output)]) == 0
    assert json.loads(output.read_text())["stats"]["AP50"] == 1.0

    missing = write_hub_layout_split(tmp_path / "hub-missing", ["apple", "plum"], labels=[0, 1])
    with pytest.raises(ValueError, match=r"classes the model does not predict: \[plum\]") as error:
        main(["--model", str(tmp_path / "model"), "--dataset", str(missing)])
    assert "[apple, pear]" in str(error.value)
