"""The command line with Keras's ResNet50: `--arch resnet50` given a Keras file builds Keras's layout
(the file says which), `classify` gives Keras's probabilities and `features` reads Keras's block
outputs; `summary --layout keras` counts it. The weights are those of a ResNet50 that real Keras 3
(torch backend) writes at the released shape, 224 x 224 with 1,000 classes (the command builds
that shape), every variable redrawn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from keras_files import Written, assert_reproduces
from PIL import Image

import cnnkit
from cnnkit.classify import load_batch
from cnnkit.cli import main


pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    import keras

    return Written(keras, "ResNet50", {"input_shape": (224, 224, 3)}, tmp_path_factory.mktemp("keras"),
                   randomize=True)


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
    assert main(["summary", "resnet50", "--layout", "keras"]) == 0
    out = capsys.readouterr().out
    assert "Parameters: 25,583,592" in out and "plus 53,120 buffered statistics" in out   # 25,636,712 in Keras
    assert "conv4_block6_out" in out


def test_layout_is_for_resnets_only(capsys):
    assert main(["summary", "vgg16", "--layout", "keras"]) != 0
    assert "--layout chooses a ResNet's or MobileNetV2's layout; received model 'vgg16'" in capsys.readouterr().err
    assert main(["summary", "resnet18", "--layout", "keras"]) != 0
    assert "Keras has no ResNet-18" in capsys.readouterr().err


@pytest.mark.keras
@pytest.mark.h5py
def test_classify_picks_the_keras_layout_and_gives_kerass_probabilities(written, photos, capsys):
    weights = str(written.path("keras"))
    assert main(["classify", "--arch", "resnet50", "--weights", weights, *map(str, photos), "--top", "3",
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    model = cnnkit.models.resnet50(weights=weights)
    assert model.meta["preprocessing"] == "caffe" and "conv1_pad" in model.layer_names()
    expected = keras_outputs(written, load_batch(model, photos))   # Keras ends in its softmax
    for result, row in zip(results, expected):
        assert [p["index"] for p in result["predictions"]] == list(np.argsort(-row, kind="stable")[:3])
        np.testing.assert_allclose([p["probability"] for p in result["predictions"]], np.sort(row)[::-1][:3],
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.keras
@pytest.mark.h5py
def test_features_at_a_keras_block_and_by_default_the_pooled_features(written, photos, tmp_path, capsys):
    weights = str(written.path("weights.h5"))
    args = ["features", "--arch", "resnet50", "--weights", weights, *map(str, photos)]
    assert main([*args, "--layer", "conv4_block6_out", "--out", str(tmp_path / "block.npy")]) == 0
    assert "2 x 14 x 14 x 1024 features from conv4_block6_out" in capsys.readouterr().out
    batch = load_batch(cnnkit.models.resnet50(weights=weights), photos)
    assert_reproduces(np.load(tmp_path / "block.npy"), keras_outputs(written, batch, "conv4_block6_out"))
    assert main([*args, "--out", str(tmp_path / "pooled.npy")]) == 0
    assert "2 x 2048 features from avg_pool" in capsys.readouterr().out
    assert_reproduces(np.load(tmp_path / "pooled.npy"), keras_outputs(written, batch, "avg_pool"))
