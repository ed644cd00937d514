"""Flatten, Dense and Dropout: PyTorch oracles, the channels-first permutation, gradient checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

import cnnkit
from cnnkit.errors import ShapeError
from cnnkit.layers import Dense, Dropout, Flatten, channels_first_dense_to_last


def _built(layer, shape):
    layer.build(shape, np.random.default_rng(0))
    return layer


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 6), fan_in=st.integers(1, 30), units=st.integers(1, 20), seed=st.integers(0, 2**16),
       use_bias=st.booleans())
@pytest.mark.torch
def test_dense_matches_torch_linear_with_all_gradients(batch, fan_in, units, seed, use_bias):
    rng = np.random.default_rng(seed)
    layer = _built(Dense(units, use_bias=use_bias), (fan_in,))
    params = layer.parameters()
    if use_bias:
        params["bias"].value = rng.standard_normal(units).astype(np.float32)
    x = rng.standard_normal((batch, fan_in)).astype(np.float32)
    dy = rng.standard_normal((batch, units)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(params["weight"].value.T.copy(), requires_grad=True)  # torch stores (out, in)
    bt = torch.tensor(params["bias"].value, requires_grad=True) if use_bias else None
    yt = F.linear(xt, wt, bt)
    yt.backward(torch.tensor(dy))
    y = layer.forward(x, training=True)
    dx = layer.backward(dy)
    assert y.dtype == dx.dtype == params["weight"].grad.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(params["weight"].grad, wt.grad.numpy().T, rtol=1e-4, atol=1e-5)
    if use_bias:
        np.testing.assert_allclose(params["bias"].grad, bt.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fan_in,units,use_bias", [(1, 1, True), (7, 3, True), (12, 5, False), (30, 2, True)])
def test_dense_gradcheck(fan_in, units, use_bias):
    layer = _built(Dense(units, use_bias=use_bias), (fan_in,))
    x = np.random.default_rng(1).standard_normal((4, fan_in))
    assert cnnkit.gradcheck(layer, x).max_error < 1e-6


def test_gradients_accumulate_and_frozen_weights_get_none():
    layer = _built(Dense(3), (4,))
    x, dy = np.ones((2, 4), np.float32), np.ones((2, 3), np.float32)
    for _ in range(2):
        layer.forward(x, training=True)
        layer.backward(dy)
    np.testing.assert_allclose(layer.parameters()["weight"].grad, 4.0)
    np.testing.assert_allclose(layer.parameters()["bias"].grad, 4.0)
    frozen = _built(Dense(3), (4,))
    frozen.parameters()["weight"].trainable = False
    frozen.forward(x, training=True)
    dx = frozen.backward(dy)
    assert frozen.parameters()["weight"].grad is None and frozen.parameters()["bias"].grad is not None
    np.testing.assert_allclose(dx, dy @ frozen.parameters()["weight"].value.T)


@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 7, 2), (6, 1, 1), (2, 3)])
def test_flatten_is_a_view_in_channels_last_order_and_gradchecks(shape):
    layer = _built(Flatten(), shape)
    x = np.arange(2 * np.prod(shape), dtype=np.float32).reshape(2, *shape)
    y = layer.forward(x, training=True)
    assert y.shape == (2, int(np.prod(shape))) and np.shares_memory(y, x) and layer._cache == 2   # only the batch size is kept
    np.testing.assert_array_equal(y[1], x[1].ravel())
    assert layer.backward(y).shape == x.shape
    assert cnnkit.gradcheck(layer, np.random.default_rng(0).standard_normal((2, *shape))).max_error < 1e-6


@pytest.mark.torch
@pytest.mark.parametrize("h,w,c,units", [(3, 4, 5, 6), (1, 1, 8, 2), (5, 2, 1, 3), (2, 2, 3, 1)])
def test_channels_first_weight_maps_onto_channels_last_flatten(h, w, c, units):
    rng = np.random.default_rng(3)
    x_nchw = rng.standard_normal((2, c, h, w)).astype(np.float32)
    linear = torch.nn.Linear(c * h * w, units)
    with torch.no_grad():
        expected = linear(torch.tensor(x_nchw).flatten(1)).numpy()
    flatten, dense = _built(Flatten(), (h, w, c)), _built(Dense(units), (h * w * c,))
    dense.parameters()["weight"].value = channels_first_dense_to_last(linear.weight.detach().numpy().T, (h, w, c))
    dense.parameters()["bias"].value = linear.bias.detach().numpy().copy()
    y = dense.forward(flatten.forward(x_nchw.transpose(0, 2, 3, 1).copy()))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    if h * w > 1 and c > 1:  # the permutation is not the identity: without it the outputs differ
        dense.parameters()["weight"].value = linear.weight.detach().numpy().T.copy()
        assert not np.allclose(dense.forward(flatten.forward(x_nchw.transpose(0, 2, 3, 1).copy())), expected)


def test_channels_first_conversion_rejects_a_weight_of_the_wrong_size():
    with pytest.raises(ShapeError) as info:
        channels_first_dense_to_last(np.zeros((10, 60), np.float32), (3, 4, 5))
    assert str(info.value) == ("channels_first_dense_to_last: weight must be (H*W*C, out) = (60, out) for "
                               "volume_shape=(3, 4, 5); received (10, 60) (a torch Linear weight is (out, in): "
                               "pass weight.T)")


def test_dropout_inference_is_the_identity_and_caches_nothing():
    layer = _built(Dropout(0.5, seed=0), (4, 4, 3))
    x = np.ones((2, 4, 4, 3), np.float32)
    assert layer.forward(x) is x and layer._cache is None


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.9])
def test_dropout_backward_applies_the_cached_mask(rate):
    layer = _built(Dropout(rate, seed=1), (5, 6))
    x = np.random.default_rng(0).uniform(1, 2, (8, 5, 6)).astype(np.float32)
    y = layer.forward(x, training=True)
    keep = layer._cache
    assert keep.dtype == bool and y.dtype == np.float32
    np.testing.assert_allclose(y, x * keep / (1 - rate), rtol=1e-6)
    np.testing.assert_array_equal(keep, y != 0)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(layer.backward(dy), dy * keep / (1 - rate), rtol=1e-6)
    assert layer._cache is None


def test_dropout_keeps_the_expectation_and_is_seeded():
    x = np.full((200, 1000), 3.0, np.float32)
    y = _built(Dropout(0.3, seed=5), (1000,)).forward(x, training=True)
    # the mean of 200000 inverted-dropout samples of 3: standard error 3*sqrt(0.3/0.7/2e5) = 0.0044
    assert abs(y.mean() - 3.0) < 0.03
    assert abs((y == 0).mean() - 0.3) < 0.01
    again = _built(Dropout(0.3, seed=5), (1000,)).forward(x, training=True)
    np.testing.assert_array_equal(y, again)
    x64 = np.ones((2, 1000))
    assert _built(Dropout(0.3, seed=5), (1000,)).forward(x64, training=True).dtype == np.float64


def test_dense_shape_errors_name_the_layer():
    layer = _built(Dense(3, name="fc7"), (4,))
    with pytest.raises(ShapeError) as info:
        layer.forward(np.zeros((2, 5), np.float32))
    assert str(info.value) == "fc7: expected input of shape (B, 4); received (2, 5)"
    layer.forward(np.zeros((2, 4), np.float32), training=True)
    with pytest.raises(ShapeError) as info:
        layer.backward(np.zeros((2, 4), np.float32))
    assert str(info.value) == ("fc7: backward expected a gradient of shape (2, 3) (the output of the last forward); "
                               "received (2, 4)")
    flatten = _built(Flatten(name="flat"), (2, 2, 3))
    with pytest.raises(ShapeError) as info:
        flatten.forward(np.zeros((2, 2, 3), np.float32))
    assert str(info.value) == "flat: expected input of shape (B, 2, 2, 3); received (2, 2, 3)"


def test_dense_caches_its_input_only_in_training():
    layer = _built(Dense(3), (4,))
    x = np.ones((2, 4), np.float32)
    layer.forward(x)
    assert layer._cache is None
    layer.forward(x, training=True)
    assert layer._cache is x
    layer.backward(np.ones((2, 3), np.float32))
    assert layer._cache is None
