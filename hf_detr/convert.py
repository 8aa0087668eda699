"""Convert official (facebookresearch/detr) and `transformers` DETR checkpoints to hf_detr.

Detection checkpoints become `HfDetrForObjectDetection`; panoptic ones (the official `DETRsegm`
releases, keys `detr.*`, `bbox_attention.*`, `mask_head.*`, and transformers' `DetrForSegmentation`)
become `HfDetrForSegmentation`. Both converters rename keys by explicit rules and refuse to guess: a key that no rule maps, or a
weight our model lacks or shapes differently, is an error that lists the offending names.
Weights are read without unpickling arbitrary objects: safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .coco_panoptic_categories import COCO_PANOPTIC_NUM_LABELS, coco_panoptic_label_fields
from .commands import add_traceback_argument
from .configuration_detr import COCO_DETECTION_LABELS, HfDetrConfig
from .image_processing_detr import HfDetrImageProcessor
from .modeling_detr import HfDetrForObjectDetection
from .modeling_detr_segmentation import HfDetrForSegmentation

StateDict = dict[str, torch.Tensor]
# (pattern, replacement) pairs applied with re.fullmatch, the first match wins; a replacement is a
# template for `Match.expand` or a function of the match
RenameRules = list[tuple[str, str | Callable[[re.Match], str]]]

_BACKBONE = "model.backbone.body."
_LAYER_NORMS_OFFICIAL_ENCODER = {"norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"}
_LAYER_NORMS_OFFICIAL_DECODER = {
    "norm1": "self_attn_layer_norm",
    "norm2": "encoder_attn_layer_norm",
    "norm3": "final_layer_norm",
}

ORIGINAL_RULES: RenameRules = [
    (r"backbone\.0\.body\.(.+)", _BACKBONE + r"\1"),
    (r"backbone\.1\.row_embed\.weight", "model.position_embedding.row_embeddings.weight"),
    (r"backbone\.1\.col_embed\.weight", "model.position_embedding.column_embeddings.weight"),
    (r"input_proj\.(weight|bias)", r"model.input_projection.\1"),
    (r"query_embed\.weight", "model.query_position_embeddings.weight"),
    # q/k/v come from split_fused_attention, out_proj is stored as is
    (r"transformer\.(encoder|decoder)\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)",
     r"model.\1.layers.\2.self_attn.\3_proj.\4"),
    (r"transformer\.decoder\.layers\.(\d+)\.multihead_attn\.(q|k|v|out)_proj\.(weight|bias)",
     r"model.decoder.layers.\1.encoder_attn.\2_proj.\3"),
    (r"transformer\.(encoder|decoder)\.layers\.(\d+)\.linear(1|2)\.(weight|bias)",
     r"model.\1.layers.\2.mlp.fc\3.\4"),
    (r"transformer\.encoder\.layers\.(\d+)\.(norm1|norm2)\.(weight|bias)",
     lambda m: f"model.encoder.layers.{m[1]}.{_LAYER_NORMS_OFFICIAL_ENCODER[m[2]]}.{m[3]}"),
    (r"transformer\.decoder\.layers\.(\d+)\.(norm1|norm2|norm3)\.(weight|bias)",
     lambda m: f"model.decoder.layers.{m[1]}.{_LAYER_NORMS_OFFICIAL_DECODER[m[2]]}.{m[3]}"),
    (r"transformer\.decoder\.norm\.(weight|bias)", r"model.decoder.layernorm.\1"),
    (r"class_embed\.(weight|bias)", r"class_labels_classifier.\1"),
    (r"bbox_embed\.layers\.(\d+)\.(weight|bias)", r"bbox_predictor.layers.\1.\2"),
]  # fmt: skip
# nn.MultiheadAttention's fused projection: rows [0:d] = q, [d:2d] = k, [2d:3d] = v
ORIGINAL_FUSED_ATTENTION = re.compile(
    r"(transformer\.(?:encoder|decoder)\.layers\.\d+\.(?:self_attn|multihead_attn))\.in_proj_(weight|bias)"
)

# transformers' on-disk names (v4 and v5 write the same); v5's in-memory names (o_proj, mlp.fc1) too
TRANSFORMERS_RULES: RenameRules = [
    (r"model\.backbone\.(?:conv_encoder\.)?model\.(.+)", _BACKBONE + r"\1"),
    (r"model\.(?:backbone\.)?position_embedding\.(row|column)_embeddings\.weight",
     r"model.position_embedding.\1_embeddings.weight"),
    (r"model\.input_projection\.(weight|bias)", r"model.input_projection.\1"),
    (r"model\.query_position_embeddings\.weight", "model.query_position_embeddings.weight"),
    (r"model\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)\.(q|k|v)_proj\.(weight|bias)",
     r"model.\1.layers.\2.\3.\4_proj.\5"),
    (r"model\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)\.(?:out|o)_proj\.(weight|bias)",
     r"model.\1.layers.\2.\3.out_proj.\4"),
    (r"model\.(encoder|decoder)\.layers\.(\d+)\.(?:mlp\.)?(fc1|fc2)\.(weight|bias)",
     r"model.\1.layers.\2.mlp.\3.\4"),
    (r"model\.(encoder|decoder)\.layers\.(\d+)\.(self_attn_layer_norm|encoder_attn_layer_norm|final_layer_norm)"
     r"\.(weight|bias)", r"model.\1.layers.\2.\3.\4"),
    (r"model\.decoder\.layernorm\.(weight|bias)", r"model.decoder.layernorm.\1"),
    (r"class_labels_classifier\.(weight|bias)", r"class_labels_classifier.\1"),
    (r"bbox_predictor\.layers\.(\d+)\.(weight|bias)", r"bbox_predictor.layers.\1.\2"),
]  # fmt: skip

# transformers' own ResNet (use_timm_backbone=False) -> torchvision/timm names: its stage s is
# torchvision's layer s+1 and its conv i in a block is conv i+1
HF_RESNET_RULES: RenameRules = [
    (r"embedder\.embedder\.convolution\.weight", "conv1.weight"),
    (r"embedder\.embedder\.normalization\.(.+)", r"bn1.\1"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.weight"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.(.+)",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.{m[3]}"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.weight",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.weight"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.(.+)",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.{m[4]}"),
]  # fmt: skip

PANOPTIC_MARKERS = ("bbox_attention.", "mask_head.")
DETECTOR_PREFIX = "detr."  # the detector's weights inside a segmentation checkpoint

# the segmentation heads: the official names (also transformers' on-disk names) are ours; transformers
# v5's in-memory names too
SEGMENTATION_HEAD_RULES: RenameRules = [
    (r"bbox_attention\.(q|k)_(?:linear|proj)\.(weight|bias)", r"bbox_attention.\1_linear.\2"),
    (r"mask_head\.(lay[1-5]|gn[1-5]|out_lay|adapter[1-3])\.(weight|bias)", r"mask_head.\1.\2"),
    (r"mask_head\.conv([12])\.conv\.(weight|bias)", r"mask_head.lay\1.\2"),
    (r"mask_head\.conv([12])\.norm\.(weight|bias)", r"mask_head.gn\1.\2"),
    (r"mask_head\.fpn_stages\.([0-2])\.fpn_adapter\.(weight|bias)",
     lambda m: f"mask_head.adapter{int(m[1]) + 1}.{m[2]}"),
    (r"mask_head\.fpn_stages\.([0-2])\.refine\.conv\.(weight|bias)",
     lambda m: f"mask_head.lay{int(m[1]) + 3}.{m[2]}"),
    (r"mask_head\.fpn_stages\.([0-2])\.refine\.norm\.(weight|bias)",
     lambda m: f"mask_head.gn{int(m[1]) + 3}.{m[2]}"),
    (r"mask_head\.output_conv\.(weight|bias)", r"mask_head.out_lay.\1"),
]  # fmt: skip


class CheckpointConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the keys or fields at fault."""


