"""Batch norm folded into the convolution before it in inference: the pair's numbers to float32
rounding, one convolution instead of two passes, and folded weights that follow every write."""

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import ConfigError
from cnnkit.executor import run_forward
from cnnkit.layers import Add, BatchNorm2d, Conv2d, DepthwiseConv2d, GlobalAvgPool2d, ReLU, ReLU6
from cnnkit.layers import conv as conv_module
from cnnkit.train import train_step


def assert_close(folded: np.ndarray, unfolded: np.ndarray, atol: float = 1e-6) -> None:
    """Folding rounds differently (``w * scale`` rounded once, instead of the output scaled), so the
    two agree to rounding, relative to the size of the numbers (``atol`` times the largest): float64
    to 1e-12 (measured: 5e-15), which holds the formula exactly (forgetting ``eps`` or the bias
    would miss by 1e-6 or more); float32 to ``atol``. Measured in float32, the largest difference
    over the largest output: one block through matrix products 4e-7, through Winograd F(4x4),
    whose transforms amplify rounding, 3.3e-6; ResNet-18 7e-7; MobileNetV2 (52 batch norms of
    random scales in a chain) 2.8e-6."""
    scale = float(np.abs(unfolded).max())
    if unfolded.dtype == np.float64:
        np.testing.assert_allclose(folded, unfolded, rtol=1e-12, atol=1e-12 * scale)
    else:
        np.testing.assert_allclose(folded, unfolded, rtol=1e-5, atol=atol * scale)


WINOGRAD = 1e-5


def randomise_batch_norms(model: cnnkit.Model, seed: int = 0) -> None:
    """Statistics and affine parameters far from the initial ones (which fold to the identity)."""
    rng = np.random.default_rng(seed)
    state = {}
    for layer in model.layers:
        if isinstance(layer, BatchNorm2d):
            c = layer.input_shape[-1]
            state.update({f"{layer.name}.weight": rng.uniform(0.5, 1.5, c), f"{layer.name}.bias": rng.normal(0, 0.5, c),
                          f"{layer.name}.running_mean": rng.normal(0, 0.5, c),
                          f"{layer.name}.running_var": rng.uniform(0.3, 2.0, c)})
    model.load_state_dict({k: v.astype(np.float32) for k, v in state.items()}, strict=False)


def block(channels: int = 16, size: int = 12, seed: int = 0) -> cnnkit.Model:
    """A ResNet basic block: conv-BN-ReLU, conv-BN, Add with the input, ReLU; then a depthwise
    conv-BN-ReLU6 and a grouped conv-BN, as in a MobileNet block."""
    x = cnnkit.Input((size, size, channels), name="x")
    y = ReLU(name="relu1")(BatchNorm2d(name="bn1")(Conv2d(channels, 3, padding=1, use_bias=False, name="conv1")(x)))
    y = BatchNorm2d(name="bn2")(Conv2d(channels, 3, padding=1, name="conv2")(y))
    y = ReLU(name="out")(Add(name="add")([y, x]))
    y = ReLU6(name="relu6")(BatchNorm2d(name="bn3")(DepthwiseConv2d(3, padding=1, depth_multiplier=2, name="dw")(y)))
    y = BatchNorm2d(name="bn4")(Conv2d(channels, 1, groups=4, name="grouped")(y))
    model = cnnkit.Model(x, y, name="block", seed=seed)
    randomise_batch_norms(model, seed)
    return model


def layer_by_layer(model: cnnkit.Model, x: np.ndarray) -> np.ndarray:
    """Every layer of the graph run on its own by ``forward``, no executor involved."""
    values = {0: x}
    for step in model.plan.steps:
        inputs = [values[t] for t in step.inputs]
        values[step.output] = step.layer.forward(inputs if step.layer.arity is None else inputs[0])
    return values[model.plan.outputs[0]]


@pytest.fixture
def batch_norm_calls(monkeypatch) -> list:
    calls = []
    original = BatchNorm2d.call
    monkeypatch.setattr(BatchNorm2d, "call", lambda self, *a, **k: calls.append(self.name) or original(self, *a, **k))
    return calls


