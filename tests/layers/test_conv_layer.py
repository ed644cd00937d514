"""Conv2d forward/backward: float64 gradient checks over a table of shapes, caches, frozen
parameters, dtypes and the exact text of shape errors."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import ShapeError
from cnnkit.layers import Conv2d

GRADCHECK_CASES = [  # input (H, W, C), filters, kernel, stride, padding, dilation
    ((5, 5, 2), 3, 1, 1, 0, 1),
    ((6, 5, 2), 2, 1, 2, 1, 1),
    ((7, 7, 2), 3, 3, 1, 1, 1),
    ((8, 6, 3), 2, 3, 2, 0, 1),
    ((9, 9, 2), 2, 3, 3, 2, 1),
    ((7, 9, 2), 3, 3, 2, "same", 1),
    ((6, 6, 1), 2, 3, 1, "full", 1),
    ((9, 8, 2), 2, 3, 1, 2, 2),
    ((9, 9, 1), 2, 5, 2, 2, 1),
    ((8, 10, 1), 2, 7, 1, 3, 1),
    ((8, 7, 2), 2, (3, 5), (2, 1), "same", (1, 2)),
    ((10, 9, 1), 2, (5, 1), 3, 0, 1),
]


@pytest.mark.parametrize("shape, filters, kernel, stride, padding, dilation", GRADCHECK_CASES)
def test_conv2d_gradients_match_finite_differences(shape, filters, kernel, stride, padding, dilation):
    layer = Conv2d(filters, kernel, stride, padding, dilation)
    layer.build(shape, np.random.default_rng(0))
    layer.parameters()["bias"].value[:] = np.random.default_rng(1).standard_normal(filters)
    x = np.random.default_rng(2).standard_normal((2, *shape))
    result = cnnkit.gradcheck(layer, x, max_entries=150)
    assert result.max_error < 1e-6, result.errors
    assert set(result.errors) == {"input", "weight", "bias"}


def _layer(**kwargs) -> Conv2d:
    layer = Conv2d(4, 3, padding=1, name="conv1", **kwargs)
    layer.build((6, 5, 3), np.random.default_rng(0))
    return layer


def test_inference_keeps_no_cache_and_training_caches_only_the_input():
    layer = _layer()
    x = np.ones((2, 6, 5, 3), np.float32)
    y = layer.forward(x)
    assert layer._cache is None and y.shape == (2, 6, 5, 4) and y.dtype == np.float32
    layer.forward(x, training=True)
    assert layer._cache is x
    dx = layer.backward(np.ones_like(y))
    assert layer._cache is None and dx.shape == x.shape and dx.dtype == np.float32
    with pytest.raises(ShapeError, match="conv1: backward called without a forward"):
        layer.backward(np.ones_like(y))


def test_backward_adds_into_parameter_gradients():
    layer = _layer()
    x = np.random.default_rng(3).standard_normal((2, 6, 5, 3)).astype(np.float32)
    dy = np.ones((2, 6, 5, 4), np.float32)
    layer.forward(x, training=True)
    layer.backward(dy)
    first = layer.parameters()["weight"].grad.copy()
    np.testing.assert_allclose(layer.parameters()["bias"].grad, np.full(4, 60.0))
    layer.forward(x, training=True)
    layer.backward(dy)
    np.testing.assert_allclose(layer.parameters()["weight"].grad, 2 * first, rtol=1e-6)


def test_frozen_parameters_get_no_gradient_but_dx_is_returned():
    layer = _layer()
    for param in layer.parameters().values():
        param.trainable = False
    x = np.random.default_rng(4).standard_normal((1, 6, 5, 3)).astype(np.float32)
    layer.forward(x, training=True)
    dx = layer.backward(np.ones((1, 6, 5, 4), np.float32))
    assert all(param.grad is None for param in layer.parameters().values())
    assert dx.shape == x.shape and np.abs(dx).sum() > 0


def test_layer_without_bias_and_float64_input():
    layer = _layer(use_bias=False)
    assert set(layer.parameters()) == {"weight"}
    x = np.random.default_rng(5).standard_normal((1, 6, 5, 3))
    y = layer.forward(x, training=True)
    assert y.dtype == np.float64 and layer.backward(np.ones_like(y)).dtype == np.float64


@pytest.mark.parametrize("bad_shape", [(2, 6, 5, 4), (2, 5, 6, 3), (6, 5, 3), (2, 6, 5, 3, 1)])
def test_wrong_input_shape_names_the_layer_and_both_shapes(bad_shape):
    layer = _layer()
    with pytest.raises(ShapeError) as info:
        layer.forward(np.zeros(bad_shape, np.float32))
    assert str(info.value) == f"conv1: expected input of shape (B, 6, 5, 3); received {bad_shape}"
