"""Properties of the one executor (cnnkit/executor.py), each a test a wrong executor fails.

In place only for a tensor's one reader; CONV->RELU fused only when the convolution's output has
one reader; gradients of several readers summed; the caller's arrays never written; ``features``
runs each needed step once; inference keeps no contexts and frees a tensor after its last
reader; a layer at two nodes keeps a context per node.
"""

import weakref

import numpy as np
import pytest

import cnnkit
from cnnkit.layers import (Add, BatchNorm2d, Concatenate, Conv2d, Dense, Flatten, Identity, MaxPool2d, Multiply,
                           ReLU, Tanh)
from cnnkit.optim import SGD
from cnnkit.train import train_step


def _x(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _gradcheck_passes(model, x):
    result = cnnkit.gradcheck(model, x, max_entries=24)
    assert result.passed(1e-6), result.errors


def _spy_calls(model) -> list:
    """Record (node layer name, training, context) for every call the executor makes."""
    calls = []
    for layer in model.layers:
        def call(x, training=False, *, _original=layer.call, _name=layer.name, **options):
            y, context = _original(x, training, **options)
            calls.append((_name, training, context))
            return y, context
        layer.call = call
    return calls


def _count_relu_passes(monkeypatch) -> list:
    """Record each ReLU computed as a pass of its own: (layer name, whether it wrote into its input)."""
    passes = []
    original = ReLU._apply
    monkeypatch.setattr(ReLU, "_apply",
                        lambda self, x, out: passes.append((self.name, out is not None)) or original(self, x, out))
    return passes


# ---------------------------------------------------------------- in place
def _view_then_relu(view_layer):
    """``t`` read first by a layer whose output is a view of it, then by a ReLU (its last reader)."""
    x = cnnkit.Input((2, 2, 3))
    t = BatchNorm2d(name="t")(x)   # a fresh output: in-place may be allowed for its reader
    views = Flatten()(Identity(name="view")(t)) if view_layer is Identity else Flatten(name="view")(t)
    relu = Flatten()(ReLU(name="relu")(t))
    return cnnkit.Model(x, Concatenate()([views, relu]), seed=1)


@pytest.mark.parametrize("view_layer", [Identity, Flatten])
def test_an_in_place_relu_never_overwrites_a_tensor_another_reader_sees_through_a_view(view_layer):
    model = _view_then_relu(view_layer)
    order = [step.name for step in model.plan.steps]
    assert order.index("view") < order.index("relu")   # the ReLU is the last reader of t
    x = _x(2, 2, 2, 3)
    t = model["t"].forward(x)
    expected = np.concatenate([t.reshape(2, -1), np.maximum(t, 0).reshape(2, -1)], axis=1)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6)
    np.testing.assert_allclose(model.forward(x, training=True)[:, :12], model["t"].forward(x, training=True)
                               .reshape(2, -1), rtol=1e-6)


@pytest.mark.parametrize("reader", ["conv", "dense"])
def test_an_in_place_relu_never_overwrites_the_input_an_earlier_reader_keeps_for_backward(reader):
    # t is read by a layer that keeps it in its training context, then by a ReLU (its last reader)
    if reader == "conv":
        x = cnnkit.Input((4, 4, 2))
        t = BatchNorm2d()(Conv2d(3, 3, padding=1)(x))
        branch = Conv2d(3, 3, padding=1, name="keeps_t")(t)
        data = _x(2, 4, 4, 2, dtype=np.float64)
    else:
        x = cnnkit.Input((4,))
        t = Dense(5)(x)
        branch = Dense(5, name="keeps_t")(t)
        data = _x(3, 4, dtype=np.float64)
    model = cnnkit.Model(x, Add()([branch, ReLU()(t)]), seed=2)
    _gradcheck_passes(model, data)


