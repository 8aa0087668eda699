"""Group DETR training (num_query_groups): separate groups, grouped loss, plain saved model, resume."""

from __future__ import annotations

import copy

import pytest
import torch
from detr_testing import max_abs_diff, padded_batch, tiny_hf_detr_config
from host_transfers import HostTransferCounter
from transformers import AutoModelForObjectDetection, pipeline

from hf_detr import HfDetrForObjectDetection, HfDetrImageProcessor
from hf_detr.loss_detr import HungarianMatcher, SetCriterion
from hf_detr.training.loss import training_loss
from hf_detr.training.query_groups import GroupedCriterion, set_query_groups

GROUPS = 3
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def grouped_model(**overrides) -> HfDetrForObjectDetection:
    torch.manual_seed(0)
    return HfDetrForObjectDetection(tiny_hf_detr_config(num_query_groups=GROUPS, **NO_DROPOUT, **overrides))


def labels_for(batch_size: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    labels = []
    for count in range(1, batch_size + 1):
        centers = torch.rand(count, 2, generator=generator) * 0.5 + 0.25
        sizes = torch.rand(count, 2, generator=generator) * 0.3 + 0.1
        labels.append({"class_labels": torch.arange(count) % 5, "boxes": torch.cat([centers, sizes], -1)})
    return labels


def test_training_runs_every_group_and_evaluation_only_group_0():
    model = grouped_model().train()
    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 48)])
    num_queries = model.config.num_queries
    assert model.model.query_position_embeddings.num_embeddings == GROUPS * num_queries
    assert model(pixel_values, pixel_mask).logits.shape[1] == GROUPS * num_queries
    assert model.eval()(pixel_values, pixel_mask).logits.shape[1] == num_queries


def test_queries_of_other_groups_cannot_change_group_0():
    model = grouped_model().train()
    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 48)])
    num_queries = model.config.num_queries
    with torch.no_grad():
        before = model(pixel_values, pixel_mask)
        model.model.query_position_embeddings.weight[2 * num_queries :] += 5.0  # group 2 only
        after = model(pixel_values, pixel_mask)
    group_0 = slice(0, num_queries)
    assert torch.equal(before.logits[:, group_0], after.logits[:, group_0])
    assert torch.equal(before.pred_boxes[:, group_0], after.pred_boxes[:, group_0])
    assert max_abs_diff(before.logits[:, 2 * num_queries :], after.logits[:, 2 * num_queries :]) > 1e-3


def test_grouped_loss_is_the_mean_of_the_per_group_losses():
    generator = torch.Generator().manual_seed(2)
    layers, batch_size, num_queries, classes = 3, 4, 6, 5
    logits = torch.randn(layers, batch_size, GROUPS * num_queries, classes + 1, generator=generator)
    boxes = torch.rand(layers, batch_size, GROUPS * num_queries, 4, generator=generator) * 0.5 + 0.25
    labels = labels_for(batch_size)
    criterion = SetCriterion(classes, HungarianMatcher())
    total, losses = GroupedCriterion(criterion, GROUPS)(logits, boxes, labels)
    per_group = [
        criterion(logits[:, :, g * num_queries : (g + 1) * num_queries], boxes[:, :, g * num_queries : (g + 1) * num_queries], labels)
        for g in range(GROUPS)
    ]  # fmt: skip
    assert total.item() == pytest.approx(sum(t.item() for t, _ in per_group) / GROUPS, rel=1e-6)
    for key in losses:
        if key.startswith("loss_"):
            expected = sum(d[key].item() for _, d in per_group) / GROUPS
            assert losses[key].item() == pytest.approx(expected, rel=1e-6), key
        else:  # the logged errors are group 0's, the group evaluation runs
            assert losses[key].item() == pytest.approx(per_group[0][1][key].item(), rel=1e-6), key


def test_hybrid_matching_scores_later_groups_against_repeated_targets():
    """H-DETR: group 0 one-to-one, groups 1.. as if every target were given `repeats` times."""
    generator = torch.Generator().manual_seed(3)
    layers, batch_size, num_queries, classes, repeats = 2, 4, 8, 5, 2
    logits = torch.randn(layers, batch_size, GROUPS * num_queries, classes + 1, generator=generator)
    boxes = torch.rand(layers, batch_size, GROUPS * num_queries, 4, generator=generator) * 0.5 + 0.25
    labels = labels_for(batch_size)
    repeated = [{key: torch.cat([value] * repeats) for key, value in target.items()} for target in labels]
    plain = SetCriterion(classes, HungarianMatcher())
    total, losses = GroupedCriterion(plain, GROUPS, one_to_many_repeats=repeats)(logits, boxes, labels)
    per_group = [
        plain(logits[:, :, g * num_queries : (g + 1) * num_queries], boxes[:, :, g * num_queries : (g + 1) * num_queries], labels if g == 0 else repeated)
        for g in range(GROUPS)
    ]  # fmt: skip
    assert total.item() == pytest.approx(sum(t.item() for t, _ in per_group) / GROUPS, rel=1e-6)
    grouped_only = GroupedCriterion(plain, GROUPS)(logits, boxes, labels)[0]
    assert total.item() != pytest.approx(grouped_only.item(), rel=1e-3)
    for key in ("loss_ce", "loss_bbox", "loss_giou_0"):
        expected = sum(d[key].item() for _, d in per_group) / GROUPS
        assert losses[key].item() == pytest.approx(expected, rel=1e-6), key


