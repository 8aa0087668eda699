"""Every training setting in one dataclass: flags, a YAML/JSON file, or a preset.

Precedence: the dataclass defaults (the paper's recipe) < the preset < `--config FILE` < flags.
The preset defaults to "builtin" when no dataset is given (the built-in synthetic set, tuned for a
laptop CPU) and "paper" otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..commands import add_traceback_argument
from ..configuration_detr import HfDetrConfig
from ..evaluation.tasks import TASKS as EVALUATION_TASKS


@dataclass
class TrainingArguments:
    """Settings of `hf-detr-train`. Defaults follow the paper (section 4 and appendix A.4)."""

    task: str = field(
        default="detection",
        metadata={
            "help": "detection (boxes) or panoptic (HfDetrForSegmentation: masks and PQ, paper section 4.4)"
        },
    )
    # data
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "COCO folder, parquet/arrow path or Hub dataset name; none: the built-in synthetic set"
        },
    )
    train_split: str | None = field(
        default=None,
        metadata={"help": "the split to train on; none: the first of train, train2017 that exists"},
    )
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "the split to evaluate on; none: the first of val, validation, val2017, test that exists"
        },
    )
    bbox_format: str = field(
        default="xywh",
        metadata={"help": "box format of a Hub/parquet dataset: xywh (COCO's) or xyxy, in pixels"},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "stream a Hub/parquet/arrow dataset; needs --max-steps unless it states its row count"
        },
    )
    stuff_categories: list[str] = field(
        default_factory=list,
        metadata={
            "help": "panoptic Hub/parquet data: names or ids of its stuff classes (the rest are things)"
        },
    )
    image_scale: float | None = field(
        default=None,
        metadata={
            "help": "scales every augmentation and evaluation size (1: 800/1333 px); none: 1 or --init-from's"
        },
    )
    augmentation: str = field(
        default="paper",
        metadata={
            "help": "paper (flip, multi-scale resize, random crops) or flip (flip + the evaluation resize)"
        },
        # the paper's: shorter side 480-800 px (max 1333), random crops half the time (appendix A.4)
    )
    num_workers: int = field(
        default=2, metadata={"help": "DataLoader worker processes per training process (0: load in line)"}
    )
    # model: a new one, or a checkpoint to fine-tune; its HfDetrConfig fields through config_overrides
    init_from: str | None = field(
        default=None,
        metadata={"help": "fine-tune from this checkpoint (directory or Hub repo id); none: a new model"},
    )
    config_overrides: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "HfDetrConfig fields, as transformers': 'num_queries=50,dropout=0' (docs/training.md)"
        },
    )
    num_query_groups: int = field(
        default=HfDetrConfig.num_query_groups,
        metadata={
            "help": "Group DETR: query groups in training; the saved model keeps the first (1: off)",
            "paper": True,
        },
    )
    one_to_many_repeats: int = field(
        default=1,
        metadata={
            "help": "H-DETR: query groups 1.. are matched to every target repeated k times (1: off)",
            "paper": True,
        },
    )
    freeze_detector: bool = field(
        default=False,
        metadata={
            "help": "panoptic: train the mask head alone, the detector frozen (the paper's second stage)"
        },
    )
    # panoptic: the detector trains on the panoptic boxes (things and stuff, mask losses off) first, then
    # is frozen while the mask head trains for max_steps
    detector_steps: int | None = field(
        default=None,
        metadata={
            "help": "panoptic: first train the detector for N optimizer steps, then the mask head alone"
        },
    )
    # optimisation
    epochs: int = field(
        default=300, metadata={"help": "schedule length in epochs (--max-steps overrides it)", "paper": True}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "schedule length in optimizer steps (overrides --epochs)"}
    )
    batch_size: int = field(
        default=2,
        metadata={
            "help": "images per device per step (the paper: 2 on each of 16 GPUs, 64 in total)",
            "paper": True,
        },
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "batches accumulated into one optimizer step"}
    )
    learning_rate: float = field(
        default=1e-4, metadata={"help": "AdamW learning rate of the transformer and heads", "paper": True}
    )
    backbone_learning_rate: float = field(
        default=1e-5, metadata={"help": "AdamW learning rate of the backbone", "paper": True}
    )
    mask_head_learning_rate: float | None = field(
        default=None, metadata={"help": "panoptic: the new mask head's learning rate; none: --learning-rate"}
    )
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay", "paper": True})
    max_grad_norm: float = field(
        default=0.1,
        metadata={"help": "gradient clipping: the largest total L2 norm of the gradients", "paper": True},
    )
    lr_scheduler_type: str = field(
        default="step",
        metadata={
            "help": "step (x0.1 after --lr-drop of the run) or cosine (down to 0 at the end)",
            "paper": True,
        },
    )
    lr_drop: float = field(
        default=2 / 3,
        metadata={
            "help": "step schedule: learning rate x0.1 after this fraction of the run (200 of 300 epochs)",
            "paper": True,
        },
    )
    warmup_steps: int = field(
        default=0,
        metadata={"help": "linear learning-rate warm-up, in optimizer steps (0: none)", "paper": True},
    )
    mixed_precision: str = field(
        default="no", metadata={"help": "Accelerate's mixed precision: no, fp16 or bf16"}
    )
    seed: int = field(default=42, metadata={"help": "random seed (initialisation, data order, augmentation)"})
    time_limit_minutes: float | None = field(
        default=None, metadata={"help": "stop training after this many minutes (then evaluate and save)"}
    )
    # checkpoints and faults
    output_dir: str = field(
        default="outputs/hf-detr",
        metadata={"help": "directory of the checkpoints, logs, metrics and final model"},
    )
    save_steps: int | None = field(
        default=None, metadata={"help": "also save a checkpoint every N optimizer steps"}
    )
    save_total_limit: int = field(
        default=3, metadata={"help": "keep the last K checkpoints (older ones are deleted)"}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "resume from a checkpoint directory, or latest (the output's last one)"},
    )
    stop_after_steps: int | None = field(
        default=None,
        metadata={"help": "interrupt after N optimizer steps, with a checkpoint (to test resuming)"},
    )
    max_consecutive_nonfinite: int = field(
        default=10, metadata={"help": "stop after this many skipped (NaN/inf loss) optimizer steps in a row"}
    )
    # the run they keep (names as transformers' Trainer has them)
    ema: bool = field(
        default=False,
        metadata={"help": "evaluate and save an exponential moving average of the weights (training/ema.py)"},
    )
    ema_decay: float = field(
        default=0.9999,
        metadata={
            "help": "EMA decay per optimizer step (RT-DETR, D-FINE, ultralytics; rf-detr fine-tuning: 0.993)"
        },
    )
    ema_tau: float = field(
        default=2000.0,
        metadata={
            "help": "EMA decay ramp in optimizer steps: ema-decay * (1 - exp(-step / tau)) (rf-detr: 100)"
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "stop after N evaluations without improvement; none: never stop early"},
    )
    early_stopping_threshold: float = field(
        default=0.0,
        metadata={"help": "early stopping: a metric gain must exceed this to count as an improvement"},
    )
    metric_for_best_model: str | None = field(
        default=None,
        metadata={
            "help": "metric that picks the best model and drives early stopping; none: AP (PQ if panoptic)"
        },
    )
    greater_is_better: bool = field(
        default=True, metadata={"help": "a higher --metric-for-best-model is better (false: lower is)"}
    )
    load_best_model_at_end: bool = field(
        default=True,
        metadata={"help": "the final model is the best evaluation's weights (when there is one)"},
    )
    # evaluation and logging
    eval_epochs: int | None = field(
        default=1, metadata={"help": "evaluate every N epochs; none: only every --eval-steps and at the end"}
    )
    eval_steps: int | None = field(default=None, metadata={"help": "also evaluate every N optimizer steps"})
    eval_top_k: int | None = field(
        default=None,
        metadata={
            "help": "evaluate the K best (query, class) pairs per image; none: every query's best class",
            "paper": True,
        },
    )
    panoptic_threshold: float = field(
        default=0.85,
        metadata={
            "help": "panoptic evaluation: keep queries whose class score exceeds this (0-1; the official rule's 0.85)",
        },
    )
    logging_steps: int = field(
        default=10, metadata={"help": "log the losses and learning rates every N optimizer steps"}
    )
    report_to: list[str] = field(
        default_factory=list,
        metadata={"help": "Accelerate trackers to log to: tensorboard, wandb, ... (none: the console only)"},
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub repo id to publish the final model to"}
    )
    hub_private: bool = field(default=False, metadata={"help": "make the --push-to-hub repo private"})
    preset: str | None = field(
        default=None,
        metadata={
            "help": "paper, builtin, builtin-panoptic or builtin-finetune; none: builtin without a dataset, "
            "else paper"
        },
    )

    def __post_init__(self) -> None:
        # transformers' text ('key=value,...'), a mapping (a config file's, Python's) or none
        self.config_overrides = parse_config_overrides(self.config_overrides)

    def __getattr__(self, name: str) -> Any:
        """A deprecated model flag read as a setting (MODEL_FLAGS): its HfDetrConfig field in a new model."""
        flag = MODEL_FLAGS.get(name)
        if flag is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        key = flag.fields[0]
        warnings.warn(
            f"TrainingArguments.{name} is deprecated: read config_overrides[{key!r}] (unset: HfDetrConfig's).",
            DeprecatedFlagWarning, stacklevel=2,
        )  # fmt: skip
        return self.config_overrides.get(key, getattr(HfDetrConfig, key))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config_kwargs(self) -> dict[str, Any]:
        """The `HfDetrConfig` fields of a new model of this run: `config_overrides` and the query groups."""
        return {**self.config_overrides, "num_query_groups": self.num_query_groups}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


class DeprecatedFlagWarning(FutureWarning):
    """A model setting given by its own flag (MODEL_FLAGS) rather than by --config-overrides."""


@dataclass(frozen=True)
class ModelFlag:
    """The HfDetrConfig `fields` a model setting's own flag sets. A fine-tuning run sets them on its
    checkpoint too when `on_checkpoints` (how the model trains: the run's value, else HfDetrConfig's
    default); otherwise the checkpoint keeps its own (its weights' shapes, its backbone)."""

    fields: tuple[str, ...]
    on_checkpoints: bool = False


# The model settings that had flags of their own before --config-overrides, and the HfDetrConfig fields
# each sets: the one table of them, for new models and fine-tuned checkpoints alike. hf-detr-train
# still takes the flags (and a config file or resolve_arguments the names), deprecated, as
# --config-overrides of their fields.
MODEL_FLAGS: dict[str, ModelFlag] = {
    "backbone": ModelFlag(("backbone",)),
    "pretrained_backbone": ModelFlag(("use_pretrained_backbone",)),
    "dilation": ModelFlag(("dilation",)),
    "d_model": ModelFlag(("d_model",)),
    "encoder_layers": ModelFlag(("encoder_layers",)),
    "decoder_layers": ModelFlag(("decoder_layers",)),
    "attention_heads": ModelFlag(("encoder_attention_heads", "decoder_attention_heads")),
    "ffn_dim": ModelFlag(("encoder_ffn_dim", "decoder_ffn_dim")),
    "num_queries": ModelFlag(("num_queries",)),
    "dropout": ModelFlag(("dropout", "attention_dropout", "activation_dropout"), on_checkpoints=True),
    "freeze_backbone_batch_norm": ModelFlag(("freeze_backbone_batch_norm",), on_checkpoints=True),
    "trainable_backbone_layers": ModelFlag(("trainable_backbone_layers",), on_checkpoints=True),
    "auxiliary_loss": ModelFlag(("auxiliary_loss",), on_checkpoints=True),
    "eos_coefficient": ModelFlag(("eos_coefficient",), on_checkpoints=True),
    "class_loss_coefficient": ModelFlag(("class_loss_coefficient",), on_checkpoints=True),
    "mask_loss_coefficient": ModelFlag(("mask_loss_coefficient",), on_checkpoints=True),
    "dice_loss_coefficient": ModelFlag(("dice_loss_coefficient",), on_checkpoints=True),
}


def fine_tuning_overrides(arguments: TrainingArguments) -> tuple[dict[str, Any], dict[str, Any]]:
    """(The HfDetrConfig fields a fine-tuning run sets on its checkpoint, the overrides it leaves to the
    checkpoint): every field of an `on_checkpoints` setting (the run's value, else HfDetrConfig's
    default) and every override of a field without a flag; the other flags' fields stay the
    checkpoint's (their overrides, the second dict, are for new models)."""
    overrides = arguments.config_overrides
    applied: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    for flag in MODEL_FLAGS.values():
        for key in flag.fields:
            if flag.on_checkpoints:
                applied[key] = overrides.get(key, getattr(HfDetrConfig, key))
            elif key in overrides:
                kept[key] = overrides[key]
    applied.update({key: value for key, value in overrides.items() if key not in applied and key not in kept})
    return applied, kept


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def deprecated_flags_to_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """`values` (settings by name) with the deprecated model flags among them moved into
    `config_overrides` (a dict), one `DeprecatedFlagWarning` each; a flag and a `config_overrides` key
    of the same field is a `ValueError` (set it once)."""
    flags = [name for name in values if name in MODEL_FLAGS]
    if not flags:
        return values
    values = dict(values)
    overrides = parse_config_overrides(values.get("config_overrides"))
    moved: dict[str, Any] = {}
    for name in flags:
        assigned = dict.fromkeys(MODEL_FLAGS[name].fields, values.pop(name))
        clash = next((key for key in assigned if key in overrides), None)
        if clash is not None:
            raise ValueError(
                f"Invalid training setting: {flag_name(name)} (deprecated) and --config-overrides both set "
                f"{clash}; set it once, in --config-overrides."
            )
        warnings.warn(
            f"{flag_name(name)} is deprecated: use --config-overrides \"{format_config_overrides(assigned)}\".",
            DeprecatedFlagWarning, stacklevel=3,
        )  # fmt: skip
        moved.update(assigned)
    values["config_overrides"] = {**overrides, **moved}
    return values


def _taking_deprecated_flags(init: Any) -> Any:
    """`TrainingArguments(...)` takes the deprecated model flags too (as `config_overrides`)."""

    @functools.wraps(init)
    def __init__(self: TrainingArguments, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **deprecated_flags_to_overrides(kwargs))

    return __init__


TrainingArguments.__init__ = _taking_deprecated_flags(TrainingArguments.__init__)  # type: ignore[method-assign]

# The built-in dataset's preset, chosen by measurement (benchmarks/RESULTS.md, "Main job"): a small
# DETR trained from scratch within a 15-minute budget on a 2-core CPU.
BUILTIN_PRESET: dict[str, Any] = {
    "config_overrides": {
        # timm's 0.47M-parameter ResNet learns shapes from scratch; ResNet-18 stayed at AP50 0.07 for 600 updates
        "backbone": "test_resnet",
        "dilation": True,  # stride 16: an 8x8 map of a 128 px image instead of 4x4
        "d_model": 128,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 512,
        "decoder_ffn_dim": 512,
        "num_queries": 10,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "freeze_backbone_batch_norm": False,  # a scratch backbone needs BatchNorm that learns
        "trainable_backbone_layers": 5,  # the stem too: it is random
        "class_loss_coefficient": 3.0,  # the classes are the bottleneck: loss_ce sits at ln 4 for hundreds of updates
    },
    "image_scale": 0.16,  # 800 px -> 128 px, the built-in images' size
    "augmentation": "flip",
    "batch_size": 16,
    "learning_rate": 2e-4,  # 5e-4 never learned the classes; 1e-4 and 4e-4 learned slower
    "backbone_learning_rate": 1e-3,  # a small scratch backbone learns fastest at 5x the transformer's
    "warmup_steps": 50,
    "num_query_groups": 2,  # H-DETR's hybrid matching: a second group of 10 queries (training only)...
    "one_to_many_repeats": 3,  # ...matched to every target repeated 3 times; the saved model is plain DETR
    "lr_drop": 0.8,  # x0.1 for the last 240 updates
    "max_steps": 1200,  # capped by updates, not time: the same model on every machine
    "eval_steps": 300,
    "eval_epochs": None,
    "num_workers": 0,  # on 2 cores a loader process slows the step more than decoding in line does
    "output_dir": "outputs/hf-detr-shapes",
}
# `--task panoptic` on the built-in set: the mask head trained on the main job's detector (its output
# directory), the paper's second stage on the built-in panoptic annotations (benchmarks/RESULTS.md).
BUILTIN_PANOPTIC_PRESET: dict[str, Any] = {
    **BUILTIN_PRESET,
    "task": "panoptic",
    "init_from": BUILTIN_PRESET["output_dir"],
    "num_query_groups": 1,  # the mask head trains on one group of queries
    "one_to_many_repeats": 1,
    # the paper's two stages: the main job's detector learns the stuff classes' boxes (whole-image
    # background regions) first; without it no stuff segment was ever predicted (PQ_st 0)
    "detector_steps": 400,
    "freeze_detector": True,  # then the mask head alone; training the detector too kept every mask alike
    "mask_head_learning_rate": 1e-3,  # the new head at 5x; its DICE loss starts to fall after ~300 updates
    "max_steps": 600,
    "eval_steps": 300,
    # 10 queries over 6 classes are less confident than the official 100 over 250: at 0.85 half the
    # thing segments are dropped (PQ 0.445 against 0.744 at 0.5, benchmarks/RESULTS.md)
    "panoptic_threshold": 0.5,
    "output_dir": "outputs/hf-detr-shapes-panoptic",
}
# Fine-tuning the main job's detector to new classes: the built-in fine-tuning set (200 train images of
# three other shapes), settings chosen by measurement (benchmarks/RESULTS.md, "Fine-tuning"); flips
# only, as the main job: the paper's multi-scale crops reached AP 0.263 at 300 updates against 0.535.
BUILTIN_FINETUNE_PRESET: dict[str, Any] = {
    **BUILTIN_PRESET,
    "dataset": "builtin:shapes-new-v1",
    "init_from": BUILTIN_PRESET["output_dir"],  # everything trains, at the main job's rates (a frozen
    # backbone, a 5x lower backbone rate, 0.5x or 2x the rates, one query group: all lower or the same)
    "warmup_steps": 0,  # the trained weights need none (0.530 against 0.521 at 300, 2 seeds)
    "ema": True,  # rf-detr's fine-tuning EMA: AP 0.46-0.49 instead of 0.39-0.40 halfway, the same at the end
    "ema_decay": 0.993,
    "ema_tau": 100.0,
    "max_steps": 300,
    "eval_steps": 100,
    "output_dir": "outputs/hf-detr-shapes-finetuned",
}
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "builtin": BUILTIN_PRESET,
    "builtin-panoptic": BUILTIN_PANOPTIC_PRESET,
    "builtin-finetune": BUILTIN_FINETUNE_PRESET,
}
TASKS = tuple(EVALUATION_TASKS)  # detection, panoptic (hf_detr/evaluation/tasks.py)


