"""The DETR detector (Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020).

pixels -> ResNet backbone (timm, frozen BatchNorm) -> 1x1 projection -> post-norm transformer encoder
(2D sine positions added to queries and keys) -> decoder over learned object queries -> class and box
heads at every decoder layer.

Part of the self-contained "model files" (see configuration_detr.py).

Module names follow `transformers`' DETR (`input_projection`, `self_attn.q_proj`, `mlp.fc1`,
`final_layer_norm`, `class_labels_classifier`, ...), so a converted checkpoint reads familiarly; the
computation follows the official implementation.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_detr import HfDetrConfig, resolve_checkpoint
from .loss_detr import SetCriterion
from .validation_detr import check_model_inputs

# Stages of a torchvision/timm ResNet from the top down; `trainable_backbone_layers=k` trains the first k.
BACKBONE_STAGES_TOP_DOWN = ("layer4", "layer3", "layer2", "layer1", "conv1")
# Heads a detector may add to a base-model checkpoint (the only weights allowed to be missing)
DETECTION_HEAD_PREFIXES = ("class_labels_classifier.", "bbox_predictor.")
# Largest feature map side the learned position embedding covers (the official `nn.Embedding(50, d/2)`).
LEARNED_POSITION_MAX_SIZE = 50


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------
@dataclass
class HfDetrModelOutput(ModelOutput):
    """Output of [`HfDetrModel`]; its fields and their order (so `outputs[i]`, `len(outputs)` and
    `return_dict=False`) are those of transformers' `DetrModelOutput`, then hf_detr's own.

    last_hidden_state: [B, N, d] final decoder output (after the decoder's LayerNorm). In training with
        `num_query_groups` G > 1, every query dimension N here is G*N (group g: queries g*N..(g+1)*N-1).
    encoder_last_hidden_state: [B, H*W, d] encoder output ("memory").
    *_hidden_states / *_attentions: per-layer tuples when requested.
    intermediate_hidden_states: [L, B, N, d] every decoder layer's output after the decoder's
        LayerNorm (the last equals `last_hidden_state`); with `config.auxiliary_loss`, as transformers.
    feature_mask: [B, H, W] bool, True where the feature map covers real (unpadded) pixels; it gives the
        feature map size for reshaping attention maps. Only with `output_feature_mask=True` (or
        `config.use_masks`).
    backbone_features / projected_features: with `config.use_masks` only (the segmentation model's mask
        head): the backbone's layer1, layer2, layer3 maps (strides 4, 8, 16), and [B, H*W, d] the input
        projection of its last map (the encoder input).
    With `pixel_values` a list of images, fields of per-image size are lists (see `per_image_inputs`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    intermediate_hidden_states: torch.FloatTensor | None = None
    feature_mask: torch.BoolTensor | None = None
    backbone_features: tuple[torch.FloatTensor, ...] | None = None
    projected_features: torch.FloatTensor | None = None


@dataclass
class HfDetrObjectDetectionOutput(ModelOutput):
    """Output of [`HfDetrForObjectDetection`]; the fields of transformers' `DetrObjectDetectionOutput` in
    its order, then hf_detr's own (None unless asked for).

    loss: weighted sum of all loss terms (when `labels` are given).
    loss_dict: every loss component, auxiliary ones with suffix `_{i}`.
    logits: [B, N, K+1] class logits of the last decoder layer; index K is "no object" (G*N queries in
        training with `num_query_groups` G > 1, group 0 first).
    pred_boxes: [B, N, 4] normalized (cx, cy, w, h) boxes of the last decoder layer.
    pred_masks: the segmentation model's only (where transformers' `DetrSegmentationOutput` has it).
    auxiliary_outputs: one `{"logits", "pred_boxes"}` dict per decoder layer but the last (see `forward`).
    The other fields are [`HfDetrModelOutput`]'s.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    pred_masks: torch.FloatTensor | None = None
    auxiliary_outputs: list[dict[str, torch.Tensor]] | None = None
    last_hidden_state: torch.FloatTensor | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    feature_mask: torch.BoolTensor | None = None
    backbone_features: tuple[torch.FloatTensor, ...] | None = None
    projected_features: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------------
class HfDetrFoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A `FrozenBatchNorm2d` whose affine map is applied by the convolution before it
    ([`HfDetrConvFrozenBatchNorm2d`]); its own forward is the identity. Same buffers, same checkpoint keys.

    Folding saves two full passes over every backbone activation and changes results only by float
    rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # [C]
        return scale, self.bias - self.running_mean * scale


class HfDetrConvFrozenBatchNorm2d(nn.Conv2d):
    """A convolution followed by a frozen BatchNorm, computed as one: conv(x, W * s) + t.

    Gradients reach W as usual (through the scaling), so trainable stages with frozen BatchNorm (the
    paper's setting) fold too.
    """

    folded_norm: HfDetrFoldedFrozenBatchNorm2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.folded_norm.scale_and_shift()  # [C_out] each
        bias = shift if self.bias is None else shift + self.bias * scale
        return self._conv_forward(x, self.weight * scale[:, None, None, None], bias)


def fold_frozen_batch_norm(module: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d that directly follows a convolution into it; returns the count.

    Pairs are siblings named `convN`/`bnN` (timm and torchvision ResNet blocks and stem) and adjacent
    (Conv2d, FrozenBatchNorm2d) entries of a Sequential (the `downsample` shortcut).
    """
    pairs: list[tuple[nn.Module, nn.Module]] = []
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        pairs += itertools.pairwise(children.values())
    for name, child in children.items():
        match = re.fullmatch(r"conv(\d*)", name)
        if match and f"bn{match.group(1)}" in children:
            pairs.append((child, children[f"bn{match.group(1)}"]))
    folded = 0
    for conv, norm in pairs:
        if type(conv) is nn.Conv2d and type(norm) is FrozenBatchNorm2d:
            # the classes are swapped in place (the subclasses add methods, no state: the parameters,
            # buffers and checkpoint keys stay): timm's blocks call `self.conv1`/`self.bn1` by name, so
            # replacing the modules would need every block type
            norm.__class__ = HfDetrFoldedFrozenBatchNorm2d
            conv.__class__ = HfDetrConvFrozenBatchNorm2d
            conv.__dict__["folded_norm"] = norm  # a plain reference, not a registered submodule
            folded += 1
    return folded + sum(fold_frozen_batch_norm(child) for child in children.values())


class HfDetrBackbone(nn.Module):
    """A timm ResNet giving the last stage's feature map (stride 32, or 16 with `dilation`), the pixel
    mask resized to it, and with `config.use_masks` the maps of layer1, layer2 and layer3 (strides 4, 8,
    16) for the segmentation model's mask head (paper section 4.4). Which stages train, and with which
    BatchNorm, is the config's `trainable_backbone_layers` and `freeze_backbone_batch_norm`.
    """

    def __init__(self, config: HfDetrConfig) -> None:
        super().__init__()
        import timm
        from timm.layers import freeze_batch_norm_2d

        name = config.backbone
        # no download while transformers builds a model skeleton on the meta device (in `from_pretrained`)
        pretrained = config.use_pretrained_backbone and torch.empty(0).device.type != "meta"
        if pretrained and "." not in name:
            name = f"{name}.tv_in1k"  # the torchvision ImageNet weights the official DETR started from
        self.body = timm.create_model(
            name,
            pretrained=pretrained,
            features_only=True,
            out_indices=(1, 2, 3, 4) if config.use_masks else (4,),
            output_stride=16 if config.dilation else 32,
            in_chans=config.num_channels,
            # timm zeroes the last BN scale of each block by default; frozen, that would keep every
            # residual branch of a backbone built from scratch dead (torchvision does not do it either)
            zero_init_last=False,
        )
        # channels of the returned maps, the last stage's last: (C4,) or (C1, C2, C3, C4)
        self.stage_channels: tuple[int, ...] = tuple(self.body.feature_info.channels())

        # the stages that train, as torchvision's detection models choose them (5: the stem's bn1 too)
        layers = config.trainable_backbone_layers
        self.trainable_stages = (*BACKBONE_STAGES_TOP_DOWN[:layers], *(("bn1",) if layers == 5 else ()))
        for stage_name, stage in self.body.named_children():
            if stage_name not in self.trainable_stages or config.freeze_backbone_batch_norm:
                # torchvision's FrozenBatchNorm2d with the same statistics in place of every BatchNorm2d
                setattr(self.body, stage_name, freeze_batch_norm_2d(stage))
        self.freeze_stages()
        fold_frozen_batch_norm(self.body)
        # channels-last activations and weights are what oneDNN and cuDNN convolutions run fastest on
        # (contiguous weights are reordered at every call: slower training steps); `from_pretrained`
        # converts loaded weights again
        self.body.to(memory_format=torch.channels_last)
        # timm (or its pretrained weights) initialised the body: keep transformers' init away from it.
        for tensor in (*self.body.parameters(), *self.body.buffers()):
            tensor._is_hf_initialized = True

    def freeze_stages(self) -> None:
        """`requires_grad` on the trainable stages only (again after loading: transformers' loader
        replaces every parameter by a new one that requires gradients)."""
        for stage_name, stage in self.body.named_children():
            stage.requires_grad_(stage_name in self.trainable_stages)

    def forward(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """-> last map [B, C, h, w], its mask [B, h, w] (True = real pixel), earlier stages' maps (empty
        without `use_masks`)."""
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        *earlier, features = self.body(pixel_values)  # features: [B, C, H/32, W/32]
        # nearest-neighbour downsampling of the mask, as the official code does
        feature_mask = F.interpolate(pixel_mask[:, None].float(), size=features.shape[-2:])[:, 0]
        return features, feature_mask.bool(), tuple(earlier)


# --------------------------------------------------------------------------------------------------
# Position encodings
# --------------------------------------------------------------------------------------------------
class HfDetrSinePositionEmbedding(nn.Module):
    """Fixed 2D sine encoding over the unpadded pixels (paper section 3.2, appendix A.4).

    Cumulative sums of the mask count positions inside each image only, normalized to [0, 2*pi];
    half of the channels encode y, half x, interleaving sin and cos; output is cat(pos_y, pos_x).
    """

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.num_position_features = embedding_dim // 2

    def forward(self, feature_mask: torch.Tensor) -> torch.Tensor:
        eps = 1e-6
        real = feature_mask.float()  # [B, h, w]
        y_embed = real.cumsum(1)
        x_embed = real.cumsum(2)
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * (2 * math.pi)
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * (2 * math.pi)

        n = self.num_position_features
        dim_t = torch.arange(n, dtype=torch.float32, device=feature_mask.device)
        dim_t = 10000.0 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / n)  # [n]
        pos_x = x_embed[..., None] / dim_t  # [B, h, w, n]
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).flatten(1, 2)  # [B, h*w, d]


class HfDetrLearnedPositionEmbedding(nn.Module):
    """Learned absolute 2D encoding: a row and a column embedding table of 50 entries each."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.row_embeddings = nn.Embedding(LEARNED_POSITION_MAX_SIZE, embedding_dim // 2)
        self.column_embeddings = nn.Embedding(LEARNED_POSITION_MAX_SIZE, embedding_dim // 2)
        self.row_embeddings.init_scheme = self.column_embeddings.init_scheme = "uniform"

    def forward(self, feature_mask: torch.Tensor) -> torch.Tensor:
        batch_size, height, width = feature_mask.shape
        if max(height, width) > LEARNED_POSITION_MAX_SIZE:
            raise ValueError(
                f"The learned position embedding covers feature maps up to {LEARNED_POSITION_MAX_SIZE}x"
                f"{LEARNED_POSITION_MAX_SIZE}, got {height}x{width}; use smaller images or "
                "position_embedding_type='sine'."
            )
        device = feature_mask.device
        x_emb = self.column_embeddings(torch.arange(width, device=device))  # [w, d/2]
        y_emb = self.row_embeddings(torch.arange(height, device=device))  # [h, d/2]
        pos = torch.cat(
            (x_emb[None, :, :].expand(height, -1, -1), y_emb[:, None, :].expand(-1, width, -1)), dim=-1
        )  # [h, w, d]
        return pos.flatten(0, 1)[None].expand(batch_size, -1, -1)  # [B, h*w, d]


POSITION_EMBEDDINGS = {"sine": HfDetrSinePositionEmbedding, "learned": HfDetrLearnedPositionEmbedding}


# --------------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------------
class HfDetrAttention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention`.

    Callers add position encodings to the query and key inputs, never to the value input.
    `key_mask` is boolean [B, 1, 1, Lk] with True = attend (SDPA's polarity, the opposite of
    `nn.MultiheadAttention`'s `key_padding_mask`).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        for projection in (self.q_proj, self.k_proj, self.v_proj):
            projection.init_scheme = "attention_input"
        self.out_proj.init_scheme = "attention_output"

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, length, _ = x.shape
        return x.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, L, hd]

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, query_length, embed_dim = query.shape
        q = self._split_heads(self.q_proj(query))  # [B, h, Lq, hd]
        k = self._split_heads(self.k_proj(key))  # [B, h, Lk, hd]
        v = self._split_heads(self.v_proj(value))  # [B, h, Lk, hd]
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # [B, h, Lq, Lk]
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p=dropout, training=self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch_size, query_length, embed_dim)  # [B, Lq, d]
        return self.out_proj(out), weights


class HfDetrFeedForward(nn.Module):
    """The position-wise FFN of a transformer layer: fc2(dropout(activation(fc1(x))))."""

    def __init__(self, config: HfDetrConfig, ffn_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, config.d_model)
        self.fc1.init_scheme = self.fc2.init_scheme = "xavier"
        self.activation = getattr(F, config.activation_function)
        self.activation_dropout = config.activation_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.dropout(self.activation(self.fc1(x)), self.activation_dropout, self.training)
        return self.fc2(hidden)


def _add_and_norm(
    layer: nn.Module, norm: nn.Module, hidden: torch.Tensor, update: torch.Tensor
) -> torch.Tensor:
    """A post-norm residual step of `layer`: norm(hidden + dropout(update))."""
    return norm(hidden + F.dropout(update, layer.dropout, layer.training))


class HfDetrEncoderLayer(nn.Module):
    """Post-norm encoder layer: self-attention with positions on q and k, then the FFN."""

    def __init__(self, config: HfDetrConfig) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = HfDetrAttention(d, config.encoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.mlp = HfDetrFeedForward(config, config.encoder_ffn_dim)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = config.dropout

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: torch.Tensor,
        key_mask: torch.Tensor | None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query_key = hidden_states + position_embeddings  # [B, HW, d]
        attended, weights = self.self_attn(query_key, query_key, hidden_states, key_mask, need_weights)
        hidden_states = _add_and_norm(self, self.self_attn_layer_norm, hidden_states, attended)
        return _add_and_norm(self, self.final_layer_norm, hidden_states, self.mlp(hidden_states)), weights


class HfDetrDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention among queries (query positions on q and k),
    cross-attention to the encoder memory (query positions on q, spatial positions on k), then FFN."""

    def __init__(self, config: HfDetrConfig) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = HfDetrAttention(d, config.decoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = HfDetrAttention(d, config.decoder_attention_heads, config.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.mlp = HfDetrFeedForward(config, config.decoder_ffn_dim)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = config.dropout

    def forward(
        self,
        hidden_states: torch.Tensor,
        query_position_embeddings: torch.Tensor,
        memory: torch.Tensor,
        memory_with_positions: torch.Tensor,
        memory_mask: torch.Tensor | None,
        need_weights: bool = False,
        num_groups: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """`num_groups` > 1 (Group DETR training): the G*N queries self-attend within their group of N
        only; self-attention weights then come as [B*G, heads, N, N]."""
        batch_size, num_queries, d = hidden_states.shape
        by_group = (batch_size * num_groups, num_queries // num_groups, d)  # [B*G, N, d]: groups as batch
        query_key = (hidden_states + query_position_embeddings).reshape(by_group)
        attended, self_weights = self.self_attn(
            query_key, query_key, hidden_states.reshape(by_group), None, need_weights
        )
        attended = attended.reshape(batch_size, num_queries, d)  # [B, G*N, d]
        hidden_states = _add_and_norm(self, self.self_attn_layer_norm, hidden_states, attended)
        attended, cross_weights = self.encoder_attn(
            hidden_states + query_position_embeddings,
            memory_with_positions,
            memory,
            memory_mask,
            need_weights,
        )
        hidden_states = _add_and_norm(self, self.encoder_attn_layer_norm, hidden_states, attended)
        hidden_states = _add_and_norm(self, self.final_layer_norm, hidden_states, self.mlp(hidden_states))
        return hidden_states, self_weights, cross_weights


class HfDetrEncoder(nn.Module):
    """A stack of encoder layers (no final norm, as the official post-norm encoder)."""

    def __init__(self, config: HfDetrConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(HfDetrEncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: torch.Tensor,
        key_mask: torch.Tensor | None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, position_embeddings, key_mask, output_attentions)
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, all_hidden, all_attentions


class HfDetrDecoder(nn.Module):
    """A stack of decoder layers with a shared final LayerNorm applied to every layer's output.

    As in the official code, the LayerNorm'd outputs feed the heads (auxiliary decoding losses,
    paper section 3.2) while the next layer receives the un-normalized output.
    """

    def __init__(self, config: HfDetrConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(HfDetrDecoderLayer(config) for _ in range(config.decoder_layers))
        self.layernorm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        query_position_embeddings: torch.Tensor,
        memory: torch.Tensor,
        memory_positions: torch.Tensor,
        memory_mask: torch.Tensor | None,
        return_intermediate: bool,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        num_groups: int = 1,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None, tuple | None]:
        hidden_states = torch.zeros_like(query_position_embeddings)  # [B, G*N, d], paper: decoder input 0
        memory_with_positions = memory + memory_positions  # [B, HW, d], the same keys for every layer
        states = [hidden_states]  # the input and every layer's output
        attentions = []  # every layer's (self-attention, cross-attention) weights: None unless asked for
        for layer in self.layers:
            hidden_states, *weights = layer(
                hidden_states,
                query_position_embeddings,
                memory,
                memory_with_positions,
                memory_mask,
                output_attentions,
                num_groups,
            )
            states.append(hidden_states)
            attentions.append(weights)
        # [L or 1, B, N, d]: every layer's output, or the last one's
        normalized = self.layernorm(torch.stack(states[1:] if return_intermediate else states[-1:]))
        self_attentions, cross_attentions = tuple(zip(*attentions)) if output_attentions else (None, None)
        return normalized, tuple(states) if output_hidden_states else None, self_attentions, cross_attentions


class HfDetrMLPPredictionHead(nn.Module):
    """The box head: a 3-layer perceptron with ReLU (the paper's FFN for boxes)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip(dims, [*dims[1:], output_dim])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


# --------------------------------------------------------------------------------------------------
# Pretrained-model plumbing
# --------------------------------------------------------------------------------------------------
class HfDetrPreTrainedModel(PreTrainedModel):
    config: HfDetrConfig
    config_class = HfDetrConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["HfDetrBackbone", "HfDetrEncoderLayer", "HfDetrDecoderLayer"]
    _supports_sdpa = True
    # `forward` takes `pixel_values` as a list of per-image tensors too (`per_image_inputs`); the image
    # processor reads this to give a transformers pipeline such lists, which its collate keeps per image
    accepts_image_lists = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`, stricter about what it loads.

        Weights are read from safetensors only (nothing is unpickled) unless `use_safetensors=False` is
        passed; weights missing from the checkpoint are an error instead of a random initialisation,
        except the detection heads when a detector is built from a base-model checkpoint. Wrong shapes
        are an error unless `ignore_mismatched_sizes=True` (e.g. a new number of classes). Checkpoints of
        other formats load too where the config class's `checkpoint_resolver` converts them (the hf_detr
        package installs one for transformers' DETR checkpoints and the official .pth files).
        """
        pretrained_model_name_or_path, kwargs = resolve_checkpoint(
            cls.config_class, pretrained_model_name_or_path, kwargs
        )
        kwargs.setdefault("use_safetensors", True)
        # transformers kernelizes every model when the `kernels` package is installed; DETR's layers have
        # no hub kernels, and a checkpoint lacking weights (left on the meta device) would fail there
        # ("Unsupported device type 'meta'") before the check below can name them
        kwargs.setdefault("use_kernels", False)
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
        )
        # transformers 5 leaves some absent weights (the timm backbone's) on the meta device unreported
        on_meta = {name for name, tensor in model.state_dict().items() if tensor.is_meta}
        missing = sorted(
            k
            for k in set(loading_info["missing_keys"]) | on_meta
            if not k.startswith(DETECTION_HEAD_PREFIXES)
            and not k.endswith("num_batches_tracked")  # frozen BatchNorm made trainable has none
        )
        if missing:
            shown = ", ".join(missing[:10]) + (
                f", ... ({len(missing) - 10} more)" if len(missing) > 10 else ""
            )
            raise ValueError(
                f"{pretrained_model_name_or_path} lacks {len(missing)} weight(s) of {cls.__name__}: {shown}. "
                "The checkpoint does not match its config.json."
            )
        for module in model.modules():
            if isinstance(module, HfDetrBackbone):
                module.freeze_stages()
                module.body.to(memory_format=torch.channels_last)  # the loader made them contiguous
        return (model, loading_info) if output_loading_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`; code-carrying checkpoints also map `AutoModel` to the base
        model."""
        if self._auto_class is not None:
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": "modeling_detr.HfDetrModel",
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The official initialisation: PyTorch defaults, Xavier-uniform transformer matrices.

        transformers initialises leaf modules (for remote code it skips modules without direct
        parameters), so the transformer's layers tag their leaves with an `init_scheme`. The backbone
        keeps timm's own initialisation (or its pretrained weights): its tensors are marked
        initialised when it is built.
        """
        scheme = getattr(module, "init_scheme", None)
        if isinstance(module, nn.Linear) and scheme == "attention_input":
            # the official nn.MultiheadAttention holds q, k, v as one [3d, d] matrix initialised by
            # xavier_uniform: its bound uses fan_in + fan_out = d + 3d
            bound = math.sqrt(6.0 / (module.in_features + 3 * module.out_features))
            init.uniform_(module.weight, -bound, bound)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and scheme == "attention_output":
            init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and scheme == "xavier":
            init.xavier_uniform_(module.weight)
            _default_bias_init(module)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            # PyTorch's default (reset_parameters), which the official heads and projection keep
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            _default_bias_init(module)
        elif isinstance(module, nn.Embedding):
            if scheme == "uniform":  # learned position embeddings
                init.uniform_(module.weight)
            else:
                init.normal_(module.weight)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, FrozenBatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)


def _default_bias_init(module: nn.Linear | nn.Conv2d) -> None:
    if module.bias is not None:
        fan_in = module.weight[0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        init.uniform_(module.bias, -bound, bound)


# --------------------------------------------------------------------------------------------------
# Per-image inputs: images of different sizes, unpadded
# --------------------------------------------------------------------------------------------------
# output fields whose batch dimension is not the first ([L, B, N, d])
OUTPUT_BATCH_DIMS = {"intermediate_hidden_states": 1}


def per_image_inputs(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator of the models' `forward`: `pixel_values` may also be a list of per-image [C, H, W]
    tensors (what HfDetrImageProcessor returns without padding, and for a transformers pipeline).

    Images of one size run as one batch, without padding or mask; the outputs come back in input order,
    so each image gets what it gets alone (padding would change the backbone's features near the pad
    edge). Output fields whose shape depends on the image size (`pred_masks`, the encoder's states and
    attentions, `feature_mask`, ...) are then lists of per-image tensors, without the batch dimension."""
    signature = inspect.signature(forward)

    @functools.wraps(forward)
    def wrapper(self: HfDetrPreTrainedModel, pixel_values: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(pixel_values, (list, tuple)):
            return forward(self, pixel_values, *args, **kwargs)
        arguments = signature.bind(self, pixel_values, *args, **kwargs).arguments
        del arguments["self"]
        arguments.update(arguments.pop("kwargs", {}))  # the forward's own **kwargs
        return _forward_by_size(forward, self, _image_list(arguments.pop("pixel_values")), arguments)

    return wrapper


def _image_list(pixel_values: list | tuple) -> list[torch.Tensor]:
    """A (nested) list of [C, H, W] or [B, C, H, W] tensors -> a flat list of [C, H, W] tensors. (A
    transformers pipeline collates each image's one-tensor list into a list of such lists.)"""
    images = []
    for item in pixel_values:
        if isinstance(item, (list, tuple)):
            images += _image_list(item)
        elif isinstance(item, torch.Tensor) and item.ndim in (3, 4):
            images += list(item.unbind(0)) if item.ndim == 4 else [item]
        else:
            shape = list(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
            raise ValueError(
                f"`pixel_values` given as a list must hold one [channels, height, width] tensor per image, "
                f"got an item {shape}."
            )
    if not images:
        raise ValueError("`pixel_values` is an empty list: pass at least one image.")
    return images


def _forward_by_size(
    forward: Callable[..., Any],
    model: HfDetrPreTrainedModel,
    images: list[torch.Tensor],
    arguments: dict[str, Any],
) -> ModelOutput | tuple:
    """`forward` once per group of equal-size images (a [G, C, H, W] batch each), merged in input order."""
    for name in ("pixel_mask", "labels"):
        if arguments.get(name) is not None:
            raise ValueError(
                f"`{name}` cannot go with `pixel_values` as a list of per-image tensors (each image is used "
                "whole, at its own size): pad the images into one tensor (HfDetrImageProcessor with "
                "do_pad=True) to pass it."
            )
    return_dict = arguments.get("return_dict")
    return_dict = model.config.return_dict if return_dict is None else return_dict
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(index)
    outputs = []
    for indices in groups.values():
        batch = images[indices[0]][None] if len(indices) == 1 else torch.stack([images[i] for i in indices])
        outputs.append(forward(model, batch, **{**arguments, "return_dict": True}))  # batch: [G, C, H, W]
    merged = outputs[0]
    if len(outputs) > 1:  # one output of all images, in input order
        order = [index for indices in groups.values() for index in indices]  # input indices, group by group
        position = sorted(range(len(order)), key=order.__getitem__)  # position[input index]: place in order
        fields = {}
        for name in merged:  # the fields that are not None
            values = [output[name] for output in outputs]
            fields[name] = _merge_field(values, position, OUTPUT_BATCH_DIMS.get(name, 0))
        merged = type(merged)(**fields)
    return merged if return_dict else merged.to_tuple()


def _merge_field(values: list[Any], position: list[int], batch_dim: int = 0) -> Any:
    """One output field of every group -> the field of all images: a tensor where every image's part
    has one shape, else a list of per-image tensors; per-layer tuples and lists, and dicts, field-wise."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        parts = [part for value in values for part in value.unbind(batch_dim)]  # one per image
        if len({part.shape for part in parts}) == 1:
            return torch.stack([parts[p] for p in position], batch_dim)
        return [parts[p] for p in position]
    if isinstance(first, (list, tuple)):
        return type(first)(_merge_field(list(layer), position, batch_dim) for layer in zip(*values))
    if isinstance(first, Mapping):
        return {key: _merge_field([value[key] for value in values], position, batch_dim) for key in first}
    raise TypeError(f"Cannot merge an output field of type {type(first).__name__} over image groups.")


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
class HfDetrModel(HfDetrPreTrainedModel):
    """Backbone, input projection, position encodings, encoder and decoder, without heads."""

    def __init__(self, config: HfDetrConfig) -> None:
        super().__init__(config)
        self.backbone = HfDetrBackbone(config)
        self.input_projection = nn.Conv2d(self.backbone.stage_channels[-1], config.d_model, kernel_size=1)
        self.position_embedding = POSITION_EMBEDDINGS[config.position_embedding_type](config.d_model)
        # Group DETR training: num_query_groups groups of num_queries rows; group 0 comes first
        self.query_position_embeddings = nn.Embedding(
            config.num_queries * config.num_query_groups, config.d_model
        )
        self.encoder = HfDetrEncoder(config)
        self.decoder = HfDetrDecoder(config)
        self.post_init()

    @per_image_inputs
    def forward(
        self,
        pixel_values: torch.Tensor | list[torch.Tensor],
        pixel_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        return_intermediate: bool | None = None,
        output_feature_mask: bool | None = None,
        **kwargs,
    ) -> HfDetrModelOutput | tuple:
        """pixel_values: [B, C, H, W] normalized images; pixel_mask: [B, H, W], 1 = real pixel, 0 = padding.
        `pixel_values` may also be a list of [C, H, W] tensors, batched by size (`per_image_inputs`).
        `return_intermediate` (default `config.auxiliary_loss`) returns every decoder layer's output;
        `output_feature_mask` (default `config.use_masks`) the feature map's mask of real pixels."""
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = config.return_dict if return_dict is None else return_dict
        return_intermediate = config.auxiliary_loss if return_intermediate is None else return_intermediate
        output_feature_mask = config.use_masks if output_feature_mask is None else output_feature_mask
        flags = dict(
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            return_intermediate=return_intermediate,
            output_feature_mask=output_feature_mask,
        )
        stride = self.backbone.body.feature_info.reduction()[-1]  # 32, or 16 with dilation
        check_model_inputs(pixel_values, pixel_mask, config.num_channels, self.backbone, stride, flags)

        # the weights' dtype (fp32 images into a bf16 model, say) unless autocast already manages dtypes
        if not torch.is_autocast_enabled(pixel_values.device.type):
            pixel_values = pixel_values.to(self.input_projection.weight.dtype)
        batch_size, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones((batch_size, height, width), dtype=torch.bool, device=pixel_values.device)
        # [B, C, h, w], [B, h, w], and with use_masks the stride-4, 8, 16 maps
        features, feature_mask, backbone_features = self.backbone(pixel_values, pixel_mask)
        projected = self.input_projection(features).flatten(2).transpose(1, 2)  # [B, h*w, d]
        positions = self.position_embedding(feature_mask).to(projected.dtype)  # [B, h*w, d]
        key_mask = feature_mask.flatten(1)[:, None, None, :]  # [B, 1, 1, h*w], True = attend
        # SDPA's unmasked fast path where all is real and reading that costs no device-to-host sync (eager
        # CPU tensors; a graph traced by torch.compile or torch.export keeps the masked path for every input)
        if not torch.compiler.is_compiling() and key_mask.device.type == "cpu" and bool(key_mask.all()):
            key_mask = None

        memory, encoder_hidden, encoder_attentions = self.encoder(
            projected, positions, key_mask, output_attentions, output_hidden_states
        )
        num_groups = config.num_query_groups if self.training else 1  # evaluation: group 0 only
        query_positions = self.query_position_embeddings.weight[: num_groups * config.num_queries]
        query_positions = query_positions.to(memory.dtype)[None].expand(batch_size, -1, -1)  # [B, G*N, d]
        decoded, decoder_hidden, self_attentions, cross_attentions = self.decoder(
            query_positions,
            memory,
            positions,
            key_mask,
            return_intermediate,
            output_attentions,
            output_hidden_states,
            num_groups,
        )  # decoded: [L or 1, B, G*N, d]

        output = HfDetrModelOutput(
            last_hidden_state=decoded[-1],
            decoder_hidden_states=decoder_hidden,
            decoder_attentions=self_attentions,
            cross_attentions=cross_attentions,
            encoder_last_hidden_state=memory,
            encoder_hidden_states=encoder_hidden,
            encoder_attentions=encoder_attentions,
            intermediate_hidden_states=decoded if return_intermediate else None,
            feature_mask=feature_mask if output_feature_mask else None,
            backbone_features=backbone_features if config.use_masks else None,
            projected_features=projected if config.use_masks else None,
        )
        return output if return_dict else output.to_tuple()


class HfDetrForObjectDetection(HfDetrPreTrainedModel):
    """DETR with its class head (K+1 logits, the last is "no object") and 3-layer box head."""

    def __init__(self, config: HfDetrConfig) -> None:
        super().__init__(config)
        self.model = HfDetrModel(config)
        self.class_labels_classifier = nn.Linear(config.d_model, config.num_labels + 1)
        self.bbox_predictor = HfDetrMLPPredictionHead(config.d_model, config.d_model, 4, num_layers=3)
        self.post_init()

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
    ) -> HfDetrObjectDetectionOutput | tuple:
        """pixel_values, pixel_mask, output_feature_mask: as [`HfDetrModel.forward`]'s (a list of images
        goes without `pixel_mask` and `labels`); labels: one dict per image with `class_labels` [n] and
        `boxes` [n, 4] in (cx, cy, w, h) normalized by the unpadded image size. With labels, `loss` and
        `loss_dict` hold the set-prediction loss of every decoder layer (only the last one when
        `config.auxiliary_loss` is off).

        `output_auxiliary_outputs` (default: `config.auxiliary_loss` while training or given labels)
        also returns every other decoder layer's predictions. Inference leaves them out by default, as
        transformers' DETR does: a per-layer list is no per-image output a pipeline could split."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if output_auxiliary_outputs is None:
            output_auxiliary_outputs = self.config.auxiliary_loss and (self.training or labels is not None)
        layers_to_score = output_auxiliary_outputs or (labels is not None and self.config.auxiliary_loss)
        outputs = self.model(
            pixel_values,
            pixel_mask=pixel_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            return_intermediate=layers_to_score,
            output_feature_mask=output_feature_mask,
        )
        decoded = outputs.intermediate_hidden_states if layers_to_score else outputs.last_hidden_state[None]
        # heads on all decoder layers at once: [L, B, N, K+1] and [L, B, N, 4]
        all_logits = self.class_labels_classifier(decoded)
        all_boxes = self.bbox_predictor(decoded).sigmoid()
        auxiliary_outputs = None
        if output_auxiliary_outputs:
            auxiliary_outputs = [
                {"logits": logits, "pred_boxes": boxes}
                for logits, boxes in zip(all_logits[:-1], all_boxes[:-1])
            ]

        loss = loss_dict = None
        if labels is not None:
            scored = slice(None) if self.config.auxiliary_loss else slice(-1, None)
            loss, loss_dict = self.compute_loss(all_logits[scored], all_boxes[scored], labels)

        output = HfDetrObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=all_logits[-1],
            pred_boxes=all_boxes[-1],
            auxiliary_outputs=auxiliary_outputs,
            # the base model's fields (those not None) but the decoder's stacked layers
            **{key: value for key, value in outputs.items() if key != "intermediate_hidden_states"},
        )
        return output if return_dict else output.to_tuple()

    def compute_loss(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        labels: list[dict[str, torch.Tensor]],
        pred_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The set-prediction loss of [L, B, N, K+1] logits and [L, B, N, 4] boxes (all scored layers,
        the last one being the output) against `labels`, plus with `pred_masks` [B, N, h, w] (the
        segmentation model's) the output layer's mask losses. The G*N queries of training with query
        groups are scored by the training loop's `GroupedCriterion` (hf_detr.training.query_groups)."""
        if logits.shape[2] != self.config.num_queries:
            raise ValueError(
                f"The model ran {logits.shape[2] // self.config.num_queries} query groups (Group DETR training); "
                "their loss is hf_detr.training's GroupedCriterion (hf-detr-train uses it). Call the model "
                "without labels and score its outputs with it, or set num_query_groups=1."
            )
        return SetCriterion.from_config(self.config)(logits, boxes, labels, pred_masks=pred_masks)

    def loss_from_outputs(
        self, outputs: HfDetrObjectDetectionOutput, labels: list[dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of outputs computed without labels (e.g. by a training loop that handles failures)."""
        return self.compute_loss(
            *self.scored_predictions(outputs), labels, getattr(outputs, "pred_masks", None)
        )

    def scored_predictions(self, outputs: HfDetrObjectDetectionOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """The [L, B, N, K+1] logits and [L, B, N, 4] boxes the loss scores: every decoder layer's with
        `config.auxiliary_loss`, else the output layer's (L = 1)."""
        auxiliary = (outputs.auxiliary_outputs or []) if self.config.auxiliary_loss else []
        logits, boxes = outputs.logits, outputs.pred_boxes
        if not auxiliary:
            return logits[None], boxes[None]  # views, no copy
        # `forward` computes every layer's heads as one [L, B, N, ...] tensor and returns views of it:
        # score that tensor itself rather than a copy (stacking, and splitting its gradient, costs ~5 ms
        # a CPU step). Outputs rebuilt elsewhere (merged per-image outputs, fp32 conversion) are stacked.
        logits_layers = [*(a["logits"] for a in auxiliary), logits]
        boxes_layers = [*(a["pred_boxes"] for a in auxiliary), boxes]
        return _stacked(logits_layers), _stacked(boxes_layers)


def _stacked(layers: list[torch.Tensor]) -> torch.Tensor:
    """[L, ...]: a view of the one tensor whose consecutive parts `layers` are (in order), else a stack."""
    root, size = layers[-1]._base, layers[-1].numel()
    if root is not None and root.is_contiguous() and root.numel() == len(layers) * size:
        stacked = root.view(len(layers), *layers[-1].shape)
        if all(layer.is_set_to(part) for layer, part in zip(layers, stacked)):
            return stacked
    return torch.stack(layers)


__all__ = [
    "HfDetrForObjectDetection",
    "HfDetrModel",
    "HfDetrModelOutput",
    "HfDetrObjectDetectionOutput",
    "HfDetrPreTrainedModel",
]
