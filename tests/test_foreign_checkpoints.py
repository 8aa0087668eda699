"""Checkpoints of other formats through `from_pretrained` and the CLIs, converted on load: transformers
DETR folders and Hub ids (through the local Hub), official `.pth` files and URLs (through a local HTTP
server); outputs within 1e-4 of the transformers reference, each conversion cached once."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from huggingface_hub import constants
from test_parity import (
    TWO_SIZES,
    _tiny_transformers_config,
    assert_parity,
    assert_segmentation_parity,
    random_reference,
    random_segmentation_reference,
    write_official_checkpoint,
)
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessor,
    YolosConfig,
)

from hf_detr import HfDetrConfig, HfDetrForObjectDetection, HfDetrForSegmentation, HfDetrImageProcessor
from hf_detr.convert import CheckpointConversionError, convert_checkpoint
from hf_detr.foreign_checkpoints import converted_root

CONVERTED = "Converted the "
PROCESSOR_SIZE = {"shortest_edge": 160, "longest_edge": 240}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Each test its own conversion cache (under a fresh HF_HOME)."""
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
    return converted_root()


@pytest.fixture(scope="module")
def reference() -> DetrForObjectDetection:
    return random_reference(_tiny_transformers_config())


def conversions(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(CONVERTED)]


def save_transformers(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    DetrImageProcessor(size=PROCESSOR_SIZE).save_pretrained(folder)
    return folder


def test_a_transformers_folder_is_converted_on_load_once_with_parity_1e4(tmp_path, reference, cache, caplog):
    source = save_transformers(reference, tmp_path / "detr-tiny")
    caplog.set_level(logging.INFO, logger="hf_detr")
    config = HfDetrConfig.from_pretrained(source)
    model = HfDetrForObjectDetection.from_pretrained(source).eval()
    processor = HfDetrImageProcessor.from_pretrained(source)
    assert config.num_labels == model.config.num_labels == 7 and config.backbone == "resnet18"
    assert processor.size == PROCESSOR_SIZE and processor.format == "coco_detection"
    assert_parity(model, reference, TWO_SIZES)
    (folder,) = cache.iterdir()
    assert folder.name.startswith("detr-tiny--")
    assert conversions(caplog) == [
        f"{CONVERTED}transformers DETR checkpoint {source} to hf_detr (cached in {folder})"
    ]
    # converted once: later loads, by any class, reuse the cache
    HfDetrForObjectDetection.from_pretrained(str(source))
    assert len(conversions(caplog)) == 1 and list(cache.iterdir()) == [folder]
    # another checkpoint saved to the same folder is a new conversion
    other = random_reference(_tiny_transformers_config())
    with torch.no_grad():
        other.class_labels_classifier.bias.add_(1.0)
    other.save_pretrained(source)
    assert_parity(HfDetrForObjectDetection.from_pretrained(source).eval(), other, TWO_SIZES[:1])
    assert len(conversions(caplog)) == 2 and len(list(cache.iterdir())) == 2


def test_importing_hf_detr_leaves_transformers_auto_classes_loading_transformers_detr(tmp_path, reference):
    source = save_transformers(reference, tmp_path / "detr")
    assert type(AutoConfig.from_pretrained(source)) is DetrConfig
    assert type(AutoModelForObjectDetection.from_pretrained(source)) is DetrForObjectDetection
    processor = AutoImageProcessor.from_pretrained(source)
    assert type(processor).__module__.startswith("transformers.models.detr.")
    assert type(processor).__name__.startswith("DetrImageProcessor")


def test_a_transformers_panoptic_folder_loads_as_a_segmentation_model_with_parity_1e4(tmp_path):
    reference = random_segmentation_reference()
    reference.save_pretrained(tmp_path / "panoptic")
    model = HfDetrForSegmentation.from_pretrained(tmp_path / "panoptic").eval()
    assert model.config.use_masks and model.config.num_labels == 7
    assert HfDetrImageProcessor.from_pretrained(tmp_path / "panoptic").format == "coco_panoptic"
    assert_segmentation_parity(model, reference, TWO_SIZES)


def test_an_official_pth_file_loads_through_from_pretrained_with_parity_1e4(tmp_path, reference, cache):
    checkpoint = tmp_path / "detr-tiny.pth"
    write_official_checkpoint(reference, checkpoint)
    model = HfDetrForObjectDetection.from_pretrained(checkpoint).eval()
    assert model.config.num_labels == 7
    assert_parity(model, reference, TWO_SIZES)
    assert HfDetrImageProcessor.from_pretrained(str(checkpoint)).size == HfDetrImageProcessor().size
    assert [folder.name[: len("detr-tiny--")] for folder in cache.iterdir()] == ["detr-tiny--"]


# ---------------------------------------------------------------------------------------------------
# .pth URLs, served from a temporary folder on 127.0.0.1
# ---------------------------------------------------------------------------------------------------
@contextmanager
def serving(folder: Path, seconds: float = 120.0) -> Iterator[tuple[str, list[str]]]:
    """(the URL of `folder`, the paths requested so far); the server stops on exit, or after `seconds`."""
    requested: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_request(self, *args) -> None:  # once per response
            requested.append(self.path)

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    deadline = threading.Timer(seconds, server.shutdown)
    deadline.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        deadline.cancel()
        server.shutdown()
        server.server_close()


def test_an_official_pth_url_is_downloaded_once_checked_and_converted_with_parity_1e4(
    tmp_path, reference, monkeypatch, caplog
):
    served = tmp_path / "served"
    served.mkdir()
    write_official_checkpoint(reference, tmp_path / "detr.pth")
    sha = hashlib.sha256((tmp_path / "detr.pth").read_bytes()).hexdigest()
    name = f"detr-tiny-{sha[:8]}.pth"  # the official releases' names carry their SHA-256 prefix
    shutil.copy(tmp_path / "detr.pth", served / name)
    shutil.copy(tmp_path / "detr.pth", served / "detr-tiny-0badc0de.pth")
    caplog.set_level(logging.INFO, logger="hf_detr")
    with serving(served) as (root, requested):
        url = f"{root}/{name}"
        with pytest.raises(OSError, match="offline mode"):  # the tests run with HF_HUB_OFFLINE=1
            HfDetrForObjectDetection.from_pretrained(url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        with pytest.raises(OSError, match="local_files_only"):
            HfDetrForObjectDetection.from_pretrained(url, local_files_only=True)
        assert_parity(HfDetrForObjectDetection.from_pretrained(url).eval(), reference, TWO_SIZES)
        assert requested == [f"/{name}"]
        with pytest.raises(OSError, match=f"SHA-256 {sha}.*starts with 0badc0de"):
            HfDetrForObjectDetection.from_pretrained(f"{root}/detr-tiny-0badc0de.pth")
        with pytest.raises(OSError, match="Could not download .*missing.pth.*404"):
            HfDetrForObjectDetection.from_pretrained(f"{root}/missing.pth")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        processor = HfDetrImageProcessor.from_pretrained(url)  # offline: from the cache
        model = HfDetrForObjectDetection.from_pretrained(url, local_files_only=True)
        assert requested == [f"/{name}", "/detr-tiny-0badc0de.pth", "/missing.pth"]
    assert processor.size == HfDetrImageProcessor().size and model.config.num_labels == 7
    (folder,) = converted_root().iterdir()  # the failed downloads left nothing behind
    assert folder.name.startswith(f"{name[:-4]}--")
    assert conversions(caplog) == [
        f"{CONVERTED}official DETR checkpoint {url} to hf_detr (cached in {folder})"
    ]


def test_what_is_not_a_detr_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="empty"):  # transformers' own error, naming the folder
        HfDetrForObjectDetection.from_pretrained(tmp_path / "empty")
    YolosConfig().save_pretrained(tmp_path / "yolos")
    with pytest.raises(ValueError, match="'yolos' model, not 'hf_detr'"):
        HfDetrForObjectDetection.from_pretrained(tmp_path / "yolos")
    DetrConfig(backbone="resnet18").save_pretrained(tmp_path / "no-weights")
    with pytest.raises(ValueError, match="no-weights is a transformers DETR checkpoint .* without weights"):
        HfDetrImageProcessor.from_pretrained(tmp_path / "no-weights")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointConversionError, match="other.pth is not an official DETR checkpoint"):
        HfDetrForObjectDetection.from_pretrained(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="No such file: .*absent.pth"):
        HfDetrForObjectDetection.from_pretrained(tmp_path / "absent.pth")
    with pytest.raises(
        CheckpointConversionError, match="org/absent is neither a folder nor a Hub repository"
    ):
        convert_checkpoint("transformers", "org/absent", tmp_path / "out")