def _field_type(annotation: Any) -> tuple[type, bool, bool]:
    """(base type, optional, is list) of a field annotation string like 'int | None'."""
    hint = eval(annotation, {"Any": Any}) if isinstance(annotation, str) else annotation
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], optional, True
    return typing.get_origin(hint) or hint, optional, False  # dict[str, Any] -> dict


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-detr-train",
        description="Train DETR with Accelerate (one CPU, one or many GPUs, many nodes).",
        epilog="The defaults shown are the paper preset's; without --dataset the builtin preset changes some "
        "(the model's size, the schedule: see --preset and hf_detr/training/arguments.py). Optional settings "
        "take none.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", type=Path, help="YAML or JSON file of settings (flags override it)")
    for spec in fields(TrainingArguments):
        base, optional, is_list = _field_type(spec.type)
        flag = "--" + spec.name.replace("_", "-")
        help_text = _help_text(spec)
        if base is bool:
            parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, help=help_text)
        elif is_list:
            parser.add_argument(flag, nargs="*", type=base, help=help_text)
        else:
            converter = base if base in (int, float, str) else str
            if optional:
                converter = _or_none(converter)
            parser.add_argument(flag, type=converter, help=help_text)
    _add_deprecated_flags(parser)
    add_traceback_argument(parser)
    return parser


