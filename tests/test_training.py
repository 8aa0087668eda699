"""The training loop: resume equals uninterrupted, 2 CPU processes, fine-tuning, faults, signals, sources."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file

from hf_detr import HfDetrConfig, HfDetrForObjectDetection
from hf_detr.training import (
    TrainingArguments,
    TrainingStopped,
    build_model,
    parse_args,
    resolve_arguments,
    train,
)
from hf_detr.training.arguments import format_config_overrides, parse_config_overrides
from hf_detr.training.setup import lr_factor, parameter_groups, training_processor

# the tiny model's HfDetrConfig fields (--config-overrides) and the run's other settings
TINY_MODEL = {
    "backbone": "resnet18", "d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_attention_heads": 2,
    "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_queries": 5, "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.1, "freeze_backbone_batch_norm": False,
    "trainable_backbone_layers": 5,
}  # fmt: skip
TINY = {
    "config_overrides": format_config_overrides(TINY_MODEL), "image_scale": 0.1, "batch_size": 2, "num_workers": 0,
    "learning_rate": 1e-3, "backbone_learning_rate": 1e-4, "logging_steps": 1, "eval_epochs": 100,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def arguments(output_dir: Path, dataset: Path | str, **overrides) -> TrainingArguments:
    """The tiny run's settings with `overrides`; their `config_overrides` (text or dict) on the tiny model's."""
    model = {**TINY_MODEL, **parse_config_overrides(overrides.pop("config_overrides", None))}
    return resolve_arguments(
        {
            **TINY,
            "dataset": str(dataset),
            "output_dir": str(output_dir),
            **overrides,
            "config_overrides": model,
        }
    )


def events(output_dir: Path, kind: str) -> list[dict]:
    lines = (output_dir / "log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == kind]


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, shapes):
    """Interrupted mid-epoch (step 3 of 4), resumed with the same model, optimizer, schedule, RNG,
    augmentation and data position: the final weights agree within 1e-6."""
    common = {"epochs": 2, "warmup_steps": 2}
    full = train(arguments(tmp_path / "full", shapes, **common))
    assert full.global_step == 8 and full.stop_reason == "completed"
    stopped = train(arguments(tmp_path / "resumed", shapes, stop_after_steps=3, **common))
    assert stopped.stop_reason == "stop_after_steps" and stopped.global_step == 3
    assert (tmp_path / "resumed" / "checkpoints" / "step-00000003").is_dir()
    resumed = train(arguments(tmp_path / "resumed", shapes, resume_from_checkpoint="latest", **common))
    assert resumed.global_step == 8
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, f"weights differ by {worst}"
    assert full.stats == pytest.approx(resumed.stats, abs=1e-9)


def test_training_saves_a_pipeline_ready_model_with_its_settings_and_logs(tmp_path, shapes):
    result = train(
        arguments(
            tmp_path / "run", shapes, max_steps=3, save_steps=1, save_total_limit=2, report_to=["tensorboard"]
        )
    )
    out = tmp_path / "run"
    saved = json.loads((out / "training_args.json").read_text())
    assert (
        saved["max_steps"] == 3 and saved["preset"] == "paper" and saved["config_overrides"]["d_model"] == 32
    )
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step-00000002", "step-00000003"]  # the last 2 kept
    train_lines = events(out, "train")
    assert len(train_lines) == 3 and {"loss", "loss_ce", "loss_giou_0", "lr_0", "images_per_second"} <= set(
        train_lines[0]
    )
    assert events(out, "eval")[-1]["AP50"] == result.stats["AP50"]
    report = json.loads((out / "eval" / "eval_results.json").read_text())  # the latest evaluation's
    assert report["step"] == 3 and report["stats"]["AP50"] == pytest.approx(result.stats["AP50"], abs=1e-12)
    assert [row["name"] for row in report["per_class"]] == ["circle", "square", "triangle"]
    assert all((out / "eval" / name).stat().st_size > 0 for name in ("confusion_matrix.png", "pr_curve.png"))
    assert list((out / "hf_detr").rglob("events.out.tfevents*"))  # the tensorboard tracker wrote
    from transformers import pipeline

    detector = pipeline("object-detection", model=str(out))
    assert len(detector(str(next((shapes / "val").iterdir())), threshold=0.0)) == 5
    config = json.loads((out / "config.json").read_text())
    assert config["coco_category_ids"] == [1, 2, 3] and config["id2label"]["0"] == "circle"
    card = (out / "README.md").read_text()
    assert "hf_detr" in card and "3 optimizer steps" in card
    assert "x0.1 after 67% of the planned steps" in card and "the paper's augmentation" in card


def test_a_step_that_ends_an_epoch_and_is_an_eval_step_is_evaluated_once(tmp_path, shapes):
    # 8 images, batch 2: step 4 ends epoch 1 (eval_epochs 1) and is an eval step (eval_steps 4)
    out = tmp_path / "run"
    train(arguments(out, shapes, max_steps=6, eval_steps=4, eval_epochs=1))
    assert [record["step"] for record in events(out, "eval")] == [4, 6]
    # eval_epochs none: only the eval steps and the end (epochs end at steps 4, 8 and 12)
    train(arguments(tmp_path / "steps", shapes, max_steps=10, eval_steps=6, eval_epochs=None))
    assert [record["step"] for record in events(tmp_path / "steps", "eval")] == [6, 10]


def test_fine_tuning_with_new_classes_reinitialises_only_the_class_head(tmp_path, shapes):
    source = HfDetrForObjectDetection(resolve_arguments_config(num_labels=7))
    source.save_pretrained(tmp_path / "source")
    args = arguments(tmp_path / "ft", shapes, init_from=str(tmp_path / "source"), max_steps=1)
    model = build_model(args, ["circle", "square", "triangle"], [1, 2, 3])
    assert model.class_labels_classifier.weight.shape[0] == 4 and model.config.num_labels == 3
    assert model.config.id2label == {0: "circle", 1: "square", 2: "triangle"}
    reference = source.state_dict()
    for name, value in model.state_dict().items():
        if not name.startswith("class_labels_classifier."):
            assert torch.equal(value, reference[name]), name
    result = train(args)
    assert result.global_step == 1
    card = (tmp_path / "ft" / "README.md").read_text()
    assert f"base_model: {tmp_path / 'source'}" in card


def test_fine_tuning_to_other_names_gives_a_new_class_head_and_takes_the_runs_training_settings(
    tmp_path, shapes
):
    names = ["circle", "square", "triangle"]
    source = HfDetrForObjectDetection(resolve_arguments_config(num_labels=3, id2label=dict(enumerate(names))))
    source.save_pretrained(tmp_path / "source")
    settings = {"trainable_backbone_layers": 0, "freeze_backbone_batch_norm": True, "dropout": 0.0,
                "attention_dropout": 0.0}  # fmt: skip
    args = arguments(tmp_path / "ft", shapes, init_from=str(tmp_path / "source"), config_overrides=settings)
    model = build_model(args, ["star", "cross", "ring"], [1, 2, 3])
    head = "class_labels_classifier.weight"
    assert not torch.equal(model.state_dict()[head], source.state_dict()[head])  # same shape, new classes
    reference = source.state_dict()
    for name, value in model.state_dict().items():
        if name in reference and not name.startswith("class_labels_classifier."):
            assert torch.equal(value, reference[name]), name
    assert model.config.dropout == model.config.attention_dropout == 0.0
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".backbone." in f".{n}")
    backbone_buffers = {n: b.clone() for n, b in model.named_buffers() if ".backbone." in f".{n}"}
    model.train()(torch.rand(2, 3, 64, 64), labels=[
        {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2)  # fmt: skip
    assert all(torch.equal(b, backbone_buffers[n]) for n, b in model.named_buffers() if n in backbone_buffers)
    same = build_model(
        arguments(tmp_path / "same", shapes, init_from=str(tmp_path / "source")), names, [1, 2, 3]
    )
    assert torch.equal(same.state_dict()[head], source.state_dict()[head])  # the same classes: kept


def test_the_builtin_fine_tuning_preset_starts_from_the_main_job_and_says_so_when_it_is_missing(
    tmp_path, monkeypatch
):
    args = resolve_arguments({"preset": "builtin-finetune"})
    assert args.dataset == "builtin:shapes-new-v1" and args.init_from == "outputs/hf-detr-shapes"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="builtin-finetune preset fine-tunes the main job's detector"):
        train(args)
    assert not (tmp_path / "outputs").exists()  # nothing written before the check


def test_a_resumed_run_with_query_groups_ends_as_an_uninterrupted_one_and_saves_plain_detr(tmp_path, shapes):
    common = {"epochs": 1, "num_query_groups": 3}
    full = train(arguments(tmp_path / "full", shapes, **common))
    train(arguments(tmp_path / "resumed", shapes, stop_after_steps=2, **common))
    resumed = train(arguments(tmp_path / "resumed", shapes, resume_from_checkpoint="latest", **common))
    assert full.global_step == resumed.global_step == 4
    checkpoint = load_file(tmp_path / "resumed" / "checkpoints" / "step-00000002" / "model.safetensors")
    assert (
        checkpoint["model.query_position_embeddings.weight"].shape[0] == 3 * TINY_MODEL["num_queries"]
    )  # all groups
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a["model.query_position_embeddings.weight"].shape[0] == TINY_MODEL["num_queries"]  # group 0 only
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-6
    assert json.loads((tmp_path / "full" / "config.json").read_text())["num_query_groups"] == 1


def test_fine_tuning_with_query_groups_keeps_the_checkpoints_queries_as_group_0(tmp_path, shapes):
    source = HfDetrForObjectDetection(resolve_arguments_config(num_labels=3))
    source.save_pretrained(tmp_path / "source")
    args = arguments(tmp_path / "ft", shapes, init_from=str(tmp_path / "source"), num_query_groups=4)
    model = build_model(args, ["circle", "square", "triangle"], [1, 2, 3])
    queries = model.model.query_position_embeddings.weight
    assert model.config.num_query_groups == 4 and queries.shape[0] == 4 * 5 and queries.requires_grad
    assert torch.equal(queries[:5], source.model.query_position_embeddings.weight)


def test_config_overrides_reach_fresh_and_fine_tuned_models(tmp_path, shapes):
    source = HfDetrForObjectDetection(resolve_arguments_config(num_labels=3))
    source.save_pretrained(tmp_path / "source")
    overrides = "bbox_loss_coefficient=3,giou_cost=1.5"
    for init_from in (None, str(tmp_path / "source")):
        args = arguments(tmp_path / "run", shapes, init_from=init_from, config_overrides=overrides)
        config = build_model(args, ["circle", "square", "triangle"], [1, 2, 3]).config
        assert (config.bbox_loss_coefficient, config.giou_cost) == (3, 1.5), init_from


def resolve_arguments_config(num_labels: int, **kwargs):
    from hf_detr import HfDetrConfig

    return HfDetrConfig(backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5,
                        num_labels=num_labels, freeze_backbone_batch_norm=False, trainable_backbone_layers=5, **kwargs)  # fmt: skip


def patch_training_loss(monkeypatch, wrap) -> None:
    """The training loop's loss (built by hf_detr.training.loss.training_loss) replaced by wrap(loss)."""
    import hf_detr.training.setup as setup

    real = setup.training_loss
    monkeypatch.setattr(setup, "training_loss", lambda model, *args: wrap(real(model, *args)))


