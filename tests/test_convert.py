"""Checkpoint conversion: errors name what is wrong; nothing is unpickled beyond plain tensors."""

import argparse
import json
import pickle

import pytest
import torch
from detr_testing import TINY_TRANSFORMER
from test_parity import (
    _tiny_transformers_config,
    official_panoptic_state_dict,
    official_state_dict,
    random_reference,
    random_segmentation_reference,
    write_official_checkpoint,
)

from hf_detr.convert import (
    CheckpointConversionError,
    convert_checkpoint,
    convert_original_panoptic_state_dict,
    convert_original_state_dict,
    convert_transformers_state_dict,
    main,
)


@pytest.fixture(scope="module")
def reference():
    return random_reference(_tiny_transformers_config())


@pytest.fixture(scope="module")
def official(reference):
    return official_state_dict(reference)


def test_unknown_official_keys_are_listed(official):
    with pytest.raises(CheckpointConversionError, match=r"1 key\(s\).*transformer\.encoder\.extra\.weight"):
        convert_original_state_dict({**official, "transformer.encoder.extra.weight": torch.zeros(1)})


def test_unknown_transformers_keys_are_listed(reference):
    state_dict = {**reference.state_dict(), "model.mystery.weight": torch.zeros(1)}
    with pytest.raises(CheckpointConversionError, match="model.mystery.weight"):
        convert_transformers_state_dict(state_dict)


def test_missing_official_weights_are_listed(tmp_path, reference, official):
    incomplete = {k: v for k, v in official.items() if k != "transformer.decoder.norm.bias"}
    path = tmp_path / "incomplete.pth"
    torch.save({"model": incomplete}, path)
    with pytest.raises(CheckpointConversionError, match="missing 1: model.decoder.layernorm.bias"):
        convert_checkpoint("original", path, tmp_path / "out", backbone="resnet18")
    assert not (tmp_path / "out").exists()


def test_panoptic_checkpoints_are_refused(official):
    panoptic = {f"detr.{k}": v for k, v in official.items()}
    panoptic["mask_head.lay1.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointConversionError, match="panoptic"):
        convert_original_state_dict(panoptic)


def test_flags_that_contradict_the_weights_are_refused(tmp_path, reference):
    path = tmp_path / "detr.pth"
    write_official_checkpoint(reference, path)
    with pytest.raises(CheckpointConversionError, match="--num-labels 91"):
        convert_checkpoint("original", path, tmp_path / "a", num_labels=91)
    with pytest.raises(CheckpointConversionError, match="--backbone resnet50"):
        convert_checkpoint("original", path, tmp_path / "b", backbone="resnet50")


def test_transformers_source_takes_no_architecture_flags(tmp_path, reference):
    reference.save_pretrained(tmp_path / "src")
    with pytest.raises(CheckpointConversionError, match="config.json"):
        convert_checkpoint("transformers", tmp_path / "src", tmp_path / "out", backbone="resnet50")


def test_label_names_that_disagree_with_the_class_head_are_refused(tmp_path, reference):
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["id2label"] = {"0": "cat", "1": "dog", "2": "bird"}  # the head has 7 classes
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointConversionError, match="names 3 classes but the class head has 7"):
        convert_checkpoint("transformers", tmp_path, tmp_path / "out")


def test_a_directory_of_another_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "yolos"}))
    with pytest.raises(CheckpointConversionError, match="'yolos'"):
        convert_checkpoint("transformers", tmp_path, tmp_path / "out")


def test_a_file_without_a_model_state_dict_is_refused(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointConversionError, match="under 'model'"):
        convert_checkpoint("original", path, tmp_path / "out")


class _Payload:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("executed",))


def test_arbitrary_pickled_objects_are_never_loaded(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": argparse.Namespace(backbone="resnet50"), "evil": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        convert_checkpoint("original", path, tmp_path / "out")


def test_command_line_reports_errors_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "yolos"}))
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", "transformers", "--checkpoint", str(tmp_path), "--output-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "model_type 'yolos'" in capsys.readouterr().err


