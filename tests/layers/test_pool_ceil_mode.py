"""``ceil_mode=True`` on MaxPool2d and AvgPool2d: the output size by PyTorch's and ONNX's rule,
forward and input gradient against PyTorch, ONNX Runtime and ONNX's reference evaluator, finite
differences, and the config.

What the oracles do with the rows a ceil-mode window reaches past the padded input (the overhang,
:attr:`cnnkit.arithmetic.Window.overhang`): PyTorch never counts them in an average, not even with
``count_include_pad=True``, and ONNX Runtime agrees on every case here. ONNX's reference evaluator
(onnx 1.23) agrees where the overhang is at most one row and, for MaxPool, the stride above 1; it
differs elsewhere, which the tests leave out of its cases:

- it splits the overhang between both ends (``extra // 2`` before the input), so with an overhang
  of two rows or more (strides of 3 and more) its windows are shifted and its averages differ;
- its MaxPool with ``ceil_mode=1``, stride 1 and padding returns a larger output than the rule gives.
"""

from __future__ import annotations

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

import cnnkit
from cnnkit.arithmetic import Window, ceil_mode_windows, windows_2d
from cnnkit.errors import ConfigError
from cnnkit.layers import AvgPool2d, MaxPool2d

from window_oracles import kernel_path  # noqa: F401 (a fixture)
from window_oracles import nchw, nhwc, onnx_reference_pool, onnx_runtime_pool


def _distinct(shape, seed=0):
    """Distinct values of order one in a random order: no ties for the max, none crossed by a step."""
    count = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(count).reshape(shape) / count


@pytest.mark.parametrize("size, kernel, stride, pad, out, overhang", [
    (6, 2, 2, 0, 3, 0),    # exact: ceil changes nothing
    (7, 2, 2, 0, 4, 1),    # ceil((7 - 2)/2) + 1 = 4, the last window reaches one row past
    (5, 2, 2, 1, 3, 0),    # ceil((5 + 2 - 2)/2) + 1 = 4 would start at 6 = H + P: dropped
    (6, 4, 3, 1, 3, 2),
    (4, 3, 3, 0, 2, 2),    # the last window sees input row 3 and two rows of overhang
])
def test_ceil_mode_output_size_by_hand(size, kernel, stride, pad, out, overhang):
    window = ceil_mode_windows(windows_2d((size, size), kernel, stride, pad, 1, "pool"), (size, size))[0]
    assert window == Window(kernel, stride, pad, pad + overhang, 1, overhang)
    assert window.output_size(size) == out


@pytest.mark.torch
def test_ceil_mode_output_sizes_match_torch_over_a_table():
    for size in range(1, 10):
        for kernel in range(1, 5):
            for stride in range(1, 5):
                for pad in range(kernel // 2 + 1):
                    if size + 2 * pad < kernel:
                        continue
                    layer = MaxPool2d(kernel, stride, pad, ceil_mode=True)
                    layer.build((size, size + 1, 1))
                    want = F.max_pool2d(torch.zeros(1, 1, size, size + 1), kernel, stride, pad, ceil_mode=True)
                    assert layer.output_shape == (*want.shape[2:], 1), (size, kernel, stride, pad)


CEIL_CASES = [  # input (H, W, C), pool_size, stride, padding (symmetric: PyTorch takes no other)
    ((7, 6, 2), 2, 2, 0),
    ((7, 7, 2), 3, 2, 1),
    ((5, 6, 2), 2, 2, 1),        # drops the window that would start in the padding
    ((6, 8, 1), 4, 3, 1),
    ((4, 7, 2), 3, 3, 0),        # two rows of overhang
    ((8, 9, 1), (3, 2), (3, 2), (1, 0)),
    ((9, 9, 1), 5, 4, 2),
]


def _torch_pool(kind, x, pool_size, stride, padding, dy):
    tx = nchw(x)
    if kind == "max":
        ty = F.max_pool2d(tx, pool_size, stride, padding, ceil_mode=True)
    else:
        ty = F.avg_pool2d(tx, pool_size, stride, padding, ceil_mode=True, count_include_pad=kind == "avg_with_pad")
    ty.backward(nchw(dy).detach())
    return nhwc(ty), nhwc(tx.grad)


def _layer(kind, pool_size, stride, padding):
    if kind == "max":
        return MaxPool2d(pool_size, stride, padding, ceil_mode=True)
    return AvgPool2d(pool_size, stride, padding, count_include_pad=kind == "avg_with_pad", ceil_mode=True)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["max", "avg", "avg_with_pad"])
@pytest.mark.parametrize("shape, pool_size, stride, padding", CEIL_CASES)
def test_ceil_mode_forward_and_input_gradient_match_torch(kernel_path, kind, shape, pool_size, stride, padding):
    layer = _layer(kind, pool_size, stride, padding)
    layer.build(shape)
    x = _distinct((2, *shape))
    y = layer.forward(x, training=True)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dx = layer.backward(dy)
    want_y, want_dx = _torch_pool(kind, x, pool_size, stride, padding, dy)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["max", "avg", "avg_with_pad"])
