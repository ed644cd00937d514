"""Winograd F(2x2, 3x3) and F(4x4, 3x3) (through the one entry, ``cnnkit.ops.conv2d``) against the
GEMM reference path, finite differences and torch."""

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

import cnnkit
from cnnkit.arithmetic import windows_2d
from cnnkit.errors import ConfigError
from cnnkit.layers import Conv2d
from cnnkit.ops.conv import choose_algorithm, conv2d, conv2d_backward
from cnnkit.ops.winograd import transform_filter

CASES = [  # batch, H, W, C, N, padding
    (2, 7, 9, 3, 5, 1), (1, 8, 8, 4, 4, 0), (2, 13, 6, 5, 3, "same"), (3, 5, 5, 2, 2, 2), (1, 3, 3, 2, 2, 0),
    (2, 10, 11, 6, 4, "full"), (1, 9, 4, 3, 3, (2, 0)),
]
# documented float32 error of each tile size, relative to the output's scale
FLOAT32_TOLERANCE = {2: 2e-6, 4: 2e-5}


def _relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("dtype, tolerance", [(np.float64, None), (np.float32, "tile")])
@pytest.mark.parametrize("batch, h, w, c, n, padding", CASES)
def test_forward_and_backward_equal_the_gemm_path(tile, dtype, tolerance, batch, h, w, c, n, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, h, w, c)).astype(dtype)
    weight = rng.standard_normal((3, 3, c, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    windows = windows_2d((h, w), 3, 1, padding, 1, "conv")
    expected, gemm = conv2d(x, weight, bias, windows, algorithm="gemm")
    dy = rng.standard_normal(expected.shape).astype(dtype)
    limit = 1e-12 if tolerance is None else FLOAT32_TOLERANCE[tile]
    got, winograd = conv2d(x, weight, bias, windows, algorithm=f"winograd{tile}")
    assert got.shape == expected.shape and got.dtype == dtype
    assert _relative(got, expected) < limit
    for ours, reference in zip(conv2d_backward(dy, winograd), conv2d_backward(dy, gemm)):
        assert ours.dtype == dtype and _relative(ours, reference) < limit


def test_float32_error_on_a_vgg_sized_layer_is_as_documented():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 28, 28, 256), dtype=np.float32)
    weight = (rng.standard_normal((3, 3, 256, 64)) / 48).astype(np.float32)
    windows = windows_2d((28, 28), 3, 1, 1, 1, "conv")
    exact = conv2d(x.astype(np.float64), weight.astype(np.float64), None, windows, algorithm="gemm")[0]
    for tile in (2, 4):
        got = conv2d(x, weight, None, windows, algorithm=f"winograd{tile}")[0]
        assert _relative(got, exact) < FLOAT32_TOLERANCE[tile]


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
@pytest.mark.parametrize("padding", [0, 1, "same"])
def test_gradient_check_float64(algorithm, padding):
    layer = Conv2d(3, 3, padding=padding, algorithm=algorithm)
    layer.build((7, 6, 2), np.random.default_rng(0))
    result = cnnkit.gradcheck(layer, np.random.default_rng(1).standard_normal((2, 7, 6, 2)))
    assert result.passed(1e-6), result.errors


