"""``trainable=False`` and frozen batch-norm statistics survive save/load, configs and transfer
surgery (issue 13, section 5); files written before they were saved still load."""

import json

import numpy as np
import pytest

import cnnkit
from cnnkit import transfer
from cnnkit.transfer.surgery import compose, copy_model
from cnnkit.errors import ConfigError
from cnnkit.layers import BatchNorm2d, Conv2d, Dense, Flatten, MaxPool2d, ReLU, Softmax


def _frozen_model() -> cnnkit.Sequential:
    model = cnnkit.Sequential([
        Conv2d(4, 3, padding=1, name="conv1"), BatchNorm2d(name="bn1"), ReLU(name="relu1"),
        MaxPool2d(2, name="pool1"), Conv2d(4, 3, padding=1, name="conv2"), BatchNorm2d(name="bn2"),
        ReLU(name="relu2"), Flatten(name="flat"), Dense(6, name="fc1"), Dense(3, name="fc2"), Softmax(name="prob"),
    ], input_shape=(6, 6, 1))
    model.freeze(up_to="bn1")
    model.freeze("fc1.bias")               # one parameter of a layer
    model["bn1"].frozen_stats = True
    return model


def _flags(model) -> tuple[dict, dict]:
    trainable = {name: param.trainable for name, param in model.parameters().items()}
    stats = {layer.name: layer.frozen_stats for layer in model.layers if isinstance(layer, BatchNorm2d)}
    return trainable, stats


def test_frozen_flags_are_in_the_config_keras_style():
    config = _frozen_model().get_config()
    layers = {entry["config"]["name"]: entry["config"] for entry in config["layers"]}
    assert layers["conv1"]["trainable"] is False and layers["conv2"]["trainable"] is True
    assert layers["fc1"]["trainable"] == {"weight": True, "bias": False}
    assert layers["bn1"]["frozen_stats"] is True and layers["bn2"]["frozen_stats"] is False
    json.dumps(config)                      # still plain data


def test_save_and_load_keep_trainable_and_frozen_stats(tmp_path):
    model = _frozen_model()
    model.save(tmp_path / "m.safetensors")
    loaded = cnnkit.load(tmp_path / "m.safetensors")
    assert _flags(loaded) == _flags(model)
    assert loaded.get_config() == model.get_config()
    assert _flags(cnnkit.Sequential.from_config(model.get_config())) == _flags(model)


def test_config_without_the_keys_loads_every_layer_trainable():
    config = _frozen_model().get_config()
    for entry in config["layers"]:
        entry["config"].pop("trainable")
        entry["config"].pop("frozen_stats", None)
    trainable, stats = _flags(cnnkit.Sequential.from_config(config))
    assert all(trainable.values()) and not any(stats.values())


@pytest.mark.parametrize("value", ["no", {"weight": "no"}, 1])
def test_a_bad_trainable_value_is_a_config_error(value):
    config = _frozen_model().get_config()
    config["layers"][0]["config"]["trainable"] = value
    with pytest.raises(ConfigError, match=r"^conv1: trainable must be true, false or a mapping of parameter names "
                                          r"to booleans; received trainable="):
        cnnkit.Sequential.from_config(config)


def test_trainable_naming_a_missing_parameter_is_a_config_error():
    config = _frozen_model().get_config()
    config["layers"][0]["config"]["trainable"] = {"kernel": False}
    with pytest.raises(ConfigError, match=r"^conv1: trainable names parameters \['kernel'\] the layer does not "
                                          r"have; its parameters are \['bias', 'weight'\]$"):
        cnnkit.Sequential.from_config(config)


def test_surgery_keeps_what_is_frozen():
    model = _frozen_model()
    trainable, stats = _flags(model)
    assert _flags(copy_model(model)) == (trainable, stats)
    cut = transfer.truncate(model, "pool1")
    assert _flags(cut) == ({k: v for k, v in trainable.items() if k.split(".")[0] in ("conv1", "bn1")},
                           {"bn1": True})
    composed = compose(cut, [Dense(2, name="head")])
    assert composed["conv1"].parameters()["weight"].trainable is False and composed["bn1"].frozen_stats
    assert composed["head"].parameters()["weight"].trainable


def test_a_new_head_learns_and_the_body_stays_frozen():
    model = _frozen_model()
    model.freeze("fc2")
    headed = transfer.with_new_head(model, 5)
    trainable, stats = _flags(headed)
    assert trainable["fc2.weight"] and trainable["fc2.bias"]        # the new classifier
    assert not trainable["conv1.weight"] and not trainable["fc1.bias"] and stats["bn1"]


def test_reinitialised_models_learn_everything():
    trainable, stats = _flags(transfer.reinitialised(_frozen_model(), 4))
    assert all(trainable.values()) and not any(stats.values())


def test_frozen_stats_round_trip_keeps_running_statistics_fixed_in_training(tmp_path):
    model = _frozen_model()
    model.save(tmp_path / "m.safetensors")
    loaded = cnnkit.load(tmp_path / "m.safetensors")
    before = loaded.state_dict()["bn1.running_mean"].copy()
    loaded.forward(np.random.default_rng(0).standard_normal((4, 6, 6, 1)).astype(np.float32), training=True)
    np.testing.assert_array_equal(loaded.state_dict()["bn1.running_mean"], before)
