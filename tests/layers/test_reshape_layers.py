"""Flatten's two orders, Reshape and Permute: against NumPy and PyTorch (forward and input
gradient), finite differences, the receptive field, memory hooks, configs and the exact errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
except ImportError:
    torch = None

import cnnkit
from cnnkit.arithmetic import ReceptiveField
from cnnkit.errors import ConfigError, ShapeError
from cnnkit.layers import Conv2d, Dense, Flatten, Permute, Reshape, channels_first_dense_to_last
from window_oracles import nchw

FIELD = (ReceptiveField(3, 2, 1.5), ReceptiveField(5, 2, 2.5))


def _built(layer, shape):
    layer.build(shape, np.random.default_rng(0))
    return layer


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ----------------------------------------------------------------- Flatten

@pytest.mark.torch
def test_channels_first_flatten_is_torch_flatten_of_the_nchw_volume():
    layer = _built(Flatten("channels_first"), (3, 4, 5))
    x = _x((2, 3, 4, 5))
    y = layer.forward(x, training=True)
    dy = _x(y.shape, 1)
    dx = layer.backward(dy)
    tx = nchw(x)
    ty = torch.flatten(tx, 1)
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy().transpose(0, 2, 3, 1))
    assert not np.shares_memory(x, y) and not np.shares_memory(dx, dy) and dx.flags.c_contiguous


def test_channels_last_flatten_is_a_view_and_channels_first_a_copy():
    last, first = _built(Flatten(), (3, 4, 5)), _built(Flatten(data_format="channels_first"), (3, 4, 5))
    x = _x((2, 3, 4, 5))
    assert np.shares_memory(last.forward(x), x)
    np.testing.assert_array_equal(first.forward(x), x.transpose(0, 3, 1, 2).reshape(2, -1))
    assert last.call_memory().output_is_input and not first.call_memory().output_is_input
    assert last.in_place and not first.in_place and first.fresh_output and first.fresh_input_grad
    assert first.receptive_field(FIELD) == last.receptive_field(FIELD)


def test_a_dense_after_a_channels_first_flatten_keeps_the_channels_first_weight():
    """The same network two ways: the CHW-ordered weight after Flatten('channels_first'), or the
    weight re-ordered by channels_first_dense_to_last after the default Flatten."""
    weight = _x((3 * 4 * 5, 6), 2).astype(np.float32)
    first = cnnkit.Sequential([Flatten("channels_first"), Dense(6, name="fc")], input_shape=(3, 4, 5))
    last = cnnkit.Sequential([Flatten(), Dense(6, name="fc")], input_shape=(3, 4, 5))
    first.layers[1].parameters()["weight"].value = weight
    last.layers[1].parameters()["weight"].value = channels_first_dense_to_last(weight, (3, 4, 5))
    x = _x((2, 3, 4, 5), 3).astype(np.float32)
    np.testing.assert_allclose(first.forward(x), last.forward(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 4, 2), (6, 2), (7,), (2, 3, 2, 2)])
def test_channels_first_flatten_gradient_matches_finite_differences(shape):
    result = cnnkit.gradcheck(_built(Flatten("channels_first"), shape), _x((2, *shape), 4))
    assert result.max_error < 1e-6


def test_flatten_config_round_trips_and_a_bad_data_format_is_refused(tmp_path):
    model = cnnkit.Sequential([Conv2d(2, 3, name="conv"), Flatten("channels_first", name="flat"),
                               Dense(3, name="fc")], input_shape=(5, 5, 1), seed=0)
    assert model.layers[1].get_config() == {"data_format": "channels_first", "name": "flat", "trainable": True}
    model.save(tmp_path / "m.safetensors")
    x = _x((2, 5, 5, 1), 5).astype(np.float32)
    np.testing.assert_array_equal(cnnkit.load(tmp_path / "m.safetensors").forward(x), model.forward(x))
    message = "flat: data_format must be one of ('channels_last', 'channels_first'); received data_format='NCHW'"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        _built(Flatten("NCHW", name="flat"), (2, 2, 1))


# ----------------------------------------------------------------- Reshape

@pytest.mark.parametrize("shape, target, out", [
    ((4, 6, 2), (8, 6), (8, 6)),
    ((4, 6, 2), (-1, 3, 2), (8, 3, 2)),
    ((24,), (2, -1, 3), (2, 4, 3)),
    ((2, 3, 4), [24], (24,)),
])
def test_reshape_is_numpy_reshape_of_each_sample_and_backward_undoes_it(shape, target, out):
    layer = _built(Reshape(target), shape)
    assert layer.output_shape == out
    x = _x((2, *shape))
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, x.reshape(2, *out))
    assert np.shares_memory(x, y)
    dy = _x(y.shape, 1)
    np.testing.assert_array_equal(layer.backward(dy), dy.reshape(2, *shape))
    assert cnnkit.gradcheck(layer, x).max_error < 1e-6
    assert layer.param_count() == layer.macs() == 0 and layer.call_memory().output_is_input


def test_reshape_keeps_the_field_only_when_the_grid_stays():
    keeps = _built(Reshape((4, 6, 2)), (4, 6, 2))
    regrid = _built(Reshape((6, 4, 2)), (4, 6, 2))
    assert keeps.receptive_field(FIELD) == FIELD
    assert regrid.receptive_field(FIELD) == (FIELD[0].covering(4), FIELD[1].covering(6))
    assert _built(Reshape((2, 2, 3)), (12,)).receptive_field(FIELD) == FIELD   # already flat: unchanged


@pytest.mark.parametrize("target, error, message", [
    ((5, -1), ShapeError, "r1: cannot infer the -1 of target_shape=(5, -1): the input (4, 6, 2) has 48 numbers "
                          "per sample, not a multiple of 5"),
    ((4, 6), ShapeError, "r1: target_shape=(4, 6) holds 24 numbers per sample, but the input (4, 6, 2) has 48; "
                         "the two must hold as many"),
    ((-1, -1), ConfigError, "r1: target_shape must be a non-empty tuple of ints >= 1 with at most one -1 "
                            "(inferred), the shape of one sample without the batch; received target_shape=(-1, -1)"),
    ((0, 48), ConfigError, "r1: target_shape must be a non-empty tuple of ints >= 1 with at most one -1 "
                           "(inferred), the shape of one sample without the batch; received target_shape=(0, 48)"),
    (48, ConfigError, "r1: target_shape must be a non-empty tuple of ints >= 1 with at most one -1 "
                      "(inferred), the shape of one sample without the batch; received target_shape=48"),
    ((), ConfigError, "r1: target_shape must be a non-empty tuple of ints >= 1 with at most one -1 "
                      "(inferred), the shape of one sample without the batch; received target_shape=()"),
])
def test_impossible_target_shapes_are_refused(target, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        _built(Reshape(target, name="r1"), (4, 6, 2))


# ----------------------------------------------------------------- Permute

@pytest.mark.torch
@pytest.mark.parametrize("shape, dims", [((3, 4, 5), (2, 1, 3)), ((3, 4, 5), (3, 1, 2)), ((3, 4, 5), (1, 2, 3)),
                                         ((6, 2), (2, 1)), ((2, 3, 2, 2), (4, 2, 1, 3))])
def test_permute_matches_torch_permute_forward_and_backward(shape, dims):
    layer = _built(Permute(dims), shape)
    x = _x((2, *shape))
    y = layer.forward(x, training=True)
    dy = _x(y.shape, 1)
    dx = layer.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    ty = tx.permute(0, *dims)
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())
    assert y.flags.c_contiguous and dx.flags.c_contiguous and layer.output_shape == y.shape[1:]


@pytest.mark.parametrize("dims", [(2, 1, 3), (3, 1, 2), (1, 3, 2)])
def test_permute_gradient_matches_finite_differences(dims):
    assert cnnkit.gradcheck(_built(Permute(dims), (3, 4, 2)), _x((2, 3, 4, 2), 2)).max_error < 1e-6


def test_permute_field_follows_the_grid():
    field = FIELD
    assert _built(Permute((1, 2, 3)), (3, 4, 2)).receptive_field(field) == field
    assert _built(Permute((2, 1, 3)), (3, 4, 2)).receptive_field(field) == (field[1], field[0])
    assert _built(Permute((3, 1, 2)), (3, 4, 2)).receptive_field(field) == (field[0].covering(3),
                                                                           field[1].covering(4))


def test_reshape_and_permute_configs_round_trip_through_a_model_file(tmp_path):
    inputs = cnnkit.Input((4, 6, 2))
    x = Permute((2, 1, 3), name="swap")(inputs)
    x = Reshape((-1, 4), name="regroup")(Conv2d(4, 1, name="conv")(x))
    model = cnnkit.Model(inputs, Flatten(name="flat")(x), seed=0)
    assert model.layers[-2].get_config() == {"target_shape": [-1, 4], "name": "regroup", "trainable": True}
    assert model.output_shape == (4 * 6 * 4,)
    model.save(tmp_path / "m.safetensors")
    sample = _x((2, 4, 6, 2), 3).astype(np.float32)
    np.testing.assert_array_equal(cnnkit.load(tmp_path / "m.safetensors").forward(sample), model.forward(sample))


@pytest.mark.parametrize("dims", [(1, 2), (0, 1, 2), (1, 1, 2), (2, 3, 4), "213", (1.0, 2, 3)])
def test_a_dims_that_is_not_a_permutation_is_refused(dims):
    message = (f"p1: dims must be a permutation of 1..3 (1-based axes of one sample, the batch excluded) for the "
               f"input (3, 4, 2); received dims={tuple(dims) if isinstance(dims, tuple) else dims!r}")
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        _built(Permute(dims, name="p1"), (3, 4, 2))
