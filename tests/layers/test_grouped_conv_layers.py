"""Grouped Conv2d and DepthwiseConv2d: float64 gradient checks over a table of shapes, PyTorch as
the oracle, their arithmetic, configs, the executor's ReLU6 fusion and the exact text of errors."""

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
from cnnkit.arithmetic import ReceptiveField
from cnnkit.errors import ConfigError
from cnnkit.layers import Conv2d, DepthwiseConv2d, ReLU6

GROUPED_CASES = [  # input (H, W, C), filters, groups, kernel, stride, padding, dilation
    ((6, 5, 4), 6, 2, 3, 1, 1, 1),
    ((7, 7, 6), 6, 3, 3, 2, "same", 1),
    ((8, 6, 4), 8, 4, 3, 1, 2, 2),        # groups == C, two filters a channel: the depthwise kernel
    ((5, 5, 6), 9, 3, 1, 1, 0, 1),        # 1x1 grouped (ShuffleNet's)
    ((7, 6, 4), 4, 2, (3, 1), (2, 1), "full", 1),
]


def _bias(layer, seed):
    bias = layer.parameters()["bias"]
    bias.value = np.random.default_rng(seed).standard_normal(bias.shape).astype(np.float32)


@pytest.mark.parametrize("shape, filters, groups, kernel, stride, padding, dilation", GROUPED_CASES)
@pytest.mark.parametrize("algorithm", ["auto", "gemm"])
def test_grouped_conv2d_gradients_match_finite_differences(shape, filters, groups, kernel, stride, padding,
                                                          dilation, algorithm):
    layer = Conv2d(filters, kernel, stride, padding, dilation, groups=groups, algorithm=algorithm)
    layer.build(shape, np.random.default_rng(0))
    _bias(layer, 1)
    result = cnnkit.gradcheck(layer, np.random.default_rng(2).standard_normal((2, *shape)), max_entries=120)
    assert result.max_error < 1e-6, result.errors
    assert set(result.errors) == {"input", "weight", "bias"}


DEPTHWISE_CASES = [  # input (H, W, C), depth_multiplier, kernel, stride, padding, dilation, activation
    ((6, 5, 3), 1, 3, 1, 1, 1, None),
    ((7, 8, 2), 2, 3, 2, "same", 1, None),
    ((9, 8, 3), 1, 3, 1, 2, 2, "relu"),
    ((8, 7, 2), 3, (5, 3), (2, 1), 1, 1, "relu6"),
    ((5, 5, 4), 1, 1, 1, 0, 1, None),
]


@pytest.mark.parametrize("shape, m, kernel, stride, padding, dilation, activation", DEPTHWISE_CASES)
def test_depthwise_conv2d_gradients_match_finite_differences(shape, m, kernel, stride, padding, dilation, activation):
    layer = DepthwiseConv2d(kernel, stride, padding, dilation, depth_multiplier=m, activation=activation)
    layer.build(shape, np.random.default_rng(0))
    _bias(layer, 1)
    x = 3 * np.random.default_rng(2).standard_normal((2, *shape))   # some outputs above 6 for ReLU6
    result = cnnkit.gradcheck(layer, x, max_entries=120)
    assert result.max_error < 1e-6, result.errors
    assert set(result.errors) == {"input", "weight", "bias"}


def _torch_conv(x, weight, bias, dy, **conv):
    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    tw = torch.tensor(weight.transpose(3, 2, 0, 1).copy(), requires_grad=True)   # (N, C/G, Kh, Kw)
    tb = torch.tensor(bias, requires_grad=True)
    ty = F.conv2d(tx, tw, tb, **conv)
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    return (ty.detach().numpy().transpose(0, 2, 3, 1), tx.grad.numpy().transpose(0, 2, 3, 1),
            tw.grad.numpy().transpose(2, 3, 1, 0), tb.grad.numpy())


def _assert_close(ours, theirs):
    for got, want in zip(ours, theirs):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.torch
@pytest.mark.parametrize("c, filters, groups, stride, padding, dilation",
                         [(8, 12, 4, 1, 1, 1), (6, 6, 6, 2, 1, 1), (12, 24, 12, 1, 2, 2), (4, 8, 1, 2, 0, 1)])
