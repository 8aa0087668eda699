"""Model cards and publishing to the Hugging Face Hub.

`make_model_card` fills the card template (hf_detr/templates/model_card.md) with YAML metadata
(`library_name`, `pipeline_tag`, licence, datasets, base model, tags, a `model-index` of COCO metrics
built from `huggingface_hub.EvalResult`) and a body: what the model is, how to use it with and without
the package, training, evaluation, limitations, licences. `push_to_hub` uploads a model, its image
processor, their code files and the card in one commit.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .configuration_detr import COCO_DETECTION_LABELS, HfDetrConfig
from .image_processing_detr import HfDetrImageProcessor
from .modeling_detr import HfDetrForObjectDetection

TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
METRIC_NAMES = {
    "AP": "AP@[.5:.95]",
    "AP50": "AP@.5",
    "AP75": "AP@.75",
    "APs": "AP (small)",
    "APm": "AP (medium)",
    "APl": "AP (large)",
}
PAPER_RECIPE = (
    "Trained on COCO 2017 train by the DETR authors with the paper's recipe: AdamW, learning rate 1e-4 "
    "(backbone 1e-5), weight decay 1e-4, batch 64 on 16 V100 GPUs, gradient clipping 0.1, {epochs} "
    "epochs with the learning rate divided by 10 after {drop}; random horizontal flips, multi-scale "
    "resizing (shorter side 480-800, longer at most 1333) and random crops; Hungarian matching with "
    "costs class 1 / L1 5 / GIoU 2, loss CE (no-object weight 0.1) + 5 L1 + 2 GIoU at every decoder "
    "layer. Converted from the official release `{file}` with `scripts/convert_checkpoint.py`."
)


@dataclass(frozen=True)
class OfficialCheckpoint:
    """A released facebookresearch/detr COCO model with its paper results (Table 1, COCO val2017)."""

    name: str
    file: str
    backbone: str
    dilation: bool
    metrics: Mapping[str, float]


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
    )
}  # fmt: skip


def make_model_card(
    config: HfDetrConfig,
    repo_id: str,
    metrics: Mapping[str, float] | None = None,
    *,
    description: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] = ("detection-datasets/coco",),
    dataset_name: str = "COCO 2017",
    dataset_split: str = "validation",
    training_description: str | None = None,
    evaluation_description: str | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
    source_name: str | None = None,
    source_url: str | None = None,
) -> ModelCard:
    """A model card for an hf_detr checkpoint.

    `metrics` maps COCO stat names (`AP`, `AP50`, `AP75`, `APs`, `APm`, `APl`, as reported by
    hf_detr's evaluation, in percent or as fractions) to values; they become the `model-index` and the
    evaluation table. `base_model` is the checkpoint this one was fine-tuned from.
    """
    metrics = dict(metrics or {})
    unknown = set(metrics) - set(COCO_METRICS)
    if unknown:
        raise ValueError(f"Unknown metric(s) {sorted(unknown)}; expected some of {list(COCO_METRICS)}.")
    model_name = repo_id.split("/")[-1]
    eval_results = [
        EvalResult(
            task_type="object-detection",
            task_name="Object Detection",
            dataset_type=datasets[0] if datasets else "coco",
            dataset_name=dataset_name,
            dataset_split=dataset_split,
            metric_type=name.lower(),
            metric_name=METRIC_NAMES[name],
            metric_value=float(value),
            source_name=source_name,
            source_url=source_url,
        )
        for name, value in metrics.items()
    ]
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="object-detection",
        license=license,
        datasets=list(datasets) or None,
        base_model=base_model,
        tags=["object-detection", "detr", "hf_detr", "vision", *tags],
        metrics=["AP"] if metrics else None,
        eval_results=eval_results or None,
    )
    variant = f"{config.backbone.split('.')[0].replace('resnet', 'ResNet-')}{' with dilated C5 (DC5)' if config.dilation else ''}"
    evaluation_table = (
        "| metric | value |\n|---|---:|\n"
        + "\n".join(f"| {METRIC_NAMES[name]} | {value:.1f} |" for name, value in metrics.items())
        if metrics
        else "No evaluation results were recorded for this checkpoint."
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        repo_id=repo_id,
        description=description
        or f"DETR with a {variant} backbone for object detection ({config.num_labels} classes).",
        backbone_description=variant,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        num_queries=config.num_queries,
        num_labels=config.num_labels,
        stride=16 if config.dilation else 32,
        training_description=training_description
        or "Trained with hf_detr; the settings are in training_args.json.",
        evaluation_description=evaluation_description
        or f"COCO detection metrics on {dataset_name} {dataset_split}, computed with hf_detr's COCO evaluator.",
        evaluation_table=evaluation_table,
        label_summary=_label_summary(config),
    )


def official_model_card(name: str, repo_id: str | None = None) -> ModelCard:
    """The card of one of the four official COCO checkpoints, with the paper's results."""
    if name not in OFFICIAL_CHECKPOINTS:
        raise ValueError(
            f"Unknown official checkpoint {name!r}; expected one of {sorted(OFFICIAL_CHECKPOINTS)}."
        )
    checkpoint = OFFICIAL_CHECKPOINTS[name]
    config = HfDetrConfig(backbone=checkpoint.backbone, dilation=checkpoint.dilation)
    epochs, drop = (500, 400)
    return make_model_card(
        config,
        repo_id or f"hf-detr/{name}",
        checkpoint.metrics,
        training_description=PAPER_RECIPE.format(epochs=epochs, drop=drop, file=checkpoint.file),
        evaluation_description=(
            "COCO 2017 val (5,000 images) box AP as reported in the paper (Table 1), shorter side 800, "
            "longer at most 1333."
        ),
        source_name="End-to-End Object Detection with Transformers (Carion et al., 2020)",
        source_url="https://arxiv.org/abs/2005.12872",
    )


def official_checkpoint_for(config: HfDetrConfig) -> str | None:
    """The official checkpoint name whose architecture `config` has (91 COCO classes), if any."""
    if config.num_labels != len(COCO_DETECTION_LABELS):
        return None
    for name, checkpoint in OFFICIAL_CHECKPOINTS.items():
        if checkpoint.backbone == config.backbone.split(".")[0] and checkpoint.dilation == config.dilation:
            return name
    return None


def push_to_hub(
    model: HfDetrForObjectDetection,
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

    Returns the commit URL. Without `card`, a card is generated from the model's config.
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


def write_official_model_cards(directory: str | Path) -> list[Path]:
    """Write the cards of the four official COCO checkpoints as `{name}.md` (the files in model_cards/)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in OFFICIAL_CHECKPOINTS:
        path = directory / f"{name}.md"
        official_model_card(name).save(path)
        paths.append(path)
    return paths


def _label_summary(config: HfDetrConfig) -> str:
    names = [name for name in config.id2label.values() if name != "N/A"]
    if len(names) <= 12:
        return ", ".join(names)
    return f"{len(names)} classes ({', '.join(names[:8])}, ...)"


__all__ = [
    "OFFICIAL_CHECKPOINTS",
    "make_model_card",
    "official_checkpoint_for",
    "official_model_card",
    "push_to_hub",
    "write_official_model_cards",
]
