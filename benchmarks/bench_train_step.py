"""Training-step speed: hf_detr vs transformers' DetrForObjectDetection (auxiliary loss on), same weights.

One step = forward, loss (Hungarian matching at every decoder layer), backward, AdamW update, on the
same batch. Small config: ResNet-18 backbone, the paper's transformer (d 256, 6+6 layers, 8 heads,
FFN 2048, 100 queries), 91 classes, batch 2 of 384x384 images with 7 objects each, fp32, CPU. The same
parameters train in both (transformers v5 would also train the stem and layer1: they are frozen in
both here, as the paper).

    python benchmarks/bench_train_step.py [--steps 12] [--batch-size 2] [--size 384]

`--transformer builtin` uses the built-in preset's transformer instead (d 128, 2+2 layers, 4 heads,
FFN 512, 10 queries, 3 classes; run it with `--batch-size 16 --size 128` for the main job's step, with
frozen BatchNorm in both because transformers' DETR always freezes it). `--split` also times each
backbone's forward and backward pass alone, to show where the step's time goes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import DetrConfig, DetrForObjectDetection

from hf_detr.convert import convert_checkpoint

# DetrConfig arguments of the two transformer shapes
TRANSFORMERS = {
    "paper": {"num_labels": 91},
    "builtin": {
        "num_labels": 3,
        "d_model": 128,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 512,
        "decoder_ffn_dim": 512,
        "num_queries": 10,
    },
}


def make_batch(batch_size: int, size: int, objects: int = 7, num_labels: int = 91, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
    pixel_mask = torch.ones(batch_size, size, size, dtype=torch.long)
    labels = []
    for _ in range(batch_size):
        centers = torch.rand(objects, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(objects, 2, generator=generator) * 0.3 + 0.05
        labels.append(
            {
                "class_labels": torch.randint(0, num_labels, (objects,), generator=generator),
                "boxes": torch.cat([centers, sizes], -1),
            }
        )
    return pixel_values, pixel_mask, labels


def build(backbone: str, transformer: str = "paper"):
    torch.manual_seed(0)
    config = DetrConfig(backbone=backbone, auxiliary_loss=True, dropout=0.1, **TRANSFORMERS[transformer])
    reference = DetrForObjectDetection(config)
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(f"{tmp}/t")
        ours = convert_checkpoint("transformers", f"{tmp}/t", f"{tmp}/o")
    ours.config.auxiliary_loss = True
    for name, parameter in reference.named_parameters():  # freeze stem and layer1 as the paper (and hf_detr)
        if name.startswith("model.backbone.") and not any(f"layer{i}" in name for i in (2, 3, 4)):
            parameter.requires_grad_(False)
    trainable = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert trainable(reference) == trainable(ours), (trainable(reference), trainable(ours))
    return reference.train(), ours.train()


class Stepper:
    """One training step of a model, timed."""

    def __init__(self, model, batch) -> None:
        self.model = model
        self.batch = batch
        # fused AdamW: transformers' Trainer default (torch >= 2.8) and hf-detr-train's
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=1e-4, fused=True)
        self.times: list[float] = []

    def step(self, record: bool = True) -> None:
        pixel_values, pixel_mask, labels = self.batch
        start = time.perf_counter()
        loss = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels).loss
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.1)
        self.optimizer.step()
        if record:
            self.times.append(time.perf_counter() - start)


class BackboneStepper(Stepper):
    """The backbone's forward and backward pass alone (no update), for `--split`."""

    def __init__(self, model, batch, transformers: bool) -> None:
        self.model, self.batch, self.transformers, self.times = model, batch, transformers, []
        self.grad = None  # a fixed random upstream gradient for the last feature map

    def step(self, record: bool = True) -> None:
        pixel_values, pixel_mask, _ = self.batch
        start = time.perf_counter()
        out = self.model.model.backbone(pixel_values, pixel_mask)
        features = out[-1][0] if self.transformers else out[0]  # [B, C, h, w]
        if self.grad is None:
            self.grad = torch.randn(features.shape, generator=torch.Generator().manual_seed(0))
        features.backward(self.grad)
        self.model.zero_grad()
        if record:
            self.times.append(time.perf_counter() - start)


def interleaved_medians(steppers: list[Stepper], steps: int) -> list[float]:
    """Alternate the models step by step, so slow phases of a shared machine hit both alike."""
    for stepper in steppers:  # two warm-up steps each
        stepper.step(record=False)
        stepper.step(record=False)
    for _ in range(steps):
        for stepper in steppers:
            stepper.step()
    return [statistics.median(s.times) for s in steppers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--transformer", choices=sorted(TRANSFORMERS), default="paper")
    parser.add_argument("--objects", type=int, default=7, help="objects per image")
    parser.add_argument(
        "--split", action="store_true", help="also time each backbone's forward+backward alone (interleaved)"
    )
    args = parser.parse_args()
    reference, ours = build(args.backbone, args.transformer)
    batch = make_batch(args.batch_size, args.size, args.objects, TRANSFORMERS[args.transformer]["num_labels"])
    steppers = [Stepper(reference, batch), Stepper(ours, batch)]
    if args.split:
        steppers += [
            BackboneStepper(reference, batch, transformers=True),
            BackboneStepper(ours, batch, False),
        ]
    t_ref, t_ours, *t_backbones = interleaved_medians(steppers, args.steps)
    print(
        f"training step (forward, loss, backward, fused AdamW), {args.backbone} + {args.transformer} transformer, "
        f"batch {args.batch_size} x "
        f"{args.size}px, fp32, {torch.get_num_threads()} threads, median of {args.steps} interleaved steps"
    )
    print(f"{'implementation':>14} | s/step | images/s")
    print(f"{'transformers':>14} | {t_ref:6.3f} | {args.batch_size / t_ref:8.2f}")
    print(f"{'hf_detr':>14} | {t_ours:6.3f} | {args.batch_size / t_ours:8.2f}")
    print(f"speed-up: {t_ref / t_ours:.2f}x")
    if args.split:
        b_ref, b_ours = t_backbones
        print("backbone forward+backward alone (s) | the rest of the step (s, difference of medians)")
        print(f"{'transformers':>14} | {b_ref:6.3f} | {t_ref - b_ref:6.3f}")
        print(f"{'hf_detr':>14} | {b_ours:6.3f} | {t_ours - b_ours:6.3f}")


if __name__ == "__main__":
    main()
