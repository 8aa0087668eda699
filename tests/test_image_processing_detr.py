"""HfDetrImageProcessor: parity with transformers' PIL backend and the reference values, inputs of every
kind, annotations, padding, switches, serialisation, post-processing."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import PIL.Image
import pytest
import torch
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

from hf_detr import HfDetrImageProcessor
from hf_detr.modeling_detr import HfDetrObjectDetectionOutput


@pytest.fixture(scope="module")
def processor():
    return HfDetrImageProcessor()


def test_pixels_match_transformers_pil_backend_within_1e4(coco, processor):
    image, annotation = coco
    ours = processor(image, annotations=annotation)
    reference = DetrImageProcessorPil()(image, annotations=annotation, return_tensors="pt")
    assert ours["pixel_values"].shape == (1, 3, 800, 1066)
    assert (ours["pixel_values"] - reference["pixel_values"]).abs().max() <= 1e-4
    assert torch.equal(ours["pixel_mask"].long(), reference["pixel_mask"])


def test_labels_equal_the_reference_values(coco, processor):
    """The values transformers' own test_image_processing_detr.py expects of DetrImageProcessor on this image."""
    image, annotation = coco
    outputs = processor(image, annotations=annotation)
    labels = outputs["labels"][0]
    assert torch.allclose(
        outputs["pixel_values"][0, 0, 0, :3], torch.tensor([0.2796, 0.3138, 0.3481]), atol=1e-4
    )
    assert labels["class_labels"].tolist() == [75, 75, 63, 65, 17, 17]
    assert torch.allclose(labels["boxes"][0], torch.tensor([0.5503, 0.2765, 0.0604, 0.2215]), atol=1e-4)
    assert labels["size"].tolist() == [800, 1066] and labels["orig_size"].tolist() == [480, 640]
    assert torch.allclose(labels["area"][:2], torch.tensor([5887.96, 11250.21]), atol=1e-2)
    assert labels["image_id"].tolist() == [39769] and labels["iscrowd"].tolist() == [0] * 6


def test_boxes_are_normalized_by_the_unpadded_size_whatever_else_is_in_the_batch(coco, processor):
    image, annotation = coco
    alone = processor(image, annotations=annotation)
    taller = PIL.Image.new("RGB", (400, 900), (10, 20, 30))  # resized to 1332x592 (longer side capped)
    batch = processor([image, taller], annotations=[annotation, {"image_id": 1, "annotations": []}])
    assert batch["pixel_values"].shape[-2:] == (1332, 1066)
    assert torch.equal(batch["labels"][0]["boxes"], alone["labels"][0]["boxes"])
    assert torch.equal(batch["pixel_values"][0, :, :800, :1066], alone["pixel_values"][0])
    assert batch["pixel_values"][0, :, 800:].abs().max() == 0
    assert batch["pixel_mask"][0, :800, :1066].all() and not batch["pixel_mask"][0, 800:].any()
    assert batch["labels"][1]["boxes"].shape == (0, 4)


def test_resize_rule_is_the_official_one():
    processor = HfDetrImageProcessor()
    for (height, width), expected in {
        (480, 640): (800, 1066),
        (640, 480): (1066, 800),
        (333, 1000): (444, 1333),  # the longer side caps at 1333
        (800, 800): (800, 800),
    }.items():
        outputs = processor(np.zeros((height, width, 3), np.uint8))
        assert tuple(outputs["pixel_values"].shape[-2:]) == expected


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------
def _small_image(seed: int = 0, size=(48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_every_input_kind_gives_the_same_pixels(tmp_path):
    processor = HfDetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 200})
    array = _small_image()
    path = tmp_path / "image.png"
    PIL.Image.fromarray(array).save(path)
    encoded = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    expected = processor(PIL.Image.fromarray(array))["pixel_values"]
    inputs = {
        "numpy HWC": array,
        "numpy CHW": np.ascontiguousarray(array.transpose(2, 0, 1)),
        "torch CHW": torch.from_numpy(array).permute(2, 0, 1),
        "path": str(path),
        "pathlib": path,
        "base64": encoded,
    }
    for name, image in inputs.items():
        assert torch.equal(processor(image)["pixel_values"], expected), name
    float_pixels = processor(array.astype(np.float32))["pixel_values"]  # other resize: torchvision antialias
    assert (float_pixels - expected).abs().max() < 0.05


