"""GPU inference: DETR-R50 at 800x1333 in bf16, hf_detr vs transformers on the same weights.

Latency at batch 1 (median of 50 after warm-up) and throughput at batch 16 (images/s), both models
in `torch.autocast("cuda", dtype=torch.bfloat16)`. Finishes in well under 5 minutes on one GPU.

    python benchmarks/gpu_infer.py [--device cuda]
"""

from __future__ import annotations

import argparse

import torch
from bench_forward import build_models  # run from benchmarks/ or with it on sys.path
from timing import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    args = parser.parse_args()
    device = torch.device(args.device)
    reference, ours = build_models(device)
    rows = []
    for name, model in (("transformers", reference), ("hf_detr", ours)):
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            one = torch.randn(1, 3, args.height, args.width, device=device)
            sixteen = torch.randn(16, 3, args.height, args.width, device=device)
            for _ in range(10):
                model(pixel_values=one)
            latency = median_seconds(lambda m=model, x=one: m(pixel_values=x), 50, 0, device)
            model(pixel_values=sixteen)
            throughput = 16 / median_seconds(lambda m=model, x=sixteen: m(pixel_values=x), 10, 0, device)
        rows.append((name, latency * 1000, throughput))
    print(f"DETR-R50 inference, {args.height}x{args.width}, bf16, {torch.cuda.get_device_name(device)}")
    print(f"{'implementation':>14} | batch 1 latency (ms) | batch 16 images/s")
    for name, latency, throughput in rows:
        print(f"{name:>14} | {latency:20.1f} | {throughput:17.1f}")
    print(f"speed-up: latency {rows[0][1] / rows[1][1]:.2f}x, throughput {rows[1][2] / rows[0][2]:.2f}x")


if __name__ == "__main__":
    main()
