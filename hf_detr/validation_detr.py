"""Every check of what a user hands the DETR model files, in one place: the config's fields, the model's
pixel inputs, the loss's labels, and the value checks the image processor's arguments share.

Each model file calls in once (`check_config`, `check_model_inputs`, `checked_label_tensors` and
`check_labels_on_host`); nothing is allocated before its check has passed. A bad value is an error
naming the field and showing the value.

Part of the self-contained "model files": it imports no other module of the package.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------------
def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def described(value: Any) -> str:
    """`value` as an error message shows it: its repr, and its type unless it is a plain number."""
    shown = short_repr(value)
    return shown if type(value) in (int, float) else f"{shown} ({type(value).__name__})"


def is_integer(value: Any) -> bool:
    """An int or numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_real(value: Any) -> bool:
    """A finite int, float or numpy number, not a bool (numpy's bool is no `numbers.Real`)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_int64(value: Any) -> bool:
    """An integer (not a bool) that fits in int64 (the bounds are folded to constants when compiled)."""
    return is_integer(value) and -(2**63) <= int(value) < 2**63


def limit_from_environment(variable: str, default: int, unit: str = "") -> int:
    """The environment variable `variable` when set (a whole number, 1 or more; `unit` says of what),
    else `default`."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    if not text.isdecimal() or int(text) < 1:
        raise ValueError(f"{variable} must be a whole number{unit}, 1 or more, got {text!r}.")
    return int(text)


def check_integer(name: str, value: Any, low: int, high: int) -> int:
    """`value` as an `int` if it is an integer (not a bool, float or string) in low..high, else `ValueError`."""
    if not is_integer(value) or not low <= value <= high:
        raise ValueError(f"`{name}` must be an integer in {low}..{high}, got {described(value)}.")
    return int(value)


def check_bool(name: str, value: Any, error: type[Exception] = ValueError) -> bool:
    """`value` if it is True or False (not 1, "yes" or "true"), else `error`."""
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"`{name}` must be true or false, got {described(value)}.")
    return bool(value)


def check_float(name: str, value: Any, high: float | None = None, positive: bool = False) -> float:
    """`value` as a float if it is a finite number (not a bool or str) >= 0 (> 0 when `positive`), and
    below `high` when given; else `ValueError`."""
    low_ok = is_finite_real(value) and (value > 0 if positive else value >= 0)
    if not (low_ok and (high is None or value < high)):
        kind = "a finite positive number" if positive else "a number >= 0 and finite"
        kind = f"a number in [0, {high:g})" if high is not None else kind
        raise ValueError(f"`{name}` must be {kind}, got {described(value)}.")
    return float(value)


def check_threshold(name: str, value: Any) -> float:
    """A threshold on scores, probabilities or area ratios: a number from 0 to 1 (1 keeps nothing)."""
    if not (is_finite_real(value) and 0 <= value <= 1):
        raise ValueError(
            f"`{name}` must be a number from 0 to 1 (scores are probabilities; 1 keeps nothing), got {value!r}."
        )
    return float(value)


