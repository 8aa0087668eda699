"""hf-detr-predict: JSON lines equal to the pipeline's, drawn boxes, attention maps, bad files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from detr_testing import KNOWN_BOX, known_score
from scipy.ndimage import binary_erosion

from hf_detr import HfDetrForObjectDetection, HfDetrImageProcessor
from hf_detr.predict import main
from hf_detr.visualization import (
    class_colour,
    decoder_attention_map,
    draw_detections,
    encoder_attention_map,
    heat_overlay,
    line_width,
)


@pytest.fixture()
def photos(tmp_path, coco_image_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(coco_image_dir / "000000039769.png", folder / "cats.png")
    return folder


def _box_pixels(width: int, height: int) -> tuple[int, int, int, int]:
    cx, cy, w, h = KNOWN_BOX.tolist()
    return (
        int((cx - w / 2) * width),
        int((cy - h / 2) * height),
        int((cx + w / 2) * width),
        int((cy + h / 2) * height),
    )


def test_writes_json_lines_that_match_the_pipeline_and_draws_the_box(tmp_path, known_checkpoint, photos):
    from transformers import pipeline

    out = tmp_path / "out"
    assert (
        main(["--model", str(known_checkpoint), str(photos), "--output-dir", str(out), "--threshold", "0.5"])
        == 0
    )
    records = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    expected = pipeline("object-detection", model=str(known_checkpoint))(
        str(photos / "cats.png"), threshold=0.5
    )
    truncated = [{"score": pytest.approx(r["score"], abs=1e-6), "label": r["label"],
                  "box": {k: int(v) for k, v in r["box"].items()}} for r in records]  # fmt: skip
    assert truncated == expected and records[0]["score"] == pytest.approx(known_score(), abs=1e-5)
    drawn = PIL.Image.open(out / "cats.png").convert("RGB")
    assert drawn.size == (640, 480)
    x0, y0, x1, y1 = _box_pixels(640, 480)
    colour = np.array(class_colour(records[0]["label_id"]))
    pixels = np.asarray(drawn)
    middle_y = (y0 + y1) // 2
    assert (pixels[middle_y, x0] == colour).all() and (pixels[middle_y, x1 - 1] == colour).all()
    assert (pixels[y1 - 1, (x0 + x1) // 2] == colour).all()  # the bottom edge (the tag covers the top)


def test_attention_maps_are_saved_with_the_right_sizes(tmp_path, known_checkpoint, photos):
    out = tmp_path / "out"
    assert main(["--model", str(known_checkpoint), str(photos / "cats.png"), "--output-dir", str(out), "--attention",
                 "--attention-pixel", "100,120", "--top-k", "1", "--threshold", "0.1"]) == 0  # fmt: skip
    pair = PIL.Image.open(out / "cats_det0_attention.png")
    assert pair.size == (640 * 2 + 8, 480)
    assert PIL.Image.open(out / "cats_encoder_attention.png").size == (640, 480)


def test_attention_maps_are_distributions_over_the_unpadded_feature_map(coco_image_dir):
    from detr_testing import tiny_hf_detr_config

    model = HfDetrForObjectDetection(tiny_hf_detr_config()).eval()
    processor = HfDetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 256})
    image = PIL.Image.open(coco_image_dir / "000000039769.png")
    inputs = processor([image, image.rotate(90, expand=True)])  # the second is padded on the right
    with torch.no_grad():
        outputs = model(**inputs, output_attentions=True, output_feature_mask=True)
        plain = model(**inputs, output_attentions=True)
    with pytest.raises(ValueError, match="output_feature_mask=True"):
        decoder_attention_map(plain, 0, query=3)
    landscape = decoder_attention_map(outputs, 0, query=3)
    portrait = decoder_attention_map(outputs, 1, query=3)
    # 128x170 and 170x128 in a 170x170 batch: a 6x6 feature map of which each image covers its part
    mask = outputs.feature_mask
    assert landscape.shape == (int(mask[0, :, 0].sum()), 6) and landscape.shape[0] < 6
    assert portrait.shape == (6, int(mask[1, 0].sum())) and portrait.shape[1] < 6
    assert torch.allclose(landscape.sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(portrait.sum(), torch.tensor(1.0), atol=1e-5)  # padding got no attention
    encoder = encoder_attention_map(outputs, 1, 2, 1)
    assert encoder.shape == portrait.shape and torch.allclose(encoder.sum(), torch.tensor(1.0), atol=1e-5)
    overlay = heat_overlay(image, landscape)
    assert overlay.size == image.size and overlay.mode == "RGB"


def _tag_height(size: tuple[int, int]) -> int:
    width, height = size
    image = PIL.Image.new("RGB", size, (255, 255, 255))
    box = torch.tensor([[width / 10, height / 4, width / 2, height * 3 / 4]])
    pixels = np.asarray(draw_detections(image, box, [3], [0.87], {3: "cat"}))
    above = pixels[: int(height / 4), int(width / 10) : int(width / 2)]
    return len(np.nonzero((above == np.array(class_colour(3))).all(-1).any(-1))[0])


def test_labels_are_readable_and_scale_with_the_image():
    small, large = _tag_height((300, 225)), _tag_height((1200, 900))
    assert small >= 10 and large >= 20  # a filled tag of at least one readable line above the box
    assert large > 2 * small  # the font grows with the image
    assert line_width(1200, 900) >= 4 > line_width(300, 225)


def test_unreadable_and_missing_inputs_are_reported_and_skipped(tmp_path, known_checkpoint, photos, capsys):
    (photos / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(
        [
            "--model",
            str(known_checkpoint),
            str(photos),
            str(tmp_path / "nothing*.png"),
            "--output-dir",
            str(out),
        ]
    )
    assert code == 1
    errors = capsys.readouterr().err
    assert "broken.jpg: cannot read the image" in errors and "nothing*.png: no such file" in errors
    assert (out / "cats.png").is_file() and not (out / "broken.png").exists()


def test_exif_rotation_is_applied_as_the_pipeline_does(tmp_path, known_checkpoint):
    image = PIL.Image.new("RGB", (200, 100), (120, 60, 30))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert (
        main(
            [
                "--model",
                str(known_checkpoint),
                str(tmp_path / "rotated.jpg"),
                "--output-dir",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert PIL.Image.open(tmp_path / "o" / "rotated.png").size == (100, 200)


# ---------------------------------------------------------------------------------------------------
# Panoptic (paper figure 9)
# ---------------------------------------------------------------------------------------------------
SEGMENT_LABELS = {0: "cat", 1: "remote", 2: "bed", 3: "sky"}


@pytest.fixture(scope="module")
def segmentation_checkpoint(tmp_path_factory):
    """A small random HfDetrForSegmentation whose queries name object classes (the no-object logit is
    lowered), so that segments come out at the default mask thresholds."""
    from detr_testing import randomize_for_parity, tiny_hf_detr_config

    from hf_detr import HfDetrForSegmentation

    torch.manual_seed(0)
    config = tiny_hf_detr_config(
        d_model=128, encoder_attention_heads=8, decoder_attention_heads=8, use_masks=True, num_queries=8,
        num_labels=4, id2label=SEGMENT_LABELS, label2id={v: k for k, v in SEGMENT_LABELS.items()},
    )  # fmt: skip
    model = randomize_for_parity(HfDetrForSegmentation(config)).eval()
    with torch.no_grad():
        model.detr.class_labels_classifier.bias[-1] = -5.0
    directory = tmp_path_factory.mktemp("panoptic")
    model.save_pretrained(directory)
    HfDetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 128}).save_pretrained(directory)
    return directory


def _panoptic_of(checkpoint, image: PIL.Image.Image, threshold: float, fuse: set[int] | None = None) -> dict:
    """The post-processing run directly on one image (a batch of one has no padding)."""
    from hf_detr import HfDetrForSegmentation

    model = HfDetrForSegmentation.from_pretrained(checkpoint).eval()
    processor = HfDetrImageProcessor.from_pretrained(checkpoint)
    with torch.no_grad():
        outputs = model(**processor([image]))
    return processor.post_process_panoptic_segmentation(
        outputs, threshold=threshold, target_sizes=[(image.height, image.width)], label_ids_to_fuse=fuse
    )[0]


def test_panoptic_writes_segments_that_match_the_post_processing_and_draws_them(
    tmp_path, segmentation_checkpoint, photos
):
    out = tmp_path / "out"
    # no --task: a segmentation checkpoint runs panoptic
    assert main(["--model", str(segmentation_checkpoint), str(photos), "--output-dir", str(out),
                 "--threshold", "0.3"]) == 0  # fmt: skip
    assert not (out / "detections.jsonl").exists() and not (out / "cats.png").exists()
    records = [json.loads(line) for line in (out / "segments.jsonl").read_text().splitlines()]
    image = PIL.Image.open(photos / "cats.png").convert("RGB")
    expected = _panoptic_of(segmentation_checkpoint, image, 0.3)
    segmentation = expected["segmentation"]
    assert len(expected["segments_info"]) >= 1, "the test model must give at least one segment"
    areas = torch.bincount(segmentation.flatten().clamp(min=0).long())
    assert [(r["segment_id"], r["label_id"], r["label"], r["area"]) for r in records] == [
        (s["id"], s["label_id"], SEGMENT_LABELS[s["label_id"]], int(areas[s["id"]]))
        for s in expected["segments_info"]
    ]
    assert [r["score"] for r in records] == pytest.approx([s["score"] for s in expected["segments_info"]])
    for record in records:
        rows, columns = torch.nonzero(segmentation == record["segment_id"], as_tuple=True)
        assert record["bbox"] == {"xmin": int(columns.min()), "ymin": int(rows.min()),
                                  "xmax": int(columns.max()) + 1, "ymax": int(rows.max()) + 1}  # fmt: skip
        assert record["image"] == str(photos / "cats.png") and record["fused"] is False
    drawn = np.asarray(PIL.Image.open(out / "cats_panoptic.png").convert("RGB"), dtype=np.int16)
    original = np.asarray(image, dtype=np.int16)
    assert drawn.shape == original.shape == (480, 640, 3)
    firsts = [r for i, r in enumerate(records) if r["label_id"] not in {q["label_id"] for q in records[:i]}]
    largest = max(firsts, key=lambda r: r["area"])  # the first segment of its class: drawn in its colour
    first = segmentation.numpy() == largest["segment_id"]
    assert (np.abs(drawn - original).max(-1) > 0)[first].mean() > 0.95
    first = binary_erosion(first, iterations=3)  # inside: no outline
    blend = np.round((original + np.array(class_colour(largest["label_id"]))) / 2)  # alpha 0.5
    assert (np.abs(drawn - blend).max(-1) <= 1)[first].mean() > 0.8  # all but outlines and the tag


# queries 0-3 of the known segmentation outputs: (label, logit); the others predict no object
KNOWN_SEGMENTS = ((3, 10.0), (0, 9.0), (0, 8.0), (1, 7.0))


def _known_regions(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[4, h, w] bool masks at image coordinates x, y in [0, 1] ([1, w], [h, 1]): sky over the top 40%,
    below it a cat on each side and a remote (a disk) cut out of the right cat."""
    top = y.expand(-1, x.shape[1]) < 0.4
    disk = (x - 0.75) ** 2 + (y - 0.7) ** 2 < 0.15**2
    return torch.stack([top, ~top & (x < 0.5), ~top & (x >= 0.5) & ~disk, ~top & disk])


