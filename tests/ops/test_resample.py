"""Upsampling kernels: each output pixel against PyTorch's rules computed here one pixel at a time,
and the backward proved the adjoint of the forward by an inner product."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnkit.ops.resample import axis_taps, upsample2d, upsample2d_backward

CASES = [  # (H, W), (s_h, s_w), interpolation, align_corners
    ((4, 3), (2, 2), "nearest", False),
    ((3, 5), (3, 1), "nearest", False),
    ((4, 3), (2, 2), "bilinear", False),
    ((3, 4), (3, 2), "bilinear", False),
    ((4, 3), (2, 3), "bilinear", True),
    ((1, 4), (4, 2), "bilinear", True),       # one row: every output row is it
    ((1, 1), (1, 1), "bilinear", True),       # one pixel, factor 1: (out - 1) is zero
    ((2, 5), (1, 4), "bilinear", False),
]


def _source(o, in_size, factor, align_corners):
    """PyTorch's source coordinate of output position ``o`` (``area_pixel_compute_source_index``)."""
    if align_corners:
        out = in_size * factor
        return o * (in_size - 1) / (out - 1) if out > 1 else 0.0
    return max((o + 0.5) / factor - 0.5, 0.0)


def _reference(x, factors, interpolation, align_corners):
    b, h, w, c = x.shape
    y = np.zeros((b, h * factors[0], w * factors[1], c))
    for o in range(y.shape[1]):
        for p in range(y.shape[2]):
            if interpolation == "nearest":
                y[:, o, p] = x[:, o // factors[0], p // factors[1]]
                continue
            corners = []
            for pos, size, factor in ((o, h, factors[0]), (p, w, factors[1])):
                src = _source(pos, size, factor, align_corners)
                low = min(math.floor(src), size - 1)
                corners.append(((low, 1 - (src - low)), (min(low + 1, size - 1), src - low)))
            for i, wi in corners[0]:
                for j, wj in corners[1]:
                    y[:, o, p] += wi * wj * x[:, i, j]
    return y


def _taps(size, factors, interpolation, align_corners):
    return [axis_taps(n, f, interpolation, align_corners) for n, f in zip(size, factors)]


@pytest.mark.parametrize("size, factors, interpolation, align_corners", CASES)
def test_forward_matches_the_rules_pixel_by_pixel(size, factors, interpolation, align_corners):
    x = np.random.default_rng(0).standard_normal((2, *size, 3))
    y = upsample2d(x, *_taps(size, factors, interpolation, align_corners))
    np.testing.assert_allclose(y, _reference(x, factors, interpolation, align_corners), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size, factors, interpolation, align_corners", CASES)
def test_backward_is_the_adjoint_of_the_forward(size, factors, interpolation, align_corners):
    rng = np.random.default_rng(1)
    taps = _taps(size, factors, interpolation, align_corners)
    x = rng.standard_normal((2, *size, 3))
    y = upsample2d(x, *taps)
    dy = rng.standard_normal(y.shape)
    dx = upsample2d_backward(dy, *taps)
    assert dx.shape == x.shape
    assert np.isclose(np.sum(y * dy), np.sum(x * dx), rtol=1e-12)   # <up(x), dy> = <x, up^T(dy)>


def test_weights_of_each_output_sum_to_one_and_indices_never_decrease():
    for n, factor, align in [(5, 3, False), (5, 3, True), (2, 4, False), (7, 2, True)]:
        taps = axis_taps(n, factor, "bilinear", align)
        np.testing.assert_allclose(sum(taps.weight), 1.0)
        assert all((np.diff(index) >= 0).all() and index.max() < n for index in taps.index)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_float32_stays_float32(interpolation):
    x = np.random.default_rng(2).standard_normal((1, 3, 4, 2)).astype(np.float32)
    taps = _taps((3, 4), (2, 2), interpolation, False)
    y = upsample2d(x, *taps)
    assert y.dtype == np.float32 and upsample2d_backward(np.ones_like(y), *taps).dtype == np.float32
