"""COCO mask AP: known IoUs, crowd regions, panoptic things, pycocotools' segm stats, PostProcessSegm."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from faster_coco_eval.core import mask as mask_api

from hf_detr.evaluation import (
    STAT_NAMES,
    MaskEvaluator,
    encode_masks,
    encode_predictions,
    instance_predictions,
    mask_ground_truth_from_panoptic,
)

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]


def _rectangle(size: tuple[int, int], y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths down the columns, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int64)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"counts": counts, "size": list(mask.shape)}


def _annotation(
    index: int, image_id: int, category: int, mask: np.ndarray, iscrowd: int = 0, form: str = "rle"
):
    rle = encode_masks(mask[None])[0]
    segmentation = {"rle": rle, "uncompressed": _uncompressed_rle(mask)}[form]
    return {"id": index, "image_id": image_id, "category_id": category, "segmentation": segmentation,
            "area": float(mask.sum()), "bbox": mask_api.toBbox(rle).tolist(), "iscrowd": iscrowd}  # fmt: skip


def _one_object_truth(size=(40, 50), box=(5, 10, 15, 26), category=3):
    mask = _rectangle(size, *box)
    images = [{"id": 1, "height": size[0], "width": size[1]}]
    return {
        "images": images,
        "annotations": [_annotation(1, 1, category, mask)],
        "categories": CATEGORIES,
    }, mask


def _prediction(masks, scores, labels):
    return {
        "masks": torch.as_tensor(np.stack(masks)),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


# ----------------------------------------------------------------------------------------------------
# MaskEvaluator: stats of known cases
# ----------------------------------------------------------------------------------------------------
def test_perfect_masks_give_ap_1_and_undefined_area_ranges_minus_1():
    truth, mask = _one_object_truth()  # 10 x 16 = 160 px: small
    evaluator = MaskEvaluator(truth)
    evaluator.update([1], [_prediction([mask], [0.9], [3])])
    stats = evaluator.compute()
    assert list(stats) == list(STAT_NAMES)
    for name in ("AP", "AP50", "AP75", "APs", "AR1", "AR10", "AR100", "ARs"):
        assert stats[name] == pytest.approx(1.0), name
    for name in ("APm", "APl", "ARm", "ARl"):
        assert stats[name] == -1.0, name
    assert "Average Precision" in evaluator.summary()


def test_mask_with_iou_13_over_19_counts_at_4_of_10_thresholds():
    # a 10 x 16 rectangle and the same shifted 3 px right: IoU = 130 / 190 = 0.684, between .65 and .70
    truth, mask = _one_object_truth(box=(5, 10, 15, 26))
    shifted = _rectangle(mask.shape, 5, 13, 15, 29)
    assert (mask & shifted).sum() / (mask | shifted).sum() == pytest.approx(13 / 19)
    evaluator = MaskEvaluator(truth)
    evaluator.update([1], [_prediction([shifted], [0.9], [3])])
    stats = evaluator.compute()
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == 0.0
    assert stats["AP"] == pytest.approx(0.4) and stats["AR100"] == pytest.approx(0.4)


def test_probability_masks_are_binarised_at_half():
    truth, mask = _one_object_truth()
    probabilities = np.where(mask, 0.6, 0.4).astype(np.float32)  # above 0.5 exactly on the object
    by_probability, by_bool = MaskEvaluator(truth), MaskEvaluator(truth)
    by_probability.update([1], [_prediction([probabilities], [0.9], [3])])
    by_bool.update([1], [_prediction([mask], [0.9], [3])])
    assert by_probability.compute() == by_bool.compute()
    assert by_probability.stats["AP"] == pytest.approx(1.0)


def test_detection_on_a_crowd_region_is_ignored_not_a_false_positive():
    size = (60, 60)
    person, crowd = _rectangle(size, 2, 2, 20, 20), _rectangle(size, 30, 0, 60, 60)
    inside_crowd = _rectangle(size, 35, 5, 50, 25)  # IoU 0.17 with the crowd mask, all of it inside
    images = [{"id": 5, "height": 60, "width": 60}]

    def stats(iscrowd: int) -> dict[str, float]:
        annotations = [_annotation(1, 5, 3, person), _annotation(2, 5, 3, crowd, iscrowd, "uncompressed")]
        evaluator = MaskEvaluator({"images": images, "annotations": annotations, "categories": CATEGORIES})
        # the detection on the crowd scores highest: as a false positive it would cost precision
        evaluator.update([5], [_prediction([person, inside_crowd], [0.5, 0.9], [3, 3])])
        return evaluator.compute()

    assert stats(iscrowd=1)["AP"] == pytest.approx(1.0)
    assert stats(iscrowd=1)["AR100"] == pytest.approx(1.0)
    as_object = stats(iscrowd=0)  # the same region as an object: one false positive, one miss
    assert as_object["AP"] < 0.6 and as_object["AR100"] == pytest.approx(0.5)


def test_labels_map_to_category_ids_and_unmapped_labels_are_dropped():
    truth, mask = _one_object_truth(category=7)
    evaluator = MaskEvaluator(truth, label_to_category_id={0: 3, 2: 7})  # label 1: no category
    wrong_everywhere = np.ones_like(mask)
    evaluator.update([1], [_prediction([mask, wrong_everywhere], [0.5, 0.9], [2, 1])])
    assert evaluator.compute()["AP"] == pytest.approx(1.0)
    wrong_class = MaskEvaluator(truth, label_to_category_id=[3, 7])
    wrong_class.update([1], [_prediction([mask], [0.9], [0])])  # label 0 -> category 3: not the dog
    assert wrong_class.compute()["AP"] == 0.0


def test_encoded_predictions_give_the_same_stats_as_masks():
    truth, mask = _one_object_truth()
    shifted = _rectangle(mask.shape, 6, 11, 16, 27)
    predictions = [_prediction([shifted, mask], [0.3, 0.8], [3, 3])]
    encoded = encode_predictions(predictions)
    assert set(encoded[0]) == {"rles", "scores", "labels"} and isinstance(
        encoded[0]["rles"][0]["counts"], str
    )
    assert np.array_equal(mask_api.decode(encoded[0]["rles"][1]), mask)
    from_masks, from_rles = MaskEvaluator(truth), MaskEvaluator(truth)
    from_masks.update([1], predictions)
    from_rles.update(torch.tensor([1]), encoded)
    assert from_masks.compute() == from_rles.compute()


def test_an_image_without_predictions_counts_as_missed():
    truth, mask = _one_object_truth()
    truth["images"].append({"id": 2, "height": 40, "width": 50})
    truth["annotations"].append(_annotation(2, 2, 3, mask))
    evaluator = MaskEvaluator(truth)
    empty = {
        "masks": torch.zeros(0, 40, 50, dtype=torch.bool),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0),
    }
    evaluator.update([1, 2], [_prediction([mask], [0.9], [3]), empty])
    assert evaluator.num_images == 2
    assert evaluator.compute()["AR100"] == pytest.approx(0.5)


def test_invalid_updates_raise_with_the_problem_named():
    truth, mask = _one_object_truth()
    evaluator = MaskEvaluator(truth)
    with pytest.raises(ValueError, match="No predictions were added"):
        evaluator.compute()
    with pytest.raises(ValueError, match="original image size"):
        evaluator.update([1], [_prediction([mask[:, :-1]], [0.9], [3])])
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.update([9], [_prediction([mask], [0.9], [3])])
    with pytest.raises(ValueError, match="1 masks, 2 scores"):
        evaluator.update([1], [_prediction([mask], [0.9, 0.1], [3, 3])])
    evaluator.update([1], [_prediction([mask], [0.9], [3])])
    with pytest.raises(ValueError, match="added twice"):
        evaluator.update([1], [_prediction([mask], [0.9], [3])])
    with pytest.raises(ValueError, match="no 'segmentation'"):
        MaskEvaluator(
            {
                **truth,
                "annotations": [{k: v for k, v in truth["annotations"][0].items() if k != "segmentation"}],
            }
        )


# ----------------------------------------------------------------------------------------------------
# Equal to pycocotools
# ----------------------------------------------------------------------------------------------------
def _random_scene(seed: int = 0):
    """Ground truth of 5 images (RLE, polygon and crowd masks of 3 categories, all area ranges) and noisy
    predictions: moved, grown and shrunk copies of the objects, misclassified ones, and false positives."""
    rng = np.random.default_rng(seed)
    categories = [{"id": c, "name": f"class {c}"} for c in (1, 2, 5)]
    images = [{"id": 10 + i, "height": int(h), "width": int(w)} for i, (h, w) in enumerate(
        [(120, 160), (64, 48), (150, 130), (80, 100), (40, 40)])]  # fmt: skip
    annotations, predictions = [], {}
    for image in images:
        size = (image["height"], image["width"])
        masks, scores, labels = [], [], []
        for _ in range(rng.integers(0, 6)):
            h, w = rng.integers(3, size[0] - 2), rng.integers(3, size[1] - 2)
            y, x = rng.integers(0, size[0] - h), rng.integers(0, size[1] - w)
            category = int(rng.choice([1, 2, 5]))
            crowd = int(rng.random() < 0.15)
            if rng.random() < 0.3 and not crowd:  # a polygon (a quadrilateral inside the box)
                polygon = [x, y, x + w, y + rng.integers(0, h), x + w, y + h, x + rng.integers(0, w), y + h]
                segmentation = [[float(v) for v in polygon]]
                rle = mask_api.merge(mask_api.frPyObjects(segmentation, *size))
                mask = mask_api.decode(rle).astype(bool)
                annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                                    "segmentation": segmentation, "area": float(mask_api.area(rle)),
                                    "bbox": mask_api.toBbox(rle).tolist(), "iscrowd": 0})  # fmt: skip
            else:
                mask = _rectangle(size, y, x, y + h, x + w) & (rng.random(size) < 0.97)
                form = "uncompressed" if crowd else "rle"
                annotations.append(
                    _annotation(len(annotations) + 1, image["id"], category, mask, crowd, form)
                )
            for _ in range(rng.integers(0, 3)):  # noisy copies
                dy, dx = rng.integers(-2, 3, size=2)
                moved = np.roll(mask, (dy, dx), axis=(0, 1)) | (rng.random(size) < 0.002)
                label = category if rng.random() < 0.8 else int(rng.choice([1, 2, 5]))
                masks.append(moved), scores.append(float(rng.random())), labels.append(label)
        for _ in range(rng.integers(0, 4)):  # false positives
            h, w = rng.integers(2, size[0] // 2), rng.integers(2, size[1] // 2)
            y, x = rng.integers(0, size[0] - h), rng.integers(0, size[1] - w)
            masks.append(_rectangle(size, y, x, y + h, x + w))
            scores.append(float(rng.random())), labels.append(int(rng.choice([1, 2, 5])))
        if image is images[-1]:  # an image without predictions
            masks, scores, labels = [], [], []
        predictions[image["id"]] = {
            "masks": torch.as_tensor(np.stack(masks)) if masks else torch.zeros(0, *size, dtype=torch.bool),
            "scores": torch.tensor(scores, dtype=torch.float64), "labels": torch.tensor(labels, dtype=torch.int64),
        }  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": categories}, predictions


def _pycocotools_segm_stats(ground_truth: dict, predictions: dict) -> np.ndarray:
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = [
        {"image_id": image_id, "category_id": int(label), "segmentation": rle, "score": float(score)}
        for image_id, p in predictions.items()
        for rle, score, label in zip(encode_masks(p["masks"]), p["scores"].tolist(), p["labels"].tolist())
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_stats_equal_pycocotools_segm_to_1e12(seed):
    pytest.importorskip("pycocotools")
    ground_truth, predictions = _random_scene(seed)
    annotations = ground_truth["annotations"]
    assert any(a["iscrowd"] for a in annotations) and any(
        isinstance(a["segmentation"], list) for a in annotations
    )
    assert {len(p["scores"]) == 0 for p in predictions.values()} == {True, False}
    evaluator = MaskEvaluator(ground_truth)
    evaluator.update(list(predictions), list(predictions.values()))
    ours = np.array(list(evaluator.compute().values()))
    reference = _pycocotools_segm_stats(ground_truth, predictions)
    assert 0.05 < ours[0] < 0.95, "the scene should be neither trivial nor hopeless"
    np.testing.assert_allclose(ours, reference, atol=1e-12, err_msg="faster-coco-eval segm != pycocotools")


def test_random_scenes_cover_every_area_range_and_an_image_without_objects():
    areas, images_without_objects = [], 0
    for seed in (0, 2, 4):
        ground_truth, _ = _random_scene(seed)
        areas += [a["area"] for a in ground_truth["annotations"] if not a["iscrowd"]]
        with_objects = {a["image_id"] for a in ground_truth["annotations"]}
        images_without_objects += sum(image["id"] not in with_objects for image in ground_truth["images"])
    assert min(areas) < 32**2 < max(areas) and any(32**2 < a < 96**2 for a in areas) and max(areas) > 96**2
    assert images_without_objects > 0


# ----------------------------------------------------------------------------------------------------
# Panoptic ground truth
# ----------------------------------------------------------------------------------------------------
def test_panoptic_ground_truth_keeps_things_with_pixel_areas_and_crowds():
    ids = np.zeros((20, 30), dtype=np.int64)
    ids[:, :] = 500  # stuff: "sky"
    ids[2:8, 3:13] = 7  # a car: 6 x 10
    ids[10:18, 20:25] = 9  # a crowd of people: 8 x 5
    ids[0, 0] = 0  # VOID
    categories = [{"id": 3, "name": "car", "isthing": 1}, {"id": 1, "name": "person", "isthing": 1},
                  {"id": 187, "name": "sky", "isthing": 0}]  # fmt: skip
    segments = [{"id": 7, "category_id": 3, "iscrowd": 0}, {"id": 9, "category_id": 1, "iscrowd": 1},
                {"id": 500, "category_id": 187, "iscrowd": 0}]  # fmt: skip
    images = [{"id": 4, "height": 20, "width": 30}]
    annotation = {"image_id": 4, "segmentation": torch.from_numpy(ids), "segments_info": segments}
    truth = mask_ground_truth_from_panoptic(images, [annotation], categories)
    assert [c["id"] for c in truth["categories"]] == [3, 1]
    car, crowd = truth["annotations"]
    assert (car["category_id"], car["iscrowd"], car["area"], car["bbox"]) == (
        3,
        0,
        60.0,
        [3.0, 2.0, 10.0, 6.0],
    )
    assert (crowd["category_id"], crowd["iscrowd"], crowd["area"]) == (1, 1, 40.0)
    assert np.array_equal(mask_api.decode(car["segmentation"]).astype(bool), ids == 7)

    evaluator = MaskEvaluator.from_panoptic(
        images, [annotation], categories, label_to_category_id={0: 3, 1: 1}
    )
    evaluator.update([4], [_prediction([ids == 7], [0.9], [0])])
    assert evaluator.compute()["AP"] == pytest.approx(1.0)  # the crowd needs no detection
    with pytest.raises(ValueError, match="the image is"):
        mask_ground_truth_from_panoptic([{"id": 4, "height": 21, "width": 30}], [annotation], categories)


# ----------------------------------------------------------------------------------------------------
# instance_predictions (the official PostProcessSegm)
# ----------------------------------------------------------------------------------------------------
def _outputs(batch: int = 2, queries: int = 5, classes: int = 4, mask_size=(10, 10)):
    return SimpleNamespace(
        logits=torch.randn(batch, queries, classes + 1), pred_masks=torch.randn(batch, queries, *mask_size)
    )


def test_instance_predictions_shapes_scores_and_labels():
    outputs = _outputs()
    sizes, orig_sizes = [[40, 32], [28, 40]], [[80, 64], [57, 81]]  # padded batch: 40 x 40, masks at stride 4
    results = instance_predictions(outputs, torch.tensor(sizes), torch.tensor(orig_sizes))
    probabilities = outputs.logits.softmax(-1)[..., :-1]
    for result, orig, probability in zip(results, orig_sizes, probabilities):
        assert result["masks"].shape == (5, *orig) and result["masks"].dtype == torch.bool
        assert torch.equal(result["scores"], probability.max(-1).values)
        assert torch.equal(result["labels"], probability.argmax(-1))


def test_high_logits_on_the_image_become_a_full_mask_and_on_the_padding_an_empty_one():
    # image 0 is 32 x 24 of a 40 x 40 padded input: the stride-4 cells [:8, :6] and, through the bilinear
    # upsampling, half of the next row and column of cells reach its pixels
    outputs = _outputs(batch=2, queries=3, mask_size=(10, 10))
    outputs.pred_masks.fill_(-10.0)
    outputs.pred_masks[0, 0, :9, :7] = 10.0  # the image's cells and the ones it borders on
    outputs.pred_masks[0, 1, 8:] = 10.0  # only padding rows
    outputs.pred_masks[0, 2, :, 6:] = 10.0  # only padding columns
    outputs.pred_masks[1, 2] = 10.0
    results = instance_predictions(outputs, [[32, 24], [40, 40]], [[64, 47], [13, 17]])
    first, second = results[0]["masks"], results[1]["masks"]
    assert first[0].all(), "a mask high on the whole image must cover all of it at the original size"
    assert not first[1].any() and not first[2].any(), "the padding must be cropped away before resizing"
    assert not second[:2].any() and second[2].all()


def test_padded_size_places_the_image_in_the_masks():
    outputs = _outputs(batch=1, queries=1, mask_size=(10, 10))
    outputs.pred_masks.fill_(-10.0)
    outputs.pred_masks[0, 0, :6, :6] = 10.0  # the top-left 20 x 20 of a 40 x 40 padded input (and a border)
    padded = instance_predictions(outputs, [[20, 20]], [[20, 20]], padded_size=(40, 40))[0]["masks"]
    assert padded.all()
    # by default the padded size is the largest image, 20 x 20: the high cells cover only its top left
    default = instance_predictions(outputs, [[20, 20]], [[20, 20]])[0]["masks"]
    assert default[0, :10, :10].all() and not default[0, 14:, :].any()
    with pytest.raises(ValueError, match="must fit in `padded_size`"):
        instance_predictions(outputs, [[44, 20]], [[20, 20]], padded_size=(40, 40))


def test_top_k_takes_the_best_query_class_pairs_with_their_query_masks():
    outputs = _outputs(batch=2, queries=6, classes=3)
    sizes = [[40, 40], [36, 30]]
    every_query = instance_predictions(outputs, sizes, sizes)
    best = instance_predictions(outputs, sizes, sizes, top_k=4)
    probabilities = outputs.logits.softmax(-1)[..., :-1].flatten(1)  # [B, N*K]
    for b in range(2):
        assert len(best[b]["scores"]) == 4
        assert torch.equal(best[b]["scores"], probabilities[b].sort(descending=True).values[:4])
        index = probabilities[b].topk(4).indices
        assert torch.equal(best[b]["labels"], index % 3)
        assert torch.equal(best[b]["masks"], every_query[b]["masks"][index // 3])
