"""DETR's set-prediction loss (paper section 3.1): Hungarian matching, then CE + L1 + GIoU, and for the
segmentation model (section 4.4) sigmoid focal + DICE losses of the matched queries' masks.

All decoder layers are matched and scored together: the costs of every layer and image are built as
one [L, B, N, T] block (T = the batch's largest target count; padded targets are ignored), copied to
the host in a single device-to-host transfer, and solved with `scipy.optimize.linear_sum_assignment`
per layer and image. Validation of the labels (class ids in range, finite boxes) rides on the same
transfer, so a training step never waits on the device more than once. The losses of all layers are
then computed with batched ops.

Part of the self-contained "model files": only relative imports of the other model files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, sigmoid_focal_loss

from .configuration_detr import HfDetrConfig
from .validation_detr import (
    check_labels_on_host,
    check_pred_masks,
    checked_label_tensors,
    checked_mask_labels,
)

Labels = Sequence[Mapping[str, torch.Tensor]]


class NonFiniteMatchingCostError(FloatingPointError):
    """The Hungarian matching cost contains NaN or inf, almost always because training diverged."""


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """GIoU of (x0, y0, x1, y1) boxes that broadcast against each other: [..., 4] x [..., 4] -> [...].

    Pairwise use: `generalized_box_iou(a[:, None], b[None])` gives [N, M]. Unlike torchvision's
    `generalized_box_iou` (2-D inputs only) and `generalized_box_iou_loss` (boolean indexing, a device
    sync on GPU), this works on any batch shape without synchronising; `eps` keeps degenerate boxes
    (zero width or height) finite.
    """
    # coordinates as separate tensors: broadcasting them is much faster than a trailing dim of 4
    ax0, ay0, ax1, ay1 = boxes1.unbind(-1)
    bx0, by0, bx1, by1 = boxes2.unbind(-1)
    area1 = (ax1 - ax0) * (ay1 - ay0)
    area2 = (bx1 - bx0) * (by1 - by0)
    overlap_w = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0)
    overlap_h = (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp(min=0)
    intersection = overlap_w * overlap_h
    union = area1 + area2 - intersection
    enclosing_w = torch.maximum(ax1, bx1) - torch.minimum(ax0, bx0)
    enclosing_h = torch.maximum(ay1, by1) - torch.minimum(ay0, by0)
    enclosing_area = enclosing_w * enclosing_h
    return intersection / (union + eps) - (enclosing_area - union) / (enclosing_area + eps)


@dataclass
class PaddedTargets:
    """The labels of a batch padded to its largest target count T."""

    class_labels: torch.Tensor  # [B, T] long (clamped into range; validated on the host)
    boxes: torch.Tensor  # [B, T, 4] float32 cxcywh
    counts: list[int]  # T_b per image (host ints)
    raw_class_labels: torch.Tensor  # [B, T] float32, as given, for validation on the host


@dataclass
class Matches:
    """Matched (layer, image, query, target) quadruples for all decoder layers, on the device, ordered
    by layer: layer l's matches are entries `layer_starts[l]:layer_starts[l + 1]` (host ints)."""

    layer: torch.Tensor  # [M] long
    image: torch.Tensor  # [M] long
    query: torch.Tensor  # [M] long
    target: torch.Tensor  # [M] long
    num_layers: int
    layer_starts: tuple[int, ...] = ()

    def layer_slice(self, layer: int) -> slice:
        """The entries of one layer's matches (selected without waiting on the device)."""
        return slice(self.layer_starts[layer], self.layer_starts[layer + 1])


def pad_targets(labels: Labels, batch_size: int, num_queries: int, device: torch.device) -> PaddedTargets:
    """Check the structure of `labels` (host-side metadata only) and pad them into tensors on `device`."""
    checked = checked_label_tensors(labels, batch_size, num_queries)
    # non-blocking copies: a blocking host-to-device copy would wait for the queued forward pass
    class_labels = [ids.to(device, non_blocking=True) for ids, _ in checked]
    boxes = [box.to(device, torch.float32, non_blocking=True) for _, box in checked]
    counts = [len(ids) for ids in class_labels]
    raw = torch.nn.utils.rnn.pad_sequence([ids.float() for ids in class_labels], batch_first=True)
    # padding boxes are valid unit boxes, so the cost block holds no spurious NaN
    padded_boxes = torch.nn.utils.rnn.pad_sequence(boxes, batch_first=True, padding_value=0.5)
    return PaddedTargets(raw.long(), padded_boxes, counts, raw)


