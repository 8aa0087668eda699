"""Model cards (parsed back offline) and Hub push/pull against a local Hub-API server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from conftest import REPO_ROOT
from detr_testing import MODEL_FILES
from huggingface_hub import ModelCard

from hf_detr import HfDetrConfig
from hf_detr.hub import (
    OFFICIAL_CHECKPOINTS,
    make_model_card,
    official_checkpoint_for,
    official_config,
    official_model_card,
)

TESTS = REPO_ROOT / "tests"


def test_model_card_metadata_parses_back():
    config = HfDetrConfig(
        backbone="resnet18", num_labels=3, id2label={0: "circle", 1: "square", 2: "triangle"}
    )
    metrics = {"AP": 55.2, "AP50": 80.1, "AP75": 60.0, "APs": 20.0, "APm": 50.0, "APl": 70.0}
    card = make_model_card(
        config, "me/shapes-detr", metrics, base_model="hf-detr/detr-resnet-50", tags=["shapes"]
    )
    parsed = ModelCard(str(card))
    data = parsed.data
    assert data.library_name == "transformers" and data.pipeline_tag == "object-detection"
    assert data.license == "apache-2.0" and data.base_model == "hf-detr/detr-resnet-50"
    assert {"object-detection", "detr", "hf_detr", "shapes"} <= set(data.tags)
    assert data.model_name == "shapes-detr"
    assert {r.metric_type: r.metric_value for r in data.eval_results} == {
        k.lower(): v for k, v in metrics.items()
    }
    assert all(r.task_type == "object-detection" for r in data.eval_results)
    body = parsed.text
    for needle in ('pipeline("object-detection", model="me/shapes-detr")', "trust_remote_code=True",
                   "HfDetrForObjectDetection.from_pretrained", "## Limitations", "Small objects",
                   "At most 100 objects", "Slow convergence", "CC BY 4.0", "Apache-2.0",
                   "| AP@[.5:.95] | 55.2 |", "circle, square, triangle"):  # fmt: skip
        assert needle in body, needle


def test_a_card_without_metrics_has_no_model_index():
    card = ModelCard(str(make_model_card(HfDetrConfig(num_labels=2), "me/untrained")))
    assert not card.data.eval_results and "No evaluation results" in card.text


def test_unknown_metric_names_are_refused():
    with pytest.raises(ValueError, match="mAP"):
        make_model_card(HfDetrConfig(), "me/x", {"mAP": 1.0})


@pytest.mark.parametrize("name", sorted(OFFICIAL_CHECKPOINTS))
def test_official_cards_carry_the_published_results_and_match_the_committed_files(name):
    card = official_model_card(name)
    checkpoint = OFFICIAL_CHECKPOINTS[name]
    data = ModelCard(str(card)).data
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results["ap"] == checkpoint.metrics["AP"]
    assert checkpoint.file in card.text
    if checkpoint.panoptic:
        assert data.pipeline_tag == "image-segmentation" and results["pq"] == checkpoint.metrics["PQ"]
        assert "25 epochs" in card.text and "detector frozen" in card.text
        assert "80 things (person, " in card.text and "53 stuff (banner, " in card.text
    else:
        assert data.pipeline_tag == "object-detection" and "500 epochs" in card.text
    committed = (REPO_ROOT / "model_cards" / f"{name}.md").read_text()
    assert committed == str(card), "model_cards/ is stale: regenerate it (model_cards/README.md)"
    assert official_checkpoint_for(official_config(name)) == name


def test_paper_numbers():
    """COCO val box AP of the official models and PQ of the panoptic ones, as the official release reports."""
    assert {n: c.metrics["AP"] for n, c in OFFICIAL_CHECKPOINTS.items()} == {
        "detr-resnet-50": 42.0, "detr-resnet-50-dc5": 43.3, "detr-resnet-101": 43.5, "detr-resnet-101-dc5": 44.9,
        "detr-resnet-50-panoptic": 38.8, "detr-resnet-50-dc5-panoptic": 40.2, "detr-resnet-101-panoptic": 40.1,
    }  # fmt: skip
    assert {n: c.metrics["PQ"] for n, c in OFFICIAL_CHECKPOINTS.items() if c.panoptic} == {
        "detr-resnet-50-panoptic": 43.4, "detr-resnet-50-dc5-panoptic": 44.6, "detr-resnet-101-panoptic": 45.1,
    }  # fmt: skip


def test_official_panoptic_config_names_coco_panoptic_categories():
    config = official_config("detr-resnet-101-panoptic")
    assert config.use_masks and config.num_labels == 250 and config.backbone == "resnet101"
    assert config.id2label[1] == "person" and config.id2label[187] == "sky-other-merged"
    assert (
        len(config.stuff_label_ids) == 53
        and 187 in config.stuff_label_ids
        and 1 not in config.stuff_label_ids
    )
    # a detector with the same backbone is the detection release, not the panoptic one
    assert official_checkpoint_for(HfDetrConfig(backbone="resnet101")) == "detr-resnet-101"
    assert official_checkpoint_for(HfDetrConfig(backbone="resnet101", use_masks=True)) is None  # 91 classes


def test_official_panoptic_card_puts_pq_under_segmentation_and_box_ap_under_detection():
    data = ModelCard(str(official_model_card("detr-resnet-50-panoptic"))).data
    tasks = {r.metric_type: r.task_type for r in data.eval_results}
    assert tasks == {"pq": "image-segmentation", "mask_ap": "image-segmentation", "ap": "object-detection"}
    assert {r.dataset_name for r in data.eval_results} == {"COCO panoptic 2017"}
    assert "github.com/facebookresearch/detr" in data.eval_results[0].source_url


def test_segmentation_card_from_evaluation_metrics():
    """A segmentation config (use_masks) gets an image-segmentation card; PQ/SQ/RQ become its model-index."""
    config = HfDetrConfig(
        backbone="resnet18", use_masks=True, id2label={0: "disc", 1: "box", 2: "grass"}, stuff_label_ids=[2]
    )
    metrics = {"PQ": 51.5, "SQ": 80.25, "RQ": 62.0, "PQ_th": 55.0, "PQ_st": 44.5, "AP": 30.0}
    parsed = ModelCard(str(make_model_card(config, "me/shapes-panoptic", metrics, datasets=["me/shapes"])))
    data = parsed.data
    assert data.pipeline_tag == "image-segmentation" and "panoptic-segmentation" in data.tags
    assert data.datasets == ["me/shapes"] and data.metrics == ["PQ", "AP"]
    values = {r.metric_type: (r.task_type, r.metric_value) for r in data.eval_results}
    assert values["pq"] == ("image-segmentation", 51.5) and values["pq_st"] == ("image-segmentation", 44.5)
    assert values["ap"] == ("object-detection", 30.0)
    body = parsed.text
    for needle in ('pipeline("image-segmentation", model="me/shapes-panoptic")', "post_process_panoptic_segmentation",
                   "label_ids_to_fuse=model.config.stuff_label_ids", "HfDetrForSegmentation.from_pretrained",
                   "AutoModelForImageSegmentation", "| PQ | 51.5 |", "| SQ | 80.2 |", "| PQ (stuff) | 44.5 |",
                   "| box AP@[.5:.95] | 30.0 |", "2 things (disc, box) and 1 stuff (grass)",
                   f"At most {config.num_queries} segments per image"):  # fmt: skip
        assert needle in body, needle
    assert 'pipeline("object-detection"' not in body


def test_panoptic_metrics_are_refused_for_a_detector():
    with pytest.raises(ValueError, match="PQ.*segmentation models"):
        make_model_card(HfDetrConfig(), "me/x", {"PQ": 40.0})


# ---------------------------------------------------------------------------------------------------
# Push and pull against the local Hub (one process online, one offline: HF_ENDPOINT is read at import)
# ---------------------------------------------------------------------------------------------------
_ONLINE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from detr_testing import tiny_hf_detr_config
    from transformers import AutoModelForObjectDetection, pipeline

    import hf_detr
    from hf_detr.convert import main as convert_main
    from hf_detr.hub import make_model_card, push_to_hub

    image, workdir = sys.argv[2], sys.argv[3]
    torch.manual_seed(0)
    model = hf_detr.HfDetrForObjectDetection(tiny_hf_detr_config(num_queries=4)).eval()
    processor = hf_detr.HfDetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 200})
    local = pipeline("object-detection", model=model, image_processor=processor)(image, threshold=0.0)

    card = make_model_card(model.config, "org/tiny-detr", {"AP": 12.5})
    push_to_hub(model, processor, "org/tiny-detr", card, token="hf_test")
    model.push_to_hub("org/plain-detr", token="hf_test")
    processor.push_to_hub("org/plain-detr", token="hf_test")
    # a segmentation model without a card: push_to_hub writes an image-segmentation card
    segmenter = hf_detr.HfDetrForSegmentation(tiny_hf_detr_config(
        d_model=128, encoder_attention_heads=8, decoder_attention_heads=8, num_queries=4, use_masks=True))
    push_to_hub(segmenter, processor, "org/tiny-panoptic", token="hf_test")

    loaded = AutoModelForObjectDetection.from_pretrained("org/tiny-detr")
    by_id = pipeline("object-detection", model="org/tiny-detr")(image, threshold=0.0)
    plain = pipeline("object-detection", model="org/plain-detr")(image, threshold=0.0)

    # the converter's --push-to-hub, from an official-format checkpoint written by the parity helpers
    from test_parity import _tiny_transformers_config, random_reference, write_official_checkpoint
    write_official_checkpoint(random_reference(_tiny_transformers_config()), workdir + "/official.pth")
    assert convert_main(["--source", "original", "--checkpoint", workdir + "/official.pth",
                         "--output-dir", workdir + "/converted", "--push-to-hub", "org/converted"]) == 0
    print(json.dumps({"class": type(loaded).__name__, "local": local, "by_id": by_id, "plain": plain}))
    """
)