@pytest.fixture
def folds(monkeypatch) -> list:
    """The layers whose folded weights are computed, one entry per computation."""
    made = []
    original = conv_module.folded_weights
    monkeypatch.setattr(conv_module, "folded_weights", lambda *a: made.append(a[0].shape) or original(*a))
    return made


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [1, 8])   # batch 8: conv1 and conv2 run Winograd F(4x4), batch 1 GEMM
def test_a_folded_block_gives_the_layers_numbers_and_runs_no_batch_norm(batch, dtype, batch_norm_calls,
                                                                        monkeypatch):
    model = block()
    x = np.random.default_rng(1).standard_normal((batch, 12, 12, 16)).astype(dtype)
    relu_passes = []
    original = ReLU._apply
    monkeypatch.setattr(ReLU, "_apply", lambda self, x, out: relu_passes.append(self.name) or original(self, x, out))
    folded = model.predict(x)
    assert batch_norm_calls == [] and relu_passes == ["out"]   # relu1 and relu6 fused into the folded convolutions
    expected = layer_by_layer(model, x)
    assert sorted(batch_norm_calls) == ["bn1", "bn2", "bn3", "bn4"]
    assert folded.dtype == expected.dtype
    assert_close(folded, expected, WINOGRAD if batch == 8 else 1e-6)
    with cnnkit.runtime(fold_batch_norm=False):
        unfolded = model.predict(x)
    assert_close(folded, unfolded, WINOGRAD if batch == 8 else 1e-6)
    assert not np.array_equal(folded, unfolded)   # not the same computation: the last bits differ


@pytest.mark.parametrize("build, batch_norms, atol", [
    (lambda: cnnkit.models.resnet18(input_shape=(64, 64, 3)), 20, 2e-6),
    (lambda: cnnkit.models.mobilenet_v2(input_shape=(32, 32, 3), width_mult=0.5), 52, 1e-5),
])
def test_resnet18_and_mobilenet_v2_predict_the_same_folded_and_unfolded(build, batch_norms, atol, batch_norm_calls):
    model = build()
    randomise_batch_norms(model, seed=3)
    size = model.tensor_shape(0)[0]
    x = np.random.default_rng(4).standard_normal((2, size, size, 3)).astype(np.float32)   # batch 2: no Winograd
    folded = model.predict(x)
    assert batch_norm_calls == []
    with cnnkit.runtime(fold_batch_norm=False):
        unfolded = model.predict(x)
    assert len(batch_norm_calls) == batch_norms
    assert_close(folded, unfolded, atol)
    assert np.abs(unfolded).max() > 1.0   # the comparison is not one of zeros


def test_the_switch_is_the_callers_block_and_nests():
    assert cnnkit.ops.runtime.settings().fold_batch_norm
    with cnnkit.runtime(fold_batch_norm=False) as outer:
        assert not outer.fold_batch_norm
        with cnnkit.runtime(threads=1) as inner:     # None keeps the enclosing block's
            assert not inner.fold_batch_norm
        with cnnkit.runtime(fold_batch_norm=True) as inner:
            assert inner.fold_batch_norm
    assert cnnkit.ops.runtime.folding_batch_norm()
    with pytest.raises(ConfigError, match=r"runtime: fold_batch_norm must be True, False or None \(keep the "
                                          r"enclosing block's\); received fold_batch_norm='no'$"):
        with cnnkit.runtime(fold_batch_norm="no"):
            pass


def test_a_convolution_read_twice_is_not_folded(batch_norm_calls):
    x = cnnkit.Input((8, 8, 4))
    conv = Conv2d(4, 3, padding=1, name="conv")(x)
    model = cnnkit.Model(x, Add(name="add")([BatchNorm2d(name="bn")(conv), conv]), seed=0)
    randomise_batch_norms(model)
    data = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
    y = model.predict(data)
    assert batch_norm_calls == ["bn"]
    np.testing.assert_array_equal(y, layer_by_layer(model, data))


