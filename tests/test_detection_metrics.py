"""Metrics people read: per-class AP / AP50 / AR100 equal to pycocotools run one category at a time,
the confusion matrix on hand-built cases (background row and column, crowd, thresholds), the files
an evaluation writes, and the command line's per-class table."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from synthetic_coco import synthetic_coco

from hf_detr.evaluation import CocoEvaluator, write_evaluation_report
from hf_detr.evaluation import coco_evaluator as coco_evaluator_module
from hf_detr.evaluation.per_class import precision_recall_curves

UNSEEN = 91  # a category with detections but no ground truth: its AP is undefined (-1)


@pytest.fixture(scope="module")
def synthetic():
    ground_truth, image_ids, detections = synthetic_coco(40, detections_per_image=20, seed=3)
    ground_truth["categories"].append({"id": UNSEEN, "name": "unseen"})
    detections[0]["labels"][:3] = UNSEEN
    return ground_truth, image_ids, detections


@pytest.fixture(scope="module")
def pycocotools_per_category(synthetic):
    """category id -> pycocotools' (AP, AP50, AR100) with `params.catIds = [id]`."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ground_truth, image_ids, detections = synthetic
    results = [
        {"image_id": image_id, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score, "category_id": label}
        for image_id, detection in zip(image_ids, detections)
        for (x0, y0, x1, y1), score, label in zip(
            detection["boxes"].tolist(), detection["scores"].tolist(), detection["labels"].tolist()
        )
    ]
    reference = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        dt = gt.loadRes(results)
        for category in sorted(gt.getCatIds()):
            evaluator = COCOeval(gt, dt, "bbox")
            evaluator.params.imgIds = image_ids
            evaluator.params.catIds = [category]
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            reference[category] = (evaluator.stats[0], evaluator.stats[1], evaluator.stats[8])
    return reference


def evaluated(ground_truth, image_ids, detections, **kwargs) -> CocoEvaluator:
    evaluator = CocoEvaluator(ground_truth, **kwargs)
    evaluator.update(image_ids, detections)
    evaluator.compute()
    return evaluator


# ---------------------------------------------------------------------------------------------------
# Per-class stats and the precision-recall curves
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backend", "workers"), [("faster_coco_eval", 1), ("faster_coco_eval", 2), ("pycocotools", 1)]
)
def test_per_class_stats_equal_pycocotools_per_category_to_1e9(
    synthetic, pycocotools_per_category, backend, workers, monkeypatch
):
    monkeypatch.setattr(coco_evaluator_module, "PARALLEL_MIN_DETECTIONS", 0)  # split between processes
    evaluator = evaluated(*synthetic, backend=backend, num_workers=workers)
    rows = evaluator.per_class
    assert [row["category_id"] for row in rows] == sorted(pycocotools_per_category)
    ours = np.array([[row["AP"], row["AP50"], row["AR100"]] for row in rows])
    reference = np.array([pycocotools_per_category[row["category_id"]] for row in rows])
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-9)
    assert ours[:, 0].std() > 0.05  # the classes differ: a real per-class table, not one number repeated
    unseen = next(row for row in rows if row["category_id"] == UNSEEN)
    assert unseen["AP"] == -1 and unseen["num_objects"] == 0 and unseen["name"] == "unseen"
    ground_truth = synthetic[0]
    first = rows[0]
    assert first["num_objects"] == sum(
        1
        for a in ground_truth["annotations"]
        if a["category_id"] == first["category_id"] and not a["iscrowd"]
    )


def test_the_mean_precision_recall_curve_has_the_area_ap50(synthetic):
    evaluator = evaluated(*synthetic)
    curves = precision_recall_curves(evaluator.precision, 0.5)  # [101, K]
    assert curves.shape == (101, len(evaluator.category_ids))
    valid = (curves > -1).all(axis=0)
    np.testing.assert_array_equal(valid, [row["num_objects"] > 0 for row in evaluator.per_class])
    assert not valid[-1] and valid.sum() > 60  # the unseen category has no curve
    assert curves[:, valid].mean(axis=1).mean() == pytest.approx(evaluator.stats["AP50"], abs=1e-12)
    for k in np.flatnonzero(valid):
        assert curves[:, k].mean() == pytest.approx(evaluator.per_class[k]["AP50"], abs=1e-12)


def test_summary_prints_the_per_class_table_after_the_12_lines(synthetic):
    evaluator = evaluated(*synthetic)
    lines = evaluator.summary(per_class=True).splitlines()
    assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95") and len(lines) == 12 + 2 + 81
    assert lines[12].startswith("Per class")
    assert lines[13].split() == ["class", "id", "objects", "AP", "AP50", "AR100"]
    unseen = lines[-1].split()
    assert unseen[:3] == ["unseen", str(UNSEEN), "0"] and unseen[3] == "-"
    assert evaluator.summary().count("\n") == 11  # without per_class: the 12 lines only