def test_non_finite_losses_skip_the_update_and_too_many_stop_the_run(tmp_path, shapes, monkeypatch):
    calls = []

    def sometimes_nan(loss):
        def patched(outputs, labels):
            calls.append(1)
            total, loss_dict = loss(outputs, labels)
            return (total * float("nan"), loss_dict) if len(calls) in (2, 3) else (total, loss_dict)

        return patched

    patch_training_loss(monkeypatch, sometimes_nan)
    result = train(arguments(tmp_path / "nan", shapes, max_steps=5))
    assert result.nonfinite_steps == 2 and result.global_step == 5 and result.stop_reason == "completed"
    assert [e["step"] for e in events(tmp_path / "nan", "skipped_nonfinite")] == [2, 3]

    patch_training_loss(
        monkeypatch, lambda loss: lambda outputs, labels: (outputs.logits.sum() * float("nan"), {})
    )
    with pytest.raises(
        TrainingStopped, match="3 consecutive updates had a non-finite loss.*lower the learning rate"
    ):
        train(arguments(tmp_path / "diverged", shapes, max_steps=20, max_consecutive_nonfinite=3))
    assert (tmp_path / "diverged" / "checkpoints" / "step-00000003").is_dir()


def test_diverged_predictions_are_a_skipped_update_not_a_crash(tmp_path, shapes, monkeypatch):
    """NaN predictions make the matcher raise; the loop turns it into a skipped update."""
    from hf_detr.loss_detr import NonFiniteMatchingCostError

    calls = []

    def matcher_fails_once(loss):
        def patched(outputs, labels):
            calls.append(1)
            if len(calls) == 2:
                raise NonFiniteMatchingCostError("the model's logits contain NaN")
            return loss(outputs, labels)

        return patched

    patch_training_loss(monkeypatch, matcher_fails_once)
    assert train(arguments(tmp_path / "run", shapes, max_steps=3)).nonfinite_steps == 1


