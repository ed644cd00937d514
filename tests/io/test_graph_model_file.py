"""Graph models (``cnnkit.Model``) in files: saved and loaded like a Sequential, with their weights,
``trainable`` flags and batch-norm state; custom layers only when registered; training checkpoints;
and a forged graph architecture refused before anything is built."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cnnkit
from cnnkit.checkpoint import load
from cnnkit.data import digits
from cnnkit.errors import WeightsError
from cnnkit.io import read_safetensors_metadata, write_safetensors
from cnnkit.layers import (LAYER_CLASSES, Add, BatchNorm2d, Concatenate, Conv2d, Dense, Flatten, GlobalAvgPool2d,
                           Layer, MaxPool2d, ReLU)
from cnnkit.optim import Adam
from cnnkit.parameter import Parameter

from refusal import assert_refused

RNG = np.random.default_rng(0)


def residual_model(seed: int = 0) -> cnnkit.Model:
    """Two inputs, two outputs; a projection and an identity shortcut, an Inception-style
    concatenation, batch norm, and one convolution applied at two nodes (shared weights)."""
    image = cnnkit.Input((8, 8, 3), name="image")
    mask = cnnkit.Input((8, 8, 1), name="mask")
    y = ReLU()(BatchNorm2d(name="bn1")(Conv2d(6, 3, padding=1, name="conv1")(image)))
    y = Add(name="projected")([y, Conv2d(6, 1, name="proj")(image)])
    shared = Conv2d(6, 3, padding=1, name="shared")
    y = Add(name="identity")([ReLU()(shared(y)), y])
    y = shared(y)
    y = Concatenate(name="cat")([y, Conv2d(2, 1, name="mask_conv")(mask)])
    scores = Dense(4, name="fc")(Flatten()(MaxPool2d(2)(y)))
    side = Dense(3, name="side")(GlobalAvgPool2d()(y))
    return cnnkit.Model([image, mask], [scores, side], name="two_heads", seed=seed)


def inputs(batch: int = 2):
    return [RNG.standard_normal((batch, 8, 8, 3)).astype(np.float32),
            RNG.standard_normal((batch, 8, 8, 1)).astype(np.float32)]


def test_a_graph_model_round_trips_with_weights_flags_and_frozen_statistics(tmp_path):
    model = residual_model()
    model.freeze("conv1")
    model.freeze("fc.bias")
    model["bn1"].frozen_stats = True
    with model.writable_state() as state:   # statistics that are not the initial ones
        state["bn1.running_mean"][:] = np.arange(6)
        state["bn1.running_var"][:] = np.arange(1, 7)
    path = tmp_path / "graph.safetensors"
    model.save(path)

    loaded = cnnkit.load(path)
    assert type(loaded) is cnnkit.Model
    assert json.loads(read_safetensors_metadata(path)["architecture"])["format"] == 1
    assert loaded.get_config() == model.get_config()
    assert loaded.node_names() == model.node_names()
    assert {k: p.trainable for k, p in loaded.parameters().items()} == \
        {k: p.trainable for k, p in model.parameters().items()}
    assert loaded["bn1"].frozen_stats is True
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value, err_msg=name)
    x = inputs()
    for got, want in zip(loaded.predict(x), model.predict(x)):
        np.testing.assert_array_equal(got, want)


def test_the_shared_layer_is_stored_once():
    model = residual_model()
    assert [key for key in model.state_dict() if key.startswith("shared.")] == ["shared.weight", "shared.bias"]
    assert model.node_names().count("shared:1") == 1


def test_a_sequential_file_keeps_the_chain_format_and_loads_as_a_sequential(tmp_path):
    chain = cnnkit.Sequential([Conv2d(4, 3, name="c"), ReLU(), Flatten(), Dense(2, name="fc")], input_shape=(5, 5, 1))
    chain.save(tmp_path / "chain.safetensors")
    saved = json.loads(read_safetensors_metadata(tmp_path / "chain.safetensors")["architecture"])
    assert "class" not in saved and "nodes" not in saved and saved["input_shape"] == [5, 5, 1]
    loaded = load(tmp_path / "chain.safetensors")
    assert type(loaded) is cnnkit.Sequential and loaded.get_config() == chain.get_config()


# ---------------------------------------------------------------- forged graph architectures


def _forge(tmp_path, model: cnnkit.Model, change) -> str:
    """``model``'s tensors under a header whose architecture ``change(config)`` has altered."""
    config = model.get_config()
    change(config)
    path = tmp_path / "forged.safetensors"
    write_safetensors(path, dict(model.state_dict()),
                      {"format": "cnnkit-model", "version": "1", "architecture": json.dumps(config)})
    return path


