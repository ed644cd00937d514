"""The transposed convolution's kernels: a loop reference written here, the adjoint of the
convolution proved by an inner product, and its backward (a convolution through the table)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit import ops
from cnnkit.arithmetic import transposed_windows
from cnnkit.ops import tuning
from cnnkit.ops.transposed import conv_transpose2d, conv_transpose2d_backward, written_hw

CASES = [  # (H, W), C, N, kernel, stride, padding, output_padding, dilation
    ((4, 3), 2, 3, 3, 1, 0, 0, 1),
    ((4, 5), 3, 2, 3, 2, 1, 1, 1),
    ((3, 4), 2, 2, 4, 2, 1, 0, 1),          # DCGAN's: doubles the size exactly
    ((3, 3), 2, 2, 2, 3, 0, 2, 1),          # a stride longer than the kernel: rows of bias alone
    ((4, 4), 2, 3, 3, 1, 2, 0, 2),          # dilated
    ((3, 4), 1, 2, (3, 2), (2, 1), (2, 0), (1, 0), (1, 2)),
    ((3, 3), 2, 2, 1, 3, 1, 2, 1),          # output_padding beyond the padding: zeros close the output
    ((5, 4), 2, 3, 3, 2, "same", 0, 1),     # Keras's: crops one row, after
    ((4, 4), 2, 2, 3, 3, "same", 0, 1),
    ((3, 5), 2, 2, 3, 2, "valid", 0, 1),
    ((3, 3), 2, 2, 1, 2, "valid", 0, 1),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _crop_and_length(padding, extra, size, k, s, d):
    """Rows cropped before, and the output length, as PyTorch (numbers) and Keras (strings) define them."""
    span = d * (k - 1) + 1
    if padding == "same":
        return max(span - s, 0) // 2, size * s
    if padding == "valid":
        return 0, (size - 1) * s + max(span, s)
    return padding, (size - 1) * s - 2 * padding + span - 1 + extra + 1


def _reference(x, weight, bias, kernel, stride, padding, output_padding, dilation):
    """Every input pixel's stamp added tap by tap, in loops; then the crop."""
    (kh, kw), (sh, sw), (dh, dw) = _pair(kernel), _pair(stride), _pair(dilation)
    pads = (padding, padding) if isinstance(padding, str) else _pair(padding)
    extras = _pair(output_padding)
    b, h, w, _ = x.shape
    n = weight.shape[2]
    (top, ho), (left, wo) = (_crop_and_length(p, e, size, k, s, d) for p, e, size, k, s, d
                             in zip(pads, extras, (h, w), (kh, kw), (sh, sw), (dh, dw)))
    full = np.zeros((b, top + ho + (h - 1) * sh + dh * kh, left + wo + (w - 1) * sw + dw * kw, n))
    for i in range(h):
        for j in range(w):
            for p in range(kh):
                for q in range(kw):
                    full[:, i * sh + p * dh, j * sw + q * dw] += x[:, i, j] @ weight[p, q].T
    return full[:, top:top + ho, left:left + wo] + bias


def _geometry(size, kernel, stride, padding, output_padding, dilation):
    return transposed_windows(size, kernel, stride, padding, output_padding, dilation, "t")


def _arrays(size, c, n, kernel, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, *size, c)).astype(dtype)
    weight = rng.standard_normal((*_pair(kernel), n, c)).astype(dtype)
    return x, weight, rng.standard_normal(n).astype(dtype)


@pytest.mark.parametrize("size, c, n, kernel, stride, padding, output_padding, dilation", CASES)
def test_forward_matches_the_loop_reference(size, c, n, kernel, stride, padding, output_padding, dilation):
    x, weight, bias = _arrays(size, c, n, kernel)
    geometry, out = _geometry(size, kernel, stride, padding, output_padding, dilation)
    y, _ = conv_transpose2d(x, weight, bias, geometry, out)
    want = _reference(x, weight, bias, kernel, stride, padding, output_padding, dilation)
    assert y.shape == want.shape == (2, *out, n)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size, c, n, kernel, stride, padding, output_padding, dilation", CASES)