def rename_keys(state_dict: Mapping[str, torch.Tensor], rules: RenameRules, source: str) -> StateDict:
    """Rename every key by the first matching rule; unmatched keys are an error listing them."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed: StateDict = {}
    unknown = []
    for key, value in state_dict.items():
        for pattern, replacement in compiled:
            match = pattern.fullmatch(key)
            if match:
                name = replacement(match) if callable(replacement) else match.expand(replacement)
                renamed[name] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointConversionError(
            f"{len(unknown)} key(s) of the {source} checkpoint have no hf_detr equivalent: "
            f"{_preview(unknown)}"
        )
    return renamed


def _preview(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _drop_batch_norm_counters(state_dict: StateDict) -> StateDict:
    return {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


def is_segmentation_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a panoptic checkpoint: a detector under `detr.` and the mask head beside it."""
    return any(key.startswith((DETECTOR_PREFIX, *PANOPTIC_MARKERS)) for key in state_dict)


def _refuse_panoptic(state_dict: Mapping[str, torch.Tensor], converter: str) -> None:
    if is_segmentation_state_dict(state_dict):
        raise CheckpointConversionError(
            "This is a panoptic segmentation checkpoint (DETR + mask head), not a detector's state dict: "
            f"convert it with {converter} (or convert_checkpoint, which tells the two apart)."
        )


