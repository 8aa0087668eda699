"""DETR for panoptic segmentation (Carion et al., ECCV 2020, section 4.4 and figure 8).

The detector runs unchanged; a multi-head attention map of each decoder output over the encoder memory
(`bbox_attention`) and the input projection of the backbone's last map feed a small FPN-style
convolutional head (`mask_head`) that upsamples through the backbone's layer3, layer2 and layer1 maps
to one mask logit map per query at stride 4. Module and weight names follow the official `DETRsegm`
(`bbox_attention.q_linear`, `mask_head.lay1` ... `out_lay`, `adapter1..3`), which transformers'
`DetrForSegmentation` checkpoints also use on disk.

Part of the self-contained "model files" (see configuration_detr.py).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .configuration_detr import HfDetrConfig
from .modeling_detr import (
    HfDetrForObjectDetection,
    HfDetrObjectDetectionOutput,
    HfDetrPreTrainedModel,
    per_image_inputs,
)

# the auto_map entries of a detector checkpoint, which a segmentation checkpoint's weights do not fit
DETECTION_AUTO_CLASSES = ("AutoModel", "AutoModelForObjectDetection")


@dataclass
class HfDetrSegmentationOutput(HfDetrObjectDetectionOutput):
    """Output of [`HfDetrForSegmentation`]: [`HfDetrObjectDetectionOutput`]'s fields, which are those of
    transformers' `DetrSegmentationOutput` in its order, then `feature_mask` (the backbone's maps stay
    inside the model).

    loss_dict: also `loss_mask` (sigmoid focal) and `loss_dice` of the last decoder layer's matched
        queries (when `labels` with `masks` are given).
    pred_masks: [B, N, H/4, W/4] mask logits of every query (stride 4 of the padded input); for
        `pixel_values` given as a list of images of different sizes, a list of [N, H_i/4, W_i/4].
    auxiliary_outputs: the other decoder layers' predictions, without masks.
    """


class HfDetrAttentionMap(nn.Module):
    """Multi-head attention weights of queries over the encoder memory, without the values (the
    official `MHAttentionMap`). As there, one softmax runs over all heads and positions together;
    padded positions get no weight."""

    def __init__(self, hidden_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.q_linear = nn.Linear(hidden_dim, hidden_dim)
        self.k_linear = nn.Linear(hidden_dim, hidden_dim)
        self.q_linear.init_scheme = self.k_linear.init_scheme = "attention_output"  # Xavier, zero bias

    def forward(
        self, queries: torch.Tensor, memory: torch.Tensor, feature_mask: torch.Tensor
    ) -> torch.Tensor:
        """queries [B, N, d], memory [B, h*w, d], feature_mask [B, h, w] (True = real) -> [B, N, heads, h, w]."""
        batch_size, num_queries, _ = queries.shape
        q = self.q_linear(queries).view(batch_size, num_queries, self.num_heads, self.head_dim)
        k = self.k_linear(memory).view(batch_size, -1, self.num_heads, self.head_dim)  # [B, hw, heads, hd]
        scores = torch.einsum("bqnc,bpnc->bqnp", q * self.head_dim**-0.5, k)  # [B, N, heads, hw]
        padding = ~feature_mask.flatten(1)[:, None, None, :]  # [B, 1, 1, hw]
        scores = scores.masked_fill(padding, float("-inf"))
        return scores.flatten(2).softmax(-1).view(*scores.shape[:3], *feature_mask.shape[1:])


class HfDetrMaskHead(nn.Module):
    """The official `MaskHeadSmallConv`: five 3x3 conv + GroupNorm + ReLU layers, the last three after
    nearest upsampling to the backbone's layer3, layer2 and layer1 maps (1x1 `adapter`s added, FPN
    style), then a 3x3 convolution to one mask logit per query, at stride 4."""

    def __init__(self, d_model: int, num_heads: int, fpn_channels: tuple[int, int, int]) -> None:
        super().__init__()
        widths = (d_model + num_heads, d_model // 2, d_model // 4, d_model // 8, d_model // 16)  # official
        self.d_model = d_model
        inputs = (widths[0], *widths[:-1])
        for index, (n_in, n_out) in enumerate(zip(inputs, widths), start=1):
            setattr(self, f"lay{index}", nn.Conv2d(n_in, n_out, 3, padding=1))
            # the official GroupNorm(8, C); for widths 8 does not divide (narrow models, e.g. d_model 128 with 4
            # heads: 132), the largest group count below 8 that divides C (C itself when C < 8)
            setattr(self, f"gn{index}", nn.GroupNorm(math.gcd(8, n_out), n_out))
        self.out_lay = nn.Conv2d(widths[-1], 1, 3, padding=1)
        for index, (n_in, n_out) in enumerate(zip(fpn_channels, widths[1:4]), start=1):
            setattr(self, f"adapter{index}", nn.Conv2d(n_in, n_out, 1))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.init_scheme = "mask_head"

    def _first_layer(self, features: torch.Tensor, attention_maps: torch.Tensor) -> torch.Tensor:
        """lay1 of cat(features repeated per query, attention maps), computed as the sum of its two
        parts: the feature part is convolved once per image instead of once per query."""
        weight = self.lay1.weight  # [C, d + heads, 3, 3]
        per_image = F.conv2d(features, weight[:, : self.d_model], self.lay1.bias, padding=1)  # [B, C, h, w]
        per_query = F.conv2d(
            attention_maps.flatten(0, 1), weight[:, self.d_model :], padding=1
        )  # [B*N, C, h, w]
        batch_size, num_queries = attention_maps.shape[:2]
        return (per_query.unflatten(0, (batch_size, num_queries)) + per_image[:, None]).flatten(0, 1)

    def forward(
        self, features: torch.Tensor, attention_maps: torch.Tensor, fpn_features: list[torch.Tensor]
    ) -> torch.Tensor:
        """features [B, d, h, w], attention_maps [B, N, heads, h, w], fpn_features the layer3, layer2,
        layer1 maps [B, C_i, H_i, W_i] -> mask logits [B, N, H_1, W_1]."""
        batch_size, num_queries = attention_maps.shape[:2]
        x = F.relu(self.gn1(self._first_layer(features, attention_maps)))  # [B*N, d + heads, h, w]
        x = F.relu(self.gn2(self.lay2(x)))  # [B*N, d/2, h, w]
        for index, fpn in enumerate(fpn_features, start=1):
            fpn = getattr(self, f"adapter{index}")(fpn)  # [B, C, H_i, W_i], once per image
            x = F.interpolate(x, size=fpn.shape[-2:], mode="nearest")
            x = (x.unflatten(0, (batch_size, num_queries)) + fpn[:, None]).flatten(0, 1)
            x = F.relu(getattr(self, f"gn{index + 2}")(getattr(self, f"lay{index + 2}")(x)))
        masks = self.out_lay(x)  # [B*N, 1, H/4, W/4]
        return masks.view(batch_size, num_queries, *masks.shape[-2:])


class HfDetrForSegmentation(HfDetrPreTrainedModel):
    """DETR with the panoptic mask head (paper section 4.4): `detr` (an [`HfDetrForObjectDetection`]),
    `bbox_attention` and `mask_head`; outputs `pred_masks` [B, N, H/4, W/4] beside the detector's.

    The config's `use_masks` must be on (it makes the backbone return its intermediate maps); a config
    without it is copied with `use_masks=True`. For the paper's two-stage training, start from a trained
    detector ([`from_detection_model`]) and call [`freeze_detector`] to train the mask head alone.
    """

    def __init__(self, config: HfDetrConfig) -> None:
        if not config.use_masks:
            config = copy.deepcopy(config)
            config.use_masks = True
            config.validate_detr_fields()
        super().__init__(config)
        self.detr = HfDetrForObjectDetection(config)
        heads = config.encoder_attention_heads
        fpn_channels = self.detr.model.backbone.stage_channels[-2::-1]  # layer3, layer2, layer1
        self.bbox_attention = HfDetrAttentionMap(config.d_model, heads)
        self.mask_head = HfDetrMaskHead(config.d_model, heads, fpn_channels)
        self.post_init()

    @classmethod
    def from_detection_model(cls, detector: HfDetrForObjectDetection) -> HfDetrForSegmentation:
        """A segmentation model whose detector is a copy of `detector` (its weights and config) and whose
        mask head is new: the start of the paper's second training stage."""
        if not isinstance(detector, HfDetrForObjectDetection):
            raise TypeError(f"`detector` must be an HfDetrForObjectDetection, got {type(detector).__name__}.")
        model = cls(copy.deepcopy(detector.config))  # with use_masks on
        model.detr.load_state_dict(detector.state_dict())
        return model.to(detector.device)

    def freeze_detector(self, freeze: bool = True) -> None:
        """Train only `bbox_attention` and `mask_head` (the official `--frozen_weights` stage), or with
        `freeze=False` the detector again (its frozen backbone stages stay frozen). Call it again after
        `from_pretrained`, which makes every loaded parameter trainable."""
        self.detr.requires_grad_(not freeze)
        self.detector_frozen = freeze
        self.train(self.training)  # a frozen detector's BatchNorm statistics stop updating too
        if not freeze:
            self.detr.model.backbone.freeze_stages()

    def train(self, mode: bool = True) -> HfDetrForSegmentation:
        """`nn.Module.train`; with the detector frozen its BatchNorm layers stay in evaluation mode,
        so their running statistics are frozen with the weights."""
        super().train(mode)
        if mode and getattr(self, "detector_frozen", False):
            for module in self.detr.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @per_image_inputs
    def forward(
        self,
        pixel_values: torch.Tensor | list[torch.Tensor],
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_auxiliary_outputs: bool | None = None,
        output_feature_mask: bool | None = None,
        **kwargs,
    ) -> HfDetrSegmentationOutput | tuple:
        """As [`HfDetrForObjectDetection.forward`]; `labels` also carry `masks` [n, H, W] (one binary mask
        per object, at the padded input resolution as the image processor returns them)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if output_auxiliary_outputs is None:
            output_auxiliary_outputs = self.config.auxiliary_loss and (self.training or labels is not None)
        scored_layers = labels is not None and self.config.auxiliary_loss
        detection = self.detr(
            pixel_values,
            pixel_mask=pixel_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            output_auxiliary_outputs=output_auxiliary_outputs or scored_layers,
        )
        pred_masks = self.predict_masks(detection)
        loss = loss_dict = None
        if labels is not None:
            loss, loss_dict = self.compute_loss(*self.scored_predictions(detection), labels, pred_masks)
        internal = {"backbone_features", "projected_features"}  # the mask head's inputs
        if not output_auxiliary_outputs:  # computed only to be scored
            internal.add("auxiliary_outputs")
        if not output_feature_mask:  # computed for the mask head
            internal.add("feature_mask")
        output = HfDetrSegmentationOutput(
            **{key: value for key, value in detection.items() if key not in internal},  # the detector's
            loss=loss,
            loss_dict=loss_dict,
            pred_masks=pred_masks,
        )
        return output if return_dict else output.to_tuple()

    def predict_masks(self, detection: HfDetrObjectDetectionOutput) -> torch.Tensor:
        """[B, N, H/4, W/4] mask logits from the detector's outputs (with `use_masks` they carry the
        backbone's intermediate maps and the projected last map)."""
        feature_mask = detection.feature_mask  # [B, h, w]
        attention_maps = self.bbox_attention(
            detection.last_hidden_state, detection.encoder_last_hidden_state, feature_mask
        )  # [B, N, heads, h, w]
        projected = detection.projected_features.transpose(1, 2)  # [B, d, h*w]
        projected = projected.unflatten(2, feature_mask.shape[1:])  # [B, d, h, w]
        fpn_features = list(reversed(detection.backbone_features))  # layer3, layer2, layer1
        return self.mask_head(projected, attention_maps, fpn_features)

    # the detector's loss methods: given outputs with `pred_masks`, the output layer's mask losses too
    compute_loss = HfDetrForObjectDetection.compute_loss
    loss_from_outputs = HfDetrForObjectDetection.loss_from_outputs
    scored_predictions = HfDetrForObjectDetection.scored_predictions

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`; a code-carrying checkpoint maps AutoConfig and
        AutoModelForImageSegmentation only (a detector's Auto classes would not fit its weights)."""
        auto_map = getattr(self.config, "auto_map", None) or {}
        self.config.auto_map = {k: v for k, v in auto_map.items() if k not in DETECTION_AUTO_CLASSES}
        return super(HfDetrPreTrainedModel, self).save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The official mask-head initialisation (Kaiming-uniform with a=1, zero bias); the rest (GroupNorms
        included) as the detector's."""
        if isinstance(module, nn.Conv2d) and getattr(module, "init_scheme", None) == "mask_head":
            init.kaiming_uniform_(module.weight, a=1)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)


__all__ = ["HfDetrForSegmentation", "HfDetrSegmentationOutput"]
