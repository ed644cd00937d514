"""The command line answers user errors with `cnnkit <command>: <what>, <what to do>` and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import cnnkit
from cnnkit.cli import main
from cnnkit.io import write_safetensors
from cnnkit.layers import Conv2d, Dense, Flatten, ReLU


@pytest.fixture()
def model_file(tmp_path):
    model = cnnkit.Sequential([Conv2d(2, 3, padding=1), ReLU(), Flatten(), Dense(2)], input_shape=(8, 8, 3))
    path = tmp_path / "model.safetensors"
    model.save(path)
    return path


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(path)
    return path


def error_of(capsys, args) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cnnkit {args[0]}: ") and "Traceback" not in err
    return err


def test_classify_names_a_missing_weights_file(capsys, tmp_path, photo):
    err = error_of(capsys, ["classify", "--weights", str(tmp_path / "nope.pth"), str(photo)])
    assert "nope.pth: file not found" in err and "not a cnnkit model file" not in err


def test_features_out_into_a_missing_folder_names_the_users_path(capsys, tmp_path, model_file, photo):
    out = tmp_path / "missing" / "feats.npy"
    err = error_of(capsys, ["features", "--weights", str(model_file), "--layer", "conv2d_1", "--out", str(out),
                            str(photo)])
    assert f"--out '{out}' cannot be written" in err and "does not exist" in err and ".tmp" not in err


def test_report_out_into_a_missing_folder_names_the_users_path(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="cnnkit report needs matplotlib")
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(cnnkit.models.vgg_small(widths=(4, 8), dense=16).get_config()))
    run = tmp_path / "run"
    assert main(["train", "--model", str(arch), "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "missing" / "report.html"
    err = error_of(capsys, ["report", str(run), "--out", str(out)])
    assert f"--out '{out}' cannot be written" in err and ".tmp" not in err


@pytest.mark.parametrize("architecture, complaint", [("{not json", "is not JSON"),
                                                     ("[1, 2]", "is a JSON list, not an object")])
def test_a_model_file_with_a_damaged_architecture_is_a_message(capsys, tmp_path, photo, architecture, complaint):
    path = tmp_path / "damaged.safetensors"
    write_safetensors(path, {"w": np.zeros(2, np.float32)},
                      {"format": "cnnkit-model", "version": "1", "architecture": architecture})
    err = error_of(capsys, ["classify", "--weights", str(path), str(photo)])
    assert complaint in err and str(path) in err


def write_folder(root, counts, size=8):
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            shade = 40 if name == "dark" else 215
            pixels = np.clip(rng.normal(shade, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_one_image_per_class_is_refused_not_scored_zero(capsys, tmp_path):
    write_folder(tmp_path / "data", {"dark": 1, "light": 1})
    err = error_of(capsys, ["train", "--data", str(tmp_path / "data"), "--epochs", "1",
                            "--out", str(tmp_path / "run")])
    assert "the test split (20% of each class) is empty" in err


def test_one_class_folder_is_refused(capsys, tmp_path):
    write_folder(tmp_path / "data", {"dark": 12})
    err = error_of(capsys, ["train", "--data", str(tmp_path / "data"), "--epochs", "1",
                            "--out", str(tmp_path / "run")])
    assert "has one class folder ('dark'); a classifier needs at least two" in err


def test_folder_images_are_scaled_to_unit_range_and_classify_does_the_same(capsys, tmp_path):
    from cnnkit.classify import load_batch
    write_folder(tmp_path / "data", {"dark": 12, "light": 12})
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(cnnkit.models.vgg_small(widths=(4, 8), dense=16).get_config()))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "data"), "--model", str(arch), "--image-size", "8",
                 "--epochs", "2", "--out", str(run), "--quiet"]) == 0
    model = cnnkit.load(run / "model.safetensors")
    assert model.meta["preprocessing"] == "unit"
    assert json.loads((run / "report.json").read_text())["preprocessing"] == "unit"
    batch = load_batch(model, [str(tmp_path / "data" / "light" / "0.png")])
    expected = np.asarray(Image.open(tmp_path / "data" / "light" / "0.png"), np.float32) / 255
    np.testing.assert_allclose(batch[0], expected, atol=1e-6)


def test_warnings_are_one_line_like_the_errors(capsys, tmp_path):
    write_folder(tmp_path / "data", {"dark": 1, "light": 1})
    (tmp_path / "data" / "dark" / "up").symlink_to(tmp_path / "data")
    main(["train", "--data", str(tmp_path / "data"), "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "cnnkit train: warning: ImageFolder: not following the link" in err
    assert "UserWarning" not in err and "images.py" not in err
