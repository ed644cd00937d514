"""`cnnkit classify` / `cnnkit features` end to end: photos written here, weights saved by torch.

A VGG16 at width 1/16 (conv channels 4 ... 32, fc 256) keeps the full 224 x 224 input and the
1,000 ImageNet classes, so the whole pipeline runs as with the released weights, in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    from torch import nn
except ImportError:
    torch = nn = None

import cnnkit
from cnnkit.classify import classify, extract_features, load_batch
from cnnkit.cli import main
from cnnkit.data import imagenet_classes
from cnnkit.errors import ConfigError

WIDTH = 1 / 16
WIDTH_ARG = "0.0625"
CLI = Path(sys.executable).with_name("cnnkit")   # the installed console script
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
TORCH_MEAN, TORCH_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def torch_vgg16(seed=0) -> nn.Module:
    """torchvision's VGG16 layout at width 1/16 for 224 x 224 inputs (pool5 7 x 7 x 32)."""
    torch.manual_seed(seed)
    layers, channels = [], 3
    for item in VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers += [nn.Conv2d(channels, round(item * WIDTH), 3, padding=1), nn.ReLU(inplace=True)]
        channels = round(item * WIDTH)
    hidden = round(4096 * WIDTH)
    net = nn.Sequential()
    net.features = nn.Sequential(*layers)
    net.flatten = nn.Flatten()
    net.classifier = nn.Sequential(nn.Linear(channels * 49, hidden), nn.ReLU(True), nn.Dropout(),
                                   nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, 1000))
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.normal_(module.bias, std=0.1)
    return net.eval()


@pytest.fixture(scope="module")
def net():
    return torch_vgg16()