def split_segmentation_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str
) -> tuple[StateDict, StateDict]:
    """(the detector's weights without the `detr.` prefix, the mask head's and attention map's weights
    under hf_detr names); a key that is neither is an error naming it."""
    detector = {k[len(DETECTOR_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(DETECTOR_PREFIX)}
    heads = {k: v for k, v in state_dict.items() if not k.startswith(DETECTOR_PREFIX)}
    return detector, rename_keys(_drop_batch_norm_counters(heads), SEGMENTATION_HEAD_RULES, source)


def _join_segmentation(detector: StateDict, heads: StateDict) -> StateDict:
    return {**{DETECTOR_PREFIX + k: v for k, v in detector.items()}, **heads}


# ---------------------------------------------------------------------------------------------------
# Official facebookresearch/detr checkpoints
# ---------------------------------------------------------------------------------------------------
def load_original_checkpoint(path: str | Path) -> tuple[StateDict, dict[str, Any]]:
    """Read an official `.pth`: the state dict under "model" and the training `args` as a dict.

    The file also pickles an `argparse.Namespace`; `weights_only=True` refuses anything else.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointConversionError(
            f"{path} is not an official DETR checkpoint: expected a dict with the state dict under "
            f"'model', found {found}."
        )
    args = checkpoint.get("args")
    return dict(checkpoint["model"]), (vars(args) if isinstance(args, argparse.Namespace) else {})


def split_fused_attention(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Split nn.MultiheadAttention's `in_proj_{weight,bias}` into q/k/v projections."""
    result: StateDict = {}
    for key, value in state_dict.items():
        match = ORIGINAL_FUSED_ATTENTION.fullmatch(key)
        if match is None:
            result[key] = value
            continue
        attention, kind = match.groups()
        for name, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0)):
            result[f"{attention}.{name}_proj.{kind}"] = chunk.clone()
    return result


def convert_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Official detector key names -> hf_detr key names."""
    _refuse_panoptic(state_dict, "convert_original_panoptic_state_dict")
    split = split_fused_attention(_drop_batch_norm_counters(dict(state_dict)))
    return rename_keys(split, ORIGINAL_RULES, "official DETR")


def convert_original_panoptic_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Official `DETRsegm` key names (`detr.*`, `bbox_attention.*`, `mask_head.*`) -> hf_detr's
    `HfDetrForSegmentation` key names."""
    detector, heads = split_segmentation_state_dict(state_dict, "official DETR panoptic")
    return _join_segmentation(convert_original_state_dict(detector), heads)


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str, stage: int) -> int:
    pattern = re.compile(rf"{re.escape(prefix)}layer{stage}\.(\d+)\.")
    return len({m.group(1) for k in state_dict if (m := pattern.match(k))})


def infer_resnet_name(state_dict: Mapping[str, torch.Tensor], prefix: str) -> str:
    """Depth of a torchvision-named ResNet from its block counts (e.g. 3-4-6-3 bottleneck -> resnet50)."""
    blocks = tuple(_count_blocks(state_dict, prefix, stage) for stage in (1, 2, 3, 4))
    bottleneck = any(k.startswith(prefix) and ".conv3." in k for k in state_dict)
    known = {
        ((2, 2, 2, 2), False): "resnet18",
        ((3, 4, 6, 3), False): "resnet34",
        ((3, 4, 6, 3), True): "resnet50",
        ((3, 4, 23, 3), True): "resnet101",
        ((3, 8, 36, 3), True): "resnet152",
    }
    if (blocks, bottleneck) not in known:
        raise CheckpointConversionError(
            f"Cannot tell which ResNet the backbone is (blocks per stage {blocks}, "
            f"{'bottleneck' if bottleneck else 'basic'} blocks); pass --backbone."
        )
    return known[(blocks, bottleneck)]