def _layer(config: dict, name: str) -> dict:
    return next(entry["config"] for entry in config["layers"] if entry["config"]["name"] == name)


def test_a_graph_layer_bigger_than_its_tensors_is_refused_before_building(tmp_path):
    path = _forge(tmp_path, residual_model(), lambda c: _layer(c, "fc").update(units=3_000_000))
    assert_refused(load, path, WeightsError, r"gives layer fc \(Dense\) 387,000,000 parameters, but the file "
                                             r"holds 516 numbers for it; .* nothing was built")


def test_the_walk_carries_shapes_through_the_merges(tmp_path):
    """Inputs of 64 x 64 leave every convolution's count as it was; only the shapes carried
    through both Adds and the Concatenate (6 + 2 channels) give ``fc`` its (32 * 32 * 8) * 4 + 4."""
    def larger_images(config):
        config["inputs"][0]["shape"] = [64, 64, 3]
        config["inputs"][1]["shape"] = [64, 64, 1]
    path = _forge(tmp_path, residual_model(), larger_images)
    assert_refused(load, path, WeightsError, r"gives layer fc \(Dense\) 32,772 parameters, but the file holds 516")

    def wider_mask(config):   # a wide mask input: the 1x1 convolution's count grows with it
        config["inputs"][1]["shape"] = [8, 8, 50_000]
    path = _forge(tmp_path, residual_model(), wider_mask)
    assert_refused(load, path, WeightsError, r"gives layer mask_conv \(Conv2d\) 100,002 parameters")


def test_a_shared_layer_is_counted_once(tmp_path):
    """``shared`` runs at two nodes and the file holds its weights once: the file loads."""
    model = residual_model()
    held = sum(v.size for k, v in model.state_dict().items() if k.startswith("shared."))
    assert held == model["shared"].param_count()
    assert load(_forge(tmp_path, model, lambda c: None)).node_names() == model.node_names()


@pytest.mark.parametrize("change,match", [
    (lambda c: c.update(format=2), r"graph format 2 is not one this cnnkit reads \(1\); upgrade cnnkit"),
    (lambda c: c["nodes"][0].update(inputs=["fc"]), r"node 0 \(conv1\) reads 'fc', which is not an input or "
                                                     r"an earlier node"),
    (lambda c: c["nodes"][0].update(inputs="image"), r"node 0 \(conv1\) inputs must be a non-empty list"),
    (lambda c: c["nodes"][0].update(layer="nope"), r"node 0 applies layer 'nope', which is not among"),
    (lambda c: c.update(outputs=["ghost"]), r"output 'ghost' is not an input or a node"),
    (lambda c: c.update(nodes=None), r"nodes must be a list; received NoneType"),
    (lambda c: c.pop("nodes"), r"nodes must be a list; received NoneType"),
    (lambda c: c["inputs"][0].update(shape=[8, "x", 3]), r"shape must be a list of positive ints"),
    (lambda c: c["inputs"][0].update(shape=[8, 7, 3]), r"cat: inputs must agree on every axis but -1"),
    (lambda c: c["nodes"][8].update(inputs=["image"]), r"shared: is built for input shape \(8, 8, 6\)"),
    (lambda c: c.update(seed="x"), r"seed must be a non-negative int or null"),
])
def test_a_malformed_graph_architecture_is_a_weights_error_naming_the_file(tmp_path, change, match):
    path = _forge(tmp_path, residual_model(), change)
    assert_refused(load, path, WeightsError, match)


def test_a_node_cannot_read_a_later_node_so_a_file_cannot_make_a_cycle(tmp_path):
    def loop(config):
        config["nodes"][0]["inputs"] = [config["nodes"][1]["layer"]]
    path = _forge(tmp_path, residual_model(), loop)
    assert_refused(load, path, WeightsError, r"node 0 \(conv1\) reads 'bn1', which is not an input or an earlier")


