"""Configuration of the DETR detector (Carion et al., ECCV 2020).

Part of the self-contained "model files": only relative imports of the other model files, because
`save_pretrained` copies these files into Hub repositories for `trust_remote_code` loading.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import PreTrainedConfig

# COCO detection names indexed by COCO category id (0..90); ids COCO does not use are "N/A".
# The official DETR checkpoints predict these 91 classes (+ no-object).
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

POSITION_EMBEDDING_TYPES = ("sine", "learned")
ACTIVATIONS = ("relu", "gelu", "silu")


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
            the paper. `False` keeps ordinary BatchNorm there, which a backbone trained from scratch
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
    `num_queries` queries with shared weights, self-attention only within a group, each group matched
    and scored on its own and the losses averaged over groups. In evaluation only group 0 runs, and
    `save_pretrained` writes a plain DETR (group 0, `num_query_groups=1`). With
    `one_to_many_repeats` k > 1, groups 1.. are matched to the targets repeated k times instead
    (H-DETR's hybrid matching, Jia et al., CVPR 2023): each target gets up to k queries per group.

    Segmentation arguments (paper section 4.4, [`HfDetrForSegmentation`]): `use_masks` makes the backbone
    return its stride-4, 8 and 16 feature maps for the mask head (the segmentation model sets it);
    `mask_loss_coefficient` (sigmoid focal loss) and `dice_loss_coefficient` (DICE loss) weight the mask
    losses of the matched queries. The mask head's GroupNorms need `d_model` a multiple of 16 whose
    halvings are multiples of 8 (or below 8), and `d_model + encoder_attention_heads` a multiple of 8
    (the attention maps have `encoder_attention_heads` heads, as in transformers' `DetrForSegmentation`).

    `coco_category_ids` optionally maps each label id to the dataset's original COCO category id
    (a list indexed by label id), so evaluation can report in COCO ids.

    `stuff_label_ids` optionally lists the label ids of a panoptic model's stuff classes (amorphous
    regions such as sky or road; the other labels are things). Pass it on as
    `processor.post_process_panoptic_segmentation(outputs, label_ids_to_fuse=config.stuff_label_ids)`
    so that the queries of one stuff class become one segment. Converted official panoptic checkpoints
    record the 53 COCO panoptic stuff categories.
    """

    model_type = "hf_detr"
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

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
    one_to_many_repeats: int = 1
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

    def __post_init__(self, **kwargs) -> None:
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = dict(enumerate(COCO_DETECTION_LABELS))
        if self.label2id is None and self.id2label is not None:
            self.label2id = {name: int(index) for index, name in self.id2label.items()}
        super().__post_init__(**kwargs)
        self.validate_detr_fields()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> HfDetrConfig:
        """As transformers, but a config of another model type is an error, not a warning: loading a
        `detr` (transformers) checkpoint as hf_detr would leave every weight randomly initialised."""
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            hint = (
                " Convert it first with the hf_detr package: hf-detr-convert --source transformers "
                "--checkpoint DIR --output-dir NEW_DIR."
                if model_type == "detr"
                else ""
            )
            raise ValueError(
                f"This checkpoint is a {model_type!r} model, not {cls.model_type!r}: its config.json cannot "
                f"build an HfDetrConfig.{hint}"
            )
        return super().from_dict(config_dict, **kwargs)

    def to_diff_dict(self) -> dict:
        """As transformers, but the labels are always written: transformers leaves out two generic
        labels as "the default", which for this config (default: the 91 COCO classes) would load back as
        91 classes."""
        diff = super().to_diff_dict()
        full = self.to_dict()
        for key in ("id2label", "label2id"):
            diff[key] = full[key]
        return diff

    def validate_detr_fields(self) -> None:
        """Raise `ValueError` naming the first field whose value cannot build a DETR."""
        positive = (
            "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
            "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "num_queries",
            "num_query_groups", "one_to_many_repeats", "num_channels",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, name):
                raise ValueError(
                    f"`d_model` ({self.d_model}) must be divisible by `{name}` ({getattr(self, name)})."
                )
        if self.d_model % 2:
            raise ValueError(f"`d_model` must be even (half of it encodes y, half x), got {self.d_model}.")
        if self.num_labels < 1:
            raise ValueError(f"`num_labels` must be at least 1, got {self.num_labels}.")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)!r}.")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"`position_embedding_type` must be one of {POSITION_EMBEDDING_TYPES}, "
                f"got {self.position_embedding_type!r}."
            )
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"`activation_function` must be one of {ACTIVATIONS}, got {self.activation_function!r}."
            )
        if not (isinstance(self.trainable_backbone_layers, int) and 0 <= self.trainable_backbone_layers <= 5):
            raise ValueError(
                f"`trainable_backbone_layers` must be an integer in 0..5, got {self.trainable_backbone_layers!r}."
            )
        if self.one_to_many_repeats > 1 and self.num_query_groups == 1:
            raise ValueError(
                "`one_to_many_repeats` > 1 matches the query groups after the first one-to-many, but "
                "`num_query_groups` is 1: set num_query_groups to 2 or more."
            )
        if self.eos_coefficient < 0:
            raise ValueError(f"`eos_coefficient` must be >= 0, got {self.eos_coefficient!r}.")
        self.validate_segmentation_fields()
        if self.coco_category_ids is not None and len(self.coco_category_ids) != self.num_labels:
            raise ValueError(
                f"`coco_category_ids` must have one entry per label ({self.num_labels}), "
                f"got {len(self.coco_category_ids)}."
            )
        self.validate_stuff_label_ids()
        validate_backbone_name(self.backbone)

    def validate_stuff_label_ids(self) -> None:
        """Raise `ValueError` unless `stuff_label_ids` is None or distinct label ids (0..num_labels-1)."""
        ids = self.stuff_label_ids
        if ids is None:
            return
        integers = isinstance(ids, (list, tuple)) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids
        )
        if not integers:
            raise ValueError(f"`stuff_label_ids` must be a list of label ids (integers), got {ids!r}.")
        outside = sorted(i for i in ids if not 0 <= i < self.num_labels)
        if outside or len(set(ids)) != len(ids):
            problem = f"ids outside 0..{self.num_labels - 1}: {outside}" if outside else "repeated ids"
            raise ValueError(f"`stuff_label_ids` has {problem}.")
        self.stuff_label_ids = list(ids)

    def validate_segmentation_fields(self) -> None:
        """Raise `ValueError` naming the first segmentation field that cannot build the mask head."""
        for name in ("mask_loss_coefficient", "dice_loss_coefficient"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.")
        if not isinstance(self.use_masks, bool):
            raise ValueError(f"`use_masks` must be True or False, got {self.use_masks!r}.")
        if not self.use_masks:
            return
        if self.num_query_groups != 1:
            raise ValueError(
                f"`use_masks` (the segmentation model) supports `num_query_groups` = 1 only, got "
                f"{self.num_query_groups}."
            )
        if self.d_model % 16:
            raise ValueError(
                f"With `use_masks`, `d_model` must be a multiple of 16 (the mask head narrows it to d/2, d/4, "
                f"d/8 and d/16 channels), got {self.d_model}."
            )


def mask_head_channels(d_model: int, num_heads: int) -> tuple[int, ...]:
    """Widths of the mask head's five convolutions (official `MaskHeadSmallConv`): d + heads, d/2, d/4,
    d/8, d/16."""
    return (d_model + num_heads, d_model // 2, d_model // 4, d_model // 8, d_model // 16)


def validate_backbone_name(backbone: str) -> None:
    """Check that `backbone` names a timm ResNet (with an optional pretrained tag)."""
    import timm
    from timm.models import model_entrypoint

    architecture = backbone.split(".", 1)[0] if isinstance(backbone, str) else None
    if not architecture or not timm.is_model(architecture):
        raise ValueError(
            f"`backbone` must name a timm ResNet such as 'resnet18', 'resnet34', 'resnet50' or "
            f"'resnet101', got {backbone!r}."
        )
    if model_entrypoint(architecture).__module__ != "timm.models.resnet":
        raise ValueError(
            f"`backbone` must be a ResNet from timm.models.resnet (e.g. 'resnet50'), got {backbone!r}."
        )


__all__ = ["COCO_DETECTION_LABELS", "HfDetrConfig"]
