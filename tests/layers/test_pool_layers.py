"""Pooling layers forward/backward: float64 gradient checks (inputs without ties), caches and
the exact text of shape errors."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import ConfigError, ShapeError
from cnnkit.layers import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d


def _distinct(shape, seed=0):
    """Distinct values of order one in a random order: finite differences never cross a tie."""
    count = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(count).reshape(shape) / count


POOL_CASES = [  # input (H, W, C), pool_size, stride, padding
    ((8, 8, 2), 2, None, 0),        # tiles
    ((6, 9, 2), (2, 3), None, 0),   # tiles, non-square
    ((7, 7, 2), 2, None, 0),        # remainder: the last row and column are never read
    ((9, 9, 2), 3, 2, 1),
    ((8, 7, 2), 3, 1, "same"),
    ((10, 8, 1), 3, 3, 1),
    ((9, 9, 1), 5, 2, 2),
    ((9, 11, 1), 7, 2, 3),
    ((4, 4, 2), 3, 1, 2),           # padding above K//2, as ONNX allows (issue 13)
    ((7, 6, 1), 3, 2, 2),
    ((6, 5, 1), 4, 3, 3),
]


@pytest.mark.parametrize("shape, pool_size, stride, padding", POOL_CASES)
def test_max_pool_gradients_match_finite_differences(shape, pool_size, stride, padding):
    layer = MaxPool2d(pool_size, stride, padding)
    layer.build(shape)
    result = cnnkit.gradcheck(layer, _distinct((2, *shape)))
    assert result.max_error < 1e-6, result.errors


@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("shape, pool_size, stride, padding", POOL_CASES)
def test_avg_pool_gradients_match_finite_differences(shape, pool_size, stride, padding, count_include_pad):
    layer = AvgPool2d(pool_size, stride, padding, count_include_pad=count_include_pad)
    layer.build(shape)
    result = cnnkit.gradcheck(layer, np.random.default_rng(1).standard_normal((2, *shape)))
    assert result.max_error < 1e-6, result.errors


@pytest.mark.parametrize("layer_type", [GlobalAvgPool2d, GlobalMaxPool2d])
@pytest.mark.parametrize("shape", [(1, 1, 3), (4, 5, 2), (7, 3, 1)])
def test_global_pool_gradients_match_finite_differences(layer_type, shape):
    layer = layer_type()
    layer.build(shape)
    result = cnnkit.gradcheck(layer, _distinct((2, *shape)))
    assert result.max_error < 1e-6, result.errors


def test_avg_pool_divisors_differ_only_at_the_padded_border():
    x = np.ones((1, 4, 4, 1), np.float32)
    excluded, included = AvgPool2d(3, 1, 1), AvgPool2d(3, 1, 1, count_include_pad=True)
    for layer in (excluded, included):
        layer.build((4, 4, 1))
    np.testing.assert_allclose(excluded.forward(x), 1.0)
    y = included.forward(x)[0, :, :, 0]
    assert y[0, 0] == pytest.approx(4 / 9) and y[0, 1] == pytest.approx(6 / 9) and y[1, 1] == pytest.approx(1.0)


LAYERS = {  # fresh layers named pool1, built for (8, 6, 3)
    "max2": lambda: MaxPool2d(2, name="pool1"),
    "max3s2p1": lambda: MaxPool2d(3, 2, 1, name="pool1"),
    "avg3s2p1": lambda: AvgPool2d(3, 2, 1, name="pool1"),
    "global_avg": lambda: GlobalAvgPool2d(name="pool1"),
    "global_max": lambda: GlobalMaxPool2d(name="pool1"),
}


@pytest.mark.parametrize("kind", LAYERS)
def test_inference_keeps_no_cache_and_backward_frees_the_training_cache(kind):
    shape = (8, 6, 3)
    layer = LAYERS[kind]()
    layer.build(shape)
    x = _distinct((2, *shape)).astype(np.float32)
    y = layer.forward(x)
    assert layer._cache is None and y.dtype == np.float32
    assert y.shape == (2, *layer.output_shape)
    y = layer.forward(x, training=True)
    cached = layer._cache if isinstance(layer._cache, tuple) else (layer._cache,)
    assert not any(item is x or item is y for item in cached)  # neither the input nor the output
    dx = layer.backward(np.ones_like(y))
    assert layer._cache is None and dx.shape == x.shape and dx.dtype == np.float32
    with pytest.raises(ShapeError, match="pool1: backward called without a forward"):
        layer.backward(np.ones_like(y))


def test_max_pool_caches_small_integer_indices():
    layer = MaxPool2d(2)
    layer.build((8, 8, 4))
    layer.forward(_distinct((2, 8, 8, 4)).astype(np.float32), training=True)
    winners, _ = layer._cache
    assert winners.dtype == np.uint8 and winners.shape == (2, 4, 4, 4)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("bad_shape", [(2, 8, 6, 4), (2, 6, 8, 3), (8, 6, 3)])
def test_wrong_input_shape_names_the_layer_and_both_shapes(kind, bad_shape):
    layer = LAYERS[kind]()
    layer.build((8, 6, 3))
    with pytest.raises(ShapeError) as info:
        layer.forward(np.zeros(bad_shape, np.float32))
    assert str(info.value) == f"pool1: expected input of shape (B, 8, 6, 3); received {bad_shape}"


@pytest.mark.parametrize("layer_type", [MaxPool2d, AvgPool2d])
def test_padding_above_half_the_pool_is_supported_as_onnx_defines_it(layer_type):
    layer = layer_type(3, stride=1, padding=2)
    assert layer.build((4, 4, 1)) == (6, 6, 1)        # (4 + 2*2 - 3)/1 + 1
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    y = layer.forward(x)[0, :, :, 0]
    if layer_type is MaxPool2d:                        # the corner window sees only x[0, 0]
        assert y[0, 0] == 0 and y[5, 5] == 15 and y[0, 5] == 3
    else:                                              # mean of the input pixels it sees
        assert y[0, 0] == 0 and y[5, 5] == 15 and y[1, 1] == np.mean([0, 1, 4, 5])


@pytest.mark.parametrize("layer_type", [MaxPool2d, AvgPool2d])
def test_padding_as_large_as_the_pool_is_refused(layer_type):
    with pytest.raises(ConfigError, match=r"^pool: padding must be smaller than the pool size \(P < K = 3\), or "
                                          r"a window would see only padding; received padding=3; lower padding$"):
        layer_type(3, stride=1, padding=3, name="pool").build((5, 5, 1))
