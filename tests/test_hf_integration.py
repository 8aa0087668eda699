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
from detr_testing import KNOWN_BOX, MODEL_FILES, known_prediction_model, known_score, tiny_hf_detr_config
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

from hf_detr import HfDetrConfig, HfDetrForObjectDetection, HfDetrImageProcessor, HfDetrModel


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
        "image_processing_detr_segmentation.py",
    }  # fmt: skip


def test_processor_modules_import_each_other_in_one_direction():
    """transformers copies a module's relative imports recursively: the processor module must import its
    segmentation helpers, and they must import no model file back (no cycle)."""
    directory = REPO_ROOT / "hf_detr"

    def relative_imports(name: str) -> set[str]:
        text = (directory / name).read_text()
        return set(re.findall(r"^\s*from\s+\.(\S+)\s+import", text, flags=re.MULTILINE))

    assert relative_imports("image_processing_detr.py") == {"image_processing_detr_segmentation"}
    assert relative_imports("image_processing_detr_segmentation.py") == set()


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
    assert detector(image, threshold=known_score() + 0.01) == []


def test_batched_pipeline_equals_one_by_one_calls_for_a_model_trained_with_auxiliary_loss(
    tmp_path, coco_image_dir
):
    """Every training run saves `auxiliary_loss=True`: batching must not trip over per-layer outputs.
    The pipeline concatenates each image's tensors, so a batch of different sizes needs a `pad_size`
    that holds the largest resized image (as with transformers' DETR)."""
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


_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockHfDetr(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_detr" or name.startswith("hf_detr."):
                raise ImportError("hf_detr is blocked in this process")

    sys.meta_path.insert(0, BlockHfDetr())
    from types import SimpleNamespace

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoImageProcessor, AutoModelForObjectDetection, pipeline

    directory, image, processor_directory, case = sys.argv[1:5]
    try:
        import hf_detr  # noqa: F401
        raise SystemExit("hf_detr was importable")
    except ImportError:
        pass
    model = AutoModelForObjectDetection.from_pretrained(directory, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    detector = pipeline("object-detection", model=directory, trust_remote_code=True)
    trainable = sorted(name for name, parameter in model.named_parameters() if parameter.requires_grad)
    detections = detector(image, threshold=0.0)

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
    panoptic labels and panoptic maps (the processor's segmentation helpers travel in their own file)."""
    torch.manual_seed(1)
    model = HfDetrForObjectDetection(tiny_hf_detr_config(num_queries=5)).eval()
    model.save_pretrained(tmp_path)
    processor = HfDetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 200})
    processor.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path / "processor")
    assert {path.name for path in (tmp_path / "processor").iterdir()} == {
        "preprocessor_config.json", "image_processing_detr.py", "image_processing_detr_segmentation.py"
    }  # fmt: skip
    annotation, outputs = _panoptic_case(tmp_path / "case")
    image = str(coco_image_dir / "000000039769.png")
    arguments = [str(tmp_path), image, str(tmp_path / "processor"), str(tmp_path / "case")]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PACKAGE, *arguments],
        cwd=tmp_path,  # not the repository: hf_detr must not be importable from the working directory
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["class"] == "HfDetrForObjectDetection"
    assert remote["trainable"] == _trainable(model)  # the stem and layer1 stay frozen there too
    local = pipeline("object-detection", model=str(tmp_path))(image, threshold=0.0)
    assert len(local) == 5
    assert [d["label"] for d in remote["detections"]] == [d["label"] for d in local]
    assert [d["box"] for d in remote["detections"]] == [d["box"] for d in local]
    assert [d["score"] for d in remote["detections"]] == pytest.approx([d["score"] for d in local], abs=1e-6)

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
    from hf_detr.extras import evaluate_command, train_command

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
