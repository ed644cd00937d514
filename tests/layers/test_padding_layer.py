"""ZeroPadding2d: Keras's three forms of padding, the crop backward, PyTorch's pad as the oracle,
its place in the receptive field, the config, and the exact text of its errors."""

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
from cnnkit.errors import ConfigError, ShapeError
from cnnkit.layers import Conv2d, ZeroPadding2d

FORMS = [  # padding as Keras takes it, and ((top, bottom), (left, right))
    (2, ((2, 2), (2, 2))),
    ((1, 3), ((1, 1), (3, 3))),
    (((0, 1), (2, 0)), ((0, 1), (2, 0))),
    ([[1, 2], [3, 4]], ((1, 2), (3, 4))),   # as a JSON config gives it back
    (0, ((0, 0), (0, 0))),
]


def _built(padding, shape=(4, 5, 3), name=None):
    layer = ZeroPadding2d(padding, name=name)
    layer.build(shape)
    return layer


@pytest.mark.parametrize("padding, sides", FORMS)
def test_each_form_pads_its_sides_and_backward_crops(padding, sides):
    (top, bottom), (left, right) = sides
    layer = _built(padding)
    assert layer.output_shape == (4 + top + bottom, 5 + left + right, 3)
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 3)).astype(np.float32)
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))))
    assert y.dtype == np.float32 and not np.shares_memory(y, x)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx, dy[:, top:top + 4, left:left + 5])
    assert dx.flags.c_contiguous and not np.shares_memory(dx, dy)
    assert layer.param_count() == 0 and layer.macs() == 0


@pytest.mark.parametrize("padding", [1, ((0, 2), (1, 0))])
def test_gradients_match_finite_differences(padding):
    result = cnnkit.gradcheck(_built(padding), np.random.default_rng(2).standard_normal((2, 4, 5, 3)))
    assert result.max_error < 1e-6 and set(result.errors) == {"input"}


@pytest.mark.torch
def test_matches_torch_pad_forward_and_backward():
    x = np.random.default_rng(3).standard_normal((2, 6, 5, 4)).astype(np.float32)
    layer = _built(((1, 2), (3, 0)), (6, 5, 4))
    y = layer.forward(x, training=True)
    dy = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    yt = F.pad(xt, (3, 0, 1, 2))   # (left, right, top, bottom)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_array_equal(y, yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(dx, xt.grad.numpy().transpose(0, 2, 3, 1))


def test_asymmetric_padding_then_a_valid_convolution_is_a_padded_convolution():
    """Keras's ``"same"`` for a stride-2 3x3 on an even input pads (0, 1): the pair of layers is
    the one convolution with that padding, and the receptive field moves by the top padding."""
    rng = np.random.default_rng(5)
    padding, conv = _built(((0, 1), (0, 1)), (8, 8, 2)), Conv2d(3, 3, stride=2)
    conv.build(padding.output_shape, rng)
    same = Conv2d(3, 3, stride=2, padding="same")
    same.build((8, 8, 2), rng)
    same.parameters()["weight"].value = conv.parameters()["weight"].value
    x = rng.standard_normal((2, 8, 8, 2)).astype(np.float32)
    np.testing.assert_allclose(conv.forward(padding.forward(x)), same.forward(x), rtol=1e-6, atol=1e-6)
    field = (ReceptiveField(), ReceptiveField())
    assert conv.receptive_field(padding.receptive_field(field)) == same.receptive_field(field)
    two_sided = _built(((2, 1), (0, 3)), (8, 8, 2)).receptive_field(field)
    assert (two_sided[0].size, two_sided[0].start, two_sided[1].start) == (1, 0.5 - 2, 0.5)


def test_the_config_keeps_keras_form_and_a_model_file_round_trips(tmp_path):
    model = cnnkit.Sequential([ZeroPadding2d(((0, 1), (2, 0)), name="pad"), Conv2d(2, 3, name="conv")],
                              input_shape=(5, 5, 1), seed=0)
    assert model.layers[0].get_config() == {"padding": [(0, 1), (2, 0)], "name": "pad", "trainable": True}
    model.save(tmp_path / "m.safetensors")
    loaded = cnnkit.load(tmp_path / "m.safetensors")
    x = np.random.default_rng(6).standard_normal((1, 5, 5, 1)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


@pytest.mark.parametrize("padding", [-1, (1, -2), ((1, 2), (3,)), ((1, 2), 3), "same", 1.5, True, (1, 2, 3)])
def test_malformed_padding_names_the_layer_the_forms_and_the_value(padding):
    message = (f"pad1: padding must be an int, a pair (pad_h, pad_w) or a pair of pairs ((top, bottom), "
               f"(left, right)), every amount an int >= 0; received padding={padding!r}")
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        _built(padding, name="pad1")


def test_a_flat_input_and_a_wrong_gradient_are_refused():
    with pytest.raises(ShapeError, match=r"^pad1: expects an image volume \(H, W, C\); received input shape \(12,\)"):
        ZeroPadding2d(1, name="pad1").build((12,))
    layer = _built(1, name="pad1")
    layer.forward(np.zeros((2, 4, 5, 3), np.float32), training=True)
    with pytest.raises(ShapeError, match=re.escape("pad1: backward expected a gradient of shape (2, 6, 7, 3)")):
        layer.backward(np.zeros((2, 4, 5, 3), np.float32))
