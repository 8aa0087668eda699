"""The loss the training loop computes from a model's outputs, its criterion built once per run."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..loss_detr import SetCriterion
from .query_groups import GroupedCriterion


def training_loss(model: nn.Module, one_to_many_repeats: int = 1) -> Callable:
    """What the training loop calls on (outputs, labels), its criterion built once for the run: the
    model's set-prediction loss (with a segmentation model's mask losses), or with query groups the
    grouped loss."""
    criterion = SetCriterion.from_config(model.config)
    if model.config.num_query_groups > 1:
        grouped = GroupedCriterion(criterion, model.config.num_query_groups, one_to_many_repeats)
        return lambda outputs, labels: grouped(*model.scored_predictions(outputs), labels)
    if model.config.use_masks:
        return lambda outputs, labels: criterion(
            *model.scored_predictions(outputs), labels, pred_masks=outputs.pred_masks
        )
    return lambda outputs, labels: criterion(*model.scored_predictions(outputs), labels)


__all__ = ["training_loss"]
