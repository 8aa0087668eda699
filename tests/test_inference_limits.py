"""Inference refuses what cannot work, naming the argument or setting (issue 36): thresholds outside
[0, 1]; processor sizes beyond MAX_IMAGE_SIDE and images beyond MAX_ENCODER_TOKENS, before allocating,
with the environment variables that raise the limits; unusable metadata of an exported file; an
`--attention-pixel` outside the image."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import PIL.Image
import pytest
import torch
from detr_testing import tiny_hf_detr_config

from hf_detr import HfDetrForObjectDetection, HfDetrImageProcessor, image_processing_detr, validation_detr
from hf_detr.export import processor_from_metadata, read_export_metadata
from hf_detr.predict import main as predict_main

SIDE_ENV, TOKENS_ENV = "HF_DETR_MAX_IMAGE_SIDE", "HF_DETR_MAX_ENCODER_TOKENS"


@pytest.fixture(autouse=True)
def default_limits(monkeypatch):
    monkeypatch.delenv(SIDE_ENV, raising=False)
    monkeypatch.delenv(TOKENS_ENV, raising=False)


@pytest.fixture(scope="module")
def tiny_model():
    return HfDetrForObjectDetection(tiny_hf_detr_config()).eval()


def detection_outputs() -> SimpleNamespace:
    return SimpleNamespace(logits=torch.randn(2, 3, 5), pred_boxes=torch.rand(2, 3, 4))


def segmentation_outputs() -> SimpleNamespace:
    return SimpleNamespace(logits=torch.randn(1, 3, 5), pred_masks=torch.randn(1, 3, 8, 8))


# ------------------------------------------------------------------------------------------------
# Thresholds
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [-0.1, 1.01, 2])
def test_detection_threshold_outside_0_1_is_refused(threshold):
    with pytest.raises(ValueError, match="`threshold` must be a number from 0 to 1"):
        HfDetrImageProcessor().post_process_object_detection(detection_outputs(), threshold)


def test_thresholds_0_and_1_are_the_ends_of_the_range():
    processor = HfDetrImageProcessor()
    assert all(len(r["scores"]) == 3 for r in processor.post_process_object_detection(detection_outputs(), 0))
    assert all(len(r["scores"]) == 0 for r in processor.post_process_object_detection(detection_outputs(), 1))


@pytest.mark.parametrize(
    "method", ["post_process_panoptic_segmentation", "post_process_instance_segmentation"]
)
@pytest.mark.parametrize(
    "name, value",
    [
        ("threshold", 1.5),
        ("mask_threshold", -0.5),
        ("mask_threshold", 1.2),
        ("overlap_mask_area_threshold", 3),
    ],
)
def test_segmentation_thresholds_outside_0_1_are_refused_by_name(method, name, value):
    with pytest.raises(ValueError, match=f"`{name}` must be a number from 0 to 1"):
        getattr(HfDetrImageProcessor(), method)(segmentation_outputs(), **{name: value})


def test_pipeline_threshold_outside_0_1_is_refused(known_checkpoint):
    from transformers import pipeline

    detector = pipeline("object-detection", model=str(known_checkpoint))
    with pytest.raises(ValueError, match="`threshold` must be a number from 0 to 1"):
        detector(PIL.Image.new("RGB", (64, 48)), threshold=1.5)


def test_an_empty_image_list_names_images():
    # transformers' pipelines index an empty list before calling the processor (an IndexError of theirs)
    with pytest.raises(ValueError, match="`images` is empty"):
        HfDetrImageProcessor()([])


# ------------------------------------------------------------------------------------------------
# Processor sizes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"size": 10**6}, "size"),
        ({"size": {"shortest_edge": 200000}}, "size"),
        ({"size": {"shortest_edge": 800, "longest_edge": 200000}}, "size"),
        ({"size": {"height": 4097, "width": 10}}, "size"),
        ({"pad_size": {"height": 10, "width": 5000}}, "pad_size"),
    ],
)
def test_sizes_beyond_the_limit_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}` .* beyond the limit of 4096 pixels \\({SIDE_ENV}\\)"):
        HfDetrImageProcessor(**kwargs)


def test_a_saved_config_or_a_call_asking_too_much_is_refused_before_allocating(tmp_path):
    HfDetrImageProcessor().save_pretrained(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "size": {"shortest_edge": 200000}}))
    with pytest.raises(ValueError, match=f"`size` .* raise the limit with {SIDE_ENV}=<pixels>"):
        HfDetrImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="`size` .*1000000 pixels"):  # 12 TB if it were allocated
        HfDetrImageProcessor()(torch.zeros(3, 16, 16), size=10**6)


def test_images_growing_beyond_the_limit_are_refused_by_index():
    panorama = torch.zeros(3, 1, 700, dtype=torch.uint8)  # shorter side 20 -> 20x14000
    with pytest.raises(ValueError, match="images\\[1\\] would be 20x14000 pixels .* 'longest_edge'"):
        HfDetrImageProcessor(size={"shortest_edge": 20})([torch.zeros(3, 8, 8, dtype=torch.uint8), panorama])
    with pytest.raises(ValueError, match="images\\[0\\] would be 5000x8 pixels unresized .*do_resize=True"):
        HfDetrImageProcessor(do_resize=False)(torch.rand(3, 5000, 8))


def test_the_side_limit_is_raised_by_the_environment_or_the_module_constant(monkeypatch):
    tall, unresized = torch.rand(3, 5000, 8), {"do_resize": False, "do_rescale": False}
    monkeypatch.setenv(SIDE_ENV, "8192")
    assert HfDetrImageProcessor(size={"shortest_edge": 5000}).size == {"shortest_edge": 5000}
    assert HfDetrImageProcessor(**unresized)(tall)["pixel_values"].shape == (1, 3, 5000, 8)
    monkeypatch.delenv(SIDE_ENV)
    monkeypatch.setattr(image_processing_detr, "MAX_IMAGE_SIDE", 6000)
    assert HfDetrImageProcessor(**unresized)(tall)["pixel_values"].shape == (1, 3, 5000, 8)
    for text in ("big", "²"):  # "²" is a digit to str.isdigit, not a number to int()
        monkeypatch.setenv(SIDE_ENV, text)
        with pytest.raises(ValueError, match=f"{SIDE_ENV} must be a whole number of pixels"):
            HfDetrImageProcessor()


# ------------------------------------------------------------------------------------------------
# Model inputs
# ------------------------------------------------------------------------------------------------
def test_too_many_encoder_tokens_are_refused_before_the_backbone_runs(tiny_model):
    huge = torch.zeros(1, 3, 1, 1).expand(1, 3, 8000, 8000)  # a view: nothing allocated
    message = f"8000x8000 pixels give 62500 encoder tokens .*250x250 .*stride 32.* {TOKENS_ENV}=<tokens>"
    with pytest.raises(ValueError, match=message):
        tiny_model(pixel_values=huge)
    with pytest.raises(ValueError, match="62500 encoder tokens"):
        tiny_model(pixel_values=[huge[0]])  # per-image lists too


def test_the_token_limit_is_set_by_the_environment_or_the_module_constant(tiny_model, monkeypatch):
    image = torch.randn(1, 3, 160, 160)  # a 5x5 feature map: 25 tokens
    with torch.no_grad():
        assert tiny_model(pixel_values=image).logits.shape[0] == 1
    monkeypatch.setenv(TOKENS_ENV, "24")
    with pytest.raises(ValueError, match=f"25 encoder tokens .*beyond the limit of 24 \\({TOKENS_ENV}\\)"):
        tiny_model(pixel_values=image)
    monkeypatch.delenv(TOKENS_ENV)
    monkeypatch.setattr(validation_detr, "MAX_ENCODER_TOKENS", 20)
    with pytest.raises(ValueError, match="beyond the limit of 20"):
        tiny_model(pixel_values=image)


# ------------------------------------------------------------------------------------------------
# Exported files' metadata
# ------------------------------------------------------------------------------------------------
def onnx_with_metadata(path, **overrides: str):
    """A one-node ONNX file with hf-detr-export's metadata keys, `overrides` replacing entries."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    tensor = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", tensor[:1], tensor[1:])
    model = helper.make_model(graph)
    metadata = {
        "config": "{}",
        "preprocessor_config": HfDetrImageProcessor().to_json_string(),
        "id2label": '{"0": "cat"}',
        "inputs": '["pixel_values"]',
        "outputs": '["logits", "pred_boxes"]',
        **overrides,
    }
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_valid_metadata_reads_back(tmp_path):
    metadata = read_export_metadata(onnx_with_metadata(tmp_path / "model.onnx"))
    assert metadata["id2label"] == {0: "cat"}
    assert processor_from_metadata(metadata).size == {"shortest_edge": 800, "longest_edge": 1333}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"config": "{not json"}, "model.onnx: its 'config' metadata is not JSON"),
        ({"inputs": '{"a": 1}'}, "model.onnx: its 'inputs' metadata must be a list in JSON, got dict"),
        ({"id2label": '{"cat": 0}'}, "model.onnx: its 'id2label' metadata must have class ids as keys"),
        (
            {"preprocessor_config": json.dumps({"size": {"shortest_edge": 200000}})},
            f"model.onnx: its 'preprocessor_config' metadata cannot be used: `size` .*{SIDE_ENV}",
        ),
    ],
)
def test_unusable_metadata_is_an_error_naming_the_file(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        read_export_metadata(onnx_with_metadata(tmp_path / "model.onnx", **overrides))


# ------------------------------------------------------------------------------------------------
# hf-detr-predict --attention-pixel
# ------------------------------------------------------------------------------------------------
def test_an_attention_pixel_outside_the_image_names_the_image_and_its_size(
    tmp_path, known_checkpoint, coco_image_dir
):
    shutil.copy(coco_image_dir / "000000039769.png", tmp_path / "cats.png")
    arguments = ["--model", str(known_checkpoint), str(tmp_path / "cats.png"), "--output-dir",
                 str(tmp_path / "out"), "--attention", "--attention-pixel", "700,10"]  # fmt: skip
    with pytest.raises(
        ValueError, match=r"--attention-pixel 700,10 lies outside .*cats.png \(640x480 pixels\)"
    ):
        predict_main(arguments)