def test_ambiguous_layouts_follow_input_data_format():
    processor = HfDetrImageProcessor(do_resize=False)
    square = np.random.default_rng(1).integers(0, 256, (3, 5, 3), dtype=np.uint8)  # H=3, W=5, C=3
    last = processor(square, input_data_format="channels_last")["pixel_values"]
    assert last.shape == (1, 3, 3, 5)
    assert torch.equal(last[0], processor(np.ascontiguousarray(square.transpose(2, 0, 1)))["pixel_values"][0])
    with pytest.warns(UserWarning, match="ambiguous"):
        first = processor(square)["pixel_values"]  # as transformers: channels first when both could be
    assert first.shape == (1, 3, 5, 3)


def test_lists_and_4d_batches():
    processor = HfDetrImageProcessor(do_resize=False)
    batch = np.stack([_small_image(0), _small_image(1)])
    assert processor(batch)["pixel_values"].shape == (2, 3, 48, 64)
    assert processor(list(batch))["pixel_values"].shape == (2, 3, 48, 64)
    assert processor(torch.from_numpy(batch).permute(0, 3, 1, 2))["pixel_values"].shape == (2, 3, 48, 64)


def test_color_modes_are_converted_to_rgb():
    processor = HfDetrImageProcessor(do_resize=False, do_normalize=False)
    gray = PIL.Image.fromarray(np.full((4, 6), 100, np.uint8), mode="L")
    out = processor(gray)["pixel_values"]
    assert out.shape == (1, 3, 4, 6) and torch.allclose(out, torch.full_like(out, 100 / 255))
    transparent = PIL.Image.new("RGBA", (6, 4), (0, 0, 0, 0))  # fully transparent -> white background
    assert torch.allclose(processor(transparent)["pixel_values"], torch.ones(1, 3, 4, 6))
    palette = gray.convert("P")
    assert torch.allclose(processor(palette)["pixel_values"], out)
    cmyk = PIL.Image.new("CMYK", (6, 4), (0, 0, 0, 0))  # no ink = white
    assert torch.allclose(processor(cmyk)["pixel_values"], torch.ones(1, 3, 4, 6))
    assert processor(np.full((4, 6), 100, np.uint8))["pixel_values"].shape == (1, 3, 4, 6)


def test_sixteen_bit_images_are_brought_to_the_eight_bit_range():
    processor = HfDetrImageProcessor(do_resize=False)
    eight = np.random.default_rng(2).integers(0, 256, (5, 7), dtype=np.uint8)
    sixteen = eight.astype(np.uint16) * 257  # the same image in 16 bits
    expected = processor(PIL.Image.fromarray(eight))["pixel_values"]
    assert torch.allclose(processor(PIL.Image.fromarray(sixteen))["pixel_values"], expected)
    assert torch.allclose(processor(sixteen)["pixel_values"], expected)


def test_file_paths_get_their_exif_rotation_as_the_pipeline_loads_them(tmp_path):
    from transformers.image_utils import load_image

    array = _small_image(3, size=(20, 40))  # 20 high, 40 wide
    image = PIL.Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    processor = HfDetrImageProcessor(do_resize=False)
    from_path = processor(str(path))["pixel_values"]
    assert from_path.shape == (1, 3, 40, 20)
    assert torch.equal(from_path, processor(load_image(str(path)))["pixel_values"])


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10,), np.uint8), "shape"),
        (np.zeros((1, 1, 10, 10, 3), np.uint8), "shape"),
        ([np.zeros((6, 6, 3), np.uint8), 3], r"images\[1\] is a int"),
        ([[np.zeros((6, 6, 3), np.uint8)]], "nested"),
        (np.zeros((10, 10, 7), np.uint8), "channel dimension"),
        ([], "empty"),
        ("/no/such/file.png", "cannot load"),
    ],
)
def test_bad_images_raise_value_errors(images, message):
    with pytest.raises(ValueError, match=message):
        HfDetrImageProcessor()(images)