def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path, shapes):
    out = tmp_path / "term"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    command = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *flags, "--dataset", str(shapes),
               "--output-dir", str(out), "--epochs", "1000"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not ((out / "log.jsonl").exists() and events(out, "train")):
        time.sleep(0.5)
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    stopped = events(out, "stopped")
    assert stopped and stopped[0]["reason"] == "signal"
    assert Path(stopped[0]["checkpoint"]).is_dir()


def test_local_coco_folder_and_parquet_hub_datasets_train(tmp_path):
    from test_data import make_coco_folder, make_hub_parquet

    coco = make_coco_folder(tmp_path / "coco")
    result = train(arguments(tmp_path / "from_coco", coco, max_steps=2, image_scale=0.2))
    assert result.global_step == 2 and (tmp_path / "from_coco" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "from_coco" / "config.json").read_text())["coco_category_ids"] == [3, 7, 12]
    parquet = make_hub_parquet(tmp_path / "hub.parquet", "xyxy")
    result = train(
        arguments(tmp_path / "from_parquet", parquet, max_steps=2, image_scale=0.2, bbox_format="xyxy")
    )
    assert result.global_step == 2 and result.stats is None  # a single split: nothing to evaluate on


# ---------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------
def test_defaults_are_the_paper_recipe_for_user_data():
    args = resolve_arguments({"dataset": "/data/coco"})
    assert args.preset == "paper"
    assert (args.learning_rate, args.backbone_learning_rate, args.weight_decay, args.max_grad_norm) == (
        1e-4,
        1e-5,
        1e-4,
        0.1,
    )
    assert (args.batch_size, args.lr_drop, args.epochs, args.config_overrides) == (2, 2 / 3, 300, {})
    config = HfDetrConfig(**args.model_config_kwargs())  # the paper's model: HfDetrConfig's defaults
    assert (
        config.auxiliary_loss and config.freeze_backbone_batch_norm and config.trainable_backbone_layers == 3
    )
    scale, processor = training_processor(args)  # image_scale none: 1, the paper's 800/1333 px
    assert scale == 1.0 and processor.size == {"shortest_edge": 800, "longest_edge": 1333}
    assert resolve_arguments({}).preset == "builtin"