@dataclass
class HungarianMatcher:
    """Optimal one-to-one assignment of queries to targets (paper eq. 1, appendix A.1).

    cost = class_cost * (-p(target class)) + bbox_cost * L1(cxcywh) + giou_cost * (-GIoU).
    """

    class_cost: float = 1.0
    bbox_cost: float = 5.0
    giou_cost: float = 2.0

    def __post_init__(self) -> None:
        if self.class_cost == self.bbox_cost == self.giou_cost == 0:
            raise ValueError("At least one of class_cost, bbox_cost and giou_cost must be non-zero.")

    @torch.no_grad()
    def cost(self, logits: torch.Tensor, boxes: torch.Tensor, targets: PaddedTargets) -> torch.Tensor:
        """[L, B, N, K+1] logits and [L, B, N, 4] boxes -> [L, B, N, T] matching costs."""
        num_classes = logits.shape[-1] - 1
        probabilities = logits.softmax(-1)
        ids = targets.class_labels.clamp(0, num_classes - 1)  # out-of-range ids are reported on the host
        index = ids[None, :, None, :].expand(*probabilities.shape[:-1], ids.shape[-1])  # [L, B, N, T]
        class_cost = -probabilities.gather(-1, index)
        num_layers, batch_size, num_queries, _ = boxes.shape
        num_targets = targets.boxes.shape[1]
        l1_cost = torch.cdist(
            boxes.flatten(0, 1), targets.boxes.expand(num_layers, -1, -1, -1).flatten(0, 1), p=1
        ).view(num_layers, batch_size, num_queries, num_targets)
        giou = generalized_box_iou(
            box_convert(boxes[..., None, :], "cxcywh", "xyxy"),  # [L, B, N, 1, 4]
            box_convert(targets.boxes[None, :, None], "cxcywh", "xyxy"),  # [1, B, 1, T, 4]
        )
        return self.class_cost * class_cost + self.bbox_cost * l1_cost - self.giou_cost * giou

    @torch.no_grad()
    def __call__(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        targets: PaddedTargets,
        num_labels: int,
        repeats: Sequence[int] | None = None,
    ) -> Matches:
        """Match every decoder layer: logits [L, B, N, K+1], boxes [L, B, N, 4]. `repeats[l]` > 1 matches
        set l one-to-many: to its targets repeated that many times (H-DETR), so up to that many queries
        per target."""
        num_layers = logits.shape[0]
        device = logits.device
        if max(targets.counts, default=0) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return Matches(empty, empty, empty, empty, num_layers, (0,) * (num_layers + 1))

        cost = self.cost(logits, boxes, targets)  # [L, B, N, T]
        # the single device-to-host transfer of a training step: the costs and the labels to validate
        parts = (cost, targets.raw_class_labels, targets.boxes)
        host = torch.cat([part.flatten() for part in parts]).cpu().numpy()
        blocks = np.split(host, np.cumsum([part.numel() for part in parts[:-1]]))
        cost_np, raw_ids, boxes_np = (block.reshape(part.shape) for block, part in zip(blocks, parts))
        check_labels_on_host(raw_ids, boxes_np, targets.counts, num_labels)

        for image, count in enumerate(targets.counts):
            # an error path: further synchronisation is fine here
            if count and not np.isfinite(cost_np[:, image, :, :count]).all():
                raise NonFiniteMatchingCostError(_non_finite_cost_message(image, logits, boxes))

        matched, layer_starts = [], [0]  # [4, M_i] (layer, image, query, target) blocks; their offsets
        for layer in range(num_layers):  # layer-major, so each layer's matches are one slice
            for image, count in enumerate(targets.counts):
                if count == 0:
                    continue
                costs = cost_np[layer, image, :, :count]  # [N, T_b]
                if repeats is not None and repeats[layer] > 1:
                    costs = np.tile(costs, (1, repeats[layer]))  # [N, k*T_b]: target t is column t mod T_b
                rows, cols = linear_sum_assignment(costs)
                matched.append(
                    np.stack([np.full(len(rows), layer), np.full(len(rows), image), rows, cols % count])
                )
            layer_starts.append(sum(block.shape[1] for block in matched))
        flat = torch.as_tensor(np.concatenate(matched, axis=1).astype(np.int64))
        flat = flat.to(device, non_blocking=True)  # host-to-device, queued without waiting
        return Matches(flat[0], flat[1], flat[2], flat[3], num_layers, tuple(layer_starts))


