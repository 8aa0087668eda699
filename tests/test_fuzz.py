"""Fuzzing the user-facing inputs: the processor (images, arguments, annotations), the model's inputs, the
loss's labels and post-processing.

Every generated case is either valid, and must give a sane result (finite values, boxes inside the
image, scores in [0, 1], sizes within the asked limits), or carries known bad values, and must raise a
ValueError or TypeError from hf_detr's own code whose message names one of them. After every model case
the parameters and buffers must still be finite (train mode with trainable BatchNorm included).

Hypothesis runs derandomized (seeded) without a database. HF_DETR_FUZZ_EXAMPLES sets the number of
cases across all strategies (default 200, about half a minute here); with HF_DETR_FUZZ_REPORT=path the
outcome counts are written there as JSON.
"""

from __future__ import annotations

import collections
import json
import math
import os
import traceback
import warnings
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from detr_testing import tiny_hf_detr_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hf_detr
from hf_detr import HfDetrForObjectDetection, HfDetrImageProcessor
from hf_detr.image_processing_detr import DEFAULT_SIZE, max_image_side, normalize_size, resized_size
from hf_detr.loss_detr import SetCriterion

TOTAL_EXAMPLES = int(os.environ.get("HF_DETR_FUZZ_EXAMPLES", "200"))
SHARES = {"processor": 0.3, "annotations": 0.2, "model": 0.2, "loss": 0.15, "post_processing": 0.15}
PACKAGE_DIR = Path(hf_detr.__file__).resolve().parent
OUTCOMES: collections.Counter = collections.Counter()
BAD_CHANCE = 5  # percent: the chance that a drawn argument is a bad one


def rare(draw, one_in: int) -> bool:
    """True about once in `one_in` draws. Hypothesis favours small integers (its simplest values), so
    the rare branch sits at the top of the range."""
    return draw(st.integers(1, one_in)) == one_in