_OFFLINE = textwrap.dedent(
    """
    import json, sys
    from transformers import pipeline
    import hf_detr
    model = hf_detr.HfDetrForObjectDetection.from_pretrained("org/tiny-detr")
    print(json.dumps({"class": type(model).__name__,
                      "detections": pipeline("object-detection", model="org/tiny-detr")(sys.argv[1], threshold=0.0)}))
    """
)


def _run(script: str, args: list[str], env: dict[str, str], cwd) -> dict:
    result = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=420)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_push_and_pull_through_a_local_hub_then_offline_from_the_cache(tmp_path, coco_image_dir):
    from hub_server import LocalHub

    image = str(coco_image_dir / "000000039769.png")
    home = tmp_path / "hf_home"
    with LocalHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        online = _run(_ONLINE, [str(TESTS), image, str(tmp_path)], env, cwd=REPO_ROOT)
        repos = {repo: commits[-1]["files"] for repo, commits in hub.state.repos.items()}

    assert online["class"] == "HfDetrForObjectDetection"
    assert online["by_id"] == online["local"] and online["plain"] == online["local"]
    assert len(online["local"]) == 4
    expected = {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", *MODEL_FILES}
    assert set(repos["org/tiny-detr"]) == expected
    assert set(repos["org/plain-detr"]) >= expected - {"README.md"}
    assert not any(name.endswith((".bin", ".pth", ".pt")) for files in repos.values() for name in files)
    card = ModelCard(repos["org/tiny-detr"]["README.md"].decode())
    assert "hf_detr" in card.data.tags and card.data.eval_results[0].metric_value == 12.5
    converted_card = ModelCard(repos["org/converted"]["README.md"].decode())
    assert converted_card.data.library_name == "transformers" and "hf_detr" in converted_card.data.tags
    config = json.loads(repos["org/tiny-detr"]["config.json"])
    assert config["auto_map"]["AutoModelForObjectDetection"] == "modeling_detr.HfDetrForObjectDetection"
    panoptic_card = ModelCard(repos["org/tiny-panoptic"]["README.md"].decode())
    assert panoptic_card.data.pipeline_tag == "image-segmentation" and not panoptic_card.data.eval_results
    assert 'pipeline("image-segmentation", model="org/tiny-panoptic")' in panoptic_card.text
    panoptic_config = json.loads(repos["org/tiny-panoptic"]["config.json"])
    assert panoptic_config["auto_map"]["AutoModelForImageSegmentation"] == (
        "modeling_detr_segmentation.HfDetrForSegmentation"
    )

    offline_env = {
        **os.environ,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }
    offline = _run(_OFFLINE, [image], offline_env, cwd=tmp_path)
    assert offline["class"] == "HfDetrForObjectDetection" and offline["detections"] == online["local"]


def test_a_demo_space_runs_the_demo_of_a_hub_model(monkeypatch):
    """push_demo_space writes a Gradio Space (app, requirements, card) whose app builds hf-detr-demo's
    page on the model it names."""
    from hub_server import LocalHub

    import hf_detr.demo
    from hf_detr.hub import push_demo_space

    with LocalHub() as hub:
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub.url)
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # the tests' default is offline
        push_demo_space("org/tiny-detr", "org/tiny-detr-demo", requirement="hf-detr[demo,video] @ git+https://example/x")
        files = hub.state.repos["org/tiny-detr-demo"][-1]["files"]
    assert set(files) == {"app.py", "requirements.txt", "README.md"}
    assert files["requirements.txt"].decode() == "hf-detr[demo,video] @ git+https://example/x\n"
    card = ModelCard(files["README.md"].decode())
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.models == ["org/tiny-detr"]
    built = []
    monkeypatch.setattr(hf_detr.demo, "build_demo", lambda model: built.append(model) or SimpleNamespace(launch=lambda: None))
    exec(compile(files["app.py"].decode(), "app.py", "exec"), {})
    assert built == ["org/tiny-detr"]