def test_a_tensor_with_one_reader_is_overwritten_in_place_and_one_with_two_is_not(monkeypatch):
    # the rule is not vacuous: the chain's ReLU writes into its input, the branch's does not
    x = cnnkit.Input((4,))
    chain = ReLU(name="alone")(Dense(3)(x))
    t = Dense(3)(x)
    shared = ReLU(name="shared")(t)
    model = cnnkit.Model(x, Add()([chain, Add()([shared, t])]), seed=3)
    passes = _count_relu_passes(monkeypatch)
    data = _x(2, 4)
    y = model.predict(data)
    assert sorted(passes) == [("alone", True), ("shared", False)]
    d1, d2 = (model[name].forward(data) for name in ("dense_1", "dense_2"))
    np.testing.assert_allclose(y, np.maximum(d1, 0) + np.maximum(d2, 0) + d2, rtol=1e-6)


# ---------------------------------------------------------------- fusion
def _conv_relu(readers_of_conv: int):
    x = cnnkit.Input((5, 5, 2))
    conv = Conv2d(3, 3, padding=1, name="conv")(x)
    relu = ReLU(name="relu")(conv)
    if readers_of_conv == 1:
        return cnnkit.Model(x, Conv2d(2, 1, name="after")(relu), seed=4)
    return cnnkit.Model(x, Add()([Conv2d(2, 1, name="after")(relu), Conv2d(2, 1, name="other")(conv)]), seed=4)


@pytest.mark.parametrize("readers", [1, 2])
@pytest.mark.parametrize("training", [False, True])
def test_conv_and_relu_fuse_only_when_the_convolution_output_has_one_reader(readers, training, monkeypatch):
    model = _conv_relu(readers)
    passes = _count_relu_passes(monkeypatch)
    data = _x(2, 5, 5, 2)
    y = model.forward(data, training=training)
    assert [name for name, _ in passes] == ([] if readers == 1 else ["relu"])
    if readers == 2:
        assert passes == [("relu", False)]   # and it leaves the convolution's output, which "other" reads
    conv = model["conv"].forward(data)
    expected = model["after"].forward(np.maximum(conv, 0))
    if readers == 2:
        expected = expected + model["other"].forward(conv)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("readers", [1, 2])
def test_fused_and_unfused_conv_relu_pass_the_gradient_check(readers):
    _gradcheck_passes(_conv_relu(readers), _x(2, 5, 5, 2, dtype=np.float64))


def test_a_conv_whose_output_is_wanted_is_not_fused(monkeypatch):
    model = _conv_relu(1)
    passes = _count_relu_passes(monkeypatch)
    conv, relu = model.features(_x(2, 5, 5, 2), ["conv", "relu"])
    assert passes == [("relu", False)] and (conv < 0).any()
    np.testing.assert_array_equal(relu, np.maximum(conv, 0))


# ---------------------------------------------------------------- gradients of several readers
def test_gradients_of_a_tensor_read_three_times_are_summed():
    x = cnnkit.Input((4,))
    t = Dense(3, name="t")(x)
    model = cnnkit.Model(x, Concatenate()([Dense(2)(t), Tanh()(t), Add()([t, Dense(3)(t)])]), seed=5)
    assert len(model.plan.readers[model.tensor("t")]) == 4
    _gradcheck_passes(model, _x(3, 4, dtype=np.float64))


@pytest.mark.parametrize("merge, derivative", [
    (Add, lambda x, g: 2 * g),                     # y = x + x
    (Multiply, lambda x, g: 2 * x * g),            # y = x * x
    (Concatenate, lambda x, g: g[:, :3] + g[:, 3:]),
])
def test_a_node_reading_the_same_tensor_twice_gets_both_gradients(merge, derivative):
    x = cnnkit.Input((3,))
    model = cnnkit.Model(x, merge()([x, x]))
    data, = [_x(2, 3, dtype=np.float64)]
    y = model.forward(data, training=True)
    g = _x(*y.shape, seed=1, dtype=np.float64)
    np.testing.assert_allclose(model.backward(g), derivative(data, g), rtol=1e-12)
    inner = cnnkit.Input((3,))
    t = Dense(3)(inner)
    _gradcheck_passes(cnnkit.Model(inner, merge()([t, t]), seed=6), data)