@pytest.fixture(scope="module")
def weights(net, tmp_path_factory) -> Path:
    # torchvision's own key names: the flatten between features and classifier has no weights
    path = tmp_path_factory.mktemp("weights") / "vgg16-small.pth"
    torch.save({k: v for k, v in net.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Three 300 x 400 photos with structure: an RGB PNG, an RGB JPEG, a greyscale PNG."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:300, 0:400]
    paths = []
    for index, (name, mode) in enumerate((("shapes.png", "RGB"), ("sunset.jpg", "RGB"), ("grey.png", "L"))):
        pixels = np.stack([rows * 255 / 299, cols * 255 / 399, (rows + cols) % 64 * 4], axis=-1)
        pixels = np.roll(pixels, index * 40, axis=1) + rng.normal(0, 8, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        draw.ellipse((60 + 30 * index, 50, 220, 210), fill=(240, 40 * index, 30))
        draw.rectangle((250, 100 + 20 * index, 380, 280), outline=(10, 200, 90), width=9)
        image.convert(mode).save(folder / name, quality=92) if name.endswith("jpg") else \
            image.convert(mode).save(folder / name)
        paths.append(folder / name)
    assert Image.open(paths[2]).mode == "L" and Image.open(paths[0]).size == (400, 300)
    return paths


def small_vgg16(weights):
    return cnnkit.models.vgg16(width=WIDTH, weights=weights)


def classify_args(weights, photos, *extra) -> list[str]:
    return ["classify", "--arch", "vgg16", "--width", WIDTH_ARG, "--weights", str(weights),
            *map(str, photos), "--top", "5", *extra]


def torch_probabilities(net, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(batch).permute(0, 3, 1, 2)), dim=1).numpy()


def check_results(results, photos, probs):
    """The documented JSON fields, sorted probabilities, ImageNet labels and torch's numbers."""
    names = imagenet_classes()
    assert len(names) == 1000 and [r["image"] for r in results] == [str(p) for p in photos]
    for result, row in zip(results, probs):
        predictions = result["predictions"]
        assert [p["rank"] for p in predictions] == [1, 2, 3, 4, 5]
        assert set(predictions[0]) == {"rank", "index", "label", "probability"}
        values = [p["probability"] for p in predictions]
        assert values == sorted(values, reverse=True) and 0 < sum(values) <= 1 + 1e-6
        assert all(p["label"] == names[p["index"]] for p in predictions)
        assert [p["index"] for p in predictions] == list(np.argsort(-row, kind="stable")[:5])
        np.testing.assert_allclose(values, np.sort(row)[::-1][:5], rtol=1e-4)


# ----------------------------------------------------------------- classify


@pytest.mark.torch
def test_classify_json_matches_torch(weights, photos, net, capsys):
    assert main(classify_args(weights, photos, "--json")) == 0
    results = json.loads(capsys.readouterr().out)
    batch = load_batch(small_vgg16(weights), photos)            # torchvision weights: torch preprocessing
    check_results(results, photos, torch_probabilities(net, batch))


@pytest.mark.torch
def test_console_script_runs_end_to_end(weights, photos, capsys):
    assert CLI.is_file(), f"the cnnkit console script is not installed next to {sys.executable}"
    done = subprocess.run([str(CLI), *classify_args(weights, photos, "--json")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert main(classify_args(weights, photos, "--json")) == 0
    assert json.loads(done.stdout) == json.loads(capsys.readouterr().out)


@pytest.mark.torch
def test_classify_prints_a_readable_table(weights, photos, capsys):
    assert main(classify_args(weights, photos[:1])) == 0
    lines = capsys.readouterr().out.splitlines()
    top = classify(small_vgg16(weights), photos[:1])[0]["predictions"][0]
    assert lines[0] == str(photos[0]) and len(lines) == 6
    assert lines[1].startswith(f"  1. {top['label']}") and lines[1].endswith(f"(class {top['index']})")


@pytest.mark.torch
@pytest.mark.parametrize("bad", ["broken.jpg", "missing.png"])
def test_an_unreadable_image_exits_2_naming_it(weights, photos, tmp_path, capsys, bad):
    path = tmp_path / bad
    if bad == "broken.jpg":
        path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(classify_args(weights, [photos[0], path], "--json")) == 2
    captured = capsys.readouterr()
    assert str(path) in captured.err and captured.err.startswith("cnnkit classify:")


def test_a_bad_weights_file_exits_2_naming_it(photos, tmp_path, capsys):
    path = tmp_path / "notes.pth"
    path.write_text("not weights")
    assert main(classify_args(path, photos[:1])) == 2
    assert str(path) in capsys.readouterr().err


@pytest.mark.torch
def test_top_must_be_positive(weights, photos):
    with pytest.raises(ConfigError, match="top=0"):
        classify(small_vgg16(weights), photos, top=0)


# ----------------------------------------------------------------- preprocessing


@pytest.mark.torch
def test_preprocessing_modes_see_the_same_pixels(weights, photos):
    model = small_vgg16(weights)
    assert model.meta["preprocessing"] == "torch"
    as_torch, as_caffe = load_batch(model, photos), load_batch(model, photos, "caffe")
    assert as_torch.shape == (3, 224, 224, 3) and as_torch.dtype == np.float32
    rgb = (as_torch * TORCH_STD + TORCH_MEAN) * 255
    np.testing.assert_allclose(as_caffe, rgb[..., ::-1] - CAFFE_MEAN_BGR, atol=2e-3)
    np.testing.assert_allclose(rgb[2, ..., 0], rgb[2, ..., 2], atol=2e-3)   # the greyscale photo: R == G == B
    assert np.ptp(rgb[0]) > 200                                               # and the photos have content


@pytest.mark.torch
def test_preprocessing_option_overrides_the_weights_source(weights, photos, capsys):
    model = small_vgg16(weights)
    assert main(classify_args(weights, photos, "--json", "--preprocessing", "caffe")) == 0
    caffe = json.loads(capsys.readouterr().out)
    assert caffe == json.loads(json.dumps(classify(model, photos, mode="caffe")))
    assert caffe != json.loads(json.dumps(classify(model, photos)))


@pytest.mark.torch
def test_a_cnnkit_model_file_brings_its_preprocessing(weights, photos, tmp_path, capsys):
    model = small_vgg16(weights)
    model.meta["preprocessing"] = "caffe"
    model.save(tmp_path / "mine.safetensors")
    assert main(["classify", "--weights", str(tmp_path / "mine.safetensors"), *map(str, photos), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(classify(model, photos, mode="caffe")))


# ----------------------------------------------------------------- features


@pytest.mark.torch
@pytest.mark.parametrize("layer, shape", [("fc7", (256,)), ("pool5", (7, 7, 32))])
def test_features_writes_the_layer_output(weights, photos, tmp_path, capsys, layer, shape):
    out = tmp_path / "feats.npy"
    assert main(["features", "--arch", "vgg16", "--width", WIDTH_ARG, "--weights", str(weights), "--layer", layer,
                 *map(str, photos), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    features = np.load(out)
    model = small_vgg16(weights)
    assert features.shape == (3, *shape) == (3, *model[layer].output_shape)
    np.testing.assert_array_equal(features, model.features(load_batch(model, photos), layer))
    np.testing.assert_array_equal(features, extract_features(model, photos, layer))


@pytest.mark.torch
def test_features_of_an_unknown_layer_names_the_layers(weights, photos, tmp_path, capsys):
    assert main(["features", "--arch", "vgg16", "--width", WIDTH_ARG, "--weights", str(weights),
                 "--layer", "fc9", str(photos[0]), "--out", str(tmp_path / "f.npy")]) == 2
    assert "fc9" in capsys.readouterr().err and not (tmp_path / "f.npy").exists()


def test_classify_a_model_trained_on_the_digits(tmp_path):
    """A grey 8x8 model from `cnnkit train` classifies a photo of a dark digit on light paper."""
    from PIL import Image, ImageDraw

    from cnnkit.run import train_run

    train_run(data="digits", epochs=3, lr=0.02, out=str(tmp_path / "run"), verbose=0)
    photo = Image.new("RGB", (120, 120), "white")
    ImageDraw.Draw(photo).line([(30, 20), (90, 20), (50, 100)], fill="black", width=12)   # a 7
    photo.save(tmp_path / "seven.png")
    model = cnnkit.load(tmp_path / "run" / "model.safetensors")
    assert model.meta["preprocessing"] == "digits"
    batch = load_batch(model, [str(tmp_path / "seven.png")])
    assert batch.shape == (1, 8, 8, 1) and 0 <= batch.min() and batch.max() <= 1
    assert batch[0, 1, 3, 0] > 0.5 > batch[0, 7, 7, 0]   # ink is high, paper is low, as in the digits
    [result] = classify(model, [str(tmp_path / "seven.png")], top=3)
    assert [p["rank"] for p in result["predictions"]] == [1, 2, 3]
    assert result["predictions"][0]["label"] in list("0123456789")
