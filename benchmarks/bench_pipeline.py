"""`pipeline("object-detection")` on photos of mixed sizes: hf_detr against transformers' DETR-R50 (the
same random weights), one by one and batched.

Eight photos (crops and rescales of the COCO val2017 image in tests/data, as bench_processor.py),
each resized by the processors to shorter side 800 / longer at most 1333, CPU, fp32. transformers'
batched pipeline fails on images of different sizes unless a `pad_size` is set by hand; hf_detr's runs
images of one size together and gives the one-by-one results (checked here: same labels and boxes).

    python benchmarks/bench_pipeline.py [--runs 2] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import PIL.Image
import torch
from bench_forward import build_models  # run from benchmarks/ or with it on sys.path
from bench_processor import PHOTOS, SOURCE
from timing import best_of
from transformers import DetrImageProcessor, pipeline

from hf_detr import HfDetrImageProcessor


def write_photos(folder: Path) -> list[str]:
    source = PIL.Image.open(SOURCE).convert("RGB")
    paths = []
    for index, (crop, size) in enumerate(PHOTOS):
        path = folder / f"photo{index}.jpg"
        source.crop(crop).resize(size).save(path, quality=90)
        paths.append(str(path))
    return paths


def same_detections(a: list, b: list) -> bool:
    return all([(d["label"], d["box"]) for d in x] == [(d["label"], d["box"]) for d in y] for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="timed runs of each variant; the fastest counts")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward in the batched runs")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    reference, ours = build_models(torch.device("cpu"))
    theirs_pipe = pipeline("object-detection", model=reference, image_processor=DetrImageProcessor())
    ours_pipe = pipeline("object-detection", model=ours, image_processor=HfDetrImageProcessor())
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photos(Path(tmp))
        theirs_pipe(photos[:1]), ours_pipe(photos[:1])  # warm-up
        theirs_one, _ = best_of(lambda: theirs_pipe(photos, threshold=0.0), args.runs)
        ours_one, single = best_of(lambda: ours_pipe(photos, threshold=0.0), args.runs)
        ours_batched, batched = best_of(
            lambda: ours_pipe(photos, threshold=0.0, batch_size=args.batch_size), args.runs
        )
        try:
            theirs_pipe(photos, threshold=0.0, batch_size=args.batch_size)
            theirs_batched = "runs"
        except RuntimeError as error:
            theirs_batched = f"fails ({str(error).splitlines()[0][:60]})"
    print(
        f"pipeline('object-detection'), DETR-R50 fp32, {len(photos)} photos of mixed sizes, CPU "
        f"({torch.get_num_threads()} threads, {platform.processor() or platform.machine()}), best of {args.runs}"
    )
    print(f"one by one:  transformers {theirs_one:.2f} s, hf_detr {ours_one:.2f} s, {theirs_one / ours_one:.2f}x")
    print(
        f"batch {args.batch_size}:     transformers {theirs_batched}; hf_detr {ours_batched:.2f} s, "
        f"{theirs_one / ours_batched:.2f}x transformers one by one; same detections as one by one: "
        f"{same_detections(batched, single)}"
    )


if __name__ == "__main__":
    main()
