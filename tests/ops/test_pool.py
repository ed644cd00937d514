"""Pooling kernels: tiled and general paths against naive loops and each other, tie rules, and
forward and gradients against torch's max_pool2d, avg_pool2d and global reductions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

from cnnkit.arithmetic import windows_2d
from cnnkit.ops import (avg_pool2d, avg_pool2d_backward, global_avg_pool2d, global_avg_pool2d_backward,
                        global_max_pool2d, global_max_pool2d_backward, max_pool2d, max_pool2d_backward)
from cnnkit.ops import pool as pool_ops


# ----------------------------------------------------------------- naive references

def _patches(x, windows, value):
    """Yield (i, j, rows, cols, padded) for every output position, by the definition."""
    wh, ww = windows
    xp = np.pad(x, ((0, 0), (wh.pad_before, wh.pad_after), (ww.pad_before, ww.pad_after), (0, 0)),
                constant_values=value)
    ho = (xp.shape[1] - wh.effective_kernel) // wh.stride + 1
    wo = (xp.shape[2] - ww.effective_kernel) // ww.stride + 1
    for i in range(ho):
        for j in range(wo):
            rows = slice(i * wh.stride, i * wh.stride + wh.effective_kernel, wh.dilation)
            cols = slice(j * ww.stride, j * ww.stride + ww.effective_kernel, ww.dilation)
            yield i, j, rows, cols, xp


def _crop(dxp, windows):
    wh, ww = windows
    return dxp[:, wh.pad_before:dxp.shape[1] - wh.pad_after, ww.pad_before:dxp.shape[2] - ww.pad_after]


def max_pool_reference(x, windows, dy):
    """Max of each window; its gradient goes to the first maximum in row-major window order."""
    outs, dxp = {}, None
    for i, j, rows, cols, xp in _patches(x, windows, -np.inf):
        dxp = np.zeros_like(xp) if dxp is None else dxp
        patch = xp[:, rows, cols]                                # (B, kh, kw, C)
        outs[i, j] = patch.max(axis=(1, 2))
        flat = patch.reshape(patch.shape[0], -1, patch.shape[3])
        first = flat.argmax(axis=1)                              # argmax picks the first maximum
        routed = np.zeros_like(flat)
        np.put_along_axis(routed, first[:, None], dy[:, i, j][:, None], axis=1)
        dxp[:, rows, cols] += routed.reshape(patch.shape)
    return _stack(outs, x), _crop(dxp, windows)


def avg_pool_reference(x, windows, dy, count_include_pad):
    outs = {}
    ones = np.ones_like(x)
    real = dict(((i, j), xp[:, rows, cols].sum(axis=(1, 2))[0, 0])
                for i, j, rows, cols, xp in _patches(ones, windows, 0.0))
    dxp = None
    for i, j, rows, cols, xp in _patches(x, windows, 0.0):
        dxp = np.zeros_like(xp) if dxp is None else dxp
        divisor = windows[0].kernel * windows[1].kernel if count_include_pad else real[i, j]
        outs[i, j] = xp[:, rows, cols].sum(axis=(1, 2)) / divisor
        dxp[:, rows, cols] += dy[:, i, j][:, None, None] / divisor
    return _stack(outs, x), _crop(dxp, windows)


def _stack(outs, x):
    ho, wo = max(k[0] for k in outs) + 1, max(k[1] for k in outs) + 1
    return np.stack([np.stack([outs[i, j] for j in range(wo)], axis=1) for i in range(ho)], axis=1)


def _distinct(shape, seed):
    """Distinct values in a random order: no ties, so every maximum is unique."""
    return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape) / np.prod(shape)


POOL_CASES = [  # (H, W), kernel, stride, padding, dilation
    ((8, 8), 2, 2, 0, 1),          # tiles
    ((6, 9), (2, 3), (2, 3), 0, 1),  # tiles, non-square
    ((7, 7), 2, 2, 0, 1),          # remainder row and column
    ((9, 9), 3, 2, 1, 1),
    ((8, 7), 3, 1, "same", 1),
    ((10, 8), 3, 3, 1, 1),
    ((9, 11), 3, 2, 0, 2),          # dilated (ops only; the layers have no dilation)
    ((8, 8), 5, 2, 2, 1),
    # padding above K//2, as ONNX allows (issue 13): every window still sees an input pixel
    ((4, 4), 3, 1, 2, 1),
    ((7, 6), 3, 2, 2, 1),
    ((5, 6), (2, 3), 1, (1, 2), 1),
    ((6, 5), 4, 3, 3, 1),
    ((1, 1), 3, 1, 2, 1),
]


@pytest.mark.parametrize("size, kernel, stride, padding, dilation", POOL_CASES)
def test_max_pool_matches_the_loop_reference(size, kernel, stride, padding, dilation):
    windows = windows_2d(size, kernel, stride, padding, dilation, "t")
    x = _distinct((2, *size, 3), 0)
    y, winners = max_pool2d(x, windows)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    want_y, want_dx = max_pool_reference(x, windows, dy)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_allclose(max_pool2d_backward(dy, winners, windows, x.shape), want_dx, atol=1e-14)


@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("size, kernel, stride, padding, dilation", POOL_CASES)
def test_avg_pool_matches_the_loop_reference(size, kernel, stride, padding, dilation, count_include_pad):
    windows = windows_2d(size, kernel, stride, padding, dilation, "t")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, *size, 3))
    y = avg_pool2d(x, windows, count_include_pad)
    dy = rng.standard_normal(y.shape)
    want_y, want_dx = avg_pool_reference(x, windows, dy, count_include_pad)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(avg_pool2d_backward(dy, windows, x.shape, count_include_pad), want_dx,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size, kernel", [((8, 8), 2), ((6, 9), (2, 3)), ((9, 6), 3), ((4, 4), 1)])
def test_tiled_and_general_paths_agree(size, kernel):
    windows = windows_2d(size, kernel, kernel, 0, 1, "t")
    assert pool_ops._tiles((2, *size, 3), windows)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, *size, 3)).astype(np.float32)
    x[0, 0, 0] = x[0, 0, 1] = x[0, 1, 0] = 5.0  # a tie inside the first window
    tiled = pool_ops._max_taps(pool_ops._taps(x, windows, -np.inf, tiled=True), True)
    general = pool_ops._max_taps(pool_ops._taps(x, windows, -np.inf, tiled=False), True)
    np.testing.assert_array_equal(tiled[0], general[0])
    np.testing.assert_array_equal(tiled[1], general[1])
    dy = rng.standard_normal(tiled[0].shape).astype(np.float32)
    np.testing.assert_array_equal(pool_ops._max_backward_tiled(dy, tiled[1], windows, x.shape),
                                  pool_ops._max_backward_general(dy, tiled[1], windows, x.shape))
    np.testing.assert_allclose(pool_ops._spread_tiled(dy, windows, x.shape),
                               pool_ops._spread_general(dy, windows, x.shape))
    sums = [sum(t.astype(np.float64) for t in pool_ops._taps(x, windows, 0.0, tiled=flag)) for flag in (True, False)]
    np.testing.assert_allclose(sums[0], sums[1])


def test_max_ties_go_to_the_first_pixel_of_the_window_in_both_paths():
    x = np.zeros((1, 4, 4, 1), np.float32)
    for windows in (windows_2d((4, 4), 2, 2, 0, 1, "t"), windows_2d((4, 4), 2, 1, 0, 1, "t")):
        y, winners = max_pool2d(x, windows)
        assert winners.dtype == np.uint8 and np.all(winners == 0)
        dx = max_pool2d_backward(np.ones_like(y), winners, windows, x.shape)
        assert dx.sum() == y.size and dx[0, 0, 0, 0] == 1.0
    y, winners = max_pool2d(x, windows_2d((4, 4), 2, 2, 0, 1, "t"), with_indices=False)
    assert winners is None and y.shape == (1, 2, 2, 1)


def test_max_pool_padding_is_never_the_maximum():
    x = -np.ones((1, 3, 3, 1), np.float32) * np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    y, _ = max_pool2d(x, windows_2d((3, 3), 3, 1, 1, 1, "t"))
    assert y[0, 0, 0, 0] == -1.0 and y.max() < 0


def test_global_pools_match_the_definition_and_route_gradients():
    x = _distinct((2, 3, 4, 5), 4)
    dy = np.random.default_rng(5).standard_normal((2, 5))
    np.testing.assert_allclose(global_avg_pool2d(x), x.mean(axis=(1, 2)))
    np.testing.assert_allclose(global_avg_pool2d_backward(dy, x.shape), np.broadcast_to(dy[:, None, None] / 12, x.shape))
    y, positions = global_max_pool2d(x)
    np.testing.assert_array_equal(y, x.max(axis=(1, 2)))
    assert global_max_pool2d(x, with_indices=False)[1] is None
    dx = global_max_pool2d_backward(dy, positions, x.shape)
    np.testing.assert_allclose(dx.sum(axis=(1, 2)), dy)
    np.testing.assert_array_equal(dx != 0, x == x.max(axis=(1, 2), keepdims=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_outputs_and_gradients_keep_the_input_dtype(dtype):
    windows = windows_2d((6, 6), 3, 2, 1, 1, "t")
    x = np.ones((1, 6, 6, 2), dtype)
    y, winners = max_pool2d(x, windows)
    assert y.dtype == dtype and max_pool2d_backward(y, winners, windows, x.shape).dtype == dtype
    y = avg_pool2d(x, windows)
    assert y.dtype == dtype and avg_pool2d_backward(y, windows, x.shape).dtype == dtype
    assert global_avg_pool2d(x).dtype == dtype and global_max_pool2d(x)[0].dtype == dtype


# ----------------------------------------------------------------- ONNX oracle (padding above K//2)

#: ONNX's reference MaxPool fails (an empty window) when the two axes are padded differently, a
#: case the loop reference above covers
LARGE_PADDING = [((4, 4), 3, 1, 2), ((7, 6), 3, 2, 2), ((6, 5), 4, 3, 3), ((3, 8), (3, 4), (1, 2), 2)]


def _onnx_pool(op, x, windows, **attributes):
    """Run ONNX's reference evaluator's ``op`` (MaxPool, AveragePool) on NHWC ``x``."""
    pytest.importorskip("onnx", reason="onnx is not installed; ONNX's reference evaluator is a test-only oracle: pip install onnx (or make test)")
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator
    wh, ww = windows
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[wh.kernel, ww.kernel],
                            strides=[wh.stride, ww.stride],
                            pads=[wh.pad_before, ww.pad_before, wh.pad_after, ww.pad_after], **attributes)
    b, h, w, c = x.shape
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [b, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    y = ReferenceEvaluator(model).run(None, {"x": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    return y.transpose(0, 2, 3, 1)


@pytest.mark.parametrize("size, kernel, stride, padding", LARGE_PADDING)
def test_max_pool_with_large_padding_matches_onnx(size, kernel, stride, padding):
    windows = windows_2d(size, kernel, stride, padding, 1, "t")
    x = np.random.default_rng(3).standard_normal((2, *size, 3))
    np.testing.assert_array_equal(max_pool2d(x, windows)[0], _onnx_pool("MaxPool", x, windows))


@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("size, kernel, stride, padding", LARGE_PADDING)
def test_avg_pool_with_large_padding_matches_onnx(size, kernel, stride, padding, count_include_pad):
    windows = windows_2d(size, kernel, stride, padding, 1, "t")
    x = np.random.default_rng(4).standard_normal((2, *size, 3))
    want = _onnx_pool("AveragePool", x, windows, count_include_pad=int(count_include_pad))
    np.testing.assert_allclose(avg_pool2d(x, windows, count_include_pad), want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------- torch oracle

@st.composite
def pool_cases(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.one_of(st.integers(0, 2), st.just("same")))
    size = (draw(st.integers(1, 10)), draw(st.integers(1, 10)))
    windows = windows_2d(size, kernel, stride, padding, 1, "t")
    # torch's rule: padding at most half the window (larger padding: the ONNX oracle above)
    assume(all(max(w.pad_before, w.pad_after) <= w.kernel // 2 for w in windows))
    assume(all(s + w.pad_before + w.pad_after >= w.kernel for s, w in zip(size, windows)))
    return (draw(st.integers(1, 3)), *size, draw(st.integers(1, 4))), windows


def _torch_pool(op, x, windows, pad_value, **kwargs):
    """Apply a torch pooling to NHWC ``x``, padding explicitly (``same`` may be asymmetric)."""
    wh, ww = windows
    xt = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
    xpad = F.pad(xt, (ww.pad_before, ww.pad_after, wh.pad_before, wh.pad_after), value=pad_value)
    return xt, op(xpad, (wh.kernel, ww.kernel), (wh.stride, ww.stride), **kwargs)


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _close(got, want):
    scale = max(float(np.abs(want).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.torch
@settings(max_examples=25, deadline=None)
@given(case=pool_cases(), seed=st.integers(0, 2**16))
def test_max_pool_matches_torch(case, seed):
    shape, windows = case
    x = _distinct(shape, seed).astype(np.float32)
    y, winners = max_pool2d(x, windows)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
    xt, yt = _torch_pool(F.max_pool2d, x, windows, float("-inf"))
    yt.backward(torch.tensor(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))))
    np.testing.assert_array_equal(y, _nhwc(yt))
    _close(max_pool2d_backward(dy, winners, windows, x.shape), _nhwc(xt.grad))


@pytest.mark.torch
@settings(max_examples=25, deadline=None)
@given(case=pool_cases(), seed=st.integers(0, 2**16), count_include_pad=st.booleans())
def test_avg_pool_matches_torch(case, seed, count_include_pad):
    shape, windows = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    y = avg_pool2d(x, windows, count_include_pad)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx = avg_pool2d_backward(dy, windows, x.shape, count_include_pad)
    wh, ww = windows
    if wh.pad_before == wh.pad_after and ww.pad_before == ww.pad_after:
        # torch's own padding and divisor conventions
        xt = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
        yt = F.avg_pool2d(xt, (wh.kernel, ww.kernel), (wh.stride, ww.stride), (wh.pad_before, ww.pad_before),
                          count_include_pad=count_include_pad)
    else:
        # asymmetric "same": zero-pad explicitly; the real-pixel divisor is the pooled ones-plane
        xt, summed = _torch_pool(F.avg_pool2d, x, windows, 0.0, divisor_override=1)
        divisor = wh.kernel * ww.kernel if count_include_pad else \
            _torch_pool(F.avg_pool2d, np.ones_like(x[:1, ..., :1]), windows, 0.0, divisor_override=1)[1]
        yt = summed / divisor
    yt.backward(torch.tensor(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))))
    _close(y, _nhwc(yt))
    _close(dx, _nhwc(xt.grad))


@settings(max_examples=15, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 4)),
       seed=st.integers(0, 2**16))
@pytest.mark.torch
def test_global_pools_match_torch(shape, seed):
    x = _distinct(shape, seed).astype(np.float32)
    dy = np.random.default_rng(seed).standard_normal((shape[0], shape[3]), dtype=np.float32)
    y_max, positions = global_max_pool2d(x)
    cases = ((global_avg_pool2d(x), global_avg_pool2d_backward(dy, x.shape), lambda t: t.mean(dim=(2, 3))),
             (y_max, global_max_pool2d_backward(dy, positions, x.shape), lambda t: t.amax(dim=(2, 3))))
    for y, dx, reduce in cases:
        xt = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
        yt = reduce(xt)
        yt.backward(torch.tensor(dy))
        _close(y, yt.detach().numpy())
        _close(dx, _nhwc(xt.grad))