def fuzz_settings(kind: str):
    return settings(
        max_examples=max(10, round(TOTAL_EXAMPLES * SHARES[kind])),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes():
    yield
    kinds = sorted({kind for kind, _ in OUTCOMES})
    table = {kind: {o: OUTCOMES[kind, o] for o in ("clean error", "accepted", "bad")} for kind in kinds}
    total = {o: sum(row[o] for row in table.values()) for o in ("clean error", "accepted", "bad")}
    print(f"\nfuzz outcomes: {sum(total.values())} cases, {total} per kind {table}")
    if os.environ.get("HF_DETR_FUZZ_REPORT"):
        Path(os.environ["HF_DETR_FUZZ_REPORT"]).write_text(json.dumps({"total": total, "per_kind": table}))


def raised_by_us(error: BaseException) -> bool:
    """The exception was raised in hf_detr's own code (not in torch, PIL or numpy)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE_DIR)


def run_case(kind: str, call, bad: list[str], check) -> None:
    """`bad`: the names an error must mention (empty: a valid case, whose result `check` inspects)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call()
    except (ValueError, TypeError) as error:
        named = any(name in str(error) for name in bad)
        if bad and named and raised_by_us(error):
            OUTCOMES[kind, "clean error"] += 1
            return
        OUTCOMES[kind, "bad"] += 1
        raise AssertionError(f"{kind}: {type(error).__name__}({error}) for bad={bad}") from error
    except Exception as error:  # anything else escaping is bad by definition
        OUTCOMES[kind, "bad"] += 1
        raise AssertionError(f"{kind}: {type(error).__name__}({error}) for bad={bad}") from error
    if bad:
        OUTCOMES[kind, "bad"] += 1
        raise AssertionError(f"{kind}: accepted silently although {bad} are bad")
    try:
        check(result)
    except AssertionError:
        OUTCOMES[kind, "bad"] += 1
        raise
    OUTCOMES[kind, "accepted"] += 1


def pick(draw, name: str, valid: list, bad_values: list, bad: list[str]):
    """A valid value, or (BAD_CHANCE %) a bad one whose name joins `bad`."""
    if bad_values and draw(st.integers(0, 99)) >= 100 - BAD_CHANCE:
        bad.append(name)
        return draw(st.sampled_from(bad_values))
    return draw(st.sampled_from(valid))


def as_tensor(value) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value


# ------------------------------------------------------------------------------------------------
# Processor: images and arguments
# ------------------------------------------------------------------------------------------------
SIZES = [
    {"shortest_edge": 16, "longest_edge": 32},
    {"shortest_edge": 24, "longest_edge": 40},
    {"shortest_edge": 8, "longest_edge": 64},
    20,
    {"height": 12, "width": 30},
    {"max_height": 24, "max_width": 24},
]
BAD_SIZES = [
    0,
    -3,
    True,
    "abc",
    2.5,
    {"shortest_edge": 0},
    {"height": 5},
    {"shortest_edge": -1, "longest_edge": 4},
]


@st.composite
def image_arrays(draw, index: int, layout: str, bad: list[str], tmp_dir: Path):
    extreme = rare(draw, 8)
    if extreme:  # extreme aspect ratios: 1-2 pixels against hundreds
        height, width = draw(st.integers(1, 2)), draw(st.integers(100, 700))
        if draw(st.booleans()):
            height, width = width, height
    else:
        height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    kind = draw(st.sampled_from(["uint8", "uint8", "uint16", "float32", "float64", "float16", "file"]))
    channels = draw(st.sampled_from([1, 3, 3, 4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "file":
        path = tmp_dir / f"image_{index}_{draw(st.integers(0, 10**6))}.png"
        PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        problem = draw(st.integers(0, 19)) - 18  # -18..-1: a good file
        if problem == 0:  # truncated
            data = path.read_bytes()
            path.write_bytes(data[: max(8, len(data) // 2)])
            bad.append(str(path))
        elif problem == 1:
            path = tmp_dir / "missing.png"
            bad.append("missing.png")
        return str(path)
    if kind.startswith("uint"):
        top = 255 if kind == "uint8" else 65535
        array = rng.integers(0, top + 1, (height, width, channels)).astype(kind)
    else:
        array = (rng.random((height, width, channels)) * draw(st.sampled_from([1.0, 255.0]))).astype(kind)
        corruption = draw(st.integers(0, 23)) - 20  # 0..3: corrupted
        if 0 <= corruption < 3:
            value = [np.nan, np.inf, -np.inf][corruption]
            array.flat[draw(st.integers(0, array.size - 1))] = value
            bad.append(f"images[{index}]")
        elif corruption == 3 and kind == "float64":
            array.flat[0] = 1e300  # finite, but not in float32
            bad.append(f"images[{index}]")
    broken = draw(st.integers(0, 39)) - 37  # 0..2: broken
    if broken == 0:
        array = array[:0]  # no rows
        bad.append(f"images[{index}]")
    elif broken == 1:
        array = array.astype(np.int32)
        bad.append(f"images[{index}]")
    elif broken == 2:
        array = array[None, None]  # 5-D
        bad.append(f"images[{index}]")
    if layout == "chw" and array.ndim == 3:
        array = np.ascontiguousarray(array.transpose(2, 0, 1))
    if channels == 1 and array.ndim == 3 and draw(st.booleans()):
        array = array[0] if layout == "chw" else array[..., 0]  # [H, W]
    if layout == "tensor" or rare(draw, 4):
        return torch.from_numpy(np.ascontiguousarray(array))
    return array


@st.composite
def processor_cases(draw, tmp_dir: Path):
    bad: list[str] = []
    layout = draw(st.sampled_from(["hwc", "chw", "tensor"]))
    count = draw(st.integers(1, 3))
    images = [draw(image_arrays(index, layout, bad, tmp_dir)) for index in range(count)]
    kwargs = {
        "size": pick(draw, "size", SIZES, BAD_SIZES, bad),
        "rescale_factor": pick(
            draw, "rescale_factor", [1 / 255, 0.5, None], [math.nan, math.inf, 0, -1.0, "x"], bad
        ),
        "image_mean": pick(
            draw, "image_mean", [None, [0.5, 0.5, 0.5], 0.4], ["abc", [math.nan, 0, 0], [1, 2], []], bad
        ),
        "image_std": pick(
            draw, "image_std", [None, [0.2, 0.3, 0.4], 1.0], [0, [-1, 1, 1], [math.inf, 1, 1], "s"], bad
        ),
        "resample": pick(draw, "resample", [0, 2, 3, None], [9, -1, "bilinear", 2.5], bad),
        "do_resize": pick(draw, "do_resize", [True, True, False], ["yes", 1], bad),
        "do_pad": pick(draw, "do_pad", [True, True, False], ["no"], bad),
        "num_threads": pick(draw, "num_threads", [1, 2, None], [0, -2, "4"], bad),
        "return_tensors": pick(draw, "return_tensors", ["pt", "np"], ["tf", 3], bad),
    }
    if layout != "tensor":
        kwargs["input_data_format"] = {"hwc": "channels_last", "chw": "channels_first"}[layout]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    oversized_images(images, kwargs, bad)
    return images, kwargs, bad


def oversized_images(images: list, kwargs: dict, bad: list[str]) -> None:
    """Images that resizing would make longer than the processor's side limit (a 2x700 image with a
    shorter side of 20 and no longest_edge: 20x7000) must be errors naming them."""
    if "size" in bad or kwargs.get("do_resize", True) is not True:
        return
    size = normalize_size(kwargs.get("size", DEFAULT_SIZE))
    for index, image in enumerate(images):
        name = f"images[{index}]"
        if name in bad or (isinstance(image, str) and not Path(image).is_file()):
            continue
        if max(resized_size(*original_size(image, kwargs), size)) > max_image_side():
            bad.append(name)


def size_limits(size, original: tuple[int, int], do_resize: bool):
    """A predicate on an output (height, width): within what `size` asks (never a 0-pixel side)."""
    if not do_resize:
        return lambda h, w: (h, w) == original
    if isinstance(size, int):
        return lambda h, w: min(h, w) <= size and min(h, w) >= 1
    if "height" in size:
        return lambda h, w: (h, w) == (size["height"], size["width"])
    if "max_height" in size:
        return lambda h, w: 1 <= h <= size["max_height"] and 1 <= w <= size["max_width"]
    return lambda h, w: 1 <= min(h, w) <= size["shortest_edge"] and 1 <= max(h, w) <= size["longest_edge"]


def original_size(image, layout_kwargs) -> tuple[int, int]:
    if isinstance(image, str):
        with PIL.Image.open(image) as opened:
            return opened.height, opened.width
    shape = tuple(image.shape)
    if len(shape) == 2:
        return shape
    if layout_kwargs.get("input_data_format") == "channels_last":
        return shape[:2]
    if layout_kwargs.get("input_data_format") == "channels_first":
        return shape[1:]
    return shape[1:] if shape[0] in (1, 3, 4) else shape[:2]  # the processor's rule for tensors


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_images")


def test_processor_fuzz_gives_sane_batches_or_named_errors(image_dir):
    @fuzz_settings("processor")
    @given(processor_cases(image_dir))
    def case(drawn):
        images, kwargs, bad = drawn

        def check(batch):
            values = [as_tensor(v) for v in batch["pixel_values"]]
            originals = [original_size(image, kwargs) for image in images]
            size = kwargs.get("size", {"shortest_edge": 800, "longest_edge": 1333})
            for index, value in enumerate(values):
                assert value.shape[0] == 3 and torch.isfinite(value.float()).all()
                if "pixel_mask" in batch:
                    mask = as_tensor(batch["pixel_mask"][index]).bool()
                    height, width = int(mask.any(1).sum()), int(mask.any(0).sum())
                    assert mask[:height, :width].all() and mask.sum() == height * width
                else:
                    height, width = value.shape[-2:]
                within = size_limits(size, originals[index], kwargs.get("do_resize", True))
                assert within(height, width), (originals[index], size, (height, width))

        run_case("processor", lambda: HfDetrImageProcessor()(images, **kwargs), bad, check)

    case()


# ------------------------------------------------------------------------------------------------
# Processor: COCO detection annotations
# ------------------------------------------------------------------------------------------------
IMAGE_IDS = [0, 7, 2**63 - 1, 5.0, np.int64(12), torch.tensor([3])]
BAD_IMAGE_IDS = [5.7, "img-5", None, 2**70, True, -(2**64), math.nan]


@st.composite
def coco_objects(draw, bad: list[str]):
    x, y = draw(st.floats(-10, 40)), draw(st.floats(-10, 40))
    w, h = draw(st.floats(0, 40)), draw(st.floats(0, 40))
    valid_boxes = [[x, y, w, h], [int(x), int(y), int(w), int(h)], (x, y, w, h), np.array([x, y, w, h])]
    bad_boxes = [
        [x, y, -w - 1, h],
        [x, math.nan, w, h],
        [x, y, math.inf, h],
        [x, y, w],
        "abc",
        None,
        [True, 0, 1, 1],
    ]
    obj = {
        "bbox": pick(draw, "bbox", valid_boxes, bad_boxes, bad),
        "category_id": pick(draw, "category_id", [0, 1, 90, np.int64(3)], [-1, 1.5, "cat", 2**70, None], bad),
    }
    if draw(st.booleans()):
        obj["area"] = pick(draw, "area", [0.0, w * h, int(w * h)], [-5.0, math.nan, "x"], bad)
    if draw(st.booleans()):
        obj["iscrowd"] = pick(draw, "iscrowd", [0, 0, 1, False], [2, "yes"], bad)
    return obj


@st.composite
def annotation_cases(draw):
    bad: list[str] = []
    annotation = {"annotations": [draw(coco_objects(bad)) for _ in range(draw(st.integers(0, 4)))]}
    if not rare(draw, 10):
        annotation["image_id"] = pick(draw, "image_id", IMAGE_IDS, BAD_IMAGE_IDS, bad)
    else:
        bad.append("annotations")  # COCO's form (and transformers) require the image_id
    if rare(draw, 30):
        bad.append("annotations")
        annotation = draw(st.sampled_from([[annotation, annotation], "ann", {"image_id": 1}]))
    return annotation, bad


ANNOTATION_IMAGE = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


@fuzz_settings("annotations")
@given(annotation_cases())
def test_annotation_fuzz_gives_normalized_boxes_or_named_errors(drawn):
    annotation, bad = drawn

    def check(batch):
        (labels,) = batch["labels"]
        boxes = labels["boxes"]
        assert torch.isfinite(boxes).all() and ((boxes >= 0) & (boxes <= 1)).all(), boxes
        assert torch.isfinite(labels["area"]).all() and (labels["area"] >= 0).all()
        assert (labels["class_labels"] >= 0).all() and len(boxes) <= len(annotation["annotations"])
        given_id = annotation.get("image_id", 0)
        assert labels["image_id"].tolist() == [int(as_tensor(given_id).reshape(-1)[0])]

    processor = HfDetrImageProcessor(size={"shortest_edge": 16, "longest_edge": 32})
    run_case("annotations", lambda: processor(ANNOTATION_IMAGE, annotations=annotation), bad, check)


# ------------------------------------------------------------------------------------------------
# Model inputs
# ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def fuzz_model() -> HfDetrForObjectDetection:
    """A tiny detector whose backbone BatchNorm trains (the state a NaN input could corrupt)."""
    torch.manual_seed(0)
    config = tiny_hf_detr_config(
        backbone="test_resnet", d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5,
        freeze_backbone_batch_norm=False, trainable_backbone_layers=5,
    )  # fmt: skip
    return HfDetrForObjectDetection(config)


def feature_mask_is_empty(mask: torch.Tensor) -> bool:
    """Whether the stride-32 map samples no real pixel (nearest-neighbour, as the backbone's mask)."""
    size = (-(-mask.shape[-2] // 32), -(-mask.shape[-1] // 32))
    return not F.interpolate(mask[None, None].float(), size=size)[0, 0].any()


@st.composite
def model_cases(draw):
    bad: list[str] = []
    batch, height, width = draw(st.integers(1, 3)), draw(st.integers(1, 72)), draw(st.integers(1, 72))
    training = rare(draw, 2)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    pixel_values = torch.randn(batch, 3, height, width, generator=generator) * draw(
        st.sampled_from([1.0, 3.0, 1e3])
    )
    corruption = draw(st.integers(0, 15)) - 12  # 0..3: corrupted
    if corruption >= 0:
        image = draw(st.integers(0, batch - 1))
        pixel_values[image].view(-1)[draw(st.integers(0, 3 * height * width - 1))] = [
            math.nan, math.inf, -math.inf, 1e6
        ][corruption]  # fmt: skip
        bad.append("pixel_values")
    dtype = pick(
        draw, "pixel_values", [torch.float32, torch.float64, torch.float16], [torch.uint8, torch.int64], bad
    )
    pixel_values = pixel_values.to(dtype) if dtype.is_floating_point else pixel_values.clamp(0, 255).to(dtype)

    kinds = ["padded"] * 5 + ["none"] * 3 + ["shifted", "empty", "numpy", "list", "shape"]
    mask_kind = draw(st.sampled_from(kinds))
    pixel_mask = None
    if mask_kind != "none":
        pixel_mask = torch.zeros(batch, height, width, dtype=draw(st.sampled_from([torch.bool, torch.long])))
        for image in range(batch):
            rows, columns = draw(st.integers(1, height)), draw(st.integers(1, width))
            if mask_kind == "shifted" and image == 0:
                pixel_mask[image, height - rows :, width - columns :] = 1  # padding top-left
            else:
                pixel_mask[image, :rows, :columns] = 1
        if mask_kind == "empty":
            pixel_mask[draw(st.integers(0, batch - 1))] = 0
            bad.append("pixel_mask")
        elif mask_kind == "shifted" and feature_mask_is_empty(pixel_mask[0]):
            bad.append("pixel_mask")
        elif mask_kind == "numpy":
            pixel_mask, _ = pixel_mask.numpy(), bad.append("pixel_mask")
        elif mask_kind == "list":
            pixel_mask, _ = pixel_mask.tolist(), bad.append("pixel_mask")
        elif mask_kind == "shape":
            pixel_mask, _ = (
                pixel_mask[:, :, :-1] if width > 1 else pixel_mask[:, :0],
                bad.append("pixel_mask"),
            )
    if training and batch == 1 and height <= 32 and width <= 32:
        bad.append("BatchNorm")  # a 1x1 feature map of one image: trainable BatchNorm cannot normalize it
    output_attentions = pick(draw, "output_attentions", [False, True], ["yes", 1], bad)
    return pixel_values, pixel_mask, training, output_attentions, bad


def assert_model_finite(model: torch.nn.Module) -> None:
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), f"{name} is no longer finite"


@fuzz_settings("model")
@given(model_cases())
def test_model_input_fuzz_gives_finite_outputs_or_named_errors_and_never_nan_in_the_model(drawn):
    pixel_values, pixel_mask, training, output_attentions, bad = drawn
    model = fuzz_model().train(training)

    def call():
        with torch.no_grad():
            return model(pixel_values, pixel_mask=pixel_mask, output_attentions=output_attentions)

    def check(outputs):
        assert torch.isfinite(outputs.logits).all()
        assert torch.isfinite(outputs.pred_boxes).all()
        assert ((outputs.pred_boxes >= 0) & (outputs.pred_boxes <= 1)).all()

    try:
        run_case("model", call, bad, check)
    finally:
        assert_model_finite(model)


# ------------------------------------------------------------------------------------------------
# Loss labels
# ------------------------------------------------------------------------------------------------
NUM_LABELS, QUERIES = 5, 5


@st.composite
def image_labels(draw, index: int, bad: list[str]):
    name = f"labels[{index}]"
    count = QUERIES + 1 if rare(draw, 15) else draw(st.integers(0, QUERIES))
    if count > QUERIES:
        bad.append(name)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    ids = rng.integers(0, NUM_LABELS, count)
    centers, sides = rng.random((count, 2)), rng.random((count, 2))
    boxes = np.concatenate([centers, sides], 1).astype(np.float32)
    class_labels = pick(
        draw, name,
        [torch.from_numpy(ids), ids.tolist(), torch.from_numpy(ids).int(), torch.from_numpy(ids).float()],
        [torch.from_numpy(ids) + NUM_LABELS, torch.from_numpy(ids) - NUM_LABELS - 1, torch.from_numpy(ids) + 0.5,
         torch.ones(count, dtype=torch.bool), torch.from_numpy(ids)[None], ["a"] * count],
        bad,
    ) if count else torch.zeros(0, dtype=torch.long)  # fmt: skip
    with_nan = boxes.copy()
    with_nan[:1, :1] = np.nan
    # boxes in pixels (x100), far outside (x1e20: not "training diverged"), NaN, a negative width
    corrupt = [boxes * 100 + 2, boxes * 1e20 + 2, with_nan, boxes * [1, 1, -1, 1] - [0, 0, 0.01, 0]]
    box_value = pick(
        draw, name,
        [torch.from_numpy(boxes), boxes.tolist(), torch.from_numpy(boxes).double()],
        [torch.from_numpy(np.asarray(b, np.float32)) for b in corrupt if count]
        + [torch.from_numpy(boxes[:, :3]), "boxes", None],
        bad,
    )  # fmt: skip
    return {"class_labels": class_labels, "boxes": box_value}


@st.composite
def loss_cases(draw):
    bad: list[str] = []
    batch, layers = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    logits = torch.randn(layers, batch, QUERIES, NUM_LABELS + 1, generator=generator)
    boxes = torch.rand(layers, batch, QUERIES, 4, generator=generator) * 0.5 + 0.1
    labels = [draw(image_labels(index, bad)) for index in range(batch)]
    structure = draw(st.integers(0, 29)) - 28  # 0, 1: broken
    if structure == 0:
        labels, _ = labels[:-1], bad.append("labels")
    elif structure == 1:
        labels[0] = {"boxes": labels[0]["boxes"]}
        bad.append("labels[0]")
    return logits, boxes, labels, bad


@fuzz_settings("loss")
@given(loss_cases())
def test_loss_label_fuzz_gives_finite_losses_or_errors_naming_the_image(drawn):
    logits, boxes, labels, bad = drawn
    criterion = SetCriterion.from_config(fuzz_model().config)

    def check(result):
        loss, loss_dict = result
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in loss_dict.values())

    run_case("loss", lambda: criterion(logits, boxes, labels), bad, check)


# ------------------------------------------------------------------------------------------------
# Post-processing
# ------------------------------------------------------------------------------------------------
@st.composite
def post_processing_cases(draw):
    bad: list[str] = []
    batch, queries, classes = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    logits = torch.randn(batch, queries, classes + 1, generator=generator) * 3
    boxes = torch.rand(batch, queries, 4, generator=generator)
    masks = torch.randn(batch, queries, 6, 7, generator=generator) * 4
    if rare(draw, 15):
        logits[draw(st.integers(0, batch - 1)), 0, 0] = math.nan
        bad.append("outputs.logits")
    task = draw(st.sampled_from(["detection", "detection", "panoptic", "instance", "semantic"]))
    sizes = [(draw(st.integers(1, 60)), draw(st.integers(1, 60))) for _ in range(batch)]
    bad_sizes = [[(-h, w) for h, w in sizes], [(0, 5)] * batch, [(math.nan, 5)] * batch, sizes[:-1] or [],
                 [(5, 5, 5)] * batch, [("5", 5)] * batch, [None] * batch]  # fmt: skip
    valid_sizes = [None, sizes, torch.tensor(sizes)]
    if task == "detection":
        valid_sizes.append([(h + 0.5, w) for h, w in sizes])
    kwargs = {
        "threshold": pick(
            draw,
            "threshold",
            [0.5, 0.0, 0.1, 0.9, 1.0],
            [math.nan, math.inf, None, "0.5", True, -0.5, 1.5],
            bad,
        ),
        "target_sizes": pick(draw, "target_sizes", valid_sizes, bad_sizes, bad),
    }
    if task == "detection":
        kwargs["top_k"] = pick(draw, "top_k", [None, 1, 3, 100], [0, -1, "3", True, 2.5], bad)
        outputs = SimpleNamespace(logits=logits, pred_boxes=boxes)
        if rare(draw, 4):
            outputs = {"logits": logits.numpy(), "pred_boxes": boxes.numpy()}
    else:
        outputs = SimpleNamespace(logits=logits, pred_masks=masks)
        if task == "semantic":
            kwargs.pop("threshold")
            bad[:] = [name for name in bad if name != "threshold"]
        else:
            kwargs["mask_threshold"] = pick(
                draw, "mask_threshold", [0.3, 0.5, 1.0], [math.nan, "0.5", None, 1.2, -0.1], bad
            )
        if task == "panoptic":
            kwargs["label_ids_to_fuse"] = pick(
                draw, "label_ids_to_fuse", [None, {0}, [1, 2]], [{"a"}, 3], bad
            )
    return task, outputs, kwargs, classes, sizes, bad


def check_detections(results, kwargs, classes, sizes) -> None:
    target_sizes = kwargs["target_sizes"]
    for index, result in enumerate(results):
        scores, labels, boxes = (as_tensor(result[key]) for key in ("scores", "labels", "boxes"))
        assert ((scores > kwargs["threshold"]) & (scores >= 0) & (scores <= 1)).all()
        assert torch.isfinite(boxes).all()
        assert ((labels >= 0) & (labels < classes)).all()
        if kwargs["top_k"] is not None:
            assert len(scores) <= kwargs["top_k"]
        height, width = (
            (1.0, 1.0) if target_sizes is None else (float(v) for v in as_tensor(target_sizes)[index])
        )
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


def check_segmentations(task, results, kwargs, sizes) -> None:
    for index, result in enumerate(results):
        segmentation = result if task == "semantic" else result["segmentation"]
        expected = (6, 7) if kwargs["target_sizes"] is None else tuple(sizes[index])
        assert tuple(segmentation.shape) == expected
        if task != "semantic":
            ids = {segment["id"] for segment in result["segments_info"]}
            assert set(segmentation.unique().tolist()) <= ids | {0, -1}
            assert all(0 <= segment["score"] <= 1 for segment in result["segments_info"])


@fuzz_settings("post_processing")
@given(post_processing_cases())
def test_post_processing_fuzz_gives_boxes_in_the_image_or_named_errors(drawn):
    task, outputs, kwargs, classes, sizes, bad = drawn
    processor = HfDetrImageProcessor()
    method = getattr(
        processor, f"post_process_{'object_detection' if task == 'detection' else task + '_segmentation'}"
    )

    def check(results):
        if task == "detection":
            check_detections(results, kwargs, classes, sizes)
        else:
            check_segmentations(task, results, kwargs, sizes)

    run_case("post_processing", lambda: method(outputs, **kwargs), bad, check)
