"""HfDetrConfig: the paper's defaults, validation, serialisation."""

import json
import time

import numpy as np
import pytest

from hf_detr import COCO_DETECTION_LABELS, HfDetrConfig, HfDetrForObjectDetection
from hf_detr.hub import OFFICIAL_CHECKPOINTS, official_config
from hf_detr.training import parse_args, resolve_arguments
from hf_detr.training.arguments import PRESETS
from hf_detr.validation_detr import transformer_parameters


def test_defaults_are_detr_r50_for_coco_as_in_the_paper():
    config = HfDetrConfig()
    assert config.model_type == "hf_detr"
    assert config.num_labels == 91 == len(COCO_DETECTION_LABELS)
    assert config.id2label[1] == "person" and config.id2label[90] == "toothbrush"
    assert config.id2label[0] == config.id2label[12] == "N/A"
    assert config.label2id["cat"] == 17
    assert (config.backbone, config.dilation, config.num_queries) == ("resnet50", False, 100)
    assert (config.encoder_layers, config.decoder_layers, config.d_model) == (6, 6, 256)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim, config.decoder_ffn_dim) == (8, 2048, 2048)
    assert config.dropout == config.attention_dropout == config.activation_dropout == 0.1
    assert config.position_embedding_type == "sine" and config.auxiliary_loss
    assert (config.class_cost, config.bbox_cost, config.giou_cost) == (1, 5, 2)
    assert (config.class_loss_coefficient, config.bbox_loss_coefficient, config.giou_loss_coefficient) == (
        1,
        5,
        2,
    )
    assert config.eos_coefficient == 0.1
    assert config.trainable_backbone_layers == 3 and config.freeze_backbone_batch_norm
    assert config.use_pretrained_backbone is False
    assert config.hidden_size == 256 and config.num_attention_heads == 8