@pytest.fixture()
def known_segments(monkeypatch):
    """HfDetrForSegmentation outputs KNOWN_SEGMENTS with masks placed on each image's own (unpadded)
    pixels, whatever else is in the batch; post-processing, drawing and records run as they are."""
    from hf_detr import HfDetrForSegmentation

    forward = HfDetrForSegmentation.forward

    def known_forward(self, pixel_values, pixel_mask=None, **kwargs):
        outputs = forward(self, pixel_values, pixel_mask=pixel_mask, **kwargs)
        logits = torch.zeros_like(outputs.logits)  # [B, N, K+1]
        logits[..., -1] = 10.0
        for query, (label, logit) in enumerate(KNOWN_SEGMENTS):
            logits[:, query, -1] = 0.0
            logits[:, query, label] = logit
        masks = torch.full_like(outputs.pred_masks, -10.0)  # [B, N, h, w]
        stride_y = pixel_values.shape[-2] / masks.shape[-2]
        stride_x = pixel_values.shape[-1] / masks.shape[-1]
        for index, image_mask in enumerate(pixel_mask.bool()):
            rows, columns = int(image_mask.any(1).sum()), int(image_mask.any(0).sum())
            y = (torch.arange(masks.shape[-2]) + 0.5)[:, None] * stride_y / rows  # cell centres
            x = (torch.arange(masks.shape[-1]) + 0.5)[None] * stride_x / columns
            regions = _known_regions(x, y) & (x < 1) & (y < 1)
            masks[index, : len(KNOWN_SEGMENTS)][regions] = 10.0
        outputs.logits, outputs.pred_masks = logits, masks
        return outputs

    monkeypatch.setattr(HfDetrForSegmentation, "forward", known_forward)


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_panoptic_names_and_colours_each_segment_and_fuses_named_classes(
    tmp_path, segmentation_checkpoint, photos, known_segments
):
    arguments = ["--model", str(segmentation_checkpoint), str(photos / "cats.png"), "--task", "panoptic"]
    assert main([*arguments, "--output-dir", str(tmp_path / "a")]) == 0
    records = _records(tmp_path / "a" / "segments.jsonl")
    assert [(r["segment_id"], r["label"]) for r in records] == [
        (1, "sky"),
        (2, "cat"),
        (3, "cat"),
        (4, "remote"),
    ]
    assert sum(r["area"] for r in records) == 640 * 480
    sky = {"xmin": 0, "ymin": 0, "xmax": 640, "ymax": pytest.approx(0.4 * 480, abs=20)}  # a mask cell: 20 px
    assert records[0]["bbox"] == sky
    drawn = np.asarray(PIL.Image.open(tmp_path / "a" / "cats_panoptic.png").convert("RGB"), dtype=np.int16)
    original = np.asarray(PIL.Image.open(photos / "cats.png").convert("RGB"), dtype=np.int16)
    # the two cats: the class colour, then a lighter shade of it (at alpha 0.5 over the photo)
    from hf_detr.visualization import segment_colour

    for (x, y), colour in {(100, 400): class_colour(0), (600, 260): segment_colour(0, 1)}.items():
        assert np.abs(drawn[y, x] - np.round((original[y, x] + np.array(colour)) / 2)).max() <= 1
    # fused by name and by id, the official rule: the second cat query is merged into the first, then
    # dropped as empty, and the map made again without it (its pixels go to the best remaining query)
    assert main([*arguments, "--output-dir", str(tmp_path / "c"), "--fuse-labels", "cat, 3"]) == 0
    official = _records(tmp_path / "c" / "segments.jsonl")
    assert [(r["label"], r["fused"]) for r in official] == [("sky", True), ("cat", True), ("remote", False)]
    assert official[1]["area"] >= records[1]["area"] and sum(r["area"] for r in official) == 640 * 480
    # transformers' rule: the two cats share one segment with the better score
    assert main([*arguments, "--output-dir", str(tmp_path / "d"), "--panoptic-rule", "transformers"]) == 0
    records = _records(tmp_path / "d" / "segments.jsonl")
    transformers_rule = ["--fuse-labels", "cat, 3", "--panoptic-rule", "transformers"]
    assert main([*arguments, "--output-dir", str(tmp_path / "b"), *transformers_rule]) == 0
    fused = _records(tmp_path / "b" / "segments.jsonl")
    assert [(r["label"], r["fused"]) for r in fused] == [("sky", True), ("cat", True), ("remote", False)]
    assert fused[1]["area"] == records[1]["area"] + records[2]["area"]
    assert (
        fused[1]["score"] == pytest.approx(records[1]["score"]) and records[1]["score"] > records[2]["score"]
    )


