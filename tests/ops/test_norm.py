"""Batch-norm kernels: a NumPy reference for the forward, PyTorch autograd for the backward."""

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

from cnnkit.ops.norm import (batch_norm_fixed, batch_norm_frozen, batch_norm_frozen_backward, batch_norm_train,
                             batch_norm_train_backward, update_running)

SHAPES = [(4, 3, 5, 2), (2, 7, 3, 6), (8, 5), (3, 1, 1, 4)]


def _data(shape, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    x = (offset + 2 * rng.standard_normal(shape)).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, gamma, beta, dy


def _to_torch(a):
    """Channels-last (B, ..., C) to PyTorch's (B, C, ...)."""
    return torch.tensor(np.moveaxis(a, -1, 1).copy(), requires_grad=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_train_forward_matches_numpy_reference(shape):
    x, gamma, beta, _ = _data(shape)
    y, x_hat, inv_std, mean, var = batch_norm_train(x, gamma, beta, 1e-5)
    x64 = x.astype(np.float64).reshape(-1, shape[-1])
    ref_mean, ref_var = x64.mean(0), x64.var(0)
    ref = ((x64 - ref_mean) / np.sqrt(ref_var + 1e-5) * gamma + beta).reshape(shape)
    assert y.dtype == x_hat.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5)
    np.testing.assert_allclose(var, ref_var, rtol=1e-4)
    np.testing.assert_allclose(x_hat * gamma + beta, y, rtol=1e-6, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overwrite", [False, True])
def test_train_backward_matches_torch(shape, overwrite):
    x, gamma, beta, dy = _data(shape, seed=1)
    _, x_hat, inv_std, _, _ = batch_norm_train(x, gamma, beta, 1e-5)
    kept = x_hat.copy()
    dx, dgamma, dbeta = batch_norm_train_backward(dy, x_hat, inv_std, gamma, overwrite_x_hat=overwrite)
    assert np.shares_memory(dx, x_hat) == overwrite
    if not overwrite:
        np.testing.assert_array_equal(x_hat, kept)
    xt, gt, bt = _to_torch(x), torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    F.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-5).backward(_to_torch(dy))
    np.testing.assert_allclose(dx, np.moveaxis(xt.grad.numpy(), 1, -1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("shape", SHAPES)
def test_fixed_statistics_forward_and_backward_match_torch(shape):
    x, gamma, beta, dy = _data(shape, seed=2, offset=100.0)  # |mean| >> std: no cancellation allowed
    rng = np.random.default_rng(3)
    mean = (100 + rng.standard_normal(shape[-1])).astype(np.float32)
    var = rng.uniform(2, 6, shape[-1]).astype(np.float32)
    y_fixed = batch_norm_fixed(x, mean, var, gamma, beta, 1e-3)
    y, x_hat, inv_std = batch_norm_frozen(x, mean, var, gamma, beta, 1e-3)
    dx, dgamma, dbeta = batch_norm_frozen_backward(dy, x_hat, inv_std, gamma)
    xt, gt, bt = _to_torch(x), torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    yt = F.batch_norm(xt, torch.tensor(mean), torch.tensor(var), gt, bt, training=False, eps=1e-3)
    yt.backward(_to_torch(dy))
    expected = np.moveaxis(yt.detach().numpy(), 1, -1)
    for ours in (y_fixed, y):
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, np.moveaxis(xt.grad.numpy(), 1, -1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), rtol=1e-4, atol=1e-5)
    assert batch_norm_frozen_backward(dy, x_hat, inv_std, gamma, need_param_grads=False)[1:] == (None, None)


def test_float64_input_stays_float64():
    x, gamma, beta, dy = _data((3, 4), seed=4)
    x = x.astype(np.float64)
    y, x_hat, inv_std, _, _ = batch_norm_train(x, gamma, beta, 1e-5)
    dx = batch_norm_train_backward(dy.astype(np.float64), x_hat, inv_std, gamma)[0]
    assert y.dtype == dx.dtype == np.float64
    assert batch_norm_fixed(x, np.zeros(4, np.float32), np.ones(4, np.float32), gamma, beta, 1e-5).dtype == np.float64


def test_update_running_is_in_place_and_keeps_dtype():
    running = np.ones(3, np.float32)
    alias = running
    update_running(running, np.array([3.0, 1.0, -1.0]), 0.25)
    assert alias.dtype == np.float32
    np.testing.assert_allclose(alias, [1.5, 1.0, 0.5])
