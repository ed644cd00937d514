"""`cnnkit transfer` end to end: a model file, its report, and `cnnkit classify` on the result."""

import json

import numpy as np
from PIL import Image

import cnnkit
from cnnkit.cli import main
from cnnkit.viz import matplotlib_available


def test_transfer_command_writes_a_model_and_a_report_that_classify_accepts(tmp_path, capsys):
    source = cnnkit.models.vgg_small(widths=(4, 8), dense=16)
    source.save(tmp_path / "source.safetensors")
    out = tmp_path / "run"
    assert main(["transfer", "--data", "digits", "--weights", str(tmp_path / "source.safetensors"),
                 "--mode", "features", "--layer", "pool1", "--cache", "none", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "features" and 0 <= report["test"]["accuracy"] <= 1
    if matplotlib_available():       # the pictures need the optional matplotlib; the rest does not
        html = (out / "report.html").read_text()
        assert "data:image/png;base64," in html and "Final metrics" in html
    else:
        assert not (out / "report.html").exists()
    model = cnnkit.load(out / "model.safetensors")
    assert model.meta["class_names"] == [str(d) for d in range(10)]
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(tmp_path / "blank.png")
    capsys.readouterr()
    assert main(["classify", "--weights", str(out / "model.safetensors"), str(tmp_path / "blank.png"),
                 "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert len(result["predictions"]) == 5
