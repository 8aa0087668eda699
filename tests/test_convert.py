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
