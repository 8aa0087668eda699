"""The Hungarian set-prediction loss: parity with transformers and the official formulas, edge cases,
one device-to-host transfer per step, gradients."""

from __future__ import annotations

import pytest
import torch
from detr_testing import matches_per_image, padded_batch, tiny_hf_detr_config
from host_transfers import HostTransferCounter
from transformers import DetrConfig
from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss
from transformers.loss.loss_for_object_detection import HungarianMatcher as ReferenceMatcher

from hf_detr import HfDetrForObjectDetection
from hf_detr.loss_detr import HungarianMatcher, NonFiniteMatchingCostError, SetCriterion, pad_targets

NUM_LABELS = 6
LAYERS, BATCH, QUERIES = 4, 3, 20


def random_predictions(seed: int = 0, layers: int = LAYERS, batch: int = BATCH, queries: int = QUERIES):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(layers, batch, queries, NUM_LABELS + 1, generator=generator) * 2
    centers = torch.rand(layers, batch, queries, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(layers, batch, queries, 2, generator=generator) * 0.3 + 0.02
    return logits, torch.cat([centers, sizes], -1)


def random_labels(counts: list[int], seed: int = 1) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    labels = []
    for count in counts:
        centers = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(count, 2, generator=generator) * 0.3 + 0.05
        labels.append(
            {
                "class_labels": torch.randint(0, NUM_LABELS, (count,), generator=generator),
                "boxes": torch.cat([centers, sizes], -1),
            }
        )
    return labels


def criterion(**kwargs) -> SetCriterion:
    return SetCriterion(NUM_LABELS, HungarianMatcher(1.0, 5.0, 2.0), **kwargs)


def reference_loss_dict(logits, boxes, labels):
    config = DetrConfig(num_labels=NUM_LABELS, auxiliary_loss=True, decoder_layers=logits.shape[0])
    _, loss_dict, _ = ForObjectDetectionLoss(logits[-1], labels, "cpu", boxes[-1], config, logits, boxes)
    return loss_dict


@pytest.mark.parametrize("counts", [[3, 7, 1], [4, 0, 2]], ids=["all-images-with-objects", "one-empty-image"])
def test_losses_match_transformers_within_1e5(counts):
    logits, boxes = random_predictions()
    labels = random_labels(counts)
    _, ours = criterion()(logits, boxes, labels)
    reference = reference_loss_dict(logits, boxes, labels)
    compared = [
        k for k in reference if k.startswith(("loss_ce", "loss_bbox", "loss_giou", "cardinality_error"))
    ]
    assert len(compared) == 4 * LAYERS
    for key in compared:
        assert abs(ours[key].item() - reference[key].item()) <= 1e-5, key


def test_total_loss_is_the_weighted_sum_of_all_layers():
    logits, boxes = random_predictions()
    loss, loss_dict = criterion(class_loss_coefficient=1.5, bbox_loss_coefficient=5, giou_loss_coefficient=2)(
        logits, boxes, random_labels([2, 3, 1])
    )
    expected = sum(
        weight * value
        for key, value in loss_dict.items()
        for prefix, weight in (("loss_ce", 1.5), ("loss_bbox", 5.0), ("loss_giou", 2.0))
        if key.startswith(prefix)
    )
    assert torch.allclose(loss, expected)


def test_the_criterion_of_a_config_takes_its_costs_and_every_loss_coefficient():
    settings = {
        "class_cost": 2.0, "bbox_cost": 3.0, "giou_cost": 4.0, "eos_coefficient": 0.2,
        "class_loss_coefficient": 1.5, "bbox_loss_coefficient": 6.0, "giou_loss_coefficient": 7.0,
        "mask_loss_coefficient": 8.0, "dice_loss_coefficient": 9.0,
    }  # fmt: skip
    built = SetCriterion.from_config(tiny_hf_detr_config(num_labels=NUM_LABELS, **settings))
    assert built.num_labels == NUM_LABELS
    assert built.matcher == HungarianMatcher(class_cost=2.0, bbox_cost=3.0, giou_cost=4.0)
    assert {name: getattr(built, name) for name in settings if name.endswith("coefficient")} == {
        name: value for name, value in settings.items() if name.endswith("coefficient")
    }


def test_assignment_equals_the_official_algorithm():
    logits, boxes = random_predictions(seed=3)
    labels = random_labels([5, 0, 8], seed=4)
    targets = pad_targets(labels, BATCH, QUERIES, torch.device("cpu"))
    matches = HungarianMatcher(1.0, 5.0, 2.0)(logits, boxes, targets, NUM_LABELS)
    reference = ReferenceMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
    for layer in range(LAYERS):
        expected = reference({"logits": logits[layer], "pred_boxes": boxes[layer]}, labels)
        for (queries, targets_), (ref_queries, ref_targets) in zip(matches_per_image(matches, layer, BATCH), expected):
            assert torch.equal(queries, ref_queries) and torch.equal(targets_, ref_targets)


def test_class_error_is_100_minus_top1_accuracy_of_matched_queries():
    logits, boxes = random_predictions(seed=5)
    labels = random_labels([4, 3, 2], seed=6)
    targets = pad_targets(labels, BATCH, QUERIES, torch.device("cpu"))
    matches = HungarianMatcher(1.0, 5.0, 2.0)(logits, boxes, targets, NUM_LABELS)
    correct = total = 0
    for image, (queries, target_indices) in enumerate(matches_per_image(matches, LAYERS - 1, BATCH)):
        predicted = logits[-1, image, queries].argmax(-1)
        correct += (predicted == labels[image]["class_labels"][target_indices]).sum().item()
        total += len(queries)
    _, loss_dict = criterion()(logits, boxes, labels)
    assert loss_dict["class_error"].item() == pytest.approx(100 - 100 * correct / total)


def test_a_batch_without_objects_trains_the_no_object_class_only():
    logits, boxes = random_predictions()
    logits.requires_grad_(True)
    boxes.requires_grad_(True)
    empty = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * BATCH
    loss, loss_dict = criterion()(logits, boxes, empty)
    assert loss_dict["loss_bbox"] == 0 and loss_dict["loss_giou"] == 0
    no_object = torch.full((QUERIES,), NUM_LABELS)
    expected_ce = torch.nn.functional.cross_entropy(logits[-1].flatten(0, 1), no_object.repeat(BATCH))
    assert torch.allclose(loss_dict["loss_ce"], expected_ce)
    loss.backward()
    assert boxes.grad is not None and boxes.grad.abs().sum() == 0  # in the graph, with zero gradient
    assert loss_dict["class_error"] == 100


def test_more_targets_than_queries_is_a_clear_error():
    logits, boxes = random_predictions()
    with pytest.raises(ValueError, match=r"labels\[1\] has 21 objects but the model has only 20 queries"):
        criterion()(logits, boxes, random_labels([1, 21, 0]))


def test_degenerate_boxes_give_finite_losses():
    logits, boxes = random_predictions()
    boxes[..., 2] = 0.0  # predictions of zero width
    labels = random_labels([2, 2, 2])
    labels[0]["boxes"][0, 2:] = 0.0  # a target of zero width and height
    labels[1]["boxes"][1, 3] = 0.0
    loss, loss_dict = criterion()(logits, boxes, labels)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in loss_dict.values())