def test_all_groups_are_matched_with_one_host_transfer():
    model = grouped_model().train()
    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 48)])
    outputs = model(pixel_values, pixel_mask)
    with HostTransferCounter() as counter:
        training_loss(model, one_to_many_repeats=2)(outputs, labels_for(2))
    assert counter.calls == ["cpu"]


@pytest.mark.parametrize("one_to_many_repeats", [1, 3], ids=["group-detr", "hybrid-matching"])
def test_a_model_trained_with_groups_becomes_a_plain_detr_with_group_0s_outputs(
    tmp_path, coco_image_dir, one_to_many_repeats
):
    model = grouped_model()
    loss = training_loss(model, one_to_many_repeats)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 48)])
    model.train()
    for _ in range(2):  # every group's queries move
        optimizer.zero_grad()
        loss(model(pixel_values, pixel_mask), labels_for(2))[0].backward()
        optimizer.step()
    with torch.no_grad():
        training_group_0 = model(pixel_values, pixel_mask).logits[:, : model.config.num_queries]
        evaluated = model.eval()(pixel_values, pixel_mask)
    assert torch.equal(training_group_0, evaluated.logits)  # frozen BatchNorm, no dropout
    set_query_groups(copy.deepcopy(model), 1).save_pretrained(tmp_path)  # as hf-detr-train's final model
    HfDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(tmp_path)
    assert model.config.num_query_groups == GROUPS  # the live model keeps its groups
    model.save_pretrained(tmp_path / "grouped")  # saved by hand: every group, resumable
    grouped = HfDetrForObjectDetection.from_pretrained(tmp_path / "grouped")
    assert grouped.model.query_position_embeddings.num_embeddings == GROUPS * model.config.num_queries

    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path)
    assert loaded.config.num_query_groups == 1
    assert loaded.model.query_position_embeddings.num_embeddings == model.config.num_queries
    with torch.no_grad():
        reloaded = loaded(pixel_values, pixel_mask)
    assert torch.equal(reloaded.logits, evaluated.logits) and torch.equal(
        reloaded.pred_boxes, evaluated.pred_boxes
    )
    detections = pipeline("object-detection", model=str(tmp_path))(
        str(coco_image_dir / "000000039769.png"), threshold=0.0
    )
    assert len(detections) == model.config.num_queries


def test_the_model_names_the_grouped_loss_when_asked_for_a_loss_of_several_groups():
    model = grouped_model().train()
    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 48)])
    with pytest.raises(ValueError, match="GroupedCriterion"):
        model(pixel_values, pixel_mask, labels=labels_for(2))


def test_hybrid_matching_needs_a_second_group():
    with pytest.raises(ValueError, match="2 or more groups"):
        GroupedCriterion(SetCriterion(5, HungarianMatcher()), 1, one_to_many_repeats=3)


def test_without_groups_the_training_loss_is_the_models_own():
    """The training loop's loss (criterion built once per run) equals the model's `loss_from_outputs`, for
    a detector and for a segmentation model (mask losses included)."""
    from hf_detr import HfDetrForSegmentation

    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 48)])
    labels = labels_for(2)
    for index, label in enumerate(labels):
        height, width = pixel_values.shape[-2:]
        label["masks"] = torch.zeros(len(label["boxes"]), height, width, dtype=torch.bool)
        label["masks"][:, : 20 + index, : 30 + index] = True
    torch.manual_seed(0)
    segmentation = HfDetrForSegmentation(tiny_hf_detr_config(use_masks=True, d_model=64, **NO_DROPOUT))
    for model in (HfDetrForObjectDetection(tiny_hf_detr_config(**NO_DROPOUT)), segmentation):
        model.train()
        outputs = model(pixel_values, pixel_mask)
        expected_total, expected = model.loss_from_outputs(outputs, labels)
        total, losses = training_loss(model)(outputs, labels)
        assert torch.equal(total, expected_total) and losses.keys() == expected.keys()
        assert ("loss_mask" in losses) == model.config.use_masks
