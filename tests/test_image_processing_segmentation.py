"""HfDetrImageProcessor for segmentation: COCO panoptic and polygon/RLE annotations in (parity with
transformers' PIL backend), and panoptic / instance / semantic post-processing out (parity with
transformers' DetrImageProcessor on the same random outputs)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import PIL.Image
import pytest
import torch
from faster_coco_eval.core import mask as coco_mask
from transformers import DetrImageProcessor
from transformers.image_utils import AnnotationFormat
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

from hf_detr import HfDetrImageProcessor

SMALL = {"shortest_edge": 64, "longest_edge": 100}


# ---------------------------------------------------------------------------------------------------
# Panoptic annotations
# ---------------------------------------------------------------------------------------------------
def _panoptic_ids(seed: int, height: int, width: int) -> np.ndarray:
    """Overlapping random rectangles of large random ids (all three RGB channels in use) on id 0, with
    one pixel in five replaced by a random one of these ids (edges everywhere: a resize that misses PIL's
    nearest rule by a pixel shows)."""
    rng = np.random.default_rng(seed)
    palette = np.concatenate([[0], rng.integers(1, 256**3, 4)])
    ids = np.zeros((height, width), np.int64)
    for segment_id in palette[1:]:
        y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
        y1, x1 = rng.integers(y0 + 1, height + 1), rng.integers(x0 + 1, width + 1)
        ids[y0:y1, x0:x1] = segment_id
    salt = rng.random((height, width)) < 0.2
    ids[salt] = palette[rng.integers(0, len(palette), int(salt.sum()))]
    return ids


def _to_rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def _panoptic_sample(seed: int, height: int, width: int, folder):
    """An image, its panoptic annotation and PNG (written to `folder`), and the id map."""
    rng = np.random.default_rng(seed + 100)
    ids = _panoptic_ids(seed, height, width)
    segments = [
        {
            "id": int(segment_id),
            "category_id": int(rng.integers(0, 10)),
            "iscrowd": int(rng.integers(0, 2)),
            "bbox": [0, 0, 1, 1],
            "area": float((ids == segment_id).sum()),
        }
        for segment_id in np.unique(ids)
        if segment_id != 0
    ]
    PIL.Image.fromarray(_to_rgb(ids)).save(folder / f"{seed}.png")
    image = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return image, {"image_id": seed, "file_name": f"{seed}.png", "segments_info": segments}, ids


@pytest.mark.parametrize("height, width", [(37, 53), (64, 64), (100, 30), (120, 90), (90, 126)])
def test_panoptic_labels_equal_transformers_pil_backend(tmp_path, height, width):
    image, annotation, _ = _panoptic_sample(height, height, width, tmp_path)
    ours = HfDetrImageProcessor(size=SMALL, format="coco_panoptic")(
        image, annotations=annotation, masks_path=tmp_path
    )["labels"][0]
    reference = DetrImageProcessorPil(size=SMALL, format="coco_panoptic")(
        image, annotations=annotation, masks_path=tmp_path, return_tensors="pt"
    )["labels"][0]
    assert ours["masks"].dtype == torch.bool and ours["masks"].shape[0] == len(annotation["segments_info"])
    for key in ("masks", "class_labels", "iscrowd", "area", "size", "orig_size", "image_id"):
        assert torch.equal(ours[key], reference[key].to(ours[key].dtype)), key
    # a single unpadded image: both box conventions agree
    assert torch.allclose(ours["boxes"], reference["boxes"], atol=1e-6), "boxes within 1e-6"


def test_decoded_panoptic_image_gives_the_same_labels_as_the_png_file(tmp_path):
    image, annotation, ids = _panoptic_sample(0, 37, 53, tmp_path)
    processor = HfDetrImageProcessor(size=SMALL, format="coco_panoptic")
    expected = processor(image, annotations=annotation, masks_path=tmp_path)["labels"][0]
    no_file = {key: value for key, value in annotation.items() if key != "file_name"}
    for name, decoded in {
        "PIL": PIL.Image.fromarray(_to_rgb(ids)),
        "RGB array": _to_rgb(ids),
        "RGB tensor": torch.from_numpy(_to_rgb(ids)),
        "id array": ids,
    }.items():
        labels = processor(image, annotations={**no_file, "panoptic_image": decoded})["labels"][0]
        assert labels.keys() == expected.keys(), name
        assert all(torch.equal(labels[key], expected[key]) for key in expected), name


def test_panoptic_boxes_enclose_each_segment_with_last_pixel_indices(tmp_path):
    ids = np.zeros((10, 12), np.int64)
    ids[2:6, 3:10] = 7  # rows 2..5, columns 3..9
    ids[8:, :] = 70000
    annotation = {
        "image_id": 1,
        "segments_info": [{"id": 7, "category_id": 3}, {"id": 70000, "category_id": 4, "iscrowd": 1}],
        "panoptic_image": _to_rgb(ids),
    }
    processor = HfDetrImageProcessor(do_resize=False, do_convert_annotations=False, format="coco_panoptic")
    labels = processor(np.zeros((10, 12, 3), np.uint8), annotations=annotation)["labels"][0]
    assert labels["boxes"].tolist() == [[3, 2, 9, 5], [0, 8, 11, 9]]  # the official masks_to_boxes rule
    assert labels["area"].tolist() == [28, 24], "area defaults to the pixel count"
    assert labels["iscrowd"].tolist() == [0, 1] and labels["class_labels"].tolist() == [3, 4]
    assert torch.equal(labels["masks"], torch.from_numpy(ids[None] == np.array([7, 70000])[:, None, None]))


def test_panoptic_masks_are_padded_like_the_pixels_and_boxes_ignore_the_batch(tmp_path):
    first, first_annotation, _ = _panoptic_sample(1, 40, 60, tmp_path)
    second, second_annotation, _ = _panoptic_sample(2, 90, 30, tmp_path)
    processor = HfDetrImageProcessor(size=SMALL)  # the format given per call, as in transformers
    alone = processor(first, annotations=first_annotation, masks_path=tmp_path, format="coco_panoptic")
    batch = processor(
        [first, second],
        annotations=[first_annotation, second_annotation],
        masks_path=tmp_path,
        format=AnnotationFormat.COCO_PANOPTIC,
    )
    height, width = alone["pixel_values"].shape[-2:]
    for labels, mask in zip(batch["labels"], batch["pixel_mask"]):
        assert labels["masks"].shape[-2:] == batch["pixel_values"].shape[-2:]
        assert not labels["masks"][:, ~mask].any(), "padding holds no mask pixel"
    masks = batch["labels"][0]["masks"]
    assert torch.equal(masks[:, :height, :width], alone["labels"][0]["masks"])
    assert torch.equal(batch["labels"][0]["boxes"], alone["labels"][0]["boxes"])


def test_panoptic_without_return_segmentation_masks_keeps_boxes_only(tmp_path):
    image, annotation, _ = _panoptic_sample(3, 30, 40, tmp_path)
    processor = HfDetrImageProcessor(size=SMALL, format="coco_panoptic")
    with_masks = processor(image, annotations=annotation, masks_path=tmp_path)["labels"][0]
    labels = processor(image, annotations=annotation, masks_path=tmp_path, return_segmentation_masks=False)
    labels = labels["labels"][0]
    assert "masks" not in labels and torch.equal(labels["boxes"], with_masks["boxes"])


def test_panoptic_errors_name_what_is_wrong(tmp_path):
    image, annotation, _ = _panoptic_sample(4, 30, 40, tmp_path)
    processor = HfDetrImageProcessor(size=SMALL, format="coco_panoptic")
    with pytest.raises(ValueError, match="masks_path"):
        processor(image, annotations=annotation)
    with pytest.raises(ValueError, match="does not exist"):
        processor(image, annotations={**annotation, "file_name": "missing.png"}, masks_path=tmp_path)
    with pytest.raises(ValueError, match=r"30x41 \(HxW\) but its image is 30x40"):
        processor(image, annotations={**annotation, "panoptic_image": np.zeros((30, 41, 3), np.uint8)})
    unknown = {**annotation, "segments_info": [*annotation["segments_info"], {"id": 5, "category_id": 1}]}
    with pytest.raises(ValueError, match=r"segment id\(s\) \[5\]"):
        processor(image, annotations=unknown, masks_path=tmp_path)
    with pytest.raises(ValueError, match="segments_info"):
        processor(image, annotations={"image_id": 1, "annotations": []}, masks_path=tmp_path)
    with pytest.raises(ValueError, match="`format` must be one of"):
        HfDetrImageProcessor(format="coco_keypoints")


def test_format_round_trips_through_preprocessor_config(tmp_path):
    HfDetrImageProcessor(format="coco_panoptic").save_pretrained(tmp_path)
    assert HfDetrImageProcessor.from_pretrained(tmp_path).format == "coco_panoptic"
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["format"] == "coco_panoptic"


# ---------------------------------------------------------------------------------------------------
# Detection annotations with polygon / RLE masks
# ---------------------------------------------------------------------------------------------------
def test_polygon_masks_equal_transformers_pil_backend(coco):
    image, annotation = coco
    size = {"shortest_edge": 120, "longest_edge": 200}
    ours = HfDetrImageProcessor(size=size)(image, annotations=annotation, return_segmentation_masks=True)
    reference = DetrImageProcessorPil(size=size)(
        image, annotations=annotation, return_segmentation_masks=True, return_tensors="pt"
    )
    masks = ours["labels"][0]["masks"]
    assert masks.shape == (6, 120, 160) and masks.flatten(1).any(1).all()
    assert torch.equal(masks, reference["labels"][0]["masks"])
    plain = HfDetrImageProcessor(size=size)(image, annotations=annotation)["labels"][0]
    assert "masks" not in plain, "masks only when asked for"


def test_rle_segmentations_decode_to_the_polygon_masks(coco):
    image, annotation = coco
    processor = HfDetrImageProcessor(do_resize=False)
    expected = processor(image, annotations=annotation, return_segmentation_masks=True)["labels"][0]["masks"]
    height, width = image.height, image.width
    objects = []
    for number, (obj, mask) in enumerate(zip(annotation["annotations"], expected)):
        compressed = coco_mask.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
        if number % 2:  # uncompressed: column-major run lengths, zeros first
            flat = mask.numpy().T.flatten().astype(np.int8)
            bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
            counts = [0] * int(flat[0]) + np.diff(bounds).tolist()
            rle = {"size": [height, width], "counts": counts}
        else:
            rle = {"size": compressed["size"], "counts": compressed["counts"].decode()}
        objects.append({**obj, "segmentation": rle})
    masks = processor(
        image, annotations={**annotation, "annotations": objects}, return_segmentation_masks=True
    )
    assert torch.equal(masks["labels"][0]["masks"], expected)


def test_detection_mask_errors_name_the_object(coco):
    image, annotation = coco
    processor = HfDetrImageProcessor(size={"shortest_edge": 60, "longest_edge": 100})
    broken = {
        **annotation,
        "annotations": [{k: v for k, v in annotation["annotations"][0].items() if k != "segmentation"}],
    }
    with pytest.raises(ValueError, match=r"object 0: return_segmentation_masks=True needs a 'segmentation'"):
        processor(image, annotations=broken, return_segmentation_masks=True)
    wrong_size = {**annotation["annotations"][0], "segmentation": {"size": [10, 10], "counts": [100]}}
    with pytest.raises(ValueError, match=r"RLE 'size' \[10, 10\] differs from the image \(480x640\)"):
        processor(
            image, annotations={**annotation, "annotations": [wrong_size]}, return_segmentation_masks=True
        )


# ---------------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------------
@dataclass
class SegmentationOutput:
    logits: torch.Tensor  # [B, N, K+1]
    pred_masks: torch.Tensor  # [B, N, h, w]


def _random_outputs(seed: int, batch=3, queries=10, classes=6, size=(12, 16), empty_image=1):
    """Confident queries with rectangular masks (so segments survive the overlap test); the queries of
    `empty_image` all predict no-object."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes + 1, generator=generator)
    best = torch.randint(0, classes, (batch, queries), generator=generator)
    logits.scatter_add_(2, best[..., None], 4 * torch.rand(batch, queries, 1, generator=generator))
    masks = torch.randn(batch, queries, *size, generator=generator) - 3
    corners = torch.rand(batch, queries, 4, generator=generator)
    for b in range(batch):
        for q in range(queries):
            y0, y1 = sorted((corners[b, q, :2] * size[0]).long().tolist())
            x0, x1 = sorted((corners[b, q, 2:] * size[1]).long().tolist())
            masks[b, q, y0 : y1 + 1, x0 : x1 + 1] += 7
    if empty_image is not None:
        logits[empty_image, :, -1] += 20
    return SegmentationOutput(logits, masks)