# ---------------------------------------------------------------------------------------------------
# The CLIs
# ---------------------------------------------------------------------------------------------------
def test_predict_and_init_from_take_a_transformers_folder(tmp_path, reference, coco_image_dir, shapes):
    from hf_detr.predict import main as predict_main
    from hf_detr.training import build_model, resolve_arguments

    source = save_transformers(reference, tmp_path / "transformers")
    convert_checkpoint("transformers", source, tmp_path / "converted")
    image = str(coco_image_dir / "000000039769.png")
    for model, out in ((source, "from-transformers"), (tmp_path / "converted", "from-converted")):
        arguments = ["--model", str(model), image, "--output-dir", str(tmp_path / out), "--threshold", "0"]
        assert predict_main(arguments) == 0
    written = (tmp_path / "from-transformers" / "detections.jsonl").read_text()
    assert written and written == (tmp_path / "from-converted" / "detections.jsonl").read_text()

    args = resolve_arguments({"dataset": str(shapes), "init_from": str(source), "config_overrides": "dropout=0.0"})
    names = list(reference.config.id2label.values())
    model = build_model(args, names, list(range(1, len(names) + 1)))
    converted = HfDetrForObjectDetection.from_pretrained(tmp_path / "converted").state_dict()
    assert model.config.dropout == 0.0
    assert all(torch.equal(value, converted[name]) for name, value in model.state_dict().items())


