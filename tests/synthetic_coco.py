"""Synthetic ground truth and detections with the statistics of a real detector on COCO, for checking
and benchmarking evaluation code.

Per image: Poisson(7) ground-truth boxes over the 80 COCO categories (2% crowd), sizes spanning the
small, medium and large ranges; then `detections_per_image` detections: 5 jittered copies of each
ground-truth box (20% with a wrong class), the rest random boxes, all with random scores. Every
`no_objects_every`-th image has no ground truth and every `empty_every`-th image no detection.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import torch

COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


def synthetic_coco(
    num_images: int,
    detections_per_image: int = 100,
    seed: int = 0,
    empty_every: int = 17,
    no_objects_every: int = 13,
) -> tuple[dict, list[int], list[dict[str, torch.Tensor]]]:
    """(COCO ground-truth dict, image ids, post-processed detections with absolute xyxy boxes)."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = int(rng.integers(320, 641)), int(rng.integers(240, 481))
        images.append({"id": image_id, "width": width, "height": height})
        objects = []
        for _ in range(0 if image_id % no_objects_every == 0 else rng.poisson(7)):
            side = float(np.exp(rng.uniform(np.log(6), np.log(min(width, height) * 0.9))))  # small to large
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            w, h = min(w, width - 1), min(h, height - 1)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            category = int(rng.choice(COCO_CATEGORY_IDS))
            objects.append((x, y, w, h, category))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category, "bbox": [x, y, w, h],
                 "area": w * h * rng.uniform(0.5, 1.0), "iscrowd": int(rng.random() < 0.02)}
            )  # fmt: skip
        count = 0 if image_id % empty_every == 0 else detections_per_image
        boxes, scores, labels = [], [], []
        for index in range(count):
            if objects and index < 5 * len(objects):
                x, y, w, h, category = objects[index % len(objects)]
                jitter = rng.normal(0, 0.1, 4)
                x, y, w, h = x + jitter[0] * w, y + jitter[1] * h, w * (1 + jitter[2]), h * (1 + jitter[3])
                if rng.random() < 0.2:
                    category = int(rng.choice(COCO_CATEGORY_IDS))
            else:
                w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
                x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
                category = int(rng.choice(COCO_CATEGORY_IDS))
            boxes.append([x, y, x + abs(w), y + abs(h)])
            scores.append(float(rng.random()))
            labels.append(category)
        detections.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
                "scores": torch.tensor(scores, dtype=torch.float64),
                "labels": torch.tensor(labels, dtype=torch.long),
            }
        )
    categories = [{"id": c, "name": f"category_{c}"} for c in COCO_CATEGORY_IDS]
    ground_truth = {"images": images, "annotations": annotations, "categories": categories}
    return ground_truth, list(range(1, num_images + 1)), detections


def pycocotools_stats(
    ground_truth: dict, image_ids: list[int], detections: list[dict[str, torch.Tensor]]
) -> np.ndarray:
    """The 12 stats by pycocotools used the standard way (result dicts -> loadRes -> COCOeval), the
    reference for checks and the peer for benchmarks; evaluated over `image_ids`."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for image_id, detection in zip(image_ids, detections):
        for box, score, label in zip(
            detection["boxes"].tolist(), detection["scores"].tolist(), detection["labels"].tolist()
        ):
            results.append({"image_id": image_id, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                            "score": score, "category_id": label})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


__all__ = ["COCO_CATEGORY_IDS", "pycocotools_stats", "synthetic_coco"]
