"""The functional API's contract at its edges: inputs, gradient dtypes checked by backward,
gradcheck of models with several inputs and outputs, and what a model refuses to be built from."""

import numpy as np
import pytest

import cnnkit
from cnnkit.layers import Add, Concatenate, Conv2d, Dense, Flatten, ReLU, Tanh


def _two_in_two_out(seed=0):
    a, b = cnnkit.Input((3,), name="a"), cnnkit.Input((3,), name="b")
    shared = Dense(3, name="shared")
    joined = Concatenate(name="joined")([Tanh()(shared(a)), shared(b)])
    return cnnkit.Model([a, b], [Dense(2, name="first")(joined), Add(name="second")([shared(a), b])], seed=seed)


def _x(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------- gradcheck of several inputs and outputs
def test_gradcheck_checks_every_input_and_output_of_a_model():
    model = _two_in_two_out()
    result = cnnkit.gradcheck(model, [_x(2, 3, dtype=np.float64), _x(2, 3, dtype=np.float64, seed=1)])
    assert result.passed(1e-6), result.errors
    assert set(result.errors) == {"input[0]", "input[1]", "shared.weight", "shared.bias", "first.weight",
                                  "first.bias"}


def test_gradcheck_finds_a_wrong_gradient_of_a_second_input():
    model = _two_in_two_out()
    original = model.backward

    def backward(grads):
        da, db = original(grads)
        return da, db * 1.01   # a bug the check must see
    model.backward = backward
    result = cnnkit.gradcheck(model, [_x(2, 3, dtype=np.float64), _x(2, 3, dtype=np.float64, seed=1)])
    assert result.worst == "input[1]" and not result.passed(1e-3)


def test_gradcheck_leaves_the_caller_inputs_and_weights_as_they_were():
    model = _two_in_two_out()
    xs = [_x(2, 3, dtype=np.float64), _x(2, 3, dtype=np.float64, seed=1)]
    kept, weights = [x.copy() for x in xs], {k: v.copy() for k, v in model.state_dict().items()}
    cnnkit.gradcheck(model, xs)
    for x, before in zip(xs, kept):
        np.testing.assert_array_equal(x, before)
    for name, value in model.state_dict().items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, weights[name])


# ---------------------------------------------------------------- gradient dtypes
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_takes_gradients_in_the_dtype_of_the_forward_output(dtype):
    model = _two_in_two_out()
    ys = model.forward([_x(2, 3, dtype=dtype), _x(2, 3, dtype=dtype, seed=1)], training=True)
    da, db = model.backward([np.ones_like(y) for y in ys])
    assert da.dtype == db.dtype == dtype


@pytest.mark.parametrize("wrong, message", [
    (np.float64, "first: backward received a gradient of dtype float64, but the output of the last forward is "
                 "float32; pass the gradient in the output's dtype, e.g. dy.astype(y.dtype)"),
    (np.float16, "first: backward received a gradient of dtype float16; gradients are float32 or float64, the "
                 "dtype of the forward's output; convert it, e.g. dy.astype(y.dtype)"),
    (np.int64, "first: backward received a gradient of dtype int64; gradients are float32 or float64"),
    (bool, "first: backward received a gradient of dtype bool; gradients are float32 or float64"),
])
def test_model_backward_refuses_a_gradient_of_another_dtype(wrong, message):
    model = _two_in_two_out()
    y1, y2 = model.forward([_x(2, 3), _x(2, 3, seed=1)], training=True)
    with pytest.raises(cnnkit.ShapeError) as info:
        model.backward([np.ones(y1.shape, wrong), np.ones_like(y2)])
    assert str(info.value).startswith(message)
    model.backward([np.ones_like(y1), np.ones_like(y2)])   # refused before the tape was used up


def test_model_backward_refuses_an_output_gradient_of_another_shape():
    model = cnnkit.Sequential([Dense(2)], input_shape=(3,), name="net")
    model.forward(_x(4, 3), training=True)
    with pytest.raises(cnnkit.ShapeError) as info:
        model.backward(np.ones((3, 2), np.float32))
    assert str(info.value) == ("dense_1: backward expected a gradient of shape (4, 2) (the output of the last "
                               "forward, an output of net); received (3, 2)")


