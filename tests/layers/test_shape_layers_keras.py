"""Keras 3 (torch backend) as the oracle of the layers cnnkit takes from it: Reshape, Permute,
Rescaling (a float and an array scale), Subtract, and Flatten's channels_last order. Keras's
``Flatten(data_format="channels_first")`` reads a channels-first input, cnnkit's names the output
order of a channels-last one (see :class:`cnnkit.layers.Flatten`): the two are each other's
inverse permutation, which the last test shows."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.layers import Flatten, Permute, Rescaling, Reshape, Subtract

pytestmark = pytest.mark.keras


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras", reason="Keras 3 is the oracle here: pip install keras==3.15.1 torch==2.13.0")


def _x(shape=(3, 4, 2), seed=0):
    return np.random.default_rng(seed).standard_normal((2, *shape)).astype(np.float32)


def _ours(layer, x, shape=(3, 4, 2)):
    layer.build(shape)
    return layer.forward(x)


def _theirs(layer, *xs):
    y = layer(list(xs) if len(xs) > 1 else xs[0])
    return np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)


@pytest.mark.parametrize("target", [(12, 2), (-1, 4), (2, 3, 4)])
def test_reshape_matches_keras(keras, target):
    x = _x()
    np.testing.assert_array_equal(_ours(Reshape(target), x), _theirs(keras.layers.Reshape(target), x))


@pytest.mark.parametrize("dims", [(2, 1, 3), (3, 1, 2), (1, 3, 2)])
def test_permute_matches_keras(keras, dims):
    x = _x()
    np.testing.assert_array_equal(_ours(Permute(dims), x), _theirs(keras.layers.Permute(dims), x))


@pytest.mark.parametrize("scale, offset", [(1 / 255, -0.5), (np.array([0.5, 2.0], np.float32), 0.25)])
def test_rescaling_matches_keras(keras, scale, offset):
    x = _x()
    np.testing.assert_allclose(_ours(Rescaling(scale, offset), x), _theirs(keras.layers.Rescaling(scale, offset), x),
                               rtol=1e-6, atol=1e-6)


def test_subtract_matches_keras(keras):
    a, b = _x(), _x(seed=1)
    layer = Subtract()
    layer.build([(3, 4, 2), (3, 4, 2)])
    np.testing.assert_array_equal(layer.forward([a, b]), _theirs(keras.layers.Subtract(), a, b))


def test_flatten_orders_against_keras(keras):
    x = _x()
    np.testing.assert_array_equal(_ours(Flatten(), x), _theirs(keras.layers.Flatten(), x))
    ours = _ours(Flatten("channels_first"), x)
    # Keras's channels_first flattens a (C, H, W) input in (H, W, C) order: fed our output's
    # (C, H, W) volume it gives back cnnkit's own channels-last order
    chw = ours.reshape(2, 2, 3, 4)
    np.testing.assert_array_equal(_theirs(keras.layers.Flatten(data_format="channels_first"), chw),
                                  _ours(Flatten(), x))