def test_num_labels_without_names_gives_generic_labels():
    config = HfDetrConfig(num_labels=3)
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"d_model": 250}, "d_model"),
        ({"encoder_attention_heads": 3}, "encoder_attention_heads"),
        ({"num_queries": 0}, "num_queries"),
        ({"decoder_layers": 0}, "decoder_layers"),
        ({"backbone": "vit_base_patch16_224"}, "backbone"),
        ({"backbone": "resnet5000"}, "backbone"),
        ({"position_embedding_type": "rope"}, "position_embedding_type"),
        ({"trainable_backbone_layers": 6}, "trainable_backbone_layers"),
        ({"dropout": 1.5}, "dropout"),
        ({"activation_function": "tanh"}, "activation_function"),
        ({"num_labels": 2, "coco_category_ids": [1]}, "coco_category_ids"),
        ({"num_query_groups": 0}, "num_query_groups"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        HfDetrConfig(**kwargs)


def test_config_round_trips_through_json(tmp_path):
    config = HfDetrConfig(
        backbone="resnet18",
        dilation=True,
        num_labels=4,
        trainable_backbone_layers=5,
        freeze_backbone_batch_norm=False,
        position_embedding_type="learned",
        coco_category_ids=[1, 3, 5, 7],
    )
    config.save_pretrained(tmp_path)
    loaded = HfDetrConfig.from_pretrained(tmp_path)
    for field in (
        "backbone",
        "dilation",
        "num_labels",
        "trainable_backbone_layers",
        "freeze_backbone_batch_norm",
        "position_embedding_type",
        "coco_category_ids",
        "id2label",
    ):
        assert getattr(loaded, field) == getattr(config, field), field


@pytest.mark.parametrize("num_labels", [1, 2, 3, 91])
def test_the_number_of_labels_survives_saving(tmp_path, num_labels):
    """transformers omits two generic labels from config.json; here that would have meant 91 classes."""
    HfDetrConfig(num_labels=num_labels).save_pretrained(tmp_path)
    assert HfDetrConfig.from_pretrained(tmp_path).num_labels == num_labels


# ---------------------------------------------------------------------------------------------------
# Absurd values: a ValueError naming the field and showing the value, before any model memory
# ---------------------------------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
TINY_CONFIG = {
    "backbone": "resnet18", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_ffn_dim": 32,
    "decoder_ffn_dim": 32, "encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_queries": 5,
    "num_labels": 3,
}  # fmt: skip
BAD_VALUES = [
    # sizes: negative, zero, huge, floats, strings, bools
    ("encoder_layers", 1_000_000), ("encoder_layers", -1), ("decoder_layers", 65), ("d_model", -256),
    ("d_model", 256.0), ("d_model", "256"), ("d_model", True), ("encoder_ffn_dim", 10**7),
    ("decoder_ffn_dim", 0), ("num_queries", 10**6), ("num_queries", 100.5), ("encoder_attention_heads", 2048),
    ("decoder_attention_heads", -8), ("num_channels", 0), ("num_channels", 10**5), ("num_query_groups", 1000),
    ("trainable_backbone_layers", True), ("trainable_backbone_layers", "3"),
    # flags must be real booleans
    ("auxiliary_loss", "yes"), ("auxiliary_loss", 1), ("dilation", "false"), ("use_pretrained_backbone", None),
    ("freeze_backbone_batch_norm", 0), ("use_masks", "true"),
    # dropouts: floats in [0, 1)
    ("dropout", "0.1"), ("dropout", NAN), ("dropout", True), ("attention_dropout", -0.1),
    ("activation_dropout", 1.0),
    # matcher costs and loss weights: finite, >= 0
    ("class_cost", NAN), ("bbox_cost", INF), ("giou_cost", -1.0), ("class_loss_coefficient", "1"),
    ("bbox_loss_coefficient", NAN), ("giou_loss_coefficient", -INF), ("eos_coefficient", NAN),
    ("mask_loss_coefficient", INF), ("dice_loss_coefficient", NAN),
    # a backbone is a timm name, never a path
    ("backbone", "../resnet50"), ("backbone", "/models/resnet50"), ("backbone", "~/resnet50"),
    ("backbone", "C:\\models\\resnet50"), ("backbone", "hf-hub:timm/resnet50.a1_in1k"),
    ("backbone", "resnet50.bogus_tag"), ("backbone", 50), ("backbone", ""),
    # labels
    ("num_labels", 10**9), ("num_labels", 0), ("num_labels", "3"), ("id2label", ["cat", "dog"]),
    ("id2label", {"a": "cat"}), ("label2id", [1]), ("coco_category_ids", 5), ("coco_category_ids", ["1"]),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_absurd_values_raise_value_error_naming_the_field_and_the_value(field, value):
    with pytest.raises(ValueError) as error:
        HfDetrConfig(**{field: value})
    message = str(error.value)
    assert f"`{field}`" in message, message
    assert repr(value)[:40] in message, message


def test_a_config_whose_labels_were_removed_names_num_labels():
    config = HfDetrConfig(**TINY_CONFIG)
    config.id2label = None  # e.g. a script clearing the labels before setting new ones
    with pytest.raises(ValueError, match="`num_labels` must be an integer in 1..100000, got None"):
        config.validate_detr_fields()


def test_sizes_within_bounds_that_multiply_to_an_absurd_model_are_refused():
    huge = {"d_model": 32768, "encoder_ffn_dim": 65536, "decoder_ffn_dim": 65536}
    with pytest.raises(ValueError, match=r"`d_model`=32768.*more than the 4B"):
        HfDetrConfig(**huge)


def test_the_size_estimate_is_within_5_percent_of_the_built_model():
    config = HfDetrConfig(**{**TINY_CONFIG, "d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128})
    model = HfDetrForObjectDetection(config)
    outside = ("model.backbone.", "model.input_projection.")
    actual = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(outside))
    assert transformer_parameters(config) == pytest.approx(actual, rel=0.05)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"dilation": True},
        {"backbone": "resnet101"},
        {"backbone": "resnet101", "dilation": True},
        {"backbone": "resnet50.a1_in1k"},
        {"backbone": "resnet18.tv_in1k", "use_pretrained_backbone": False},
        {
            "backbone": "test_resnet",
            "d_model": 128,
            "num_queries": 10,
            "num_query_groups": 2,
        },
        {"class_cost": 1, "dropout": 0, "eos_coefficient": 0},  # integers are valid floats
        {"num_channels": 1, "trainable_backbone_layers": 0, "freeze_backbone_batch_norm": False},
        {"encoder_layers": 64, "decoder_layers": 64, "num_queries": 10000, "num_query_groups": 64},
        {"use_masks": True, "num_labels": 250, "mask_loss_coefficient": 0, "dice_loss_coefficient": 2.5},
    ],
)
def test_real_configs_still_build(kwargs):
    config = HfDetrConfig(**kwargs)
    assert all(getattr(config, key) == value for key, value in kwargs.items() if key != "num_labels")


@pytest.mark.parametrize("name", sorted(OFFICIAL_CHECKPOINTS))
def test_the_official_checkpoints_configs_still_build(name):
    assert official_config(name).backbone.startswith("resnet")


def test_numpy_integers_are_stored_as_int_so_the_config_saves(tmp_path):
    config = HfDetrConfig(
        num_queries=np.int64(50), d_model=np.int32(128), num_labels=2, coco_category_ids=[np.int64(1), 3]
    )
    assert type(config.num_queries) is int and type(config.d_model) is int
    assert [type(i) for i in config.coco_category_ids] == [int, int]
    config.save_pretrained(tmp_path)
    assert HfDetrConfig.from_pretrained(tmp_path).num_queries == 50


