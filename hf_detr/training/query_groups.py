"""Group DETR's query groups in training (Chen et al., ICCV 2023) and H-DETR's hybrid matching (Jia et
al., CVPR 2023): the extra groups a model trains with, and their loss around the plain `SetCriterion`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..loss_detr import SetCriterion
from ..modeling_detr import HfDetrForObjectDetection


@torch.no_grad()
def set_query_groups(model: HfDetrForObjectDetection, num_groups: int) -> HfDetrForObjectDetection:
    """Give `model` `num_groups` query groups, keeping the existing groups' queries (group 0 first);
    new groups start as `nn.Embedding` initialises them. Fewer groups drop the last ones."""
    config = model.config
    old = model.model.query_position_embeddings
    new = nn.Embedding(config.num_queries * num_groups, config.d_model).to(
        old.weight.device, old.weight.dtype
    )
    kept = min(old.num_embeddings, new.num_embeddings)
    new.weight[:kept] = old.weight[:kept]
    new.weight.requires_grad_(old.weight.requires_grad)
    model.model.query_position_embeddings = new
    config.num_query_groups = num_groups
    return model


def groups_as_layers(tensor: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[L, B, G*N, C] -> [G*L, B, N, C], set g*L + l holding group g of layer l."""
    num_layers, batch_size, total_queries, channels = tensor.shape
    if total_queries % num_groups:
        raise ValueError(f"{total_queries} queries cannot form {num_groups} groups of equal size.")
    grouped = tensor.view(num_layers, batch_size, num_groups, total_queries // num_groups, channels)
    return grouped.permute(2, 0, 1, 3, 4).flatten(0, 1)


class GroupedCriterion:
    """The loss of G query groups: each group matched and scored on its own, as if it were another
    decoder layer (so all of them still cross to the host in one transfer), each loss the mean over
    groups; the logged errors are group 0's (the group evaluation runs). With `one_to_many_repeats` k > 1
    the groups after group 0 are matched to the targets repeated k times (H-DETR's hybrid matching) and
    their box losses divided by k times the number of boxes."""

    def __init__(self, criterion: SetCriterion, num_groups: int, one_to_many_repeats: int = 1) -> None:
        if one_to_many_repeats > 1 and num_groups < 2:
            raise ValueError(
                "one_to_many_repeats > 1 matches the groups after the first: use 2 or more groups."
            )
        self.criterion = criterion
        self.num_groups = num_groups
        self.one_to_many_repeats = one_to_many_repeats

    def __call__(
        self, logits: torch.Tensor, boxes: torch.Tensor, labels: Sequence[Mapping[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """logits [L, B, G*N, K+1], boxes [L, B, G*N, 4] (all decoder layers, group 0 first)."""
        num_layers = logits.shape[0]
        with torch.autocast(device_type=logits.device.type, enabled=False):  # matching and loss in fp32
            sets_logits = groups_as_layers(logits.float(), self.num_groups)  # [G*L, B, N, K+1]
            sets_boxes = groups_as_layers(boxes.float(), self.num_groups)
            repeats = [1] * num_layers + [self.one_to_many_repeats] * (len(sets_logits) - num_layers)
            scored = self.criterion.score_sets(sets_logits, sets_boxes, labels, repeats)
            # [G*L] -> [L]: the mean over groups of each layer's losses; group 0's logged errors
            losses = {
                name: value.view(self.num_groups, -1).mean(0)
                if name.startswith("loss_")
                else value[:num_layers]
                for name, value in scored.losses.items()
            }
            class_error = self.criterion.class_error(sets_logits, scored, num_layers - 1)
            return self.criterion.total(losses, class_error)


__all__ = ["GroupedCriterion", "groups_as_layers", "set_query_groups"]