def _add_deprecated_flags(parser: argparse.ArgumentParser) -> None:
    """The model settings' own flags (MODEL_FLAGS), each one help line naming its --config-overrides."""
    group = parser.add_argument_group("deprecated model settings (each one is a --config-overrides)")
    placeholders = {bool: "true|false", int: "N", float: "X", str: "NAME"}
    for name, flag in MODEL_FLAGS.items():
        base = config_field_type(flag.fields[0])
        assigned = ",".join(f"{key}={placeholders[base]}" for key in flag.fields)
        help_text = f"deprecated: --config-overrides {assigned}"
        if base is bool:
            group.add_argument(
                flag_name(name), type=_parse_bool, nargs="?", const=True, metavar="BOOL", help=help_text
            )
        else:
            group.add_argument(flag_name(name), type=base, metavar=placeholders[base], help=help_text)


def config_field_type(key: str) -> type:
    """The type of an HfDetrConfig field (its annotation's base type)."""
    return _field_type(HfDetrConfig.__annotations__[key])[0]


def _help_text(spec: dataclasses.Field) -> str:
    """A field's one-line help (its metadata's "help") and its default, "the paper's" where it is."""
    default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()  # type: ignore[misc]
    if default is None or default == [] or default == {}:
        shown = "none"
    elif isinstance(default, bool):
        shown = str(default).lower()
    elif isinstance(default, float):
        shown = f"{default:g}"
    else:
        shown = str(default)
    notes = [f"default: {shown}"]
    if spec.metadata.get("paper"):
        notes.append("the paper's")
    text = spec.metadata.get("help", "")
    return f"{text} ({', '.join(notes)})".replace("%", "%%")  # argparse formats help with %


