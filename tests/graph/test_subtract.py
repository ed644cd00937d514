"""Subtract (cnnkit/layers/merge.py): a - b in a graph and called directly, against NumPy and
the gradient check; mixed dtypes, a config round trip, and the refusal of anything but two inputs.
PyTorch's view of it is in test_oracle.py (the Siamese model with a subtraction)."""

import re

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import ShapeError
from cnnkit.layers import Conv2d, Dense, Subtract, Tanh


def _x(*shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_subtract_is_a_minus_b_and_its_gradients_are_plus_and_minus_dy():
    layer = Subtract()
    layer.build([(2, 3, 4), (2, 3, 4)])
    a, b = _x(2, 2, 3, 4), _x(2, 2, 3, 4, seed=1)
    np.testing.assert_array_equal(layer.forward([a, b], training=True), a - b)
    dy = _x(2, 2, 3, 4, seed=2)
    da, db = layer.backward(dy)
    np.testing.assert_array_equal(da, dy)
    np.testing.assert_array_equal(db, -dy)


def test_in_a_graph_the_gradient_check_passes_and_the_order_matters(tmp_path):
    a, b = cnnkit.Input((4, 4, 2), name="a"), cnnkit.Input((4, 4, 2), name="b")
    model = cnnkit.Model([a, b], Subtract(name="diff")([Conv2d(3, 3, padding=1, name="conv")(a),
                                                         Tanh()(Conv2d(3, 1, name="proj")(b))]), seed=0)
    xs = [_x(2, 4, 4, 2), _x(2, 4, 4, 2, seed=1)]
    result = cnnkit.gradcheck(model, xs)
    assert result.passed(1e-6), result.errors
    swapped = cnnkit.Model([a, b], Subtract()([b, a]))
    np.testing.assert_array_equal(swapped.forward(xs), xs[1] - xs[0])
    model.save(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(cnnkit.load(tmp_path / "m.safetensors").forward(xs), model.forward(xs))


def test_mixed_dtypes_subtract_in_the_wider_one_and_get_gradients_in_their_own():
    a, b = cnnkit.Input((3,), name="a"), cnnkit.Input((3,), name="b")
    model = cnnkit.Model([a, b], Subtract()([Dense(3, name="d")(a), Tanh()(b)]))
    xs = [_x(2, 3, dtype=np.float32), _x(2, 3, seed=1)]
    y = model.forward(xs, training=True)
    da, db = model.backward(np.ones_like(y))
    assert (y.dtype, da.dtype, db.dtype) == (np.float64, np.float32, np.float64)


@pytest.mark.parametrize("shapes, message", [
    ([(3,), (3,), (3,)], "sub: subtracts exactly two tensors (a - b); received 3 of shapes [(3,), (3,), (3,)]; "
                         "chain two Subtract layers for more"),
    ([(3,), (4,)], "sub: every input must have the same shape; received [(3,), (4,)]"),
])
def test_anything_but_two_inputs_of_one_shape_is_refused(shapes, message):
    with pytest.raises(ShapeError, match=f"^{re.escape(message)}"):
        Subtract(name="sub").build(shapes)
