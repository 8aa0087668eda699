"""Auto classes, pipeline, code-carrying checkpoints and strict loading."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO_ROOT
from detr_testing import (
    KNOWN_BOX,
    LABELS,
    MODEL_FILES,
    known_prediction_model,
    known_score,
    tiny_hf_detr_config,
)
from safetensors.numpy import load_file as load_numpy_file
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForObjectDetection,
    AutoVideoProcessor,
    DetrConfig,
    DetrForObjectDetection,
    pipeline,
)
from transformers.models.detr.image_processing_detr import DetrImageProcessor

from hf_detr import (
    HfDetrConfig,
    HfDetrForObjectDetection,
    HfDetrForSegmentation,
    HfDetrImageProcessor,
    HfDetrModel,
)


def test_auto_classes_resolve_to_hf_detr(known_checkpoint):
    assert isinstance(AutoConfig.from_pretrained(known_checkpoint), HfDetrConfig)
    assert type(AutoModelForObjectDetection.from_pretrained(known_checkpoint)) is HfDetrForObjectDetection
    assert type(AutoModel.from_pretrained(known_checkpoint)) is HfDetrModel
    assert type(AutoImageProcessor.from_pretrained(known_checkpoint)) is HfDetrImageProcessor
    assert AutoImageProcessor.from_pretrained(known_checkpoint).size == {
        "shortest_edge": 160,
        "longest_edge": 240,
    }


def test_checkpoints_carry_their_code_and_auto_map(known_checkpoint):
    config = json.loads((known_checkpoint / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_detr.HfDetrConfig",
        "AutoModel": "modeling_detr.HfDetrModel",
        "AutoModelForObjectDetection": "modeling_detr.HfDetrForObjectDetection",
    }
    processor = json.loads((known_checkpoint / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_detr.HfDetrImageProcessor"}
    for name in MODEL_FILES:
        assert (known_checkpoint / name).is_file(), name
        text = (known_checkpoint / name).read_text()
        assert "from hf_detr" not in text and "import hf_detr" not in text
        # DETR and nothing else: no pointers into the repository a Hub reader cannot follow
        for pointer in ("scripts/", "benchmarks", "RESULTS.md", "tests/"):
            assert pointer not in text, (name, pointer)
        relative = set(re.findall(r"^from \.(\w+) import", text, flags=re.MULTILINE))
        assert {f"{module}.py" for module in relative} <= set(MODEL_FILES), (name, relative)
    assert set(MODEL_FILES) == {
        "configuration_detr.py", "modeling_detr.py", "loss_detr.py", "image_processing_detr.py",
        "image_processing_detr_annotations.py", "image_processing_detr_images.py",
        "image_processing_detr_postprocessing.py", "validation_detr.py",
    }  # fmt: skip


def test_processor_modules_import_each_other_in_one_direction():
    """transformers copies a module's relative imports recursively: the processor module imports its
    annotation, image and post-processing modules and the checks, which import no model file back (no
    cycle); the checks import nothing."""
    directory = REPO_ROOT / "hf_detr"

    def relative_imports(name: str) -> set[str]:
        text = (directory / name).read_text()
        return set(re.findall(r"^\s*from\s+\.(\S+)\s+import", text, flags=re.MULTILINE))

    assert relative_imports("image_processing_detr.py") == {
        "image_processing_detr_annotations", "image_processing_detr_images", "image_processing_detr_postprocessing",
        "validation_detr",
    }  # fmt: skip
    assert relative_imports("image_processing_detr_annotations.py") == {"validation_detr"}
    assert relative_imports("image_processing_detr_postprocessing.py") == {"validation_detr"}
    assert relative_imports("image_processing_detr_images.py") == set()
    assert relative_imports("validation_detr.py") == set()


def test_transformers_detr_checkpoints_still_load_transformers_classes(tmp_path):
    config = DetrConfig(backbone="resnet18", encoder_layers=1, decoder_layers=1, d_model=32,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, num_queries=5)  # fmt: skip
    DetrForObjectDetection(config).save_pretrained(tmp_path)
    DetrImageProcessor().save_pretrained(tmp_path)
    assert type(AutoModelForObjectDetection.from_pretrained(tmp_path)) is DetrForObjectDetection
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is DetrImageProcessor


def _expected_box(width: int, height: int) -> dict[str, int]:
    cx, cy, w, h = KNOWN_BOX.tolist()
    corners = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    return dict(zip(("xmin", "ymin", "xmax", "ymax"), (int(v) for v in corners)))


def test_pipeline_finds_the_known_object_on_the_real_image(known_checkpoint, coco_image_dir):
    path = coco_image_dir / "000000039769.png"
    image = PIL.Image.open(path)
    detector = pipeline("object-detection", model=str(known_checkpoint))
    expected = [
        {"score": pytest.approx(known_score(), abs=1e-5), "label": "bed", "box": _expected_box(640, 480)}
    ]
    assert detector(image) == expected
    assert detector(str(path)) == expected
    assert detector([image, image.resize((320, 200))]) == [
        expected,
        [{**expected[0], "box": _expected_box(320, 200)}],
    ]
    assert detector(image, threshold=min(1.0, known_score() + 0.01)) == []  # thresholds lie in [0, 1]


def test_batched_pipeline_equals_one_by_one_calls_for_a_model_trained_with_auxiliary_loss(
    tmp_path, coco_image_dir
):
    """Every training run saves `auxiliary_loss=True`: batching must not trip over per-layer outputs.
    With a `pad_size`, the processor pads every image to it (as transformers' DETR, one-by-one calls
    too) and the pipeline concatenates the padded tensors."""
    torch.manual_seed(3)
    model = HfDetrForObjectDetection(tiny_hf_detr_config(num_queries=6, auxiliary_loss=True))
    model.save_pretrained(tmp_path)
    HfDetrImageProcessor(
        size={"shortest_edge": 96, "longest_edge": 160}, pad_size={"height": 160, "width": 160}
    ).save_pretrained(tmp_path)
    image = PIL.Image.open(coco_image_dir / "000000039769.png").convert("RGB")
    images = [image, image.resize((200, 320)), image.crop((0, 0, 300, 300)), image.resize((90, 60))]
    detector = pipeline("object-detection", model=str(tmp_path))
    one_by_one = [detector(picture, threshold=0.0) for picture in images]
    batched = detector(images, threshold=0.0, batch_size=3)  # more images than decoder layers
    assert [len(d) for d in batched] == [6] * 4
    for got, expected in zip(batched, one_by_one):
        assert [d["label"] for d in got] == [d["label"] for d in expected]
        assert [d["box"] for d in got] == [d["box"] for d in expected]
        assert [d["score"] for d in got] == pytest.approx([d["score"] for d in expected], abs=1e-5)


def _photos(image: PIL.Image.Image) -> list[PIL.Image.Image]:
    """Six photos of different sizes and aspect ratios; the first and third share a size."""
    return [
        image,  # 640x480
        image.resize((200, 320)),  # portrait
        image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT),  # 640x480 again
        image.crop((100, 50, 400, 350)),  # square
        image.resize((90, 60)),  # small
        image.crop((0, 100, 640, 300)),  # panorama 640x200
    ]


@pytest.fixture(scope="module")
def photo_paths(tmp_path_factory, coco_rgb) -> list[str]:
    """The `_photos` of the COCO test image as PNG files."""
    folder = tmp_path_factory.mktemp("photos")
    paths = [str(folder / f"photo_{index}.png") for index in range(6)]
    for photo, path in zip(_photos(coco_rgb), paths):
        photo.save(path)
    return paths


def _assert_same_detections(
    got: list[list[dict]], expected: list[list[dict]], tolerance: float = 1e-5
) -> None:
    """Per image: the same labels and boxes, in the same order; scores within `tolerance`."""
    assert len(got) == len(expected)
    for got_image, expected_image in zip(got, expected):
        assert [d["label"] for d in got_image] == [d["label"] for d in expected_image]
        assert [d["box"] for d in got_image] == [d["box"] for d in expected_image]
        scores = [d["score"] for d in expected_image]
        assert [d["score"] for d in got_image] == pytest.approx(scores, abs=tolerance)


def test_batched_pipeline_takes_photos_of_different_sizes_and_equals_one_by_one_calls(tmp_path, photo_paths):
    """No `pad_size` needed (transformers' DETR fails here, "Sizes of tensors must match"): the processor
    gives the pipeline each image unpadded, the model runs images of one size as one batch, so every
    photo gets what it gets alone."""
    torch.manual_seed(4)
    HfDetrForObjectDetection(tiny_hf_detr_config(num_queries=6)).save_pretrained(tmp_path)
    HfDetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 160}).save_pretrained(tmp_path)
    detector = pipeline("object-detection", model=str(tmp_path))
    one_by_one = [detector(path, threshold=0.0) for path in photo_paths]
    batch_sizes = []  # of every backbone run
    detector.model.model.backbone.register_forward_hook(
        lambda module, args, output: batch_sizes.append(len(args[0]))
    )
    batched = detector(photo_paths, threshold=0.0, batch_size=4)
    assert [len(detections) for detections in batched] == [6] * 6
    _assert_same_detections(batched, one_by_one)
    # batches of photos 0-3 and 4-5: photos 0 and 2 (one size) run together, every other alone
    assert sorted(batch_sizes) == [1, 1, 1, 1, 2]


def test_the_processor_gives_a_pipeline_unpadded_images_and_direct_callers_padded_batches(
    known_checkpoint, coco_image_dir
):
    """Only a transformers pipeline (whose collate concatenates tensors but keeps lists per image) of a
    model that takes per-image lists gets them; a fixed `pad_size` keeps the padded batch there too."""
    path = str(coco_image_dir / "000000039769.png")
    detector = pipeline("object-detection", model=str(known_checkpoint))
    direct = detector.image_processor(images=[path], return_tensors="pt")  # as the pipeline calls it
    assert direct["pixel_values"].shape == (1, 3, 160, 213) and direct["pixel_mask"].all()
    inputs = detector.preprocess(path)
    assert "pixel_mask" not in inputs
    [pixel_values] = inputs["pixel_values"]  # [3, 160, 213]
    assert torch.equal(pixel_values, direct["pixel_values"][0])

    config = DetrConfig(backbone="resnet18", encoder_layers=1, decoder_layers=1, d_model=32,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, num_queries=5)  # fmt: skip
    transformers_detr = DetrForObjectDetection(config)  # a model that takes no lists
    other = pipeline("object-detection", model=transformers_detr, image_processor=detector.image_processor)
    assert other.preprocess(path)["pixel_values"].shape == (1, 3, 160, 213)
    detector.image_processor.pad_size = {"height": 240, "width": 240}
    assert detector.preprocess(path)["pixel_values"].shape == (1, 3, 240, 240)


def _trainable(model: torch.nn.Module) -> list[str]:
    return sorted(name for name, parameter in model.named_parameters() if parameter.requires_grad)


@pytest.mark.parametrize("trainable_backbone_layers", [0, 3, 5])
def test_a_loaded_model_trains_exactly_the_parameters_a_fresh_one_does(tmp_path, trainable_backbone_layers):
    """transformers' loader replaces every parameter by one that requires gradients: the backbone's
    frozen stages must stay frozen through every loading path."""
    config = tiny_hf_detr_config(trainable_backbone_layers=trainable_backbone_layers)
    fresh = HfDetrForObjectDetection(config)
    fresh.save_pretrained(tmp_path)
    expected = _trainable(fresh)
    assert any(".backbone." in name for name in expected) == (trainable_backbone_layers > 0)
    assert _trainable(HfDetrForObjectDetection.from_pretrained(tmp_path)) == expected
    assert _trainable(AutoModelForObjectDetection.from_pretrained(tmp_path)) == expected
    base = [name.removeprefix("model.") for name in expected if name.startswith("model.")]
    assert _trainable(AutoModel.from_pretrained(tmp_path)) == base


# the start of every script `_run_without_hf_detr` runs: hf_detr cannot be imported after it
_BLOCK_HF_DETR = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockHfDetr(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_detr" or name.startswith("hf_detr."):
                raise ImportError("hf_detr is blocked in this process")

    sys.meta_path.insert(0, BlockHfDetr())
    try:
        import hf_detr  # noqa: F401
        raise SystemExit("hf_detr was importable")
    except ImportError:
        pass
    """
)


