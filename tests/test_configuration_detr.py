"""HfDetrConfig: the paper's defaults, validation, serialisation."""

import pytest

from hf_detr import COCO_DETECTION_LABELS, HfDetrConfig


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
        ({"num_query_groups": 2, "one_to_many_repeats": 0}, "one_to_many_repeats"),
        ({"one_to_many_repeats": 3}, "one_to_many_repeats"),
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
