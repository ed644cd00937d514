"""The depthwise kernel: against a loop over channels written from the definition, in blocks of
rows and of images, with several filters per channel, a fused ReLU, skipped gradients, dtypes,
and PyTorch's grouped convolution as the oracle."""

from __future__ import annotations

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

from cnnkit.arithmetic import Geometry, Window, as_pair, windows_2d
from cnnkit.ops import depthwise_conv2d, depthwise_conv2d_backward, tuning


def _padded(x, windows):
    wh, ww = windows
    return np.pad(x, ((0, 0), wh.pads, ww.pads, (0, 0)))


def depthwise_reference(x, w, b, windows):
    """The definition, one channel and one filter at a time: output ``c*M + m`` is channel ``c``
    cross-correlated with ``w[:, :, c, m]``."""
    xp = _padded(x, windows)
    (wh, ww), (kh, kw, c, m) = windows, w.shape
    ho, wo = windows.output_hw(x.shape[1:3])
    y = np.zeros((x.shape[0], ho, wo, c * m))
    for channel in range(c):
        for filt in range(m):
            for p in range(kh):
                for q in range(kw):
                    rows = slice(p * wh.dilation, p * wh.dilation + (ho - 1) * wh.stride + 1, wh.stride)
                    cols = slice(q * ww.dilation, q * ww.dilation + (wo - 1) * ww.stride + 1, ww.stride)
                    y[..., channel * m + filt] += xp[:, rows, cols, channel] * w[p, q, channel, filt]
    return y + (0 if b is None else b)


def depthwise_backward_reference(dy, x, w, windows):
    """Each output sends ``dy`` back to the pixels and the weight it used, one position at a time."""
    xp = _padded(x, windows)
    (wh, ww), (kh, kw, c, m) = windows, w.shape
    dxp, dw = np.zeros_like(xp), np.zeros(w.shape)
    dy5 = dy.reshape(*dy.shape[:3], c, m)
    for i in range(dy.shape[1]):
        for j in range(dy.shape[2]):
            for p in range(kh):
                for q in range(kw):
                    r, s = i * wh.stride + p * wh.dilation, j * ww.stride + q * ww.dilation
                    dw[p, q] += np.einsum("bc,bcm->cm", xp[:, r, s], dy5[:, i, j])
                    dxp[:, r, s] += np.einsum("bcm,cm->bc", dy5[:, i, j], w[p, q])
    dx = dxp[:, wh.pad_before:dxp.shape[1] - wh.pad_after, ww.pad_before:dxp.shape[2] - ww.pad_after]
    return dx, dw, dy.sum(axis=(0, 1, 2))


CASES = [  # (H, W), channels C, multiplier M, kernel, stride, padding, dilation
    ((7, 6), 3, 1, 3, 1, 1, 1),
    ((8, 9), 4, 1, 3, 2, 1, 1),
    ((9, 8), 2, 3, 3, 1, "same", 2),
    ((7, 7), 5, 2, 5, 2, 2, 1),
    ((6, 9), 3, 1, (1, 3), (1, 2), ((0, 0), (1, 2)), 1),
    ((8, 8), 2, 1, 3, 2, ((0, 1), (0, 1)), 1),   # Keras's "same" for a stride-2 3x3 on an even input
]


def _windows(size, kernel, stride, padding, dilation):
    """``windows_2d``, or for ``((top, bottom), (left, right))`` padding the windows made by hand."""
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        return Geometry(Window(k, s, *pads, d) for k, s, pads, d in
                        zip(as_pair(kernel, "k", "t"), as_pair(stride, "s", "t"), padding, as_pair(dilation, "d", "t")))
    return windows_2d(size, kernel, stride, padding, dilation, "dw")


