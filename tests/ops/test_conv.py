"""Convolution kernels: the windowing primitive, the GEMM paths (through the one entry,
``cnnkit.ops.conv2d``) against a naive loop reference, and forward and gradients against
torch.nn.functional.conv2d."""

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

from cnnkit.arithmetic import Geometry, Window, windows_2d
from cnnkit.ops import conv2d, conv2d_backward, input_rows, pad, tap_slices, tuning, unpad, window_add, windowed_view
from cnnkit.ops.window import pad_rows, unpad_rows_add


def _gemm(x, w, b, windows, activation=None):
    """``(y, context)`` of the GEMM rows (pointwise, compiled or NumPy, as the table chooses)."""
    return conv2d(x, w, b, windows, activation, algorithm="gemm")


# ----------------------------------------------------------------- naive references

def _padded(x, windows, value=0.0):
    wh, ww = windows
    return np.pad(x, ((0, 0), (wh.pad_before, wh.pad_after), (ww.pad_before, ww.pad_after), (0, 0)),
                  constant_values=value)


def _patch_slices(i, j, windows, kernel):
    wh, ww = windows
    kh, kw = kernel
    rows = slice(i * wh.stride, i * wh.stride + wh.dilation * (kh - 1) + 1, wh.dilation)
    cols = slice(j * ww.stride, j * ww.stride + ww.dilation * (kw - 1) + 1, ww.dilation)
    return rows, cols


def _out_size(size, win):
    return (size + win.pad_before + win.pad_after - win.effective_kernel) // win.stride + 1


def conv2d_reference(x, w, b, windows):
    """The definition: at each output position, the dot product of the window with each filter."""
    xp = _padded(x, windows)
    ho, wo = (_out_size(s, win) for s, win in zip(x.shape[1:3], windows))
    y = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(ho):
        for j in range(wo):
            rows, cols = _patch_slices(i, j, windows, w.shape[:2])
            y[:, i, j] = np.einsum("bpqc,pqcn->bn", xp[:, rows, cols], w) + b
    return y


def conv2d_backward_reference(dy, x, w, windows):
    """Each output position sends dy back to its window's pixels and to every weight it used."""
    xp = _padded(x, windows)
    dxp, dw = np.zeros_like(xp), np.zeros(w.shape)
    for i in range(dy.shape[1]):
        for j in range(dy.shape[2]):
            rows, cols = _patch_slices(i, j, windows, w.shape[:2])
            dw += np.einsum("bpqc,bn->pqcn", xp[:, rows, cols], dy[:, i, j])
            dxp[:, rows, cols] += np.einsum("bn,pqcn->bpqc", dy[:, i, j], w)
    wh, ww = windows
    dx = dxp[:, wh.pad_before:dxp.shape[1] - wh.pad_after, ww.pad_before:dxp.shape[2] - ww.pad_after]
    return dx, dw, dy.sum(axis=(0, 1, 2))


# ----------------------------------------------------------------- the windowing primitive

WINDOW_CASES = [  # (H, W), kernel, stride, padding, dilation
    ((7, 7), 3, 1, 0, 1),
    ((7, 9), 3, 2, 1, 1),
    ((8, 5), (2, 3), (3, 1), "same", 1),
    ((9, 9), 3, 1, "full", 2),
    ((10, 7), (5, 1), 2, 2, (2, 1)),
]


@pytest.mark.parametrize("size, kernel, stride, padding, dilation", WINDOW_CASES)
def test_windowed_view_matches_explicit_slices(size, kernel, stride, padding, dilation):
    windows = windows_2d(size, kernel, stride, padding, dilation, "t")
    x = np.random.default_rng(0).standard_normal((2, *size, 3))
    xp = pad(x, windows)
    view = windowed_view(xp, windows)
    np.testing.assert_array_equal(xp, _padded(x, windows))
    assert np.shares_memory(view, xp)
    assert view.shape[1:3] == tuple(_out_size(s, w) for s, w in zip(size, windows))
    for i in range(view.shape[1]):
        for j in range(view.shape[2]):
            rows, cols = _patch_slices(i, j, windows, view.shape[3:5])
            np.testing.assert_array_equal(view[:, i, j], xp[:, rows, cols])