# ---------------------------------------------------------------------------------------------------
# The confusion matrix on hand-built cases: classes cat (1), dog (2), bird (5), then background
# ---------------------------------------------------------------------------------------------------
CAT, DOG, BIRD = 1, 2, 5


def hand_built() -> tuple[dict, list[int], list[dict]]:
    def box(x, y, w, h):
        return {"bbox": [x, y, w, h], "area": w * h}

    objects = [
        (1, CAT, box(0, 0, 10, 10), 0),  # A: found as cat
        (1, DOG, box(20, 20, 10, 10), 0),  # B: found as cat (a confusion dog -> cat)
        (2, BIRD, box(0, 0, 20, 20), 0),  # C: missed
        (2, CAT, box(40, 40, 30, 30), 1),  # a crowd region
        (3, CAT, box(0, 0, 10, 10), 0),  # D: found, and found again (a duplicate)
        (3, CAT, box(60, 60, 10, 10), 0),  # E: missed
        (4, DOG, box(0, 0, 10, 10), 0),  # F: a cat detection scores higher, the dog detection wins it
        (5, BIRD, box(0, 0, 10, 10), 0),  # G: its detection overlaps at IoU 0.25 only
    ]
    annotations = [{"id": i, "image_id": image, "category_id": category, "iscrowd": crowd, **geometry}
                   for i, (image, category, geometry, crowd) in enumerate(objects, start=1)]  # fmt: skip
    ground_truth = {
        "images": [{"id": i, "width": 100, "height": 100} for i in range(1, 6)],
        "annotations": annotations,
        "categories": [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}, {"id": BIRD, "name": "bird"}],
    }
    detections = {  # image -> (x0, y0, x1, y1, score, label)
        1: [(0, 0, 10, 10, 0.9, CAT), (20, 20, 30, 30, 0.8, CAT), (50, 50, 60, 60, 0.7, DOG),
            (0, 0, 10, 10, 0.3, BIRD)],  # the bird detection scores below 0.5
        2: [(45, 45, 55, 55, 0.6, DOG)],  # on the crowd region: ignored
        3: [(0, 0, 10, 10, 0.9, CAT), (0, 0, 10, 10, 0.85, CAT)],
        4: [(0, 0, 10, 10, 0.95, CAT), (0, 0, 10, 10, 0.5, DOG)],
        5: [(6, 0, 16, 10, 0.9, BIRD)],
    }  # fmt: skip
    image_ids = sorted(detections)
    dicts = []
    for image_id in image_ids:
        rows = torch.tensor(detections[image_id], dtype=torch.float64)
        dicts.append({"boxes": rows[:, :4], "scores": rows[:, 4], "labels": rows[:, 5].long()})
    return ground_truth, image_ids, dicts


@pytest.fixture
def hand_built_evaluator() -> CocoEvaluator:
    ground_truth, image_ids, detections = hand_built()
    evaluator = CocoEvaluator(ground_truth)
    evaluator.update(image_ids, detections)
    return evaluator


def test_confusion_matrix_counts_with_background_row_and_column(hand_built_evaluator):
    matrix = hand_built_evaluator.confusion_matrix()  # score 0.5, IoU 0.5
    assert matrix.labels == ["cat", "dog", "bird", "background"] and matrix.category_ids == [CAT, DOG, BIRD]
    expected = np.array(
        [  # predicted: cat, dog, bird, background
            [2, 0, 0, 1],  # cat objects: A and D found, E missed (the crowd region is no object)
            [1, 1, 0, 0],  # dog objects: B taken for a cat, F found by the dog detection
            [0, 0, 0, 2],  # bird objects: C and G missed
            [2, 1, 1, 0],  # no object: D's duplicate and the cat on F; the far dog; the bird off G
        ]
    )
    np.testing.assert_array_equal(matrix.matrix, expected)
    assert matrix.num_ignored == 1  # the dog on the crowd region
    precision, recall = matrix.class_precision_recall()
    np.testing.assert_allclose(precision, [2 / 5, 1 / 2, 0.0])
    np.testing.assert_allclose(recall, [2 / 3, 1 / 2, 0.0])


def test_confusion_matrix_follows_its_thresholds(hand_built_evaluator):
    loose_iou = hand_built_evaluator.confusion_matrix(iou_threshold=0.2)
    assert loose_iou.matrix[2, 2] == 1 and loose_iou.matrix[3, 2] == 0  # G is found at IoU 0.25
    low_score = hand_built_evaluator.confusion_matrix(score_threshold=0.25)
    assert low_score.matrix[3, 2] == 2  # the 0.3 bird on A (already taken by the cat) is a false positive
    high_score = hand_built_evaluator.confusion_matrix(score_threshold=0.99)
    assert high_score.matrix[:, :3].sum() == 0 and high_score.matrix[:3, 3].sum() == 7  # every object missed


