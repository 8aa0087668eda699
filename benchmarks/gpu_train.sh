#!/usr/bin/env bash
# GPU training throughput: DETR-R50 at 800x1333, bf16 autocast, batch 4 per GPU, fused AdamW, hf_detr
# vs transformers (auxiliary loss on, same weights, same trainable parameters); images/s and peak
# memory; then hf_detr with Group DETR's K = 11 query groups against K = 1 (the per-step cost of
# one-to-many training). Two tables, well under 5 minutes on one GPU.
#     bash benchmarks/gpu_train.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")"
python - "${1:-20}" <<'PY'
import statistics
import sys
import time

import torch

from bench_train_step import Stepper, build, make_batch

from hf_detr.training.query_groups import set_query_groups

steps = int(sys.argv[1])
device = torch.device("cuda")
reference, ours = build("resnet50")
_, _, labels = make_batch(4, 32)  # 7 objects per image
pixel_values = torch.randn(4, 3, 800, 1333)
pixel_mask = torch.ones(4, 800, 1333, dtype=torch.long)
batch = (pixel_values.to(device), pixel_mask.to(device), [{k: v.to(device) for k, v in t.items()} for t in labels])


def measure(model) -> tuple[float, float]:
    """Images/s and peak memory (GiB) of `steps` bf16 training steps after 5 warm-up steps."""
    model.to(device).train()
    stepper = Stepper(model, batch)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(5):
            stepper.step(record=False)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            stepper.step(record=False)
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    model.to("cpu")
    return 4 * steps / elapsed, torch.cuda.max_memory_allocated(device) / 2**30


rows = [(name, *measure(model)) for name, model in (("transformers", reference), ("hf_detr", ours))]
print(f"DETR-R50 training step, 4 x 800x1333, bf16, {torch.cuda.get_device_name(device)}, {steps} steps")
print(f"{'implementation':>14} | images/s | peak memory (GiB)")
for name, throughput, memory in rows:
    print(f"{name:>14} | {throughput:8.2f} | {memory:17.2f}")
print(f"speed-up: {rows[1][1] / rows[0][1]:.2f}x, memory {rows[1][2] / rows[0][2]:.2f}x")
grouped = measure(set_query_groups(ours, 11))  # 11 x 100 queries in training, group 0 evaluated
print("hf_detr Group DETR, K = 11 query groups against K = 1")
print(f"{'groups':>14} | images/s | peak memory (GiB)")
for name, (throughput, memory) in (("K = 1", rows[1][1:]), ("K = 11", grouped)):
    print(f"{name:>14} | {throughput:8.2f} | {memory:17.2f}")
print(f"K = 11 costs {rows[1][1] / grouped[0]:.2f}x the time per step, memory {grouped[1] / rows[1][2]:.2f}x")
PY
