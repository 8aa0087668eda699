"""HfDetrForSegmentation (paper section 4.4): mask shapes, the focal + DICE mask losses, two-stage training
with a frozen detector, configuration checks, saving, Auto classes, the pipeline and remote code."""

from __future__ import annotations

import json
import logging

import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from detr_testing import MODEL_FILES, matches_per_image, padded_batch, tiny_hf_detr_config
from host_transfers import HostTransferCounter
from transformers import AutoModelForImageSegmentation, pipeline
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from hf_detr import HfDetrConfig, HfDetrForObjectDetection, HfDetrForSegmentation, HfDetrImageProcessor
from hf_detr.loss_detr import HungarianMatcher, SetCriterion, pad_targets

SEGMENTATION_WIDTH = dict(d_model=128, encoder_attention_heads=8, decoder_attention_heads=8)
NUM_LABELS, LAYERS, QUERIES = 4, 2, 6


def tiny_segmentation_config(**overrides) -> HfDetrConfig:
    return tiny_hf_detr_config(**{**SEGMENTATION_WIDTH, "use_masks": True, **overrides})


def box_labels(count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    centers = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(count, 2, generator=generator) * 0.3 + 0.05
    classes = torch.randint(0, NUM_LABELS, (count,), generator=generator)
    return {"class_labels": classes, "boxes": torch.cat([centers, sizes], -1)}


def mask_labels(shapes: list[tuple[int, int, int]], seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """One label dict per (objects, height, width): random boxes and random binary masks of that size."""
    generator = torch.Generator().manual_seed(seed)
    labels = []
    for count, height, width in shapes:
        label = box_labels(count, generator)
        label["masks"] = torch.rand(count, height, width, generator=generator) > 0.6
        labels.append(label)
    return labels


def random_outputs(batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(LAYERS, batch, QUERIES, NUM_LABELS + 1, generator=generator) * 2
    centers = torch.rand(LAYERS, batch, QUERIES, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(LAYERS, batch, QUERIES, 2, generator=generator) * 0.3 + 0.02
    pred_masks = torch.randn(batch, QUERIES, 8, 10, generator=generator) * 3
    return logits, torch.cat([centers, sizes], -1), pred_masks


def mask_criterion(**kwargs) -> SetCriterion:
    return SetCriterion(NUM_LABELS, HungarianMatcher(1.0, 5.0, 2.0), **kwargs)


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> HfDetrForSegmentation:
    torch.manual_seed(0)
    return HfDetrForSegmentation(tiny_segmentation_config()).eval()


def test_pred_masks_are_batch_by_queries_at_a_quarter_of_the_padded_input(model):
    pixel_values, pixel_mask = padded_batch([(96, 128), (128, 64)])
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    queries = model.config.num_queries
    assert outputs.pred_masks.shape == (2, queries, 128 // 4, 128 // 4)
    assert outputs.logits.shape == (2, queries, model.config.num_labels + 1)
    assert outputs.pred_boxes.shape == (2, queries, 4)
    assert outputs.auxiliary_outputs is None  # inference leaves them out, as the detector does
    assert outputs.pred_masks.std() > 0


def test_the_detector_predicts_what_it_predicts_alone(model):
    detector = HfDetrForObjectDetection(model.config).eval()
    detector.load_state_dict(model.detr.state_dict())
    pixel_values, pixel_mask = padded_batch([(64, 96), (96, 64)])
    with torch.no_grad():
        alone = detector(pixel_values=pixel_values, pixel_mask=pixel_mask)
        inside = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    assert torch.equal(alone.logits, inside.logits) and torch.equal(alone.pred_boxes, inside.pred_boxes)


def test_a_detector_starts_a_segmentation_model_with_its_weights():
    detector = HfDetrForObjectDetection(tiny_hf_detr_config(**SEGMENTATION_WIDTH)).eval()
    segmentation = HfDetrForSegmentation.from_detection_model(detector).eval()
    assert segmentation.config.use_masks and not detector.config.use_masks
    for name, tensor in detector.state_dict().items():
        assert torch.equal(segmentation.detr.state_dict()[name], tensor), name
    with pytest.raises(TypeError, match="HfDetrForObjectDetection, got HfDetrForSegmentation"):
        HfDetrForSegmentation.from_detection_model(segmentation)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 72, "encoder_attention_heads": 8}, "`d_model` must be a multiple of 16"),
        ({"num_query_groups": 2}, "num_query_groups` = 1 only"),
        ({"mask_loss_coefficient": -1.0}, "`mask_loss_coefficient` must be a number >= 0"),
        ({"dice_loss_coefficient": "high"}, "`dice_loss_coefficient` must be a number >= 0"),
    ],
)
def test_configurations_that_cannot_build_the_mask_head_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_segmentation_config(**{"decoder_attention_heads": 8, **overrides})


def test_group_norm_keeps_eight_groups_where_eight_divides_the_width():
    """The official widths keep GroupNorm(8, C); a width 8 does not divide (d 64 + 4 heads = 68) takes
    the largest group count that divides it."""
    config = tiny_segmentation_config(d_model=64, encoder_attention_heads=4, decoder_attention_heads=4)
    head = HfDetrForSegmentation(config).mask_head
    assert [head.gn1.num_groups, head.gn2.num_groups, head.gn5.num_groups] == [4, 8, 4]
    assert (head.gn1.num_channels, head.gn2.num_channels, head.gn5.num_channels) == (68, 32, 4)


def test_a_config_without_use_masks_is_copied_with_it():
    config = tiny_hf_detr_config(**SEGMENTATION_WIDTH)
    model = HfDetrForSegmentation(config)
    assert model.config.use_masks and not config.use_masks
    assert model.detr.model.backbone.stage_channels == (64, 128, 256, 512)  # resnet18 layer1..4


# ---------------------------------------------------------------------------------------------------
# Mask losses
# ---------------------------------------------------------------------------------------------------
def reference_mask_losses(pred_masks, labels, matches_per_image, num_boxes: int) -> tuple[float, float]:
    """Query by query: the prediction upsampled to the batch's padded target size, then the focal loss
    written out (alpha 0.25, gamma 2, mean over pixels) and the DICE loss with +1 smoothing."""
    height = max(label["masks"].shape[1] for label in labels)
    width = max(label["masks"].shape[2] for label in labels)
    focal_sum = dice_sum = 0.0
    for image, (queries, targets) in enumerate(matches_per_image):
        for query, target in zip(queries.tolist(), targets.tolist()):
            logits = pred_masks[image, query][None, None]
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
            truth = torch.zeros(height, width)
            mask = labels[image]["masks"][target].float()
            truth[: mask.shape[0], : mask.shape[1]] = mask
            p = logits.sigmoid()
            cross_entropy = -(truth * torch.log(p) + (1 - truth) * torch.log(1 - p))
            p_t = p * truth + (1 - p) * (1 - truth)
            alpha_t = 0.25 * truth + 0.75 * (1 - truth)
            focal_sum += (alpha_t * cross_entropy * (1 - p_t) ** 2).mean().item()
            dice_sum += 1 - (2 * (p * truth).sum().item() + 1) / (p.sum().item() + truth.sum().item() + 1)
    return focal_sum / num_boxes, dice_sum / num_boxes


def test_focal_and_dice_losses_equal_a_query_by_query_computation_within_1e6():
    """Targets of different sizes are zero-padded to the largest (the official nested tensor); an image
    without objects contributes nothing; only the last layer's matches count."""
    labels = mask_labels([(2, 30, 40), (0, 32, 40), (3, 32, 36)])
    logits, boxes, pred_masks = random_outputs(batch=3)
    _, loss_dict = mask_criterion()(logits, boxes, labels, pred_masks=pred_masks)
    targets = pad_targets(labels, 3, QUERIES, torch.device("cpu"))
    matches = HungarianMatcher(1.0, 5.0, 2.0)(logits, boxes, targets, NUM_LABELS)
    expected_focal, expected_dice = reference_mask_losses(
        pred_masks, labels, matches_per_image(matches, LAYERS - 1, 3), 5
    )
    assert loss_dict["loss_mask"].item() == pytest.approx(expected_focal, abs=1e-6)
    assert loss_dict["loss_dice"].item() == pytest.approx(expected_dice, abs=1e-6)
    assert not any(key.startswith(("loss_mask_", "loss_dice_")) for key in loss_dict)  # none for aux layers


def test_each_layers_matches_are_one_slice():
    labels = mask_labels([(2, 8, 8), (0, 8, 8), (3, 8, 8)])
    logits, boxes, _ = random_outputs(batch=3)
    targets = pad_targets(labels, 3, QUERIES, torch.device("cpu"))
    matches = HungarianMatcher(1.0, 5.0, 2.0)(logits, boxes, targets, NUM_LABELS)
    assert matches.layer_starts == (0, 5, 10)
    for layer in range(LAYERS):
        assert (matches.layer[matches.layer_slice(layer)] == layer).all()


def test_total_loss_adds_the_weighted_mask_losses():
    labels = mask_labels([(2, 16, 20), (1, 16, 20)])
    logits, boxes, pred_masks = random_outputs(batch=2)
    detection_only, _ = mask_criterion()(logits, boxes, labels)
    total, loss_dict = mask_criterion(mask_loss_coefficient=2.0, dice_loss_coefficient=3.0)(
        logits, boxes, labels, pred_masks=pred_masks
    )
    expected = detection_only + 2 * loss_dict["loss_mask"] + 3 * loss_dict["loss_dice"]
    assert torch.allclose(total, expected)


def test_mask_losses_keep_one_host_transfer_per_step():
    labels = mask_labels([(3, 16, 20), (2, 12, 20)])
    logits, boxes, pred_masks = random_outputs(batch=2)
    pred_masks.requires_grad_(True)
    with HostTransferCounter() as counter:
        loss, _ = mask_criterion()(logits, boxes, labels, pred_masks=pred_masks)
        loss.backward()
    assert counter.calls == ["cpu"], counter.calls
    assert pred_masks.grad.abs().sum() > 0


def test_a_batch_without_objects_keeps_the_mask_head_in_the_graph():
    labels = mask_labels([(0, 16, 20), (0, 16, 20)])
    logits, boxes, pred_masks = random_outputs(batch=2)
    pred_masks.requires_grad_(True)
    loss, loss_dict = mask_criterion()(logits, boxes, labels, pred_masks=pred_masks)
    loss.backward()
    assert loss_dict["loss_mask"] == 0 and loss_dict["loss_dice"] == 0
    assert pred_masks.grad is not None and pred_masks.grad.abs().sum() == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda label: label.pop("masks"), r"labels\[1\] has no 'masks'"),
        (
            lambda label: label.update(masks=torch.zeros(2, 16, 20)),
            r"labels\[1\]\['masks'\].*\[1, height, width\]",
        ),
        (lambda label: label.update(masks=torch.zeros(16, 20)), r"shape \[16, 20\]"),
        (lambda label: label.update(masks="mask.png"), r"labels\[1\]\['masks'\] must be a tensor or a list"),
        (
            lambda label: label.update(masks=torch.zeros(1, 16, 20, dtype=torch.cfloat)),
            r"\['masks'\] must hold",
        ),
    ],
    ids=["missing", "one-mask-too-many", "two-dimensional", "a-string", "complex"],
)
def test_malformed_masks_are_named(change, message):
    labels = mask_labels([(2, 16, 20), (1, 16, 20)])
    change(labels[1])
    logits, boxes, pred_masks = random_outputs(batch=2)
    with pytest.raises(ValueError, match=message):
        mask_criterion()(logits, boxes, labels, pred_masks=pred_masks)