def test_config_files_and_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning-rate: 0.0003\nbatch_size: 4\nreport_to: [tensorboard]\n")
    argv = [
        "--config",
        str(config),
        "--batch-size",
        "8",
        "--dataset",
        "/data/coco",
        "--config-overrides",
        "dilation=true",
    ]
    args = parse_args(argv)
    assert (args.learning_rate, args.batch_size, args.report_to, args.config_overrides) == (
        3e-4,
        8,
        ["tensorboard"],
        {"dilation": True},
    )
    (tmp_path / "bad.json").write_text(json.dumps({"learning_rat": 1}))
    with pytest.raises(ValueError, match="learning_rat"):
        parse_args(["--config", str(tmp_path / "bad.json")])
    with pytest.raises(ValueError, match="mixed_precision"):
        parse_args(["--mixed-precision", "fp8"])
    with pytest.raises(ValueError, match="preset"):
        parse_args(["--preset", "fast"])
    with pytest.raises(ValueError, match="eval_epochs must be at least 1 or none"):
        parse_args(["--eval-epochs", "0"])
    with pytest.raises(ValueError, match="lr_scheduler_type must be step or cosine"):
        parse_args(["--lr-scheduler-type", "linear"])


def test_optional_flags_take_none():
    builtin = resolve_arguments({})  # capped by updates, not by time: the same run on every machine
    assert builtin.time_limit_minutes is None and builtin.max_steps is not None
    args = parse_args(["--max-steps", "null", "--eval-split", "none", "--eval-epochs", "none"])
    assert (args.max_steps, args.eval_split, args.eval_epochs) == (None, None, None)
    assert parse_args(["--time-limit-minutes", "2.5"]).time_limit_minutes == 2.5
    with pytest.raises(SystemExit):
        parse_args(["--max-steps", "many"])