def test_an_existing_file_named_as_backbone_is_a_path_but_a_folder_named_like_timm_is_not(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_weights").write_bytes(b"")
    with pytest.raises(ValueError, match="`backbone` must be the name of a timm ResNet .* not a path"):
        HfDetrConfig(backbone="my_weights")
    (tmp_path / "resnet50").mkdir()  # e.g. an output directory named after the backbone
    assert HfDetrConfig(backbone="resnet50").backbone == "resnet50"


def _write_edited_config(directory, **edits) -> None:
    HfDetrConfig(**TINY_CONFIG).save_pretrained(directory)
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edits}))  # json.dumps writes NaN


@pytest.mark.parametrize(
    ("field", "value"),
    [("encoder_layers", 1_000_000), ("dropout", "0.1"), ("auxiliary_loss", "yes"), ("class_cost", NAN)],
)
def test_a_hand_edited_config_json_fails_fast_in_from_pretrained(tmp_path, field, value):
    _write_edited_config(tmp_path, **{field: value})
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"`{field}`"):
        HfDetrForObjectDetection.from_pretrained(tmp_path)
    assert time.perf_counter() - start < 2.0
    with pytest.raises(ValueError, match=f"`{field}`"):
        HfDetrConfig.from_pretrained(tmp_path)


def test_keyword_overrides_of_from_pretrained_are_checked_too(tmp_path):
    _write_edited_config(tmp_path)
    with pytest.raises(ValueError, match="`encoder_layers`"):
        HfDetrConfig.from_pretrained(tmp_path, encoder_layers=1_000_000)


@pytest.mark.parametrize("id2label", [["cat", "dog"], {"a": "cat"}, {0: 3}, {"²": "cat"}])
def test_label_overrides_of_from_pretrained_are_checked_too(tmp_path, id2label):
    _write_edited_config(tmp_path)
    with pytest.raises(ValueError, match="`id2label` must map label ids"):
        HfDetrConfig.from_pretrained(tmp_path, id2label=id2label)
    with pytest.raises(ValueError, match="`id2label` must map label ids"):
        HfDetrConfig(id2label=id2label)


def test_label_overrides_of_from_pretrained_are_read_as_the_constructor_reads_them(tmp_path):
    _write_edited_config(tmp_path)
    config = HfDetrConfig.from_pretrained(tmp_path, id2label={"0": "cat", "1": "dog"})  # JSON-style keys
    assert config.id2label == {0: "cat", 1: "dog"} and config.label2id == {"cat": 0, "dog": 1}
    assert config.num_labels == 2


def test_the_guides_new_classes_call_drops_the_old_per_label_fields_and_says_so(tmp_path, caplog):
    """transformers' object-detection guide: from_pretrained(trained, id2label=new, ...,
    ignore_mismatched_sizes=True) on a model trained with hf-detr-train (it has coco_category_ids)."""
    from detr_testing import tiny_hf_detr_config
    from transformers import AutoModelForObjectDetection

    names = {0: "circle", 1: "square", 2: "triangle"}
    trained = tiny_hf_detr_config(
        num_labels=3, id2label=names, label2id={v: k for k, v in names.items()}, coco_category_ids=[1, 2, 3],
        stuff_label_ids=[2],
    )  # fmt: skip
    HfDetrForObjectDetection(trained).save_pretrained(tmp_path)
    new = {0: "cat", 1: "dog"}
    with caplog.at_level("INFO", logger="hf_detr"):
        model = AutoModelForObjectDetection.from_pretrained(
            tmp_path, id2label=new, label2id={"cat": 0, "dog": 1}, ignore_mismatched_sizes=True
        )
    assert isinstance(model, HfDetrForObjectDetection) and model.config.id2label == new
    assert model.class_labels_classifier.out_features == 3  # 2 classes + no-object
    assert model.config.coco_category_ids is None and model.config.stuff_label_ids is None
    assert len([r for r in caplog.records if "New labels (2 classes)" in r.getMessage()]) == 1
    # the same labels, or no labels given: the saved fields stay
    same = HfDetrConfig.from_pretrained(tmp_path, id2label=names, label2id={v: k for k, v in names.items()})
    assert same.coco_category_ids == [1, 2, 3] and HfDetrConfig.from_pretrained(tmp_path).stuff_label_ids == [
        2
    ]
    given = HfDetrConfig.from_pretrained(tmp_path, id2label=new, coco_category_ids=[7, 9])
    assert given.coco_category_ids == [7, 9]


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "array"), ("3", "number"), ('"config"', "string")])
def test_a_config_json_that_is_not_an_object_is_a_value_error_naming_the_file(tmp_path, text, kind):
    (tmp_path / "config.json").write_text(text)
    expected = rf"config\.json must hold a JSON object .*got a JSON {kind}"
    for load in (
        HfDetrConfig.from_pretrained,
        HfDetrForObjectDetection.from_pretrained,
        lambda directory: HfDetrConfig.from_json_file(directory / "config.json"),
    ):
        with pytest.raises(ValueError, match=expected):
            load(tmp_path)
    with pytest.raises(ValueError, match="must be built from a JSON object"):
        HfDetrConfig.from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------------
