"""Video throughput: frames/s of hf_detr's video path against transformers' DETR through its
`pipeline("object-detection")`, on the same decoded frames and the same weights.

There is no video offline: the clip is generated. The main job's model (test_resnet DC5, d 128, 2+2 layers,
10 queries, 128 px frames: the built-in shapes panned, `shapes_clip_frames`) and DETR-R50 (the paper's,
frames of a pan over the COCO photo in tests/data, 640x480, resized by both processors to 800 px). Both
sides get the frames decoded (PyAV) as arrays; ours runs `hf_detr.video.detect_frames` (preprocess,
forward, post-process, batch --batch-size) as eager fp32, bf16 (CPU autocast) and onnxruntime fp32;
theirs the pipeline on PIL images of the frames (batch --batch-size; the frames share one size). Ours
end to end from the file (decode included) is printed too. Random weights: the throughput does not
depend on them.

    python benchmarks/bench_video.py [--frames 60] [--batch-size 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from bench_export import Bf16Model, OnnxModel  # run from benchmarks/ or with it on sys.path
from bench_forward import build_models
from bench_processor import SOURCE
from bench_train_step import TRANSFORMERS
from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, pipeline

from hf_detr import HfDetrImageProcessor
from hf_detr.convert import convert_checkpoint
from hf_detr.data.builtin import shapes_clip_frames
from hf_detr.export import export_model
from hf_detr.video import detect_frames, detect_video, read_frames, write_video

MAIN_JOB_SIZE = {"shortest_edge": 128, "longest_edge": 213}  # the built-in preset's image_scale 0.16


def photo_pan_frames(count: int, size: tuple[int, int] = (640, 480)) -> list[np.ndarray]:
    """A camera panning over the COCO photo (scaled up 1.25x), `size` (width, height) frames."""
    photo = PIL.Image.open(SOURCE).convert("RGB")
    photo = photo.resize((photo.width * 5 // 4, photo.height * 5 // 4), PIL.Image.BILINEAR)
    span = photo.width - size[0]
    frames = []
    for index in range(count):
        x = round(span * (1 - abs(1 - 2 * index / max(1, count - 1))))  # there and back
        frames.append(np.asarray(photo.crop((x, 40, x + size[0], 40 + size[1]))))
    return frames


def main_job_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A random transformers DETR of the main job's shape and the same weights in hf_detr."""
    torch.manual_seed(0)
    config = DetrConfig(backbone="test_resnet", dilation=True, **TRANSFORMERS["builtin"])  # the preset's DC5
    reference = DetrForObjectDetection(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(f"{tmp}/t")
        ours = convert_checkpoint("transformers", f"{tmp}/t", f"{tmp}/o")
    return reference, ours.eval()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def compare(name: str, reference, ours, frames: list[np.ndarray], size: dict, args, folder: Path) -> None:
    """Frames/s of every variant of ours and of transformers' pipeline on `frames`."""
    clip = folder / f"{name}.mp4"
    write_video(clip, frames, rate=25)
    decoded = list(read_frames(str(clip)))
    processor = HfDetrImageProcessor(size=size)
    theirs = pipeline("object-detection", model=reference, image_processor=DetrImageProcessor(size=size))
    pictures = [PIL.Image.fromarray(frame.image) for frame in decoded]
    runners = {"hf_detr fp32": ours, "hf_detr bf16": Bf16Model(ours)}
    runners["onnxruntime fp32"] = OnnxModel(export_model(ours, folder / f"{name}.onnx", verify=False), torch.get_num_threads())
    with torch.inference_mode():
        theirs(pictures[:2], threshold=0.0)  # warm-up
        seconds, their_results = timed(lambda: theirs(pictures, threshold=0.0, batch_size=args.batch_size))
        rows = {"transformers pipeline fp32": seconds}
        for variant, model in runners.items():
            list(detect_frames(model, processor, decoded[:2], 0.0, batch_size=args.batch_size))  # warm-up
            rows[variant], results = timed(
                lambda m=model: list(detect_frames(m, processor, decoded, 0.0, batch_size=args.batch_size))
            )
        rows["hf_detr fp32, from the file"], _ = timed(
            lambda: list(detect_video(ours, processor, str(clip), 0.0, batch_size=args.batch_size))
        )
    print(f"\n{name}: {len(decoded)} frames {decoded[0].image.shape[1]}x{decoded[0].image.shape[0]}, batch {args.batch_size}")
    peer = rows["transformers pipeline fp32"]
    for variant, seconds in rows.items():
        print(f"  {variant:>28}: {len(decoded) / seconds:7.2f} frames/s  ({peer / seconds:.2f}x)")
    agree = sum(len(r) for r in their_results), sum(len(r.detections["scores"]) for r in results)
    print(f"  detections at threshold 0 (transformers, onnxruntime): {agree}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="frames in each generated clip")
    parser.add_argument("--batch-size", type=int, default=4, help="frames per forward pass, both sides")
    parser.add_argument("--only", choices=("main-job", "r50"), default=None, help="run one model only")
    args = parser.parse_args()
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "main-job"):
            reference, ours = main_job_models()
            frames = list(shapes_clip_frames(args.frames))
            compare("main-job", reference, ours, frames, MAIN_JOB_SIZE, args, Path(tmp))
        if args.only in (None, "r50"):
            reference, ours = build_models(torch.device("cpu"))
            compare("detr-r50", reference, ours, photo_pan_frames(args.frames), {"shortest_edge": 800, "longest_edge": 1333}, args, Path(tmp))


if __name__ == "__main__":
    main()

