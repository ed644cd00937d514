"""Weights change through known routes only, and every derived cache follows (issue 13, section 5)."""

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import WeightsError
from cnnkit.layers import Conv2d, ReLU


def _model() -> cnnkit.Sequential:
    # 16 channels: batch 8 runs Winograd F(4x4) (128 tiles), batch 1 the GEMM path (16 tiles)
    return cnnkit.Sequential([Conv2d(16, 3, padding=1, name="conv1_1"), ReLU(name="relu1_1"),
                              Conv2d(16, 3, padding=1, name="conv1_2")], input_shape=(16, 16, 16))


def _agree(model, x) -> np.ndarray:
    """The outputs of batch 8 (Winograd) and of its first image alone (GEMM), checked equal."""
    batch = model.forward(x)
    single = model.forward(x[:1])
    np.testing.assert_allclose(batch[:1], single, rtol=1e-4, atol=1e-4)
    return batch


def test_state_dict_values_are_read_only_so_winograd_filters_cannot_go_stale():
    model = _model()
    x = np.random.default_rng(0).standard_normal((8, 16, 16, 16)).astype(np.float32)
    assert np.abs(_agree(model, x)).max() > 0.1            # Winograd filters are cached now
    with pytest.raises(ValueError, match="read-only"):
        model.state_dict()["conv1_1.weight"] *= 0           # the write: refused
    with pytest.raises(ValueError, match="read-only"):
        model["conv1_1"].parameters()["weight"].value[0] = 0
    zeros = np.zeros_like(model.state_dict()["conv1_1.weight"])
    model.load_state_dict({"conv1_1.weight": zeros}, strict=False)
    assert np.all(_agree(model, x) == model.state_dict()["conv1_2.bias"])   # conv1_1 outputs 0


@pytest.mark.parametrize("route", ["assign", "writing", "load_state_dict", "optimizer"])
def test_every_write_route_refreshes_the_winograd_filters(route):
    model = _model()
    x = np.random.default_rng(1).standard_normal((8, 16, 16, 16)).astype(np.float32)
    before = _agree(model, x)
    weight = model["conv1_2"].parameters()["weight"]
    if route == "assign":
        weight.value = weight.value * 2
    elif route == "writing":
        with weight.writing() as array:
            array *= 2
    elif route == "load_state_dict":
        model.load_state_dict({"conv1_2.weight": weight.value * 2}, strict=False)
    else:
        optimizer = cnnkit.optim.SGD(lr=1.0, params={"w": weight})
        weight.accumulate(-weight.value)                    # one step of lr 1 doubles the weight
        optimizer.step()
    after = _agree(model, x)
    bias = model.state_dict()["conv1_2.bias"]
    np.testing.assert_allclose(after - bias, 2 * (before - bias), rtol=1e-4, atol=1e-4)


def test_assigning_a_value_copies_it():
    model = _model()
    weight = model["conv1_1"].parameters()["weight"]
    mine = np.ones(weight.shape, np.float32)
    weight.value = mine
    mine *= 0                                                # the caller's array stays the caller's
    assert np.all(weight.value == 1)


def test_buffers_are_handed_out_read_only():
    model = cnnkit.Sequential([cnnkit.layers.BatchNorm2d(name="bn")], input_shape=(2, 2, 3))
    with pytest.raises(ValueError, match="read-only"):
        model.state_dict()["bn.running_mean"][0] = 1
    model.load_state_dict({"bn.running_mean": np.ones(3, np.float32)}, strict=False)
    np.testing.assert_array_equal(model.buffers()["bn.running_mean"], 1)


@pytest.mark.parametrize("state, received", [(None, "NoneType"), ([("conv1_1.weight", 0)], "list"),
                                             ("weights.safetensors", "str")])
def test_load_state_dict_refuses_what_is_not_a_mapping(state, received):
    with pytest.raises(WeightsError, match=f"expects a mapping of names to arrays.*received {received}$"):
        _model().load_state_dict(state)


def test_load_state_dict_refuses_values_that_are_not_numbers():
    model = _model()
    state = dict(model.state_dict())
    state["conv1_1.bias"] = np.array(["a"] * 16)
    with pytest.raises(WeightsError, match=r"not real numbers: conv1_1.bias: dtype <U1"):
        model.load_state_dict(state)


def test_a_copied_or_pickled_model_still_follows_its_writes():
    import copy
    import pickle
    for clone in (copy.deepcopy(_model()), pickle.loads(pickle.dumps(_model()))):
        weight = clone["conv1_1"].parameters()["weight"]
        with weight.writing() as array:
            array[...] = 0
        assert np.all(weight.value == 0) and np.shares_memory(weight.value, array)


def test_a_read_only_array_becomes_a_parameter_that_optimizers_can_update():
    frozen = np.ones(3, np.float32)
    frozen.flags.writeable = False
    param = cnnkit.Parameter(frozen)
    param.accumulate(np.ones(3, np.float32))
    cnnkit.optim.SGD(lr=0.5, params={"p": param}).step()
    np.testing.assert_array_equal(param.value, 0.5)


def test_load_state_dict_reports_ragged_values_with_the_rest():
    model = _model()
    state = {"conv1_1.bias": [[1.0], [1.0, 2.0]], "conv1_2.bias": np.zeros(3)}
    with pytest.raises(WeightsError, match=r"wrong shapes: conv1_2.bias: model \(16,\), given \(3,\) \| "
                                           r"not real numbers: conv1_1.bias: not an array$"):
        model.load_state_dict(state, strict=False)


def test_the_packed_gemm_weight_is_kept_and_follows_the_bias(monkeypatch):
    # the compiled GEMM multiplies by the weight with the bias as its last row: a copy, made once
    from cnnkit.ops import conv as conv_ops
    from cnnkit.ops import jit
    monkeypatch.setenv("CNNKIT_JIT", "1")
    assert jit.enabled()
    packed = []
    original = conv_ops.packed_weight
    monkeypatch.setattr(conv_ops, "packed_weight", lambda *a: packed.append(a[0].shape) or original(*a))
    model = _model()
    x = np.random.default_rng(2).standard_normal((1, 16, 16, 16)).astype(np.float32)   # batch 1: GEMM
    before = model.forward(x)
    model.forward(x)
    assert len(packed) == 2                                  # one per convolution, kept for the second call
    bias = model["conv1_2"].parameters()["bias"]
    bias.value = bias.value + 1
    after = model.forward(x)
    assert len(packed) == 3
    np.testing.assert_allclose(after, before + 1, rtol=1e-6, atol=1e-5)