TARGET_SIZES = [None, [(20, 25), (7, 9), (31, 17)]]


def _assert_same_segments(ours, reference, fused: bool = False) -> None:
    """Maps and segments_info equal, scores within 1e-6. With fusion, transformers may give a later
    segment an id already taken (see test_fused_segments_never_share_an_id_with_another_segment): ours
    must then map onto its ids entry by entry."""
    assert len(ours) == len(reference)
    for mine, theirs in zip(ours, reference):
        assert len(mine["segments_info"]) == len(theirs["segments_info"])
        renaming = {}
        for a, b in zip(mine["segments_info"], theirs["segments_info"]):
            assert (a["label_id"], a["was_fused"]) == (b["label_id"], b["was_fused"])
            assert abs(a["score"] - b["score"]) <= 1e-6, "scores within 1e-6"
            assert renaming.setdefault(a["id"], b["id"]) == b["id"]
        consistent = len({(s["id"], s["label_id"]) for s in theirs["segments_info"]}) == len(
            {s["id"] for s in theirs["segments_info"]}
        )
        if consistent or not fused:
            assert all(key == value for key, value in renaming.items()), "ids as transformers'"
        segmentation = mine["segmentation"]
        assert segmentation.dtype == torch.int32 and segmentation.shape == theirs["segmentation"].shape
        lookup = torch.arange(int(segmentation.max()) + 2) - 1
        for key, value in renaming.items():
            lookup[key + 1] = value
        assert torch.equal(lookup[segmentation.long() + 1], theirs["segmentation"].long())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("target_sizes", TARGET_SIZES, ids=["native", "resized"])