def test_bad_arguments_are_named():
    image = _small_image()
    with pytest.raises(TypeError, match="do_flip"):
        HfDetrImageProcessor()(image, do_flip=True)
    with pytest.raises(ValueError, match="`size`"):
        HfDetrImageProcessor(size={"longest": 3})
    with pytest.raises(ValueError, match="return_tensors"):
        HfDetrImageProcessor()(image, return_tensors="tf")
    with pytest.raises(ValueError, match="pad_size"):
        HfDetrImageProcessor(pad_size={"height": 10, "width": 10})(image)
    with pytest.raises(ValueError, match="`pad_size` must be a dict with 'height' and 'width'"):
        HfDetrImageProcessor()(image, pad_size={"shortest_edge": 20})  # a call's override checked too


# ---------------------------------------------------------------------------------------------------
# Switches, sizes, serialisation
# ---------------------------------------------------------------------------------------------------
def test_every_step_can_be_switched_off():
    image = _small_image(4)
    raw = torch.from_numpy(image).permute(2, 0, 1).float()
    no_resize = HfDetrImageProcessor(do_resize=False)(image)["pixel_values"][0]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(no_resize, (raw / 255 - mean) / std, atol=1e-5)
    no_rescale = HfDetrImageProcessor(do_resize=False, do_rescale=False)(image)["pixel_values"][0]
    assert torch.allclose(no_rescale, (raw - mean) / std, atol=1e-3)
    no_normalize = HfDetrImageProcessor(do_resize=False, do_normalize=False)(image)["pixel_values"][0]
    assert torch.allclose(no_normalize, raw / 255, atol=1e-6)
    unpadded = HfDetrImageProcessor(do_pad=False)([image, _small_image(5, size=(64, 48))])
    assert "pixel_mask" not in unpadded and isinstance(unpadded["pixel_values"], list)
    assert [tuple(p.shape) for p in unpadded["pixel_values"]] == [(3, 800, 1066), (3, 1066, 800)]


def test_size_forms_and_fixed_padding():
    image = _small_image(6, size=(50, 100))
    assert HfDetrImageProcessor(size={"height": 30, "width": 40})(image)["pixel_values"].shape == (
        1,
        3,
        30,
        40,
    )
    limited = HfDetrImageProcessor(size={"max_height": 80, "max_width": 120})(image)
    assert limited["pixel_values"].shape == (1, 3, 60, 120)
    padded = HfDetrImageProcessor(size={"height": 30, "width": 40}, pad_size={"height": 64, "width": 64})(
        image
    )
    assert padded["pixel_values"].shape == (1, 3, 64, 64) and padded["pixel_mask"][0].sum() == 30 * 40


