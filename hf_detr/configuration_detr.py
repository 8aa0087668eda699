"""Configuration of the DETR detector (Carion et al., ECCV 2020).

Part of the self-contained "model files": only relative imports of the other model files, because
`save_pretrained` copies these files into Hub repositories for `trust_remote_code` loading.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

from transformers import PreTrainedConfig
from transformers.utils import logging

from .validation_detr import check_config, check_label_arguments, short_repr

logger = logging.get_logger(__name__)

# COCO detection names indexed by COCO category id (0..90); ids COCO does not use are "N/A".
COCO_DETECTION_LABELS: tuple[str, ...] = (
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack",
    "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet",
    "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip


class HfDetrConfig(PreTrainedConfig):
    r"""Configuration of [`HfDetrModel`] and [`HfDetrForObjectDetection`].

    The defaults build DETR-R50 for COCO exactly as the paper and the official release
    (facebookresearch/detr): 91 COCO classes (+ no-object), 100 queries, a 6+6 layer post-norm
    transformer with d=256, 8 heads, FFN 2048, dropout 0.1 and sine positions, Hungarian costs
    class 1 / L1 5 / GIoU 2 and loss weights CE 1 / L1 5 / GIoU 2 with no-object weight 0.1 (paper
    section 3.1 and appendix A.3), auxiliary decoding losses on.

    Backbone arguments:
        backbone: a timm ResNet (`resnet18`, `resnet34`, `resnet50`, `resnet101`, ...), optionally with a
            pretrained tag (`resnet50.tv_in1k`). Without a tag, pretrained weights are the torchvision
            ImageNet weights (`.tv_in1k`) the paper started from.
        dilation: replace the stride of the last stage by dilation (the DC5 models, output stride 16).
        use_pretrained_backbone: download ImageNet weights for the backbone when the model is built from
            a config. `from_pretrained` never downloads them: the checkpoint holds the backbone.
        trainable_backbone_layers: how many stages, counted from the top, train (0-5, as torchvision's
            detection models): 3 trains layer2-4 as the paper; 5 trains everything.
        freeze_backbone_batch_norm: use `torchvision.ops.FrozenBatchNorm2d` in the trainable stages as
            the paper (section A.3). `False` keeps ordinary BatchNorm there, which a backbone trained from scratch
            needs (frozen BN with initial statistics normalises nothing). Stages that do not train
            always get frozen BatchNorm.
        num_channels: input channels (3 for RGB, 1 for grayscale input).

    Transformer arguments: `d_model`, `encoder_layers`, `decoder_layers`, `encoder_attention_heads`,
    `decoder_attention_heads`, `encoder_ffn_dim`, `decoder_ffn_dim`, `dropout` (residual dropout),
    `attention_dropout` (on attention weights) and `activation_dropout` (inside the FFN); the official
    code uses 0.1 for all three. `position_embedding_type` is `"sine"` or `"learned"`; `num_queries` is
    the number of object slots.

    Loss arguments: `auxiliary_loss` (a loss at every decoder layer), `class_cost`, `bbox_cost`,
    `giou_cost` (matching), `class_loss_coefficient`, `bbox_loss_coefficient`, `giou_loss_coefficient`,
    `eos_coefficient` (weight of the no-object class in the cross-entropy).

    `num_query_groups` (default 1: the paper) is a training option, Group DETR's one-to-many
    supervision (Chen et al., ICCV 2023): in training the decoder runs that many groups of
    `num_queries` queries with shared weights, self-attention only within a group (their loss is the
    training loop's, hf_detr.training.query_groups). In evaluation only group 0 runs; hf-detr-train
    saves its final model as a plain DETR (group 0, `num_query_groups=1`).

    Segmentation arguments (paper section 4.4, [`HfDetrForSegmentation`]): `use_masks` makes the backbone
    return its stride-4, 8 and 16 feature maps for the mask head (the segmentation model sets it);
    `mask_loss_coefficient` (sigmoid focal loss) and `dice_loss_coefficient` (DICE loss) weight the mask
    losses of the matched queries. The mask head needs `d_model` a multiple of 16.

    `coco_category_ids` optionally maps each label id to the dataset's original COCO category id
    (a list indexed by label id), so evaluation can report in COCO ids.

    `stuff_label_ids` optionally lists the label ids of a panoptic model's stuff classes (amorphous
    regions such as sky or road; the other labels are things). Pass it on as
    `processor.post_process_panoptic_segmentation(outputs, label_ids_to_fuse=config.stuff_label_ids)`
    so that the queries of one stuff class become one segment. Converted official panoptic checkpoints
    record the 53 COCO panoptic stuff categories.

    Every field is checked when the config is built, from code or from a config.json, before any model
    memory is allocated (`validation_detr.check_config`): a bad value is a `ValueError` naming the field.
    """

    model_type = "hf_detr"
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }
    # A hook for checkpoints of other formats, which `from_pretrained` (of this config and of the models,
    # which go through their config class) consults: (name or path, keyword arguments) -> the name or
    # path and keyword arguments to load instead. None here; the hf_detr package, when installed, sets
    # one that converts transformers' DETR checkpoints and the official .pth files on load.
    checkpoint_resolver: ClassVar[Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None] = None

    # backbone
    backbone: str = "resnet50"
    dilation: bool = False
    use_pretrained_backbone: bool = False
    trainable_backbone_layers: int = 3
    freeze_backbone_batch_norm: bool = True
    num_channels: int = 3
    # transformer
    d_model: int = 256
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    activation_function: str = "relu"
    position_embedding_type: str = "sine"
    num_queries: int = 100
    num_query_groups: int = 1
    # loss
    auxiliary_loss: bool = True
    class_cost: float = 1.0
    bbox_cost: float = 5.0
    giou_cost: float = 2.0
    class_loss_coefficient: float = 1.0
    bbox_loss_coefficient: float = 5.0
    giou_loss_coefficient: float = 2.0
    eos_coefficient: float = 0.1
    # segmentation
    use_masks: bool = False
    mask_loss_coefficient: float = 1.0
    dice_loss_coefficient: float = 1.0
    # dataset bookkeeping
    coco_category_ids: list[int] | None = None
    stuff_label_ids: list[int] | None = None
    # an encoder and a decoder, as transformers' DetrConfig says: generic code then reads the outputs'
    # encoder_*/decoder_* hidden states and attentions
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs) -> None:
        check_label_arguments(self.id2label, self.label2id, kwargs.get("num_labels"))
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = dict(enumerate(COCO_DETECTION_LABELS))
        if self.label2id is None and self.id2label is not None:
            self.label2id = {name: int(index) for index, name in self.id2label.items()}
        super().__post_init__(**kwargs)
        self.validate_detr_fields()

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs
    ) -> HfDetrConfig:
        """transformers' `from_pretrained`, after `checkpoint_resolver` (when set) has had its say."""
        name_or_path, kwargs = resolve_checkpoint(cls, pretrained_model_name_or_path, kwargs)
        return super().from_pretrained(name_or_path, *args, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> HfDetrConfig:
        """As transformers, but a config of another model type is an error, not a warning: loading a
        `detr` (transformers) checkpoint as hf_detr would leave every weight randomly initialised."""
        if not isinstance(config_dict, dict):
            raise ValueError(
                f"An HfDetrConfig must be built from a JSON object (a dict of field names to values), got "
                f"{type(config_dict).__name__}: {short_repr(config_dict)}."
            )
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            hint = (
                " Load it with the hf_detr package installed (its from_pretrained converts it), or convert "
                "it first: hf-detr-convert --source transformers --checkpoint DIR --output-dir NEW_DIR."
                if model_type == "detr"
                else ""
            )
            raise ValueError(
                f"This checkpoint is a {model_type!r} model, not {cls.model_type!r}: its config.json cannot "
                f"build an HfDetrConfig.{hint}"
            )
        loaded = super().from_dict(config_dict, **kwargs)
        # transformers sets the keyword overrides (`from_pretrained(path, encoder_layers=...)`) after
        # __post_init__: check them too
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        check_label_arguments(config.id2label, config.label2id, None)
        if kwargs.get("id2label") is not None:  # as the constructor's: int keys, label2id from it by default
            config.id2label = _int_keys(config.id2label)
            if kwargs.get("label2id") is None:
                config.label2id = {name: index for index, name in config.id2label.items()}
        config.drop_fields_of_replaced_labels(config_dict.get("id2label"), kwargs)
        config.validate_detr_fields()
        return loaded

    def drop_fields_of_replaced_labels(self, saved_id2label: Any, overrides: dict[str, Any]) -> None:
        """`from_pretrained(path, id2label=...)` with other classes (fine-tuning to new classes, as in
        transformers' object-detection guide): the saved per-label fields (`coco_category_ids`,
        `stuff_label_ids`) describe the old classes, so they are dropped, with one info line, unless the
        call gives them too. `hf-detr-train` fills them again from its dataset."""
        if "id2label" not in overrides and "num_labels" not in overrides:
            return
        if isinstance(saved_id2label, dict) and _int_keys(saved_id2label) == _int_keys(self.id2label):
            return
        dropped = [
            name
            for name in ("coco_category_ids", "stuff_label_ids")
            if name not in overrides and getattr(self, name) is not None
        ]
        for name in dropped:
            setattr(self, name, None)
        if dropped:
            logger.info(
                "New labels (%d classes) replace the checkpoint's: its %s described the old classes and "
                "are dropped.", self.num_labels, " and ".join(f"`{name}`" for name in dropped),
            )  # fmt: skip

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict:
        """As transformers (which `from_pretrained`, `get_config_dict` and `from_json_file` all read
        through), but a file that is valid JSON yet not an object is a `ValueError` naming the file."""
        config_dict = super()._dict_from_json_file(json_file)
        if not isinstance(config_dict, dict):
            raise ValueError(
                f"{json_file} must hold a JSON object (field names to values), got a JSON "
                f"{_json_kind(config_dict)}: {short_repr(config_dict)}."
            )
        return config_dict

    def to_diff_dict(self) -> dict:
        """As transformers, but the labels are always written: transformers leaves out two generic
        labels as "the default", which for this config (default: the 91 COCO classes) would load back as
        91 classes."""
        full = self.to_dict()
        return {**super().to_diff_dict(), "id2label": full["id2label"], "label2id": full["label2id"]}

    def validate_detr_fields(self) -> None:
        check_config(self)


def resolve_checkpoint(
    config_class: type[HfDetrConfig], name_or_path: Any, kwargs: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """`from_pretrained`'s (name or path, keyword arguments) after `config_class.checkpoint_resolver`."""
    resolver = config_class.checkpoint_resolver
    return (name_or_path, kwargs) if resolver is None else resolver(name_or_path, kwargs)


def _int_keys(mapping: dict) -> dict[int, Any]:
    """A json-read id2label (string keys) comparable with a live one (integer keys)."""
    return {int(key): value for key, value in mapping.items()}


def _json_kind(value: Any) -> str:
    """What JSON calls the type of a decoded value."""
    kinds = {
        list: "array",
        str: "string",
        bool: "boolean",
        type(None): "null",
        int: "number",
        float: "number",
    }
    return kinds.get(type(value), type(value).__name__)


__all__ = ["COCO_DETECTION_LABELS", "HfDetrConfig"]
