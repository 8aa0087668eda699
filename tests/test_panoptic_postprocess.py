"""Panoptic post-processing: the default rule is the official DETR's `PostProcessPanoptic` (checked
against its transcription, tests/detr_postprocess_reference.py, on random outputs); transformers'
rule stays available as `rule="transformers"`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detr_postprocess_reference import official_post_process_panoptic
from torch.nn import functional as F

from hf_detr import HfDetrImageProcessor

NUM_CLASSES = 6
STUFF = {4, 5}


def random_outputs(seed: int, batch: int = 2, queries: int = 30, mask_size=(20, 28)) -> SimpleNamespace:
    """Outputs with confident queries (several of one stuff class), smooth masks of every extent
    (some win a few pixels only) and some queries below any threshold."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, NUM_CLASSES + 1, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch, queries), generator=generator)
    labels[:, :6] = 4  # repeated queries of one stuff class: merged by the official rule
    confident = torch.rand(batch, queries, generator=generator) < 0.7
    logits.scatter_add_(2, labels[..., None], (8.0 * confident)[..., None])
    coarse = torch.randn(batch, queries, 4, 6, generator=generator) * 6
    masks = F.interpolate(coarse, size=mask_size, mode="bilinear", align_corners=False)
    masks = masks + torch.randn(batch, queries, *mask_size, generator=generator)
    return SimpleNamespace(logits=logits, pred_masks=masks)


def official(outputs, processed, targets, threshold=0.85):
    is_thing = {c: c not in STUFF for c in range(NUM_CLASSES)}
    tensors = {"pred_logits": outputs.logits, "pred_masks": outputs.pred_masks}
    sizes = [torch.tensor(s) for s in processed]
    return official_post_process_panoptic(
        tensors, sizes, [torch.tensor(s) for s in targets], is_thing, threshold
    )


def assert_same_segments(ours: dict, reference: dict) -> None:
    """The same segment at every pixel (ids shifted by one), the same classes, areas and thing flags."""
    segmentation = ours["segmentation"].numpy()
    if not reference["segments_info"]:
        assert not ours["segments_info"] and (segmentation == 0).all()
        return
    np.testing.assert_array_equal(segmentation - 1, reference["ids"])
    assert [s["id"] for s in ours["segments_info"]] == [s["id"] + 1 for s in reference["segments_info"]]
    assert [s["label_id"] for s in ours["segments_info"]] == [
        s["category_id"] for s in reference["segments_info"]
    ]
    assert [not s["was_fused"] for s in ours["segments_info"]] == [
        s["isthing"] for s in reference["segments_info"]
    ]
    areas = np.bincount(segmentation.flatten(), minlength=len(ours["segments_info"]) + 1)[1:]
    assert areas.tolist() == [s["area"] for s in reference["segments_info"]]


@pytest.mark.parametrize("seed", range(6))
def test_the_default_rule_equals_the_official_post_processing(seed):
    outputs = random_outputs(seed)
    processed, targets = [(80, 112), (72, 100)], [(160, 200), (61, 93)]  # the second image padded
    ours = HfDetrImageProcessor().post_process_panoptic_segmentation(
        outputs, label_ids_to_fuse=STUFF, target_sizes=targets, processed_sizes=processed
    )
    reference = official(outputs, processed, targets)
    for mine, theirs in zip(ours, reference):
        assert_same_segments(mine, theirs)
    assert sum(len(r["segments_info"]) for r in reference) >= 4  # segments made, some merged and dropped
    transformers_rule = HfDetrImageProcessor().post_process_panoptic_segmentation(
        outputs, threshold=0.85, label_ids_to_fuse=STUFF, target_sizes=targets, rule="transformers"
    )
    differs = [
        (a["segmentation"] != b["segmentation"]).float().mean() for a, b in zip(ours, transformers_rule)
    ]
    assert max(differs) > 0.01  # the two rules do differ on these outputs


def test_a_stuff_query_covering_everything_keeps_the_background():
    outputs = random_outputs(7, batch=1, queries=3)
    outputs.logits[:] = -10.0
    outputs.logits[0, 0, 5] = 10.0  # one stuff query, everywhere
    outputs.logits[0, 1, 2] = 10.0  # one thing query, on a patch
    outputs.pred_masks[0, 0] = 2.0
    outputs.pred_masks[0, 1] = -2.0
    outputs.pred_masks[0, 1, 5:12, 6:14] = 8.0
    (ours,) = HfDetrImageProcessor().post_process_panoptic_segmentation(
        outputs, label_ids_to_fuse=STUFF, target_sizes=[(80, 112)], processed_sizes=[(80, 112)]
    )
    (reference,) = official(outputs, [(80, 112)], [(80, 112)])
    assert_same_segments(ours, reference)
    assert (ours["segmentation"] > 0).all() and [s["label_id"] for s in ours["segments_info"]] == [5, 2]


def test_no_confident_query_gives_no_segment():
    outputs = random_outputs(8, batch=1)
    outputs.logits[..., -1] = 20.0  # every query predicts no-object
    (ours,) = HfDetrImageProcessor().post_process_panoptic_segmentation(outputs, target_sizes=[(50, 60)])
    (reference,) = official(outputs, [(80, 112)], [(50, 60)])
    assert_same_segments(ours, reference)
    assert ours["segmentation"].shape == (50, 60)


def test_the_processed_size_defaults_to_the_processors_resize_of_the_target_size():
    processor = HfDetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})
    outputs = random_outputs(9, batch=1, mask_size=(24, 32))
    (ours,) = processor.post_process_panoptic_segmentation(
        outputs, label_ids_to_fuse=STUFF, target_sizes=[(60, 80)]
    )
    (reference,) = official(outputs, [(96, 128)], [(60, 80)])  # 60x80 resized to shorter side 96
    assert_same_segments(ours, reference)


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="`rule` must be 'detr'"):
        HfDetrImageProcessor().post_process_panoptic_segmentation(random_outputs(0), rule="maskformer")


@pytest.mark.parametrize("side", [2, 3])
def test_segments_of_four_pixels_or_less_are_dropped(side):
    outputs = random_outputs(10, batch=1, queries=2, mask_size=(16, 16))
    outputs.logits[:] = -10.0
    outputs.logits[0, :, 2] = 10.0
    outputs.pred_masks[0, 0] = 1.0
    outputs.pred_masks[0, 1] = -1.0
    outputs.pred_masks[0, 1, 4 : 4 + side, 4 : 4 + side] = 5.0  # a patch of side x side pixels
    (ours,) = HfDetrImageProcessor().post_process_panoptic_segmentation(
        outputs, target_sizes=[(16, 16)], processed_sizes=[(16, 16)]
    )
    (reference,) = official(outputs, [(16, 16)], [(16, 16)])
    assert_same_segments(ours, reference)
    assert len(ours["segments_info"]) == (1 if side * side <= 4 else 2)