def test_settings_round_trip_through_preprocessor_config(tmp_path):
    processor = HfDetrImageProcessor(
        size={"shortest_edge": 320, "longest_edge": 512},
        do_convert_rgb=False,
        image_mean=[0.5, 0.5, 0.5],
        pad_size={"height": 600, "width": 600},
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "HfDetrImageProcessor"
    loaded = HfDetrImageProcessor.from_pretrained(tmp_path)
    for name in (
        "size",
        "do_convert_rgb",
        "image_mean",
        "image_std",
        "pad_size",
        "resample",
        "rescale_factor",
    ):
        assert getattr(loaded, name) == getattr(processor, name), name
    image = _small_image(7)
    assert torch.equal(loaded(image)["pixel_values"], processor(image)["pixel_values"])


def test_numpy_outputs():
    outputs = HfDetrImageProcessor()(
        _small_image(), return_tensors="np", annotations={"image_id": 3, "annotations": []}
    )
    assert isinstance(outputs["pixel_values"], np.ndarray) and outputs["pixel_values"].dtype == np.float32
    assert isinstance(outputs["labels"][0]["boxes"], np.ndarray)


# ---------------------------------------------------------------------------------------------------
# Annotations
# ---------------------------------------------------------------------------------------------------
def test_annotations_drop_crowds_and_degenerate_boxes_and_clip_to_the_image():
    image = np.zeros((100, 200, 3), np.uint8)
    annotation = {
        "image_id": 5,
        "annotations": [
            {"bbox": [10, 10, 20, 30], "category_id": 1, "area": 500.0, "iscrowd": 0},
            {"bbox": [0, 0, 50, 50], "category_id": 2, "area": 2500.0, "iscrowd": 1},  # crowd
            {"bbox": [190, 90, 30, 30], "category_id": 3, "area": 100.0},  # clipped to 10x10
            {"bbox": [50, 50, 0, 10], "category_id": 4, "area": 0.0},  # degenerate
            {"bbox": [250, 10, 10, 10], "category_id": 5, "area": 100.0},  # outside: degenerate after clip
        ],
    }
    labels = HfDetrImageProcessor(do_resize=False)(image, annotations=annotation)["labels"][0]
    assert labels["class_labels"].tolist() == [1, 3]
    expected = torch.tensor(
        [[20 / 200, 25 / 100, 20 / 200, 30 / 100], [195 / 200, 95 / 100, 10 / 200, 10 / 100]]
    )
    assert torch.allclose(labels["boxes"], expected)
    resized = HfDetrImageProcessor(size={"height": 50, "width": 400})(image, annotations=annotation)[
        "labels"
    ][0]
    assert torch.allclose(resized["boxes"], expected)  # normalized boxes do not change with the size
    assert torch.allclose(resized["area"], torch.tensor([500.0, 100.0]) * 2 * 0.5)
    absolute = HfDetrImageProcessor(do_resize=False, do_convert_annotations=False)(
        image, annotations=annotation
    )
    assert absolute["labels"][0]["boxes"][0].tolist() == [10, 10, 30, 40]


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        ([{"category_id": 1}], r"annotations\[0\] \(image_id 9\), object 0 has no 'bbox'"),
        ([{"bbox": [1, 2, 3], "category_id": 1}], "'bbox' must be 4 finite numbers"),
        ([{"bbox": [1, 2, float("nan"), 3], "category_id": 1}], "'bbox' must be 4 finite numbers"),
        ([{"bbox": [1, 2, 3, 4], "category_id": "cat"}], "'category_id' must be an integer"),
        ([{"bbox": [1, 2, 3, 4]}], "has no 'category_id'"),
        ([{"bbox": [1, 2, 3, 4], "category_id": 1, "area": None}], "'area' must be a finite number"),
    ],
)
def test_malformed_annotations_name_the_image_and_the_field(objects, message):
    with pytest.raises(ValueError, match=message):
        HfDetrImageProcessor()(_small_image(), annotations={"image_id": 9, "annotations": objects})


def test_annotation_count_must_match_the_images():
    with pytest.raises(ValueError, match=r"number of images \(2\) and annotations \(1\) do not match"):
        HfDetrImageProcessor()(
            [_small_image(), _small_image(1)], annotations=[{"image_id": 1, "annotations": []}]
        )
    with pytest.raises(ValueError, match="Invalid COCO detection annotations"):
        HfDetrImageProcessor()(_small_image(), annotations={"image_id": 1})
    with pytest.raises(ValueError, match=r"Invalid COCO detection annotations.*keys \['annotations'\]"):
        HfDetrImageProcessor()(_small_image(), annotations={"annotations": []})  # no image_id


# ---------------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------------
def _outputs(seed=0, batch=2, queries=10, classes=5, inside=True):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes + 1, generator=generator) * 3
    centers = torch.rand(batch, queries, 2, generator=generator) * 0.4 + 0.3
    sizes = torch.rand(batch, queries, 2, generator=generator) * (0.5 if inside else 1.5)
    return HfDetrObjectDetectionOutput(logits=logits, pred_boxes=torch.cat([centers, sizes], -1))


def test_post_processing_matches_transformers_for_boxes_inside_the_image():
    outputs = _outputs(inside=True)
    sizes = [(480, 640), (300, 200)]
    ours = HfDetrImageProcessor().post_process_object_detection(outputs, 0.3, sizes)
    reference = DetrImageProcessorPil().post_process_object_detection(
        outputs, threshold=0.3, target_sizes=sizes
    )
    for mine, theirs in zip(ours, reference):
        assert torch.equal(mine["labels"], theirs["labels"])
        assert torch.allclose(mine["scores"], theirs["scores"])
        assert torch.allclose(mine["boxes"], theirs["boxes"], atol=1e-4)


