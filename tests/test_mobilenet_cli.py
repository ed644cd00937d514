"""The command line with MobileNetV2, everywhere a VGG works: `summary`, `classify`, `features`
(at `features.13`), `advise` and `transfer` with `--arch mobilenet_v2`. A MobileNetV2 at
width_mult 0.25 keeps the 224 x 224 input and 1,000 classes of the released weights, in seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import cnnkit
from cnnkit.classify import load_batch
from cnnkit.cli import main

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    from torch_mobilenet import TorchMobileNetV2
    from torch_resnet import randomised, relative_error
except ImportError:
    torch = None

WIDTH = "0.25"


@pytest.fixture(scope="module")
def net():
    return randomised(TorchMobileNetV2(width_mult=float(WIDTH))).eval()


@pytest.fixture(scope="module")
def weights(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2.pth"
    torch.save(net.state_dict(), path)
    return path


def photo(path, colour, seed):
    """A 48 x 64 photo of one colour with noise and a bright square."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (48, 64, 3)), 0, 255)
    pixels[10 + seed % 8:30, 20:40 + seed % 8] = 250
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    return [photo(folder / f"{name}.png", colour, seed)
            for seed, (name, colour) in enumerate((("red", (200, 40, 30)), ("green", (30, 180, 60))))]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of six photos each, as `cnnkit advise` and `transfer` read them."""
    root = tmp_path_factory.mktemp("data")
    for name, colour in (("red", (200, 40, 30)), ("blue", (30, 60, 200))):
        (root / name).mkdir()
        for seed in range(6):
            photo(root / name / f"{seed}.png", colour, seed)
    return root


def weights_args(weights, *extra):
    return ["--arch", "mobilenet_v2", "--width", WIDTH, "--weights", str(weights), *extra]


def torch_output(net, batch, blocks=None):
    """Softmax of the logits, or the output of ``features[:blocks]`` channels-last."""
    with torch.no_grad():
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)
        if blocks is None:
            return torch.softmax(net(x), dim=1).numpy()
        return net.features[:blocks](x).permute(0, 2, 3, 1).numpy()


def test_summary_of_mobilenet_v2_counts_torchvisions_parameters(capsys):
    assert main(["summary", "mobilenet_v2"]) == 0
    out = capsys.readouterr().out
    assert "3,504,872" in out and "features.13.conv.1.0" in out


def test_summary_json_with_a_small_input_and_other_classes(capsys):
    assert main(["summary", "mobilenet_v2", "--input", "64x64x3", "--num-classes", "10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in data["layers"]}
    assert rows["features.13"]["output_shape"] == [4, 4, 96] and rows["classifier.1"]["output_shape"] == [10]


@pytest.mark.torch
def test_classify_gives_torchs_probabilities(weights, photos, net, capsys):
    assert main(["classify", *weights_args(weights, *map(str, photos)), "--top", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    model = cnnkit.models.mobilenet_v2(width_mult=float(WIDTH), weights=weights)
    expected = torch_output(net, load_batch(model, photos))   # torchvision weights: torch preprocessing
    for result, row in zip(results, expected):
        assert [p["index"] for p in result["predictions"]] == list(np.argsort(-row, kind="stable")[:3])
        np.testing.assert_allclose([p["probability"] for p in result["predictions"]], np.sort(row)[::-1][:3],
                                   rtol=1e-4)


@pytest.mark.torch
def test_features_at_block_13_and_by_default_the_pooled_features(weights, photos, net, tmp_path, capsys):
    assert main(["features", *weights_args(weights, *map(str, photos)), "--layer", "features.13",
                 "--out", str(tmp_path / "block13.npy")]) == 0
    assert "2 x 14 x 14 x 24 features from features.13" in capsys.readouterr().out
    model = cnnkit.models.mobilenet_v2(width_mult=float(WIDTH), weights=weights)
    batch = load_batch(model, photos)
    assert relative_error(np.load(tmp_path / "block13.npy"), torch_output(net, batch, blocks=14)) <= 1e-4
    assert main(["features", *weights_args(weights, *map(str, photos)), "--out", str(tmp_path / "pooled.npy")]) == 0
    assert "2 x 1280 features from avgpool" in capsys.readouterr().out   # the classifier's input, not its dropout
    expected = torch_output(net, batch, blocks=19).mean(axis=(1, 2))
    np.testing.assert_allclose(np.load(tmp_path / "pooled.npy"), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.torch
def test_advise_measures_the_block_outputs(weights, folder, capsys):
    assert main(["advise", *weights_args(weights), "--data", str(folder), "--cache", "none"]) == 0
    out = capsys.readouterr().out
    assert "features.13" in out and "features.16" in out and "recommendation:" in out


@pytest.mark.torch
def test_transfer_trains_above_a_block_and_classify_reads_the_result(weights, folder, photos, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["transfer", *weights_args(weights), "--data", str(folder), "--mode", "finetune", "--layer",
                 "features.13", "--epochs", "1", "--cache", "none", "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "finetune" and report["layer"] == "features.13"
    model = cnnkit.load(out / "model.safetensors")
    assert model.meta["class_names"] == ["blue", "red"] and model.meta["preprocessing"] == "torch"
    frozen = {name.rpartition(".")[0] for name, p in model.parameters().items() if not p.trainable}
    assert "features.13.conv.1.0" in frozen and "features.14.conv.0.0" not in frozen
    capsys.readouterr()
    assert main(["classify", "--weights", str(out / "model.safetensors"), str(photos[0]), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert {p["label"] for p in result["predictions"]} == {"blue", "red"}


def test_batch_norm_option_is_for_vgg_only(tmp_path, capsys):
    (tmp_path / "w.pth").write_bytes(b"")
    assert main(["classify", "--arch", "mobilenet_v2", "--batch-norm", "--weights", str(tmp_path / "w.pth"),
                 str(tmp_path / "w.pth")]) == 2
    assert "--batch-norm chooses the VGG variant with batch norm; mobilenet_v2 always has batch norm" in \
        capsys.readouterr().err
