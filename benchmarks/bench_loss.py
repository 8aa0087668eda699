"""Loss speed: hf_detr's SetCriterion vs transformers' ForObjectDetectionLoss on the same tensors.

Batch 8, 100 queries, 6 decoder layers (all scored: auxiliary loss on), 91 COCO classes, about 7 targets
per image (COCO's mean), forward (matching + losses) and backward, CPU. Also counts the device-to-host
transfers per step with `HostTransferCounter` (tests/host_transfers.py), and on CUDA the synchronizing calls
that `torch.cuda.set_sync_debug_mode("warn")` reports.

    python benchmarks/bench_loss.py [--runs 50] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from timing import median_seconds
from transformers import DetrConfig
from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

from hf_detr import HfDetrConfig
from hf_detr.loss_detr import SetCriterion

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers
from host_transfers import HostTransferCounter

LAYERS, BATCH, QUERIES, CLASSES = 6, 8, 100, 91
TARGETS_PER_IMAGE = (3, 9, 7, 12, 2, 5, 10, 8)  # mean 7, COCO's mean


def make_inputs(device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(LAYERS, BATCH, QUERIES, CLASSES + 1, generator=generator)
    centers = torch.rand(LAYERS, BATCH, QUERIES, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(LAYERS, BATCH, QUERIES, 2, generator=generator) * 0.3 + 0.02
    boxes = torch.cat([centers, sizes], -1)
    labels = []
    for count in TARGETS_PER_IMAGE:
        target_centers = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
        target_sizes = torch.rand(count, 2, generator=generator) * 0.3 + 0.05
        labels.append(
            {
                "class_labels": torch.randint(0, CLASSES, (count,), generator=generator).to(device),
                "boxes": torch.cat([target_centers, target_sizes], -1).to(device),
            }
        )
    return logits.to(device), boxes.to(device), labels


def run_ours(criterion, logits, boxes, labels):
    logits = logits.detach().requires_grad_(True)
    boxes = boxes.detach().requires_grad_(True)
    loss, _ = criterion(logits, boxes, labels)
    loss.backward()


def run_transformers(config, logits, boxes, labels):
    logits = logits.detach().requires_grad_(True)
    boxes = boxes.detach().requires_grad_(True)
    loss, _, _ = ForObjectDetectionLoss(logits[-1], labels, logits.device, boxes[-1], config, logits, boxes)
    loss.backward()


def cuda_synchronizations(fn: Callable[[], object]) -> list[str]:
    """The synchronizing CUDA calls (device-to-host copies, waits) `fn` makes, as torch reports them:
    one "file:line" of the Python code that made it per call."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    logits, boxes, labels = make_inputs(device)
    criterion = SetCriterion.from_config(HfDetrConfig(num_labels=CLASSES))
    reference_config = DetrConfig(num_labels=CLASSES, auxiliary_loss=True, decoder_layers=LAYERS)

    counts = {}
    for name, fn in (("transformers", lambda: run_transformers(reference_config, logits, boxes, labels)),
                     ("hf_detr", lambda: run_ours(criterion, logits, boxes, labels))):  # fmt: skip
        with HostTransferCounter() as counter:
            fn()
        counts[name] = len(counter.calls)
        if device.type == "cuda":
            sites = cuda_synchronizations(fn)
            shown = f": {', '.join(sites)}" if name == "hf_detr" else ""
            counts[name] = f"{counts[name]} (CUDA synchronizations: {len(sites)}{shown})"
    t_ref = 1000 * median_seconds(
        lambda: run_transformers(reference_config, logits, boxes, labels), args.runs, 5, device
    )
    t_ours = 1000 * median_seconds(lambda: run_ours(criterion, logits, boxes, labels), args.runs, 5, device)
    print(
        f"DETR loss + matching, forward+backward: batch {BATCH}, {QUERIES} queries, {LAYERS} decoder layers, "
        f"{sum(len(t['class_labels']) for t in labels) / BATCH:.1f} targets/image, device {device}, "
        f"{torch.get_num_threads()} threads, median of {args.runs}"
    )
    print(f"{'implementation':>14} | {'time (ms)':>9} | host transfers/step")
    print(f"{'transformers':>14} | {t_ref:>9.2f} | {counts['transformers']}")
    print(f"{'hf_detr':>14} | {t_ours:>9.2f} | {counts['hf_detr']}")
    print(f"speed-up: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