def check_positive_integer(name: str, value: Any) -> int | None:
    """`value` as an int if it is a positive integer within int64, None if None; else `ValueError`."""
    if value is not None and not (is_int64(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive int or None, got {value!r}.")
    return None if value is None else int(value)


def check_id_list(name: str, ids: Any, below: int | None = None) -> list[int] | None:
    """`ids` as a list of `int` if it is None or a list of distinct integers >= 0 (and < `below`)."""
    if ids is None:
        return None
    if not (isinstance(ids, (list, tuple)) and all(is_integer(i) and i >= 0 for i in ids)):
        raise ValueError(f"`{name}` must be a list of integers >= 0 or null, got {described(ids)}.")
    if below is not None:
        outside = sorted(i for i in ids if i >= below)
        if outside or len(set(ids)) != len(ids):
            problem = f"ids outside 0..{below - 1}: {outside}" if outside else "repeated ids"
            raise ValueError(f"`{name}` has {problem}.")
    return [int(i) for i in ids]


# ----------------------------------------------------------------------------------------------------
# The config
# ----------------------------------------------------------------------------------------------------
POSITION_EMBEDDING_TYPES = ("sine", "learned")
ACTIVATIONS = ("relu", "gelu", "silu")
# Inclusive bounds of the integer fields. Every published DETR lies far inside them (the paper: 6+6
# layers, d_model 256, FFN 2048, 8 heads, 100 queries; later DETRs: up to 900 queries, Group DETR's 11
# groups, H-DETR's 6 repeats); they are there so that a typo or a corrupted config.json is a ValueError
# before the model allocates anything (a million encoder layers would otherwise build for minutes).
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "d_model": (1, 65536),
    "encoder_layers": (1, 64),
    "decoder_layers": (1, 64),
    "encoder_attention_heads": (1, 1024),
    "decoder_attention_heads": (1, 1024),
    "encoder_ffn_dim": (1, 65536),
    "decoder_ffn_dim": (1, 65536),
    "num_queries": (1, 10000),
    "num_query_groups": (1, 64),
    "num_channels": (1, 1024),
    "trainable_backbone_layers": (0, 5),
}
MAX_NUM_LABELS = 100_000  # LVIS has 1203 classes, V3Det 13204
# The sizes together may not give a transformer of more weights than this (16 GB in float32; DETR-R50's
# transformer has 17.8M): each size within its bound can still multiply to an absurd model.
MAX_TRANSFORMER_PARAMETERS = 4_000_000_000
BOOL_FIELDS = (
    "dilation",
    "use_pretrained_backbone",
    "freeze_backbone_batch_norm",
    "auxiliary_loss",
    "use_masks",
)
PROBABILITY_FIELDS = ("dropout", "attention_dropout", "activation_dropout")  # floats in [0, 1)
# matcher costs and loss weights: finite floats >= 0
WEIGHT_FIELDS = (
    "class_cost", "bbox_cost", "giou_cost", "class_loss_coefficient", "bbox_loss_coefficient",
    "giou_loss_coefficient", "eos_coefficient", "mask_loss_coefficient", "dice_loss_coefficient",
)  # fmt: skip
CHOICE_FIELDS = {"position_embedding_type": POSITION_EMBEDDING_TYPES, "activation_function": ACTIVATIONS}


def check_config(config: Any) -> None:
    """Raise `ValueError` naming the first field of an `HfDetrConfig` whose value cannot build a DETR:
    types and bounds first, then how fields fit together. Integer fields are normalised to `int`."""
    for name, (low, high) in SIZE_LIMITS.items():
        setattr(config, name, check_integer(name, getattr(config, name), low, high))
    for name in BOOL_FIELDS:
        check_bool(name, getattr(config, name))
    for name in PROBABILITY_FIELDS:
        check_float(name, getattr(config, name), high=1.0)
    for name in WEIGHT_FIELDS:
        check_float(name, getattr(config, name))
    for name, choices in CHOICE_FIELDS.items():
        if getattr(config, name) not in choices:
            raise ValueError(f"`{name}` must be one of {choices}, got {getattr(config, name)!r}.")
    check_integer("num_labels", config.num_labels, 1, MAX_NUM_LABELS)
    check_transformer_size(config)
    for name in ("encoder_attention_heads", "decoder_attention_heads"):
        if config.d_model % getattr(config, name):
            raise ValueError(
                f"`d_model` ({config.d_model}) must be divisible by `{name}` ({getattr(config, name)})."
            )
    if config.d_model % 2:
        raise ValueError(f"`d_model` must be even (half of it encodes y, half x), got {config.d_model}.")
    if config.use_masks and config.num_query_groups != 1:
        raise ValueError(
            f"`use_masks` (the segmentation model) supports `num_query_groups` = 1 only, got "
            f"{config.num_query_groups}."
        )
    if config.use_masks and config.d_model % 16:
        raise ValueError(
            f"With `use_masks`, `d_model` must be a multiple of 16 (the mask head narrows it to d/2, d/4, "
            f"d/8 and d/16 channels), got {config.d_model}."
        )
    config.coco_category_ids = check_id_list("coco_category_ids", config.coco_category_ids)
    if config.coco_category_ids is not None and len(config.coco_category_ids) != config.num_labels:
        raise ValueError(
            f"`coco_category_ids` must have one entry per label ({config.num_labels}), "
            f"got {len(config.coco_category_ids)}."
        )
    config.stuff_label_ids = check_id_list("stuff_label_ids", config.stuff_label_ids, below=config.num_labels)
    check_backbone_name(config.backbone)


def check_label_arguments(id2label: Any, label2id: Any, num_labels: Any) -> None:
    """Before transformers builds the labels: `num_labels` a bounded integer, `id2label` a dict of ids
    (integers >= 0 or their strings, as JSON keys are) to names, `label2id` a dict."""
    if num_labels is not None:
        check_integer("num_labels", num_labels, 1, MAX_NUM_LABELS)
    if id2label is not None:

        def is_label_id(key: Any) -> bool:
            return key.isdecimal() if isinstance(key, str) else is_integer(key) and key >= 0

        if not (
            isinstance(id2label, dict)
            and all(is_label_id(k) and isinstance(v, str) for k, v in id2label.items())
        ):
            raise ValueError(
                f"`id2label` must map label ids (0, 1, ...) to names (strings), got {described(id2label)}."
            )
        if not 1 <= len(id2label) <= MAX_NUM_LABELS:
            raise ValueError(f"`id2label` must name 1..{MAX_NUM_LABELS} labels, got {len(id2label)}.")
    if label2id is not None and not isinstance(label2id, dict):
        raise ValueError(f"`label2id` must map label names to ids, got {described(label2id)}.")


def transformer_parameters(config: Any) -> int:
    """About how many weights the transformer and heads have (the leading terms): attention 4d^2 per
    attention, FFN 2*d*ffn, queries and the class head."""
    d = config.d_model
    encoder = config.encoder_layers * (4 * d * d + 2 * d * config.encoder_ffn_dim)
    decoder = config.decoder_layers * (8 * d * d + 2 * d * config.decoder_ffn_dim)
    queries = config.num_queries * config.num_query_groups * d
    return encoder + decoder + queries + d * (config.num_labels + 1) + 2 * d * d


def check_transformer_size(config: Any) -> None:
    count = transformer_parameters(config)
    if count > MAX_TRANSFORMER_PARAMETERS:
        sizes = ", ".join(
            f"`{name}`={getattr(config, name)}"
            for name in ("d_model", "encoder_layers", "decoder_layers", "encoder_ffn_dim", "decoder_ffn_dim")
        )
        raise ValueError(
            f"{sizes} give a transformer of about {count / 1e9:.1f}B weights, more than the "
            f"{MAX_TRANSFORMER_PARAMETERS / 1e9:g}B an HfDetrConfig allows (DETR-R50's has 0.018B)."
        )


def check_backbone_name(backbone: Any) -> None:
    """`backbone` must name a ResNet of timm's registry, optionally with a pretrained tag timm knows
    (`resnet50.a1_in1k`). The backbone is always built from that registry, so no value is ever read as
    a path, a Hub id or a file (an existing file or folder named like a timm model changes nothing)."""
    import timm

    architecture, _, tag = backbone.partition(".") if isinstance(backbone, str) else ("", "", "")
    if architecture not in timm.list_models(module="resnet"):
        raise ValueError(
            f"`backbone` must be the name of a timm ResNet such as 'resnet50' or 'resnet101', optionally with "
            f"a pretrained tag ('resnet50.a1_in1k'), not a path, got {described(backbone)}. The backbone is "
            "built from timm's registry; its weights travel in the checkpoint (model.safetensors)."
        )
    if tag:
        names = timm.list_models(architecture + ".*", include_tags=True)  # each tag timm has a config for
        if backbone not in names:
            shown = ", ".join(names[:6]) or "none"
            more = f" and {len(names) - 6} more" if len(names) > 6 else ""
            raise ValueError(
                f"`backbone` {backbone!r} has a pretrained tag timm does not know for {architecture!r}; "
                f"known: {shown}{more}."
            )


# ----------------------------------------------------------------------------------------------------
# The model's inputs
# ----------------------------------------------------------------------------------------------------
# normalized pixels are a few units; beyond this, activations (and trainable BatchNorm statistics)
# head for overflow, so such inputs are an error rather than a model full of inf or NaN
PIXEL_VALUE_LIMIT = 1e4
# The most encoder tokens (feature-map cells) one image may give: 16384, a 128x128 map, from a 4096x4096
# image at stride 32 (2048x2048 at DC5's stride 16). The paper's largest setting, DC5 at 800x1333, gives
# 4200. Attention grows with the square of the count: an 8000x8000 image (62500 tokens) computes for
# minutes. Raise it with the environment variable HF_DETR_MAX_ENCODER_TOKENS=<tokens>, or in code by
# setting this module's `MAX_ENCODER_TOKENS` (read at each forward).
MAX_ENCODER_TOKENS = 16384
MAX_ENCODER_TOKENS_ENV = "HF_DETR_MAX_ENCODER_TOKENS"


def check_model_inputs(
    pixel_values: torch.Tensor,
    pixel_mask: torch.Tensor | None,
    num_channels: int,
    backbone: nn.Module,
    stride: int,
    flags: Mapping[str, Any],
) -> None:
    """Check the model's inputs before the backbone sees them (so that no input leaves NaN in the model).

    The forward's switches (`flags`) are booleans; shapes, types and devices always; then what the
    backbone (of output `stride`) can take: at most `MAX_ENCODER_TOKENS` (or HF_DETR_MAX_ENCODER_TOKENS)
    feature-map cells per image, a training-mode batch of one image whose feature map is 1x1 under
    trainable BatchNorm, finite pixel values within +-PIXEL_VALUE_LIMIT, and a mask with real pixels in
    every image and in its feature map. The values are read in one device-to-host copy (none on the
    CPU); skipped while torch.compile or torch.export trace."""
    for name, value in flags.items():  # a string such as "False" would read as True
        check_bool(name, value, error=TypeError)
    _check_input_types(pixel_values, pixel_mask, num_channels)
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return
    height, width = pixel_values.shape[-2:]
    feature_size = (-(-height // stride), -(-width // stride))  # a timm ResNet's map: ceil(side / stride)
    tokens = feature_size[0] * feature_size[1]
    limit = limit_from_environment(MAX_ENCODER_TOKENS_ENV, MAX_ENCODER_TOKENS)
    if tokens > limit:
        raise ValueError(
            f"`pixel_values` of {height}x{width} pixels give {tokens} encoder tokens (a {feature_size[0]}x"
            f"{feature_size[1]} feature map at stride {stride}), beyond the limit of {limit} "
            f"({MAX_ENCODER_TOKENS_ENV}): resize the images (HfDetrImageProcessor's default size keeps them "
            f"within 800x1333 pixels), or raise the limit with {MAX_ENCODER_TOKENS_ENV}=<tokens>."
        )
    _check_batch_norm_batch(pixel_values.shape[0], (height, width), feature_size, stride, backbone)
    _check_input_values(pixel_values, pixel_mask, feature_size, stride)


def _check_input_types(
    pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, num_channels: int
) -> None:
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
        raise ValueError(
            f"`pixel_values` must be a tensor of shape [batch, channels, height, width] (or a list of "
            f"[channels, height, width] tensors, one per image), got {shape}."
        )
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"`pixel_values` has {pixel_values.shape[1]} channels but the model expects "
            f"config.num_channels={num_channels}."
        )
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"`pixel_values` must be a floating tensor (normalized pixels), got {pixel_values.dtype}; "
            "use HfDetrImageProcessor to prepare images."
        )
    if 0 in pixel_values.shape:
        raise ValueError(f"`pixel_values` is empty: shape {list(pixel_values.shape)}.")
    if pixel_mask is None:
        return
    if not isinstance(pixel_mask, torch.Tensor):
        raise TypeError(
            f"`pixel_mask` must be a torch tensor [batch, height, width] (1 = real pixel), got "
            f"{type(pixel_mask).__name__}; convert it with torch.as_tensor."
        )
    expected = (pixel_values.shape[0], *pixel_values.shape[2:])
    if tuple(pixel_mask.shape) != expected:
        raise ValueError(
            f"`pixel_mask` must have shape [batch, height, width] = {list(expected)}, got {list(pixel_mask.shape)}."
        )
    if pixel_mask.is_complex():
        raise ValueError(
            f"`pixel_mask` must be a bool or integer tensor (1 = real pixel), got {pixel_mask.dtype}."
        )
    if pixel_mask.device != pixel_values.device:
        raise ValueError(
            f"`pixel_mask` is on {pixel_mask.device} but `pixel_values` on {pixel_values.device}: put both on "
            "one device."
        )


def _check_batch_norm_batch(
    batch_size: int, size: tuple[int, int], feature_size: tuple[int, int], stride: int, backbone: nn.Module
) -> None:
    """Trainable BatchNorm in training mode needs more than one value per channel in every map: a batch
    of one image whose stride-`stride` map is 1x1 cannot be normalized (torch fails half-way, after the
    earlier layers updated their statistics)."""
    if batch_size * feature_size[0] * feature_size[1] > 1:
        return
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in backbone.modules()):
        raise ValueError(
            f"A training-mode batch of one {size[0]}x{size[1]} image gives a 1x1 feature map (stride {stride}), "
            "which the backbone's trainable BatchNorm cannot normalize: train with 2 or more images per batch, "
            f"images larger than {stride} pixels on one side (at least {stride + 1}), or "
            "freeze_backbone_batch_norm=True."
        )