def test_an_image_padded_in_a_batch_gets_the_segments_it_gets_alone(
    tmp_path, segmentation_checkpoint, photos, known_segments
):
    """The mask map is cut to the image's unpadded part before post-processing resizes it, as the
    official PostProcessSegm does; otherwise the padding a wider image brings would stretch it."""
    folder = tmp_path / "pair"
    folder.mkdir()
    wide = PIL.Image.open(photos / "cats.png").resize((320, 240))
    wide.save(folder / "wide.png")
    wide.rotate(90, expand=True).save(folder / "tall.png")
    for batch_size in (1, 2):
        assert main(["--model", str(segmentation_checkpoint), str(folder), "--output-dir",
                     str(tmp_path / str(batch_size)), "--batch-size", str(batch_size)]) == 0  # fmt: skip
    alone, together = _records(tmp_path / "1" / "segments.jsonl"), _records(tmp_path / "2" / "segments.jsonl")
    assert [r["image"] for r in together].count(str(folder / "tall.png")) == 4
    assert together == alone
    for name in ("wide_panoptic.png", "tall_panoptic.png"):
        assert np.array_equal(
            np.asarray(PIL.Image.open(tmp_path / "1" / name)),
            np.asarray(PIL.Image.open(tmp_path / "2" / name)),
        )