def test_grouped_conv2d_matches_torch(c, filters, groups, stride, padding, dilation):
    rng = np.random.default_rng(4)
    layer = Conv2d(filters, 3, stride, padding, dilation, groups=groups)
    layer.build((11, 10, c), rng)
    _bias(layer, 5)
    assert layer.parameters()["weight"].shape == (3, 3, c // groups, filters)
    x = rng.standard_normal((3, 11, 10, c), dtype=np.float32)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx = layer.backward(dy)
    params = layer.parameters()
    theirs = _torch_conv(x, params["weight"].value, params["bias"].value, dy, stride=stride, padding=padding,
                         dilation=dilation, groups=groups)
    _assert_close((y, dx, params["weight"].grad, params["bias"].grad), theirs)


@pytest.mark.torch
@pytest.mark.parametrize("m, stride, padding, activation", [(1, 1, 1, None), (1, 2, 1, "relu6"), (2, 1, 0, "relu")])
def test_depthwise_conv2d_matches_torch(m, stride, padding, activation):
    rng = np.random.default_rng(6)
    c = 8
    layer = DepthwiseConv2d(3, stride, padding, depth_multiplier=m, activation=activation)
    layer.build((12, 9, c), rng)
    _bias(layer, 7)
    x = 4 * rng.standard_normal((2, 12, 9, c), dtype=np.float32)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx = layer.backward(dy)
    params = layer.parameters()
    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    # Keras's (K, K, C, M) is PyTorch's (C*M, 1, K, K) with filter c*M + m
    tw = torch.tensor(params["weight"].value.reshape(3, 3, 1, c * m).transpose(3, 2, 0, 1).copy(), requires_grad=True)
    tb = torch.tensor(params["bias"].value, requires_grad=True)
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=padding, groups=c)
    ty = {None: ty, "relu": F.relu(ty), "relu6": F.relu6(ty)}[activation]
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    if activation == "relu6":
        assert (y == 6).any()
    _assert_close((y, dx, params["weight"].grad, params["bias"].grad),
                  (ty.detach().numpy().transpose(0, 2, 3, 1), tx.grad.numpy().transpose(0, 2, 3, 1),
                   tw.grad.numpy().transpose(2, 3, 1, 0).reshape(3, 3, c, m), tb.grad.numpy()))


