"""Activation layers: float64 gradient checks over a table of shapes, caches, in-place rules, errors."""

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
except ImportError:
    torch = None

import cnnkit
from cnnkit.errors import ShapeError
from cnnkit.layers import Dense, LeakyReLU, Maxout, PReLU, ReLU, ReLU6, Sigmoid, Softmax, Tanh

SHAPES = [(5, 3, 2), (2, 7, 4), (1, 1, 6), (9,), (3, 4, 12)]


def away_from_kinks(shape, seed=0):
    """float64 values with |x| in [0.1, 1.1]: finite differences never straddle the kink at 0."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 1.1, shape)


def separated_groups(shape, pieces, seed=0):
    """Each maxout group holds a shuffle of well separated values, so the winner is never in doubt."""
    rng = np.random.default_rng(seed)
    groups = rng.permuted(np.broadcast_to(np.arange(pieces) * 0.3, (*shape[:-1], shape[-1] // pieces, pieces)),
                          axis=-1)
    return (groups + rng.uniform(-0.05, 0.05, groups.shape)).reshape(shape)


def _built(layer, shape):
    layer.build(shape, np.random.default_rng(0))
    return layer


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("make", [ReLU, lambda: LeakyReLU(0.1), lambda: LeakyReLU(2.0), lambda: PReLU(-0.3),
                                  Sigmoid, Tanh, Softmax], ids=["relu", "leaky", "leaky_steep", "prelu",
                                                                "sigmoid", "tanh", "softmax"])
def test_gradcheck(make, shape):
    layer = _built(make(), shape)
    result = cnnkit.gradcheck(layer, away_from_kinks((3, *shape)))
    assert result.max_error < 1e-6, result.errors
    if isinstance(layer, PReLU):
        assert set(result.errors) == {"input", "alpha"}


@pytest.mark.parametrize("shape", SHAPES)
def test_relu6_gradcheck_on_both_sides_of_both_kinks(shape):
    x = away_from_kinks((3, *shape)) * 4 + 3   # |x - 3| in [0.4, 4.4]: below 0, inside, above 6
    x[np.abs(x) < 0.1] = 0.5                   # finite differences never straddle a kink
    x[np.abs(x - 6) < 0.1] = 5.5
    assert (x < 0).any() and (x > 6).any()
    result = cnnkit.gradcheck(_built(ReLU6(), shape), x)
    assert result.max_error < 1e-6, result.errors


@pytest.mark.torch
def test_relu6_layer_matches_torch_relu6_and_works_in_place_when_handed_its_arrays():
    rng = np.random.default_rng(1)
    x = (5 * rng.standard_normal((2, 5, 4, 3))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    yt = torch.nn.ReLU6()(xt)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    layer = _built(ReLU6(), (5, 4, 3))
    owned_x, owned_dy = x.copy(), dy.copy()
    y, context = layer.call(owned_x, training=True, owned=True)
    dx = layer.call_backward(owned_dy, context, owned=True)
    assert y is owned_x and dx is owned_dy and (y == 6).any()
    np.testing.assert_array_equal(y, yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(dx, xt.grad.numpy().transpose(0, 2, 3, 1))
    assert ReLU6.fused_as == "relu6" and layer.call_memory(owned=True).grad_in_place


@pytest.mark.parametrize("shape,pieces", [((4, 3, 6), 2), ((2, 5, 6), 3), ((1, 1, 8), 4), ((12,), 3), ((3, 2, 5), 5)])
def test_maxout_gradcheck(shape, pieces):
    layer = _built(Maxout(pieces), shape)
    assert layer.output_shape == (*shape[:-1], shape[-1] // pieces)
    assert cnnkit.gradcheck(layer, separated_groups((2, *shape), pieces)).max_error < 1e-6


@pytest.mark.torch
def test_prelu_layer_matches_torch_prelu_with_per_channel_slopes():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    layer = _built(PReLU(), (5, 4, 3))
    layer.parameters()["alpha"].value = np.array([0.1, -0.2, 0.5], np.float32)
    module = torch.nn.PReLU(num_parameters=3)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([0.1, -0.2, 0.5]))
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    yt = module(xt)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    y = layer.forward(x, training=True)
    dx = layer.backward(dy)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer.parameters()["alpha"].grad, module.weight.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_frozen_prelu_gets_no_gradient():
    layer = _built(PReLU(), (3, 2))
    layer.parameters()["alpha"].trainable = False
    layer.forward(away_from_kinks((2, 3, 2)).astype(np.float32), training=True)
    layer.backward(np.ones((2, 3, 2), np.float32))
    assert layer.parameters()["alpha"].grad is None


@pytest.mark.parametrize("make", [ReLU, ReLU6, lambda: LeakyReLU(0.2), lambda: LeakyReLU(1.5), Sigmoid, Tanh])
def test_caller_array_is_never_modified_unless_handed_over(make):
    x = np.linspace(-2, 2, 2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    original = x.copy()
    layer = _built(make(), (3, 4, 5))
    expected = layer.forward(x, training=True)
    dy = np.ones_like(x)
    expected_dx = layer.backward(dy)
    np.testing.assert_array_equal(x, original)
    np.testing.assert_array_equal(dy, 1)

    owned = x.copy()
    y, context = layer.call(owned, training=True, owned=True)
    assert y is owned and y.dtype == np.float32
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(layer.call_backward(dy, context), expected_dx)
    np.testing.assert_array_equal(x, original)


def test_inplace_relu_after_dense_keeps_dense_gradients_right():
    """Dense caches its input, not its output, so a ReLU may overwrite the Dense output."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    results = []
    for inplace in (False, True):
        dense, relu = _built(Dense(5), (6,)), _built(ReLU(), (5,))
        y, context = relu.call(dense.forward(x, training=True), training=True, owned=inplace)
        dx = dense.backward(relu.call_backward(np.ones_like(y), context))
        results.append((y, dx, dense.parameters()["weight"].grad))
    for ours, reference in zip(*results):
        np.testing.assert_array_equal(ours, reference)


