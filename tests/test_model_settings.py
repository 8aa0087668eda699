"""A model setting lives in one place: `--config-overrides` (HfDetrConfig's fields, as transformers'
`--config_overrides`). The flags the model settings had of their own still work, deprecated: each
sets its config fields through the same path and says so in one line (MODEL_FLAGS)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import warnings

import pytest

from hf_detr import HfDetrConfig, HfDetrForObjectDetection
from hf_detr.training import TrainingArguments, parse_args, resolve_arguments
from hf_detr.training.arguments import (
    MODEL_FLAGS,
    PRESETS,
    DeprecatedFlagWarning,
    build_parser,
    fine_tuning_overrides,
)
from hf_detr.training.cli import parse_args_announcing_deprecations
from hf_detr.training.setup import build_model

# each deprecated flag, a value for it, and the --config-overrides that replaces it
ALIASES = [
    (["--d-model", "64"], "d_model=64", {"d_model": 64}),
    (["--attention-heads", "4"], "encoder_attention_heads=4,decoder_attention_heads=4",
     {"encoder_attention_heads": 4, "decoder_attention_heads": 4}),
    (["--dropout", "0"], "dropout=0.0,attention_dropout=0.0,activation_dropout=0.0",
     {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}),
    (["--dilation"], "dilation=true", {"dilation": True}),
    (["--pretrained-backbone", "false"], "use_pretrained_backbone=false", {"use_pretrained_backbone": False}),
    (["--class-loss-coefficient", "2.5"], "class_loss_coefficient=2.5", {"class_loss_coefficient": 2.5}),
]  # fmt: skip


@pytest.mark.parametrize(("flag", "replacement", "fields"), ALIASES, ids=[a[0][0] for a in ALIASES])
def test_a_deprecated_flag_sets_its_config_fields_as_config_overrides_does_and_warns(
    flag, replacement, fields
):
    with pytest.warns(
        FutureWarning, match=f'{flag[0]} is deprecated: use --config-overrides "{replacement}"'
    ):
        aliased = parse_args(["--dataset", "x", *flag])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecatedFlagWarning)  # the replacement warns of nothing
        replaced = parse_args(["--dataset", "x", "--config-overrides", replacement])
    assert aliased.config_overrides == replaced.config_overrides == fields
    assert aliased == replaced
    config = HfDetrConfig(**aliased.model_config_kwargs())
    assert all(getattr(config, key) == value for key, value in fields.items())


def test_every_model_flag_is_an_alias_of_config_fields_and_the_presets_use_the_fields():
    declared = set(HfDetrConfig.__annotations__)
    assert all(set(flag.fields) <= declared for flag in MODEL_FLAGS.values())
    settings = {spec.name for spec in dataclasses.fields(TrainingArguments)}
    assert not settings & set(MODEL_FLAGS)  # no setting mirrors a config field any more
    for name, preset in PRESETS.items():
        assert not set(preset) & set(MODEL_FLAGS), name
        assert set(preset.get("config_overrides", {})) <= declared, name


def test_python_and_config_files_take_the_old_names_too(tmp_path):
    with pytest.warns(DeprecatedFlagWarning, match="--num-queries is deprecated"):
        args = resolve_arguments({"dataset": "x", "num_queries": 7})
    assert args.config_overrides == {"num_queries": 7}
    with pytest.warns(DeprecatedFlagWarning, match="TrainingArguments.num_queries is deprecated"):
        assert args.num_queries == 7
    with pytest.warns(DeprecatedFlagWarning, match="TrainingArguments.dropout is deprecated"):
        assert args.dropout == HfDetrConfig.dropout  # unset: HfDetrConfig's default
    with pytest.warns(DeprecatedFlagWarning, match="--backbone is deprecated"):
        assert TrainingArguments(backbone="resnet18").config_overrides == {"backbone": "resnet18"}

    config = tmp_path / "run.yaml"
    config.write_text("dataset: x\neos_coefficient: 1e-2\nconfig_overrides:\n  giou_cost: 1e-1\n")
    with pytest.warns(DeprecatedFlagWarning, match="--eos-coefficient is deprecated"):
        args = parse_args(["--config", str(config)])
    assert args.config_overrides == {"giou_cost": 0.1, "eos_coefficient": 0.01}  # YAML's 1e-2 is a number


def test_a_flag_and_config_overrides_setting_the_same_field_is_a_one_line_error(tmp_path):
    for argv in (["--d-model", "64", "--config-overrides", "d_model=128"],
                 ["--attention-heads", "4", "--config-overrides", "decoder_attention_heads=8,dropout=0"]):  # fmt: skip
        with pytest.raises(ValueError) as error:
            parse_args(["--dataset", "x", *argv])
        message = str(error.value)
        assert "\n" not in message and "(deprecated) and --config-overrides both set" in message
        assert "set it once, in --config-overrides" in message
    with pytest.raises(ValueError, match="--d-model .* both set d_model"):  # from Python alike
        resolve_arguments({"d_model": 1, "config_overrides": "d_model=2"})
    # from different places, the usual precedence: the flags win over the config file
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"dataset": "x", "config_overrides": {"d_model": 128}}))
    with pytest.warns(DeprecatedFlagWarning):
        assert parse_args(["--config", str(config), "--d-model", "64"]).config_overrides == {"d_model": 64}


def test_the_command_announces_each_deprecated_flag_in_one_line(capsys):
    args = parse_args_announcing_deprecations(["--dataset", "x", "--num-queries", "7", "--dropout", "0.2"])
    assert args.config_overrides["num_queries"] == 7
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        'warning: --num-queries is deprecated: use --config-overrides "num_queries=7".',
        'warning: --dropout is deprecated: use --config-overrides "dropout=0.2,attention_dropout=0.2,'
        'activation_dropout=0.2".',
    ]


def test_the_help_shows_each_deprecated_flag_in_one_line_naming_its_replacement():
    helps = {a.dest: a.help for a in build_parser()._actions if not isinstance(a, argparse._HelpAction)}
    assert helps["ffn_dim"] == "deprecated: --config-overrides encoder_ffn_dim=N,decoder_ffn_dim=N"
    assert helps["backbone"] == "deprecated: --config-overrides backbone=NAME"
    assert all(helps[name].startswith("deprecated: --config-overrides ") for name in MODEL_FLAGS)
    assert helps["config_overrides"].startswith("HfDetrConfig fields, as transformers'")


def test_the_preset_model_and_the_users_overrides_merge_field_by_field():
    args = resolve_arguments({"config_overrides": "num_queries=20"})  # the builtin preset
    assert args.config_overrides["num_queries"] == 20 and args.config_overrides["backbone"] == "test_resnet"
    assert resolve_arguments({}).config_overrides["num_queries"] == 10
    args = parse_args(["--config-overrides", "none", "--dataset", "x"])
    assert args.config_overrides == {}


def test_the_query_groups_stay_a_training_setting():
    with pytest.raises(
        ValueError, match=r"'num_query_groups' is not an HfDetrConfig field .*--num-query-groups"
    ):
        resolve_arguments({"dataset": "x", "config_overrides": "num_query_groups=2"})
    assert (
        resolve_arguments({"dataset": "x", "num_query_groups": 3}).model_config_kwargs()["num_query_groups"]
        == 3
    )


def test_fine_tuning_takes_the_runs_training_settings_and_the_checkpoints_architecture():
    args = resolve_arguments(
        {"config_overrides": "dropout=0.2,bbox_loss_coefficient=3"}
    )  # the builtin preset
    applied, kept = fine_tuning_overrides(args)
    assert applied["dropout"] == 0.2 and applied["bbox_loss_coefficient"] == 3  # as given
    assert (
        applied["class_loss_coefficient"] == 3.0 and applied["trainable_backbone_layers"] == 5
    )  # the preset's
    assert applied["eos_coefficient"] == HfDetrConfig.eos_coefficient  # not overridden: HfDetrConfig's
    assert kept["backbone"] == "test_resnet" and kept["d_model"] == 128  # the architecture: the checkpoint's
    assert not set(applied) & set(kept)
    on_checkpoints = {key for flag in MODEL_FLAGS.values() if flag.on_checkpoints for key in flag.fields}
    assert on_checkpoints <= set(applied)


def test_a_fine_tuned_model_keeps_its_architecture_and_says_so_when_the_run_asks_for_another(
    tmp_path, caplog
):
    tiny = {"backbone": "resnet18", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_ffn_dim": 32,
            "decoder_ffn_dim": 32, "encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_queries": 5}  # fmt: skip
    HfDetrForObjectDetection(HfDetrConfig(**tiny, num_labels=2)).save_pretrained(tmp_path / "source")
    args = resolve_arguments(
        {"dataset": "x", "init_from": str(tmp_path / "source"), "config_overrides": {**tiny, "num_queries": 9, "dropout": 0}}
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hf_detr.training"):
        model = build_model(args, ["a", "b"], [1, 2])
    assert (
        model.config.num_queries == 5 and model.config.dropout == 0
    )  # the checkpoint's shapes, the run's dropout
    assert "keeps" in caplog.text and "num_queries=5" in caplog.text and "num_queries=9" in caplog.text