def original_config(
    state_dict: Mapping[str, torch.Tensor],
    args: Mapping[str, Any],
    backbone: str | None = None,
    dilation: bool | None = None,
    num_labels: int | None = None,
    segmentation: bool = False,
) -> HfDetrConfig:
    """The hf_detr config of an official checkpoint (`state_dict`: the detector's weights): shapes from
    the weights, the rest from the checkpoint's training `args`, explicit arguments overriding both (and
    checked against the weights). `segmentation`: a panoptic checkpoint's, with `use_masks` and the
    mask loss weights."""
    inferred_backbone = infer_resnet_name(state_dict, "backbone.0.body.")
    if backbone is None:
        backbone = args.get("backbone", inferred_backbone)
    if backbone.split(".")[0] != inferred_backbone:
        raise CheckpointConversionError(
            f"--backbone {backbone} does not match the checkpoint's backbone weights ({inferred_backbone})."
        )
    classes_in_weights = state_dict["class_embed.weight"].shape[0] - 1
    if num_labels is not None and num_labels != classes_in_weights:
        raise CheckpointConversionError(
            f"--num-labels {num_labels} does not match the checkpoint's class head, which has "
            f"{classes_in_weights} classes + no-object."
        )
    d_model = state_dict["query_embed.weight"].shape[1]
    heads = int(args.get("nheads", 8))

    def layers(stack: str) -> int:
        pattern = re.compile(rf"transformer\.{stack}\.layers\.(\d+)\.")
        return len({m.group(1) for k in state_dict if (m := pattern.match(k))})

    dropout = float(args.get("dropout", 0.1))
    masks = (
        dict(
            use_masks=True,
            mask_loss_coefficient=float(args.get("mask_loss_coef", 1.0)),
            dice_loss_coefficient=float(args.get("dice_loss_coef", 1.0)),
        )
        if segmentation
        else {}
    )
    return HfDetrConfig(
        backbone=backbone,
        dilation=bool(args.get("dilation", False)) if dilation is None else dilation,
        d_model=d_model,
        encoder_layers=layers("encoder"),
        decoder_layers=layers("decoder"),
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=state_dict["transformer.encoder.layers.0.linear1.weight"].shape[0],
        decoder_ffn_dim=state_dict["transformer.decoder.layers.0.linear1.weight"].shape[0],
        num_queries=state_dict["query_embed.weight"].shape[0],
        position_embedding_type="learned" if "backbone.1.row_embed.weight" in state_dict else "sine",
        dropout=dropout,
        attention_dropout=dropout,
        activation_dropout=dropout,
        auxiliary_loss=bool(args.get("aux_loss", True)),
        class_cost=float(args.get("set_cost_class", 1.0)),
        bbox_cost=float(args.get("set_cost_bbox", 5.0)),
        giou_cost=float(args.get("set_cost_giou", 2.0)),
        bbox_loss_coefficient=float(args.get("bbox_loss_coef", 5.0)),
        giou_loss_coefficient=float(args.get("giou_loss_coef", 2.0)),
        eos_coefficient=float(args.get("eos_coef", 0.1)),
        **official_label_fields(classes_in_weights),
        **masks,
    )


def official_label_fields(num_classes: int) -> dict[str, Any]:
    """`id2label`/`label2id` of an official class head, by its size: 91 classes are the COCO detection
    category ids, 250 the official panoptic slots (COCO panoptic category ids, with `stuff_label_ids`),
    anything else generic `LABEL_i` names."""
    if num_classes == COCO_PANOPTIC_NUM_LABELS:
        return coco_panoptic_label_fields(num_classes)
    labels = (
        dict(enumerate(COCO_DETECTION_LABELS))
        if num_classes == len(COCO_DETECTION_LABELS)
        else {i: f"LABEL_{i}" for i in range(num_classes)}
    )
    return {"id2label": labels, "label2id": {name: i for i, name in labels.items()}}


def convert_original_checkpoint(
    path: str | Path,
    backbone: str | None = None,
    dilation: bool | None = None,
    num_labels: int | None = None,
) -> HfDetrForObjectDetection | HfDetrForSegmentation:
    """An official facebookresearch/detr `.pth` as an `HfDetrForObjectDetection`, or for a panoptic
    release (e.g. detr-r50-panoptic, 250 classes) an `HfDetrForSegmentation`, in eval mode."""
    state_dict, args = load_original_checkpoint(path)
    if not is_segmentation_state_dict(state_dict):
        config = original_config(state_dict, args, backbone, dilation, num_labels)
        return build_model(config, convert_original_state_dict(state_dict), "official DETR")
    detector, heads = split_segmentation_state_dict(state_dict, "official DETR panoptic")
    config = original_config(detector, args, backbone, dilation, num_labels, segmentation=True)
    converted = _join_segmentation(convert_original_state_dict(detector), heads)
    return build_model(config, converted, "official DETR panoptic", HfDetrForSegmentation)