def test_pred_masks_of_another_batch_are_refused():
    logits, boxes, pred_masks = random_outputs(batch=2)
    with pytest.raises(
        ValueError, match=r"`pred_masks` must have shape .*\[2, 6, h, w\], got \[1, 6, 8, 10\]"
    ):
        mask_criterion()(logits, boxes, mask_labels([(1, 8, 8)] * 2), pred_masks=pred_masks[:1])


# ---------------------------------------------------------------------------------------------------
# Two-stage training: a frozen detector
# ---------------------------------------------------------------------------------------------------
def test_freeze_detector_trains_only_the_mask_head_and_lowers_the_mask_loss():
    torch.manual_seed(0)
    config = tiny_segmentation_config(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = HfDetrForSegmentation(config).train()
    model.freeze_detector()
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    heads = {
        name for name, _ in model.named_parameters() if name.startswith(("bbox_attention.", "mask_head."))
    }
    assert trainable == heads and any(name.startswith("mask_head.adapter3") for name in heads)
    detector_before = {name: tensor.clone() for name, tensor in model.detr.state_dict().items()}

    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 48)])
    labels = mask_labels([(2, 64, 64), (1, 64, 64)], seed=5)
    for label in labels:  # a shape the head can learn in a few steps
        label["masks"] = torch.zeros_like(label["masks"])
        label["masks"][:, 8:40, 16:48] = True
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    mask_losses = []
    for _ in range(4):
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
        mask_losses.append((outputs.loss_dict["loss_mask"] + outputs.loss_dict["loss_dice"]).item())
        optimizer.zero_grad()
        outputs.loss.backward()
        optimizer.step()
    assert mask_losses[-1] < 0.8 * mask_losses[0], mask_losses
    for name, tensor in model.detr.state_dict().items():
        assert torch.equal(tensor, detector_before[name]), name

    model.freeze_detector(False)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert "detr.class_labels_classifier.weight" in trainable
    assert "detr.model.backbone.body.conv1.weight" not in trainable  # the backbone's frozen stem stays frozen