def test_converted_config_keeps_the_transformers_architecture(tmp_path, reference):
    reference.save_pretrained(tmp_path / "src")
    model = convert_checkpoint("transformers", tmp_path / "src", tmp_path / "out")
    for field, value in TINY_TRANSFORMER.items():
        assert getattr(model.config, field) == value, field
    assert model.config.id2label == {i: f"LABEL_{i}" for i in range(7)}
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_conversion_writes_a_preprocessor_config_with_the_source_settings(tmp_path, reference):
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    from hf_detr import HfDetrImageProcessor

    reference.save_pretrained(tmp_path / "src")
    DetrImageProcessorPil(size={"shortest_edge": 600, "longest_edge": 1000}).save_pretrained(tmp_path / "src")
    convert_checkpoint("transformers", tmp_path / "src", tmp_path / "out")
    processor = HfDetrImageProcessor.from_pretrained(tmp_path / "out")
    assert processor.size == {"shortest_edge": 600, "longest_edge": 1000}
    official = tmp_path / "detr.pth"
    write_official_checkpoint(reference, official)
    convert_checkpoint("original", official, tmp_path / "official")
    assert HfDetrImageProcessor.from_pretrained(tmp_path / "official").size == {
        "shortest_edge": 800,
        "longest_edge": 1333,
    }


# ---------------------------------------------------------------------------------------------------
# Segmentation (panoptic) checkpoints
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def segmentation_reference():
    return random_segmentation_reference(num_queries=4, encoder_layers=1, decoder_layers=1)


def test_unknown_panoptic_head_keys_are_listed(tmp_path, segmentation_reference):
    official = official_panoptic_state_dict(segmentation_reference, tmp_path / "transformers")
    with pytest.raises(CheckpointConversionError, match=r"1 key\(s\).*panoptic.*mask_head\.lay9\.weight"):
        convert_original_panoptic_state_dict({**official, "mask_head.lay9.weight": torch.zeros(1)})


def test_detector_converters_name_the_segmentation_converter_for_panoptic_weights(segmentation_reference):
    with pytest.raises(CheckpointConversionError, match="convert_transformers_segmentation_state_dict"):
        convert_transformers_state_dict(segmentation_reference.state_dict())


