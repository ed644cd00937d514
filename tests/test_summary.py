"""The summary table in its three formats, and the `cnnkit summary` command."""

import json

import pytest

from cnnkit import Sequential, models
from cnnkit.cli import main
from cnnkit.errors import ConfigError
from cnnkit.layers import Conv2d, ReLU


def test_text_summary_rows_and_totals():
    lines = []
    text = models.lenet5().summary(print_fn=lines.append)
    assert lines == [text]
    assert "c1       Conv2d     28 x 28 x 6      156        4,704    117,600  5x5" in text
    assert "Parameters: 61,706 (trainable 61,706, frozen 0)" in text
    assert "Memory at batch size 1" in text


def test_markdown_and_json_give_the_same_data():
    model = models.lenet5()
    data = json.loads(model.summary(format="json"))
    assert data == model.summary(format="dict")
    markdown = model.summary(format="markdown")
    assert "| c3 | Conv2d | 10 x 10 x 16 | 2,416 | 1,600 | 240,000 | 14x14 |" in markdown
    with pytest.raises(ConfigError, match="format must be one of"):
        model.summary(format="html")


def test_summary_notes_rows_never_read():
    model = Sequential([Conv2d(4, 5, stride=2)], input_shape=(32, 32, 3))
    assert "5x5 (skips 1 rows, 1 cols)" in model.summary(print_fn=None)
    assert model.summary(format="dict")["layers"][0]["unread"] == [1, 1]


def test_memory_grows_with_batch_size():
    model = models.vgg16(width=0.125, input_shape=(32, 32, 3))
    one = model.summary(batch_size=1, format="dict")["memory"]
    eight = model.summary(batch_size=8, format="dict")["memory"]
    assert eight["inference_activations_bytes"] == 8 * one["inference_activations_bytes"]
    assert eight["parameters_bytes"] == one["parameters_bytes"]
    assert one["optimizer_bytes"]["adam"] == 2 * one["optimizer_bytes"]["momentum"] == 2 * one["gradients_bytes"]


@pytest.mark.parametrize("compiled", [True, False])
def test_inference_peak_is_the_largest_input_plus_output_plus_padded_copy(compiled, monkeypatch):
    # the NumPy convolution paths copy the input into a padded plane; the compiled ones do not
    monkeypatch.setenv("CNNKIT_JIT", "1" if compiled else "0")
    model = Sequential([Conv2d(8, 3, padding=1), ReLU(), Conv2d(2, 3, padding=1)], input_shape=(4, 4, 1))
    memory = model.summary(format="dict")["memory"]
    padded = 0 if compiled else 1
    first = 16 * 1 + 16 * 8 + padded * 6 * 6 * 1
    second = 16 * 8 + 16 * 2 + padded * 6 * 6 * 8
    assert memory["inference_activations_bytes"] == 4 * max(first, second)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_cli_summary_works_for_every_model(name, capsys):
    assert main(["summary", name]) == 0
    assert "Parameters:" in capsys.readouterr().out


def test_cli_summary_json_and_options(capsys):
    assert main(["summary", "vgg16", "--batch-size", "4", "--input", "64x64x3", "--num-classes", "10",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_shape"] == [64, 64, 3] and data["memory"]["batch_size"] == 4
    assert data["layers"][-2]["output_shape"] == [10]


def test_cli_reports_impossible_configuration(capsys):
    assert main(["summary", "vgg16", "--input", "16x16x3"]) == 2
    assert "pool5: kernel_size=2 does not fit" in capsys.readouterr().err