def _check_input_values(
    pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, feature_size: tuple[int, int], stride: int
) -> None:
    pixels = pixel_values.detach()
    # [B], NaN where any pixel is; two reductions cost less than abs() copying every pixel first
    magnitude = torch.maximum(pixels.amax(dim=(1, 2, 3)), -pixels.amin(dim=(1, 2, 3))).float()
    columns = [magnitude]
    if pixel_mask is not None:
        mask = pixel_mask.detach() != 0
        # the feature mask as the backbone makes it: nearest-neighbour downsampling
        feature_mask = F.interpolate(mask[:, None].float(), size=feature_size)[:, 0]
        columns += [mask.flatten(1).any(1).float(), feature_mask.flatten(1).amax(1)]
    values = torch.stack(columns, 1).tolist()  # the one device-to-host copy of the check
    for index, row in enumerate(values):
        if not math.isfinite(row[0]):
            raise ValueError(f"`pixel_values` of image {index} contains NaN or inf.")
        if row[0] > PIXEL_VALUE_LIMIT:
            raise ValueError(
                f"`pixel_values` of image {index} reach {row[0]:.3g}, beyond +-{PIXEL_VALUE_LIMIT:g}: the model "
                "takes normalized pixels (about -3..3); prepare images with HfDetrImageProcessor."
            )
        if len(row) > 1 and not row[1]:
            raise ValueError(f"`pixel_mask` of image {index} has no real pixel (it is all padding).")
        if len(row) > 1 and not row[2]:
            raise ValueError(
                f"`pixel_mask` of image {index} has real pixels only where the stride-{stride} feature map "
                "samples none (the top-left pixel of each cell): pad images bottom-right, as "
                "HfDetrImageProcessor does."
            )