def test_unknown_fuse_labels_and_panoptic_with_a_detector_are_refused(
    tmp_path, segmentation_checkpoint, known_checkpoint, photos, capsys
):
    with pytest.raises(SystemExit) as error:
        main(["--model", str(segmentation_checkpoint), str(photos), "--output-dir", str(tmp_path),
              "--fuse-labels", "sky,grass"])  # fmt: skip
    assert (
        error.value.code == 2 and "'grass' is neither a class name nor a label id" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as error:
        main(
            [
                "--model",
                str(known_checkpoint),
                str(photos),
                "--output-dir",
                str(tmp_path),
                "--task",
                "panoptic",
            ]
        )
    assert error.value.code == 2 and "needs a segmentation checkpoint" in capsys.readouterr().err


def test_a_segmentation_checkpoint_also_detects(tmp_path, segmentation_checkpoint, photos):
    out = tmp_path / "out"
    assert main(["--model", str(segmentation_checkpoint), str(photos), "--output-dir", str(out),
                 "--task", "detection", "--threshold", "0.3"]) == 0  # fmt: skip
    records = _records(out / "detections.jsonl")
    assert records and {r["label"] for r in records} <= set(SEGMENT_LABELS.values())
    assert PIL.Image.open(out / "cats.png").size == (640, 480) and not (out / "segments.jsonl").exists()


def test_panoptic_reports_unreadable_inputs_and_exits_with_1(
    tmp_path, segmentation_checkpoint, photos, capsys
):
    (photos / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(["--model", str(segmentation_checkpoint), str(photos), str(tmp_path / "nothing*.png"),
                 "--output-dir", str(out), "--threshold", "0.3"])  # fmt: skip
    assert code == 1
    errors = capsys.readouterr().err
    assert "broken.jpg: cannot read the image" in errors and "nothing*.png: no such file" in errors
    assert (out / "cats_panoptic.png").is_file() and not (out / "broken_panoptic.png").exists()
    assert {r["image"] for r in _records(out / "segments.jsonl")} == {str(photos / "cats.png")}


def test_draw_panoptic_colours_outlines_and_names_each_segment():
    from hf_detr.visualization import draw_panoptic, label_point, segment_colour

    image = PIL.Image.new("RGB", (160, 120), (100, 100, 100))
    segmentation = torch.zeros(120, 160, dtype=torch.int32)
    segmentation[10:110, 5:55] = 1  # cat
    segmentation[10:110, 55:105] = 2  # a second cat, touching the first
    segmentation[20:100, 115:155] = 3  # a "C" of bed: its centre of mass lies outside it
    segmentation[40:80, 125:155] = 0
    segments = [{"id": 1, "label_id": 0}, {"id": 2, "label_id": 0}, {"id": 3, "label_id": 2}]
    segments.append({"id": 3, "label_id": 2})  # fused queries repeat their id
    pixels = np.asarray(draw_panoptic(image, segmentation, segments, {0: "cat", 2: "bed"}), dtype=np.int16)
    colours = {1: class_colour(0), 2: segment_colour(0, 1), 3: class_colour(2)}
    assert colours[2] != colours[1]
    for segment_id, (row, column) in {1: (15, 30), 2: (105, 80), 3: (95, 150)}.items():
        blend = np.round((np.array([100, 100, 100]) + colours[segment_id]) / 2)
        assert np.abs(pixels[row, column] - blend).max() <= 1, segment_id
    assert (pixels[60, 54] == colours[1]).all() and (pixels[60, 55] == colours[2]).all()  # the outline
    assert (pixels[5, 30] == 100).all() and (pixels[60, 140] == 100).all()  # no segment there
    mask = (segmentation == 3).numpy()
    x, y = label_point(mask)
    assert mask[int(y), int(x)]
    for segment_id, (row, column) in {1: (60, 30), 2: (60, 80), 3: (int(y), int(x))}.items():
        around = pixels[row - 8 : row + 8, max(0, column - 20) : column + 20]
        tag = (around == colours[segment_id]).all(-1)
        text = ~tag & (np.abs(around - 100).max(-1) > 60)  # black or white letters on the tag
        assert tag.sum() > 40 and text.sum() > 5, segment_id
    with pytest.raises(ValueError, match=r"must be \[H, W\] = \[120, 160\]"):
        draw_panoptic(image, segmentation[:60], segments, {})