def test_learning_rate_schedule_and_groups():
    assert [lr_factor(s, 9, 0, 2 / 3) for s in (0, 5, 6, 8)] == [1.0, 1.0, 0.1, 0.1]
    assert lr_factor(0, 100, 10, 2 / 3) == pytest.approx(0.1) and lr_factor(9, 100, 10, 2 / 3) == 1.0
    cosine = [lr_factor(s, 110, 10, 1.0, "cosine") for s in (0, 9, 10, 60, 109)]
    assert cosine == pytest.approx([0.1, 1.0, 1.0, 0.5, 0.5 * (1 + math.cos(math.pi * 99 / 100))])
    model = HfDetrForObjectDetection(resolve_arguments_config(num_labels=3))
    groups = parameter_groups(model, resolve_arguments({"dataset": "x"}))
    assert [g["lr"] for g in groups] == [1e-4, 1e-5]
    backbone = {id(p) for p in model.model.backbone.parameters()}
    assert all(id(p) in backbone for p in groups[1]["params"]) and not any(
        id(p) in backbone for p in groups[0]["params"]
    )


def test_unreachable_pretrained_backbone_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = arguments(tmp_path, "unused", config_overrides="use_pretrained_backbone=true")
    start = time.monotonic()
    with pytest.raises(
        RuntimeError, match="pretrained resnet18 backbone.*without --config-overrides use_pretr"
    ):
        build_model(args, ["a"], [1])
    assert time.monotonic() - start < 60


def coco_2017_layout(root: Path, shapes: Path) -> Path:
    """The standard COCO layout: train2017/, val2017/, test2017/ (no annotations: as COCO's test-dev)
    and annotations/instances_{train,val}2017.json, plus an annotated split a run must not touch."""
    import shutil

    (root / "annotations").mkdir(parents=True)
    for ours, theirs in (("train", "train2017"), ("val", "val2017"), ("val", "unlabeled2017")):
        shutil.copytree(shapes / ours, root / theirs)
        shutil.copy(
            shapes / "annotations" / f"instances_{ours}.json",
            root / "annotations" / f"instances_{theirs}.json",
        )
    (root / "test2017").mkdir()
    return root