def _non_finite_cost_message(image: int, logits: torch.Tensor, boxes: torch.Tensor) -> str:
    culprits = [
        name for name, tensor in (("logits", logits), ("pred_boxes", boxes)) if not tensor.isfinite().all()
    ]
    cause = (
        f"the model's {' and '.join(culprits)} contain NaN or inf"
        if culprits
        else "the costs overflowed although predictions and targets are finite"
    )
    return (
        f"The Hungarian matching cost of image {image} is not finite: {cause}. Training has probably "
        "diverged: lower the learning rate, keep gradient clipping on, or train in bf16/fp32 instead of fp16."
    )


def stack_target_masks(labels: Labels, counts: list[int], device: torch.device) -> torch.Tensor:
    """Every image's `masks` [n_b, H_b, W_b] zero-padded bottom-right to the batch's largest H and W (as
    the official `nested_tensor_from_tensor_list`) and concatenated: [sum n_b, H, W] float32 on `device`.

    Only host-side metadata is checked (the shapes), so nothing waits on the device."""
    masks = checked_mask_labels(labels, counts)
    if not masks:
        return torch.zeros((0, 1, 1), device=device)
    height = max(mask.shape[1] for mask in masks)
    width = max(mask.shape[2] for mask in masks)
    padded = [
        F.pad(
            mask.to(device, non_blocking=True).float(), (0, width - mask.shape[2], 0, height - mask.shape[1])
        )
        for mask in masks
    ]
    return torch.cat(padded)  # [sum n_b, H, W]


