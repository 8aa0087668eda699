"""Model cards and publishing to the Hugging Face Hub.

`make_model_card` fills the card template (hf_detr/templates/model_card.md) with YAML metadata
(`library_name`, `pipeline_tag`, licence, datasets, base model, tags, a `model-index` of COCO metrics
built from `huggingface_hub.EvalResult`) and a body: what the model is, how to use it with and without
the package, training, evaluation, limitations, licences. A segmentation model's card (its config has
`use_masks`, as `HfDetrForSegmentation`'s) is an image-segmentation card with panoptic metrics (PQ, SQ,
RQ, things and stuff) beside box and mask AP. `push_to_hub` uploads a model, its image processor, their
code files and the card in one commit.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .coco_panoptic_categories import COCO_PANOPTIC_NUM_LABELS, coco_panoptic_label_fields
from .configuration_detr import COCO_DETECTION_LABELS, HfDetrConfig
from .image_processing_detr import HfDetrImageProcessor
from .modeling_detr import HfDetrForObjectDetection
from .modeling_detr_segmentation import HfDetrForSegmentation

TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # box AP, as hf_detr's COCO evaluator names them
# panoptic quality of all classes, things (_th) and stuff (_st), as hf_detr's panoptic training logs them
PANOPTIC_METRICS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")
MASK_METRICS = ("mask_AP",)  # COCO mask AP@[.5:.95] ("segm AP" in the official model zoo)
METRIC_NAMES = {
    "AP": "AP@[.5:.95]",
    "AP50": "AP@.5",
    "AP75": "AP@.75",
    "APs": "AP (small)",
    "APm": "AP (medium)",
    "APl": "AP (large)",
    "PQ": "PQ",
    "SQ": "SQ",
    "RQ": "RQ",
    "PQ_th": "PQ (things)",
    "SQ_th": "SQ (things)",
    "RQ_th": "RQ (things)",
    "PQ_st": "PQ (stuff)",
    "SQ_st": "SQ (stuff)",
    "RQ_st": "RQ (stuff)",
    "mask_AP": "mask AP@[.5:.95]",
}
_OPTIMIZER = "AdamW, learning rate 1e-4 (backbone 1e-5), weight decay 1e-4"
_AUGMENTATION = (
    "random horizontal flips, multi-scale resizing (shorter side 480-800, longer at most 1333) "
    "and random crops"
)
_SET_LOSS = (
    "Hungarian matching with costs class 1 / L1 5 / GIoU 2, loss CE (no-object weight 0.1) + 5 L1 + 2 GIoU "
    "at every decoder layer"
)
_CONVERTED = "Converted from the official release `{file}` with `scripts/convert_checkpoint.py`."
PAPER_RECIPE = (
    f"Trained on COCO 2017 train by the DETR authors with the paper's recipe: {_OPTIMIZER}, batch 64 on 16 "
    f"V100 GPUs, gradient clipping 0.1, {{epochs}} epochs with the learning rate divided by 10 after "
    f"{{drop}}; {_AUGMENTATION}; {_SET_LOSS}. {_CONVERTED}"
)
# paper section 4.4 and the official README ("Usage - Segmentation": --masks --epochs 25 --lr_drop 15
# --frozen_weights)
PANOPTIC_RECIPE = (
    "Trained on COCO panoptic 2017 train by the DETR authors in two stages (paper, section 4.4; official "
    'README, "Usage - Segmentation"). First DETR itself learns to detect the boxes of both things and '
    f"stuff, one class slot per COCO panoptic category id, with the detection recipe: {_OPTIMIZER}, "
    f"gradient clipping 0.1; {_AUGMENTATION}; {_SET_LOSS}. Then, with the detector frozen, the attention "
    "map and the mask head alone train for 25 epochs (learning rate divided by 10 after 15) with a sigmoid "
    "focal loss and a DICE loss (weights 1 and 1) on the masks of the matched queries. " + _CONVERTED
)
PAPER = "End-to-End Object Detection with Transformers (Carion et al., 2020)"
PAPER_URL = "https://arxiv.org/abs/2005.12872"
MODEL_ZOO = "facebookresearch/detr model zoo (README, COCO panoptic val5k models)"
MODEL_ZOO_URL = "https://github.com/facebookresearch/detr#model-zoo"


@dataclass(frozen=True)
class OfficialCheckpoint:
    """A released facebookresearch/detr COCO model with its published results on COCO val2017: the
    detectors' from the paper (Table 1), the panoptic models' (`panoptic`: DETR + mask head, 250 class
    slots) from the official model zoo (PQ, box AP and mask AP)."""

    name: str
    file: str
    backbone: str
    dilation: bool
    metrics: Mapping[str, float]
    panoptic: bool = False


OFFICIAL_CHECKPOINTS = {
    checkpoint.name: checkpoint
    for checkpoint in (
        OfficialCheckpoint(
            "detr-resnet-50", "detr-r50-e632da11.pth", "resnet50", False,
            {"AP": 42.0, "AP50": 62.4, "AP75": 44.2, "APs": 20.5, "APm": 45.8, "APl": 61.1},
        ),
        OfficialCheckpoint(
            "detr-resnet-50-dc5", "detr-r50-dc5-f0fb7ef5.pth", "resnet50", True,
            {"AP": 43.3, "AP50": 63.1, "AP75": 45.9, "APs": 22.5, "APm": 47.3, "APl": 61.1},
        ),
        OfficialCheckpoint(
            "detr-resnet-101", "detr-r101-2c7b67e5.pth", "resnet101", False,
            {"AP": 43.5, "AP50": 63.8, "AP75": 46.4, "APs": 21.9, "APm": 48.0, "APl": 61.8},
        ),
        OfficialCheckpoint(
            "detr-resnet-101-dc5", "detr-r101-dc5-a2e86def.pth", "resnet101", True,
            {"AP": 44.9, "AP50": 64.7, "AP75": 47.7, "APs": 23.7, "APm": 49.5, "APl": 62.3},
        ),
        OfficialCheckpoint(
            "detr-resnet-50-panoptic", "detr-r50-panoptic-00ce5173.pth", "resnet50", False,
            {"PQ": 43.4, "AP": 38.8, "mask_AP": 31.1}, panoptic=True,
        ),
        OfficialCheckpoint(
            "detr-resnet-50-dc5-panoptic", "detr-r50-dc5-panoptic-da08f1b1.pth", "resnet50", True,
            {"PQ": 44.6, "AP": 40.2, "mask_AP": 31.9}, panoptic=True,
        ),
        OfficialCheckpoint(
            "detr-resnet-101-panoptic", "detr-r101-panoptic-40021d53.pth", "resnet101", False,
            {"PQ": 45.1, "AP": 40.1, "mask_AP": 33.0}, panoptic=True,
        ),
    )
}  # fmt: skip


def make_model_card(
    config: HfDetrConfig,
    repo_id: str,
    metrics: Mapping[str, float] | None = None,
    *,
    description: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    dataset_name: str | None = None,
    dataset_split: str = "validation",
    dataset_type: str | None = None,
    training_description: str | None = None,
    evaluation_description: str | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
    source_name: str | None = None,
    source_url: str | None = None,
) -> ModelCard:
    """A model card for an hf_detr checkpoint; a segmentation one when `config.use_masks` is set.

    `metrics` maps metric names to values (in percent or as fractions) for the `model-index` and the
    evaluation table: COCO box stats (`AP`, `AP50`, `AP75`, `APs`, `APm`, `APl`, as hf_detr's evaluation
    reports them) and, for a segmentation model, also panoptic quality (`PQ`, `SQ`, `RQ` and their
    things/stuff parts `PQ_th`, ..., `RQ_st`) and `mask_AP`. `base_model` is the checkpoint this one was
    fine-tuned from. `datasets` (Hub dataset ids) defaults to `detection-datasets/coco` for a detector
    and to none for a segmentation model; `dataset_type` (the model-index dataset) to the first of them.
    """
    segmentation = bool(config.use_masks)
    metrics = dict(metrics or {})
    _check_metric_names(metrics, segmentation)
    if datasets is None:
        datasets = () if segmentation else ("detection-datasets/coco",)
    if dataset_name is None:
        dataset_name = "COCO panoptic 2017" if segmentation else "COCO 2017"
    if dataset_type is None:
        dataset_type = datasets[0] if datasets else ("coco-panoptic" if segmentation else "coco")
    model_name = repo_id.split("/")[-1]
    dataset = {"dataset_type": dataset_type, "dataset_name": dataset_name, "dataset_split": dataset_split}
    eval_results = _eval_results(metrics, segmentation, dataset, source_name, source_url)
    task = "image-segmentation" if segmentation else "object-detection"
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=task,
        license=license,
        datasets=list(datasets) or None,
        base_model=base_model,
        tags=[task, *(["panoptic-segmentation"] if segmentation else []), "detr", "hf_detr", "vision", *tags],
        metrics=_headline_metrics(metrics) or None,
        eval_results=eval_results or None,
    )
    variant = f"{config.backbone.split('.')[0].replace('resnet', 'ResNet-')}{' with dilated C5 (DC5)' if config.dilation else ''}"
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        repo_id=repo_id,
        segmentation=segmentation,
        description=description or _default_description(config, variant),
        backbone_description=variant,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        num_queries=config.num_queries,
        num_labels=config.num_labels,
        stride=16 if config.dilation else 32,
        training_description=training_description
        or "Trained with hf_detr; the settings are in training_args.json.",
        evaluation_description=evaluation_description
        or _default_evaluation(segmentation, dataset_name, dataset_split),
        evaluation_table=_evaluation_table(metrics, segmentation),
        label_summary=_label_summary(config),
    )


def _eval_results(
    metrics: Mapping[str, float],
    segmentation: bool,
    dataset: Mapping[str, str],
    source_name: str | None,
    source_url: str | None,
) -> list[EvalResult]:
    """The `model-index` entries: one per metric, under its task (detection, or panoptic / instance
    segmentation for a segmentation model's PQ and mask AP)."""
    return [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            **dataset,
            metric_type=name.lower(),
            metric_name=METRIC_NAMES[name],
            metric_value=float(value),
            source_name=source_name,
            source_url=source_url,
        )
        for name, value in metrics.items()
        for task_type, task_name in [_metric_task(name, segmentation)]
    ]


