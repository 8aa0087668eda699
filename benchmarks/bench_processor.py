"""Preprocessing speed: HfDetrImageProcessor vs transformers' DETR processors (PIL and torchvision backends).

A batch of 8 photos of mixed sizes (crops and rescales of the real COCO val2017 image in
tests/data, saved as JPEG), COCO settings (shorter side 800, longer at most 1333, ImageNet
normalization, padding), `return_tensors="pt"`, CPU. Reported twice: decode excluded (decoded PIL
images in) and decode included (file paths in; transformers' processors get `load_image(path)`, as
the pipeline does). Also prints the largest deviation of each output from transformers' PIL backend.

    python benchmarks/bench_processor.py [--runs 10]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import PIL.Image
import torch
from timing import median_seconds
from transformers.image_utils import load_image
from transformers.models.detr.image_processing_detr import DetrImageProcessor
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

from hf_detr import HfDetrImageProcessor

SOURCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "coco-val2017-39769" / "000000039769.png"
# (crop box in the 640x480 source, output size): eight photos of different sizes and aspect ratios
PHOTOS = [
    ((0, 0, 640, 480), (640, 480)),
    ((100, 0, 460, 480), (480, 640)),
    ((0, 40, 640, 440), (500, 313)),
    ((80, 0, 560, 480), (612, 612)),
    ((200, 0, 520, 480), (427, 640)),
    ((0, 60, 640, 420), (640, 360)),
    ((0, 0, 640, 480), (800, 600)),
    ((300, 100, 640, 480), (500, 559)),
]


def make_photos(directory: Path) -> list[Path]:
    source = PIL.Image.open(SOURCE).convert("RGB")
    paths = []
    for index, (crop, size) in enumerate(PHOTOS):
        path = directory / f"photo_{index}.jpg"
        source.crop(crop).resize(size, PIL.Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp))
        images = [load_image(str(p)) for p in paths]
        for image in images:
            image.load()
        processors = {
            "transformers PIL": DetrImageProcessorPil(),
            "transformers torchvision": DetrImageProcessor(),
            "hf_detr": HfDetrImageProcessor(),
        }
        reference = processors["transformers PIL"](images, return_tensors="pt")["pixel_values"]
        print(
            f"8 photos, sizes {[im.size for im in images]}, batch {tuple(reference.shape)}, "
            f"{torch.get_num_threads()} torch threads, median of {args.runs}"
        )
        print(f"{'processor':>25} | {'decoded in (ms)':>15} | {'paths in (ms)':>13} | max |Δ| vs PIL backend")
        results = {}
        for name, processor in processors.items():
            decoded = 1000 * median_seconds(lambda p=processor: p(images, return_tensors="pt"), args.runs)
            if name == "hf_detr":
                with_decode = 1000 * median_seconds(lambda p=processor: p([str(x) for x in paths]), args.runs)
            else:
                with_decode = 1000 * median_seconds(
                    lambda p=processor: p([load_image(str(x)) for x in paths], return_tensors="pt"), args.runs
                )
            output = processor(images, return_tensors="pt")["pixel_values"]
            deviation = (output - reference).abs().max().item()
            results[name] = (decoded, with_decode)
            print(f"{name:>25} | {decoded:>15.1f} | {with_decode:>13.1f} | {deviation:.2e}")
        ours = results["hf_detr"]
        best = [min(results[n][i] for n in results if n != "hf_detr") for i in range(2)]
        print(
            f"speed-up vs the faster transformers backend: {best[0] / ours[0]:.2f}x (decoded), "
            f"{best[1] / ours[1]:.2f}x (with decode)"
        )


if __name__ == "__main__":
    main()
