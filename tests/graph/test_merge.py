"""Merge layers (cnnkit/layers/merge.py) in a graph and called directly: values against NumPy
written here, gradients against finite differences, dtypes that do not depend on hand-overs."""

import numpy as np
import pytest

import cnnkit
from cnnkit.layers import Add, Concatenate, Dense, Multiply, Tanh


def _x(*shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("merge, reference", [
    (Add, lambda a, b, c: a + b + c),
    (Multiply, lambda a, b, c: a * b * c),
    (Concatenate, lambda a, b, c: np.concatenate([a, b, c], axis=-1)),
])
def test_a_merge_of_three_tensors_matches_numpy_and_the_gradient_check(merge, reference):
    inputs = [cnnkit.Input((2, 2, 3), name=name) for name in "abc"]
    model = cnnkit.Model(inputs, merge()(inputs))
    xs = [_x(2, 2, 2, 3, seed=seed) for seed in range(3)]
    np.testing.assert_allclose(model.forward(xs), reference(*xs), rtol=1e-12)
    result = cnnkit.gradcheck(model, xs)
    assert result.passed(1e-6), result.errors


@pytest.mark.parametrize("axis", [0, 1, -2])
def test_concatenate_along_a_spatial_axis(axis):
    a, b = cnnkit.Input((2, 3, 2)), cnnkit.Input((2, 3, 2))
    model = cnnkit.Model([a, b], Concatenate(axis=axis)([a, b]))
    xs = [_x(2, 2, 3, 2), _x(2, 2, 3, 2, seed=1)]
    np.testing.assert_array_equal(model.forward(xs), np.concatenate(xs, axis=axis % 3 + 1))
    assert cnnkit.gradcheck(model, xs).passed(1e-6)


@pytest.mark.parametrize("merge", [Add, Multiply, Concatenate])
def test_inputs_of_mixed_dtypes_merge_in_the_wider_one_and_get_gradients_in_their_own(merge):
    a, b = cnnkit.Input((3,), name="a"), cnnkit.Input((3,), name="b")
    model = cnnkit.Model([a, b], Dense(2, name="out")(merge(name="merged")([Dense(3, name="d")(a), Tanh()(b)])))
    xs = [_x(2, 3, dtype=np.float32), _x(2, 3, seed=1)]
    y = model.forward(xs, training=True)
    # the Add may sum into the Dense output it is handed; the dtype is the same either way
    assert y.dtype == model.predict(xs).dtype == model.features(xs, "merged").dtype == np.float64
    da, db = model.backward(np.ones_like(y))
    assert (da.dtype, db.dtype) == (np.float32, np.float64)


@pytest.mark.parametrize("merge", [Add, Concatenate, Multiply])
def test_a_merge_gradient_of_another_batch_is_a_clear_error(merge):
    layer = merge(name="join")
    layer.build([(3,), (3,)])
    y, context = layer.call([_x(2, 3), _x(2, 3, seed=1)], training=True)
    with pytest.raises(cnnkit.ShapeError) as info:   # as the executor calls it: the context knows the batch
        layer.call_backward(np.ones((3, *y.shape[1:])), context)
    assert str(info.value) == (f"join: backward expected a gradient of shape {y.shape} (the output of the last "
                               f"forward); received {(3, *y.shape[1:])}")


@pytest.mark.parametrize("merge", [Add, Concatenate, Multiply])
def test_a_merge_called_directly_never_writes_the_caller_arrays(merge):
    layer = merge()
    layer.build([(3,), (3,)])
    xs = [_x(2, 3), _x(2, 3, seed=1)]
    for x in xs:
        x.flags.writeable = False
    y = layer.forward(xs, training=True)
    dy = np.ones_like(y)
    dy.flags.writeable = False
    grads = layer.backward(dy)
    assert len(grads) == 2 and all(g.shape == (2, 3) for g in grads)
