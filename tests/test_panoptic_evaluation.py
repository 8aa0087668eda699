"""Panoptic quality: equal to a transcription of panopticapi's loops, crowd/void rules, formats, shards."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from panoptic_reference import CATEGORIES, random_image, reference_pq

from hf_detr.evaluation import PanopticEvaluator, evaluate_coco_panoptic
from hf_detr.evaluation import panoptic as panoptic_module


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    images = [random_image(rng) for _ in range(60)]
    assert any(not image["gt_segments"] for image in images)
    assert any(not image["pred_segments"] for image in images)
    assert any(s["iscrowd"] for image in images for s in image["gt_segments"])
    return images


def reference_of(images: list[dict]) -> dict:
    return reference_pq(
        [(i["gt"], i["gt_segments"], i["pred"], i["pred_segments"]) for i in images], CATEGORIES
    )


def evaluate(images: list[dict], start_id: int = 0, **kwargs) -> PanopticEvaluator:
    evaluator = PanopticEvaluator(CATEGORIES, **kwargs)
    for offset in range(0, len(images), 7):
        batch = images[offset : offset + 7]
        evaluator.update(
            range(start_id + offset, start_id + offset + len(batch)),
            [{"segmentation": i["pred"], "segments_info": i["pred_segments"]} for i in batch],
            [{"segmentation": i["gt"], "segments_info": i["gt_segments"]} for i in batch],
        )
    return evaluator


def assert_same_results(results: dict, reference: dict) -> None:
    for group in ("All", "Things", "Stuff"):
        assert results[group]["n"] == reference[group]["n"], group
        for key in ("pq", "sq", "rq"):
            assert results[group][key] == pytest.approx(reference[group][key], abs=1e-9), (group, key)
    for category, expected in reference["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert results["per_class"][category][key] == pytest.approx(expected[key], abs=1e-9), category


def test_pq_sq_rq_equal_the_reference_loops_to_1e9(images):
    results = evaluate(images).compute()
    assert_same_results(results, reference_of(images))
    assert 0.2 < results["All"]["pq"] < 0.9  # a non-trivial case
    counts = [results["per_class"][c["id"]] for c in CATEGORIES]
    assert all(sum(c[k] for c in counts) > 0 for k in ("tp", "fp", "fn"))


def test_gt_areas_default_to_pixel_counts_and_torch_tensors_are_accepted(images):
    stripped = [
        {**i, "gt": torch.from_numpy(i["gt"]), "gt_segments": [{k: v for k, v in s.items() if k != "area"}
                                                            for s in i["gt_segments"]]}
        for i in images
    ]  # fmt: skip
    assert_same_results(evaluate(stripped).compute(), reference_of(images))


def test_post_processing_format_with_label_ids_fused_duplicates_and_rgb_maps_agrees(images):
    label_of = {c["id"]: index for index, c in enumerate(CATEGORIES)}
    converted = []
    for image in images:
        pred = np.where(image["pred"] == 0, -1, image["pred"])  # post-processing's "no segment"
        segments = []
        for segment in image["pred_segments"]:
            info = {"id": segment["id"], "label_id": label_of[segment["category_id"]], "score": 0.9}
            segments += [{**info, "was_fused": True}] * 2  # a fused segment is listed once per query
        gt = image["gt"]
        rgb = np.stack([gt % 256, gt // 256 % 256, gt // 65536], -1).astype(np.uint8)  # panopticapi PNG code
        converted.append(
            {**image, "pred": torch.from_numpy(pred).int(), "pred_segments": segments, "gt": rgb}
        )
    mapping = [c["id"] for c in CATEGORIES]  # label id -> category id, as a list
    assert_same_results(evaluate(converted, label_to_category_id=mapping).compute(), reference_of(images))


def test_perfect_prediction_gives_pq_sq_rq_of_1(images):
    perfect = []
    for image in images:
        visible = [s for s in image["gt_segments"] if s["area"] > 0]  # listed segments all painted over: FN
        listed = [s for s in visible if not s["iscrowd"]]
        pred = np.where(np.isin(image["gt"], [s["id"] for s in listed]), image["gt"], 0)
        segments = [{"id": s["id"], "category_id": s["category_id"]} for s in listed]
        perfect.append({**image, "gt_segments": visible, "pred": pred, "pred_segments": segments})
    evaluator = evaluate(perfect)
    results = evaluator.compute()
    assert evaluator.summary().splitlines()[2].startswith("All       | 100.0  100.0  100.0")
    for group in ("All", "Things", "Stuff"):
        assert results[group]["pq"] == results[group]["sq"] == results[group]["rq"] == pytest.approx(1.0)
        assert results[group]["n"] > 0


def tiny_evaluator_results(gt, gt_segments, pred, pred_segments) -> dict:
    evaluator = PanopticEvaluator(CATEGORIES)
    evaluator.update(
        [1],
        [{"segmentation": np.array(pred), "segments_info": pred_segments}],
        [{"segmentation": np.array(gt), "segments_info": gt_segments}],
    )
    return evaluator.compute()["per_class"]


def test_void_pixels_leave_the_union_and_mostly_void_predictions_are_not_false_positives():
    gt = [[5, 5, 0, 0, 0, 0]]  # a 2-pixel segment, then void
    pred = [[1, 1, 1, 1, 2, 2]]  # covers it and 2 void pixels: IoU 2 / (4 + 2 - 2 - 2) = 1; 2 lies on void
    results = tiny_evaluator_results(gt, [{"id": 5, "category_id": 1}], pred,
                                     [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 3}])  # fmt: skip
    assert results[1]["tp"] == 1 and results[1]["sq"] == 1.0 and results[3]["fp"] == 0


def test_crowd_regions_are_neither_matched_nor_missed_and_absorb_same_class_predictions():
    gt = [[8, 8, 8, 8, 9, 9]]  # 8: a crowd of class 1, 9: a plain segment of class 3
    segments = [{"id": 8, "category_id": 1, "iscrowd": 1}, {"id": 9, "category_id": 3}]
    on_crowd = tiny_evaluator_results(gt, segments, [[1, 1, 1, 1, 0, 0]], [{"id": 1, "category_id": 1}])
    assert on_crowd[1]["tp"] == on_crowd[1]["fp"] == on_crowd[1]["fn"] == 0  # not a TP, not a FP
    assert on_crowd[3]["fn"] == 1
    other_class = tiny_evaluator_results(gt, segments, [[1, 1, 1, 1, 0, 0]], [{"id": 1, "category_id": 7}])
    assert other_class[7]["fp"] == 1  # a crowd of class 1 does not excuse a class-7 prediction


def test_iou_of_exactly_half_is_no_match_and_classes_without_segments_leave_the_averages():
    evaluator = PanopticEvaluator(CATEGORIES)
    half = {"segmentation": np.array([[1, 1, 0, 0]]), "segments_info": [{"id": 1, "category_id": 1}]}
    evaluator.update([1], [half], [{"segmentation": np.array([[5, 5, 5, 5]]), "segments_info": [{"id": 5, "category_id": 1}]}])  # fmt: skip
    results = evaluator.compute()
    assert results["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 1}
    assert results["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1}  # 6 classes without segments left out
    assert results["Stuff"] == {"pq": -1.0, "sq": -1.0, "rq": -1.0, "n": 0}
    stuff = {"segmentation": np.array([[2, 2]]), "segments_info": [{"id": 2, "category_id": 21}]}
    evaluator.update([2], [stuff], [stuff])
    assert evaluator.compute()["All"] == {"pq": 0.5, "sq": 0.5, "rq": 0.5, "n": 2}


def test_two_shards_synchronized_equal_the_whole_and_sampler_padding_counts_once(images, monkeypatch):
    half = len(images) // 2
    first, second = evaluate(images[:half]), evaluate(images[half:], start_id=half)
    padding = evaluate(images[:1])  # the sampler repeats image 0 on the second process
    second.merge([padding.state()])
    assert second.num_images == len(images) - half + 1
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(panoptic_module, "_all_gather_rows", lambda rows: [second.state()])
    merged = first.synchronize().compute()
    assert first.num_images == len(images)
    whole = evaluate(images).compute()
    assert flat(merged).keys() == flat(whole).keys()
    assert all(abs(flat(merged)[key] - value) <= 1e-12 for key, value in flat(whole).items())
    conflicting = evaluate(images[1:2]).state()
    conflicting[:, 0] = 0  # image 0's id with another image's statistics
    with pytest.raises(ValueError, match="Image 0 was evaluated twice with different results"):
        first.merge([conflicting])


def flat(results: dict) -> dict:
    """(group, key) -> value, with the per-class entries as (category, key)."""
    groups = {group: values for group, values in results.items() if group != "per_class"}
    return {(g, k): v for g, values in (groups | results["per_class"]).items() for k, v in values.items()}


def _synchronize_in_process(rank: int, shards: list, store: str, output: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        start, images = shards[rank]
        results = evaluate(images, start_id=start).synchronize().compute()
    finally:
        torch.distributed.destroy_process_group()
    Path(output).write_text(json.dumps({f"{g}|{k}": v for (g, k), v in flat(results).items()}))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_synchronize_over_two_gloo_processes_gives_every_process_the_whole(images, tmp_path):
    half = len(images) // 2
    shards = [(0, images[:half]), (half - 1, images[half - 1 :])]  # image half-1 on both, as sampler padding
    context = multiprocessing.get_context("fork")
    outputs = [tmp_path / f"rank{rank}.json" for rank in range(2)]
    processes = [
        context.Process(
            target=_synchronize_in_process, args=(rank, shards, str(tmp_path / "store"), str(out))
        )
        for rank, out in enumerate(outputs)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in processes] == [0, 0]
    whole = {f"{g}|{k}": v for (g, k), v in flat(evaluate(images).compute()).items()}
    for output in outputs:
        got = json.loads(output.read_text())
        assert got.keys() == whole.keys()
        assert all(abs(got[key] - value) <= 1e-12 for key, value in whole.items())


def test_coco_panoptic_folders_give_the_in_memory_result(images, tmp_path):
    import PIL.Image

    def write(name: str, ids: np.ndarray) -> None:
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        PIL.Image.fromarray(rgb).save(tmp_path / name)

    gt_json = {"categories": CATEGORIES, "annotations": []}
    pred_json = {"annotations": []}
    for index, image in enumerate(images[:12]):
        write(f"gt_{index}.png", image["gt"])
        write(f"pred_{index}.png", image["pred"])
        gt_json["annotations"].append({"image_id": index, "file_name": f"gt_{index}.png", "segments_info": image["gt_segments"]})  # fmt: skip
        pred_json["annotations"].append({"image_id": index, "file_name": f"pred_{index}.png", "segments_info": image["pred_segments"]})  # fmt: skip
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    results = evaluate_coco_panoptic(tmp_path / "gt.json", pred_json, tmp_path, tmp_path)
    assert_same_results(results, reference_of(images[:12]))


def test_bad_inputs_are_clear_errors(images):
    image = images[1]
    gt = {"segmentation": image["gt"], "segments_info": image["gt_segments"]}
    pred = {"segmentation": image["pred"], "segments_info": image["pred_segments"]}
    evaluator = PanopticEvaluator(CATEGORIES)
    with pytest.raises(
        ValueError, match=r"image 3: the ground truth map is 24x32 \(HxW\) but the prediction map is 24x31"
    ):
        evaluator.update([3], [{**pred, "segmentation": image["pred"][:, :31]}], [gt])
    unknown = [{**s, "category_id": 99} for s in image["gt_segments"]]
    with pytest.raises(
        ValueError, match="ground truth: category_id 99 is not one of the 7 panoptic categories"
    ):
        evaluator.update([3], [pred], [{**gt, "segments_info": unknown}])
    with pytest.raises(ValueError, match="prediction: category_id 99 is not one"):
        evaluator.update(
            [3], [{**pred, "segments_info": [{**s, "category_id": 99} for s in image["pred_segments"]]}], [gt]
        )
    with pytest.raises(ValueError, match=r"in the map only \[\d+\], in segments_info only \[\]"):
        evaluator.update([3], [{**pred, "segments_info": image["pred_segments"][1:]}], [gt])
    with pytest.raises(ValueError, match="label_id 40 has no category"):
        evaluator.update([3], [{**pred, "segments_info": [{"id": 1, "label_id": 40}]}], [gt])
    with pytest.raises(TypeError, match="expected an integer id map .* got ndarray of dtype float64"):
        evaluator.update([3], [{**pred, "segmentation": image["pred"].astype(float)}], [gt])
    with pytest.raises(ValueError, match="2 image ids, 1 predictions and 1 ground truths"):
        evaluator.update([3, 4], [pred], [gt])
    evaluator.update([3], [pred], [gt])
    with pytest.raises(ValueError, match=r"Image id\(s\) \[3\] were added twice"):
        evaluator.update([3], [pred], [gt])
    with pytest.raises(ValueError, match="'id' and 'isthing'"):
        PanopticEvaluator([{"id": 1, "name": "person"}])
    with pytest.raises(ValueError, match="No images were added"):
        PanopticEvaluator(CATEGORIES).compute()