@pytest.mark.parametrize("bad_id", [6, -1, 2.5])
def test_class_ids_out_of_range_name_the_id_and_num_labels(bad_id):
    logits, boxes = random_predictions()
    labels = random_labels([2, 1, 1])
    labels[2]["class_labels"] = torch.tensor([bad_id])
    with pytest.raises(
        ValueError, match=rf"labels\[2\]\['class_labels'\] contains class id {bad_id:g}.*num_labels=6"
    ):
        criterion()(logits, boxes, labels)


def test_labels_of_other_dtypes_and_containers_are_converted():
    logits, boxes = random_predictions()
    labels = random_labels([2, 3, 1])
    reference_loss, _ = criterion()(logits, boxes, labels)
    converted = [
        {"class_labels": labels[0]["class_labels"].int(), "boxes": labels[0]["boxes"].double()},
        {"class_labels": labels[1]["class_labels"].float(), "boxes": labels[1]["boxes"]},
        {"class_labels": labels[2]["class_labels"].tolist(), "boxes": labels[2]["boxes"].tolist()},
    ]
    loss, _ = criterion()(logits, boxes, converted)
    assert torch.allclose(loss, reference_loss)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([{"class_labels": torch.tensor([1])}] * BATCH, "'class_labels' and 'boxes'"),
        ([{"class_labels": torch.tensor([1]), "boxes": torch.zeros(2, 4)}] * BATCH, r"shape \[1, 4\]"),
        ([{"class_labels": torch.tensor([1]), "boxes": torch.zeros(1, 4)}] * 2, "one dict per image"),
    ],
)
def test_malformed_labels_are_clear_errors(labels, message):
    logits, boxes = random_predictions()
    with pytest.raises(ValueError, match=message):
        criterion()(logits, boxes, labels)


def test_non_finite_target_boxes_are_named():
    logits, boxes = random_predictions()
    labels = random_labels([1, 1, 1])
    labels[1]["boxes"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"labels\[1\]\['boxes'\] contains NaN"):
        criterion()(logits, boxes, labels)


