"""A cnnkit model file whose architecture asks for more than its tensors hold is refused
before anything is built, and a malformed header is a WeightsError, in the API and the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cnnkit import cli
from cnnkit.checkpoint import load
from cnnkit.errors import WeightsError
from cnnkit.io import write_safetensors
from cnnkit.layers import Conv2d, Dense, DepthwiseConv2d, Flatten, ReLU6, ZeroPadding2d
from cnnkit.model import Sequential

from refusal import assert_refused


def _small_model() -> Sequential:
    return Sequential([Flatten(), Dense(3, name="fc")], input_shape=(2, 2, 1))


def _forged(path, architecture) -> str:
    """The tensors of the small model under a header that describes ``architecture``."""
    text = architecture if isinstance(architecture, str) else json.dumps(architecture)
    write_safetensors(path, _small_model().state_dict(),
                      {"format": "cnnkit-model", "version": "1", "architecture": text})
    return path


def _dense_architecture(n_in: int, units: int) -> dict:
    config = _small_model().get_config()
    config["input_shape"] = [n_in]
    config["layers"] = [{"class": "Dense", "config": {"units": units, "name": "fc"}}]
    return config


def _refused(path, match: str) -> str:
    return assert_refused(load, path, WeightsError, match)


def test_the_small_model_round_trips(tmp_path):
    model = _small_model()
    model.save(tmp_path / "m.safetensors")
    got = load(tmp_path / "m.safetensors")
    assert np.array_equal(got.state_dict()["fc.weight"], model.state_dict()["fc.weight"])


@pytest.mark.parametrize("n_in,units", [(20_000, 15_000), (100_000, 100_000)])
def test_an_architecture_bigger_than_the_tensors_is_refused_before_building(tmp_path, n_in, units):
    path = _forged(tmp_path / "big.safetensors", _dense_architecture(n_in, units))
    _refused(path, rf"gives layer fc \(Dense\) {n_in * units + units:,} parameters, but the "
                   r"file holds 15 numbers for it; .* nothing was built")


def test_a_convolution_bigger_than_the_tensors_is_refused(tmp_path):
    config = _small_model().get_config()
    config["input_shape"] = [64, 64, 3]
    config["layers"] = [{"class": "Conv2d", "config": {"filters": 4096, "kernel_size": 3, "name": "fc"}},
                        {"class": "Flatten", "config": {}},
                        {"class": "Dense", "config": {"units": 4096, "name": "head"}}]
    path = _forged(tmp_path / "conv.safetensors", config)
    _refused(path, r"gives layer fc \(Conv2d\) 114,688 parameters, but the file holds 15")


def _mobile_model() -> Sequential:
    return Sequential([ZeroPadding2d(((0, 1), (0, 1)), name="pad"), Conv2d(8, 3, stride=2, name="stem"), ReLU6(),
                       DepthwiseConv2d(3, padding=1, depth_multiplier=2, name="dw"), ReLU6(),
                       Conv2d(8, 1, groups=4, name="grouped")], input_shape=(8, 8, 3), seed=0)


def test_grouped_and_depthwise_convolutions_are_counted_as_built_so_their_files_load(tmp_path):
    model = _mobile_model()
    model.save(tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    assert loaded.layers[5].parameters()["weight"].shape == (1, 1, 4, 8)   # C/groups = 16/4


@pytest.mark.parametrize("layer, change, count", [
    (3, {"depth_multiplier": 2_000_000}, 3 * 3 * 8 * 2_000_000 + 8 * 2_000_000),   # a built bias: 64 MB
    (5, {"groups": 2}, 8 * 16 // 2 + 8),          # fewer groups: more numbers per filter than the file holds
    (5, {"filters": 80_000, "groups": 16}, 80_000 * 16 // 16 + 80_000),
])
def test_a_grouped_or_depthwise_convolution_bigger_than_its_tensors_is_refused(tmp_path, layer, change, count):
    model = _mobile_model()
    config = model.get_config()
    config["layers"][layer]["config"].update(change)
    name = config["layers"][layer]["config"]["name"]
    held = sum(v.size for k, v in model.state_dict().items() if k.startswith(name + "."))
    path = tmp_path / "forged.safetensors"
    write_safetensors(path, model.state_dict(), {"format": "cnnkit-model", "version": "1",
                                                 "architecture": json.dumps(config)})
    _refused(path, rf"gives layer {name} \((DepthwiseConv2d|Conv2d)\) {count:,} parameters, but the file holds "
                   rf"{held:,} numbers for it")


def test_groups_that_do_not_divide_are_left_to_the_build_which_names_the_file(tmp_path):
    model = _mobile_model()
    config = model.get_config()
    config["layers"][5]["config"]["groups"] = 3
    path = tmp_path / "forged.safetensors"
    write_safetensors(path, model.state_dict(), {"format": "cnnkit-model", "version": "1",
                                                 "architecture": json.dumps(config)})
    with pytest.raises(WeightsError, match=re.escape(f"{path}: grouped: groups=3 does not divide the 16 input "
                                                     f"channels C")):
        load(path)


def test_the_cli_prints_one_line_for_a_forged_model_file(tmp_path, capsys):
    path = _forged(tmp_path / "big.safetensors", _dense_architecture(100_000, 100_000))
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    code = cli.main(["classify", "--weights", str(path), str(image)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("cnnkit classify: ") and str(path) in err and "Traceback" not in err


@pytest.mark.parametrize("architecture,match", [
    ("{not json", r"the 'architecture' in the header is not JSON"),
    ("[1, 2]", r"the 'architecture' in the header is a JSON list, not an object"),
    ("[" * 100_000 + "]" * 100_000, r"the 'architecture' in the header is not JSON"),
    ({"input_shape": [4], "layers": [{"class": "Dense", "config": [1]}]}, r"layer 0 \(Dense\) has bad arguments"),
    ({"input_shape": [4], "layers": "Dense"}, r"layer 0 has unknown class None"),
    ({"input_shape": [4], "layers": [], "meta": 5}, r"the architecture in its header is malformed"),
])
def test_a_malformed_architecture_is_a_weights_error(tmp_path, architecture, match):
    path = _forged(tmp_path / "bad.safetensors", architecture)
    with pytest.raises(WeightsError, match=match) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: ")   # the layer's own words, and which file


def test_memory_error_while_loading_names_the_file(tmp_path, monkeypatch):
    from cnnkit import checkpoint

    path = tmp_path / "m.safetensors"
    _small_model().save(path)

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(checkpoint, "read_safetensors", no_memory)
    with pytest.raises(WeightsError, match=r"m\.safetensors: not enough memory to load this model"):
        load(path)