def test_caches_only_in_training_and_backward_frees_them():
    x = away_from_kinks((2, 3, 4)).astype(np.float32)
    relu, maxout, prelu = _built(ReLU(), (3, 4)), _built(Maxout(2), (3, 4)), _built(PReLU(), (3, 4))
    for layer in (relu, maxout, prelu):
        layer.forward(x, training=True)
        assert layer._cache is not None
        layer.forward(x)  # an inference forward drops a stale training cache
        assert layer._cache is None
    y = relu.forward(x, training=True)
    assert relu._cache is y  # the output, shared with the next layer's input: no extra memory
    maxout.forward(x, training=True)
    assert maxout._cache.dtype == np.uint8 and maxout._cache.shape == (2, 3, 2)
    maxout.backward(np.ones((2, 3, 2), np.float32))
    assert maxout._cache is None
    with pytest.raises(ShapeError, match="backward called without a forward"):
        maxout.backward(np.ones((2, 3, 2), np.float32))


def test_wrong_input_shape_names_layer_and_shapes():
    layer = _built(ReLU(name="act3"), (4, 5, 3))
    with pytest.raises(ShapeError) as info:
        layer.forward(np.zeros((2, 4, 5), np.float32))
    assert str(info.value) == "act3: expected input of shape (B, 4, 5, 3); received (2, 4, 5)"
    maxout = _built(Maxout(3, name="maxout1"), (2, 6))
    with pytest.raises(ShapeError) as info:
        maxout.forward(np.zeros((1, 2, 5), np.float32))
    assert str(info.value) == "maxout1: expected input of shape (B, 2, 6); received (1, 2, 5)"


def test_wrong_gradient_shape_names_layer_and_shapes():
    layer = _built(Tanh(name="tanh1"), (3,))
    layer.forward(np.zeros((2, 3), np.float32), training=True)
    with pytest.raises(ShapeError) as info:
        layer.backward(np.zeros((2, 4), np.float32))
    assert str(info.value) == ("tanh1: backward expected a gradient of shape (2, 3) (the output of the last "
                               "forward); received (2, 4)")