def _or_none(convert: Any) -> Any:
    """A flag converter that also takes none / null (an optional setting switched off)."""

    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error messages
    return parse


def _load_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        values = json.loads(text)
    else:
        raise ValueError(f"--config must be a .yaml, .yml or .json file, got {path}.")
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of setting names to values.")
    floats = {spec.name for spec in fields(TrainingArguments) if _field_type(spec.type)[0] is float}
    floats |= {name for name, flag in MODEL_FLAGS.items() if config_field_type(flag.fields[0]) is float}
    values = {
        key.replace("-", "_"): _yaml_float(value) if key.replace("-", "_") in floats else value
        for key, value in values.items()
    }
    overrides = values.get("config_overrides")
    if isinstance(overrides, dict):  # config_overrides as a mapping: its float fields alike
        values["config_overrides"] = {
            key: _yaml_float(value) if key in HfDetrConfig.__annotations__ and config_field_type(key) is float else value
            for key, value in overrides.items()
        }  # fmt: skip
    return values


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads `1e-4` (no dot) as text: a float setting takes it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def resolve_arguments(cli: dict[str, Any], file_values: dict[str, Any] | None = None) -> TrainingArguments:
    """Merge defaults < preset < file < flags and validate the names."""
    known = {spec.name for spec in fields(TrainingArguments)}
    unknown = sorted(set(file_values or {}) - known - set(MODEL_FLAGS))
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} in the config file; valid settings: {sorted(known)}.")
    # the deprecated model flags become config_overrides, per source: a file's, then the flags'
    file_values = deprecated_flags_to_overrides(dict(file_values or {}))
    cli = deprecated_flags_to_overrides(dict(cli))
    explicit = {**file_values, **cli}
    dataset = explicit.get("dataset")
    builtin = "builtin-panoptic" if explicit.get("task") == "panoptic" else "builtin"
    preset = explicit.get("preset") or (builtin if dataset is None else "paper")
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; expected one of {sorted(PRESETS)}.")
    merged = {**PRESETS[preset], **explicit, "preset": preset}
    # the model's fields one by one: the preset's < the file's < the flags'
    merged["config_overrides"] = {
        key: value
        for source in (PRESETS[preset], file_values, cli)
        for key, value in parse_config_overrides(source.get("config_overrides")).items()
    }
    for name in ("max_steps", "train_split", "image_scale", "eval_split", "init_from", "resume_from_checkpoint", "stop_after_steps",
                 "save_steps", "eval_steps", "eval_epochs", "detector_steps", "mask_head_learning_rate", "eval_top_k", "push_to_hub", "time_limit_minutes", "dataset",
                 "early_stopping_patience", "metric_for_best_model"):  # fmt: skip
        if isinstance(merged.get(name), str) and merged[name].lower() in ("none", "null", ""):
            merged[name] = None
    arguments = TrainingArguments(**merged)
    validate(arguments)
    return arguments