@pytest.mark.parametrize("size, kernel, stride, padding, dilation", WINDOW_CASES)
def test_a_block_of_output_rows_reads_its_input_rows_through_the_tap_slices(size, kernel, stride, padding, dilation):
    windows = windows_2d(size, kernel, stride, padding, dilation, "t")
    xp = pad(np.random.default_rng(3).standard_normal((2, *size, 3)), windows)
    view = windowed_view(xp, windows)
    ho, wo = view.shape[1:3]
    for lo, hi in [(0, ho), (0, 1), (ho - 1, ho), (ho // 3, max(ho // 3 + 1, 2 * ho // 3))]:
        rows_read = xp[:, input_rows(windows, lo, hi)]
        for p, q, rows, cols in tap_slices(windows, (hi - lo, wo)):
            np.testing.assert_array_equal(rows_read[:, rows, cols], view[:, lo:hi, :, p, q])


PADDINGS = [Geometry((Window(3, 1, 2, 1), Window(3, 1, 1, 3))), Geometry((Window(3, 2, 0, 1), Window(1, 1, 0, 0))),
            Geometry((Window(1, 1, 6, 5), Window(1, 1, 2, 2))), Geometry((Window(3, 1, 0, 0), Window(3, 1, 0, 0)))]


@pytest.mark.parametrize("geometry", PADDINGS, ids=["both", "after", "wider than the input", "none"])
def test_padded_rows_are_the_rows_of_the_padded_volume_and_their_adjoint_crops_them(geometry):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 5, 3))
    xp = pad(x, geometry)
    for lo in range(xp.shape[1]):
        for hi in range(lo + 1, xp.shape[1] + 1):
            rows = slice(lo, hi)
            out = np.full((2, hi - lo, xp.shape[2], 3), np.nan)
            got = pad_rows(x, geometry, rows, out)
            np.testing.assert_array_equal(got, xp[:, rows])
            g = rng.standard_normal(got.shape)
            dx = unpad_rows_add(np.zeros_like(x), g, geometry, rows)
            assert np.isclose(np.sum(got * g), np.sum(x * dx), rtol=1e-12)   # <pad_rows(x), g> = <x, its adjoint(g)>
            np.testing.assert_allclose(unpad_rows_add(dx.copy(), g, geometry, rows), 2 * dx)   # it adds


@pytest.mark.parametrize("size, kernel, stride, padding, dilation", WINDOW_CASES)
def test_window_add_is_the_adjoint_of_the_view(size, kernel, stride, padding, dilation):
    # <view(x), g> == <x, window_add(g)> for every x and g defines the adjoint
    windows = windows_2d(size, kernel, stride, padding, dilation, "t")
    rng = np.random.default_rng(1)
    xp = pad(rng.standard_normal((2, *size, 3)), windows)
    view = windowed_view(xp, windows)
    g = rng.standard_normal(view.shape)
    scattered = window_add(np.zeros_like(xp), g, windows)
    assert np.isclose(np.sum(view * g), np.sum(xp * scattered), rtol=1e-12)


def test_pad_is_free_without_padding_and_unpad_inverts_it():
    x = np.ones((1, 4, 5, 2), np.float32)
    no_pad = Geometry((Window(3, 1, 0, 0), Window(3, 1, 0, 0)))
    assert pad(x, no_pad) is x
    asym = Geometry((Window(2, 1, 0, 1), Window(4, 1, 1, 2)))
    xp = pad(x, asym, value=-7.0)
    assert xp.shape == (1, 5, 8, 2) and xp.dtype == np.float32
    assert xp[0, 4, 0, 0] == -7.0 and xp[0, 0, 0, 0] == -7.0 and xp[0, 0, 1, 0] == 1.0
    np.testing.assert_array_equal(unpad(xp, asym), x)


# ----------------------------------------------------------------- fast paths vs reference

CONV_CASES = [  # (H, W), C, N, kernel, stride, padding, dilation
    ((6, 6), 3, 4, 1, 1, 0, 1),          # pointwise path
    ((6, 7), 3, 4, 1, 2, 0, 1),          # strided 1x1 takes the window path
    ((8, 8), 2, 3, 3, 1, 1, 1),
    ((9, 7), 3, 2, 3, 2, "same", 1),     # asymmetric padding
    ((11, 11), 2, 3, 5, 3, 2, 1),        # stride 3 with skipped rows
    ((9, 10), 2, 2, 3, 1, "full", 2),
    ((10, 12), 1, 2, 7, 1, 3, 1),
    ((8, 9), 3, 2, (3, 5), (1, 2), (2, 1), (2, 1)),
]


@pytest.mark.parametrize("size, c, n, kernel, stride, padding, dilation", CONV_CASES)
def test_conv2d_and_backward_match_the_loop_reference(size, c, n, kernel, stride, padding, dilation):
    windows = windows_2d(size, kernel, stride, padding, dilation, "t")
    rng = np.random.default_rng(2)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x, w, b = rng.standard_normal((2, *size, c)), rng.standard_normal((kh, kw, c, n)), rng.standard_normal(n)
    y, context = _gemm(x, w, b, windows)
    np.testing.assert_allclose(y, conv2d_reference(x, w, b, windows), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(conv2d_backward(dy, context), conv2d_backward_reference(dy, x, w, windows)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_batch_chunks_give_the_same_result_as_one_chunk(monkeypatch):
    windows = windows_2d((7, 6), 3, 2, 1, 1, "t")
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((5, 7, 6, 2)), rng.standard_normal((3, 3, 2, 4)), rng.standard_normal(4)
    y, context = _gemm(x, w, b, windows)
    dy = rng.standard_normal(y.shape)
    grads = conv2d_backward(dy, context)
    monkeypatch.setattr(tuning, "GEMM_CHUNK_ELEMENTS", 2 * 4 * 3 * 9 * 2)  # two images a chunk, then one
    chunked_y, chunked_context = _gemm(x, w, b, windows)
    np.testing.assert_allclose(chunked_y, y, rtol=1e-13)
    for chunked, whole in zip(conv2d_backward(dy, chunked_context), grads):
        np.testing.assert_allclose(chunked, whole, rtol=1e-13, atol=1e-13)


def test_backward_can_skip_the_input_or_the_weight_gradient():
    windows = windows_2d((5, 5), 3, 1, 1, 1, "t")
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 5, 5, 2)), rng.standard_normal((3, 3, 2, 3))
    dy = rng.standard_normal((2, 5, 5, 3))
    context = _gemm(x, w, None, windows)[1]
    dx, dw, db = conv2d_backward(dy, context)
    no_dx = conv2d_backward(dy, context, need_input_grad=False)
    no_dw = conv2d_backward(dy, context, need_weight_grad=False)
    assert no_dx[0] is None and no_dw[1] is None
    np.testing.assert_allclose(no_dx[1], dw)
    np.testing.assert_allclose(no_dw[0], dx)
    np.testing.assert_allclose(no_dw[2], db)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_and_gradients_keep_the_input_dtype(dtype):
    windows = windows_2d((5, 5), 3, 1, 1, 1, "t")
    x = np.ones((1, 5, 5, 2), dtype)
    w, b = np.ones((3, 3, 2, 3), np.float32), np.zeros(3, np.float32)
    y, context = _gemm(x, w, b, windows)
    assert y.dtype == dtype
    assert all(g.dtype == dtype for g in conv2d_backward(np.ones_like(y), context))