def test_confusion_matrix_counts_each_object_and_kept_detection_once(synthetic):
    ground_truth, image_ids, detections = synthetic
    evaluator = CocoEvaluator(ground_truth)
    evaluator.update(image_ids, detections)
    matrix = evaluator.confusion_matrix(0.3, 0.5)
    objects = sum(1 for a in ground_truth["annotations"] if not a["iscrowd"])
    kept = sum(int((d["scores"] >= 0.3).sum()) for d in detections)
    assert matrix.matrix[:-1].sum() == objects
    assert matrix.matrix[:, :-1].sum() + matrix.num_ignored == kept
    assert np.trace(matrix.matrix[:-1, :-1]) > 0 and matrix.matrix[-1, -1] == 0


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------
def test_evaluation_report_writes_results_confusion_matrix_and_pr_curve(hand_built_evaluator, tmp_path):
    record = write_evaluation_report(hand_built_evaluator, tmp_path / "eval", extra={"step": 7})
    written = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert written == json.loads(json.dumps(record)) and written["step"] == 7 and written["num_images"] == 5
    assert list(written["stats"]) == list(coco_evaluator_module.STAT_NAMES)
    assert [row["name"] for row in written["per_class"]] == ["cat", "dog", "bird"]
    assert written["per_class"] == json.loads(json.dumps(hand_built_evaluator.per_class))
    matrix = json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())
    assert matrix["labels"][-1] == "background" and matrix["rows"] == "ground truth"
    assert matrix["matrix"] == hand_built_evaluator.confusion_matrix().matrix.tolist()
    for name in ("confusion_matrix.png", "pr_curve.png"):
        image = PIL.Image.open(tmp_path / "eval" / name).convert("RGB")
        assert image.width > 300 and image.height > 300
        assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 5, f"{name} is blank"


# ---------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------
def write_known_folder(root: Path) -> Path:
    """A COCO folder for the `known_checkpoint` model (one query: always "bed" at KNOWN_BOX): two beds
    where it looks, a cat where it looks, a bed elsewhere."""
    from detr_testing import KNOWN_BOX, LABELS

    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    cx, cy, w, h = KNOWN_BOX.tolist()
    images, annotations = [], []
    for index, (name, where) in enumerate(
        [("bed", "known"), ("bed", "known"), ("cat", "known"), ("bed", "corner")], start=1
    ):
        width, height = 80 + 8 * index, 60 + 4 * index
        PIL.Image.new("RGB", (width, height), (30 * index, 90, 160)).save(root / "val" / f"{index}.png")
        box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
        if where == "corner":
            box = [0.0, 0.0, 0.15 * width, 0.15 * height]
        images.append({"id": index, "file_name": f"{index}.png", "width": width, "height": height})
        category = {v: k for k, v in LABELS.items()}[name] + 1
        annotations.append({"id": index, "image_id": index, "category_id": category, "bbox": box,
                            "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
    categories = [{"id": label + 1, "name": name} for label, name in LABELS.items()]
    (root / "annotations" / "instances_val.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root


def test_command_line_prints_the_table_and_writes_the_plots(
    known_checkpoint, tmp_path, capsys, fresh_accelerator_state
):
    from hf_detr.evaluation.cli import main

    dataset = write_known_folder(tmp_path / "coco")
    output = tmp_path / "out" / "results.json"
    assert main(["--model", str(known_checkpoint), "--dataset", str(dataset), "--output", str(output)]) == 0
    printed = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(printed) if line.startswith("Per class"))
    assert "maxDets=100 ]" in printed[header - 1]  # right after the 12 COCO lines
    table = {line.split()[0]: line.split() for line in printed[header + 2 : header + 6]}
    assert set(table) == {"cat", "remote", "bed", "couch"}
    assert table["bed"][2] == "3" and table["cat"][2] == "1" and table["remote"][3] == "-"

    record = json.loads(output.read_text())
    bed = next(row for row in record["per_class"] if row["name"] == "bed")
    assert bed["num_objects"] == 3 and bed["AR100"] == pytest.approx(2 / 3, abs=1e-9)  # 2 of 3 beds found
    assert 0.5 < bed["AP50"] < 0.7  # precision 1 up to recall 2/3, then nothing
    assert record["confusion_matrix"] == {"score_threshold": 0.5, "iou_threshold": 0.5}
    matrix = json.loads((output.parent / "confusion_matrix.json").read_text())  # beside --output
    labels = matrix["labels"]
    counts = {
        (labels[g], labels[p]): n for g, row in enumerate(matrix["matrix"]) for p, n in enumerate(row) if n
    }
    assert counts == {
        ("bed", "bed"): 2,
        ("cat", "bed"): 1,
        ("bed", "background"): 1,
        ("background", "bed"): 1,
    }
    assert (output.parent / "confusion_matrix.png").is_file() and (output.parent / "pr_curve.png").is_file()