def parse_args(argv: list[str] | None = None) -> TrainingArguments:
    namespace = vars(build_parser().parse_args(argv))
    config_path = namespace.pop("config", None)
    namespace.pop("traceback", None)  # read by run_command, not a training setting
    return resolve_arguments(namespace, _load_config_file(config_path) if config_path else None)


# The metrics an evaluation during training reports, by task (the first is the default best-model metric).
COCO_METRICS = EVALUATION_TASKS["detection"].metric_names
PANOPTIC_METRICS = EVALUATION_TASKS["panoptic"].metric_names


def best_metric_names(task: str) -> tuple[str, ...]:
    """The metrics an evaluation of `task` reports (none for an unknown task: `validate` names it)."""
    return EVALUATION_TASKS[task].metric_names if task in EVALUATION_TASKS else ()


def best_metric(arguments: TrainingArguments) -> str:
    """The metric that picks the best model and drives early stopping: AP, or PQ for panoptic runs."""
    return arguments.metric_for_best_model or best_metric_names(arguments.task)[0]


def validate(arguments: TrainingArguments) -> None:
    """Clear errors for settings that cannot work: wrong types (a config file's "2" for an integer),
    NaN, infinite or out-of-range numbers, combinations that cannot run, model settings HfDetrConfig
    rejects. Each error names the setting."""
    _check_setting_types(arguments)
    a = arguments
    checks = [
        (a.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {a.task!r}"),
        (not a.freeze_detector or a.task == "panoptic", "freeze_detector needs --task panoptic"),
        (
            0 <= a.panoptic_threshold <= 1,
            f"panoptic_threshold must be in [0, 1], got {a.panoptic_threshold!r}",
        ),
        (
            a.detector_steps is None or (a.task == "panoptic" and a.detector_steps > 0),
            f"detector_steps needs --task panoptic and a positive number of updates, got {a.detector_steps!r}",
        ),
        (a.bbox_format in ("xywh", "xyxy"), f"bbox_format must be xywh or xyxy, got {a.bbox_format!r}"),
        (
            not a.streaming or a.task == "detection",
            "streaming trains detection models only (--task detection)",
        ),
        (a.augmentation in ("paper", "flip"), f"augmentation must be paper or flip, got {a.augmentation!r}"),
        (
            a.mixed_precision in ("no", "fp16", "bf16"),
            f"mixed_precision must be no, fp16 or bf16, got {a.mixed_precision!r}",
        ),
        (a.batch_size >= 1, f"batch_size must be at least 1, got {a.batch_size!r}"),
        (
            a.gradient_accumulation_steps >= 1,
            f"gradient_accumulation_steps must be at least 1, got {a.gradient_accumulation_steps!r}",
        ),
        (a.epochs >= 1, f"epochs must be at least 1, got {a.epochs!r}"),
        (a.max_steps is None or a.max_steps >= 1, f"max_steps must be at least 1, got {a.max_steps!r}"),
        (
            a.eval_epochs is None or a.eval_epochs >= 1,
            f"eval_epochs must be at least 1 or none, got {a.eval_epochs!r}",
        ),
        (0 < a.lr_drop <= 1, f"lr_drop must be in (0, 1], got {a.lr_drop!r}"),
        (
            a.lr_scheduler_type in ("step", "cosine"),
            f"lr_scheduler_type must be step or cosine, got {a.lr_scheduler_type!r}",
        ),
        (a.save_total_limit >= 1, f"save_total_limit must be at least 1, got {a.save_total_limit!r}"),
        (
            a.max_consecutive_nonfinite >= 1,
            f"max_consecutive_nonfinite must be at least 1, got {a.max_consecutive_nonfinite!r}",
        ),
        (0 <= a.ema_decay < 1, f"ema_decay must be in [0, 1), got {a.ema_decay!r}"),
        (
            a.early_stopping_patience is None or a.early_stopping_patience >= 1,
            f"early_stopping_patience must be at least 1 or none, got {a.early_stopping_patience!r}",
        ),
        (
            a.early_stopping_patience is None or bool(a.eval_steps or a.eval_epochs),
            "early_stopping_patience needs evaluations during training (--eval-steps or --eval-epochs)",
        ),
        (
            a.metric_for_best_model in (None, *best_metric_names(a.task)),
            f"metric_for_best_model must be one of {', '.join(best_metric_names(a.task))} for "
            f"--task {a.task}, got {a.metric_for_best_model!r}",
        ),
        (
            1 <= a.one_to_many_repeats <= 64,
            f"one_to_many_repeats must be an integer in 1..64, got {a.one_to_many_repeats!r}",
        ),
        (
            a.one_to_many_repeats == 1 or a.num_query_groups >= 2,
            "one_to_many_repeats > 1 matches the query groups after the first: set num_query_groups to 2 or more",
        ),
        *_range_checks(arguments),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"Invalid training setting: {message}.")
    _check_model_settings(arguments)


def _check_setting_types(arguments: TrainingArguments) -> None:
    """`ValueError` naming the first setting whose value is not of its annotated type (bools are not
    integers; an integer is a valid float)."""
    for spec in fields(TrainingArguments):
        value = getattr(arguments, spec.name)
        base, optional, is_list = _field_type(spec.type)
        if value is None and optional:
            continue
        if is_list:
            valid = isinstance(value, list) and all(_is_of_type(item, base) for item in value)
        else:
            valid = _is_of_type(value, base)
        if valid:
            continue
        expected = f"a list of {base.__name__}" if is_list else TYPE_NAMES.get(base, base.__name__)
        hint = " (YAML reads 1e-4 as text: write 1.0e-4)" if base is float and isinstance(value, str) else ""
        raise ValueError(
            f"Invalid training setting: {spec.name} must be {expected}{' or none' if optional else ''}, "
            f"got {value!r} ({type(value).__name__}){hint}."
        )


TYPE_NAMES = {
    bool: "true or false", int: "an integer", float: "a number", str: "a string",
    dict: "a mapping of HfDetrConfig fields to values",
}  # fmt: skip


def _is_of_type(value: Any, base: type) -> bool:
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base)


