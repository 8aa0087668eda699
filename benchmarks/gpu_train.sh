#!/usr/bin/env bash
# GPU training throughput: DETR-R50 at 800x1333, bf16 autocast, batch 4 per GPU, fused AdamW, hf_detr
# vs transformers (auxiliary loss on, same weights, same trainable parameters); images/s and peak
# memory. One table, well under 5 minutes on one GPU.
#     bash benchmarks/gpu_train.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")"
python - "${1:-20}" <<'PY'
import statistics
import sys
import time

import torch

from bench_train_step import Stepper, build, make_batch

steps = int(sys.argv[1])
device = torch.device("cuda")
reference, ours = build("resnet50")
_, _, labels = make_batch(4, 32)  # 7 objects per image
pixel_values = torch.randn(4, 3, 800, 1333)
pixel_mask = torch.ones(4, 800, 1333, dtype=torch.long)
batch = (pixel_values.to(device), pixel_mask.to(device), [{k: v.to(device) for k, v in t.items()} for t in labels])
rows = []
for name, model in (("transformers", reference), ("hf_detr", ours)):
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
    rows.append((name, 4 * steps / elapsed, torch.cuda.max_memory_allocated(device) / 2**30))
    model.to("cpu")
print(f"DETR-R50 training step, 4 x 800x1333, bf16, {torch.cuda.get_device_name(device)}, {steps} steps")
print(f"{'implementation':>14} | images/s | peak memory (GiB)")
for name, throughput, memory in rows:
    print(f"{name:>14} | {throughput:8.2f} | {memory:17.2f}")
print(f"speed-up: {rows[1][1] / rows[0][1]:.2f}x, memory {rows[1][2] / rows[0][2]:.2f}x")
PY