# Training settings (hf_detr.training.arguments.validate)
# ---------------------------------------------------------------------------------------------------
BAD_SETTINGS = [
    ("learning_rate", NAN), ("learning_rate", -1e-4), ("learning_rate", INF), ("learning_rate", "1e-4"),
    ("backbone_learning_rate", NAN), ("mask_head_learning_rate", 0.0), ("weight_decay", NAN),
    ("max_grad_norm", NAN), ("max_grad_norm", 0.0), ("max_grad_norm", -1.0), ("batch_size", 0),
    ("batch_size", "2"), ("batch_size", True), ("image_scale", INF), ("ema_tau", NAN),
    ("time_limit_minutes", -1.0), ("warmup_steps", -1), ("num_workers", -1), ("logging_steps", 0),
    ("save_steps", 0), ("eval_top_k", 0), ("seed", -1), ("seed", 2**32), ("report_to", "wandb"),
    ("dilation", "yes"), ("encoder_layers", 1_000_000), ("ffn_dim", 10**6), ("dropout", 1.5),
    ("backbone", "./resnet50"), ("one_to_many_repeats", 0), ("one_to_many_repeats", 65),
]  # fmt: skip


@pytest.mark.parametrize(("setting", "value"), BAD_SETTINGS, ids=[f"{s}={v!r}" for s, v in BAD_SETTINGS])
def test_absurd_training_settings_raise_value_error_naming_the_setting(setting, value):
    with pytest.raises(ValueError, match="Invalid training setting") as error:
        resolve_arguments({"dataset": "x", setting: value})
    assert setting in str(error.value) and repr(value)[:20] in str(error.value)


def test_hybrid_matching_without_query_groups_is_refused_before_training():
    with pytest.raises(ValueError, match="one_to_many_repeats > 1 .* num_query_groups to 2 or more"):
        resolve_arguments({"dataset": "x", "one_to_many_repeats": 3, "num_query_groups": 1})


def test_a_yaml_learning_rate_written_1e_4_is_the_number_it_means(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1e-4\nbatch_size: '2'\n")  # YAML 1.1 reads 1e-4 as a string
    with pytest.raises(ValueError, match="batch_size"):  # a quoted integer stays an error
        parse_args(["--config", str(config), "--dataset", "x"])
    config.write_text("learning_rate: 1e-4\n")
    assert parse_args(["--config", str(config), "--dataset", "x"]).learning_rate == 1e-4


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_passes_validation(preset):
    assert resolve_arguments({"preset": preset}).preset == preset


def test_an_encoder_decoder_as_transformers_detr_config_says():
    from transformers import DetrConfig

    assert HfDetrConfig().is_encoder_decoder is DetrConfig().is_encoder_decoder is True


def test_config_overrides_set_any_model_field_and_name_the_setting_when_wrong():
    """transformers' --config_overrides: the box and GIoU weights have no flag of their own."""
    args = resolve_arguments(
        {"dataset": "x", "config_overrides": "bbox_loss_coefficient=3, giou_loss_coefficient=1.5"}
    )
    kwargs = args.model_config_kwargs()
    assert (kwargs["bbox_loss_coefficient"], kwargs["giou_loss_coefficient"]) == (3, 1.5)
    assert HfDetrConfig(**kwargs).bbox_loss_coefficient == 3
    for text, message in [
        ("bbox_loss=3", "'bbox_loss' is not an HfDetrConfig field"),
        ("use_masks=true", "'use_masks' is not an HfDetrConfig field"),
        ("checkpoint_resolver=x", "'checkpoint_resolver' is not an HfDetrConfig field"),
        ("bbox_loss_coefficient", "is not key=value"),
        ("bbox_loss_coefficient=-1", r"config_overrides.*bbox_loss_coefficient"),
        ("activation_function=tanh", r"config_overrides.*activation_function"),
    ]:
        with pytest.raises(ValueError, match=f"Invalid training setting.*{message}"):
            resolve_arguments({"dataset": "x", "config_overrides": text})