@pytest.mark.parametrize("shape, pool_size, stride, padding", CEIL_CASES + [
    ((7, 6, 1), 3, 2, ((1, 0), (0, 2))), ((6, 7, 1), 3, 3, ((0, 1), (2, 1)))])
def test_ceil_mode_gradients_match_finite_differences(kernel_path, kind, shape, pool_size, stride, padding):
    layer = _layer(kind, pool_size, stride, padding)
    layer.build(shape)
    result = cnnkit.gradcheck(layer, _distinct((2, *shape), seed=2))
    assert result.max_error < 1e-6, result.errors


ONNX_CASES = [  # input (H, W), kernel, stride, padding: asymmetric pads, which PyTorch cannot pool
    ((7, 6), 3, 2, ((1, 0), (0, 1))),
    ((6, 7), 2, 2, ((0, 1), (1, 0))),
    ((8, 5), (3, 2), 2, ((2, 1), (0, 1))),
    ((5, 5), 3, 2, ((1, 1), (0, 0))),
    ((6, 8), 4, 3, ((1, 2), (0, 1))),
    ((4, 7), 3, 3, ((0, 0), (1, 2))),     # two rows of overhang: ONNX Runtime only
]


def _overhang_at_most_one(layer) -> bool:
    return all(win.overhang <= 1 for win in layer.windows())


@pytest.mark.parametrize("op, count_include_pad", [("MaxPool", None), ("AveragePool", 0), ("AveragePool", 1)])
@pytest.mark.parametrize("size, pool_size, stride, padding", ONNX_CASES)
def test_ceil_mode_matches_onnx_runtime_and_the_reference_evaluator(kernel_path, op, count_include_pad, size,
                                                                     pool_size, stride, padding):
    kind = "max" if op == "MaxPool" else ("avg_with_pad" if count_include_pad else "avg")
    layer = _layer(kind, pool_size, stride, padding)
    layer.build((*size, 3))
    x = np.random.default_rng(3).standard_normal((2, *size, 3)).astype(np.float32)
    attributes = {} if count_include_pad is None else {"count_include_pad": count_include_pad}
    y = layer.forward(x)
    np.testing.assert_allclose(y, onnx_runtime_pool(op, x, layer.windows(), ceil_mode=1, **attributes),
                               rtol=1e-5, atol=1e-6)
    if _overhang_at_most_one(layer):   # where the reference evaluator follows the rule (module docstring)
        want = onnx_reference_pool(op, x.astype(np.float64), layer.windows(), ceil_mode=1, **attributes)
        np.testing.assert_allclose(layer.forward(x.astype(np.float64)), want, rtol=1e-12, atol=1e-12)


def test_ceil_mode_is_in_the_config_and_the_receptive_field_ignores_the_overhang(tmp_path):
    model = cnnkit.Sequential([MaxPool2d(2, 2, ceil_mode=True, name="max"),
                               AvgPool2d(3, 2, 1, count_include_pad=True, ceil_mode=True, name="avg")],
                              input_shape=(7, 7, 1))
    assert model.layers[1].get_config() == {"pool_size": 3, "stride": 2, "padding": 1, "count_include_pad": True,
                                            "ceil_mode": True, "name": "avg", "trainable": True}
    assert model.output_shape == (3, 3, 1)   # 7 -> 4 -> ceil((4 + 2 - 3)/2) + 1 = 3
    model.save(tmp_path / "m.safetensors")
    loaded = cnnkit.load(tmp_path / "m.safetensors")
    x = _distinct((2, 7, 7, 1)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    floor = MaxPool2d(2, 2)
    floor.build((7, 7, 1))
    assert model.layers[0].receptive_field(((f := cnnkit.arithmetic.ReceptiveField()), f)) == \
        floor.receptive_field((f, f))


def test_strict_ceil_mode_refuses_only_rows_the_windows_step_over():
    """Ceil mode reaches every input row: a row left after the last window is padding, which the
    strict division rule does not count; a stride longer than the window still skips input rows."""
    assert MaxPool2d(2, 2, 1, ceil_mode=True).build((5, 5, 1), strict=True) == (3, 3, 1)
    with pytest.raises(ConfigError, match=r"^pool: no window reads 2 of the 7 input rows along H"):
        MaxPool2d(2, 3, ceil_mode=True, name="pool").build((7, 7, 1), strict=True)


def test_ceil_mode_must_be_a_bool():
    with pytest.raises(ConfigError, match=r"^pool1: ceil_mode must be True or False; received ceil_mode=1$"):
        MaxPool2d(2, ceil_mode=1, name="pool1").build((4, 4, 1))
