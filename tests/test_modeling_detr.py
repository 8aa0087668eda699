"""HfDetrModel / HfDetrForObjectDetection: outputs, masks, backbone freezing, save/load, dtypes."""

import copy

import pytest
import torch
from detr_testing import max_abs_diff, padded_batch, tiny_hf_detr_config
from torchvision.ops import FrozenBatchNorm2d

from hf_detr import HfDetrConfig, HfDetrForObjectDetection, HfDetrModel


def tiny_model(**overrides) -> HfDetrForObjectDetection:
    return HfDetrForObjectDetection(tiny_hf_detr_config(**overrides)).eval()


def test_outputs_have_the_documented_shapes():
    model = tiny_model()
    pixel_values, pixel_mask = padded_batch([(96, 128), (128, 64)])
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask, output_feature_mask=True)
    config = model.config
    assert outputs.logits.shape == (2, config.num_queries, config.num_labels + 1)
    assert outputs.pred_boxes.shape == (2, config.num_queries, 4)
    assert outputs.pred_boxes.min() >= 0 and outputs.pred_boxes.max() <= 1
    assert outputs.last_hidden_state.shape == (2, config.num_queries, config.d_model)
    assert outputs.encoder_last_hidden_state.shape == (2, 4 * 4, config.d_model)  # 128 / 32 = 4
    assert outputs.feature_mask.shape == (2, 4, 4)
    assert outputs.feature_mask[1, :, 2:].logical_not().all()  # image 1 is 64 px wide: 2 columns
    assert outputs.auxiliary_outputs is None  # inference: per-image outputs only
    assert outputs.loss is None


def test_auxiliary_outputs_come_in_training_with_labels_or_when_asked():
    model = tiny_model(auxiliary_loss=True)
    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 32)])
    labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    with torch.no_grad():
        asked = model(pixel_values=pixel_values, pixel_mask=pixel_mask, output_auxiliary_outputs=True)
        with_labels = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
        model.train()
        training = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    for outputs in (asked, with_labels, training):
        assert len(outputs.auxiliary_outputs) == model.config.decoder_layers - 1
        assert outputs.auxiliary_outputs[0]["logits"].shape == outputs.logits.shape
    assert "loss_ce_0" in with_labels.loss_dict


def test_without_auxiliary_loss_only_the_last_layer_is_scored_even_if_others_are_returned():
    model = tiny_model(auxiliary_loss=False)
    pixel_values, pixel_mask = padded_batch([(64, 64)])
    labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with torch.no_grad():
        outputs = model(pixel_values, pixel_mask, labels=labels, output_auxiliary_outputs=True)
        plain = model(pixel_values, pixel_mask, labels=labels)
    assert len(outputs.auxiliary_outputs) == model.config.decoder_layers - 1
    assert "loss_ce_0" not in outputs.loss_dict and torch.equal(outputs.loss, plain.loss)
    assert torch.equal(model.loss_from_outputs(outputs, labels)[0], plain.loss)


def test_the_loss_scores_the_forwards_stacked_layers_without_copying_them():
    """scored_predictions hands the loss the [L, B, N, ...] heads `forward` computed (the outputs are
    views of them); outputs rebuilt elsewhere (here: copied fields) are stacked instead, to the same
    values and gradients."""
    model = tiny_model(auxiliary_loss=True).train()
    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 32)])
    outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    logits, boxes = model.scored_predictions(outputs)
    assert logits.shape[0] == boxes.shape[0] == model.config.decoder_layers
    assert logits.data_ptr() == outputs.auxiliary_outputs[0]["logits"].data_ptr()  # no copy
    assert boxes.data_ptr() == outputs.auxiliary_outputs[0]["pred_boxes"].data_ptr()
    rebuilt = type(outputs)(
        logits=outputs.logits.clone(),
        pred_boxes=outputs.pred_boxes.clone(),
        auxiliary_outputs=[{key: value.clone() for key, value in a.items()} for a in outputs.auxiliary_outputs],
    )
    stacked_logits, stacked_boxes = model.scored_predictions(rebuilt)
    assert stacked_logits.data_ptr() != logits.data_ptr()
    assert torch.equal(stacked_logits, logits) and torch.equal(stacked_boxes, boxes)
    gradients = []
    for scored in ((logits, boxes), (stacked_logits, stacked_boxes)):
        model.zero_grad()
        (scored[0].square().sum() + scored[1].sum()).backward(retain_graph=True)
        gradients.append(model.class_labels_classifier.weight.grad.clone())
    assert torch.equal(gradients[0], gradients[1])