def test_it_is_the_adjoint_of_the_convolution_and_its_backward_is_that_convolution(
        size, c, n, kernel, stride, padding, output_padding, dilation):
    # <conv2d(z), x> == <z, conv_transpose2d(x)> on the rows the taps write; the rest is zeros
    x, weight, _ = _arrays(size, c, n, kernel, seed=1)
    geometry, out = _geometry(size, kernel, stride, padding, output_padding, dilation)
    y, context = conv_transpose2d(x, weight, None, geometry, out)
    rows, cols = written_hw(geometry, size)
    z = np.random.default_rng(2).standard_normal((2, rows, cols, n))
    conv, _ = ops.conv2d(z, weight, None, geometry)
    assert conv.shape == x.shape
    assert np.isclose(np.sum(conv * x), np.sum(z * y[:, :rows, :cols]), rtol=1e-12)
    assert not y[:, rows:].any() and not y[:, :, cols:].any()
    dy = np.zeros_like(y)
    dy[:, :rows, :cols] = z
    dy[:, rows:] = 5.0   # rows no input reaches: only the bias gradient sees them
    dx, dweight, dbias = conv_transpose2d_backward(dy, context)
    np.testing.assert_allclose(dx, conv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dbias, dy.sum(axis=(0, 1, 2)), rtol=1e-12)
    assert dweight.shape == weight.shape


@pytest.mark.parametrize("size, c, n, kernel, stride, padding, output_padding, dilation", CASES[:4])
def test_weight_gradient_is_the_loop_reference_differentiated(size, c, n, kernel, stride, padding, output_padding,
                                                              dilation):
    # y is linear in the weight: d<y, dy>/dweight[p, q, m, k] is <reference with a one-hot weight, dy>
    x, weight, _ = _arrays(size, c, n, kernel, seed=3)
    geometry, out = _geometry(size, kernel, stride, padding, output_padding, dilation)
    y, context = conv_transpose2d(x, weight, None, geometry, out)
    dy = np.random.default_rng(4).standard_normal(y.shape)
    _, dweight, _ = conv_transpose2d_backward(dy, context, need_input_grad=False)
    want = np.zeros_like(weight)
    for index in np.ndindex(weight.shape):
        one_hot = np.zeros_like(weight)
        one_hot[index] = 1.0
        want[index] = np.sum(_reference(x, one_hot, 0.0, kernel, stride, padding, output_padding, dilation) * dy)
    np.testing.assert_allclose(dweight, want, rtol=1e-10, atol=1e-10)


def test_backward_skips_what_is_not_needed_and_keeps_the_input_dtype():
    x, weight, bias = _arrays((4, 4), 3, 2, 3, dtype=np.float32)
    geometry, out = _geometry((4, 4), 3, 2, 1, 1, 1)
    y, context = conv_transpose2d(x, weight.astype(np.float64), bias, geometry, out)
    assert y.dtype == np.float32
    dy = np.ones_like(y)
    dx, dweight, dbias = conv_transpose2d_backward(dy, context, need_input_grad=False)
    assert dx is None and dweight.dtype == np.float32 and dbias.dtype == np.float32
    dx, dweight, _ = conv_transpose2d_backward(dy, context, need_weight_grad=False)
    assert dweight is None and dx.dtype == np.float32 and dx.shape == x.shape


def test_chunks_of_images_give_the_result_of_one_chunk(monkeypatch):
    x, weight, bias = _arrays((4, 3), 2, 3, 3)
    x = np.concatenate([x, 2 * x, -x])
    geometry, out = _geometry((4, 3), 3, 2, 1, 1, 1)
    whole, _ = conv_transpose2d(x, weight, bias, geometry, out)
    monkeypatch.setattr(tuning, "GEMM_CHUNK_ELEMENTS", 1)   # one image a chunk
    chunked, _ = conv_transpose2d(x, weight, bias, geometry, out)
    np.testing.assert_allclose(chunked, whole, rtol=1e-14, atol=1e-14)