# ----------------------------------------------------------------------------------------------------
# The loss's labels
# ----------------------------------------------------------------------------------------------------
BOX_TOLERANCE = 1e-3  # rounding of normalized coordinates: 1.0000001 is still inside the image


def _label_tensor(value: object, index: int, field: str, holding: str, bool_ok: bool = False) -> torch.Tensor:
    """A label field as a tensor of real numbers (not complex; not bool unless `bool_ok`), or a ValueError
    naming it."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(np.asarray(value) if isinstance(value, (list, tuple)) else value)
        except (TypeError, ValueError, RuntimeError, OverflowError) as error:
            raise ValueError(
                f"labels[{index}]['{field}'] must be a tensor or a list of numbers, got "
                f"{type(value).__name__} ({error})."
            ) from error
    if value.is_complex() or (value.dtype == torch.bool and not bool_ok):
        raise ValueError(f"labels[{index}]['{field}'] must hold {holding}, got {value.dtype}.")
    return value


def checked_label_tensors(
    labels: Any, batch_size: int, num_queries: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each image's (`class_labels` [n], `boxes` [n, 4]) as tensors, their structure checked (host-side
    metadata only, so that nothing waits on the device; the values are `check_labels_on_host`'s)."""
    if not isinstance(labels, Sequence) or isinstance(labels, (str, bytes)) or len(labels) != batch_size:
        count = len(labels) if isinstance(labels, Sequence) else type(labels).__name__
        raise ValueError(f"`labels` must be a list with one dict per image ({batch_size}), got {count}.")
    checked = []
    for index, target in enumerate(labels):
        if not isinstance(target, Mapping) or "class_labels" not in target or "boxes" not in target:
            raise ValueError(f"labels[{index}] must be a dict with 'class_labels' and 'boxes'.")
        ids = _label_tensor(target["class_labels"], index, "class_labels", "integer class ids")
        boxes = _label_tensor(target["boxes"], index, "boxes", "real numbers")
        if ids.ndim != 1:
            raise ValueError(f"labels[{index}]['class_labels'] must be 1-D, got shape {list(ids.shape)}.")
        if boxes.ndim == 1 and boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or boxes.shape[0] != ids.shape[0]:
            raise ValueError(
                f"labels[{index}]['boxes'] must have shape [{ids.shape[0]}, 4] (one normalized cx, cy, w, h "
                f"box per class label), got {list(boxes.shape)}."
            )
        if ids.shape[0] > num_queries:
            raise ValueError(
                f"labels[{index}] has {ids.shape[0]} objects but the model has only {num_queries} queries "
                "(config.num_queries): DETR predicts at most one object per query."
            )
        checked.append((ids, boxes))
    return checked