# ---------------------------------------------------------------------------------------------------
# Saving, Auto classes, pipeline, remote code
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("segmentation")
    model.save_pretrained(directory)
    HfDetrImageProcessor(
        size={"shortest_edge": 96, "longest_edge": 128}, format="coco_panoptic"
    ).save_pretrained(directory)
    return directory


def test_save_and_load_give_equal_outputs_and_a_code_carrying_checkpoint(model, checkpoint):
    pixel_values, pixel_mask = padded_batch([(64, 96), (96, 64)])
    loaded = HfDetrForSegmentation.from_pretrained(checkpoint).eval()
    auto = AutoModelForImageSegmentation.from_pretrained(checkpoint).eval()
    assert type(auto) is HfDetrForSegmentation
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        for reloaded in (loaded, auto):
            outputs = reloaded(pixel_values=pixel_values, pixel_mask=pixel_mask)
            for name in ("logits", "pred_boxes", "pred_masks"):
                assert torch.equal(getattr(outputs, name), getattr(expected, name)), name
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_detr.HfDetrConfig",
        "AutoModelForImageSegmentation": "modeling_detr_segmentation.HfDetrForSegmentation",
    }
    for name in (*MODEL_FILES, "modeling_detr_segmentation.py"):
        assert (checkpoint / name).is_file(), name
    assert "from hf_detr" not in (checkpoint / "modeling_detr_segmentation.py").read_text()