def test_a_batch_norm_read_twice_is_folded_without_the_relu(batch_norm_calls, folds):
    x = cnnkit.Input((8, 8, 4))
    normalised = BatchNorm2d(name="bn")(Conv2d(4, 3, padding=1, name="conv")(x))
    model = cnnkit.Model(x, Add(name="add")([ReLU(name="relu")(normalised), normalised]), seed=0)
    randomise_batch_norms(model)
    data = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
    y = model.predict(data)
    assert batch_norm_calls == [] and len(folds) == 1
    assert_close(y, layer_by_layer(model, data))
    assert (layer_by_layer(model, data) < 0).any()   # the ReLU ran on its own: the Add saw the negative part


def test_features_at_a_convolution_are_taken_before_its_batch_norm(batch_norm_calls):
    model = block()
    x = np.random.default_rng(2).standard_normal((2, 12, 12, 16)).astype(np.float32)
    conv, normalised = model.features(x, ["conv2", "bn2"])
    assert batch_norm_calls == ["bn2"]   # conv2's output is wanted: bn2 runs on it; bn1, bn3 fold
    np.testing.assert_array_equal(normalised, model["bn2"].forward(conv))
    batch_norm_calls.clear()
    bn1 = model.features(x, "bn1")       # bn1's output is wanted, conv1's is not: folded, relu1 not
    assert batch_norm_calls == [] and (bn1 < 0).any()


def test_training_steps_are_never_folded(batch_norm_calls, folds):
    model = block()
    x = np.random.default_rng(3).standard_normal((4, 12, 12, 16)).astype(np.float32)
    model.forward(x, training=True)
    assert len(batch_norm_calls) == 4 and folds == []
    # a convolution in inference and its batch norm in training: not folded either
    batch_norm_calls.clear()
    conv1 = model.node_names().index("conv1") - 1
    run_forward(model.plan, [x], model.plan.outputs, frozenset(range(conv1 + 1, len(model.plan.steps))))
    assert len(batch_norm_calls) == 4 and folds == []


def test_batch_norm_with_frozen_statistics_is_not_folded_in_training(batch_norm_calls, folds):
    model = block()
    for layer in model.layers:
        if isinstance(layer, BatchNorm2d):
            layer.frozen_stats = True
    reference = block()
    reference.load_state_dict(model.state_dict())
    for layer in reference.layers:
        if isinstance(layer, BatchNorm2d):
            layer.frozen_stats = True
    x = np.random.default_rng(4).standard_normal((4, 12, 12, 16)).astype(np.float32)
    y = model.forward(x, training=True)
    assert len(batch_norm_calls) == 4 and folds == []
    dx = model.backward(np.ones_like(y))
    with cnnkit.runtime(fold_batch_norm=False):
        reference.forward(x, training=True)
        dx_reference = reference.backward(np.ones_like(y))
    np.testing.assert_array_equal(dx, dx_reference)
    for (name, ours), theirs in zip(model.parameters().items(), reference.parameters().values()):
        np.testing.assert_array_equal(ours.grad, theirs.grad, err_msg=name)


def test_a_frozen_base_runs_in_inference_in_a_training_step_and_folds(batch_norm_calls):
    x = cnnkit.Input((8, 8, 3))
    features = ReLU()(BatchNorm2d(name="bn")(Conv2d(8, 3, padding=1, name="conv")(x)))
    model = cnnkit.Model(x, cnnkit.layers.Dense(3, name="fc")(GlobalAvgPool2d()(features)), seed=0)
    randomise_batch_norms(model)
    model.freeze(up_to="bn")
    rng = np.random.default_rng(5)
    data, labels = rng.standard_normal((4, 8, 8, 3)).astype(np.float32), rng.integers(0, 3, 4)
    before = model.buffers()["bn.running_mean"].copy()
    train_step(model, cnnkit.optim.SGD(0.1, params=model.parameters(trainable_only=True)), data, labels)
    assert batch_norm_calls == []   # the base had no gradient to pass: folded
    np.testing.assert_array_equal(model.buffers()["bn.running_mean"], before)