@pytest.mark.parametrize("algorithm", ["depthwise", "gemm"])
def test_depthwise_conv2d_is_conv2d_with_groups_equal_to_channels_and_the_weight_reshaped(algorithm):
    rng = np.random.default_rng(8)
    depthwise = DepthwiseConv2d(3, 2, "same", depth_multiplier=2, algorithm=algorithm)
    grouped = Conv2d(8, 3, 2, "same", groups=4)
    depthwise.build((9, 8, 4), rng)
    grouped.build((9, 8, 4), rng)
    _bias(depthwise, 9)
    grouped.parameters()["weight"].value = depthwise.parameters()["weight"].value.reshape(3, 3, 1, 8)
    grouped.parameters()["bias"].value = depthwise.parameters()["bias"].value
    x = rng.standard_normal((2, 9, 8, 4)).astype(np.float32)
    y = depthwise.forward(x, training=True)
    np.testing.assert_allclose(y, grouped.forward(x, training=True), rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(depthwise.backward(dy), grouped.backward(dy), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(depthwise.parameters()["weight"].grad,
                               grouped.parameters()["weight"].grad.reshape(3, 3, 4, 2), rtol=1e-5, atol=1e-5)


def test_arithmetic_counts_each_filter_over_its_own_channels():
    grouped = Conv2d(12, 3, stride=2, padding=1, groups=4)
    grouped.build((8, 8, 8))
    assert grouped.param_count() == 12 * 3 * 3 * 8 // 4 + 12 == sum(p.size for p in grouped.parameters().values())
    assert grouped.macs() == 4 * 4 * 12 * 3 * 3 * 2
    depthwise = DepthwiseConv2d(3, stride=2, padding=1, depth_multiplier=2, use_bias=False)
    depthwise.build((8, 8, 8))
    assert depthwise.output_shape == (4, 4, 16) and depthwise.parameters()["weight"].shape == (3, 3, 8, 2)
    assert depthwise.param_count() == 3 * 3 * 8 * 2 == sum(p.size for p in depthwise.parameters().values())
    assert depthwise.macs() == 4 * 4 * 16 * 3 * 3
    plain = Conv2d(16, 3, stride=2, padding=1)
    plain.build((8, 8, 8))
    field = (ReceptiveField(), ReceptiveField())
    assert depthwise.receptive_field(field) == grouped.receptive_field(field) == plain.receptive_field(field)
    assert depthwise.windows() == plain.windows() and depthwise.unread() == (0, 0)


def test_configs_rebuild_the_layers_and_old_files_without_groups_load_ungrouped():
    model = cnnkit.Sequential([Conv2d(8, 3, padding=1, groups=2, name="g"),
                               DepthwiseConv2d(3, padding=1, depth_multiplier=2, activation="relu6", name="dw"),
                               ReLU6(name="r")], input_shape=(6, 6, 4), seed=0)
    config = model.get_config()
    assert config["layers"][0]["config"]["groups"] == 2
    assert config["layers"][1]["config"] == {
        "kernel_size": 3, "stride": 1, "padding": 1, "dilation": 1, "depth_multiplier": 2, "use_bias": True,
        "init": "auto", "activation": "relu6", "algorithm": "auto", "name": "dw", "trainable": True}
    rebuilt = cnnkit.Sequential.from_config(config)
    rebuilt.load_state_dict(model.state_dict())
    x = np.random.default_rng(1).standard_normal((2, 6, 6, 4)).astype(np.float32)
    np.testing.assert_array_equal(rebuilt.forward(x), model.forward(x))
    assert repr(model.layers[1]) == "DepthwiseConv2d(padding=1, depth_multiplier=2, activation='relu6', name='dw')"
    del config["layers"][0]["config"]["groups"]
    config["layers"][0]["config"]["filters"] = 8
    old = cnnkit.Sequential.from_config(config)
    assert old.layers[0].groups == 1 and old.layers[0].parameters()["weight"].shape == (3, 3, 4, 8)


def test_the_executor_fuses_relu6_into_the_convolution_before_it(monkeypatch):
    def model():
        return cnnkit.Sequential([Conv2d(6, 3, padding=1, groups=3), ReLU6(), DepthwiseConv2d(3, padding=1), ReLU6(),
                                  Conv2d(4, 1), ReLU6()], input_shape=(7, 6, 3), seed=3)
    fused, single = model(), model()
    passes = []
    original = ReLU6._apply
    monkeypatch.setattr(ReLU6, "_apply", lambda self, x, out: passes.append(self.name) or original(self, x, out))
    x = 5 * np.random.default_rng(4).standard_normal((2, 7, 6, 3)).astype(np.float32)
    y = fused.forward(x, training=True)
    assert passes == []   # each ReLU6 applied by the convolution before it
    expected = x
    for layer in single.layers:
        expected = layer.forward(expected, training=True)
    np.testing.assert_array_equal(y, expected)
    assert (y == 6).any() and (y == 0).any()
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    dx = fused.backward(dy)
    for layer in reversed(single.layers):
        dy = layer.backward(dy)
    np.testing.assert_allclose(dx, dy, rtol=1e-6, atol=1e-6)
    for (name, ours), theirs in zip(fused.parameters().items(), single.parameters().values()):
        np.testing.assert_allclose(ours.grad, theirs.grad, rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_depthwise_layer_computes_in_the_input_dtype_and_skips_what_backward_need_not_compute():
    layer = DepthwiseConv2d(3, padding=1, name="dw")
    layer.build((5, 5, 3), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 5, 5, 3))
    y, context = layer.call(x, training=True)
    assert y.dtype == np.float64 and context.x is x
    layer.parameters()["weight"].trainable = False
    assert layer.call_backward(np.ones_like(y), context, need_input_grad=False) is None
    assert layer.parameters()["weight"].grad is None and layer.parameters()["bias"].grad.shape == (3,)


@pytest.mark.parametrize("make, shape, message", [
    (lambda: Conv2d(8, 3, groups=4, name="conv1"), (6, 6, 6),
     "conv1: groups=4 does not divide the 6 input channels C (6 % 4 = 2); groups must divide both C=6 and N=8: "
     "a divisor of 2"),
    (lambda: Conv2d(6, 3, groups=4, name="conv1"), (6, 6, 8),
     "conv1: groups=4 does not divide the 6 filters N (6 % 4 = 2); groups must divide both C=8 and N=6: "
     "a divisor of 2"),
    (lambda: Conv2d(8, 3, groups=0, name="conv1"), (6, 6, 8),
     "conv1: groups must be at least 1 (the number of channel groups G); received groups=0"),
    (lambda: Conv2d(8, 3, groups=2.0, name="conv1"), (6, 6, 8), "conv1: groups must be an int; received groups=2.0"),
    (lambda: Conv2d(8, 3, groups=2, algorithm="winograd4", name="conv1"), (6, 6, 8),
     "conv1: algorithm='winograd4' needs groups=1; received kernel_size=3, stride=1, dilation=1, groups=2; "
     "use algorithm='auto' or 'gemm'"),
    (lambda: Conv2d(8, 3, groups=2, algorithm="depthwise", name="conv1"), (6, 6, 8),
     "conv1: algorithm='depthwise' needs one input channel per group (groups equal to the input channels); "
     "received kernel_size=3, stride=1, dilation=1, groups=2; use algorithm='auto' or 'gemm'"),
    (lambda: DepthwiseConv2d(3, depth_multiplier=0, name="dw1"), (6, 6, 8),
     "dw1: depth_multiplier must be at least 1 (the filters per input channel M); received depth_multiplier=0"),
    (lambda: DepthwiseConv2d(3, depth_multiplier="2", name="dw1"), (6, 6, 8),
     "dw1: depth_multiplier must be an int; received depth_multiplier='2'"),
    (lambda: DepthwiseConv2d(3, activation="tanh", name="dw1"), (6, 6, 8),
     "dw1: activation must be one of (None, 'relu', 'relu6'); received activation='tanh'; put other activations "
     "in a layer of their own"),
    (lambda: DepthwiseConv2d(3, algorithm="winograd2", name="dw1"), (6, 6, 8),
     "dw1: algorithm='winograd2' needs groups=1; received kernel_size=3, stride=1, dilation=1, groups=8; "
     "use algorithm='auto' or 'gemm'"),
    (lambda: DepthwiseConv2d(5, name="dw1"), (4, 6, 8),
     "dw1: kernel_size=5 does not fit the padded input along H (H + 2P = 4 < K = 5); lower kernel_size or raise "
     "padding"),
])
def test_impossible_configurations_name_the_layer_the_numbers_and_the_fix(make, shape, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        make().build(shape)