@pytest.mark.parametrize("layer", [Dense(3, name="fc"), ReLU(name="fc"), Flatten(name="fc")])
def test_layer_backward_refuses_a_gradient_of_another_dtype(layer):
    layer.build((3,), np.random.default_rng(0))
    y = layer.forward(_x(2, 3, dtype=np.float64), training=True)
    with pytest.raises(cnnkit.ShapeError) as info:
        layer.backward(y.astype(np.float32))
    assert str(info.value) == ("fc: backward received a gradient of dtype float32, but the output of the last "
                               "forward is float64; pass the gradient in the output's dtype, e.g. dy.astype(y.dtype)")
    assert layer.backward(y).dtype == np.float64   # the context is still there for a corrected call


def test_call_backward_refuses_a_gradient_that_is_not_float():
    layer = Conv2d(2, 3, name="conv")
    layer.build((4, 4, 1), np.random.default_rng(0))
    y, context = layer.call(_x(1, 4, 4, 1), training=True)
    with pytest.raises(cnnkit.ShapeError, match="conv: backward received a gradient of dtype int32; gradients are "
                                                "float32 or float64"):
        layer.call_backward(np.ones(y.shape, np.int32), context)


# ---------------------------------------------------------------- building a model
@pytest.mark.parametrize("shape", [(4.5, 4, 2), ("4", 4), (True, 3), 5, None])
def test_input_takes_a_shape_of_ints_only(shape):
    with pytest.raises(cnnkit.ShapeError) as info:
        cnnkit.Input(shape)
    assert str(info.value) == f"Input: shape must be a tuple of ints such as (224, 224, 3); received {shape!r}"


def test_input_takes_numpy_ints():
    assert cnnkit.Input(np.array([4, 4, 2])).shape == (4, 4, 2)


def test_an_input_listed_twice_is_a_clear_error():
    x = cnnkit.Input((3,))
    with pytest.raises(cnnkit.ConfigError) as info:
        cnnkit.Model([x, x], Dense(2)(x), name="twice")
    assert str(info.value) == "twice: a tensor appears twice among the inputs; list each cnnkit.Input once"


def test_outputs_that_are_not_symbolic_tensors_are_a_clear_error():
    x = cnnkit.Input((3,))
    with pytest.raises(cnnkit.ConfigError, match="net: outputs must be symbolic tensors"):
        cnnkit.Model(x, np.zeros(3), name="net")


def test_an_output_that_is_also_read_by_another_node_gets_both_gradients():
    x = cnnkit.Input((3,))
    hidden = Dense(3, name="hidden")(x)
    model = cnnkit.Model(x, [hidden, Dense(2, name="head")(Tanh()(hidden))], seed=4)
    result = cnnkit.gradcheck(model, _x(2, 3, dtype=np.float64))
    assert result.passed(1e-6), result.errors


def test_a_model_input_can_be_an_output_too():
    x = cnnkit.Input((3,))
    model = cnnkit.Model(x, [x, Dense(2)(x)], seed=5)
    data = _x(2, 3)
    passed, _ = model.forward(data, training=True)
    np.testing.assert_array_equal(passed, data)
    weight = model.parameters()["dense_1.weight"].value
    g = np.ones((2, 2), np.float32)
    dx = model.backward([np.ones((2, 3), np.float32), g])
    np.testing.assert_allclose(dx, 1 + g @ weight.T, rtol=1e-6)


def test_fit_and_evaluate_say_how_to_train_a_model_with_two_outputs():
    image = cnnkit.Input((4, 4, 1))
    flat = Flatten()(image)
    model = cnnkit.Model(image, [Dense(3)(flat), Dense(2)(flat)], name="two_heads")
    data = (np.zeros((4, 4, 4, 1), np.float32), np.zeros(4, int))
    for run in (lambda: model.fit(data, verbose=0), lambda: model.evaluate(data)):
        with pytest.raises(cnnkit.ConfigError, match=r"two_heads has 2 outputs, .*train_step\(model, optimizer, x, "
                                              r"\[y1, y2, \.\.\.\], loss_weights"):
            run()