def test_post_processing_clips_boxes_to_the_image():
    outputs = _outputs(inside=False)
    results = HfDetrImageProcessor().post_process_object_detection(
        outputs, 0.0, torch.tensor([[480, 640], [300, 200]])
    )
    for result, (height, width) in zip(results, [(480, 640), (300, 200)]):
        boxes = result["boxes"]
        assert boxes.min() >= 0 and boxes[:, 0::2].max() <= width and boxes[:, 1::2].max() <= height
    assert (results[0]["boxes"][:, 2] == 640).any()  # some boxes really were clipped
    normalized = HfDetrImageProcessor().post_process_object_detection(outputs, 0.0)
    assert normalized[0]["boxes"].max() <= 1


def test_top_k_takes_the_best_query_class_pairs_then_the_threshold():
    outputs = _outputs(seed=3, batch=1, queries=4, classes=3)
    probabilities = outputs.logits.softmax(-1)[0, :, :-1]  # [4, 3]
    results = HfDetrImageProcessor().post_process_object_detection(outputs, threshold=0.0, top_k=5)[0]
    expected_scores, expected_index = probabilities.flatten().topk(5)
    assert torch.allclose(results["scores"], expected_scores)
    assert results["labels"].tolist() == (expected_index % 3).tolist()
    query_boxes = HfDetrImageProcessor().post_process_object_detection(outputs, threshold=0.0)[0]["boxes"]
    assert torch.allclose(results["boxes"], query_boxes[expected_index // 3])
    high = HfDetrImageProcessor().post_process_object_detection(outputs, threshold=0.5, top_k=5)[0]
    assert (high["scores"] > 0.5).all() and len(high["scores"]) == int((expected_scores > 0.5).sum())


def test_target_sizes_must_match_the_batch():
    with pytest.raises(ValueError, match="target_sizes"):
        HfDetrImageProcessor().post_process_object_detection(_outputs(batch=2), 0.5, [(10, 10)])


def test_an_input_image_bytes_roundtrip_for_jpeg(tmp_path):
    """JPEG files decode through PIL exactly as load_image does."""
    from transformers.image_utils import load_image

    buffer = io.BytesIO()
    PIL.Image.fromarray(_small_image(8)).save(buffer, format="JPEG")
    path = tmp_path / "photo.jpg"
    path.write_bytes(buffer.getvalue())
    processor = HfDetrImageProcessor()
    assert torch.equal(processor(str(path))["pixel_values"], processor(load_image(str(path)))["pixel_values"])


def test_already_rescaled_float_images_are_warned_about():
    with pytest.warns(UserWarning, match="already rescaled"):
        HfDetrImageProcessor()(np.random.default_rng(0).random((3, 20, 30), dtype=np.float32))


def test_processor_output_feeds_the_model_and_post_processing(coco):
    from detr_testing import tiny_hf_detr_config

    from hf_detr import HfDetrForObjectDetection

    image, _ = coco
    processor = HfDetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 200})
    model = HfDetrForObjectDetection(tiny_hf_detr_config()).eval()
    inputs = processor([image, image.rotate(90, expand=True)])
    with torch.no_grad():
        outputs = model(**inputs)
    results = processor.post_process_object_detection(outputs, 0.0, [(480, 640), (640, 480)])
    assert [len(r["scores"]) for r in results] == [model.config.num_queries] * 2


def test_extreme_aspect_ratios_keep_every_side_between_1_and_the_longest_edge():
    processor = HfDetrImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333})
    for shape in [(1, 5000, 3), (5000, 2, 3)]:
        image = np.zeros(shape, np.uint8)
        height, width = processor(image, input_data_format="channels_last")["pixel_values"].shape[-2:]
        assert (min(height, width), max(height, width)) == (1, 1333)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rescale_factor": float("nan")}, "`rescale_factor` must be a finite positive number"),
        ({"image_mean": "abc"}, "`image_mean` must be a number or a list"),
        ({"size": -3}, "`size` must be a positive int"),
    ],
)
def test_bad_arguments_are_errors_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HfDetrImageProcessor()(_small_image(), **kwargs)
    with pytest.raises(ValueError, match=message):  # the constructor's, checked as a call's
        HfDetrImageProcessor(**kwargs)


@pytest.mark.parametrize("mean", [[0.5, True, 0.5], [[0.5, 0.5], [0.5]]], ids=["bool", "ragged"])
def test_the_constructor_refuses_normalization_values_that_are_not_numbers(mean):
    with pytest.raises(ValueError, match="`image_mean` must be a number or a list"):
        HfDetrImageProcessor(image_mean=mean)