@pytest.mark.parametrize("label_ids_to_fuse", [None, {1, 2}], ids=["no_fuse", "fuse"])
def test_panoptic_post_processing_equals_transformers(seed, target_sizes, label_ids_to_fuse):
    outputs = _random_outputs(seed)
    kwargs = {"label_ids_to_fuse": label_ids_to_fuse or set(), "target_sizes": target_sizes}
    ours = HfDetrImageProcessor().post_process_panoptic_segmentation(outputs, **kwargs, rule="transformers")
    reference = DetrImageProcessor().post_process_panoptic_segmentation(outputs, **kwargs)
    _assert_same_segments(ours, reference, fused=label_ids_to_fuse is not None)
    assert ours[1]["segments_info"] == [] and (ours[1]["segmentation"] == -1).all(), "the empty image"
    assert sum(len(result["segments_info"]) for result in ours) >= 4, "the test exercises segments"


def test_panoptic_post_processing_fuses_queries_of_stuff_labels():
    processor = HfDetrImageProcessor()
    results = [
        result
        for seed in range(5)
        for result in processor.post_process_panoptic_segmentation(
            _random_outputs(seed), label_ids_to_fuse={1, 2}, rule="transformers"
        )
    ]
    segments = [segment for result in results for segment in result["segments_info"]]
    assert all(s["was_fused"] == (s["label_id"] in (1, 2)) for s in segments)
    repeated = 0
    for result in results:
        ids_of_label = {}
        for segment in result["segments_info"]:
            ids_of_label.setdefault(segment["label_id"], set()).add(segment["id"])
        assert all(len(ids_of_label[label]) == 1 for label in ids_of_label.keys() & {1, 2}), (
            "one id per stuff label"
        )
        repeated += len(result["segments_info"]) - len({s["id"] for s in result["segments_info"]})
    assert repeated, "some queries of one stuff label became one segment"


