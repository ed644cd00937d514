"""`cnnkit train`: a model from an architecture file, the files it writes, its last line, and resume."""

import csv
import json

import pytest

import cnnkit
from cnnkit.cli import main


def test_train_command_from_an_architecture_file(tmp_path, capsys):
    config = cnnkit.models.vgg_small(widths=(4, 8), dense=16).get_config()
    (tmp_path / "arch.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--model", str(tmp_path / "arch.json"), "--epochs", "1", "--lr", "0.05",
            "--out", str(out)]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("epoch 1/1") and lines[-1].startswith("test accuracy: 0.")
    for name in ("model.safetensors", "checkpoint.safetensors", "metrics.csv", "metrics.jsonl", "report.json"):
        assert (out / name).is_file(), name
    assert main([*args[:6], "2", *args[7:], "--resume", "--quiet"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert json.loads((out / "report.json").read_text())["history"]["epochs"] == [1, 2]


def test_train_command_reports_a_bad_model_name(capsys):
    assert main(["train", "--model", "resnet51", "--epochs", "1"]) == 2
    assert "--model must be one of" in capsys.readouterr().err


def tiny_architecture(folder):
    path = folder / "arch.json"
    path.write_text(json.dumps(cnnkit.models.vgg_small(widths=(4, 8), dense=16).get_config()))
    return str(path)


def validation_loss_of_the_saved_model(out, seed=0):
    from cnnkit.data import split
    from cnnkit.run import load_data
    train, _ = load_data("digits", seed=seed)
    _, validation = split(train, fraction=0.1, seed=seed)
    return cnnkit.load(out / "model.safetensors").evaluate(validation)["loss"]


def test_resume_applies_a_new_lr_records_it_and_keeps_the_best_model(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", tiny_architecture(tmp_path), "--out", str(out), "--quiet"]
    assert main([*args, "--epochs", "3", "--lr", "0.05"]) == 0
    assert main([*args, "--epochs", "5", "--lr", "0.5", "--resume"]) == 0   # too high: later epochs are worse
    report = json.loads((out / "report.json").read_text())
    history = report["history"]["history"]
    assert history["lr"] == [0.05, 0.05, 0.05, 0.5, 0.5] and report["lr"] == 0.5
    val_loss = history["val_loss"]
    assert min(val_loss[3:]) > min(val_loss[:3])   # the premise of the test
    assert report["best_epoch"] == 1 + val_loss.index(min(val_loss))
    assert validation_loss_of_the_saved_model(out) == pytest.approx(min(val_loss), rel=1e-5)


def test_resume_without_lr_continues_at_the_checkpoints_rate(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", tiny_architecture(tmp_path), "--out", str(out), "--quiet"]
    assert main([*args, "--epochs", "1", "--lr", "0.03"]) == 0
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["history"]["history"]["lr"] == [0.03, 0.03] and report["lr"] == 0.03


def test_the_default_lr_is_the_readme_recipe():
    import inspect

    from cnnkit.cli import build_parser
    from cnnkit.run import DEFAULT_LR, train_run
    assert DEFAULT_LR == 0.02
    assert inspect.signature(train_run).parameters["lr"].default is None   # None: DEFAULT_LR, or resume's
    assert build_parser().parse_args(["train"]).lr is None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_says_where_why_and_what_to_try(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", tiny_architecture(tmp_path), "--out", str(out), "--quiet"]
    assert main([*args, "--epochs", "2", "--lr", "1e6"]) == 2
    err = capsys.readouterr().err
    assert "training diverged: the loss became nan at epoch 1, step " in err
    assert "inputs range over 0..1" in err and "lower --lr" in err and "no epoch finished" in err
    assert "Traceback" not in err and not (out / "model.safetensors").exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_after_good_epochs_keeps_the_best_model(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", tiny_architecture(tmp_path), "--out", str(out), "--quiet"]
    assert main([*args, "--epochs", "2"]) == 0
    kept = (out / "model.safetensors").read_bytes()
    assert main([*args, "--epochs", "4", "--lr", "1e6", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "at epoch 3, step " in err and "the best epoch so far (" in err and "--resume --lr" in err
    assert (out / "model.safetensors").read_bytes() == kept
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]


def test_zero_epochs_is_refused(tmp_path, capsys):
    assert main(["train", "--epochs", "0", "--out", str(tmp_path / "run")]) == 2
    assert "--epochs must be at least 1; received 0" in capsys.readouterr().err


@pytest.mark.parametrize("text, complaint", [("{'layers': [", "is not valid JSON"),
                                             ("[1, 2]", "holds a JSON list, not an architecture")])
def test_a_bad_architecture_file_is_a_message(tmp_path, capsys, text, complaint):
    (tmp_path / "bad.json").write_text(text)
    assert main(["train", "--model", str(tmp_path / "bad.json"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnkit train: --model ") and complaint in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_an_out_that_cannot_be_a_folder_is_a_message(tmp_path, capsys, kind):
    (tmp_path / "taken").write_text("mine")
    out = tmp_path / "taken" if kind == "a file" else tmp_path / "taken" / "run"
    assert main(["train", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cnnkit train: --out '{out}'") and (tmp_path / "taken").read_text() == "mine"


BROKEN_PIPE = """
import sys
from cnnkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_reader_that_leaves_does_not_stop_training(tmp_path):
    import os
    import subprocess
    import sys
    out = tmp_path / "run"
    command = [sys.executable, "-c", BROKEN_PIPE, "train", "--model", tiny_architecture(tmp_path),
               "--epochs", "3", "--out", str(out)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    first = child.stdout.readline()   # `| head -1`: read one line, then go away
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=300) == 0, err
    assert first.startswith(b"epoch 1/3") and "Traceback" not in err and "BrokenPipe" not in err
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"] and (out / "report.json").is_file()


def test_divergence_on_unscaled_pixels_names_the_range_and_the_fix(tmp_path):
    import numpy as np

    from cnnkit.callbacks import TerminateOnNaN
    from cnnkit.data import ArrayDataset
    from cnnkit.run import _divergence_message
    guard = TerminateOnNaN(announce=False)
    guard.bad_step, guard.bad_loss = (1, 4), float("nan")
    pixels = ArrayDataset(np.linspace(0, 255, 4 * 8 * 8 * 3).reshape(4, 8, 8, 3), [0, 1, 0, 1])
    message = _divergence_message(guard, 0.02, pixels, tmp_path, best_epoch=None)
    assert "at epoch 1, step 4 with lr 0.02" in message
    assert "inputs range over 0..255, not [0, 1]: scale them" in message and "--lr 0.002" in message