def test_the_folded_weights_are_made_once(folds):
    model = block()
    x = np.random.default_rng(6).standard_normal((2, 12, 12, 16)).astype(np.float32)
    model.predict(x)
    assert len(folds) == 4
    model.predict(x)
    model.predict(x.astype(np.float64))   # another dtype: folded again, in it
    assert len(folds) == 8
    model.predict(x.astype(np.float64))
    assert len(folds) == 8


def _change_batch_norm(model, route: str) -> None:
    """Change bn2 (or conv2) through one route that writes weights or statistics."""
    bn, conv = model["bn2"], model["conv2"]
    if route == "load_state_dict statistics":
        model.load_state_dict({"bn2.running_var": bn.buffers()["running_var"] * 3}, strict=False)
    elif route == "load_state_dict gamma":
        model.load_state_dict({"bn2.weight": bn.parameters()["weight"].value * 2}, strict=False)
    elif route == "assign beta":
        beta = bn.parameters()["bias"]
        beta.value = beta.value + 1
    elif route == "assign conv weight":
        weight = conv.parameters()["weight"]
        weight.value = weight.value * -1
    elif route == "assign conv bias":
        bias = conv.parameters()["bias"]
        bias.value = bias.value + 2
    elif route == "optimizer":
        gamma = bn.parameters()["weight"]
        gamma.accumulate(np.ones(gamma.shape, np.float32))
        cnnkit.optim.SGD(0.5, params={"gamma": gamma}).step()
    elif route == "training forward":   # updates the running statistics in place
        shifted = np.random.default_rng(7).standard_normal((4, 12, 12, 16)).astype(np.float32) * 3 + 2
        model.forward(shifted, training=True)
    elif route == "writable_state":
        with model.writable_state() as state:
            state["bn2.running_mean"][...] += 1
    elif route == "writable_buffers":
        bn.writable_buffers()["running_mean"][...] -= 1


ROUTES = ["load_state_dict statistics", "load_state_dict gamma", "assign beta", "assign conv weight",
          "assign conv bias", "optimizer", "training forward", "writable_state", "writable_buffers"]


@pytest.mark.parametrize("route", ROUTES)
def test_the_folded_result_follows_every_write(route, folds):
    model = block()
    x = np.random.default_rng(8).standard_normal((8, 12, 12, 16)).astype(np.float32)   # Winograd: cached filters too
    before = model.predict(x)
    made = len(folds)
    _change_batch_norm(model, route)
    after = model.predict(x)
    assert len(folds) > made
    with cnnkit.runtime(fold_batch_norm=False):
        unfolded = model.predict(x)
    assert_close(after, unfolded, WINOGRAD)
    assert np.abs(after - before).max() > 1e-2 * np.abs(before).max()   # the write did change the output


def test_every_write_route_moves_the_batch_norm_version():
    model = block()
    bn = model["bn2"]
    for route in ROUTES:
        version = (bn.state_version(), model["conv2"].state_version())
        _change_batch_norm(model, route)
        assert (bn.state_version(), model["conv2"].state_version()) != version, route


def test_a_convolution_refuses_to_fold_in_training():
    conv, bn = Conv2d(4, 3, name="conv"), BatchNorm2d(name="bn")
    conv.build((6, 6, 2))
    bn.build(conv.output_shape)
    x = np.zeros((2, 6, 6, 2), np.float32)
    with pytest.raises(ConfigError, match="conv: cannot fold bn into this convolution .training=True"):
        conv.call(x, True, fold=bn)
    fused = Conv2d(4, 3, activation="relu", name="fused")
    fused.build((6, 6, 2))
    assert not fused.folds_affine and conv.folds_affine
    with pytest.raises(ConfigError, match="fused: cannot fold bn"):
        fused.call(x, False, fold=bn)