def test_fused_segments_never_share_an_id_with_another_segment():
    """Queries: stuff label 0, thing label 1, stuff label 0 again, thing label 2. transformers gives the
    last segment id 2 (the thing of label 1 already has it); ours gives 3."""
    logits = torch.full((1, 4, 4), -10.0)
    logits[0, torch.arange(4), torch.tensor([0, 1, 0, 2])] = 10.0
    masks = torch.full((1, 4, 4, 8), -10.0)
    for query, columns in enumerate([slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]):
        masks[0, query, :, columns] = 10.0
    result = HfDetrImageProcessor().post_process_panoptic_segmentation(
        SegmentationOutput(logits, masks), label_ids_to_fuse={0}, rule="transformers"
    )[0]
    assert [(s["id"], s["label_id"]) for s in result["segments_info"]] == [(1, 0), (2, 1), (1, 0), (3, 2)]
    assert result["segmentation"][0].tolist() == [1, 1, 2, 2, 1, 1, 3, 3]
    reference = DetrImageProcessor().post_process_panoptic_segmentation(
        SegmentationOutput(logits, masks), label_ids_to_fuse={0}
    )
    _assert_same_segments([result], reference, fused=True)  # the same segments, under fresh ids


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target_sizes", TARGET_SIZES, ids=["native", "resized"])
def test_instance_post_processing_equals_transformers(seed, target_sizes):
    outputs = _random_outputs(seed)
    kwargs = {"threshold": 0.3, "mask_threshold": 0.4, "target_sizes": target_sizes}
    ours = HfDetrImageProcessor().post_process_instance_segmentation(outputs, **kwargs)
    reference = DetrImageProcessor().post_process_instance_segmentation(outputs, **kwargs)
    _assert_same_segments(ours, reference)
    ours_rle = HfDetrImageProcessor().post_process_instance_segmentation(
        outputs, **kwargs, return_coco_annotation=True
    )
    reference_rle = DetrImageProcessor().post_process_instance_segmentation(
        outputs, **kwargs, return_coco_annotation=True
    )
    for image, (mine, theirs) in enumerate(zip(ours_rle, reference_rle)):
        if image == 1:  # no segment: transformers returns the -1 map, ours its run-length form
            height, width = theirs["segmentation"].shape
            assert mine["segmentation"] == [[1, height * width]]
        else:
            assert mine["segmentation"] == [[int(v) for v in runs] for runs in theirs["segmentation"]]