def check_labels_on_host(raw_ids: np.ndarray, boxes: np.ndarray, counts: list[int], num_labels: int) -> None:
    """Class ids must be integers in [0, num_labels); boxes finite normalized (cx, cy, w, h) in [0, 1]
    (boxes in pixels are the usual mistake: reported here, not as a diverged training)."""
    for image, count in enumerate(counts):
        ids = raw_ids[image, :count]
        bad = ids[(ids != np.round(ids)) | (ids < 0) | (ids >= num_labels)]
        if bad.size:
            raise ValueError(
                f"labels[{image}]['class_labels'] contains class id {bad[0]:g}, but the model has "
                f"num_labels={num_labels} (valid ids are the integers 0..{num_labels - 1})."
            )
        image_boxes = boxes[image, :count]
        if not np.isfinite(image_boxes).all():
            raise ValueError(f"labels[{image}]['boxes'] contains NaN or inf.")
        if (image_boxes[:, 2:] < 0).any():
            raise ValueError(
                f"labels[{image}]['boxes'] has a negative width or height; boxes must be normalized (cx, cy, w, h)."
            )
        outside = ((image_boxes < -BOX_TOLERANCE) | (image_boxes > 1 + BOX_TOLERANCE)).any(1)
        if outside.any():
            number = int(np.flatnonzero(outside)[0])
            raise ValueError(
                f"labels[{image}]['boxes'][{number}] = {image_boxes[number].tolist()} is not a normalized "
                "(cx, cy, w, h) box: every value must lie in [0, 1] (divide pixel boxes by the image's width "
                "and height, as HfDetrImageProcessor does)."
            )