def test_auxiliary_loss_flag_does_not_change_predictions():
    """Official behaviour (transformers' DETR changes its predictions with this flag)."""
    with_aux = tiny_model(auxiliary_loss=True)
    without_aux = tiny_model(auxiliary_loss=False)
    without_aux.load_state_dict(with_aux.state_dict())
    pixel_values, pixel_mask = padded_batch([(64, 96), (96, 64)])
    with torch.no_grad():
        a = with_aux(pixel_values=pixel_values, pixel_mask=pixel_mask)
        b = without_aux(pixel_values=pixel_values, pixel_mask=pixel_mask)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pred_boxes, b.pred_boxes)
    assert b.auxiliary_outputs is None


def test_padding_gets_no_attention_and_weights_match_the_sdpa_path():
    model = tiny_model()
    pixel_values, pixel_mask = padded_batch([(128, 128), (64, 96)])
    with torch.no_grad():
        fast = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        explicit = model(
            pixel_values=pixel_values, pixel_mask=pixel_mask, output_attentions=True, output_feature_mask=True
        )
    assert max_abs_diff(fast.logits, explicit.logits) <= 1e-5
    padding = ~explicit.feature_mask[1].flatten()  # [h*w] of image 1
    assert padding.sum() == 16 - 2 * 3
    for attention in explicit.cross_attentions:  # [B, heads, N, h*w]
        assert attention.shape == (2, 4, model.config.num_queries, 16)
        assert torch.allclose(attention.sum(-1), torch.ones(()), atol=1e-5)
        assert attention[1][..., padding].abs().max() == 0
    for attention in explicit.encoder_attentions:  # [B, heads, h*w, h*w]
        assert attention[1][..., padding].abs().max() == 0
    assert len(explicit.decoder_attentions) == model.config.decoder_layers


def test_hidden_states_are_returned_per_layer():
    model = tiny_model()
    pixel_values, _ = padded_batch([(64, 64)])
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, output_hidden_states=True)
    assert len(outputs.encoder_hidden_states) == model.config.encoder_layers + 1
    assert len(outputs.decoder_hidden_states) == model.config.decoder_layers + 1
    assert torch.equal(outputs.encoder_hidden_states[-1], outputs.encoder_last_hidden_state)


def test_base_model_and_tuple_outputs():
    config = tiny_hf_detr_config()
    model = HfDetrModel(config).eval()
    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 32)])
    with torch.no_grad():
        outputs = model(pixel_values, pixel_mask)
        as_tuple = model(pixel_values, pixel_mask, return_dict=False)
    assert outputs.intermediate_hidden_states.shape == (config.decoder_layers, 2, config.num_queries, 64)
    assert torch.equal(outputs.intermediate_hidden_states[-1], outputs.last_hidden_state)
    assert torch.equal(as_tuple[0], outputs.last_hidden_state)


def test_sine_positions_ignore_padding():
    """An image's position encodings depend only on its own (unpadded) size."""
    model = tiny_model().model
    alone = torch.ones(1, 3, 5, dtype=torch.bool)
    padded = torch.zeros(1, 4, 7, dtype=torch.bool)
    padded[:, :3, :5] = True
    a = model.position_embedding(alone).view(1, 3, 5, -1)
    b = model.position_embedding(padded).view(1, 4, 7, -1)
    assert max_abs_diff(a, b[:, :3, :5]) <= 1e-6