# ----------------------------------------------------------------- torch oracle

@st.composite
def conv_cases(draw):
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid", "full"])))
    size = (draw(st.integers(1, 11)), draw(st.integers(1, 11)))
    windows = windows_2d(size, kernel, stride, padding, dilation, "t")
    assume(all(s + w.pad_before + w.pad_after >= w.effective_kernel for s, w in zip(size, windows)))
    shape = (draw(st.integers(1, 3)), *size, draw(st.integers(1, 4)))
    return shape, kernel, draw(st.integers(1, 5)), windows


def _nchw(a):
    return torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)), requires_grad=True)


def _close(got, want):
    scale = max(float(np.abs(want).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.torch
@settings(max_examples=25, deadline=None)
@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_conv2d_matches_torch_forward_and_gradients(case, seed):
    shape, (kh, kw), n, windows = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal((kh, kw, shape[3], n), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    y, context = _gemm(x, w, b, windows)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx, dw, db = conv2d_backward(dy, context)

    wh, ww = windows
    xt = _nchw(x)
    wt = torch.tensor(np.ascontiguousarray(w.transpose(3, 2, 0, 1)), requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    xpad = F.pad(xt, (ww.pad_before, ww.pad_after, wh.pad_before, wh.pad_after))
    # torch 2.13's oneDNN convolution returns garbage when it reruns a cached dilated, strided
    # primitive (found here: (2, 10, 4, 1) input, 2x4 kernel, stride (1, 3), dilation (2, 1));
    # its native path is the oracle
    with torch.backends.mkldnn.flags(enabled=False):
        yt = F.conv2d(xpad, wt, bt, stride=(wh.stride, ww.stride), dilation=(wh.dilation, ww.dilation))
        yt.backward(torch.tensor(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))))

    assert y.dtype == dx.dtype == dw.dtype == db.dtype == np.float32
    _close(y, yt.detach().numpy().transpose(0, 2, 3, 1))
    _close(dx, xt.grad.numpy().transpose(0, 2, 3, 1))
    _close(dw, wt.grad.numpy().transpose(2, 3, 1, 0))
    _close(db, bt.grad.numpy())


@pytest.mark.parametrize("block_elements", [1 << 6, 1 << 17])   # many blocks over both workers / one block
@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0)])
def test_fused_relu_is_the_relu_of_the_output_and_masks_the_gradient(kernel, stride, padding, block_elements,
                                                                       monkeypatch):
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "2")
    monkeypatch.setattr(tuning, "GEMM_BLOCK_ELEMENTS", block_elements)
    monkeypatch.setattr(tuning, "GEMM_MIN_BLOCK_ROWS", 8)
    rng = np.random.default_rng(7)
    x, weight, bias = rng.standard_normal((4, 9, 8, 3)), rng.standard_normal((kernel, kernel, 3, 5)), \
        rng.standard_normal(5)
    windows = windows_2d((9, 8), kernel, stride, padding, 1, "conv")
    y, fused_context = _gemm(x, weight, bias, windows, activation="relu")
    plain, plain_context = _gemm(x, weight, bias, windows)
    np.testing.assert_allclose(y, np.maximum(plain, 0), rtol=1e-12, atol=1e-12)
    assert (y == 0).any() and (y > 0).any() and fused_context.relu_output is y
    dy = rng.standard_normal(y.shape)
    for need_input_grad, need_weight_grad in [(True, True), (False, True), (True, False)]:
        fused = conv2d_backward(dy, fused_context, need_input_grad, need_weight_grad)
        masked = conv2d_backward(dy * (y > 0), plain_context, need_input_grad, need_weight_grad)
        for ours, theirs in zip(fused, masked):
            assert (ours is None) == (theirs is None)
            if ours is not None:
                np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