def test_a_transformers_mask_head_with_another_activation_is_refused(tmp_path, segmentation_reference):
    segmentation_reference.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    config["activation_function"] = "gelu"  # transformers' mask head would use it; the official has ReLU
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointConversionError, match="activation_function='gelu'.*ReLU"):
        convert_checkpoint("transformers", tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_converted_segmentation_checkpoint_carries_its_code_and_mask_loss_weights(
    tmp_path, segmentation_reference
):
    segmentation_reference.config.mask_loss_coefficient = 2  # transformers types it int
    try:
        segmentation_reference.save_pretrained(tmp_path / "src")
    finally:
        segmentation_reference.config.mask_loss_coefficient = 1
    convert_checkpoint("transformers", tmp_path / "src", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["use_masks"] is True and config["mask_loss_coefficient"] == 2
    assert config["auto_map"] == {
        "AutoConfig": "configuration_detr.HfDetrConfig",
        "AutoModelForImageSegmentation": "modeling_detr_segmentation.HfDetrForSegmentation",
    }
    assert (tmp_path / "out" / "modeling_detr_segmentation.py").is_file()


# ---------------------------------------------------------------------------------------------------
# COCO panoptic category names (cocodataset/panopticapi panoptic_coco_categories.json)
# ---------------------------------------------------------------------------------------------------
def test_coco_panoptic_table_has_80_things_and_53_stuff_with_known_names():
    from hf_detr import COCO_DETECTION_LABELS
    from hf_detr.coco_panoptic_categories import (
        COCO_PANOPTIC_CATEGORIES,
        COCO_PANOPTIC_STUFF_IDS,
        COCO_PANOPTIC_THING_IDS,
        coco_panoptic_categories,
        coco_panoptic_id2label,
    )

    assert len(COCO_PANOPTIC_CATEGORIES) == 133
    assert (len(COCO_PANOPTIC_THING_IDS), len(COCO_PANOPTIC_STUFF_IDS)) == (80, 53)
    by_id = {c.id: c for c in COCO_PANOPTIC_CATEGORIES}
    assert len(by_id) == 133 and max(by_id) == 200
    assert (by_id[1].name, by_id[1].isthing) == ("person", True)
    assert (by_id[199].name, by_id[199].isthing) == ("wall-other-merged", False)
    assert (by_id[187].name, by_id[187].supercategory) == ("sky-other-merged", "sky")
    # things are the COCO detection categories under the same ids (the official is_thing_map: id <= 90)
    assert all(COCO_DETECTION_LABELS[i] == by_id[i].name for i in COCO_PANOPTIC_THING_IDS)
    assert max(COCO_PANOPTIC_THING_IDS) <= 90 < min(COCO_PANOPTIC_STUFF_IDS)
    id2label = coco_panoptic_id2label()
    assert len(id2label) == 250 and sum(name != "N/A" for name in id2label.values()) == 133
    assert id2label[0] == id2label[12] == id2label[201] == id2label[249] == "N/A"
    assert coco_panoptic_categories()[-1] == {"id": 200, "name": "rug-merged", "supercategory": "textile",
                                              "isthing": 0}  # fmt: skip
    with pytest.raises(ValueError, match="largest COCO panoptic category id"):
        coco_panoptic_id2label(200)


def test_stuff_label_ids_must_be_label_ids():
    from hf_detr import HfDetrConfig

    assert HfDetrConfig(num_labels=3, stuff_label_ids=(2,)).stuff_label_ids == [2]
    with pytest.raises(ValueError, match=r"stuff_label_ids.*outside 0\.\.2: \[3\]"):
        HfDetrConfig(num_labels=3, stuff_label_ids=[1, 3])
    with pytest.raises(ValueError, match="stuff_label_ids.*repeated"):
        HfDetrConfig(num_labels=3, stuff_label_ids=[1, 1])
    with pytest.raises(ValueError, match="stuff_label_ids.*integers"):
        HfDetrConfig(num_labels=3, stuff_label_ids="12")


def test_official_panoptic_checkpoint_gets_coco_panoptic_names_and_stuff_ids(
    tmp_path, segmentation_reference
):
    """The official panoptic releases have 250 class slots (COCO panoptic category ids): here the tiny
    reference's class head is widened to 250 classes; the converted config names them."""
    from hf_detr import HfDetrForSegmentation
    from hf_detr.coco_panoptic_categories import COCO_PANOPTIC_STUFF_IDS

    official = official_panoptic_state_dict(segmentation_reference, tmp_path / "transformers")
    width = official["detr.class_embed.weight"].shape[1]
    official["detr.class_embed.weight"] = torch.randn(251, width)
    official["detr.class_embed.bias"] = torch.randn(251)
    path = tmp_path / "detr-panoptic.pth"
    torch.save({"model": official, "args": argparse.Namespace(backbone="resnet18", nheads=8)}, path)
    convert_checkpoint("original", path, tmp_path / "out")
    config = HfDetrForSegmentation.from_pretrained(tmp_path / "out").config
    assert config.num_labels == 250 and config.id2label[1] == "person" and config.id2label[91] == "N/A"
    assert config.id2label[199] == "wall-other-merged" and config.label2id["sky-other-merged"] == 187
    assert config.stuff_label_ids == list(COCO_PANOPTIC_STUFF_IDS)


def test_transformers_panoptic_checkpoint_with_generic_labels_gets_coco_panoptic_names(
    segmentation_reference,
):
    """transformers' conversions of the panoptic releases call their 250 classes LABEL_i (#12808)."""
    from hf_detr.convert import transformers_config

    config_dict = segmentation_reference.config.to_dict()
    config_dict["id2label"] = {str(i): f"LABEL_{i}" for i in range(250)}
    named = transformers_config(config_dict, 250, segmentation=True)
    assert named.id2label[1] == "person" and len(named.stuff_label_ids) == 53
    detector = transformers_config(config_dict, 250, segmentation=False)  # no reason to guess names
    assert detector.id2label[1] == "LABEL_1" and detector.stuff_label_ids is None
    config_dict["id2label"]["1"] = "my-class"  # names of the checkpoint's own are kept
    kept = transformers_config(config_dict, 250, segmentation=True)
    assert kept.id2label[1] == "my-class" and kept.id2label[2] == "LABEL_2" and kept.stuff_label_ids is None