@pytest.mark.parametrize("block", [1 << 16, 40, 1])   # whole images a block; a few rows; one row a block
@pytest.mark.parametrize("size, c, m, kernel, stride, padding, dilation", CASES)
def test_forward_and_backward_match_the_definition(size, c, m, kernel, stride, padding, dilation, block,
                                                   monkeypatch):
    monkeypatch.setattr(tuning, "DEPTHWISE_BLOCK_ELEMENTS", block)
    windows = _windows(size, kernel, stride, padding, dilation)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, *size, c))
    w, b = rng.standard_normal((*windows.kernel, c, m)), rng.standard_normal(c * m)
    y = depthwise_conv2d(x, w, b, windows)
    np.testing.assert_allclose(y, depthwise_reference(x, w, b, windows), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    reference = depthwise_backward_reference(dy, x, w, windows)
    for ours, theirs in zip(depthwise_conv2d_backward(dy, x, w, windows), reference):
        np.testing.assert_allclose(ours, theirs, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("m", [1, 2])
def test_fused_relu_is_the_relu_of_the_output_and_masks_the_gradient(m, monkeypatch):
    monkeypatch.setattr(tuning, "DEPTHWISE_BLOCK_ELEMENTS", 64)
    windows = windows_2d((8, 7), 3, 1, 1, 1, "dw")
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 8, 7, 3)), rng.standard_normal((3, 3, 3, m)), rng.standard_normal(3 * m)
    plain = depthwise_conv2d(x, w, b, windows)
    y = depthwise_conv2d(x, w, b, windows, relu=True)
    np.testing.assert_array_equal(y, np.maximum(plain, 0))
    assert (y == 0).any() and (y > 0).any()
    dy = rng.standard_normal(y.shape)
    original = dy.copy()
    fused = depthwise_conv2d_backward(dy, x, w, windows, relu_output=y)
    np.testing.assert_array_equal(dy, original)   # the caller's gradient is not masked in place
    for ours, theirs in zip(fused, depthwise_conv2d_backward(dy * (plain > 0), x, w, windows)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_backward_skips_the_gradients_it_is_not_asked_for():
    windows = windows_2d((6, 6), 3, 1, 1, 1, "dw")
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 6, 6, 4)), rng.standard_normal((3, 3, 4, 1))
    dy = rng.standard_normal((2, 6, 6, 4))
    dx, dw, db = depthwise_conv2d_backward(dy, x, w, windows)
    no_dx = depthwise_conv2d_backward(dy, x, w, windows, need_input_grad=False)
    no_dw = depthwise_conv2d_backward(dy, x, w, windows, need_weight_grad=False)
    assert no_dx[0] is None and no_dw[1] is None
    np.testing.assert_array_equal(no_dx[1], dw)
    np.testing.assert_array_equal(no_dw[0], dx)
    np.testing.assert_array_equal(no_dx[2], db)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_and_gradients_keep_the_input_dtype(dtype):
    windows = windows_2d((5, 5), 3, 1, 1, 1, "dw")
    x = np.ones((1, 5, 5, 2), dtype)
    w = np.ones((3, 3, 2, 2))   # float64 weights are used in the input's dtype
    y = depthwise_conv2d(x, w, np.zeros(4), windows)
    assert y.dtype == dtype and y.shape == (1, 5, 5, 4)
    assert all(g.dtype == dtype for g in depthwise_conv2d_backward(np.ones_like(y), x, w, windows, relu_output=y))


@pytest.mark.torch
@pytest.mark.parametrize("m, stride, padding, dilation", [(1, 1, 1, 1), (1, 2, 1, 1), (2, 1, 2, 2), (3, 2, 0, 1)])
def test_matches_torch_grouped_convolution_with_groups_equal_to_channels(m, stride, padding, dilation):
    rng = np.random.default_rng(3)
    c = 8
    windows = windows_2d((11, 10), 3, stride, padding, dilation, "dw")
    x = rng.standard_normal((2, 11, 10, c)).astype(np.float32)
    w = rng.standard_normal((3, 3, c, m)).astype(np.float32)
    b = rng.standard_normal(c * m).astype(np.float32)
    y = depthwise_conv2d(x, w, b, windows)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = depthwise_conv2d_backward(dy, x, w, windows)
    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    tw = torch.tensor(w.reshape(3, 3, 1, c * m).transpose(3, 2, 0, 1).copy(), requires_grad=True)  # (C*M, 1, K, K)
    tb = torch.tensor(b, requires_grad=True)
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=padding, dilation=dilation, groups=c)
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    for ours, theirs in [(y, ty.detach().numpy().transpose(0, 2, 3, 1)), (dx, tx.grad.numpy().transpose(0, 2, 3, 1)),
                         (dw, tw.grad.numpy().transpose(2, 3, 1, 0).reshape(3, 3, c, m)), (db, tb.grad.numpy())]:
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