def test_one_channel_model_takes_grayscale_input():
    model = tiny_model(num_channels=1)
    pixel_values, pixel_mask = padded_batch([(64, 64)], channels=1)
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    assert outputs.logits.shape[0] == 1
    with pytest.raises(ValueError, match="num_channels=1"):
        model(pixel_values=torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize(
    ("make_inputs", "message"),
    [
        (lambda: (torch.zeros(3, 64, 64), None), "pixel_values"),
        (lambda: (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), None), "floating"),
        (lambda: (torch.zeros(1, 3, 64, 64), torch.ones(1, 64, 32)), "pixel_mask"),
    ],
)
def test_bad_inputs_raise_clear_errors(make_inputs, message):
    pixel_values, pixel_mask = make_inputs()
    with pytest.raises(ValueError, match=message):
        tiny_model()(pixel_values=pixel_values, pixel_mask=pixel_mask)


def test_a_list_of_images_runs_by_size_and_gives_each_image_its_own_outputs_in_order():
    """Per-image inputs (the processor's unpadded list; a pipeline batch nests one list per image): each
    size runs as one unpadded batch; fields of size-dependent shape become per-image lists."""
    model = tiny_model(auxiliary_loss=True)
    generator = torch.Generator().manual_seed(0)
    sizes = [(96, 128), (64, 64), (96, 128), (128, 64)]
    images = [torch.randn(3, h, w, generator=generator) for h, w in sizes]
    batch_sizes = []
    model.model.backbone.register_forward_hook(lambda module, args, output: batch_sizes.append(len(args[0])))
    with torch.no_grad():
        outputs = model(
            [[images[0]], [images[1]], images[2:]], output_auxiliary_outputs=True, output_feature_mask=True
        )
        assert sorted(batch_sizes) == [1, 1, 2]
        logits, boxes = model(images, return_dict=False)[:2]
        base = model.model(images, output_hidden_states=True)  # intermediate states [L, B, N, d]
        alone = [model(image[None], output_auxiliary_outputs=True, output_feature_mask=True) for image in images]
        base_alone = [model.model(image[None], output_hidden_states=True) for image in images]
    assert outputs.logits.shape == (4, *alone[0].logits.shape[1:]) and torch.equal(logits, outputs.logits)
    assert base.intermediate_hidden_states.shape[:2] == (model.config.decoder_layers, 4)
    assert isinstance(outputs.feature_mask, list) and isinstance(outputs.encoder_last_hidden_state, list)
    for index, (single, single_base) in enumerate(zip(alone, base_alone)):
        for got, expected in [
            (outputs.logits[index], single.logits[0]),
            (boxes[index], single.pred_boxes[0]),
            (outputs.auxiliary_outputs[0]["logits"][index], single.auxiliary_outputs[0]["logits"][0]),
            (outputs.encoder_last_hidden_state[index], single.encoder_last_hidden_state[0]),  # [h*w, d]
            (base.intermediate_hidden_states[:, index], single_base.intermediate_hidden_states[:, 0]),
            (base.decoder_hidden_states[-1][index], single_base.decoder_hidden_states[-1][0]),
        ]:
            assert max_abs_diff(got, expected) < 1e-5
        assert torch.equal(outputs.feature_mask[index], single.feature_mask[0])


@pytest.mark.parametrize(
    ("pixel_values", "arguments", "message"),
    [
        ([torch.zeros(3, 64, 64)], {"pixel_mask": torch.ones(1, 64, 64)}, "`pixel_mask` cannot go with"),
        ([torch.zeros(3, 64, 64)], {"labels": [{}]}, "`labels` cannot go with"),
        ([torch.zeros(64, 64)], {}, r"one \[channels, height, width\] tensor per image, got .*\[64, 64\]"),
        ([], {}, "empty list"),
        ([torch.zeros(1, 64, 64)], {}, "num_channels=3"),
    ],
    ids=["pixel_mask", "labels", "2-d item", "empty", "channels"],
)
def test_bad_image_lists_raise_clear_errors(pixel_values, arguments, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(pixel_values, **arguments)


def test_learned_positions_refuse_feature_maps_beyond_their_table():
    model = tiny_model(position_embedding_type="learned")
    with pytest.raises(ValueError, match="50x50"):
        model.model.position_embedding(torch.ones(1, 51, 10, dtype=torch.bool))


def _trainable_backbone_prefixes(model: HfDetrForObjectDetection) -> set[str]:
    return {
        name.split(".")[3]
        for name, parameter in model.named_parameters()
        if name.startswith("model.backbone.body.") and parameter.requires_grad
    }


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        (0, set()),
        (3, {"layer2", "layer3", "layer4"}),
        (5, {"conv1", "layer1", "layer2", "layer3", "layer4"}),
    ],
)
def test_trainable_backbone_layers_select_the_stages_that_train(layers, expected):
    model = tiny_model(trainable_backbone_layers=layers)
    assert _trainable_backbone_prefixes(model) == expected
    # the transformer and heads always train
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("model.backbone."))