def _check_metric_names(metrics: Mapping[str, float], segmentation: bool) -> None:
    known = COCO_METRICS + (PANOPTIC_METRICS + MASK_METRICS if segmentation else ())
    unknown = set(metrics) - set(known)
    if unknown:
        hint = (
            ""
            if segmentation
            else " (PQ and mask metrics are for segmentation models, whose config has use_masks=True)"
        )
        raise ValueError(f"Unknown metric(s) {sorted(unknown)}; expected some of {list(known)}{hint}.")


def _metric_task(name: str, segmentation: bool) -> tuple[str, str]:
    """The model-index task of a metric: box AP is object detection, the others panoptic segmentation."""
    if segmentation and name not in COCO_METRICS:
        return "image-segmentation", "Panoptic Segmentation"
    return "object-detection", "Object Detection"


def _headline_metrics(metrics: Mapping[str, float]) -> list[str]:
    """The card's `metrics` list: PQ and/or AP, by what was measured."""
    groups = (("PQ", PANOPTIC_METRICS), ("AP", COCO_METRICS + MASK_METRICS))
    return [headline for headline, names in groups if any(name in metrics for name in names)]


def _display_name(name: str, segmentation: bool) -> str:
    """A metric's row in the evaluation table: box AP is called so beside PQ and mask AP."""
    return f"box {METRIC_NAMES[name]}" if segmentation and name in COCO_METRICS else METRIC_NAMES[name]


