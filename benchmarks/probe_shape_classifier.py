"""How hard is the built-in set for a backbone trained from scratch? A probe, not a DETR benchmark.

Trains a plain timm ResNet (the DETR backbone family, BatchNorm trainable, from scratch) to say which
of the three shape classes are present in an image (multi-label, binary cross-entropy), on the
built-in training split held in memory (no data-loading cost), for a fixed wall-clock budget, and
prints the validation accuracy against minutes next to the majority-class baseline of the same split.
If this probe stays at the baseline, a DETR with the same backbone cannot classify its detections in
that time either: its class head needs the same shape features.

    python benchmarks/probe_shape_classifier.py --minutes 2.5
    python benchmarks/probe_shape_classifier.py --minutes 2.5 --channels 16 32 64 128 --lr 2e-3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import PIL.Image
import timm
import torch

from hf_detr.data.builtin import CLASSES, builtin_dataset_folder

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def load_presence(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [M, 3, 128, 128] and presence targets [M, 3] of a built-in split."""
    root = builtin_dataset_folder()
    instances = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    index = {image["id"]: position for position, image in enumerate(instances["images"])}
    present = torch.zeros(len(index), len(CLASSES))
    for annotation in instances["annotations"]:
        present[index[annotation["image_id"]], annotation["category_id"] - 1] = 1
    images = [
        torch.from_numpy(np.array(PIL.Image.open(root / split / image["file_name"]).convert("RGB")))
        for image in instances["images"]
    ]
    return torch.stack(images).permute(0, 3, 1, 2), present


def normalized(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() - IMAGENET_MEAN) / IMAGENET_STD).contiguous(memory_format=torch.channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--channels", type=int, nargs=4, default=None, help="stage widths (timm `channels`)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=2.5)
    parser.add_argument("--eval-every", type=int, default=50)
    args = parser.parse_args()

    torch.manual_seed(0)
    train_images, train_present = load_presence("train")
    val_images, val_present = load_presence("val")
    majority = (train_present.mean(0) > 0.5).float()  # [3], the best constant answer on train
    baseline = (val_present == majority).float().mean().item()
    extra = {"channels": tuple(args.channels), "stem_width": args.channels[0]} if args.channels else {}
    model = timm.create_model(args.backbone, num_classes=len(CLASSES), **extra)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    print(f"{args.backbone} {extra or ''} AdamW lr {args.lr} batch {args.batch_size}, from scratch")
    print(f"majority-class baseline on val: {baseline:.3f}")
    print(f"{'step':>6} | {'minutes':>7} | {'train loss':>10} | val accuracy")
    start, step, train_minutes = time.perf_counter(), 0, 0.0
    while train_minutes < args.minutes:
        model.train()
        batch = torch.randint(0, len(train_images), (args.batch_size,))
        logits = model(normalized(train_images[batch]))  # [b, 3]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, train_present[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        train_minutes = (time.perf_counter() - start) / 60
        if step % args.eval_every == 0:
            evaluation_start = time.perf_counter()
            model.eval()
            with torch.no_grad():
                accuracy = ((model(normalized(val_images)) > 0).float() == val_present).float().mean().item()
            start += time.perf_counter() - evaluation_start  # minutes count training only
            print(f"{step:>6} | {train_minutes:>7.2f} | {loss.item():>10.3f} | {accuracy:.3f}", flush=True)


if __name__ == "__main__":
    main()