def test_diverged_predictions_raise_a_named_error_instead_of_crashing_in_scipy():
    logits, boxes = random_predictions()
    logits[-1, 0, 3, 2] = float("nan")
    with pytest.raises(NonFiniteMatchingCostError, match="logits contain NaN or inf.*diverged"):
        criterion()(logits, boxes, random_labels([1, 1, 1]))


def test_one_host_transfer_matches_all_layers():
    logits, boxes = random_predictions()
    labels = random_labels([3, 5, 2])
    with HostTransferCounter() as counter:
        loss, _ = criterion()(logits, boxes, labels)
        loss.backward() if loss.requires_grad else None
    assert counter.calls == ["cpu"], counter.calls


def test_num_boxes_is_averaged_over_processes(monkeypatch):
    """With torch.distributed initialised, num_boxes = all_reduce(sum) / world_size (>= 1)."""
    logits, boxes = random_predictions()
    labels = random_labels([2, 1, 1])  # 4 boxes here; the other process has 12
    _, single = criterion()(logits, boxes, labels)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor: tensor.add_(12))
    _, distributed = criterion()(logits, boxes, labels)
    # (4 + 12) / 2 = 8 boxes per process instead of 4
    assert torch.allclose(distributed["loss_bbox"], single["loss_bbox"] * 4 / 8)


def test_matching_and_loss_run_in_float32_under_autocast():
    logits, boxes = random_predictions()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, loss_dict = criterion()(logits.bfloat16(), boxes.bfloat16(), random_labels([2, 2, 2]))
    assert loss.dtype == torch.float32 and loss_dict["loss_giou"].dtype == torch.float32


def test_model_forward_with_labels_returns_loss_and_gradients_reach_every_head():
    model = HfDetrForObjectDetection(tiny_hf_detr_config(trainable_backbone_layers=3)).train()
    pixel_values, pixel_mask = padded_batch([(64, 96), (96, 64)])
    labels = [
        {
            "class_labels": torch.tensor([1, 4]),
            "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]]),
        },
        {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
    ]
    outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
    layers = model.config.decoder_layers
    assert {f"loss_ce_{i}" for i in range(layers - 1)} <= set(outputs.loss_dict)
    assert {"loss_ce", "loss_bbox", "loss_giou", "cardinality_error", "class_error"} <= set(outputs.loss_dict)
    outputs.loss.backward()
    for name in (
        "class_labels_classifier.weight",
        "bbox_predictor.layers.0.weight",
        "bbox_predictor.layers.2.bias",
        "model.query_position_embeddings.weight",
        "model.decoder.layers.0.encoder_attn.k_proj.weight",
        "model.encoder.layers.0.self_attn.q_proj.weight",
        "model.input_projection.weight",
        "model.backbone.body.layer4.0.conv1.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_without_auxiliary_loss_only_the_last_layer_is_scored():
    model = HfDetrForObjectDetection(tiny_hf_detr_config(auxiliary_loss=False))
    pixel_values, _ = padded_batch([(64, 64)])
    labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    outputs = model(pixel_values=pixel_values, labels=labels)
    assert not any(key.endswith("_0") for key in outputs.loss_dict)
    expected = (
        outputs.loss_dict["loss_ce"] + 5 * outputs.loss_dict["loss_bbox"] + 2 * outputs.loss_dict["loss_giou"]
    )
    assert torch.allclose(outputs.loss, expected)


def test_transfer_counter_sees_mask_indexing_and_number_assignment():
    """The two waits the CUDA sync debug mode found in an earlier version of the loss."""
    values = torch.arange(6.0)
    with HostTransferCounter() as counter:
        values[values > 2]  # nonzero on the host
        values[3] = 0.1  # a host number copied into device memory
        values[torch.tensor([0, 1])]  # integer indices: no wait
        values[4:6] = values[0:2].clone()  # a tensor into a slice: no wait
    assert counter.calls == [HostTransferCounter.MASK_INDEX, HostTransferCounter.NUMBER_ASSIGNMENT]


def test_transfer_counter_sees_transformers_per_layer_synchronisations():
    """The counter is not blind: transformers' loss syncs at least once per decoder layer."""
    logits, boxes = random_predictions()
    with HostTransferCounter() as counter:
        reference_loss_dict(logits, boxes, random_labels([3, 5, 2]))
    assert counter.calls.count("cpu") >= LAYERS


@pytest.mark.parametrize("scale", [100.0, 1e20], ids=["pixels", "huge"])
def test_boxes_outside_0_1_are_an_error_naming_the_image_and_box_not_divergence(scale):
    logits, boxes = random_predictions()
    labels = random_labels([3, 5, 2])
    labels[1]["boxes"] = labels[1]["boxes"] * scale
    with pytest.raises(ValueError, match=r"labels\[1\]\['boxes'\]\[0\] = .* is not a normalized"):
        criterion()(logits, boxes, labels)
