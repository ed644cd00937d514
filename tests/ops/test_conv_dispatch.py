"""The one convolution entry and its table of algorithms: which row each call takes, the
measured thresholds, the context, the filter cache, every row against the NumPy GEMM
reference, and the exact text of the errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cnnkit.arithmetic import windows_2d
from cnnkit.errors import ConfigError, ShapeError
from cnnkit.ops import ALGORITHMS, choose_algorithm, conv2d, conv2d_backward, tuning
from cnnkit.ops import conv as conv_ops
from cnnkit.ops.gemm import gemm_conv2d, gemm_conv2d_backward

GEOMETRIES = {  # name: (input (H, W), kernel, stride, padding, dilation)
    "3x3 same": ((9, 8), 3, 1, 1, 1),
    "3x3 valid, odd": ((7, 10), 3, 1, 0, 1),
    "3x3 asymmetric": ((9, 7), 3, 1, (2, 0), 1),
    "1x1": ((6, 5), 1, 1, 0, 1),
    "1x1 dilated": ((6, 5), 1, 1, 0, 2),
    "1x1 strided": ((6, 5), 1, 2, 0, 1),
    "3x3 stride 2": ((9, 8), 3, 2, 1, 1),
    "3x3 dilated": ((9, 8), 3, 1, 2, 2),
    "2x5 mixed": ((9, 11), (2, 5), (1, 2), (1, 0), (2, 1)),
}


def _geometry(name):
    size, kernel, stride, padding, dilation = GEOMETRIES[name]
    return size, windows_2d(size, kernel, stride, padding, dilation, "conv")


def _row(name: str, compiled):
    return next(row for row in ALGORITHMS if row.name == name and row.compiled is compiled)


@pytest.mark.parametrize("geometry_name", list(GEOMETRIES))
def test_each_request_takes_the_first_row_of_its_name_that_computes_the_geometry(geometry_name, kernel_path):
    size, geometry = _geometry(geometry_name)
    weight_shape = (*geometry.kernel, 4, 4)
    compiled = kernel_path == "compiled"
    pointwise = geometry.kernel == (1, 1) and geometry.stride_one and not geometry.padded
    gemm = choose_algorithm((2, *size, 4), weight_shape, geometry, "gemm")
    assert gemm is (_row("gemm", None) if pointwise else _row("gemm", compiled))
    winograd = geometry.kernel == (3, 3) and geometry.stride_one and geometry.dilation_one
    for name, rows_compiled in [("winograd4", compiled), ("winograd2", None)]:
        if winograd:
            assert choose_algorithm((2, *size, 4), weight_shape, geometry, name) is _row(name, rows_compiled)
        else:
            with pytest.raises(ConfigError, match=re.escape(
                    f"conv2d: algorithm='{name}' needs a 3x3 kernel with stride 1 and dilation 1; received "
                    f"kernel {geometry.kernel}, stride {geometry.stride}, dilation {geometry.dilation}")):
                choose_algorithm((2, *size, 4), weight_shape, geometry, name)


@pytest.mark.parametrize("backward, threshold", [(False, "FORWARD_F4_MIN_TILES"), (True, "BACKWARD_F4_MIN_TILES")])
def test_auto_takes_winograd4_from_the_measured_thresholds_on(backward, threshold, kernel_path, monkeypatch):
    geometry = windows_2d((8, 8), 3, 1, 1, 1, "conv")     # 8x8 output: 2 x 2 tiles of 4x4 an image
    x_shape, weight_shape = (3, 8, 8, 16), (3, 3, 16, 16)  # 12 tiles in the batch

    def choice():
        return choose_algorithm(x_shape, weight_shape, geometry, backward=backward)

    monkeypatch.setattr(tuning, threshold, 12)
    assert choice().name == "winograd4" and choice().compiled is (kernel_path == "compiled")
    monkeypatch.setattr(tuning, threshold, 13)
    assert choice() is _row("gemm", kernel_path == "compiled")
    monkeypatch.setattr(tuning, threshold, 12)
    monkeypatch.setattr(tuning, "WINOGRAD_MIN_CHANNELS", 17)   # C = N = 16: too thin
    assert choice().name == "gemm"
    assert choose_algorithm(x_shape, (3, 3, 16, 16), windows_2d((8, 8), 3, 2, 1, 1, "c"), backward=backward).name \
        == "gemm"                                               # strided: Winograd does not apply


GROUPINGS = {  # name: (input channels C, filters N, groups G); the weight is (Kh, Kw, C/G, N)
    "plain": (3, 6, 1),
    "grouped": (4, 6, 2),
    "depthwise": (3, 6, 3),
}


def _computes(row, geometry_name, grouping) -> bool:
    c, _, groups = GROUPINGS[grouping]
    return row.computes(_geometry(geometry_name)[1], groups, c // groups)


# every row with every geometry and grouping it computes (called directly: compiled rows run compiled code)
ROW_CASES = [(row, name, grouping) for row in ALGORITHMS for name in GEOMETRIES for grouping in GROUPINGS
             if _computes(row, name, grouping)]


def dense_weight(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped weight (Kh, Kw, C/G, N) as the plain (Kh, Kw, C, N) one that computes the same:
    zero wherever a filter does not see a channel (block diagonal)."""
    kh, kw, cg, n = weight.shape
    dense = np.zeros((kh, kw, cg * groups, n))
    ng = n // groups
    for k in range(groups):
        dense[:, :, k * cg:(k + 1) * cg, k * ng:(k + 1) * ng] = weight[..., k * ng:(k + 1) * ng]
    return dense


