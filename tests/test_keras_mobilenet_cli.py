"""The command line with Keras's MobileNetV2: `--arch mobilenet_v2` given a Keras file builds Keras's
layout (the file says which) and its `tf` preprocessing (pixels scaled to [-1, 1]), `classify` gives
Keras's probabilities and `features` reads Keras's layers; `summary --layout keras` counts it. The
weights are those of a MobileNetV2 that real Keras 3 (torch backend) writes at the released input,
224 x 224 with 1,000 classes (the command builds that shape), at alpha 0.35 (``--width 0.35``) to stay
small, every variable redrawn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from keras_files import Written, assert_reproduces
from PIL import Image

import cnnkit
from cnnkit.classify import load_batch
from cnnkit.cli import build_parser, main

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    import keras

    return Written(keras, "MobileNetV2", {"alpha": 0.35, "input_shape": (224, 224, 3)},
                   tmp_path_factory.mktemp("keras"), randomize=True, preprocessing="tf")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for seed, colour in enumerate(((200, 40, 30), (30, 180, 60))):
        rng = np.random.default_rng(seed)
        pixels = np.clip(np.array(colour) + rng.normal(0, 40, (180, 240, 3)), 0, 255)
        pixels[40:120, 60 + 20 * seed:160] = 250
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{seed}.png")
        paths.append(folder / f"{seed}.png")
    return paths


def keras_outputs(written, batch, layer=None):
    keras = written.keras
    if layer is None:
        return keras.ops.convert_to_numpy(written.model(batch, training=False))
    inner = keras.Model(written.model.inputs, written.model.get_layer(layer).output)
    return keras.ops.convert_to_numpy(inner([batch], training=False))


def test_summary_of_the_keras_layout_counts_kerass_parameters(capsys):
    assert main(["summary", "mobilenet_v2", "--layout", "keras"]) == 0
    out = capsys.readouterr().out
    assert "Parameters: 3,504,872" in out and "plus 34,112 buffered statistics" in out   # 3,538,984 in Keras
    assert "block_13_expand_relu" in out and "block_1_pad" in out


def test_tf_preprocessing_scales_rgb_pixels_to_minus_one_one(tmp_path):
    """Flat photos stay flat through resizing and cropping, so each channel must come out as exactly
    ``pixel / 127.5 - 1``, in RGB order (Keras's ``preprocess_input(mode="tf")``)."""
    colours = [(0, 0, 0), (255, 255, 255), (51, 102, 204)]
    paths = []
    for index, colour in enumerate(colours):
        Image.fromarray(np.full((150, 200, 3), colour, np.uint8)).save(tmp_path / f"{index}.png")
        paths.append(tmp_path / f"{index}.png")
    keras_layout = cnnkit.models.mobilenet_v2(layout="keras", width_mult=0.35, input_shape=(64, 64, 3),
                                              allocate=False)
    batch = load_batch(keras_layout, paths)
    assert batch.shape == (3, 64, 64, 3)
    for image, colour in zip(batch, colours):
        np.testing.assert_allclose(image, np.broadcast_to(np.array(colour) / 127.5 - 1, image.shape), atol=1e-6)
    torchvision = cnnkit.models.mobilenet_v2(width_mult=0.35, input_shape=(64, 64, 3), allocate=False)
    assert not np.allclose(load_batch(torchvision, paths), batch)   # torch's mean/std by default
    np.testing.assert_array_equal(load_batch(torchvision, paths, "tf"), batch)


@pytest.mark.parametrize("command", [["classify"], ["features", "--out", "f.npy"]])
def test_tf_is_a_preprocessing_the_commands_accept(command):
    args = build_parser().parse_args([*command, "--arch", "mobilenet_v2", "--weights", "w.keras", "--preprocessing",
                                      "tf", "x.png"])
    assert args.preprocessing == "tf"


@pytest.mark.keras
@pytest.mark.h5py
def test_classify_picks_the_keras_layout_and_gives_kerass_probabilities(written, photos, capsys):
    weights = str(written.path("keras"))
    assert main(["classify", "--arch", "mobilenet_v2", "--width", "0.35", "--weights", weights, *map(str, photos),
                 "--top", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    model = cnnkit.models.mobilenet_v2(weights=weights, width_mult=0.35)
    assert model.meta["preprocessing"] == "tf" and "block_1_pad" in model.layer_names()
    batch = load_batch(model, photos)
    assert -1 <= batch.min() < 0 < batch.max() <= 1
    expected = keras_outputs(written, batch)   # Keras ends in its softmax
    for result, row in zip(results, expected):
        assert [p["index"] for p in result["predictions"]] == list(np.argsort(-row, kind="stable")[:3])
        np.testing.assert_allclose([p["probability"] for p in result["predictions"]], np.sort(row)[::-1][:3],
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.keras
@pytest.mark.h5py
def test_features_at_a_keras_layer_and_by_default_the_pooled_features(written, photos, tmp_path, capsys):
    weights = str(written.path("weights.h5"))
    args = ["features", "--arch", "mobilenet_v2", "--width", "0.35", "--weights", weights, *map(str, photos)]
    assert main([*args, "--layer", "block_13_expand_relu", "--out", str(tmp_path / "block.npy")]) == 0
    assert "2 x 14 x 14 x 192 features from block_13_expand_relu" in capsys.readouterr().out
    batch = load_batch(cnnkit.models.mobilenet_v2(weights=weights, width_mult=0.35), photos)
    assert_reproduces(np.load(tmp_path / "block.npy"), keras_outputs(written, batch, "block_13_expand_relu"))
    assert main([*args, "--out", str(tmp_path / "pooled.npy")]) == 0
    assert "2 x 1280 features from global_average_pooling2d" in capsys.readouterr().out
    pooling = written.model.layers[-2]   # unnamed in Keras: global_average_pooling2d_<n> after other models
    assert type(pooling).__name__ == "GlobalAveragePooling2D"
    assert_reproduces(np.load(tmp_path / "pooled.npy"), keras_outputs(written, batch, pooling.name))