def test_high_threshold_leaves_every_image_without_segments():
    outputs = _random_outputs(0, empty_image=None)
    processor = HfDetrImageProcessor()
    for results in (
        processor.post_process_panoptic_segmentation(
            outputs, threshold=0.9999, target_sizes=TARGET_SIZES[1], rule="transformers"
        ),
        processor.post_process_instance_segmentation(outputs, threshold=0.9999),
    ):
        assert all(r["segments_info"] == [] and (r["segmentation"] == -1).all() for r in results)
    official = processor.post_process_panoptic_segmentation(
        outputs, threshold=0.9999, target_sizes=TARGET_SIZES[1]
    )
    assert all(r["segments_info"] == [] and (r["segmentation"] == 0).all() for r in official)  # 0: no segment
    for rule, size in (("transformers", (12, 16)), ("detr", (48, 64))):  # the masks' size; the input's (4x)
        results = processor.post_process_panoptic_segmentation(outputs, 0.9999, rule=rule)
        assert [tuple(r["segmentation"].shape) for r in results] == [size] * 3


@pytest.mark.parametrize("target_sizes", TARGET_SIZES, ids=["native", "resized"])
def test_semantic_post_processing_equals_transformers(target_sizes):
    outputs = _random_outputs(5)
    ours = HfDetrImageProcessor().post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    reference = DetrImageProcessor().post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    assert len(ours) == len(reference) == outputs.logits.shape[0] > 1  # every image (zip would stop early)
    assert all(torch.equal(a, b) for a, b in zip(ours, reference))
    with_scores = HfDetrImageProcessor().post_process_semantic_segmentation(
        outputs, target_sizes=target_sizes, return_segmentation_scores=True
    )
    reference = DetrImageProcessor().post_process_semantic_segmentation(
        outputs, target_sizes=target_sizes, return_segmentation_scores=True
    )
    assert len(with_scores) == len(reference) == outputs.logits.shape[0]
    for mine, theirs in zip(with_scores, reference):
        assert mine.segmentation_scores.shape[0] == 6
        assert torch.allclose(mine.segmentation_scores, theirs.segmentation_scores, atol=1e-6)
        assert torch.equal(mine.segmentation, mine.segmentation_scores.argmax(0))


def test_post_processing_errors_name_the_argument():
    outputs = _random_outputs(0)
    processor = HfDetrImageProcessor()
    with pytest.raises(ValueError, match="`target_sizes` must hold one positive"):
        processor.post_process_panoptic_segmentation(outputs, target_sizes=[(10, 10)])
    with pytest.raises(TypeError, match="`outputs` must have tensors `logits`"):
        processor.post_process_instance_segmentation(SegmentationOutput(outputs.logits, None))
    with pytest.raises(ValueError, match="the same B and N"):
        processor.post_process_semantic_segmentation(
            SegmentationOutput(outputs.logits, outputs.pred_masks[:1])
        )