# ---------------------------------------------------------------- custom layers


class Scale(Layer):
    """A custom layer: each channel times a learned factor, ``y = x * gamma``."""

    def __init__(self, name: str | None = None):
        super().__init__(name)

    def _build(self, input_shape, rng):
        self._params = {"gamma": Parameter(np.full(input_shape[-1], 1.5, np.float32))}
        return input_shape

    def call(self, x, training=False, *, owned=False, activation=None):
        self._refuse_activation(activation)
        x = self.check_input(x)
        return x * self._params["gamma"].value, (x if training else None)

    def call_backward(self, dy, context, *, owned=False, need_input_grad=True):
        gamma = self._params["gamma"]
        if gamma.trainable:
            gamma.accumulate((dy * context).reshape(-1, dy.shape[-1]).sum(axis=0))
        return dy * gamma.value


@pytest.fixture
def registered_scale():
    """``Scale`` registered with the decorator for one test, then forgotten again."""
    assert "Scale" not in LAYER_CLASSES
    cnnkit.register_layer(Scale)
    yield Scale
    del LAYER_CLASSES["Scale"]


def scaled_model() -> cnnkit.Model:
    x = cnnkit.Input((4, 4, 2), name="image")
    y = Scale(name="scale")(Conv2d(3, 3, padding=1, name="conv")(x))
    return cnnkit.Model(x, Dense(2, name="fc")(Flatten()(Add()([y, Conv2d(3, 1, name="proj")(x)]))))


