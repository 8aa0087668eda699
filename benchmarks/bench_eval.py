"""COCO evaluation speed: hf_detr's CocoEvaluator (faster-coco-eval) vs pycocotools, same data.

2,000 synthetic images x 100 detections with a detector's statistics (tests/synthetic_coco.py:
about 7 objects per image over the 80 COCO categories, 5 jittered detections per object, the rest
false positives). pycocotools is used the standard way: result dicts -> `loadRes` -> COCOeval
evaluate / accumulate / summarize. hf_detr is timed from `update` (tensors in) to the 12 stats.

    python benchmarks/bench_eval.py [--images 2000] [--detections 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from hf_detr.evaluation import CocoEvaluator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers
from synthetic_coco import pycocotools_stats, synthetic_coco


def run_ours(ground_truth, image_ids, detections, workers: int | None) -> np.ndarray:
    evaluator = CocoEvaluator(ground_truth, num_workers=workers)
    for start in range(0, len(image_ids), 8):  # as an evaluation loop feeds it, batch by batch
        evaluator.update(image_ids[start : start + 8], detections[start : start + 8])
    return np.asarray(list(evaluator.compute().values()))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--detections", type=int, default=100)
    args = parser.parse_args()
    ground_truth, image_ids, detections = synthetic_coco(args.images, args.detections)
    t_ref, reference = timed(lambda: pycocotools_stats(ground_truth, image_ids, detections))
    t_one, one = timed(lambda: run_ours(ground_truth, image_ids, detections, workers=1))
    t_ours, ours = timed(lambda: run_ours(ground_truth, image_ids, detections, workers=None))
    assert np.allclose(one, reference[:12], atol=1e-9) and np.allclose(ours, reference[:12], atol=1e-9)
    print(
        f"{args.images} images x {args.detections} detections, {len(ground_truth['annotations'])} objects, "
        f"80 categories, {os.cpu_count()} CPUs; max |Δ stats| vs pycocotools {np.abs(ours - reference[:12]).max():.1e}"
    )
    print(f"{'implementation':>36} | seconds | speed-up")
    print(f"{'pycocotools':>36} | {t_ref:7.2f} | 1.00x")
    print(f"{'hf_detr CocoEvaluator, 1 process':>36} | {t_one:7.2f} | {t_ref / t_one:.2f}x")
    print(f"{'hf_detr CocoEvaluator, default':>36} | {t_ours:7.2f} | {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