def test_frozen_batch_norm_statistics_never_change_in_training():
    model = tiny_model(trainable_backbone_layers=5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) > 0
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or ".bn" in k}
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 32)])
    outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    (outputs.logits.sum() + outputs.pred_boxes.sum()).backward()
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.model.backbone.body.layer4[0].conv1.weight.grad is not None


@pytest.mark.parametrize("image_size", [24, 4])
def test_frozen_batch_norm_folded_into_a_convolution_equals_it_applied_after(image_size):
    """conv(x, W * s) + t equals the convolution then FrozenBatchNorm2d, in outputs and gradients."""
    from hf_detr.modeling_detr import fold_frozen_batch_norm

    torch.manual_seed(0)
    reference = torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), FrozenBatchNorm2d(16)
    )
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            getattr(reference[1], name).copy_(torch.randn(16))
        reference[1].running_var.copy_(torch.rand(16) + 0.5)
    reference = reference.double()
    folded = copy.deepcopy(reference)
    assert fold_frozen_batch_norm(folded) == 1
    x = torch.randn(2, 8, image_size, image_size, dtype=torch.float64)
    expected, actual = reference(x), folded(x)
    assert expected.shape == actual.shape and max_abs_diff(expected, actual) < 1e-12
    (expected * expected).sum().backward()
    (actual * actual).sum().backward()
    assert max_abs_diff(reference[0].weight.grad, folded[0].weight.grad) < 1e-10


def test_unfrozen_batch_norm_trains_in_trainable_stages_only():
    model = tiny_model(freeze_backbone_batch_norm=False, trainable_backbone_layers=3)
    body = model.model.backbone.body
    assert isinstance(body.layer2[0].bn1, torch.nn.BatchNorm2d) and body.layer2[0].bn1.weight.requires_grad
    assert isinstance(body.layer1[0].bn1, FrozenBatchNorm2d) and isinstance(body.bn1, FrozenBatchNorm2d)


def test_save_and_load_round_trip_through_safetensors(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    loaded = HfDetrForObjectDetection.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.config, HfDetrConfig)
    pixel_values, pixel_mask = padded_batch([(64, 96), (96, 64)])
    with torch.no_grad():
        assert torch.equal(model(pixel_values, pixel_mask).logits, loaded(pixel_values, pixel_mask).logits)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, dict(loaded.named_buffers())[name]), name


