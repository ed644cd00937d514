"""The summary table in its three formats, and the `cnnkit summary` command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnkit
from cnnkit import Sequential, models
from cnnkit.cli import main
from cnnkit.errors import ConfigError
from cnnkit.layers import Add, Concatenate, Conv2d, Dense, ReLU


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


# ----------------------------------------------------------------- graphs (functional API)

def _residual_block(channels: int = 4):
    """x -> conv3x3 -> relu -> conv3x3 -> add(x) -> relu: an identity shortcut beside two 3x3 layers."""
    x = cnnkit.Input((8, 8, channels), name="image")
    y = Conv2d(channels, 3, padding=1, name="conv_a")(x)
    y = Conv2d(channels, 3, padding=1, name="conv_b")(ReLU(name="relu_a")(y))
    y = ReLU(name="relu_out")(Add(name="add")([y, x]))
    return cnnkit.Model(x, Conv2d(2, 3, padding=1, name="after")(y), name="block")


def test_graph_rows_show_what_each_node_reads():
    model = _residual_block()
    rows = {row["name"]: row for row in model.summary(format="dict")["layers"]}
    assert rows["conv_a"]["connected_to"] == ["image"]
    assert rows["add"]["connected_to"] == ["conv_b", "image"]
    text = model.summary(print_fn=None)
    header = next(line for line in text.splitlines() if line.startswith("layer"))
    assert header.split("  ")[-1].strip() == "connected to"
    assert next(line for line in text.splitlines() if line.startswith("add ")).rstrip().endswith("conv_b, image")
    markdown = model.summary(format="markdown")
    assert "| add | Add | 8 x 8 x 4 | 0 | 256 | 0 | 1x1..5x5 | conv_b, image |" in markdown


def test_a_chain_has_no_connected_to_column():
    assert "connected to" not in models.lenet5().summary(print_fn=None)
    x = cnnkit.Input((8, 8, 1))
    functional_chain = cnnkit.Model(x, ReLU()(Conv2d(2, 3)(x)))
    assert "connected to" not in functional_chain.summary(print_fn=None)


def test_receptive_field_range_where_paths_of_different_lengths_meet():
    rows = {row["name"]: row for row in _residual_block().summary(format="dict")["layers"]}
    # the identity path sees 1x1, the two 3x3 layers 5x5; a 3x3 layer after the sum 3x3 and 7x7
    assert (rows["conv_b"]["receptive_field"], rows["conv_b"]["receptive_field_min"]) == ([5, 5], [5, 5])
    assert (rows["add"]["receptive_field"], rows["add"]["receptive_field_min"]) == ([5, 5], [1, 1])
    assert (rows["after"]["receptive_field"], rows["after"]["receptive_field_min"]) == ([7, 7], [3, 3])


def test_inception_branches_give_the_range_of_their_kernels():
    x = cnnkit.Input((16, 16, 3), name="image")
    branches = [Conv2d(2, k, padding=k // 2, name=f"branch{k}")(x) for k in (1, 3, 5)]
    model = cnnkit.Model(x, Concatenate(name="concat")(branches))
    row = model.summary(format="dict")["layers"][-1]
    assert (row["receptive_field"], row["receptive_field_min"], row["output_shape"]) == ([5, 5], [1, 1], [16, 16, 6])
    assert "1x1..5x5" in model.summary(print_fn=None)


def test_a_shared_layer_counts_its_parameters_once_and_its_work_at_every_node():
    left, right = cnnkit.Input((8, 8, 1), name="left"), cnnkit.Input((8, 8, 1), name="right")
    encoder = Conv2d(4, 3, name="encoder")
    model = cnnkit.Model([left, right], Add(name="add")([encoder(left), encoder(right)]), name="siamese")
    data = model.summary(format="dict")
    rows = {row["name"]: row for row in data["layers"]}
    assert rows["encoder"]["params"] == 4 * 9 + 4 and rows["encoder:1"]["params"] == 0
    assert rows["encoder:1"]["shares_weights_with"] == "encoder"
    assert rows["encoder:1"]["connected_to"] == ["right"]
    assert data["totals"]["params"] == data["totals"]["trainable"] == 40
    assert data["totals"]["macs"] == 2 * rows["encoder"]["macs"] == 2 * 6 * 6 * 4 * 9
    assert data["input_shape"] == [[8, 8, 1], [8, 8, 1]] and data["inputs"] == ["left", "right"]
    text = model.summary(print_fn=None)
    assert "inputs left 8 x 8 x 1, right 8 x 8 x 1" in text and "shared (encoder)" in text


def test_inference_memory_follows_the_executors_live_set():
    # per sample: x (32) while both 1x1 convolutions read it; a (64) and b (64) new; the sum is
    # computed in a (handed over); the ReLU in the sum's memory. Largest: x + a + b = 160, at b.
    x = cnnkit.Input((4, 4, 2), name="x")
    a, b = Conv2d(4, 1, name="a")(x), Conv2d(4, 1, name="b")(x)
    model = cnnkit.Model(x, ReLU(name="relu")(Add(name="add")([a, b])))
    memory = model.summary(batch_size=3, format="dict")["memory"]
    assert memory["inference_activations_bytes"] == 4 * 3 * (32 + 64 + 64)
    assert memory["inference_peak_at"] == "b"


def test_training_memory_follows_the_tape_and_the_gradients():
    # per sample, Input(3) -> d = Dense(4) -> ReLU (in place) -> o = Dense(2); no softmax:
    # forward: x 3 (d's context), d 4 (ReLU's and o's), o 2  -> 9
    # loss gradient 2 -> 11; o's backward: its input gradient 4 -> 15, with o's 10 weights
    # ReLU's backward masks that gradient in place; its context (d, 4) goes -> 9
    # d's backward: an input gradient of 3 (nobody wants it) -> 12, with d's 16 weights: 12 + 26
    model = cnnkit.Sequential([Dense(4, name="d"), ReLU(name="relu"), Dense(2, name="o")], input_shape=(3,))
    one = model.summary(batch_size=1, format="dict")["memory"]
    assert one["gradients_bytes"] == 4 * 26
    assert one["training_activations_bytes"] == 4 * 15
    assert (one["training_peak_bytes"], one["training_peak_at"]) == (4 * (12 + 26), "d")
    # activations scale with the batch, the parameters' gradients do not
    two = model.summary(batch_size=2, format="dict")["memory"]
    assert two["training_activations_bytes"] == 4 * 30 and two["training_peak_bytes"] == 4 * (24 + 26)
    assert two["training_total_bytes"]["adam"] == two["parameters_bytes"] + two["training_peak_bytes"] + 2 * 4 * 26


# ----------------------------------------------------------------- a summary allocates no weights

def test_cnnkit_summary_vgg19_is_instant_and_allocates_no_weights():
    # in a fresh interpreter: the first call (with the summary's own imports) timed, a second
    # traced; drawing and holding VGG19's 143,667,240 weights would take seconds and 548 MiB
    script = "\n".join([
        "import contextlib, io, time, tracemalloc",
        "from cnnkit.cli import main",
        "with contextlib.redirect_stdout(io.StringIO()) as out:",
        "    start = time.perf_counter()",
        "    status = main(['summary', 'vgg19'])",
        "    seconds = time.perf_counter() - start",
        "    tracemalloc.start()",
        "    main(['summary', 'vgg19'])",
        "    peak = tracemalloc.get_traced_memory()[1]",
        "print(status, seconds, peak)",
        "print(out.getvalue())",
    ])
    root = Path(cnnkit.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    status, seconds, peak = result.stdout.splitlines()[0].split()
    assert int(status) == 0 and "Parameters: 143,667,240" in result.stdout
    assert float(seconds) < 1.0
    assert int(peak) < 16 * 2 ** 20


def test_models_built_as_descriptions_hold_placeholder_weights():
    model = models.vgg19(allocate=False)
    for name, param in model.parameters().items():
        assert param.placeholder and not any(param.value.strides), name   # one zero, broadcast
    assert model.summary(format="dict")["totals"]["params"] == 143_667_240
    with pytest.raises(ConfigError, match="conv1_1: was built as a description only"):
        model.predict(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(ConfigError, match="weights='w.pth' need the weights allocated"):
        models.vgg16(weights="w.pth", allocate=False)
    for build in models.MODELS.values():
        assert all(p.placeholder for p in build(allocate=False).parameters().values())