def _evaluation_table(metrics: Mapping[str, float], segmentation: bool) -> str:
    if not metrics:
        return "No evaluation results were recorded for this checkpoint."
    rows = [f"| {_display_name(name, segmentation)} | {value:.1f} |" for name, value in metrics.items()]
    return "| metric | value |\n|---|---:|\n" + "\n".join(rows)


def _default_description(config: HfDetrConfig, variant: str) -> str:
    if not config.use_masks:
        return f"DETR with a {variant} backbone for object detection ({config.num_labels} classes)."
    return (
        f"DETR with a {variant} backbone and a mask head for panoptic segmentation ({_class_count(config)})."
    )


def _class_count(config: HfDetrConfig) -> str:
    """E.g. "133 classes, 80 things and 53 stuff, in 250 label slots" for a segmentation config."""
    named = [i for i, name in config.id2label.items() if name != "N/A"]
    parts = [f"{len(named)} classes"]
    if config.stuff_label_ids is not None:
        stuff = len(set(config.stuff_label_ids))
        parts.append(f"{len(named) - stuff} things and {stuff} stuff")
    if len(named) != config.num_labels:
        parts.append(f"in {config.num_labels} label slots")
    return ", ".join(parts)


def _default_evaluation(segmentation: bool, dataset_name: str, dataset_split: str) -> str:
    if segmentation:
        return (
            f"Panoptic quality (PQ, SQ, RQ) on {dataset_name} {dataset_split}, computed with hf_detr's "
            "panoptic evaluator (the rules of panopticapi's pq_compute)."
        )
    return (
        f"COCO detection metrics on {dataset_name} {dataset_split}, computed with hf_detr's COCO evaluator."
    )


