"""Conv2d forward/backward: float64 gradient checks over a table of shapes, caches, frozen
parameters, dtypes and the exact text of shape errors."""

from __future__ import annotations

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

import cnnkit
from cnnkit.errors import ConfigError, ShapeError
from cnnkit.layers import Conv2d, ReLU, ReLU6, Sigmoid

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
    layer.parameters()["bias"].value = np.random.default_rng(1).standard_normal(filters).astype(np.float32)
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
    assert layer._cache[0] is x and layer._cache[1] is None
    dx = layer.backward(np.ones_like(y))
    assert layer._cache is None and dx.shape == x.shape and dx.dtype == np.float32
    with pytest.raises(ShapeError, match="conv1: backward called without a forward"):
        layer.backward(np.ones_like(y))


def test_winograd_filters_are_transformed_once_per_weight_version_and_the_context_keeps_its_own(monkeypatch):
    from cnnkit.ops import conv as conv_ops
    calls = []
    transform = conv_ops.transform_filter
    monkeypatch.setattr(conv_ops, "transform_filter", lambda w, tile: calls.append(tile) or transform(w, tile))
    layer = Conv2d(4, 3, padding=1, algorithm="winograd4")
    layer.build((6, 6, 4), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 6, 6, 4)).astype(np.float32)
    y, context = layer.call(x, training=True)
    layer.call_backward(np.ones_like(y), context)
    layer.forward(x)
    assert calls == [4]                                # forward, backward and forward again: one transform
    weight = layer.parameters()["weight"]
    with weight.writing() as array:
        array *= 2
    np.testing.assert_allclose(layer.forward(x) - layer.parameters()["bias"].value, 2 * y, rtol=1e-5, atol=1e-5)
    assert calls == [4, 4] and context.filters is not layer._filter_cache


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


# ----------------------------------------------------------------- fused ReLU (activation="relu")

@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("algorithm", ["gemm", "winograd2", "winograd4"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation, layer_class", [("relu", ReLU), ("relu6", ReLU6)])
def test_fused_relu_equals_a_relu_layer_after_the_convolution(algorithm, dtype, compiled, activation, layer_class,
                                                               monkeypatch):
    monkeypatch.setenv("CNNKIT_JIT", "1" if compiled else "0")
    rng = np.random.default_rng(3)
    fused, plain, relu = Conv2d(5, 3, padding=1, activation=activation, algorithm=algorithm), \
        Conv2d(5, 3, padding=1, algorithm=algorithm), layer_class()
    for layer, shape in ((fused, (9, 7, 4)), (plain, (9, 7, 4)), (relu, (9, 7, 5))):
        layer.build(shape, np.random.default_rng(1))
    bias = rng.standard_normal(5).astype(np.float32)
    fused.parameters()["bias"].value, plain.parameters()["bias"].value = bias.copy(), bias.copy()
    plain.parameters()["weight"].value = fused.parameters()["weight"].value.copy()   # He there, Glorot here
    x = (6 * rng.standard_normal((3, 9, 7, 4))).astype(dtype)   # outputs on both sides of 6 too
    y = fused.forward(x, training=True)
    np.testing.assert_array_equal(y, relu.forward(plain.forward(x, training=True), training=True))
    assert (y == 0).any() and (y > 0).any() and (activation == "relu" or (y == 6).any())
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(fused.backward(dy), plain.backward(relu.backward(dy)), rtol=1e-6, atol=1e-6)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(fused.parameters()[name].grad, plain.parameters()[name].grad, rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("algorithm", ["gemm", "winograd4"])
def test_fused_relu_gradients_match_finite_differences(algorithm):
    layer = Conv2d(3, 3, padding=1, activation="relu", algorithm=algorithm)
    layer.build((7, 6, 2), np.random.default_rng(0))
    result = cnnkit.gradcheck(layer, np.random.default_rng(1).standard_normal((2, 7, 6, 2)))
    assert result.passed(1e-6), result.errors


@pytest.mark.torch
def test_fused_relu_matches_torch():
    rng = np.random.default_rng(4)
    layer = Conv2d(24, 3, padding=1, activation="relu")     # enough tiles for Winograd F(4x4)
    layer.build((12, 10, 20), rng)
    x = rng.standard_normal((6, 12, 10, 20), dtype=np.float32)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx = layer.backward(dy)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    tw = torch.from_numpy(layer.parameters()["weight"].value.transpose(3, 2, 0, 1).copy()).requires_grad_()
    tb = torch.zeros(24, requires_grad=True)
    ty = F.relu(F.conv2d(tx, tw, tb, padding=1))
    ty.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(y, ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.parameters()["weight"].grad, tw.grad.numpy().transpose(2, 3, 1, 0),
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(layer.parameters()["bias"].grad, tb.grad.numpy(), rtol=1e-4, atol=1e-3)


def test_fused_relu_is_configured_like_keras_and_protects_its_output():
    with pytest.raises(ConfigError, match=r"^conv1: activation must be one of \(None, 'relu', 'relu6'\); received "
                                          r"activation='tanh'; put other activations in a layer of their own$"):
        Conv2d(4, 3, activation="tanh", name="conv1").build((6, 5, 3))
    model = cnnkit.Sequential([Conv2d(4, 3, padding=1, activation="relu"), Sigmoid()], input_shape=(6, 5, 3))
    assert model.layers[0].init_scheme == "glorot" and model.layers[0].fresh_output is False
    assert model.layers[0].get_config()["activation"] == "relu"
    rebuilt = cnnkit.Sequential.from_config(model.get_config())
    assert rebuilt.layers[0].activation == "relu"
