"""Group DETR's query groups for fine-tuning: a plain checkpoint gets extra training groups."""

from __future__ import annotations

import torch
from torch import nn

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


__all__ = ["set_query_groups"]