def official_config(name: str) -> HfDetrConfig:
    """The config of an official checkpoint as the converter builds it: the detectors' 91 COCO classes,
    the panoptic models' 250 slots named by COCO panoptic category, with their stuff ids."""
    checkpoint = _official(name)
    if not checkpoint.panoptic:
        return HfDetrConfig(backbone=checkpoint.backbone, dilation=checkpoint.dilation)
    return HfDetrConfig(
        backbone=checkpoint.backbone,
        dilation=checkpoint.dilation,
        use_masks=True,
        **coco_panoptic_label_fields(COCO_PANOPTIC_NUM_LABELS),
    )


def official_model_card(name: str, repo_id: str | None = None) -> ModelCard:
    """The card of one of the official COCO checkpoints (four detectors, three panoptic models), with
    their published results."""
    checkpoint = _official(name)
    config = official_config(name)
    repo_id = repo_id or f"hf-detr/{name}"
    if checkpoint.panoptic:
        return make_model_card(
            config,
            repo_id,
            checkpoint.metrics,
            training_description=PANOPTIC_RECIPE.format(file=checkpoint.file),
            evaluation_description=(
                "COCO panoptic 2017 val (5,000 images), as reported in the official model zoo: PQ, box AP "
                'and mask AP ("segm AP"); shorter side 800, longer at most 1333.'
            ),
            source_name=MODEL_ZOO,
            source_url=MODEL_ZOO_URL,
        )
    epochs, drop = (500, 400)
    return make_model_card(
        config,
        repo_id,
        checkpoint.metrics,
        training_description=PAPER_RECIPE.format(epochs=epochs, drop=drop, file=checkpoint.file),
        evaluation_description=(
            "COCO 2017 val (5,000 images) box AP as reported in the paper (Table 1), shorter side 800, "
            "longer at most 1333."
        ),
        source_name=PAPER,
        source_url=PAPER_URL,
    )


def _official(name: str) -> OfficialCheckpoint:
    if name not in OFFICIAL_CHECKPOINTS:
        raise ValueError(
            f"Unknown official checkpoint {name!r}; expected one of {sorted(OFFICIAL_CHECKPOINTS)}."
        )
    return OFFICIAL_CHECKPOINTS[name]


def official_checkpoint_for(config: HfDetrConfig) -> str | None:
    """The official checkpoint name whose architecture `config` has, if any: a detector with the 91 COCO
    classes, or (with `use_masks`) a panoptic model with 250 class slots."""
    panoptic = bool(config.use_masks)
    expected_labels = COCO_PANOPTIC_NUM_LABELS if panoptic else len(COCO_DETECTION_LABELS)
    if config.num_labels != expected_labels:
        return None
    for name, checkpoint in OFFICIAL_CHECKPOINTS.items():
        if (
            checkpoint.panoptic == panoptic
            and checkpoint.backbone == config.backbone.split(".")[0]
            and checkpoint.dilation == config.dilation
        ):
            return name
    return None


