"""Helpers shared by the tests: tiny configs, randomised reference models, padded batches."""

from __future__ import annotations

import math

import torch
from torch import nn

# The model files `save_pretrained` copies next to the weights of a code-carrying checkpoint (the
# processor's module and, through its relative imports, its annotation and post-processing modules)
MODEL_FILES = (
    "configuration_detr.py",
    "modeling_detr.py",
    "loss_detr.py",
    "image_processing_detr.py",
    "image_processing_detr_annotations.py",
    "image_processing_detr_images.py",
    "image_processing_detr_postprocessing.py",
    "validation_detr.py",
)

TINY_TRANSFORMER = dict(
    d_model=64,
    encoder_layers=2,
    decoder_layers=3,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=96,
    decoder_ffn_dim=96,
    num_queries=12,
)


def tiny_hf_detr_config(**overrides):
    from hf_detr import HfDetrConfig

    kwargs = dict(backbone="resnet18", num_labels=5, **TINY_TRANSFORMER)
    kwargs.update(overrides)
    return HfDetrConfig(**kwargs)


@torch.no_grad()
def randomize_for_parity(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every weight, bias, norm and BatchNorm statistic a non-trivial random value, so that a
    wrong key mapping (swapped q/k, a missed bias, an ignored BN buffer) changes the outputs."""
    generator = torch.Generator().manual_seed(seed)

    def fill(tensor: torch.Tensor, mean: float, std: float) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std + mean)

    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
        elif leaf == "running_mean":
            fill(tensor, 0.0, 0.1)
        elif tensor.ndim == 1 and leaf == "weight":  # norm scales
            fill(tensor, 1.0, 0.2)
        elif tensor.ndim == 1:  # biases
            fill(tensor, 0.0, 0.1)
        elif "position" in name:  # query / learned position embeddings
            fill(tensor, 0.0, 1.0)
        elif tensor.ndim == 2:
            fan_in = tensor.shape[1]
            fill(tensor, 0.0, (1.0 / fan_in) ** 0.5)
    return model


def padded_batch(sizes: list[tuple[int, int]], channels: int = 3, seed: int = 0):
    """Random images of different sizes padded bottom-right into one batch, with `pixel_mask`."""
    generator = torch.Generator().manual_seed(seed)
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    pixel_values = torch.zeros(len(sizes), channels, height, width)
    pixel_mask = torch.zeros(len(sizes), height, width, dtype=torch.long)
    for index, (h, w) in enumerate(sizes):
        pixel_values[index, :, :h, :w] = torch.randn(channels, h, w, generator=generator)
        pixel_mask[index, :h, :w] = 1
    return pixel_values, pixel_mask


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# the known prediction: class 2 ("bed") with logit 8 against 0 for the rest, box (cx, cy, w, h)
KNOWN_CLASS, KNOWN_LOGIT = 2, 8.0
KNOWN_BOX = torch.tensor([0.5, 0.4, 0.5, 0.6])
LABELS = {0: "cat", 1: "remote", 2: "bed", 3: "couch"}


def known_prediction_model():
    """One query whose heads ignore their input: it always predicts KNOWN_CLASS at KNOWN_BOX."""
    from hf_detr import HfDetrForObjectDetection

    config = tiny_hf_detr_config(
        num_queries=1, num_labels=4, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    model = HfDetrForObjectDetection(config).eval()
    with torch.no_grad():
        model.class_labels_classifier.weight.zero_()
        model.class_labels_classifier.bias.zero_()
        model.class_labels_classifier.bias[KNOWN_CLASS] = KNOWN_LOGIT
        model.bbox_predictor.layers[2].weight.zero_()
        model.bbox_predictor.layers[2].bias.copy_(torch.logit(KNOWN_BOX))
    return model


def known_score() -> float:
    return math.exp(KNOWN_LOGIT) / (math.exp(KNOWN_LOGIT) + 4)  # 4 other logits (3 classes + no-object) at 0


def hub_detection_features(names: list[str]):
    """The features of a Hub detection dataset in the cppe-5 layout: `image`, its size, and `objects`
    with COCO (x, y, w, h) boxes and a 0-based ClassLabel `category`."""
    from datasets import ClassLabel, Features, Image, List, Value

    return Features({
        "image_id": Value("int64"), "image": Image(), "width": Value("int32"), "height": Value("int32"),
        "objects": {"id": List(Value("int64")), "area": List(Value("float32")),
                    "bbox": List(List(Value("float32"), length=4)), "category": List(ClassLabel(names=names))},
    })  # fmt: skip


def matches_per_image(matches, layer: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The official matcher's format for one layer of `Matches`: per image (query indices, target
    indices), sorted by query."""
    selected = matches.layer == layer
    result = []
    for image in range(batch_size):
        keep = selected & (matches.image == image)
        result.append((matches.query[keep].cpu(), matches.target[keep].cpu()))
    return result