@pytest.mark.torch
@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
def test_matches_torch_conv2d(algorithm):
    rng = np.random.default_rng(2)
    layer = Conv2d(24, 3, padding=1, algorithm=algorithm)
    layer.build((12, 10, 20), rng)
    x = rng.standard_normal((3, 12, 10, 20), dtype=np.float32)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx = layer.backward(dy)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    tw = torch.from_numpy(layer.parameters()["weight"].value.transpose(3, 2, 0, 1).copy()).requires_grad_()
    tb = torch.zeros(24, requires_grad=True)
    ty = F.conv2d(tx, tw, tb, padding=1)
    ty.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    pairs = [(y, ty.detach().numpy().transpose(0, 2, 3, 1)), (dx, tx.grad.numpy().transpose(0, 2, 3, 1)),
             (layer.parameters()["weight"].grad, tw.grad.numpy().transpose(2, 3, 1, 0)),
             (layer.parameters()["bias"].grad, tb.grad.numpy())]
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_cached_filters_follow_weight_changes():
    layer = Conv2d(16, 3, padding=1, algorithm="winograd4")
    layer.build((8, 8, 16), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 16)).astype(np.float32)
    first = layer.forward(x)
    weight = layer.parameters()["weight"]
    with pytest.raises(ValueError, match="read-only"):
        weight.value *= 2       # a read-only view: an in-place write cannot bypass the version
    with weight.writing() as array:
        array *= 2
    np.testing.assert_allclose(layer.forward(x), 2 * first, rtol=1e-5, atol=1e-5)
    weight.value = np.zeros_like(weight.value)   # assigned: noticed by itself
    np.testing.assert_array_equal(layer.forward(x), np.zeros_like(first))


def test_optimizer_steps_and_state_loads_refresh_cached_filters():
    model = cnnkit.Sequential([Conv2d(16, 3, padding=1, algorithm="winograd4")], input_shape=(8, 8, 16))
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 16)).astype(np.float32)
    before = model.forward(x)
    optimizer = cnnkit.optim.SGD(lr=0.1, params=model.parameters())
    model.forward(x, training=True)
    model.backward(np.ones_like(before))
    optimizer.step()
    reference = cnnkit.Sequential([Conv2d(16, 3, padding=1, algorithm="gemm")], input_shape=(8, 8, 16))
    reference.load_state_dict(model.state_dict())
    expected = reference.forward(x)   # a stale cache would give ``before``, which differs by ~0.1
    assert _relative(model.forward(x), expected) < FLOAT32_TOLERANCE[4] < _relative(before, expected)
    model.load_state_dict({k: np.zeros_like(v) for k, v in model.state_dict().items()})
    assert not model.forward(x).any()


def test_automatic_choice_by_shape():
    def choice(*args, **kwargs):
        return choose_algorithm(*args, **kwargs).name

    same = windows_2d((56, 56), 3, 1, 1, 1, "c")
    assert choice((8, 56, 56, 256), (3, 3, 256, 256), same) == "winograd4"
    assert choice((1, 56, 56, 3), (3, 3, 3, 64), same) == "gemm"          # too few channels
    small = windows_2d((14, 14), 3, 1, 1, 1, "c")
    assert choice((1, 14, 14, 512), (3, 3, 512, 512), small) == "gemm"       # 16 tiles
    assert choice((1, 14, 14, 512), (3, 3, 512, 512), small, backward=True) == "gemm"
    assert choice((8, 56, 56, 256), (3, 3, 256, 256), same, backward=True) == "winograd4"
    strided = windows_2d((56, 56), 3, 2, 1, 1, "c")
    assert choice((8, 56, 56, 256), (3, 3, 256, 256), strided) == "gemm"
    assert choice((8, 56, 56, 256), (3, 3, 256, 256), same, "winograd2") == "winograd2"


def test_winograd_needs_a_3x3_stride_1_kernel():
    with pytest.raises(ConfigError, match="conv: algorithm='winograd4' needs a 3x3 kernel with stride 1"):
        cnnkit.Sequential([Conv2d(4, 3, stride=2, algorithm="winograd4", name="conv")], input_shape=(8, 8, 3))
    with pytest.raises(ConfigError, match="algorithm must be one of"):
        cnnkit.Sequential([Conv2d(4, 3, algorithm="fft")], input_shape=(8, 8, 3))


def test_transformed_filters_shape():
    assert transform_filter(np.zeros((3, 3, 5, 7), np.float32), 4).shape == (36, 5, 7)
    assert transform_filter(np.zeros((3, 3, 5, 7), np.float32), 2).shape == (16, 5, 7)