def grouped_part(dense: np.ndarray, groups: int) -> np.ndarray:
    """The blocks of a plain (Kh, Kw, C, N) weight gradient that a grouped weight holds."""
    cg, ng = dense.shape[2] // groups, dense.shape[3] // groups
    return np.concatenate([dense[:, :, k * cg:(k + 1) * cg, k * ng:(k + 1) * ng] for k in range(groups)], axis=3)


def test_every_row_computes_some_geometry_and_some_rows_refuse_some():
    assert {id(row) for row, _, _ in ROW_CASES} == {id(row) for row in ALGORITHMS}
    assert len(ROW_CASES) < len(ALGORITHMS) * len(GEOMETRIES) * len(GROUPINGS)
    assert {grouping for row, _, grouping in ROW_CASES if row.name == "winograd4"} == {"plain"}
    assert {grouping for row, _, grouping in ROW_CASES if row.name == "depthwise"} == {"depthwise"}


@pytest.mark.parametrize("row, geometry_name, grouping", ROW_CASES,
                         ids=[f"{row.name}-{row.compiled}-{name}-{grouping}" for row, name, grouping in ROW_CASES])
def test_every_row_equals_the_numpy_gemm_reference_where_it_computes(row, geometry_name, grouping, monkeypatch):
    """A grouped convolution is the plain one with a block-diagonal weight: the plain NumPy GEMM
    path is every row's reference, for groups too."""
    monkeypatch.setattr(tuning, "DEPTHWISE_BLOCK_ELEMENTS", 40)   # several blocks of rows an image
    size, geometry = _geometry(geometry_name)
    c, n, groups = GROUPINGS[grouping]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *size, c))
    weight, bias = rng.standard_normal((*geometry.kernel, c // groups, n)), rng.standard_normal(n)
    dense = dense_weight(weight, groups)
    expected = gemm_conv2d(x, dense, bias, geometry, relu=True)
    filters = {}
    y = row.forward(x, weight, bias, geometry, True, filters)   # the row itself, compiled or not
    np.testing.assert_allclose(y, expected, rtol=1e-11, atol=1e-11)
    dy = rng.standard_normal(y.shape)
    for need_input_grad, need_weight_grad in [(True, True), (False, True), (True, False)]:
        got = row.backward(dy, x, weight, geometry, need_input_grad, need_weight_grad, y, filters)
        want = list(gemm_conv2d_backward(dy, x, dense, geometry, need_input_grad, need_weight_grad, expected))
        if want[1] is not None:
            want[1] = grouped_part(want[1], groups)
        for ours, theirs in zip(got, want):
            assert (ours is None) == (theirs is None)
            if ours is not None:
                np.testing.assert_allclose(ours, theirs, rtol=1e-11, atol=1e-11)


def test_auto_takes_the_depthwise_kernel_for_groups_equal_to_channels_and_the_grouped_product_otherwise(kernel_path):
    geometry = windows_2d((8, 8), 3, 1, 1, 1, "conv")
    assert choose_algorithm((2, 8, 8, 16), (3, 3, 1, 32), geometry).name == "depthwise"   # groups 16, M = 2
    grouped = choose_algorithm((2, 8, 8, 16), (3, 3, 4, 32), geometry)                   # groups 4
    assert (grouped.name, grouped.grouped, grouped.depthwise) == ("gemm", True, False)
    assert choose_algorithm((2, 8, 8, 16), (3, 3, 1, 16), geometry, "gemm") is grouped  # the reference, on request
    one_channel = choose_algorithm((2, 8, 8, 1), (3, 3, 1, 8), geometry)                 # a plain convolution
    assert one_channel.name == "gemm" and not one_channel.grouped
    assert choose_algorithm((2, 8, 8, 1), (3, 3, 1, 8), geometry, "depthwise").name == "depthwise"


@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("grouping", list(GROUPINGS))
def test_the_entry_fuses_relu6_as_relu_capped_at_6_on_every_grouping(activation, grouping):
    c, n, groups = GROUPINGS[grouping]
    rng = np.random.default_rng(5)
    geometry = windows_2d((7, 6), 3, 1, 1, 1, "conv")
    x = 4 * rng.standard_normal((2, 7, 6, c))
    weight, bias = rng.standard_normal((3, 3, c // groups, n)), rng.standard_normal(n)
    y, context = conv2d(x, weight, bias, geometry, activation=activation, groups=groups)
    plain = gemm_conv2d(x, dense_weight(weight, groups), bias, geometry)
    cap = 6.0 if activation == "relu6" else np.inf
    np.testing.assert_allclose(y, np.clip(plain, 0, cap), rtol=1e-12, atol=1e-12)
    assert (y == 0).any() and (activation == "relu" or (y == 6).any())
    dy = rng.standard_normal(y.shape)
    dx, dweight, _ = conv2d_backward(dy, context)
    inside = (plain > 0) & (plain < cap)
    want_dx, want_dweight, _ = gemm_conv2d_backward(dy * inside, x, dense_weight(weight, groups), geometry)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dweight, grouped_part(want_dweight, groups), rtol=1e-11, atol=1e-11)


def test_the_entry_refuses_groups_that_do_not_fit_the_weight_or_the_algorithm():
    geometry = windows_2d((6, 6), 3, 1, 1, 1, "conv")
    x = np.ones((1, 6, 6, 4), np.float32)
    with pytest.raises(ShapeError, match=re.escape(
            "conv2d: a weight of shape (3, 3, 4, 6) does not convolve 4 input channels in groups=2; it must be "
            "(Kh, Kw, C/groups, N) = (Kh, Kw, 2, N) with N a multiple of 2")):
        conv2d(x, np.ones((3, 3, 4, 6), np.float32), None, geometry, groups=2)
    with pytest.raises(ShapeError, match=re.escape("(Kh, Kw, 2, N) with N a multiple of 2")):
        conv2d(x, np.ones((3, 3, 2, 5), np.float32), None, geometry, groups=2)
    with pytest.raises(ConfigError, match=re.escape(
            "conv2d: algorithm='winograd4' needs groups=1; received groups=2 of 2 input channels each; "
            "use algorithm='auto' or 'gemm'")):
        conv2d(x, np.ones((3, 3, 2, 6), np.float32), None, geometry, algorithm="winograd4", groups=2)
    with pytest.raises(ConfigError, match=re.escape(
            "conv2d: algorithm='depthwise' needs one input channel per group (groups equal to the input "
            "channels); received groups=2 of 2 input channels each; use algorithm='auto' or 'gemm'")):
        conv2d(x, np.ones((3, 3, 2, 6), np.float32), None, geometry, algorithm="depthwise", groups=2)


def test_the_context_holds_what_backward_needs_and_backward_chooses_with_its_own_thresholds(monkeypatch):
    monkeypatch.setattr(tuning, "FORWARD_F4_MIN_TILES", 1)
    monkeypatch.setattr(tuning, "BACKWARD_F4_MIN_TILES", 10 ** 9)
    monkeypatch.setattr(tuning, "WINOGRAD_MIN_CHANNELS", 1)
    rng = np.random.default_rng(1)
    geometry = windows_2d((8, 8), 3, 1, 1, 1, "conv")
    x, weight = rng.standard_normal((2, 8, 8, 3)).astype(np.float32), rng.standard_normal((3, 3, 3, 4))
    y, context = conv2d(x, weight, None, geometry, activation="relu")
    assert context.x is x and context.relu_output is y and context.algorithm == "auto"
    assert context.geometry is geometry and context.filters is None
    _, plain = conv2d(x, weight, None, geometry)
    assert plain.relu_output is None
    dy = rng.standard_normal(y.shape).astype(np.float32)
    # forward ran Winograd F(4x4); backward, below its threshold, runs the GEMM path
    for ours, gemm in zip(conv2d_backward(dy, context), conv2d_backward(dy, context._replace(algorithm="gemm"))):
        np.testing.assert_array_equal(ours, gemm)
    assert not np.array_equal(y, conv2d(x, weight, None, geometry, activation="relu", algorithm="gemm")[0])


def test_winograd_keeps_its_transformed_filters_in_the_callers_cache_by_tile_and_dtype(monkeypatch):
    calls = []
    transform = conv_ops.transform_filter
    monkeypatch.setattr(conv_ops, "transform_filter", lambda w, tile: calls.append((tile, w.dtype)) or
                        transform(w, tile))
    rng = np.random.default_rng(2)
    geometry = windows_2d((6, 6), 3, 1, 1, 1, "conv")
    x, weight = rng.standard_normal((1, 6, 6, 2)).astype(np.float32), rng.standard_normal((3, 3, 2, 3))
    cache = {}
    y4, context = conv2d(x, weight, None, geometry, algorithm="winograd4", filter_cache=cache)
    conv2d(x, weight, None, geometry, algorithm="winograd4", filter_cache=cache)
    conv2d_backward(np.ones_like(y4), context)
    conv2d(x, weight, None, geometry, algorithm="winograd2", filter_cache=cache)
    conv2d(x.astype(np.float64), weight, None, geometry, algorithm="winograd4", filter_cache=cache)
    assert calls == [(4, np.float32), (2, np.float32), (4, np.float64)]
    assert set(cache) == {(4, np.dtype(np.float32)), (2, np.dtype(np.float32)), (4, np.dtype(np.float64))}
    np.testing.assert_array_equal(y4, conv2d(x, weight, None, geometry, algorithm="winograd4")[0])
    assert len(calls) == 4   # no cache: transformed again
    conv2d(x, weight, None, geometry, algorithm="gemm", filter_cache=cache)
    assert len(calls) == 4   # GEMM has nothing to transform


def test_the_entry_refuses_what_it_cannot_compute():
    geometry = windows_2d((6, 6), 3, 1, 1, 1, "conv")
    x, weight = np.ones((1, 6, 6, 2), np.float32), np.ones((3, 3, 2, 3), np.float32)
    with pytest.raises(ConfigError, match=r"conv2d: algorithm must be one of \('auto', 'gemm', 'winograd2', "
                                          r"'winograd4', 'depthwise'\); received algorithm='fft'"):
        conv2d(x, weight, None, geometry, algorithm="fft")
    with pytest.raises(ConfigError, match=r"conv2d: activation must be one of \(None, 'relu', 'relu6'\); "
                                          r"received activation='tanh'"):
        conv2d(x, weight, None, geometry, activation="tanh")
    with pytest.raises(ShapeError, match=r"conv2d: the weight's kernel \(5, 5\) differs from the geometry's "
                                         r"\(3, 3\)"):
        conv2d(x, np.ones((5, 5, 2, 3), np.float32), None, geometry)