def test_the_standard_coco_layout_trains_on_train2017_and_evaluates_on_val2017(
    tmp_path, shapes, monkeypatch, caplog
):
    from hf_detr.data import coco_folder

    dataset = coco_2017_layout(tmp_path / "coco", shapes)
    converted = []
    convert = coco_folder.convert_coco_split
    monkeypatch.setattr(
        coco_folder, "convert_coco_split", lambda r, s, f: converted.append(s) or convert(r, s, f)
    )
    with pytest.raises(
        ValueError,
        match=r"Unknown train split 'train'; the dataset has \['train2017', 'unlabeled2017', 'val2017'\]",
    ):
        train(arguments(tmp_path / "wrong", dataset, train_split="train", max_steps=1))
    assert converted == []  # the names are checked before any split is converted
    with caplog.at_level("INFO", logger="hf_detr"):
        result = train(arguments(tmp_path / "run", dataset, max_steps=1, eval_steps=1))
    assert "Training on split 'train2017', evaluating on split 'val2017'" in caplog.text
    assert sorted(converted) == ["train2017", "val2017"] and result.stats is not None


def test_fine_tuning_keeps_the_checkpoints_resolution_and_announces_a_change(tmp_path, shapes, caplog):
    """The main job's model is trained at 128/213 px; fine-tuning it at the paper's 800/1333 px (the
    default image scale with --dataset) lost its AP in 4 updates."""
    from hf_detr import HfDetrImageProcessor
    from hf_detr.training.cli import main

    names = {0: "circle", 1: "square", 2: "triangle"}
    source = tmp_path / "source"
    HfDetrForObjectDetection(resolve_arguments_config(num_labels=3, id2label=names)).save_pretrained(source)
    HfDetrImageProcessor(
        size={"shortest_edge": 64, "longest_edge": 107}, image_mean=[0.5] * 3
    ).save_pretrained(source)
    flags = ["--dataset", str(shapes), "--init-from", str(source), "--max-steps", "1", "--batch-size", "2",
             "--num-workers", "0", "--eval-epochs", "none"]  # fmt: skip
    with caplog.at_level("INFO", logger="hf_detr"):
        assert main([*flags, "--output-dir", str(tmp_path / "kept")]) == 0
    assert "Fine-tuning at " in caplog.text and "shorter side 64 px, longer at most 107 px" in caplog.text
    kept = HfDetrImageProcessor.from_pretrained(tmp_path / "kept")
    assert kept.size == {"shortest_edge": 64, "longest_edge": 107} and kept.image_mean == [0.5] * 3
    assert json.loads((tmp_path / "kept" / "training_args.json").read_text())["image_scale"] == 0.08
    caplog.clear()
    with caplog.at_level("INFO", logger="hf_detr"):
        assert main([*flags, "--output-dir", str(tmp_path / "changed"), "--image-scale", "0.1"]) == 0
    assert "--image-scale 0.1 trains at shorter side 80 px, longer at most 133 px" in caplog.text
    changed = HfDetrImageProcessor.from_pretrained(tmp_path / "changed")
    assert changed.size == {"shortest_edge": 80, "longest_edge": 133} and changed.image_mean == [0.5] * 3


def test_fine_tuning_to_more_classes_keeps_the_rows_of_the_classes_it_shares_by_name(tmp_path, shapes):
    names = ["circle", "square", "triangle"]
    source = HfDetrForObjectDetection(resolve_arguments_config(num_labels=3, id2label=dict(enumerate(names))))
    source.save_pretrained(tmp_path / "source")
    args = arguments(tmp_path / "ft", shapes, init_from=str(tmp_path / "source"))
    model = build_model(args, ["square", "star", "circle", "triangle"], [2, 7, 1, 3])
    old, new = source.class_labels_classifier, model.class_labels_classifier
    assert new.out_features == 5 and model.config.id2label[1] == "star"
    for new_row, old_row in ((0, 1), (2, 0), (3, 2), (4, 3)):  # square, circle, triangle, no-object
        assert (
            torch.equal(new.weight[new_row], old.weight[old_row]) and new.bias[new_row] == old.bias[old_row]
        )
    assert not torch.equal(new.weight[1], old.weight[1])  # star: a new row
    assert model.config.coco_category_ids == [2, 7, 1, 3]
