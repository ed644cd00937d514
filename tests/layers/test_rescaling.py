"""Rescaling: y = x * scale + offset with float and broadcast array constants, against NumPy;
finite differences; the constants as buffers (state dict, model file, config without their
numbers); a file whose config asks for bigger constants than it holds; the exact errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import ConfigError, ShapeError, WeightsError
from cnnkit.io import write_safetensors
from cnnkit.layers import Conv2d, Rescaling

SHAPE = (3, 4, 2)
CONSTANTS = [  # scale, offset
    (1 / 255, 0.0),
    (2.0, -1.0),
    (np.array([0.5, 2.0]), np.array([-0.1, 0.3])),                  # (C,), per channel
    (np.array([[[0.5, 2.0]]]), 0.25),                                # (1, 1, C)
    (np.linspace(-2, 2, 24).reshape(SHAPE), np.arange(24.0).reshape(SHAPE)),   # (H, W, C)
    ([3.0], np.arange(8.0).reshape(4, 2)),                           # (1,) and (W, C)
]


def _x(shape=SHAPE, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal((2, *shape)).astype(dtype)


def _built(scale, offset, shape=SHAPE, name=None):
    layer = Rescaling(scale, offset, name=name)
    layer.build(shape)
    return layer


@pytest.mark.parametrize("scale, offset", CONSTANTS)
def test_forward_backward_and_gradcheck(scale, offset):
    layer = _built(scale, offset)
    x = _x()
    scale32, offset32 = np.float32(scale) if np.isscalar(scale) else np.asarray(scale, np.float32), \
        np.asarray(offset, np.float32)
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y, x * scale32.astype(np.float64) + offset32.astype(np.float64), rtol=1e-12)
    dy = _x(seed=1)
    np.testing.assert_allclose(layer.backward(dy), dy * np.asarray(scale32, np.float64), rtol=1e-12)
    assert cnnkit.gradcheck(layer, x).max_error < 1e-6
    assert layer.param_count() == layer.macs() == 0 and layer.parameters() == {}


def test_a_constant_may_broadcast_over_any_axis():
    layer = _built(np.array([[[1.0], [2.0], [3.0], [4.0]]]), 0.0)   # (1, W, 1): one number per column
    x = _x()
    np.testing.assert_array_equal(layer.forward(x), x * np.array([1.0, 2.0, 3.0, 4.0])[:, None])


def test_a_float32_input_stays_float32_and_is_not_written():
    layer = _built(np.array([0.5, 2.0]), 1.0)
    x = _x(dtype=np.float32)
    x.flags.writeable = False
    y = layer.forward(x)
    assert y.dtype == np.float32 and not np.shares_memory(x, y)


def test_the_constants_are_buffers_in_the_state_dict_and_the_file_not_in_the_config(tmp_path):
    scale = np.linspace(0.5, 1.5, 24, dtype=np.float32).reshape(SHAPE)
    model = cnnkit.Sequential([Rescaling(scale, np.array([0.1, -0.2]), name="norm"), Conv2d(2, 3, name="conv"),
                               Rescaling(0.5, name="half")], input_shape=SHAPE, seed=0)
    state = model.state_dict()
    np.testing.assert_array_equal(state["norm.scale"], scale)
    np.testing.assert_array_equal(state["norm.offset"], np.array([0.1, -0.2], np.float32))
    assert state["half.scale"].shape == () and float(state["half.scale"]) == 0.5
    assert "norm.scale" not in model.parameters()
    config = model.layers[0].get_config()
    assert config == {"scale": {"shape": [3, 4, 2]}, "offset": {"shape": [2]}, "name": "norm", "trainable": True}
    assert model.layers[2].get_config() == {"scale": 0.5, "offset": 0.0, "name": "half", "trainable": True}
    model.save(tmp_path / "m.safetensors")
    loaded = cnnkit.load(tmp_path / "m.safetensors")
    x = _x(dtype=np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    np.testing.assert_array_equal(loaded.state_dict()["norm.scale"], scale)
    assert repr(loaded.layers[0]) == "Rescaling(scale={'shape': [3, 4, 2]}, offset={'shape': [2]}, name='norm')"


def test_a_layer_from_its_config_holds_ones_and_zeros_until_the_weights_load():
    layer = Rescaling.from_config({"scale": {"shape": [2]}, "offset": {"shape": [1, 1, 2]}})
    layer.build(SHAPE)
    x = _x()
    np.testing.assert_array_equal(layer.forward(x), x)
    model = cnnkit.Sequential([Rescaling.from_config({"scale": {"shape": [2]}, "offset": 0.0, "name": "r"})],
                              input_shape=SHAPE)
    model.load_state_dict({"r.scale": np.array([2.0, 3.0]), "r.offset": np.array(1.0)})
    np.testing.assert_allclose(model.forward(x), x * [2.0, 3.0] + 1.0)


def test_a_file_whose_config_asks_for_bigger_constants_than_it_holds_is_refused(tmp_path):
    model = cnnkit.Sequential([Rescaling(np.ones(2), name="norm")], input_shape=SHAPE)
    config = model.get_config()
    config["input_shape"] = [4096, 4096, 3]
    config["layers"][0]["config"]["scale"] = {"shape": [4096, 4096, 3]}
    path = tmp_path / "forged.safetensors"
    write_safetensors(path, model.state_dict(), {"format": "cnnkit-model", "version": "1",
                                                 "architecture": json.dumps(config)})
    with pytest.raises(WeightsError, match=r"gives layer norm \(Rescaling\) 50,331,649 parameters, but the file "
                                           r"holds 3 numbers for it; .* nothing was built"):
        cnnkit.load(path)


@pytest.mark.parametrize("scale, error, message", [
    (np.ones(3), ShapeError, "r1: scale of shape (3,) does not broadcast to the input (3, 4, 2) (channels last) "
                             "without growing it; use (C,) = (2,) per channel, (3, 4, 2) per number, or a float"),
    (np.ones((2, 3, 4, 2)), ConfigError, "r1: scale must be a finite float or an array of finite numbers of rank 3 "
                                         "at most; received scale="),
    (float("nan"), ConfigError, "r1: scale must be finite; received scale=nan"),
    ("2", ConfigError, "r1: scale must be a finite float or an array of finite numbers of rank 3 at most; "
                       "received scale='2'"),
    ({"shape": [0]}, ConfigError, "r1: scale as a config gives it must be {'shape': [...]}, 1 to 3 sizes >= 1; "
                                  "received scale={'shape': [0]}"),
    ({"shape": [2], "values": [1, 2]}, ConfigError, "r1: scale as a config gives it must be {'shape': [...]}, 1 to 3 "
                                                    "sizes >= 1; received scale={'shape': [2], 'values': [1, 2]}"),
])
def test_bad_constants_are_refused_with_the_fix(scale, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        _built(scale, 0.0, name="r1")


def test_in_a_graph_model_the_constants_are_drawn_at_the_model_and_round_trip(tmp_path):
    """A graph describes its layers first (no numbers) and builds them when the Model is made:
    a Rescaling whose only arrays are buffers must be built then too."""
    image = cnnkit.Input(SHAPE, name="image")
    model = cnnkit.Model(image, Rescaling(np.array([0.5, 2.0]), np.array([[[1.0, -1.0]]]), name="norm")(image))
    x = _x()
    np.testing.assert_allclose(model.forward(x), x * [0.5, 2.0] + [1.0, -1.0], rtol=1e-7)
    model.save(tmp_path / "g.safetensors")
    np.testing.assert_array_equal(cnnkit.load(tmp_path / "g.safetensors").forward(x), model.forward(x))
    described = Rescaling(np.ones(2), name="d")
    with cnnkit.parameter.describing_only():
        described.build(SHAPE)
    with pytest.raises(ConfigError, match="^d: was built as a description only"):
        described.forward(x)