# ---------------------------------------------------------------------------------------------------
# transformers checkpoints
# ---------------------------------------------------------------------------------------------------
def load_transformers_checkpoint(directory: str | Path) -> tuple[StateDict, dict[str, Any]]:
    """Read a transformers DETR directory: config.json and its weights (safetensors, or a
    pytorch_model.bin read with `weights_only=True`; sharded checkpoints too)."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointConversionError(f"{directory} has no config.json: not a transformers checkpoint.")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "detr":
        raise CheckpointConversionError(
            f"{config_file} describes model_type {config.get('model_type')!r}; expected a transformers "
            "DETR checkpoint (model_type 'detr')."
        )
    return _read_weights(directory), config


# the weight files of a transformers checkpoint, in the order they are looked for; each may be sharded
# (`<name>.index.json` and the shards its weight_map names)
TRANSFORMERS_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _read_weights(directory: Path) -> StateDict:
    from safetensors.torch import load_file

    readers: dict[str, Callable[[Path], StateDict]] = {
        "model.safetensors": lambda p: load_file(p),
        "pytorch_model.bin": lambda p: torch.load(p, map_location="cpu", weights_only=True),
    }
    for name in TRANSFORMERS_WEIGHT_FILES:
        read = readers[name]
        if (directory / name).is_file():
            return dict(read(directory / name))
        index = directory / f"{name}.index.json"
        if index.is_file():
            shards = shard_names(index)
            state_dict: StateDict = {}
            for shard in shards:
                state_dict.update(read(directory / shard))
            return state_dict
    raise CheckpointConversionError(
        f"{directory} holds no weights (model.safetensors or pytorch_model.bin, possibly sharded)."
    )


def shard_names(index: str | Path) -> list[str]:
    """The shard files a sharded checkpoint's `*.index.json` names; each must be a plain file name."""
    try:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointConversionError(
            f"{index} is not a checkpoint index (a 'weight_map'): {error}"
        ) from error
    unsafe = [shard for shard in shards if not isinstance(shard, str) or Path(shard).name != shard]
    if unsafe:
        raise CheckpointConversionError(
            f"{index} names shards outside its folder: {_preview([repr(shard) for shard in unsafe])}"
        )
    return shards


def _transformers_backbone(config: Mapping[str, Any]) -> tuple[str, bool, bool, int]:
    """(timm backbone name, dilation, uses timm key names, input channels) of a transformers DETR config."""
    backbone_config = config.get("backbone_config") or {}
    dilation = bool(config.get("dilation") or backbone_config.get("output_stride") == 16)
    channels = int(config.get("num_channels", backbone_config.get("num_channels", 3)))
    if backbone_config.get("model_type") == "resnet" or config.get("use_timm_backbone") is False:
        depths = tuple(backbone_config.get("depths", (3, 4, 6, 3)))
        layer_type = backbone_config.get("layer_type", "bottleneck")
        names = {
            ((2, 2, 2, 2), "basic"): "resnet18",
            ((3, 4, 6, 3), "basic"): "resnet34",
            ((3, 4, 6, 3), "bottleneck"): "resnet50",
            ((3, 4, 23, 3), "bottleneck"): "resnet101",
            ((3, 8, 36, 3), "bottleneck"): "resnet152",
        }
        if (depths, layer_type) not in names:
            raise CheckpointConversionError(
                f"Unsupported transformers ResNet backbone: depths {list(depths)}, layer_type {layer_type!r}."
            )
        return names[(depths, layer_type)], dilation, False, channels
    name = backbone_config.get("backbone") or config.get("backbone") or "resnet50"
    return name, dilation, True, channels


