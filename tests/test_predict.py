"""hf-detr-predict: JSON lines equal to the pipeline's, drawn boxes, attention maps, bad files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from detr_testing import KNOWN_BOX, known_score

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
        outputs = model(**inputs, output_attentions=True)
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