def _finite(value: float | None, low: float, strict: bool = False) -> bool:
    """None, or a finite number above `low` (strictly when `strict`); NaN and inf fail."""
    return value is None or (math.isfinite(value) and (value > low if strict else value >= low))


# Numeric settings and their ranges: (name, lowest value, lowest excluded); None is allowed where the
# setting is optional. NaN and inf are always out of range.
NUMBER_RANGES: tuple[tuple[str, float, bool], ...] = (
    ("learning_rate", 0, True),
    ("backbone_learning_rate", 0, False),
    ("mask_head_learning_rate", 0, True),
    ("weight_decay", 0, False),
    ("max_grad_norm", 0, True),  # clip_grad_norm_ with 0 zeroes the gradients, below 0 flips them
    ("image_scale", 0, True),
    ("ema_tau", 0, True),
    ("time_limit_minutes", 0, True),
    ("early_stopping_threshold", 0, False),
    ("warmup_steps", 0, False),
    ("num_workers", 0, False),
    ("logging_steps", 1, False),
    ("save_steps", 1, False),
    ("eval_steps", 1, False),
    ("stop_after_steps", 1, False),
    ("eval_top_k", 1, False),
    ("seed", 0, False),
)


def _range_checks(arguments: TrainingArguments) -> list[tuple[bool, str]]:
    """The checks of NUMBER_RANGES, each message naming the setting and its value."""
    types = {spec.name: _field_type(spec.type) for spec in fields(TrainingArguments)}
    checks = []
    for name, low, strict in NUMBER_RANGES:
        value = getattr(arguments, name)
        base, optional, _ = types[name]
        kind = f"at least {low}" if base is int else f"a finite number {'>' if strict else '>='} {low}"
        message = f"{name} must be {kind}{' or none' if optional else ''}, got {value!r}"
        checks.append((_finite(value, low, strict), message))
    checks.append((arguments.seed < 2**32, f"seed must be below 2**32 (numpy's limit), got {arguments.seed}"))
    return checks