def _run_without_hf_detr(script: str, *arguments: str, cwd: Path) -> dict:
    """Run `script` in a fresh interpreter where hf_detr cannot be imported (from `cwd`, not the
    repository, so that the working directory does not provide it either); its last stdout line as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_HF_DETR + script, *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


_WITHOUT_PACKAGE = textwrap.dedent(
    """
    from types import SimpleNamespace

    import PIL.Image
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoImageProcessor, AutoModelForObjectDetection, pipeline

    directory, image, processor_directory, case = sys.argv[1:5]
    model = AutoModelForObjectDetection.from_pretrained(directory, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    detector = pipeline("object-detection", model=directory, trust_remote_code=True)
    trainable = sorted(name for name, parameter in model.named_parameters() if parameter.requires_grad)
    detections = detector(image, threshold=0.0)
    photo = PIL.Image.open(image).convert("RGB")  # photos of different sizes, batched and one by one
    photos = [photo, photo.resize((200, 320)), photo.crop((0, 0, 300, 300)), photo.resize((90, 60))]
    batched = detector(photos, threshold=0.0, batch_size=4)
    one_by_one = [detector(photo, threshold=0.0) for photo in photos]

    # a processor saved alone: panoptic annotations in, panoptic maps out, all through remote code
    processor = AutoImageProcessor.from_pretrained(processor_directory, trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    with open(f"{case}/annotation.json") as file:
        annotation = json.load(file)
    labels = processor(f"{case}/image.png", annotation, format="coco_panoptic", masks_path=case)["labels"][0]
    outputs = SimpleNamespace(**load_file(f"{case}/outputs.safetensors"))
    panoptic = processor.post_process_panoptic_segmentation(outputs, 0.3, label_ids_to_fuse=[2])
    maps = {f"segmentation_{i}": result["segmentation"] for i, result in enumerate(panoptic)}
    tensors = {**maps, "masks": labels["masks"].to(torch.uint8), "boxes": labels["boxes"]}
    save_file(tensors, f"{case}/remote.safetensors")
    segments_info = [result["segments_info"] for result in panoptic]
    report = {"class": type(model).__name__, "detections": detections, "trainable": trainable}
    report.update(batched=batched, one_by_one=one_by_one)
    print(json.dumps({**report, "segments_info": segments_info}))
    """
)


def _panoptic_case(folder: Path) -> tuple[dict, SimpleNamespace]:
    """A 40x30 image with its COCO panoptic PNG (three segments, RGB-coded ids) and annotation in
    `folder`, and random segmentation outputs (2 images, 5 queries, 3 classes) in outputs.safetensors."""
    folder.mkdir()
    ids = np.zeros((30, 40), np.int64)
    ids[2:20, 3:25], ids[12:28, 18:38], ids[25:, :6] = 70000, 1234, 5  # ids using all three channels
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    PIL.Image.fromarray(rgb).save(folder / "panoptic.png")
    PIL.Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(folder / "image.png")
    segments = [{"id": i, "category_id": c, "iscrowd": 0} for i, c in ((70000, 1), (1234, 2), (5, 2))]
    annotation = {"image_id": 7, "file_name": "panoptic.png", "segments_info": segments}
    (folder / "annotation.json").write_text(json.dumps(annotation))
    generator = torch.Generator().manual_seed(0)
    outputs = {
        "logits": torch.randn(2, 5, 4, generator=generator) * 3,  # [B, N, K+1]
        "pred_masks": torch.randn(2, 5, 12, 16, generator=generator) * 4,  # [B, N, h, w]
    }
    save_file(outputs, folder / "outputs.safetensors")
    return annotation, SimpleNamespace(**outputs)


def test_code_carrying_checkpoint_loads_without_the_package(tmp_path, coco_image_dir):
    """In a process where hf_detr cannot be imported, remote code gives the installed package's detections,
    panoptic labels and panoptic maps (the processor's segmentation helpers travel in their own file),
    and its pipeline batches photos of different sizes."""
    torch.manual_seed(1)
    model = HfDetrForObjectDetection(tiny_hf_detr_config(num_queries=5)).eval()
    model.save_pretrained(tmp_path)
    processor = HfDetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 200})
    processor.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path / "processor")
    assert {path.name for path in (tmp_path / "processor").iterdir()} == {
        "preprocessor_config.json", "image_processing_detr.py", "image_processing_detr_annotations.py",
        "image_processing_detr_images.py", "image_processing_detr_postprocessing.py", "validation_detr.py",
    }  # fmt: skip
    annotation, outputs = _panoptic_case(tmp_path / "case")
    image = str(coco_image_dir / "000000039769.png")
    arguments = [str(tmp_path), image, str(tmp_path / "processor"), str(tmp_path / "case")]
    remote = _run_without_hf_detr(_WITHOUT_PACKAGE, *arguments, cwd=tmp_path)
    assert remote["class"] == "HfDetrForObjectDetection"
    assert remote["trainable"] == _trainable(model)  # the stem and layer1 stay frozen there too
    local = pipeline("object-detection", model=str(tmp_path))(image, threshold=0.0)
    assert len(local) == 5
    assert [d["label"] for d in remote["detections"]] == [d["label"] for d in local]
    assert [d["box"] for d in remote["detections"]] == [d["box"] for d in local]
    assert [d["score"] for d in remote["detections"]] == pytest.approx([d["score"] for d in local], abs=1e-6)
    _assert_same_detections(remote["batched"], remote["one_by_one"])

    labels = processor(
        str(tmp_path / "case" / "image.png"), annotation, format="coco_panoptic", masks_path=tmp_path / "case"
    )["labels"][0]
    panoptic = processor.post_process_panoptic_segmentation(outputs, 0.3, label_ids_to_fuse=[2])
    remote_tensors = load_file(tmp_path / "case" / "remote.safetensors")
    assert labels["masks"].shape[0] == 3 and labels["masks"].any((1, 2)).all()  # every segment seen
    assert torch.equal(remote_tensors["masks"].bool(), labels["masks"])
    assert torch.equal(remote_tensors["boxes"], labels["boxes"])
    assert any(result["segments_info"] for result in panoptic)  # the case exercises segment numbering
    assert remote["segments_info"] == [result["segments_info"] for result in panoptic]
    for i, result in enumerate(panoptic):
        assert torch.equal(remote_tensors[f"segmentation_{i}"], result["segmentation"])


# ---------------------------------------------------------------------------------------------------
# pipeline("image-segmentation")
# ---------------------------------------------------------------------------------------------------
SUBTASKS = ("panoptic", "instance", "semantic")
# the classes queries 0..5 are made to predict on the test image (4 = no-object)
QUERY_CLASSES = (0, 1, 2, 3, 4, 4)


@torch.no_grad()
def _segmenting_model(image: PIL.Image.Image, processor: HfDetrImageProcessor) -> HfDetrForSegmentation:
    """A tiny random segmentation model that segments `image` at the pipeline's default thresholds
    (0.9 / 0.5 / 0.5): its mask logits are sharpened and centred on the image, so that each query's mask
    covers part of it, and its classifier is solved (least squares on this image's decoder outputs) so
    that query i predicts QUERY_CLASSES[i] with probability ~0.999."""
    torch.manual_seed(0)
    config = tiny_hf_detr_config(
        use_masks=True, encoder_attention_heads=8, decoder_attention_heads=8, num_queries=len(QUERY_CLASSES),
        num_labels=4, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
    )  # fmt: skip
    model = HfDetrForSegmentation(config).eval()
    inputs = processor(image, return_tensors="pt")
    model.mask_head.out_lay.weight.mul_(10)
    outputs = model(**inputs)
    model.mask_head.out_lay.bias.sub_(outputs.pred_masks.mean())
    queries = len(QUERY_CLASSES)
    hidden = torch.cat([outputs.last_hidden_state[0], torch.ones(queries, 1)], 1)  # [N, d+1]
    target = torch.zeros(queries, config.num_labels + 1)  # [N, K+1] logits: 8 for the query's class
    target[torch.arange(queries), torch.tensor(QUERY_CLASSES)] = 8.0
    solution = torch.linalg.pinv(hidden) @ target  # [d+1, K+1]
    model.detr.class_labels_classifier.weight.copy_(solution[:-1].T)
    model.detr.class_labels_classifier.bias.copy_(solution[-1])
    return model


@pytest.fixture(scope="module")
def coco_rgb(coco_image_dir) -> PIL.Image.Image:
    return PIL.Image.open(coco_image_dir / "000000039769.png").convert("RGB")


@pytest.fixture(scope="module")
def segmentation_checkpoint(tmp_path_factory, coco_rgb) -> Path:
    directory = tmp_path_factory.mktemp("segmentation")
    processor = HfDetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 128})
    _segmenting_model(coco_rgb, processor).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def segmenter(segmentation_checkpoint):
    """The pipeline with the package imported, from the saved directory."""
    return pipeline("image-segmentation", model=str(segmentation_checkpoint))


def _as_arrays(segments: list[dict]) -> list[tuple[str, float | None, np.ndarray]]:
    """The pipeline's segments as (label, score, boolean mask [H, W]), checking each PIL mask."""
    arrays = []
    for segment in segments:
        assert set(segment) == {"score", "label", "mask"}
        mask = np.asarray(segment["mask"])
        assert segment["mask"].mode == "L" and set(np.unique(mask)) <= {0, 255}
        arrays.append((segment["label"], segment["score"], mask == 255))
    return arrays


@torch.no_grad()
def _processor_segments(
    model: HfDetrForSegmentation, processor: HfDetrImageProcessor, image: PIL.Image.Image, subtask: str
) -> list[tuple[str, float | None, np.ndarray]]:
    """What the processor's post_process_<subtask>_segmentation gives on the model's outputs for
    `image`, at the pipeline's default thresholds, as (label, score, boolean mask) per segment."""
    outputs = model(**processor(image, return_tensors="pt"))
    size = [(image.height, image.width)]
    names = model.config.id2label
    if subtask == "semantic":
        classes = processor.post_process_semantic_segmentation(outputs, target_sizes=size)[0].numpy()
        return [(names[int(label)], None, classes == label) for label in np.unique(classes)]
    post_process = getattr(processor, f"post_process_{subtask}_segmentation")
    result = post_process(
        outputs, threshold=0.9, mask_threshold=0.5, overlap_mask_area_threshold=0.5, target_sizes=size
    )[0]
    segmentation = result["segmentation"].numpy()
    return [
        (names[info["label_id"]], info["score"], segmentation == info["id"])
        for info in result["segments_info"]
    ]


def _assert_same_segments(
    got: list[tuple], expected: list[tuple], score_tolerance: float = 0.0, pixel_tolerance: float = 0.0
) -> None:
    """The same labels; scores within `score_tolerance`; masks differing on at most a `pixel_tolerance`
    fraction of their pixels."""
    assert [label for label, _, _ in got] == [label for label, _, _ in expected]
    scores = [score for _, score, _ in expected]
    assert [score for _, score, _ in got] == pytest.approx(scores, abs=score_tolerance)
    for (label, _, mask), (_, _, expected_mask) in zip(got, expected):
        assert mask.shape == expected_mask.shape and np.mean(mask != expected_mask) <= pixel_tolerance, label


@pytest.mark.parametrize("subtask", SUBTASKS)
def test_segmentation_pipeline_gives_the_processors_segments(segmenter, coco_rgb, subtask):
    assert type(segmenter.model) is HfDetrForSegmentation
    assert type(segmenter.image_processor) is HfDetrImageProcessor
    got = _as_arrays(segmenter(coco_rgb, subtask=subtask))
    expected = _processor_segments(segmenter.model, segmenter.image_processor, coco_rgb, subtask)
    assert len(got) >= 2  # the model is made to find several segments
    _assert_same_segments(got, expected)
    assert all(mask.shape == (480, 640) and mask.any() for _, _, mask in got)
    assert {label for label, _, _ in got} <= set(LABELS.values())
    if subtask == "semantic":  # one segment per class present, covering the image
        assert all(score is None for _, score, _ in got)
        assert len({label for label, _, _ in got}) == len(got)
        assert np.array_equal(np.sum([mask for _, _, mask in got], 0), np.ones((480, 640)))
    else:
        assert all(0.9 < score <= 1 for _, score, _ in got)
    if subtask == "panoptic":
        assert np.sum([mask for _, _, mask in got], 0).max() == 1  # disjoint masks


@pytest.mark.parametrize("subtask", SUBTASKS)
def test_batched_segmentation_pipeline_equals_one_by_one_calls(segmenter, photo_paths, subtask):
    """Photos of different sizes: each image's masks come at its own size (a list of per-image
    `pred_masks`), so batching changes no segment. (Photos 0 and 2 share a batch, whose convolutions
    round differently: this model's sharpened masks then move pixels where two queries tie, ~0.2%.)"""
    one_by_one = [_as_arrays(segmenter(path, subtask=subtask, threshold=0.5)) for path in photo_paths]
    batched = segmenter(photo_paths, subtask=subtask, threshold=0.5, batch_size=4)
    assert len(batched) == len(photo_paths) and sum(map(len, one_by_one)) > len(photo_paths)
    for got, expected in zip(batched, one_by_one):
        _assert_same_segments(_as_arrays(got), expected, score_tolerance=1e-5, pixel_tolerance=0.01)


def test_segmentation_pipeline_passes_its_threshold_and_reads_paths(segmenter, coco_image_dir):
    path = str(coco_image_dir / "000000039769.png")
    panoptic = segmenter(path, subtask="panoptic")
    assert panoptic and all(segment["mask"].size == (640, 480) for segment in panoptic)
    above_all = min(1.0, max(segment["score"] for segment in panoptic) + 1e-4)  # thresholds lie in [0, 1]
    assert segmenter(path, subtask="panoptic", threshold=above_all) == []
    assert segmenter(path, subtask="instance", threshold=above_all) == []
    # without a subtask the pipeline takes the first post-processing it finds: panoptic
    _assert_same_segments(_as_arrays(segmenter(path)), _as_arrays(panoptic))


_SEGMENT_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import numpy as np
    from safetensors.numpy import save_file
    from transformers import pipeline

    directory, image, masks_file = sys.argv[1:4]
    segmenter = pipeline("image-segmentation", model=directory, trust_remote_code=True)
    classes = [type(segmenter.model), type(segmenter.image_processor)]
    assert all(c.__module__.startswith("transformers_modules") for c in classes), classes
    report, masks = {"classes": [c.__name__ for c in classes]}, {}
    for subtask in ("panoptic", "instance", "semantic"):
        segments = segmenter(image, subtask=subtask)
        assert all(s["mask"].mode == "L" for s in segments), subtask
        report[subtask] = [{"label": s["label"], "score": s["score"]} for s in segments]
        masks.update({f"{subtask}_{i}": np.asarray(s["mask"]) for i, s in enumerate(segments)})
    save_file(masks, masks_file)
    print(json.dumps(report))
    """
)


def test_code_carrying_segmentation_checkpoint_segments_without_the_package(
    tmp_path, segmentation_checkpoint, segmenter, coco_image_dir
):
    """In a process where hf_detr cannot be imported, `trust_remote_code` gives the package's segments
    (same labels, scores and masks) for every subtask."""
    config = json.loads((segmentation_checkpoint / "config.json").read_text())
    assert (
        config["auto_map"]["AutoModelForImageSegmentation"]
        == "modeling_detr_segmentation.HfDetrForSegmentation"
    )
    image = str(coco_image_dir / "000000039769.png")
    remote = _run_without_hf_detr(
        _SEGMENT_WITHOUT_PACKAGE, str(segmentation_checkpoint), image, str(tmp_path / "masks.safetensors"),
        cwd=tmp_path,
    )  # fmt: skip
    assert remote["classes"] == ["HfDetrForSegmentation", "HfDetrImageProcessor"]
    masks = load_numpy_file(tmp_path / "masks.safetensors")
    for subtask in SUBTASKS:
        local = _as_arrays(segmenter(image, subtask=subtask))
        assert local
        got = [
            (segment["label"], segment["score"], masks[f"{subtask}_{i}"] == 255)
            for i, segment in enumerate(remote[subtask])
        ]
        _assert_same_segments(got, local)


# ---------------------------------------------------------------------------------------------------
# Strict loading
# ---------------------------------------------------------------------------------------------------
def test_a_config_of_another_model_type_is_an_error(tmp_path):
    DetrConfig(backbone="resnet18").save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match="'detr' model, not 'hf_detr'.*hf-detr-convert --source transformers"
    ):
        HfDetrForObjectDetection.from_pretrained(tmp_path)


def test_missing_weights_are_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    known_prediction_model().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.decoder.layernorm.bias"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 weight\(s\).*model.decoder.layernorm.bias"):
        HfDetrForObjectDetection.from_pretrained(tmp_path)


def test_no_weights_file_is_an_error(tmp_path):
    known_prediction_model().config.save_pretrained(tmp_path)
    with pytest.raises(OSError, match="model.safetensors"):
        HfDetrForObjectDetection.from_pretrained(tmp_path)


def test_weights_of_the_wrong_shape_are_an_error(tmp_path):
    small = HfDetrForObjectDetection(
        tiny_hf_detr_config(d_model=32, encoder_attention_heads=2, decoder_attention_heads=2)
    )
    small.save_pretrained(tmp_path)
    tiny_hf_detr_config().save_pretrained(tmp_path)  # a config that does not match the weights
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        HfDetrForObjectDetection.from_pretrained(tmp_path)


def test_pickled_weights_are_not_loaded_by_default(tmp_path):
    model = known_prediction_model()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        HfDetrForObjectDetection.from_pretrained(tmp_path)


def test_a_base_model_checkpoint_can_start_a_detector(tmp_path):
    HfDetrModel(tiny_hf_detr_config()).save_pretrained(tmp_path)
    detector = HfDetrForObjectDetection.from_pretrained(tmp_path)
    assert isinstance(detector, HfDetrForObjectDetection)


def test_registration_works_with_the_video_processor_api_of_older_transformers(monkeypatch):
    """Older transformers (5.17, say) register one video processor class per config, with no
    per-backend dict: importing hf_detr there must not fail (it did, found on a GPU machine)."""
    import hf_detr

    calls = []

    def old_register(config_class, video_processor_class, exist_ok=False):
        calls.append((config_class, video_processor_class))

    monkeypatch.setattr(AutoVideoProcessor, "register", staticmethod(old_register))
    hf_detr._register_with_transformers()  # raised TypeError before the fix
    assert calls == []  # nothing to register: DETR has no video processor
    assert (
        AutoModelForObjectDetection.from_config(tiny_hf_detr_config()).__class__ is HfDetrForObjectDetection
    )


_WITHOUT_TRAIN_EXTRA = textwrap.dedent(
    """
    import sys
    for name in ("accelerate", "datasets", "evaluate", "faster_coco_eval"):
        sys.modules[name] = None  # as if `pip install hf-detr` without the [train] extra
    import PIL.Image
    from transformers import pipeline
    import hf_detr
    from hf_detr.commands import evaluate_command, train_command

    detections = pipeline("object-detection", model=sys.argv[1])(PIL.Image.new("RGB", (80, 60)), threshold=0.0)
    print("detections", len(detections))
    try:
        import hf_detr.data
    except ImportError as error:
        print("data:", error)
    print("train exit code", train_command(), "evaluate exit code", evaluate_command())
    """
)


def test_inference_needs_no_training_extra_and_training_names_the_install_command(known_checkpoint):
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRAIN_EXTRA, str(known_checkpoint)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "detections 1" in result.stdout
    assert "data: hf_detr.data" in result.stdout and "pip install 'hf-detr[train]'" in result.stdout
    assert "train exit code 1 evaluate exit code 1" in result.stdout
    assert result.stderr.count("error: hf_detr.") == 2 and "needs accelerate, datasets" in result.stderr


@pytest.mark.parametrize("model_class", ["HfDetrForObjectDetection", "HfDetrForSegmentation"])
def test_a_checkpoint_without_its_backbone_names_the_missing_weights(tmp_path, model_class):
    """With the `kernels` package installed (it is, by `[test]`), transformers kernelizes a model on load;
    the backbone's missing weights stay on the meta device, and that must not hide the message."""
    import importlib.util

    from safetensors.torch import load_file, save_file

    import hf_detr

    assert importlib.util.find_spec("kernels") is not None  # the case transformers 5.25 fails on
    cls = getattr(hf_detr, model_class)
    config = hf_detr.HfDetrConfig(backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=1,
                                  num_queries=5, encoder_ffn_dim=32, decoder_ffn_dim=32, num_labels=3,
                                  use_pretrained_backbone=False, use_masks=model_class.endswith("Segmentation"))  # fmt: skip
    cls(config).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    kept = {key: value for key, value in weights.items() if ".backbone." not in key}
    assert len(kept) < len(weights)
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=rf"lacks {len(weights) - len(kept)} weight\(s\) of {model_class}: .*backbone"
    ):
        cls.from_pretrained(tmp_path)
