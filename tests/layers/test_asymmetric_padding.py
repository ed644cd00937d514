"""Asymmetric padding ``((top, bottom), (left, right))`` in every windowed layer (ONNX's ``pads``):
each convolution algorithm and both poolings against PyTorch (explicit ``F.pad``, then the op),
ONNX's reference evaluator for the average that skips the padding, finite differences, the
receptive field (the same as ZeroPadding2d then a valid layer), the config and a model file."""

from __future__ import annotations

import re

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

import cnnkit
from cnnkit.arithmetic import ReceptiveField, padding_amounts, windows_2d
from cnnkit.errors import ConfigError
from cnnkit.layers import AvgPool2d, Conv2d, DepthwiseConv2d, MaxPool2d, ZeroPadding2d
from window_oracles import kernel_path  # noqa: F401 (a fixture)
from window_oracles import nchw, nhwc, onnx_reference_pool

FIELD = (ReceptiveField(), ReceptiveField())


def _torch_pad(sides):
    """``((top, bottom), (left, right))`` as F.pad's ``(left, right, top, bottom)``."""
    (top, bottom), (left, right) = sides
    return left, right, top, bottom


def test_padding_amounts_take_each_side_its_own_amount():
    assert padding_amounts(((1, 2), (0, 3)), 10, 3, 1, 1, 0, "conv") == (1, 2)
    assert padding_amounts([[1, 2], [0, 3]], 10, 3, 1, 1, 1, "conv") == (0, 3)
    geometry = windows_2d((6, 7), 3, 2, ((0, 2), (1, 0)), 1, "conv")
    assert [w.pads for w in geometry] == [(0, 2), (1, 0)]
    assert geometry.output_hw((6, 7)) == ((6 + 0 + 2 - 3) // 2 + 1, (7 + 1 + 0 - 3) // 2 + 1)
    assert (geometry.top, geometry.left, geometry.padded) == (0, 1, True)


@pytest.mark.parametrize("padding, message", [
    (((1, -1), (0, 0)), "conv1: padding must be >= 0; received padding=((1, -1), (0, 0))"),
    (((1, 2), 3), "conv1: padding must be an int, a pair of ints, a pair of pairs ((top, bottom), (left, right)) "
                  "or one of ('valid', 'same', 'full'); received padding=((1, 2), 3)"),
    (((1, 2, 3), (0, 0)), "conv1: padding must be an int, a pair of ints, a pair of pairs ((top, bottom), "
                          "(left, right)) or one of ('valid', 'same', 'full'); received padding=((1, 2, 3), (0, 0))"),
    (((1, 2.0), (0, 0)), "conv1: padding must be an int, a pair of ints, a pair of pairs ((top, bottom), "
                         "(left, right)) or one of ('valid', 'same', 'full'); received padding=((1, 2.0), (0, 0))"),
])
def test_malformed_asymmetric_padding_is_refused_with_the_forms(padding, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        Conv2d(2, 3, padding=padding, name="conv1").build((6, 6, 1))


CONV_CASES = [  # input (H, W, C), kernel, stride, dilation, padding, algorithm
    ((6, 7, 2), 3, 1, 1, ((0, 2), (1, 0)), "gemm"),
    ((6, 7, 2), 3, 1, 1, ((2, 0), (0, 1)), "winograd2"),
    ((9, 8, 3), 3, 1, 1, ((1, 2), (2, 0)), "winograd4"),
    ((7, 8, 2), (3, 2), 2, 1, ((0, 1), (1, 2)), "auto"),
    ((8, 8, 2), 3, 1, 2, ((3, 1), (0, 4)), "gemm"),
]


@pytest.mark.torch
@pytest.mark.parametrize("shape, kernel, stride, dilation, padding, algorithm", CONV_CASES)
def test_conv2d_with_asymmetric_padding_matches_torch(kernel_path, shape, kernel, stride, dilation, padding,
                                                      algorithm):
    rng = np.random.default_rng(0)
    layer = Conv2d(3, kernel, stride, padding, dilation, algorithm=algorithm)
    layer.build(shape, rng)
    weight, bias = layer.parameters()["weight"], layer.parameters()["bias"]
    bias.value = rng.standard_normal(3).astype(np.float32)
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    tx = nchw(x)
    tw = torch.tensor(weight.value.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    ty = F.conv2d(F.pad(tx, _torch_pad(padding)), tw, torch.tensor(bias.value), stride=stride, dilation=dilation)
    ty.backward(nchw(dy).detach())
    np.testing.assert_allclose(y, nhwc(ty), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, nhwc(tx.grad), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(weight.grad, tw.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-4)


@pytest.mark.torch
@pytest.mark.parametrize("stride, padding", [(1, ((0, 2), (1, 0))), (2, ((1, 0), (0, 1))), (2, ((2, 1), (1, 2)))])
def test_depthwise_conv2d_with_asymmetric_padding_matches_torch(kernel_path, stride, padding):
    rng = np.random.default_rng(1)
    c, m = 3, 2
    layer = DepthwiseConv2d(3, stride, padding, depth_multiplier=m)
    layer.build((7, 6, c), rng)
    weight = layer.parameters()["weight"]
    x = rng.standard_normal((2, 7, 6, c)).astype(np.float32)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    tx = nchw(x)
    tw = torch.tensor(weight.value.reshape(3, 3, 1, c * m).transpose(3, 2, 0, 1).copy())
    ty = F.conv2d(F.pad(tx, _torch_pad(padding)), tw, stride=stride, groups=c)
    ty.backward(nchw(dy).detach())
    np.testing.assert_allclose(y, nhwc(ty), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, nhwc(tx.grad), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer", [
    Conv2d(2, 3, 2, ((0, 2), (1, 0)), algorithm="gemm"),
    Conv2d(2, 3, 1, ((2, 0), (0, 1)), algorithm="winograd2"),
    DepthwiseConv2d(3, 2, ((1, 0), (0, 2))),
    MaxPool2d(3, 2, ((0, 2), (1, 0))),
    AvgPool2d(3, 2, ((2, 0), (0, 1))),
    AvgPool2d(3, 1, ((2, 0), (0, 1)), count_include_pad=True),
], ids=lambda layer: type(layer).__name__)
def test_gradients_with_asymmetric_padding_match_finite_differences(kernel_path, layer):
    layer.build((6, 5, 2), np.random.default_rng(2))
    count = 2 * 6 * 5 * 2
    x = np.random.default_rng(3).permutation(count).reshape(2, 6, 5, 2) / count   # no ties for the max
    result = cnnkit.gradcheck(layer, x)
    assert result.max_error < 1e-6, result.errors


POOL_PADDINGS = [((0, 1), (1, 0)), ((1, 0), (0, 1)), ((1, 1), (0, 1)), ((2, 0), (1, 2))]


@pytest.mark.torch
@pytest.mark.parametrize("padding", POOL_PADDINGS)
@pytest.mark.parametrize("kind", ["max", "avg_include_pad"])
def test_pools_with_asymmetric_padding_match_torch(kernel_path, kind, padding):
    rng = np.random.default_rng(4)
    layer = MaxPool2d(3, 2, padding) if kind == "max" else AvgPool2d(3, 2, padding, count_include_pad=True)
    layer.build((7, 6, 2))
    x = rng.standard_normal((2, 7, 6, 2))
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    tx = nchw(x)
    if kind == "max":
        ty = F.max_pool2d(F.pad(tx, _torch_pad(padding), value=-np.inf), 3, 2)
    else:
        ty = F.avg_pool2d(F.pad(tx, _torch_pad(padding)), 3, 2)
    ty.backward(nchw(dy).detach())
    np.testing.assert_allclose(y, nhwc(ty), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, nhwc(tx.grad), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", POOL_PADDINGS)
@pytest.mark.parametrize("op, count_include_pad", [("MaxPool", None), ("AveragePool", 0), ("AveragePool", 1)])
def test_pools_with_asymmetric_padding_match_onnx_reference(kernel_path, op, count_include_pad, padding):
    if op == "MaxPool":
        layer, attributes = MaxPool2d(3, 2, padding), {}
    else:
        layer = AvgPool2d(3, 2, padding, count_include_pad=bool(count_include_pad))
        attributes = {"count_include_pad": count_include_pad}
    layer.build((7, 6, 2))
    x = np.random.default_rng(5).standard_normal((2, 7, 6, 2))
    want = onnx_reference_pool(op, x, layer.windows(), **attributes)
    np.testing.assert_allclose(layer.forward(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer, valid", [
    (Conv2d(2, 3, 2, ((0, 2), (1, 0))), Conv2d(2, 3, 2)),
    (DepthwiseConv2d(3, 1, ((2, 1), (0, 1)), dilation=2), DepthwiseConv2d(3, 1, dilation=2)),
    (MaxPool2d(3, 2, ((1, 0), (0, 2))), MaxPool2d(3, 2)),
    (AvgPool2d(2, 2, ((0, 1), (1, 1))), AvgPool2d(2, 2)),
], ids=lambda layer: type(layer).__name__)
def test_shape_and_receptive_field_are_zero_padding_then_the_valid_layer(layer, valid):
    pad = ZeroPadding2d(layer.padding)
    pad.build((9, 8, 2))
    valid.build(pad.output_shape)
    layer.build((9, 8, 2))
    assert layer.output_shape == valid.output_shape
    assert layer.receptive_field(FIELD) == valid.receptive_field(pad.receptive_field(FIELD))
    assert layer.param_count() == valid.param_count() and layer.macs() == valid.macs()


def test_a_model_with_asymmetric_padding_round_trips_through_its_config_and_file(tmp_path):
    inputs = cnnkit.Input((9, 8, 2))
    x = Conv2d(4, 3, padding=((1, 0), (2, 1)), name="conv")(inputs)
    x = DepthwiseConv2d(3, padding=((0, 2), (1, 1)), name="dw")(x)
    x = MaxPool2d(3, 2, padding=((1, 0), (0, 1)), name="max")(x)
    x = AvgPool2d(2, 1, padding=((0, 1), (1, 0)), name="avg")(x)
    model = cnnkit.Model(inputs, x, seed=0)
    model.save(tmp_path / "m.safetensors")
    loaded = cnnkit.load(tmp_path / "m.safetensors")
    assert [layer.padding for layer in loaded.layers[-4:]] == [[[1, 0], [2, 1]], [[0, 2], [1, 1]],
                                                                [[1, 0], [0, 1]], [[0, 1], [1, 0]]]
    sample = np.random.default_rng(6).standard_normal((2, 9, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(sample), model.forward(sample))
    assert loaded.summary(format="markdown") == model.summary(format="markdown")
    assert "max" in model.summary(format="markdown")
