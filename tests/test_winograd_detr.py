"""Winograd F(2x2, 3x3) convolution: forward and every gradient against F.conv2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_detr.winograd_detr import Conv2dWinograd

# (batch, C_in, C_out, H, W): even and odd sides, a single pixel, a row, an empty batch
SHAPES = [
    (2, 5, 4, 8, 8),
    (3, 5, 4, 11, 14),
    (1, 3, 6, 7, 5),
    (2, 4, 4, 1, 1),
    (1, 2, 3, 2, 3),
    (0, 2, 3, 4, 4),
]


def _conv_and_gradients(conv, x, weight, bias, grad_output):
    inputs = [t.detach().requires_grad_() for t in (x, weight, bias) if t is not None]
    y = conv(*inputs) if bias is not None else conv(*inputs, None)
    return (y, *torch.autograd.grad(y, inputs, grad_output))


def _winograd(x, weight, bias):
    return Conv2dWinograd.apply(x, weight, bias)


def _reference(x, weight, bias):
    return F.conv2d(x, weight, bias, padding=1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_conv2d_and_its_gradients_in_float64_1e12(shape, channels_last, with_bias):
    batch, in_channels, out_channels, height, width = shape
    generator = torch.Generator().manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, in_channels, height, width, dtype=torch.float64, generator=generator)
    x = x.contiguous(memory_format=memory_format)
    weight = torch.randn(out_channels, in_channels, 3, 3, dtype=torch.float64, generator=generator)
    weight = weight.contiguous(memory_format=memory_format)
    bias = torch.randn(out_channels, dtype=torch.float64, generator=generator) if with_bias else None
    grad_output = torch.randn(batch, out_channels, height, width, dtype=torch.float64, generator=generator)
    grad_output = grad_output.contiguous(memory_format=memory_format)
    got = _conv_and_gradients(_winograd, x, weight, bias, grad_output)
    expected = _conv_and_gradients(_reference, x, weight, bias, grad_output)
    for name, g, e in zip(("output", "input gradient", "weight gradient", "bias gradient"), got, expected):
        assert g.shape == e.shape, name
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("channels", [64, 256])
def test_float32_error_is_that_of_a_direct_convolution_1e5(channels):
    """ResNet-like sizes: every result within 1e-5 of the largest entry of F.conv2d's (float64 truth)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 13, 12, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, channels, 3, 3, generator=generator) / (3 * channels**0.5)
    weight = weight.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(channels, generator=generator)
    grad_output = torch.randn(2, channels, 13, 12, generator=generator)
    got = _conv_and_gradients(_winograd, x, weight, bias, grad_output)
    truth = _conv_and_gradients(_reference, x.double(), weight.double(), bias.double(), grad_output.double())
    for name, g, e in zip(("output", "input gradient", "weight gradient", "bias gradient"), got, truth):
        assert g.dtype == torch.float32
        scale = e.abs().max()
        torch.testing.assert_close(g.double() / scale, e / scale, rtol=0, atol=1e-5, msg=name)


def test_gradients_come_out_channels_last_and_only_where_needed():
    x = torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = Conv2dWinograd.apply(x, weight, None)  # the first trainable layer: its input needs no gradient
    assert y.is_contiguous(memory_format=torch.channels_last)
    (grad_weight,) = torch.autograd.grad(y, weight, torch.ones_like(y))
    assert grad_weight.is_contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    (grad_input,) = torch.autograd.grad(Conv2dWinograd.apply(x, weight, None), x, torch.ones_like(y))
    assert grad_input.is_contiguous(memory_format=torch.channels_last)
