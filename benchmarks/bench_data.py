"""Data loading costs: converting a COCO-size json, re-using the cache, and building the built-in set.

A synthetic COCO folder with 100,000 annotations over 15,000 images (COCO train has 860k over 118k),
converted by `load_detection_dataset` (first run: json -> arrow cache; second run: cache hit), side by
side with pycocotools' `COCO(json)` index, which torchvision's `CocoDetection` (and the official DETR)
rebuild at every start. Also times writing and converting the built-in synthetic set.

    python benchmarks/bench_data.py [--annotations 100000] [--images 15000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import tempfile
import time
from pathlib import Path

import PIL.Image

from hf_detr.data import load_detection_dataset
from hf_detr.data.builtin import SPLIT_SIZES, builtin_dataset_folder


def write_synthetic_coco(root: Path, num_images: int, num_annotations: int) -> Path:
    random.seed(0)
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    tiny = root / "tiny.png"
    PIL.Image.new("RGB", (4, 4)).save(tiny)
    images = []
    for index in range(1, num_images + 1):
        os.link(tiny, root / "train" / f"{index:012d}.png")  # the converter checks that files exist
        images.append({"id": index, "file_name": f"{index:012d}.png", "width": 640, "height": 480})
    categories = [{"id": i, "name": f"class_{i}"} for i in range(1, 91) if i % 12]  # gaps like COCO's
    annotations = []
    for index in range(1, num_annotations + 1):
        x, y = random.uniform(0, 600), random.uniform(0, 440)
        w, h = random.uniform(2, 640 - x), random.uniform(2, 480 - y)
        annotations.append({"id": index, "image_id": random.randint(1, num_images), "bbox": [x, y, w, h],
                            "area": w * h, "category_id": random.choice(categories)["id"], "iscrowd": 0})  # fmt: skip
    path = root / "annotations" / "instances_train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def timed(fn) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # progress bars
        fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=15_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        json_path = write_synthetic_coco(tmp / "coco", args.images, args.annotations)
        size_mb = json_path.stat().st_size / 1e6
        cache = tmp / "cache"
        first = timed(lambda: load_detection_dataset(tmp / "coco", cache_dir=cache))
        again = timed(lambda: load_detection_dataset(tmp / "coco", cache_dir=cache))
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            pycocotools = timed(lambda: COCO(str(json_path)))
        print(f"COCO json: {args.annotations:,} annotations, {args.images:,} images, {size_mb:.1f} MB")
        print(f"{'step':>44} | seconds")
        print(f"{'hf_detr: first load (convert + arrow cache)':>44} | {first:.2f}")
        print(f"{'hf_detr: later loads (cache hit)':>44} | {again:.2f}")
        print(f"{'pycocotools COCO(json) index, every start':>44} | {pycocotools:.2f}")
        print(f"cache hit vs pycocotools index: {pycocotools / again:.1f}x")

        os.environ["HF_DETR_CACHE"] = str(tmp / "builtin-cache")
        build = timed(
            lambda: load_detection_dataset(builtin_dataset_folder(), cache_dir=tmp / "builtin-arrow")
        )
        reload = timed(
            lambda: load_detection_dataset(builtin_dataset_folder(), cache_dir=tmp / "builtin-arrow")
        )
        total = sum(SPLIT_SIZES.values())
        print(
            f"built-in set ({total:,} images): first use {build:.1f} s (write PNGs + convert), later {reload:.2f} s"
        )


if __name__ == "__main__":
    main()
