"""Activation kernels: PyTorch as the oracle for values and gradients, a NumPy reference for maxout."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

from cnnkit.ops.activation import (leaky_relu, leaky_relu_backward, maxout, maxout_backward, prelu,
                                   prelu_backward, relu, relu6, relu6_backward, relu_backward, sigmoid,
                                   sigmoid_backward, tanh, tanh_backward)

shapes = st.sampled_from([(2, 5), (3, 4, 6, 3), (1, 7, 3, 8), (4, 2, 5, 1), (2, 3, 3, 16)])


def _pair(shape, seed):
    rng = np.random.default_rng(seed)
    return (3 * rng.standard_normal(shape)).astype(np.float32), rng.standard_normal(shape).astype(np.float32)


def _torch_grad(fn, x, dy):
    xt = torch.tensor(x, requires_grad=True)
    yt = fn(xt)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy()


def _close(actual, expected):
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.torch
@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), slope=st.sampled_from([0.0, 0.01, 0.2, 1.0, 3.0]))
def test_leaky_relu_matches_torch(shape, seed, slope):
    x, dy = _pair(shape, seed)
    y_ref, dx_ref = _torch_grad(lambda t: F.leaky_relu(t, slope), x, dy)
    y = leaky_relu(x, slope)
    _close(y, y_ref)
    _close(leaky_relu_backward(dy, y, slope), dx_ref)


@pytest.mark.torch
@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_relu_sigmoid_tanh_match_torch(shape, seed):
    x, dy = _pair(shape, seed)
    for ours, backward, theirs in ((relu, relu_backward, torch.relu), (sigmoid, sigmoid_backward, torch.sigmoid),
                                   (tanh, tanh_backward, torch.tanh)):
        y_ref, dx_ref = _torch_grad(theirs, x, dy)
        y = ours(x)
        _close(y, y_ref)
        _close(backward(dy, y), dx_ref)


@pytest.mark.torch
@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_relu6_matches_torch(shape, seed):
    x, dy = _pair(shape, seed)
    x[..., 0] = 6.0   # the upper kink itself, where both give no gradient
    x.flat[1] = 0.0   # and the lower one
    y_ref, dx_ref = _torch_grad(torch.nn.functional.relu6, x, dy)
    y = relu6(x)
    _close(y, y_ref)
    _close(relu6_backward(dy, y), dx_ref)


def test_relu6_caps_at_6_and_works_in_the_arrays_it_is_given():
    x = np.array([-1.0, 0.0, 3.0, 6.0, 7.5], np.float32)
    dy = np.ones(5, np.float32)
    y = relu6(x)
    assert y.dtype == np.float32 and y.tolist() == [0.0, 0.0, 3.0, 6.0, 6.0]
    assert relu6_backward(dy, y).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0] and dy.tolist() == [1.0] * 5
    assert relu6(x, out=x) is x and x.tolist() == y.tolist()
    assert relu6_backward(dy, y, out=dy) is dy and dy.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert relu6(np.array([100.0])).dtype == np.float64


@pytest.mark.torch
@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_prelu_matches_torch_on_nchw(shape, seed):
    x, dy = _pair(shape, seed)
    alpha = np.random.default_rng(seed).uniform(-0.5, 0.5, shape[-1]).astype(np.float32)
    to_torch = (0, 3, 1, 2) if len(shape) == 4 else (0, 1)
    module = torch.nn.PReLU(num_parameters=shape[-1])
    with torch.no_grad():
        module.weight.copy_(torch.tensor(alpha))
    xt = torch.tensor(x.transpose(to_torch).copy(), requires_grad=True)
    yt = module(xt)
    yt.backward(torch.tensor(dy.transpose(to_torch).copy()))
    back = np.argsort(to_torch)
    y = prelu(x, alpha)
    dx, dalpha = prelu_backward(dy, x, alpha)
    _close(y, yt.detach().numpy().transpose(back))
    _close(dx, xt.grad.numpy().transpose(back))
    np.testing.assert_allclose(dalpha, module.weight.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_prelu_backward_skips_alpha_grad_when_not_needed():
    x, dy = _pair((2, 3, 3, 4), 0)
    dx, dalpha = prelu_backward(dy, x, np.full(4, 0.25, np.float32), need_alpha_grad=False)
    assert dalpha is None and dx.shape == x.shape


@pytest.mark.torch
def test_sigmoid_is_stable_and_precise_for_large_inputs():
    x = np.array([-1e4, -200.0, -30.0, -1.0, 0.0, 1.0, 30.0, 200.0, 1e4], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp would raise here
        y = sigmoid(x)
    expected = torch.sigmoid(torch.tensor(x)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=0)  # keeps 9.4e-14 at x = -30, not 0
    assert y[2] > 0 and y[0] == 0.0 and y[-1] == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_keep_the_dtype_and_never_touch_the_input(dtype):
    x = np.linspace(-3, 3, 24, dtype=dtype).reshape(2, 3, 4)
    before = x.copy()
    dy = np.ones_like(x)
    for y in (relu(x), leaky_relu(x, 0.1), leaky_relu(x, 2.0), sigmoid(x), tanh(x), prelu(x, np.ones(4, np.float32))):
        assert y.dtype == dtype and not np.shares_memory(y, x)
    for dx in (relu_backward(dy, x), leaky_relu_backward(dy, x, 0.1), sigmoid_backward(dy, x), tanh_backward(dy, x)):
        assert dx.dtype == dtype
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("kernel", [relu, sigmoid, tanh, lambda x, out: leaky_relu(x, 0.1, out),
                                    lambda x, out: leaky_relu(x, 2.5, out)])
def test_out_argument_computes_in_place_with_the_same_values(kernel):
    x = np.linspace(-4, 4, 30, dtype=np.float32).reshape(5, 6)
    expected = kernel(x, None)
    work = x.copy()
    result = kernel(work, work)
    assert result is work
    np.testing.assert_array_equal(work, expected)


def _maxout_reference(x, pieces):
    """Loop over every output unit: the max of its group, gradient 1 to the first maximum."""
    *lead, channels = x.shape
    flat = x.reshape(-1, channels)
    out = np.empty((flat.shape[0], channels // pieces), x.dtype)
    winner = np.zeros_like(flat)
    for row in range(flat.shape[0]):
        for unit in range(channels // pieces):
            group = flat[row, unit * pieces:(unit + 1) * pieces]
            best = max(range(pieces), key=lambda k: (group[k], -k))
            out[row, unit] = group[best]
            winner[row, unit * pieces + best] = 1
    return out.reshape(*lead, channels // pieces), winner.reshape(x.shape)


@pytest.mark.parametrize("shape,pieces", [((2, 3, 4, 6), 2), ((2, 3, 4, 6), 3), ((1, 5, 2, 8), 4), ((3, 6), 6),
                                          ((4, 9), 1), ((2, 2, 2, 4), 2)])
def test_maxout_matches_loop_reference(shape, pieces):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., :2] = 0.5  # ties inside a group go to the first piece
    y, argmax = maxout(x, pieces)
    y_ref, winner = _maxout_reference(x, pieces)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = maxout_backward(dy, argmax, pieces)
    np.testing.assert_array_equal(dx, winner * np.repeat(dy, pieces, axis=-1))
    assert argmax.dtype == np.uint8 and dx.dtype == np.float32