# ---------------------------------------------------------------------------------------------------
# Hub ids, through the local Hub (HF_ENDPOINT is read at import: a process of its own)
# ---------------------------------------------------------------------------------------------------
_THROUGH_THE_HUB = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from huggingface_hub import HfApi
    from test_parity import TWO_SIZES, _tiny_transformers_config, assert_parity, random_reference
    from transformers import AutoModelForObjectDetection, DetrImageProcessor

    from hf_detr import HfDetrForObjectDetection, HfDetrImageProcessor
    from hf_detr.convert import main as convert_main
    from hf_detr.foreign_checkpoints import converted_root

    first = random_reference(_tiny_transformers_config())
    first.push_to_hub("org/detr-tiny", token="hf_test")
    transformers_processor = DetrImageProcessor(size={"shortest_edge": 160, "longest_edge": 240})
    transformers_processor.push_to_hub("org/detr-tiny", token="hf_test")
    first_commit = HfApi().model_info("org/detr-tiny").sha
    torch.manual_seed(1)
    second = random_reference(_tiny_transformers_config())
    with torch.no_grad():
        second.class_labels_classifier.bias.add_(1.0)
    second.push_to_hub("org/detr-tiny", token="hf_test")

    assert_parity(HfDetrForObjectDetection.from_pretrained("org/detr-tiny").eval(), second, TWO_SIZES)
    pinned = HfDetrForObjectDetection.from_pretrained("org/detr-tiny", revision=first_commit).eval()
    assert_parity(pinned, first, TWO_SIZES[:1])
    cached = HfDetrForObjectDetection.from_pretrained("org/detr-tiny", local_files_only=True).eval()
    assert_parity(cached, second, TWO_SIZES[:1])
    processor = HfDetrImageProcessor.from_pretrained("org/detr-tiny")
    out = sys.argv[2] + "/converted"
    arguments = ["--source", "transformers", "--checkpoint", "org/detr-tiny", "--output-dir", out]
    assert convert_main(arguments) == 0
    assert_parity(HfDetrForObjectDetection.from_pretrained(out).eval(), second, TWO_SIZES[:1])
    print(json.dumps({
        "auto": type(AutoModelForObjectDetection.from_pretrained("org/detr-tiny")).__name__,
        "size": processor.size,
        "cache": sorted(path.name for path in converted_root().iterdir()),
    }))
    """
)


@pytest.mark.slow
def test_a_hub_id_is_converted_on_load_per_revision_and_by_the_converter(tmp_path):
    from hub_server import LocalHub

    with LocalHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home")}
        env.pop("HF_HUB_OFFLINE", None)
        command = [sys.executable, "-c", _THROUGH_THE_HUB, str(REPO_ROOT / "tests"), str(tmp_path)]
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["auto"] == "DetrForObjectDetection"
    assert report["size"] == PROCESSOR_SIZE
    assert [name.split("--")[:2] for name in report["cache"]] == [["org", "detr-tiny"]] * 2  # two revisions
