"""`cnnkit train`: a model from an architecture file, the files it writes, its last line, and resume."""

import csv
import json

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
    assert main(["train", "--model", "resnet50", "--epochs", "1"]) == 2
    assert "--model must be one of" in capsys.readouterr().err