def push_to_hub(
    model: HfDetrForObjectDetection | HfDetrForSegmentation,
    processor: HfDetrImageProcessor,
    repo_id: str,
    card: ModelCard | None = None,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload hf_detr model",
) -> str:
    """Upload weights (safetensors), configs, code files and the model card in one commit.

    Returns the commit URL. Without `card`, a card is generated from the model's config (an
    image-segmentation card for an `HfDetrForSegmentation`).
    """
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    card = card or make_model_card(model.config, repo_id)
    with tempfile.TemporaryDirectory() as folder:
        # the card is written first, so nothing below can replace it with a default one
        card.save(Path(folder) / "README.md")
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision
        )
    return commit.commit_url


# The package a demo Space installs (its requirements.txt); a git URL or a wheel's works too
DEMO_REQUIREMENT = "hf-detr[demo,video]"
SPACE_APP = """\
\"\"\"hf_detr's demo (hf-detr-demo) of {model}: detect a picture or a video, click for attention maps.\"\"\"

from hf_detr.demo import build_demo

build_demo({model!r}).launch()
"""
SPACE_CARD = """\
---
title: {title}
sdk: gradio
app_file: app.py
models:
- {model}
tags:
- hf_detr
- object-detection
---

DETR ({model}): upload a picture and click a detection for its decoder attention, or any other pixel
for the encoder's; upload a video to get it back annotated. Made with `hf_detr.hub.push_demo_space`.
"""


def push_demo_space(
    model_repo_id: str,
    space_id: str,
    *,
    requirement: str = DEMO_REQUIREMENT,
    private: bool | None = None,
    token: str | None = None,
) -> str:
    """Create (or update) a Gradio Space running `hf-detr-demo` on the Hub model `model_repo_id`: its
    `app.py`, `requirements.txt` (`requirement`, hf_detr with its [demo] and [video] extras) and card.
    Returns the commit URL."""
    api = HfApi(token=token)
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        files = {
            "app.py": SPACE_APP.format(model=model_repo_id),
            "requirements.txt": requirement + "\n",
            # JSON strings are YAML strings: a title with ": " stays one value
            "README.md": SPACE_CARD.format(title=json.dumps(f"DETR demo: {model_repo_id}"[:60]), model=model_repo_id),
        }
        for name, text in files.items():
            (Path(folder) / name).write_text(text)
        commit = api.upload_folder(
            repo_id=space_id, repo_type="space", folder_path=folder, commit_message="hf_detr demo"
        )
    return commit.commit_url


def write_official_model_cards(directory: str | Path) -> list[Path]:
    """Write the cards of the official checkpoints (four COCO detectors, three panoptic models) as
    `{name}.md` (the files in model_cards/)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in OFFICIAL_CHECKPOINTS:
        path = directory / f"{name}.md"
        official_model_card(name).save(path)
        paths.append(path)
    return paths


def _label_summary(config: HfDetrConfig) -> str:
    """The categories in a sentence: all of a few, else a count and the first names (things and stuff
    apart when the config lists its stuff ids)."""
    if config.stuff_label_ids is not None:
        stuff_ids = set(config.stuff_label_ids)
        things = [n for i, n in config.id2label.items() if n != "N/A" and i not in stuff_ids]
        stuff = [n for i, n in config.id2label.items() if n != "N/A" and i in stuff_ids]
        return f"{_names(things, 'thing' if len(things) == 1 else 'things')} and {_names(stuff, 'stuff')}"
    return _names([name for name in config.id2label.values() if name != "N/A"], "classes", full=True)


def _names(names: list[str], kind: str, full: bool = False) -> str:
    if full and len(names) <= 12:
        return ", ".join(names)
    shown = names if len(names) <= 8 else [*names[:8], "..."]
    return f"{len(names)} {kind} ({', '.join(shown)})"


__all__ = [
    "OFFICIAL_CHECKPOINTS",
    "make_model_card",
    "official_checkpoint_for",
    "official_config",
    "official_model_card",
    "push_demo_space",
    "push_to_hub",
    "write_official_model_cards",
]