def test_input_gradients_are_arrays_of_the_caller_own():
    # y = x1 + x2: both input gradients are the output gradient, handed back as two new arrays
    x1, x2 = cnnkit.Input((3,), name="a"), cnnkit.Input((3,), name="b")
    model = cnnkit.Model([x1, x2], Add()([x1, x2]))
    model.forward([_x(2, 3), _x(2, 3, seed=1)], training=True)
    g = _x(2, 3, seed=2)
    d1, d2 = model.backward(g)
    np.testing.assert_array_equal(d1, g)
    np.testing.assert_array_equal(d2, g)
    assert not np.shares_memory(d1, g) and not np.shares_memory(d1, d2)


# ---------------------------------------------------------------- the caller's arrays
def _models():
    """A model per kind of step that could write into what it reads."""
    x = cnnkit.Input((4, 4, 2))
    stem = ReLU()(Conv2d(3, 3, padding=1)(x))
    residual = cnnkit.Model(x, Dense(3)(Flatten()(ReLU()(Add()([Conv2d(3, 3, padding=1)(stem), stem])))), seed=7)
    x = cnnkit.Input((4, 4, 2))
    merged = cnnkit.Model(x, Dense(2)(Flatten()(ReLU()(Add()([x, Identity()(x)])))), seed=8)
    x = cnnkit.Input((4, 4, 2))
    relu_first = cnnkit.Model(x, Dense(2)(Flatten()(Add()([ReLU()(x), BatchNorm2d()(x)]))), seed=9)
    return [residual, merged, relu_first]


@pytest.mark.parametrize("index", range(3))
def test_the_caller_input_and_output_gradient_are_never_written(index):
    model = _models()[index]
    x = _x(3, 4, 4, 2)
    x.flags.writeable = False   # any write raises
    kept = x.copy()
    y = model.forward(x, training=True)
    g = _x(*y.shape, seed=3)
    g.flags.writeable = False
    kept_g = g.copy()
    model.backward(g)
    model.predict(x, batch_size=2)
    model.features(x, model.node_names()[1:])
    train_step(model, SGD(0.01, params=model.parameters()), x, np.array([0, 1, 1]))
    np.testing.assert_array_equal(x, kept)
    np.testing.assert_array_equal(g, kept_g)


# ---------------------------------------------------------------- features, inference, predict
def _branchy(seed=10):
    x = cnnkit.Input((4, 4, 2))
    a = ReLU(name="a_relu")(Conv2d(3, 3, padding=1, name="a")(x))
    b = MaxPool2d(2, name="b")(a)
    c = Conv2d(3, 1, name="c")(x)
    d = Dense(4, name="d")(Flatten(name="flat")(Add(name="sum")([a, c])))
    return cnnkit.Model(x, [Dense(2, name="out")(d), Flatten(name="b_flat")(b)], seed=seed)


def test_features_run_each_needed_step_once_and_give_what_forward_gives():
    model = _branchy()
    x = _x(3, 4, 4, 2)
    calls = _spy_calls(model)
    a_relu, d, c = model.features(x, ["a_relu", "d", "c"])
    # each needed step once ("a_relu" is applied by "a", fused), none of "b", "b_flat", "out"
    assert sorted(name for name, _, _ in calls) == sorted(["a", "c", "sum", "flat", "d"])
    conv_a = model["a"].forward(x)
    np.testing.assert_allclose(a_relu, np.maximum(conv_a, 0), rtol=1e-6)
    np.testing.assert_allclose(c, model["c"].forward(x), rtol=1e-6)
    expected_d = model["d"].forward((np.maximum(conv_a, 0) + model["c"].forward(x)).reshape(3, -1))
    np.testing.assert_allclose(d, expected_d, rtol=1e-5)
    out, _ = model.forward(x)
    np.testing.assert_allclose(model["out"].forward(d), out, rtol=1e-5)
    np.testing.assert_array_equal(model.features(x, "d"), d)