def mask_losses(
    mask_logits: torch.Tensor, target_masks: torch.Tensor, num_boxes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid focal loss (alpha 0.25, gamma 2; mean over pixels) and DICE loss (1 - (2|PT| + 1) /
    (|P| + |T| + 1)) of matched pairs, each summed over masks and divided by `num_boxes` (paper
    section 4.4). mask_logits [M, h, w] are upsampled bilinearly (align_corners=False) to the targets'
    [M, H, W] size first, as the official `loss_masks`."""
    upsampled = F.interpolate(
        mask_logits[:, None], size=target_masks.shape[-2:], mode="bilinear", align_corners=False
    )
    logits = upsampled.flatten(1)  # [M, H*W]
    targets = target_masks.flatten(1)  # [M, H*W]
    focal = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none").mean(1)  # [M]
    probabilities = logits.sigmoid()
    overlap = 2 * (probabilities * targets).sum(1)
    dice = 1 - (overlap + 1) / (probabilities.sum(1) + targets.sum(1) + 1)  # [M]
    return focal.sum() / num_boxes, dice.sum() / num_boxes


@dataclass
class ScoredSets:
    """Every scored set's losses ([S] each: loss_ce, loss_bbox, loss_giou, cardinality_error) and what
    they were computed from (the matches of all sets, their target classes [M], the padded targets, the
    box count per set)."""

    losses: dict[str, torch.Tensor]
    matches: Matches
    matched_classes: torch.Tensor
    targets: PaddedTargets
    num_boxes: torch.Tensor


@dataclass
class SetCriterion:
    """The DETR loss over all decoder layers (official `SetCriterion` with `aux_loss=True`).

    loss_ce: cross-entropy over all queries, no-object weighted by `eos_coefficient`;
    loss_bbox, loss_giou: L1 and 1 - GIoU of matched pairs, summed and divided by the number of target
    boxes (averaged over processes); cardinality_error: |#predicted objects - #targets| averaged over
    images (logged only); class_error: 100 - top-1 accuracy of the matched queries of the last layer
    (logged only). Auxiliary layers i = 0..L-2 get the suffix `_{i}`. `score_sets` scores any stack of
    query sets at once (training/query_groups.py scores Group DETR's groups with it).

    Given `pred_masks` (the segmentation model, paper section 4.4), the output layer's matched queries
    also get loss_mask (sigmoid focal) and loss_dice against the labels' `masks`; the auxiliary layers
    get no mask losses, as in the official code. The matching does not change.
    """

    num_labels: int
    matcher: HungarianMatcher
    eos_coefficient: float = 0.1
    class_loss_coefficient: float = 1.0
    bbox_loss_coefficient: float = 5.0
    giou_loss_coefficient: float = 2.0
    mask_loss_coefficient: float = 1.0
    dice_loss_coefficient: float = 1.0

    @classmethod
    def from_config(cls, config: HfDetrConfig) -> SetCriterion:
        """The criterion of `config`'s matcher costs and loss coefficients (its fields of the same names)."""
        matcher = HungarianMatcher(config.class_cost, config.bbox_cost, config.giou_cost)
        names = [field.name for field in fields(cls) if field.name.endswith("_coefficient")]
        return cls(config.num_labels, matcher, **{name: getattr(config, name) for name in names})

    @property
    def weights(self) -> dict[str, float]:
        """The weight of each loss term in the total."""
        return {
            "loss_ce": self.class_loss_coefficient,
            "loss_bbox": self.bbox_loss_coefficient,
            "loss_giou": self.giou_loss_coefficient,
            "loss_mask": self.mask_loss_coefficient,
            "loss_dice": self.dice_loss_coefficient,
        }

    def __call__(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        labels: Labels,
        pred_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """logits [L, B, N, K+1], boxes [L, B, N, 4] (all decoder layers, the last is the output);
        pred_masks [B, N, h, w] mask logits of the output layer (segmentation; `labels` then carry
        `masks` [n, H, W])."""
        if logits.ndim == 3:
            logits, boxes = logits[None], boxes[None]
        if pred_masks is not None:
            check_pred_masks(pred_masks, logits)
            pred_masks = pred_masks.float()
        with torch.autocast(device_type=logits.device.type, enabled=False):  # matching and loss in fp32
            logits, boxes = logits.float(), boxes.float()
            scored = self.score_sets(logits, boxes, labels)
            class_error = self.class_error(logits, scored, logits.shape[0] - 1)
            total, loss_dict = self.total(scored.losses, class_error)
            if pred_masks is not None:
                total = self.add_mask_losses(total, loss_dict, pred_masks, labels, scored)
        return total, loss_dict

    def score_sets(
        self, logits: torch.Tensor, boxes: torch.Tensor, labels: Labels, repeats: Sequence[int] | None = None
    ) -> ScoredSets:
        """Match every set of logits [S, B, N, K+1] and boxes [S, B, N, 4] at once (one host transfer)
        and score each; `repeats[s]` > 1 matches set s to the targets repeated that many times and
        divides its box losses by as many times the number of boxes."""
        if logits.shape[-1] != self.num_labels + 1:
            raise ValueError(
                f"logits have {logits.shape[-1]} classes but the loss expects num_labels + 1 = {self.num_labels + 1}."
            )
        _, batch_size, num_queries, _ = logits.shape  # [S, B, N, K+1]
        device = logits.device
        targets = pad_targets(labels, batch_size, num_queries, device)
        matches = self.matcher(logits, boxes, targets, self.num_labels, repeats)
        num_boxes = self.num_boxes(targets.counts, device)
        if repeats is not None and max(repeats) > 1:  # [S]: the repeated targets' count
            num_boxes = num_boxes * torch.tensor(repeats, dtype=torch.float32).to(device, non_blocking=True)
        matched_classes = targets.class_labels[matches.image, matches.target]  # [M]
        losses = {
            "loss_ce": self.loss_labels(logits, matches, matched_classes),
            **self.loss_boxes(boxes, targets, matches, num_boxes),
            "cardinality_error": self.loss_cardinality(logits, targets),
        }
        return ScoredSets(losses, matches, matched_classes, targets, num_boxes)

    def total(
        self, losses: dict[str, torch.Tensor], class_error: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted sum of the [L] loss terms of every layer, and every value named per layer."""
        weights = self.weights
        total = sum(weights[name] * value.sum() for name, value in losses.items() if name in weights)
        num_layers = len(losses["loss_ce"])
        loss_dict = {  # layer by layer: the output (last) layer's by name, auxiliary layer i's as name_{i}
            name if layer == num_layers - 1 else f"{name}_{layer}": values[layer]
            for layer in range(num_layers)
            for name, values in losses.items()
        }
        loss_dict["class_error"] = class_error
        return total, loss_dict

    def add_mask_losses(
        self,
        total: torch.Tensor,
        loss_dict: dict[str, torch.Tensor],
        pred_masks: torch.Tensor,
        labels: Labels,
        scored: ScoredSets,
    ) -> torch.Tensor:
        """`total` plus the weighted loss_mask and loss_dice of the output (last) layer's matched queries,
        which go into `loss_dict` too: pred_masks [B, N, h, w] against the labels' masks, selected without
        waiting on the device."""
        matches, counts, device = scored.matches, scored.targets.counts, pred_masks.device
        output_layer = matches.num_layers - 1
        selected = matches.layer_slice(output_layer)
        image, query, target = matches.image[selected], matches.query[selected], matches.target[selected]
        target_masks = stack_target_masks(labels, counts, device)  # [sum n_b, H, W]
        first_mask = torch.as_tensor(np.cumsum([0, *counts[:-1]])).to(device, non_blocking=True)  # [B]
        loss_mask, loss_dice = mask_losses(
            pred_masks[image, query], target_masks[first_mask[image] + target], scored.num_boxes
        )
        if selected.stop == selected.start:  # keep the mask head in the graph (DDP expects every gradient)
            loss_mask, loss_dice = (loss + 0 * pred_masks.sum() for loss in (loss_mask, loss_dice))
        loss_dict["loss_mask"], loss_dict["loss_dice"] = loss_mask, loss_dice
        total = total + self.weights["loss_mask"] * loss_mask
        return total + self.weights["loss_dice"] * loss_dice

    def loss_labels(
        self, logits: torch.Tensor, matches: Matches, matched_classes: torch.Tensor
    ) -> torch.Tensor:
        """[S] cross-entropy over all queries of each scored set: a matched query's target is its
        object's class (`matched_classes` [M]), the others' is no-object (index K), weighted by
        `eos_coefficient`."""
        num_sets, batch_size, num_queries, _ = logits.shape
        device = logits.device
        target_classes = torch.full((num_sets, batch_size, num_queries), self.num_labels, device=device)
        target_classes[matches.layer, matches.image, matches.query] = matched_classes
        # [K+1]: 1 for the classes, eos_coefficient for no-object (built on the device: assigning a
        # Python number to a CUDA tensor element waits for the device)
        class_weights = F.pad(torch.ones(self.num_labels, device=device), (0, 1), value=self.eos_coefficient)
        per_query = F.cross_entropy(
            logits.flatten(0, 2), target_classes.flatten(), weight=class_weights, reduction="none"
        ).view(num_sets, -1)
        # F.cross_entropy's weighted mean, per set
        return per_query.sum(1) / class_weights[target_classes].view(num_sets, -1).sum(1)

    @staticmethod
    def loss_boxes(
        boxes: torch.Tensor, targets: PaddedTargets, matches: Matches, num_boxes: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """loss_bbox and loss_giou [S]: L1 and 1 - GIoU of each set's matched pairs over `num_boxes`."""
        predicted = boxes[matches.layer, matches.image, matches.query]  # [M, 4]
        target_boxes = targets.boxes[matches.image, matches.target]  # [M, 4]
        l1 = (predicted - target_boxes).abs().sum(-1)
        giou = 1 - generalized_box_iou(
            box_convert(predicted, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
        )
        per_set = torch.zeros(boxes.shape[0], device=boxes.device)
        loss_bbox = per_set.index_add(0, matches.layer, l1) / num_boxes
        loss_giou = per_set.index_add(0, matches.layer, giou) / num_boxes
        if matches.layer.numel() == 0:  # keep the box head in the graph (DDP expects every gradient)
            loss_bbox, loss_giou = (loss + 0 * boxes.sum() for loss in (loss_bbox, loss_giou))
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    @torch.no_grad()
    def loss_cardinality(self, logits: torch.Tensor, targets: PaddedTargets) -> torch.Tensor:
        """[S] |#predicted objects - #targets| averaged over images (logged only)."""
        counts = torch.tensor(targets.counts, dtype=torch.float32).to(logits.device, non_blocking=True)
        predicted_objects = (logits.argmax(-1) != self.num_labels).sum(-1).float()  # [S, B]
        return (predicted_objects - counts).abs().mean(-1)

    @staticmethod
    @torch.no_grad()
    def class_error(logits: torch.Tensor, scored: ScoredSets, layer: int) -> torch.Tensor:
        """100 - top-1 accuracy of the matched queries of set `layer` (logged only), as a masked mean
        over all matches: selecting them with a boolean mask would wait for the device to count them."""
        matches = scored.matches
        if matches.layer.numel() == 0:
            return torch.full((), 100.0, device=logits.device)  # the official accuracy of nothing is 0
        selected = (matches.layer == layer).float()  # [M]
        matched_logits = logits[matches.layer, matches.image, matches.query]  # [M, K+1]
        hits = (matched_logits.argmax(-1) == scored.matched_classes).float()  # [M]
        return 100 - 100 * (hits * selected).sum() / selected.sum()

    @staticmethod
    def num_boxes(counts: list[int], device: torch.device) -> torch.Tensor:
        """Target boxes per process, averaged over processes and clamped to >= 1; stays on the device."""
        num_boxes = torch.tensor(float(sum(counts))).to(device, non_blocking=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_boxes)
            num_boxes = num_boxes / torch.distributed.get_world_size()
        return num_boxes.clamp(min=1)


__all__ = [
    "HungarianMatcher",
    "Matches",
    "NonFiniteMatchingCostError",
    "ScoredSets",
    "SetCriterion",
    "generalized_box_iou",
    "mask_losses",
    "pad_targets",
    "stack_target_masks",
]