def transformers_config(
    config: Mapping[str, Any], num_classes: int | None = None, segmentation: bool = False
) -> HfDetrConfig:
    """The hf_detr config equivalent to a transformers DETR config.json (architecture, labels, losses);
    `segmentation`: a `DetrForSegmentation`'s, with `use_masks` and the mask loss weights.

    transformers v5 writes no `id2label` for its default labels and loads such a checkpoint as
    LABEL_0, LABEL_1, ...; here too, with `num_classes` (from the class head's shape) of them. A
    segmentation checkpoint with 250 classes and only such generic names (transformers' conversions of
    the official panoptic releases, e.g. facebook/detr-resnet-50-panoptic: transformers#12808) gets the
    COCO panoptic names and `stuff_label_ids`, as the official checkpoints do.
    """
    backbone, dilation, _, channels = _transformers_backbone(config)
    if config.get("position_embedding_type", "sine") not in ("sine", "learned"):
        raise CheckpointConversionError(
            f"Unsupported position_embedding_type {config.get('position_embedding_type')!r}."
        )
    copied = (
        "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
        "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "num_queries", "dropout",
        "attention_dropout", "activation_dropout", "activation_function", "position_embedding_type",
        "auxiliary_loss", "class_cost", "bbox_cost", "giou_cost", "bbox_loss_coefficient",
        "giou_loss_coefficient", "eos_coefficient",
    )  # fmt: skip
    if segmentation:
        copied += ("mask_loss_coefficient", "dice_loss_coefficient")
        if config.get("activation_function", "relu") != "relu":
            raise CheckpointConversionError(
                f"transformers' mask head uses activation_function={config['activation_function']!r}; "
                "hf_detr's is the official one, with ReLU: this checkpoint cannot be converted exactly."
            )
    kwargs = {key: config[key] for key in copied if key in config}
    if segmentation:
        kwargs["use_masks"] = True
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    if not id2label and num_classes is None:
        raise CheckpointConversionError(
            "The transformers config.json has no id2label and the number of classes is unknown."
        )
    if not id2label:
        id2label = {i: f"LABEL_{i}" for i in range(num_classes)}
    if num_classes is not None and len(id2label) != num_classes:
        raise CheckpointConversionError(
            f"The transformers config.json names {len(id2label)} classes but the class head has "
            f"{num_classes} (+1 no-object) outputs."
        )
    generic = all(name == f"LABEL_{i}" for i, name in id2label.items())
    if segmentation and generic and len(id2label) == COCO_PANOPTIC_NUM_LABELS:
        labels = coco_panoptic_label_fields(COCO_PANOPTIC_NUM_LABELS)
    else:
        labels = {"id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}
    return HfDetrConfig(backbone=backbone, dilation=dilation, num_channels=channels, **labels, **kwargs)


def convert_transformers_state_dict(
    state_dict: Mapping[str, torch.Tensor], uses_timm_names: bool = True
) -> StateDict:
    """transformers `DetrForObjectDetection` key names -> hf_detr key names."""
    _refuse_panoptic(state_dict, "convert_transformers_segmentation_state_dict")
    renamed = rename_keys(
        _drop_batch_norm_counters(dict(state_dict)), TRANSFORMERS_RULES, "transformers DETR"
    )
    if uses_timm_names:
        return renamed
    backbone = {k[len(_BACKBONE) :]: v for k, v in renamed.items() if k.startswith(_BACKBONE)}
    converted = rename_keys(backbone, HF_RESNET_RULES, "transformers ResNet backbone")
    others = {k: v for k, v in renamed.items() if not k.startswith(_BACKBONE)}
    return {**others, **{_BACKBONE + k: v for k, v in converted.items()}}


def convert_transformers_segmentation_state_dict(
    state_dict: Mapping[str, torch.Tensor], uses_timm_names: bool = True
) -> StateDict:
    """transformers `DetrForSegmentation` key names -> hf_detr's `HfDetrForSegmentation` key names."""
    detector, heads = split_segmentation_state_dict(state_dict, "transformers DetrForSegmentation")
    return _join_segmentation(convert_transformers_state_dict(detector, uses_timm_names), heads)


def convert_transformers_checkpoint(
    directory: str | Path,
) -> HfDetrForObjectDetection | HfDetrForSegmentation:
    """A transformers DETR checkpoint directory as an `HfDetrForObjectDetection`, or for a
    `DetrForSegmentation` an `HfDetrForSegmentation`, in eval mode."""
    state_dict, config_dict = load_transformers_checkpoint(directory)
    segmentation = is_segmentation_state_dict(state_dict)
    prefix = DETECTOR_PREFIX if segmentation else ""
    head = state_dict.get(f"{prefix}class_labels_classifier.bias")
    config = transformers_config(config_dict, None if head is None else head.shape[0] - 1, segmentation)
    _, _, uses_timm_names, _ = _transformers_backbone(config_dict)
    if not segmentation:
        converted = convert_transformers_state_dict(state_dict, uses_timm_names)
        return build_model(config, converted, "transformers DETR")
    converted = convert_transformers_segmentation_state_dict(state_dict, uses_timm_names)
    return build_model(config, converted, "transformers DetrForSegmentation", HfDetrForSegmentation)


# ---------------------------------------------------------------------------------------------------
# Checkpoints on the Hub and behind URLs
# ---------------------------------------------------------------------------------------------------
# `from_pretrained`'s keyword arguments that say where and how to get a Hub repository's files
HUB_ARGUMENTS = (
    "cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder",
)  # fmt: skip
# the SHA-256 prefix in an official release's file name (detr-r50-e632da11.pth), as torch.hub reads it
_SHA256_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")


def fetch_transformers_checkpoint(name_or_path: str | os.PathLike, **hub_arguments: Any) -> list[Path] | None:
    """The files of the transformers DETR checkpoint in a folder or Hub repository, config.json first,
    then preprocessor_config.json where there is one and the weights (the first format of
    TRANSFORMERS_WEIGHT_FILES found); a repository's are downloaded to the Hub cache. None when there is
    no such checkpoint (no config.json, or one of another model type, or the Hub unreachable), for the
    caller to report in its own words. `hub_arguments`: any of HUB_ARGUMENTS."""
    from transformers.utils import cached_file

    def fetch(filename: str, missing_ok: bool = True, unreachable_ok: bool = False) -> Path | None:
        path = cached_file(
            name_or_path,
            filename,
            **hub_arguments,
            _raise_exceptions_for_missing_entries=not missing_ok,
            _raise_exceptions_for_connection_errors=not unreachable_ok,
        )
        return None if path is None else Path(path)

    try:
        config_file = fetch("config.json", unreachable_ok=True)
    except (OSError, ValueError):  # neither a folder nor an existing repository, or an invalid repo id
        return None
    if config_file is None or _model_type(config_file) != "detr":
        return None
    processor_file = fetch("preprocessor_config.json")
    for weights in TRANSFORMERS_WEIGHT_FILES:
        if (single := fetch(weights)) is not None:
            return [config_file, *filter(None, [processor_file]), single]
        if (index := fetch(f"{weights}.index.json")) is not None:
            shards = [fetch(shard, missing_ok=False) for shard in shard_names(index)]
            return [config_file, *filter(None, [processor_file]), index, *shards]
    raise CheckpointConversionError(
        f"{name_or_path} is a transformers DETR checkpoint ('detr' model, not 'hf_detr') without weights "
        f"({' or '.join(TRANSFORMERS_WEIGHT_FILES)}, possibly sharded): there is nothing to convert, on "
        "load or with hf-detr-convert --source transformers."
    )


def _model_type(config_file: Path) -> str | None:
    try:
        config = json.loads(config_file.read_text())
    except ValueError:  # not JSON (or not text): not a DETR checkpoint; from_pretrained says what it is
        return None
    return config.get("model_type") if isinstance(config, dict) else None


def transformers_checkpoint_folder(checkpoint: str | Path) -> Path:
    """A local folder as it is; a Hub repository id: the folder its files are downloaded to."""
    if Path(checkpoint).is_dir():
        return Path(checkpoint)
    files = fetch_transformers_checkpoint(checkpoint)
    if files is None:
        raise CheckpointConversionError(
            f"{checkpoint} is neither a folder nor a Hub repository holding a transformers DETR checkpoint "
            "(a config.json with model_type 'detr'), or the Hub is unreachable (network, HF_HUB_OFFLINE)."
        )
    return files[0].parent


def is_checkpoint_url(name: str | os.PathLike) -> bool:
    """An http(s) URL of a `.pth` file, e.g. https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth."""
    parsed = urllib.parse.urlparse(os.fspath(name))
    return parsed.scheme in ("http", "https") and parsed.path.endswith(".pth")


def download_checkpoint(url: str, directory: Path, timeout: float = 60.0) -> Path:
    """Download `url` into `directory` under its file name; a name that carries a SHA-256 prefix (the
    official releases': `-<hex>.pth`) must match the content. Refused in offline mode (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise OSError(f"Cannot download {url}: offline mode (HF_HUB_OFFLINE) is on.")
    destination = directory / Path(urllib.parse.urlparse(url).path).name
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, destination.open("wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except OSError as error:  # urllib.error.URLError is an OSError
        raise OSError(f"Could not download {url}: {error}") from error
    expected = _SHA256_IN_NAME.search(destination.name)
    if expected and not digest.hexdigest().startswith(expected.group(1)):
        raise OSError(
            f"{url} has SHA-256 {digest.hexdigest()}, but its name says it starts with {expected.group(1)}: "
            "the download is corrupt or not the file the name promises."
        )
    return destination


@contextlib.contextmanager
def official_checkpoint_file(checkpoint: str | Path) -> Iterator[Path]:
    """`checkpoint` as a local file: a path as it is, a URL downloaded into a temporary folder that is
    removed afterwards."""
    if not is_checkpoint_url(checkpoint):
        yield Path(checkpoint)
        return
    with tempfile.TemporaryDirectory(prefix="hf_detr_download_") as directory:
        yield download_checkpoint(str(checkpoint), Path(directory))


# ---------------------------------------------------------------------------------------------------
# Loading into hf_detr
# ---------------------------------------------------------------------------------------------------
def build_model(
    config: HfDetrConfig,
    state_dict: StateDict,
    source: str,
    model_class: type[HfDetrForObjectDetection | HfDetrForSegmentation] = HfDetrForObjectDetection,
) -> HfDetrForObjectDetection | HfDetrForSegmentation:
    """Build `model_class` for `config` and load `state_dict` strictly (names and shapes)."""
    model = model_class(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_preview(unexpected)}")
        raise CheckpointConversionError(
            f"The converted {source} weights do not fit hf_detr; " + "; ".join(parts)
        )
    wrong_shapes = [
        f"{k} {list(v.shape)} (expected {list(expected[k].shape)})"
        for k, v in state_dict.items()
        if v.shape != expected[k].shape
    ]
    if wrong_shapes:
        raise CheckpointConversionError(
            f"The converted {source} weights have {len(wrong_shapes)} wrong shape(s): {_preview(wrong_shapes)}"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True)
    return model.eval()


def convert_checkpoint(
    source: str,
    checkpoint: str | Path,
    output_dir: str | Path,
    backbone: str | None = None,
    dilation: bool | None = None,
    num_labels: int | None = None,
) -> HfDetrForObjectDetection | HfDetrForSegmentation:
    """Convert and `save_pretrained` into `output_dir` (config.json, model.safetensors and
    preprocessor_config.json); panoptic checkpoints give a segmentation model. `checkpoint`: an official
    `.pth` file or http(s) URL, or a transformers checkpoint folder or Hub repository id."""
    if source == "original":
        with official_checkpoint_file(checkpoint) as path:
            model = convert_original_checkpoint(path, backbone, dilation, num_labels)
    elif source == "transformers":
        if backbone is not None or dilation is not None or num_labels is not None:
            raise CheckpointConversionError(
                "--backbone, --dilation and --num-labels describe an official .pth; a transformers "
                "checkpoint takes its architecture and labels from its config.json."
            )
        checkpoint = transformers_checkpoint_folder(checkpoint)
        model = convert_transformers_checkpoint(checkpoint)
    else:
        raise CheckpointConversionError(f"--source must be 'original' or 'transformers', got {source!r}.")
    model.save_pretrained(output_dir)
    segmentation = isinstance(model, HfDetrForSegmentation)
    image_processor_for(source, checkpoint, segmentation).save_pretrained(output_dir)
    return model


# settings of a transformers DETR preprocessor_config.json that HfDetrImageProcessor shares
_PROCESSOR_SETTINGS = (
    "do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
    "image_std", "do_pad", "pad_size", "do_convert_annotations",
)  # fmt: skip


def image_processor_for(
    source: str, checkpoint: str | Path, segmentation: bool = False
) -> HfDetrImageProcessor:
    """The processor of a converted checkpoint: the official evaluation settings, or for a transformers
    checkpoint, the settings of its preprocessor_config.json where it has one. A segmentation model's
    processor reads COCO panoptic annotations unless the transformers processor says otherwise."""
    settings: dict[str, Any] = {"format": "coco_panoptic"} if segmentation else {}
    config_file = Path(checkpoint) / "preprocessor_config.json"
    if source == "transformers" and config_file.is_file():
        saved = json.loads(config_file.read_text())
        settings.update({k: saved[k] for k in _PROCESSOR_SETTINGS if saved.get(k) is not None})
        if saved.get("format") in ("coco_detection", "coco_panoptic"):
            settings["format"] = saved["format"]
    return HfDetrImageProcessor(**settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-detr-convert",
        description="Convert an official DETR .pth or a transformers DETR directory to hf_detr "
        "(panoptic checkpoints become segmentation models).",
    )
    parser.add_argument(
        "--source", required=True, choices=("original", "transformers"),
        help="the checkpoint's kind: original (official facebookresearch/detr .pth) or transformers",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoint", required=True,
        help="the official .pth file or http(s) URL, or the transformers DETR directory or Hub repository id",
    )  # fmt: skip
    parser.add_argument(
        "--output-dir", required=True, help="directory to save the hf_detr model and image processor to"
    )
    parser.add_argument(
        "--backbone", default=None,
        help="official .pth only: resnet50, resnet101, ... (default: the checkpoint's, checked on its weights)",
    )  # fmt: skip
    parser.add_argument(
        "--dilation", action="store_true", default=None,
        help="official .pth only: a DC5 model, last backbone stage dilated (default: the checkpoint's)",
    )  # fmt: skip
    parser.add_argument(
        "--num-labels", type=int, default=None,
        help="official .pth only: classes, 91 for COCO, 250 for panoptic (default: the class head's)",
    )  # fmt: skip
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", default=None,
        help="also upload the converted model to this Hub repo id, with a model card",
    )  # fmt: skip
    parser.add_argument(
        "--private", action="store_true", help="--push-to-hub: create the Hub repository as private"
    )
    add_traceback_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model = convert_checkpoint(
            args.source, args.checkpoint, args.output_dir, args.backbone, args.dilation, args.num_labels
        )
    except (CheckpointConversionError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"Saved hf_detr checkpoint to {args.output_dir}")
    if args.push_to_hub:
        from .hub import make_model_card, official_checkpoint_for, official_model_card, push_to_hub

        official = official_checkpoint_for(model.config) if args.source == "original" else None
        card = (
            official_model_card(official, args.push_to_hub)
            if official
            else make_model_card(model.config, args.push_to_hub)
        )
        processor = HfDetrImageProcessor.from_pretrained(args.output_dir)
        url = push_to_hub(model, processor, args.push_to_hub, card, private=args.private or None)
        print(f"Pushed to {args.push_to_hub}: {url}")
    return 0


__all__ = [
    "CheckpointConversionError",
    "build_parser",
    "convert_checkpoint",
    "convert_original_checkpoint",
    "convert_original_panoptic_state_dict",
    "convert_original_state_dict",
    "convert_transformers_checkpoint",
    "convert_transformers_segmentation_state_dict",
    "convert_transformers_state_dict",
    "download_checkpoint",
    "fetch_transformers_checkpoint",
    "main",
]