def test_inference_keeps_no_context_and_frees_each_tensor_after_its_last_reader():
    x = cnnkit.Input((6,))
    y = x
    for units in (5, 4, 3, 2):
        y = Tanh()(Dense(units)(y))
    model = cnnkit.Model(x, y, seed=11)
    produced: list = []
    alive_at_each_call = []
    for layer in model.layers:
        def call(array, training=False, *, _original=layer.call, **options):
            # what earlier steps produced and is still alive, besides this step's input
            alive_at_each_call.append(sum(1 for ref in produced if ref() is not None and ref() is not array))
            out, context = _original(array, training, **options)
            assert not training and context is None
            produced.append(weakref.ref(out))
            return out, context
        layer.call = call
    model.predict(_x(4, 6), batch_size=4)
    assert alive_at_each_call == [0] * len(model.layers)
    assert model._tape is None


def test_training_keeps_a_context_per_step_until_backward_passes_it():
    model = _branchy()
    calls = _spy_calls(model)
    model.forward(_x(2, 4, 4, 2), training=True)
    assert all(training for _, training, _ in calls)
    assert len(model._tape.contexts) == len(model.plan.steps)
    tape = model._tape
    model.backward([np.ones((2, 2), np.float32), np.ones((2, 12), np.float32)])
    assert tape.contexts == {}


@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_predict_in_batches_equals_forward(batch_size):
    model = _branchy()
    x = _x(7, 4, 4, 2)
    whole = model.forward(x)
    for ours, theirs in zip(model.predict(x, batch_size=batch_size), whole):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- a layer at two nodes
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_a_layer_applied_twice_in_a_row_keeps_a_context_per_node(kind):
    if kind == "dense":
        x = cnnkit.Input((4,))
        shared = Dense(4, name="shared")
        data = _x(3, 4, dtype=np.float64)
    else:
        x = cnnkit.Input((4, 4, 3))
        shared = Conv2d(3, 3, padding=1, name="shared")
        data = _x(2, 4, 4, 3, dtype=np.float64)
    model = cnnkit.Model(x, shared(Tanh()(shared(x))), seed=12)
    assert model.node_names() == ["input", "shared", "tanh_1", "shared:1"]
    _gradcheck_passes(model, data)


def test_a_shared_layer_gradient_is_the_sum_of_its_nodes_gradients():
    # training the model equals summing the gradients of two models that each use one node
    shared = Dense(3, name="shared")
    a, b = cnnkit.Input((3,), name="a"), cnnkit.Input((3,), name="b")
    model = cnnkit.Model([a, b], Add()([shared(a), Tanh()(shared(b))]), seed=13)
    data = [_x(2, 3), _x(2, 3, seed=1)]
    g = _x(2, 3, seed=2)
    model.forward(data, training=True)
    model.zero_grad()
    model.backward(g)
    together = shared.parameters()["weight"].grad.copy()
    first = shared.forward(data[0], training=True)
    shared.zero_grad()
    shared.backward(g)
    alone_a = shared.parameters()["weight"].grad.copy()
    second = shared.forward(data[1], training=True)
    shared.zero_grad()
    shared.backward(g * (1 - np.tanh(second) ** 2))
    alone_b = shared.parameters()["weight"].grad.copy()
    assert first.shape == second.shape
    np.testing.assert_allclose(together, alone_a + alone_b, rtol=1e-5)


# ---------------------------------------------------------------- errors
def test_a_wrong_number_of_inputs_is_a_clear_error():
    a, b = cnnkit.Input((3,), name="left"), cnnkit.Input((3,), name="right")
    model = cnnkit.Model([a, b], Add()([a, b]))
    for given in ([_x(2, 3)], [_x(2, 3)] * 3):
        with pytest.raises(cnnkit.ShapeError) as info:
            model.forward(given)
        assert str(info.value) == (f"model: expected 2 input arrays (one per input ['left', 'right']); "
                                   f"received {len(given)}")
    with pytest.raises(cnnkit.ShapeError, match="expected 2 input arrays"):
        model.predict(_x(2, 3))