def check_pred_masks(pred_masks: Any, logits: torch.Tensor) -> None:
    """A segmentation model's `pred_masks`: [B, N, h, w] for logits [L, B, N, K+1]."""
    expected = logits.shape[1:3]  # B, N
    if not isinstance(pred_masks, torch.Tensor) or pred_masks.ndim != 4 or pred_masks.shape[:2] != expected:
        shape = list(pred_masks.shape) if isinstance(pred_masks, torch.Tensor) else type(pred_masks).__name__
        raise ValueError(
            f"`pred_masks` must have shape [batch, queries, height, width] = [{expected[0]}, {expected[1]}, h, w], "
            f"got {shape}."
        )


def checked_mask_labels(labels: Any, counts: list[int]) -> list[torch.Tensor]:
    """Each image's `masks` [n, H, W] (one per class label), their shapes checked; images without
    objects are left out."""
    masks = []
    for index, (target, count) in enumerate(zip(labels, counts)):
        if "masks" not in target:
            raise ValueError(
                f"labels[{index}] has no 'masks': a segmentation model needs one [n, H, W] mask per object."
            )
        mask = _label_tensor(target["masks"], index, "masks", "real or bool values", bool_ok=True)
        if mask.ndim != 3 or mask.shape[0] != count:
            if count == 0 and mask.numel() == 0:
                continue
            raise ValueError(
                f"labels[{index}]['masks'] must be a tensor of shape [{count}, height, width] (one mask per "
                f"class label), got shape {list(mask.shape)}."
            )
        masks.append(mask)
    return masks


__all__ = [
    "check_config",
    "check_labels_on_host",
    "check_model_inputs",
    "check_pred_masks",
    "checked_label_tensors",
    "checked_mask_labels",
]
