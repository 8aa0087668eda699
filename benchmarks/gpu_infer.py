"""GPU inference: DETR-R50 at 800x1333 in bf16, hf_detr eager / torch.compile / CUDA graphs vs
transformers eager on the same weights (`--dtype fp16` for fp16).

Latency at batch 1 (median of 50 after warm-up) and throughput at batch 16 (images/s), every variant
in `torch.autocast("cuda", dtype=torch.bfloat16)`; "compiled" is `torch.compile(fullgraph=True)`,
"CUDA graphs" is `mode="reduce-overhead"` (batch 1 only: one graph per shape). Also the largest logits
deviation of each from hf_detr's fp32 eager. Finishes in well under 5 minutes on one GPU.

    python benchmarks/gpu_infer.py [--device cuda] [--skip-compile]
"""

from __future__ import annotations

import argparse

import torch
from bench_forward import build_models  # run from benchmarks/ or with it on sys.path
from timing import median_seconds


def measure(
    model, one: torch.Tensor, sixteen: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> tuple[float, float | None]:
    """(batch-1 latency in ms, batch-16 images/s or None) under autocast to `dtype`."""
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
        for _ in range(10):  # warm-up: cuDNN autotuning, compilation, graph capture
            model(pixel_values=one)
        latency = median_seconds(lambda: model(pixel_values=one), 50, 0, device)
        throughput = None
        if sixteen is not None:
            for _ in range(3):
                model(pixel_values=sixteen)
            throughput = 16 / median_seconds(lambda: model(pixel_values=sixteen), 10, 0, device)
    return latency * 1000, throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # the CPU smoke run: --device cpu --height 128 --width 160
    reference, ours = build_models(device)
    one = torch.randn(1, 3, args.height, args.width, device=device)
    sixteen = torch.randn(16, 3, args.height, args.width, device=device)
    with torch.inference_mode():
        fp32_logits = ours(pixel_values=one).logits.float()
    variants = [("transformers eager", reference, True), ("hf_detr eager", ours, True)]
    if not args.skip_compile:
        variants.append(("hf_detr compiled", torch.compile(ours, fullgraph=True), True))
        variants.append(
            ("hf_detr CUDA graphs", torch.compile(ours, fullgraph=True, mode="reduce-overhead"), False)
        )
    rows = []
    for name, model, batched in variants:
        model.eval()
        latency, throughput = measure(model, one, sixteen if batched else None, device, dtype)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
            deviation = float((model(pixel_values=one).logits.float() - fp32_logits).abs().max())
        rows.append((name, latency, throughput, deviation))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (a smoke run)"
    print(f"DETR-R50 inference, {args.height}x{args.width}, {args.dtype}, {name}")
    print(f"{'variant':>20} | batch 1 latency (ms) | batch 16 images/s | max |Δlogits| vs fp32")
    for name, latency, throughput, deviation in rows:
        shown = f"{throughput:17.1f}" if throughput is not None else f"{'-':>17}"
        print(f"{name:>20} | {latency:20.2f} | {shown} | {deviation:.2e}")
    peer = rows[0]
    for name, latency, throughput, _ in rows[1:]:
        speedup = f", throughput {throughput / peer[2]:.2f}x" if throughput else ""
        print(f"{name}: latency {peer[1] / latency:.2f}x{speedup} against transformers eager")


if __name__ == "__main__":
    main()