def test_normalization_values_are_stored_as_lists_of_floats():
    processor = HfDetrImageProcessor(image_mean=torch.tensor([0.5, 0.4, 0.3]), image_std=np.float32(0.25))
    assert processor.image_std == [0.25] and type(processor.image_std[0]) is float
    assert processor.image_mean == pytest.approx([0.5, 0.4, 0.3]) and len(processor.image_mean) == 3


def test_non_finite_float_images_and_fractional_image_ids_are_errors_naming_them():
    image = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    image[2, 2, 0] = np.inf
    with pytest.raises(ValueError, match=r"images\[1\] contains NaN or inf"):
        HfDetrImageProcessor()([_small_image(), image])
    with pytest.raises(ValueError, match="'image_id' must be an integer within int64"):
        HfDetrImageProcessor()(_small_image(), annotations={"image_id": 5.7, "annotations": []})


def test_an_int_size_is_the_shorter_side_with_the_longer_at_most_1333_as_in_transformers(tmp_path):
    from transformers import DetrImageProcessor

    HfDetrImageProcessor().save_pretrained(tmp_path)
    for kwargs in ({"size": 42}, {"size": 42, "max_size": 100}, {"size": {"shortest_edge": 42}}):
        theirs = {k: v for k, v in dict(DetrImageProcessor(**kwargs).size).items() if v is not None}
        assert HfDetrImageProcessor(**kwargs).size == theirs, kwargs
    assert HfDetrImageProcessor.from_pretrained(tmp_path, size=42).size == {
        "shortest_edge": 42,
        "longest_edge": 1333,
    }


def test_annotation_format_enum_survives_save_and_load(tmp_path):
    """The format given as a string or as transformers' `AnnotationFormat` is the same setting, kept by
    save_pretrained/from_pretrained (what transformers' legacy-annotation-format test checks)."""
    from transformers.image_utils import AnnotationFormat

    for given in ("coco_panoptic", AnnotationFormat.COCO_PANOPTIC, AnnotationFormat.COCO_DETECTION):
        processor = HfDetrImageProcessor(format=given)
        processor.save_pretrained(tmp_path)
        reloaded = HfDetrImageProcessor.from_pretrained(tmp_path)
        assert reloaded.format == processor.format == AnnotationFormat(given).value
        assert reloaded.to_dict() == processor.to_dict()


def test_the_processor_works_inside_inference_mode_with_worker_threads():
    """Inference mode is thread-local: the workers that write the batch enter it as the caller is."""
    images = [np.full((40, 30 + 10 * i, 3), 60 * i, dtype=np.uint8) for i in range(3)]
    processor = HfDetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}, num_threads=3)
    expected = processor(images)
    with torch.inference_mode():
        inside = processor(images)
    assert torch.equal(inside["pixel_values"], expected["pixel_values"])
    assert torch.equal(inside["pixel_mask"], expected["pixel_mask"])


def test_numpy_frames_are_pictures_and_opencv_bgr_frames_say_so():
    """An [H, W, 3] uint8 RGB frame gives what its PIL image gives; a BGR one (OpenCV's), read with
    input_channel_order="bgr", the same; BGRA keeps its alpha."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    processor = HfDetrImageProcessor(size={"shortest_edge": 40, "longest_edge": 80})
    expected = processor(PIL.Image.fromarray(frame))["pixel_values"]
    assert torch.equal(processor(frame)["pixel_values"], expected)
    bgr = np.ascontiguousarray(frame[..., ::-1])
    assert torch.equal(processor(bgr, input_channel_order="bgr")["pixel_values"], expected)
    assert not torch.equal(processor(bgr)["pixel_values"], expected)
    alpha = np.full((45, 61, 1), 128, dtype=np.uint8)
    rgba = processor(PIL.Image.fromarray(np.concatenate([frame, alpha], -1)))["pixel_values"]
    bgra = np.concatenate([bgr, alpha], -1)
    assert torch.equal(processor(bgra, input_channel_order="bgr")["pixel_values"], rgba)
    with pytest.raises(ValueError, match="`input_channel_order` must be 'rgb' or 'bgr'"):
        processor(frame, input_channel_order="BGR!")
