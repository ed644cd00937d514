"""Padding2d: constant, reflect and edge padding against NumPy's pad and PyTorch's F.pad (forward
and input gradient), finite differences, the config and a model file, and the exact errors."""

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
from cnnkit.layers import Conv2d, Padding2d, ZeroPadding2d
from window_oracles import nchw, nhwc

TORCH_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}
PADDINGS = [1, (2, 1), ((0, 2), (3, 1)), ((2, 0), (0, 0)), [[1, 3], [2, 0]]]


def _built(padding, mode, value=0.0, shape=(4, 5, 3), name=None):
    layer = Padding2d(padding, mode, value, name=name)
    layer.build(shape)
    return layer


def _sides(layer):
    return tuple(win.pads for win in layer.windows())


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_forward_is_numpy_pad(mode, padding):
    layer = _built(padding, mode, value=-1.5)
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 3)).astype(np.float32)
    y = layer.forward(x)
    kwargs = {"constant_values": -1.5} if mode == "constant" else {}
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), *_sides(layer), (0, 0)), mode=mode, **kwargs))
    assert y.dtype == np.float32 and not np.shares_memory(x, y) and layer.output_shape == y.shape[1:]


@pytest.mark.torch
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_forward_and_input_gradient_match_torch_pad(mode, padding):
    layer = _built(padding, mode, value=0.25)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 5, 3))
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    (top, bottom), (left, right) = _sides(layer)
    tx = nchw(x)
    value = {"value": 0.25} if mode == "constant" else {}
    ty = F.pad(tx, (left, right, top, bottom), mode=TORCH_MODES[mode], **value)
    ty.backward(nchw(dy).detach())
    np.testing.assert_array_equal(y, nhwc(ty))
    np.testing.assert_allclose(dx, nhwc(tx.grad), rtol=1e-12, atol=1e-12)
    assert dx.flags.c_contiguous and not np.shares_memory(dx, dy)


@pytest.mark.parametrize("padding", [1, ((0, 3), (2, 1))])
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_gradients_match_finite_differences(mode, padding):
    result = cnnkit.gradcheck(_built(padding, mode, 2.0), np.random.default_rng(2).standard_normal((2, 4, 5, 3)))
    assert result.max_error < 1e-6 and set(result.errors) == {"input"}


def test_edge_padding_may_exceed_the_input_and_a_single_row_repeats():
    layer = _built(((3, 4), (0, 2)), "edge", shape=(1, 2, 1))
    x = np.array([[[[1.0], [2.0]]]])
    np.testing.assert_array_equal(layer.forward(x, training=True)[0, :, :, 0], np.tile([1.0, 2.0, 2.0, 2.0], (8, 1)))
    dx = layer.backward(np.ones((1, 8, 4, 1)))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[8.0, 24.0]])   # each padded copy sends its gradient back


def test_shape_receptive_field_and_counts_are_zero_paddings():
    zero, reflect = ZeroPadding2d(((1, 2), (0, 3))), _built(((1, 2), (0, 3)), "reflect", shape=(6, 6, 2))
    zero.build((6, 6, 2))
    field = (ReceptiveField(), ReceptiveField())
    assert reflect.output_shape == zero.output_shape == (9, 9, 2)
    assert reflect.receptive_field(field) == zero.receptive_field(field)
    assert reflect.param_count() == reflect.macs() == 0


def test_the_config_and_a_model_file_round_trip(tmp_path):
    model = cnnkit.Sequential([Padding2d(((0, 1), (2, 1)), "reflect", name="pad"), Conv2d(2, 3, name="conv"),
                               Padding2d(1, value=-3.0, name="pad2")], input_shape=(5, 5, 1), seed=0)
    assert model.layers[0].get_config() == {"padding": [(0, 1), (2, 1)], "mode": "reflect", "value": 0.0,
                                            "name": "pad", "trainable": True}
    model.save(tmp_path / "m.safetensors")
    loaded = cnnkit.load(tmp_path / "m.safetensors")
    x = np.random.default_rng(3).standard_normal((1, 5, 5, 1)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    assert repr(loaded.layers[2]) == "Padding2d(value=-3.0, name='pad2')"


@pytest.mark.parametrize("padding, shape, message", [
    (((0, 4), (0, 0)), (4, 5, 1), "pad1: reflect padding must be smaller than the input along H (H = 4); received "
                                  "padding=((0, 4), (0, 0)) ((0, 4) along H); lower padding or use mode='edge'"),
    (5, (6, 5, 1), "pad1: reflect padding must be smaller than the input along W (W = 5); received padding=5 "
                   "((5, 5) along W); lower padding or use mode='edge'"),
    (1, (1, 5, 1), "pad1: reflect padding must be smaller than the input along H (H = 1); received padding=1 "
                   "((1, 1) along H); lower padding or use mode='edge'"),
])
def test_reflect_padding_as_large_as_the_input_is_refused(padding, shape, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        _built(padding, "reflect", shape=shape, name="pad1")


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "wrap"}, "pad1: mode must be one of ('constant', 'reflect', 'edge'); received mode='wrap'"),
    ({"mode": "constant", "value": "0"}, "pad1: value must be a finite number; received value='0'"),
    ({"mode": "constant", "value": float("nan")}, "pad1: value must be a finite number; received value=nan"),
    ({"mode": "edge", "padding": -1}, "pad1: padding must be an int, a pair (pad_h, pad_w) or a pair of pairs "
                                      "((top, bottom), (left, right)), every amount an int >= 0; received padding=-1"),
])
def test_bad_arguments_are_refused_with_the_fix(kwargs, message):
    arguments = {"padding": 1, **kwargs}
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        Padding2d(**arguments, name="pad1").build((4, 4, 1))