def test_a_registered_custom_layer_round_trips(tmp_path, registered_scale):
    model = scaled_model()
    with model.writable_state() as state:
        state["scale.gamma"][:] = [0.5, -2.0, 3.0]
    model.freeze("scale")
    model.save(tmp_path / "custom.safetensors")
    loaded = load(tmp_path / "custom.safetensors")
    assert type(loaded["scale"]) is Scale and loaded["scale"].parameters()["gamma"].trainable is False
    np.testing.assert_array_equal(loaded.state_dict()["scale.gamma"], [0.5, -2.0, 3.0])
    x = RNG.standard_normal((3, 4, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_an_unregistered_custom_layer_is_refused_with_the_fix(tmp_path, registered_scale):
    path = tmp_path / "custom.safetensors"
    scaled_model().save(path)
    del LAYER_CLASSES["Scale"]
    try:
        message = assert_refused(load, path, WeightsError, r"layer 1 has unknown class 'Scale'")
    finally:
        LAYER_CLASSES["Scale"] = Scale
    assert "decorate the class with cnnkit.register_layer" in message


def test_an_unregistered_layer_in_a_sequential_file_is_refused_with_the_fix(tmp_path, registered_scale):
    path = tmp_path / "chain.safetensors"
    cnnkit.Sequential([Conv2d(2, 1, name="c"), Scale(name="s")], input_shape=(2, 2, 1)).save(path)
    del LAYER_CLASSES["Scale"]
    try:
        assert_refused(load, path, WeightsError,
                       r"unknown class 'Scale'.*decorate the class with cnnkit.register_layer")
    finally:
        LAYER_CLASSES["Scale"] = Scale


def test_a_custom_layer_is_counted_as_a_description_before_building(tmp_path, registered_scale):
    """The check builds a custom layer as a description (placeholder weights) and counts it."""
    def wide(config):
        config["inputs"][0]["shape"] = [4, 4, 2]
        _layer(config, "conv").update(filters=3)
        _layer(config, "proj").update(filters=3)
    model = scaled_model()
    load(_forge(tmp_path, model, wide))   # unchanged sizes load

    def forged(config):
        config["layers"] = [entry for entry in config["layers"] if entry["config"]["name"] == "scale"]
        config["nodes"] = [{"layer": "scale", "inputs": ["image"]}]
        config["outputs"] = ["scale"]
        config["inputs"][0]["shape"] = [1, 1, 1_000_000]
    assert_refused(load, _forge(tmp_path, model, forged), WeightsError,
                   r"gives layer scale \(Scale\) 1,000,000 parameters, but the file holds 3 numbers")


def test_register_layer_refuses_what_is_not_a_layer_and_a_second_class_of_the_same_name(registered_scale):
    with pytest.raises(TypeError, match="register_layer expects a Layer subclass"):
        cnnkit.register_layer(object)
    other = type("Scale", (Scale,), {})
    with pytest.raises(cnnkit.ConfigError, match="a layer class named 'Scale' is already registered"):
        cnnkit.register_layer(other)
    assert cnnkit.register_layer(Scale) is Scale   # the same class again: nothing changes


# ---------------------------------------------------------------- training checkpoints


def small_residual(seed: int = 0) -> cnnkit.Model:
    x = cnnkit.Input((8, 8, 1), name="digit")
    y = ReLU()(Conv2d(4, 3, padding=1, name="conv1")(x))
    shared = Conv2d(4, 3, padding=1, name="shared")
    y = Add()([ReLU()(shared(y)), y])
    y = Add()([shared(y), y])
    return cnnkit.Model(x, Dense(10, name="fc")(Flatten()(MaxPool2d(2)(y))), name="small_residual", seed=seed)


def test_a_graph_model_resumes_from_its_training_checkpoint(tmp_path):
    x, y = digits("train").arrays()
    data = (x[:128], y[:128])
    full = small_residual()
    full.fit(data, epochs=3, batch_size=32, optimizer=Adam(lr=0.01), seed=3, verbose=0)

    path = tmp_path / "run" / "ckpt.safetensors"
    small_residual().fit(data, epochs=1, batch_size=32, optimizer=Adam(lr=0.01), seed=3, verbose=0, checkpoint=path)
    from_file = cnnkit.load(path)   # a training checkpoint loads as the model it holds
    assert type(from_file) is cnnkit.Model and from_file.node_names() == full.node_names()
    resumed = small_residual(seed=99)   # other initial weights: all restored
    history = resumed.fit(data, epochs=3, batch_size=32, optimizer=Adam(lr=0.01), seed=3, verbose=0,
                          resume=path, checkpoint=path)
    assert history.epochs == [1, 2, 3]
    for name, value in full.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[name], value, err_msg=name)
    for name, value in cnnkit.load(path).state_dict().items():
        np.testing.assert_array_equal(value, full.state_dict()[name], err_msg=name)


def test_fit_takes_its_checkpoints_as_a_component(tmp_path):
    """``train.fit`` reads and writes no file itself: it calls the object it is given."""
    from cnnkit.train import fit

    calls = []

    class Recorder:
        def check(self):
            calls.append("check")

        def restore(self, model, optimizer, schedule):
            calls.append("restore")

        def save(self, model, optimizer, schedule, epoch, history, callbacks):
            calls.append(("save", epoch, history.epochs[-1]))

    x, y = digits("train").arrays()
    fit(small_residual(), (x[:32], y[:32]), epochs=2, batch_size=16, verbose=0, checkpoints=Recorder())
    assert calls == ["check", "restore", ("save", 1, 1), ("save", 2, 2)]
    with pytest.raises(cnnkit.ConfigError, match=r"checkpoints must be a TrainingCheckpoint .* model.fit\(checkpoint"):
        fit(small_residual(), (x[:32], y[:32]), epochs=1, verbose=0, checkpoints=str(tmp_path / "x"))


def test_a_strict_graph_holds_its_pooling_layers_to_the_rule_so_its_file_loads(tmp_path):
    """``strict=True`` reaches the layers described before the model existed (pooling); the
    file check applies it to every layer, so a model that builds is one that loads."""
    x = cnnkit.Input((5, 5, 1), name="image")
    with pytest.raises(cnnkit.ConfigError, match=r"max_pool2d_1: .* 2\.5 is not a whole number"):
        cnnkit.Model(x, Dense(2)(Flatten()(MaxPool2d(2)(x))), strict=True)
    x = cnnkit.Input((6, 6, 1), name="image")
    model = cnnkit.Model(x, Dense(2, name="fc")(Flatten()(MaxPool2d(2)(x))), strict=True)
    model.save(tmp_path / "strict.safetensors")
    assert load(tmp_path / "strict.safetensors").strict is True