def test_from_pretrained_in_bfloat16_runs_on_float32_pixels(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = HfDetrForObjectDetection.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    pixel_values, pixel_mask = padded_batch([(64, 96)])
    with torch.no_grad():
        reference = model(pixel_values, pixel_mask)
        outputs = loaded(pixel_values, pixel_mask)
    assert outputs.pred_boxes.dtype == torch.bfloat16
    assert max_abs_diff(outputs.pred_boxes, reference.pred_boxes) < 0.1


def test_from_pretrained_never_downloads_backbone_weights(tmp_path, monkeypatch):
    import timm

    model = tiny_model()
    model.config.use_pretrained_backbone = True
    model.save_pretrained(tmp_path)
    requested = []
    real_create_model = timm.create_model

    def recording_create_model(*args, **kwargs):
        requested.append(kwargs.get("pretrained"))
        return real_create_model(*args, **{**kwargs, "pretrained": False})

    monkeypatch.setattr(timm, "create_model", recording_create_model)
    loaded = HfDetrForObjectDetection.from_pretrained(tmp_path)
    assert requested == [False]
    assert torch.equal(loaded.model.input_projection.weight, model.model.input_projection.weight)


def test_initialisation_follows_the_official_code():
    """Xavier-uniform transformer matrices (q/k/v with the fused [3d, d] bound of nn.MultiheadAttention),
    zero attention biases, PyTorch-default heads, N(0, 1) query embeddings."""
    model = HfDetrForObjectDetection(tiny_hf_detr_config(d_model=64, num_queries=200))
    attention = model.model.encoder.layers[0].self_attn
    fused_bound = (6 / (64 + 3 * 64)) ** 0.5
    for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
        assert 0.9 * fused_bound < projection.weight.abs().max() <= fused_bound
        assert projection.bias.abs().max() == 0
    square_bound = (6 / (64 + 64)) ** 0.5
    assert 0.9 * square_bound < attention.out_proj.weight.abs().max() <= square_bound
    fc1 = model.model.encoder.layers[0].mlp.fc1
    assert fc1.weight.abs().max() <= (6 / (64 + fc1.out_features)) ** 0.5
    default_bound = 1 / 64**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 64
    assert 0.9 * default_bound < model.class_labels_classifier.weight.abs().max() <= default_bound
    queries = model.model.query_position_embeddings.weight
    assert 0.8 < queries.std() < 1.2
    # timm's backbone initialisation is kept: kaiming-normal (fan_out), not transformers' N(0, 0.02)
    conv = model.model.backbone.body.layer2[0].conv1
    kaiming_std = (2 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1])) ** 0.5
    assert abs(conv.weight.std() / kaiming_std - 1) < 0.05


def test_backbone_built_from_scratch_has_live_residual_branches():
    """timm zero-initialises the last BatchNorm of each block; frozen, that branch would stay dead."""
    model = tiny_model(trainable_backbone_layers=5)
    last_norms = [
        block.bn2.weight
        for stage in ("layer1", "layer4")
        for block in getattr(model.model.backbone.body, stage)
    ]
    assert all(weight.abs().min() > 0 for weight in last_norms)


def test_non_finite_pixels_are_an_error_naming_the_image_and_leave_batch_norm_untouched():
    model = tiny_model(freeze_backbone_batch_norm=False, trainable_backbone_layers=5).train()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 48)])
    pixel_values[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="`pixel_values` of image 1 contains NaN or inf"):
        model(pixel_values, pixel_mask)
    assert all(torch.equal(before[name], buffer) for name, buffer in model.named_buffers())


def test_a_training_batch_of_one_tiny_image_with_trainable_batch_norm_is_an_error_giving_the_minimum():
    model = tiny_model(freeze_backbone_batch_norm=False, trainable_backbone_layers=5).train()
    with pytest.raises(ValueError, match=r"1x1 feature map \(stride 32\).*at least 33"):
        model(torch.randn(1, 3, 31, 31))
    assert model(torch.randn(2, 3, 31, 31)).logits.isfinite().all()  # two images: fine


def test_pixel_mask_must_be_a_tensor_with_a_real_pixel_in_every_image():
    model = tiny_model()
    pixel_values, pixel_mask = padded_batch([(64, 64), (64, 48)])
    with pytest.raises(TypeError, match="`pixel_mask` must be a torch tensor"):
        model(pixel_values, pixel_mask.numpy())
    pixel_mask[1] = 0
    with pytest.raises(ValueError, match="`pixel_mask` of image 1 has no real pixel"):
        model(pixel_values, pixel_mask, output_attentions=True)


def test_backbone_weights_are_channels_last_fresh_and_loaded(tmp_path):
    """Fresh or loaded, the ResNet's weights are channels-last, as its activations (transformers'
    `test_load_contiguous_weights` expects contiguous ones: a documented difference)."""
    config = HfDetrConfig(backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=1, num_queries=5,
                          encoder_ffn_dim=32, decoder_ffn_dim=32, num_labels=3)  # fmt: skip
    model = HfDetrForObjectDetection(config)
    model.save_pretrained(tmp_path)
    for each in (model, HfDetrForObjectDetection.from_pretrained(tmp_path)):
        convolutions = [p for n, p in each.named_parameters() if "backbone" in n and p.ndim == 4]
        assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
        assert all(p.is_contiguous() for n, p in each.named_parameters() if "backbone" not in n)