def test_image_segmentation_pipeline_accepts_the_model(checkpoint, caplog):
    image = PIL.Image.new("RGB", (120, 90), (120, 60, 30))
    with caplog.at_level(logging.ERROR):
        segmenter = pipeline("image-segmentation", model=str(checkpoint))
        semantic = segmenter(image, subtask="semantic")
        panoptic = segmenter(image, threshold=0.0)
    assert not [record for record in caplog.records if "not supported" in record.getMessage()]
    assert semantic and all(segment["mask"].size == (120, 90) for segment in semantic)
    labels = set(segmenter.model.config.id2label.values())
    assert all(segment["label"] in labels for segment in semantic + panoptic)


def test_the_checkpoints_own_code_files_build_the_model(model, checkpoint):
    """The copied model files alone (loaded as transformers loads remote code, not from hf_detr) give
    the same model. (test_hf_integration.py runs remote detection code in a process without hf_detr.)"""
    model_class = get_class_from_dynamic_module(
        "modeling_detr_segmentation.HfDetrForSegmentation", str(checkpoint)
    )
    assert model_class is not HfDetrForSegmentation
    assert model_class.__module__.startswith("transformers_modules"), model_class.__module__
    remote = model_class.from_pretrained(checkpoint).eval()
    pixel_values, pixel_mask = padded_batch([(64, 96), (96, 64)])
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        outputs = remote(pixel_values=pixel_values, pixel_mask=pixel_mask)
    assert torch.equal(outputs.pred_masks, expected.pred_masks)
    assert torch.equal(outputs.logits, expected.logits)
