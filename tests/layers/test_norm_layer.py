"""BatchNorm2d: PyTorch's F.batch_norm as the oracle in every mode, gradient checks, caches, errors."""

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
from cnnkit.layers import BatchNorm2d

SHAPES = [(3, 5, 2), (4, 2, 6), (1, 1, 3), (7,), (2, 3, 1)]


def _layer(shape, seed=0, momentum=0.1, eps=1e-5):
    layer = BatchNorm2d(momentum=momentum, eps=eps)
    layer.build(shape, np.random.default_rng(0))
    rng = np.random.default_rng(seed)
    c = shape[-1]
    layer.parameters()["weight"].value = rng.uniform(0.5, 1.5, c).astype(np.float32)
    layer.parameters()["bias"].value = rng.standard_normal(c).astype(np.float32)
    layer.writable_buffers()["running_mean"][:] = rng.standard_normal(c)
    layer.writable_buffers()["running_var"][:] = rng.uniform(0.5, 2.0, c)
    return layer


def _nc(a):
    return torch.tensor(np.moveaxis(a, -1, 1).copy())


def _last(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from(SHAPES), batch=st.integers(2, 5), seed=st.integers(0, 2**16),
       training=st.booleans(), momentum=st.sampled_from([0.1, 0.5, 1.0]))
@pytest.mark.torch
def test_matches_torch_batch_norm_including_running_stats(shape, batch, seed, training, momentum):
    layer = _layer(shape, seed, momentum)
    rng = np.random.default_rng(seed + 1)
    x = (2 + 3 * rng.standard_normal((batch, *shape))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta = (torch.tensor(layer.parameters()[k].value, requires_grad=True) for k in ("weight", "bias"))
    mean_t, var_t = (torch.tensor(layer.buffers()[k]) for k in ("running_mean", "running_var"))
    xt = _nc(x).requires_grad_()
    yt = F.batch_norm(xt, mean_t, var_t, gamma, beta, training=training, momentum=momentum, eps=1e-5)
    yt.backward(_nc(dy))
    layer.frozen_stats = not training  # backward after an eval-style forward needs the frozen mode
    y = layer.forward(x, training=True)
    dx = layer.backward(dy)
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(y, _last(yt), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, _last(xt.grad), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.parameters()["weight"].grad, gamma.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.parameters()["bias"].grad, beta.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.buffers()["running_mean"], mean_t.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer.buffers()["running_var"], var_t.numpy(), rtol=1e-4, atol=1e-6)


def test_inference_uses_running_stats_and_changes_nothing():
    layer = _layer((3, 4, 2), seed=3)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 2)).astype(np.float32)
    stats = {k: v.copy() for k, v in layer.buffers().items()}
    gamma, beta = (layer.parameters()[k].value for k in ("weight", "bias"))
    y = layer.forward(x)
    expected = (x - stats["running_mean"]) / np.sqrt(stats["running_var"] + 1e-5) * gamma + beta
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    for key, value in stats.items():
        np.testing.assert_array_equal(layer.buffers()[key], value)
    assert layer._cache is None


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("frozen", [False, True])
def test_gradcheck_in_training_and_frozen_stats_modes(shape, frozen):
    layer = _layer(shape, seed=4)
    layer.frozen_stats = frozen
    x = 1 + 2 * np.random.default_rng(5).standard_normal((3, *shape))
    result = cnnkit.gradcheck(layer, x)
    assert result.max_error < 1e-6, result.errors
    assert set(result.errors) == {"input", "weight", "bias"}


def test_frozen_stats_leaves_running_stats_alone_and_caches_only_in_training():
    layer = _layer((2, 2, 3), seed=6)
    layer.frozen_stats = True
    stats = {k: v.copy() for k, v in layer.buffers().items()}
    x = np.random.default_rng(0).standard_normal((4, 2, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(layer.forward(x, training=True), layer.forward(x), rtol=1e-6)
    assert layer._cache is None  # the inference forward after the training one dropped it
    layer.forward(x, training=True)
    layer.backward(np.ones_like(x))
    assert layer._cache is None
    for key, value in stats.items():
        np.testing.assert_array_equal(layer.buffers()[key], value)


def test_training_cache_is_the_normalised_input_and_backward_frees_it():
    layer = _layer((3, 3, 4))
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32)
    y = layer.forward(x, training=True)
    mode, x_hat, inv_std = layer._cache
    assert mode == "batch" and x_hat.shape == x.shape and inv_std.shape == (4,)
    assert not np.shares_memory(x_hat, y) and not np.shares_memory(x_hat, x)
    layer.backward(np.ones_like(x))
    assert layer._cache is None
    with pytest.raises(ShapeError, match="backward called without a forward"):
        layer.backward(np.ones_like(x))


def test_frozen_parameters_get_no_gradient_but_input_does():
    layer = _layer((5,))
    for param in layer.parameters().values():
        param.trainable = False
    for frozen in (False, True):
        layer.frozen_stats = frozen
        layer.forward(np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32), training=True)
        assert layer.backward(np.ones((4, 5), np.float32)).shape == (4, 5)
        assert all(param.grad is None for param in layer.parameters().values())


def test_one_value_per_channel_cannot_train():
    layer = _layer((1, 1, 3))
    layer.name = "bn1"
    with pytest.raises(ShapeError) as info:
        layer.forward(np.zeros((1, 1, 1, 3), np.float32), training=True)
    assert str(info.value) == ("bn1: training needs more than one value per channel to estimate a variance; "
                               "received input shape (1, 1, 1, 3); use a batch of at least 2, or "
                               "frozen_stats = True to normalise with the running statistics")
    assert layer.forward(np.zeros((1, 1, 1, 3), np.float32)).shape == (1, 1, 1, 3)


def test_wrong_shapes_name_the_layer():
    layer = _layer((4, 4, 8))
    layer.name = "bn2"
    with pytest.raises(ShapeError) as info:
        layer.forward(np.zeros((2, 4, 4, 6), np.float32))
    assert str(info.value) == "bn2: expected input of shape (B, 4, 4, 8); received (2, 4, 4, 6)"
    layer.forward(np.zeros((2, 4, 4, 8), np.float32) + np.arange(8), training=True)
    with pytest.raises(ShapeError) as info:
        layer.backward(np.zeros((2, 4, 4), np.float32))
    assert str(info.value) == ("bn2: backward expected a gradient of shape (2, 4, 4, 8) (the output of the last "
                               "forward); received (2, 4, 4)")
