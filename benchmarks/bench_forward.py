"""Forward-pass speed: hf_detr vs transformers' DetrForObjectDetection, same weights, same inputs.

DETR-R50 (COCO config) at 800x1066, fp32, inference mode, batch 1 and batch 4. Each model is warmed
up, then timed over several runs; the median is reported with the ratio (>1 means hf_detr is faster).

    python benchmarks/bench_forward.py [--runs 5] [--batch-sizes 1 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from functools import partial

import torch
from timing import median_seconds
from transformers import DetrConfig, DetrForObjectDetection

from hf_detr.convert import convert_checkpoint


def build_models(device: torch.device):
    """A random transformers DETR-R50 and the same weights converted to hf_detr."""
    torch.manual_seed(0)
    reference = DetrForObjectDetection(DetrConfig(num_labels=91)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(f"{tmp}/transformers")
        ours = convert_checkpoint("transformers", f"{tmp}/transformers", f"{tmp}/hf_detr")
    return reference.to(device), ours.eval().to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    reference, ours = build_models(device)
    print(
        f"DETR-R50 forward, fp32, {args.height}x{args.width}, device {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"{'batch':>5} | {'transformers (s)':>16} | {'hf_detr (s)':>11} | {'speed-up':>8} | max |Δlogits|")
    for batch_size in args.batch_sizes:
        generator = torch.Generator().manual_seed(batch_size)
        pixel_values = torch.randn(batch_size, 3, args.height, args.width, generator=generator).to(device)
        pixel_mask = torch.ones(batch_size, args.height, args.width, dtype=torch.long, device=device)
        with torch.inference_mode():
            ref_logits = reference(pixel_values=pixel_values, pixel_mask=pixel_mask).logits
            our_logits = ours(pixel_values=pixel_values, pixel_mask=pixel_mask).logits
            difference = (ref_logits - our_logits).abs().max().item()
            inputs = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
            t_ref = median_seconds(partial(reference, **inputs), args.runs, args.warmup, device)
            t_ours = median_seconds(partial(ours, **inputs), args.runs, args.warmup, device)
        print(
            f"{batch_size:>5} | {t_ref:>16.3f} | {t_ours:>11.3f} | {t_ref / t_ours:>7.2f}x | {difference:.1e}"
        )


if __name__ == "__main__":
    main()
