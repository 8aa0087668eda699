"""PQ evaluation speed: hf_detr's PanopticEvaluator (vectorised numpy) vs a transcription of
panopticapi's per-image loops (tests/panoptic_reference.py), on the same in-memory images.

Synthetic images (tests/panoptic_reference.py `random_image`): random rectangles over void with COCO-
sized segment ids (up to 2^24), crowds, an unlisted id, and a prediction derived from the ground truth
(moved, relabelled, extra segments; 10% of the images without any). Neither side reads PNGs, so the
times are the PQ computation alone. The results are checked to agree within 1e-9.

    python benchmarks/bench_panoptic_eval.py [--images 200] [--size 256] [--segments 20]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from timing import best_of  # run from benchmarks/ or with it on sys.path

from hf_detr.evaluation import PanopticEvaluator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers
from panoptic_reference import CATEGORIES, random_image, reference_pq


def run_ours(images: list[dict]) -> dict:
    evaluator = PanopticEvaluator(CATEGORIES)
    for start in range(0, len(images), 8):  # as an evaluation loop feeds it, batch by batch
        batch = images[start : start + 8]
        evaluator.update(
            range(start, start + len(batch)),
            [{"segmentation": i["pred"], "segments_info": i["pred_segments"]} for i in batch],
            [{"segmentation": i["gt"], "segments_info": i["gt_segments"]} for i in batch],
        )
    return evaluator.compute()


def run_reference(images: list[dict]) -> dict:
    return reference_pq(
        [(i["gt"], i["gt_segments"], i["pred"], i["pred_segments"]) for i in images], CATEGORIES
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--segments", type=int, default=20, help="mean gt segments per image")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = [random_image(rng, args.size, args.size, args.segments) for _ in range(args.images)]
    t_ref, reference = best_of(lambda: run_reference(images), args.repeats)
    t_ours, ours = best_of(lambda: run_ours(images), args.repeats)
    diff = max(
        abs(ours[g][k] - reference[g][k]) for g in ("All", "Things", "Stuff") for k in ("pq", "sq", "rq")
    )
    assert diff <= 1e-9, diff
    segments = np.mean([len(i["gt_segments"]) for i in images])
    print(
        f"{args.images} images of {args.size}x{args.size}, {segments:.1f} gt segments per image, "
        f"{os.cpu_count()} CPUs; PQ {ours['All']['pq']:.4f}, max |Δ| vs reference {diff:.1e}"
    )
    print(f"{'implementation':>38} | ms/image | speed-up")
    print(f"{'panopticapi loops (transcription)':>38} | {1e3 * t_ref / args.images:8.3f} | 1.00x")
    print(f"{'hf_detr PanopticEvaluator':>38} | {1e3 * t_ours / args.images:8.3f} | {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