def test_a_wrong_number_of_output_gradients_is_a_clear_error():
    model = _branchy()
    model.forward(_x(2, 4, 4, 2), training=True)
    with pytest.raises(cnnkit.ShapeError) as info:
        model.backward(np.ones((2, 2), np.float32))
    assert str(info.value) == ("model: backward expects a list of 2 gradients, one per output (None for an output "
                               "without loss); received ndarray")
    with pytest.raises(cnnkit.ShapeError, match="expected 2 output gradients; received 1"):
        model.backward([np.ones((2, 2), np.float32)])
    with pytest.raises(cnnkit.ShapeError) as info:
        model.backward([np.ones((2, 3), np.float32), None])
    assert str(info.value) == ("out: backward expected a gradient of shape (2, 2) (the output of the last forward, "
                               "an output of model); received (2, 3)")


@pytest.mark.parametrize("merge, shapes, message", [
    (Add, [(4, 4, 3), (4, 4, 2)],
     "add: every input must have the same shape; received [(4, 4, 3), (4, 4, 2)]; a residual shortcut with "
     "other channels or size needs a 1x1 projection convolution"),
    (Multiply, [(3,), (4,)],
     "multiply: every input must have the same shape; received [(3,), (4,)]; a residual shortcut with other "
     "channels or size needs a 1x1 projection convolution"),
    (Concatenate, [(4, 4, 3), (2, 2, 3)],
     "concatenate: inputs must agree on every axis but -1; received [(4, 4, 3), (2, 2, 3)]"),
    (Concatenate, [(4, 4, 3), (4, 3)],
     "concatenate: axis=-1 does not fit inputs of shapes [(4, 4, 3), (4, 3)]; use an axis of the sample "
     "(-1: channels)"),
])
def test_shapes_that_do_not_merge_are_a_clear_error(merge, shapes, message):
    with pytest.raises(cnnkit.ShapeError) as info:
        merge(name=merge.__name__.lower())([cnnkit.Input(shape) for shape in shapes])
    assert str(info.value) == message


def test_a_merge_of_one_tensor_is_a_clear_error():
    with pytest.raises(cnnkit.ShapeError, match="merges a list of at least two tensors"):
        Add()(cnnkit.Input((3,)))


def test_an_output_that_depends_on_a_tensor_not_among_the_inputs_is_a_clear_error():
    a, b = cnnkit.Input((3,), name="a"), cnnkit.Input((3,), name="b")
    y = Add()([a, b])
    with pytest.raises(cnnkit.ConfigError) as info:
        cnnkit.Model(a, y, name="half")
    assert str(info.value) == ("half: an output depends on input SymbolicTensor(shape=(3,), from='b'), which is "
                               "not among the model's inputs; pass it in Model(inputs=[...])")


def test_a_sequential_given_a_merge_layer_is_a_clear_error():
    with pytest.raises(cnnkit.ConfigError) as info:
        cnnkit.Sequential([Dense(3), Add()], input_shape=(3,))
    assert str(info.value) == ("sequential: layer 1 (Add) merges several tensors; build graphs with cnnkit.Model "
                               "(the functional API)")


def test_a_shared_layer_given_another_shape_is_a_clear_error():
    shared = Dense(3, name="shared")
    shared(cnnkit.Input((4,)))
    with pytest.raises(cnnkit.ShapeError) as info:
        shared(cnnkit.Input((5,)))
    assert str(info.value) == ("shared: is built for input shape (4,) and shares its weights wherever it is used; "
                               "received a tensor of shape (5,)")


def test_a_one_input_layer_given_two_tensors_is_a_clear_error():
    with pytest.raises(cnnkit.ShapeError) as info:
        Dense(3, name="fc")([cnnkit.Input((3,)), cnnkit.Input((3,))])
    assert str(info.value) == ("fc: takes 1 input tensor(s); received 2; combine several with Add, Concatenate "
                               "or Multiply")


def test_backward_without_a_training_forward_is_a_clear_error():
    model = _branchy()
    model.forward(_x(2, 4, 4, 2))
    with pytest.raises(cnnkit.ShapeError, match=r"model: backward called without a forward\(x, training=True\)"):
        model.backward([None, None])


def test_layers_hold_no_context_after_a_model_runs():
    # contexts live on the executor's tape, never in the layer's slot
    model = _branchy()
    model.forward(_x(2, 4, 4, 2), training=True)
    assert all(layer._cache is None for layer in model.layers)