# HfDetrConfig fields that hf-detr-train fills from the dataset, the model class or a setting of its own
NOT_OVERRIDABLE = {
    "coco_category_ids": "the dataset's",
    "stuff_label_ids": "the dataset's",
    "use_masks": "--task's",
    "is_encoder_decoder": "the model class's",
    "num_query_groups": "--num-query-groups's (training only)",
}


def overridable_fields() -> set[str]:
    """The HfDetrConfig fields config_overrides may set: the dataclass fields HfDetrConfig declares (not
    transformers' generic ones, not class settings such as checkpoint_resolver), but NOT_OVERRIDABLE."""
    declared = {spec.name for spec in fields(HfDetrConfig)} & set(HfDetrConfig.__annotations__)
    return declared - set(NOT_OVERRIDABLE)


def parse_config_overrides(overrides: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """`key=value,key=value` (transformers' --config_overrides; values read as JSON: numbers,
    true/false, lists; else as strings), or a mapping (a config file's, Python's) -> {HfDetrConfig
    field: value}. `ValueError` naming the setting for an unknown field or a malformed pair."""
    if overrides is None or (
        isinstance(overrides, str) and overrides.strip().lower() in ("", "none", "null")
    ):
        return {}
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    elif isinstance(overrides, str):
        pairs = [_override_pair(pair) for pair in overrides.split(",")]
    else:
        raise ValueError(
            "Invalid training setting config_overrides: expected 'key=value,...' or a mapping of HfDetrConfig "
            f"fields to values, got {overrides!r} ({type(overrides).__name__})."
        )
    allowed = overridable_fields()
    for key, _ in pairs:
        if key not in allowed:
            set_by = f" ({NOT_OVERRIDABLE[key]})" if key in NOT_OVERRIDABLE else ""
            raise ValueError(
                f"Invalid training setting config_overrides: {key!r} is not an HfDetrConfig field hf-detr-train "
                f"lets you set{set_by}; the fields: {', '.join(sorted(allowed))}."
            )
    return dict(pairs)


def _override_pair(pair: str) -> tuple[str, Any]:
    key, separator, value = pair.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ValueError(f"Invalid training setting config_overrides: {pair!r} is not key=value.")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value.strip()


def format_config_overrides(overrides: Mapping[str, Any]) -> str:
    """{field: value} -> 'key=value,...' as --config-overrides reads it (text bare where JSON would not
    read it as something else)."""
    return ",".join(f"{key}={_override_text(value)}" for key, value in overrides.items())


def _override_text(value: Any) -> str:
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return value
    return json.dumps(value)


def _check_model_settings(arguments: TrainingArguments) -> None:
    """Build the run's HfDetrConfig once now (no model), so that a bad model setting fails before any
    data loads, named by its setting as well as by the config field it sets."""
    try:
        HfDetrConfig(**arguments.model_config_kwargs())
    except ValueError as error:
        setting = "num_query_groups" if "`num_query_groups`" in str(error) else "config_overrides"
        raise ValueError(f"Invalid training setting (setting {setting}): {error}") from error


__all__ = [
    "BUILTIN_PANOPTIC_PRESET",
    "BUILTIN_PRESET",
    "COCO_METRICS",
    "MODEL_FLAGS",
    "PANOPTIC_METRICS",
    "PRESETS",
    "DeprecatedFlagWarning",
    "TrainingArguments",
    "best_metric",
    "build_parser",
    "deprecated_flags_to_overrides",
    "fine_tuning_overrides",
    "format_config_overrides",
    "parse_args",
    "parse_config_overrides",
    "resolve_arguments",
]
