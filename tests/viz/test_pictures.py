"""Each picture of cnnkit.viz, rendered from a small trained digits network."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnkit import viz
from cnnkit.data import digits
from cnnkit.errors import CnnkitError, ConfigError, DataError, ShapeError
from cnnkit.train import History
from cnnkit.viz._figure import SEPARATOR, png_bytes


@pytest.fixture(scope="module")
def digit():
    image, _ = digits("test")[5]
    return image


@pytest.mark.matplotlib
def test_filters_picture(trained, png_pixels, assert_picture):
    pixels = png_pixels(png_bytes(viz.filters(trained)))
    assert_picture(pixels, min_size=(250, 200))
    separator = np.all(np.abs(pixels - np.array(SEPARATOR)) < 0.03, axis=-1)
    assert separator.mean() > 0.05          # the grid between the tiles is drawn


@pytest.mark.matplotlib
def test_filters_per_channel_grid_has_one_row_per_filter(trained, png_pixels, assert_picture):
    tiles, columns = viz.filter_tiles(trained, "conv1_2", mode="channels")
    assert tiles.shape == (16 * 16, 3, 3, 3) and columns == 16
    assert tiles.min() == 0.0 and tiles.max() == 1.0
    assert_picture(png_pixels(png_bytes(viz.filters(trained, "conv1_2", mode="channels"))), min_size=(500, 500))


def test_filter_tiles_mean_mode_is_the_normalised_channel_mean(trained):
    tiles, _ = viz.filter_tiles(trained, "conv2_1", mode="mean", max_filters=5)
    weight = trained["conv2_1"].parameters()["weight"].value
    expected = weight[..., 2].mean(axis=-1)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert tiles.shape == (5, 3, 3, 3)
    np.testing.assert_allclose(tiles[2, ..., 0], expected, atol=1e-6)


@pytest.mark.matplotlib
def test_filters_of_the_trained_network_differ_from_its_initialisation(trained, untrained, png_pixels):
    before, _ = viz.filter_tiles(untrained, "conv1_1")
    again, _ = viz.filter_tiles(type(untrained).from_config(untrained.get_config()), "conv1_1")
    after, _ = viz.filter_tiles(trained, "conv1_1")
    np.testing.assert_array_equal(before, again)       # the measure is 0 for the same weights
    change = np.abs(after - before).reshape(len(after), -1)
    # Tiles are in [0, 1] (black to white). After two epochs most filters have a pixel that moved
    # by a tenth of the grey range (26 of 255 levels, far above what the eye tells apart);
    # measured: mean change 0.054, 10 of 16 filters with a pixel moved by more than 0.1.
    assert change.mean() > 0.04, change.mean()
    assert (change.max(axis=1) > 0.1).sum() >= 8, change.max(axis=1)
    drawn_before = png_pixels(png_bytes(viz.filters(untrained)))
    drawn_after = png_pixels(png_bytes(viz.filters(trained)))
    assert drawn_before.shape == drawn_after.shape
    separator = np.all(np.abs(drawn_before - np.array(SEPARATOR)) < 0.03, axis=-1)
    rows, cols = np.nonzero(separator)
    grid = np.s_[rows.min():rows.max() + 1, cols.min():cols.max() + 1]     # the filter grid, less the title
    in_tiles = ~separator[grid]
    moved = np.abs(drawn_after - drawn_before).max(axis=-1)[grid][in_tiles] > 0.1
    assert moved.mean() > 0.1, moved.mean()             # measured: 15% of the tiles' pixels


@pytest.mark.matplotlib
def test_activations_picture(trained, digit, png_pixels, assert_picture):
    assert_picture(png_pixels(png_bytes(viz.activations(trained, digit, "relu1_2", n=12))), min_size=(500, 250))


def test_activation_maps_first_and_most_active(trained, digit):
    maps, channels = viz.activation_maps(trained, digit, "relu1_1", n=4)
    full = trained.features(digit[None], "relu1_1")[0]
    np.testing.assert_array_equal(channels, [0, 1, 2, 3])
    np.testing.assert_allclose(maps, np.moveaxis(full[..., :4], -1, 0))
    _, active = viz.activation_maps(trained, digit, "relu1_1", n=3, most_active=True)
    means = full.mean(axis=(0, 1))
    np.testing.assert_array_equal(active, np.argsort(-means, kind="stable")[:3])
    assert means[active[0]] == means.max()


def test_activations_errors(trained, digit):
    with pytest.raises(ShapeError, match=r"input shape \(8, 8, 1\); received an array of shape \(9, 8, 1\)"):
        viz.activations(trained, np.zeros((9, 8, 1)))
    with pytest.raises(ConfigError, match="'fc1' outputs a vector"):
        viz.activations(trained, digit, "fc1")
    with pytest.raises(ConfigError, match="no layer named 'conv9'"):
        viz.activations(trained, digit, "conv9")


@pytest.mark.matplotlib
def test_curves_picture(run_dir, png_pixels, assert_picture):
    pixels = png_pixels(png_bytes(viz.curves(run_dir)))
    assert_picture(pixels, min_size=(600, 250))
    blue = np.all(np.abs(pixels * 255 - [31, 119, 180]) < 30, axis=-1)     # the training line
    orange = np.all(np.abs(pixels * 255 - [255, 127, 14]) < 30, axis=-1)   # the validation line
    assert blue.sum() > 100 and orange.sum() > 100


def test_every_log_gives_the_same_history(run_dir):
    record = json.loads((run_dir / "report.json").read_text())
    epochs, metrics = viz.load_history(run_dir / "metrics.jsonl")
    assert epochs == [1, 2] and set(metrics) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    for source in (run_dir / "metrics.csv", run_dir / "report.json", record, History.from_dict(record["history"])):
        other_epochs, other = viz.load_history(source)
        assert other_epochs == epochs
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(other[key], metrics[key], rtol=1e-12)


def test_curves_errors(tmp_path):
    with pytest.raises(DataError, match="holds none of"):
        viz.curves(tmp_path)
    (tmp_path / "log.txt").write_text("x")
    with pytest.raises(DataError, match="not a metrics log"):
        viz.curves(tmp_path / "log.txt")
    with pytest.raises(DataError, match="no per-epoch 'loss'"):
        viz.curves({"history": {"accuracy": [0.5]}})


@pytest.mark.matplotlib
def test_confusion_picture_and_counts(trained, png_pixels, assert_picture):
    test = digits("test")
    counts, names = viz.confusion_matrix(trained, test)
    assert names == [str(d) for d in range(10)]
    assert counts.sum() == len(test)
    np.testing.assert_array_equal(counts.sum(axis=1), np.bincount(test.labels, minlength=10))
    assert np.trace(counts) / counts.sum() == pytest.approx(trained.evaluate(test)["accuracy"])
    assert_picture(png_pixels(png_bytes(viz.confusion(trained, test))), min_size=(400, 400))


def test_confusion_uses_the_models_class_names_for_bare_arrays(trained):
    x, y = digits("test").arrays()
    trained.meta["class_names"] = [f"digit {d}" for d in range(10)]
    try:
        _, names = viz.confusion_matrix(trained, (x[:20], y[:20]))
    finally:
        trained.meta.pop("class_names")
    assert names[3] == "digit 3"


@pytest.mark.matplotlib
def test_activation_functions_picture_and_values(png_pixels, assert_picture):
    x = np.array([-2.0, -0.5, 0.5, 2.0])
    curves = viz.activation_curves(x, leaky_slope=0.1)
    sigmoid = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(curves["sigmoid"][1], sigmoid * (1 - sigmoid))
    np.testing.assert_allclose(curves["tanh"][1], 1 - np.tanh(x) ** 2)
    np.testing.assert_allclose(curves["ReLU"][1], [0, 0, 1, 1])
    np.testing.assert_allclose(curves["leaky ReLU (a=0.1)"], [[-0.2, -0.05, 0.5, 2.0], [0.1, 0.1, 1, 1]])
    assert_picture(png_pixels(png_bytes(viz.activation_functions())), min_size=(700, 300))


@pytest.mark.parametrize("layer, unit, box", [
    # by hand: pixel k spans [k, k+1); a unit's field is centred at start + i * jump
    ("conv1_1", None, (3, 3, 6, 6)),          # 3x3 around the centre pixel (4, 4)
    ("conv1_1", (0, 0), (-1, -1, 2, 2)),      # the corner unit also sees one row of padding
    ("conv1_2", (4, 1), (2, -1, 7, 4)),       # 5x5
    ("pool1", (1, 2), (0, 2, 6, 8)),          # 6x6, centres 2 pixels apart starting at edge 1
    ("conv2_1", (0, 0), (-4, -4, 6, 6)),      # pool units -1..1 (one in the padding): [-4, 2] to [0, 6]
])
def test_receptive_box(trained, layer, unit, box):
    assert viz.receptive_box(trained, layer, unit, clip=False) == box
    assert viz.receptive_box(trained, layer, unit) == tuple(np.clip(box, 0, 8))


def test_receptive_box_in_a_graph_follows_the_longest_path():
    """A 1x1 shortcut added to two 3x3 convolutions: the sum's units see 5x5 (the longer path),
    not the 1x1 of the layer last in the list."""
    import cnnkit
    from cnnkit.layers import Add, Conv2d
    image = cnnkit.Input((8, 8, 1))
    long = Conv2d(2, 3, padding=1)(Conv2d(2, 3, padding=1)(image))
    model = cnnkit.Model(image, Add(name="sum")([long, Conv2d(2, 1, name="shortcut")(image)]))
    assert viz.receptive_box(model, "sum", (4, 4), clip=False) == (2, 2, 7, 7)
    assert viz.receptive_box(model, "shortcut", (4, 4), clip=False) == (4, 4, 5, 5)


@pytest.mark.matplotlib
def test_receptive_field_picture(trained, digit, png_pixels, assert_picture):
    assert_picture(png_pixels(png_bytes(viz.receptive_field(trained, "conv2_2", digit))), min_size=(300, 300))
    assert_picture(png_pixels(png_bytes(viz.receptive_field(trained, "pool1"))), min_size=(300, 300))
    with pytest.raises(ConfigError, match=r"unit=\(4, 0\) lies outside pool1's 4x4 output"):
        viz.receptive_box(trained, "pool1", (4, 0))


@pytest.mark.matplotlib
def test_save_png_and_svg_atomically(trained, tmp_path, png_pixels):
    figure = viz.filters(trained)
    png = viz.save(figure, tmp_path / "filters.png")
    svg = viz.save(figure, tmp_path / "filters.SVG")
    assert png_pixels(str(png)).shape[0] > 100
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["filters.SVG", "filters.png"]   # no temporaries left
    with pytest.raises(ConfigError, match=r"must end in .png or .svg; received '.*filters.jpg'"):
        viz.save(figure, tmp_path / "filters.jpg")
    with pytest.raises(ConfigError, match="does not exist"):
        viz.save(figure, tmp_path / "missing" / "filters.png")


def test_filters_errors(trained):
    with pytest.raises(ConfigError, match=r"'relu1_1' is a ReLU, not a convolution; choose one of \['conv1_1'"):
        viz.filters(trained, "relu1_1")
    with pytest.raises(ConfigError, match="mode='rgb' needs filters over 3 input channels; conv1_1 has 1"):
        viz.filters(trained, mode="rgb")
    with pytest.raises(ConfigError, match="mode must be one of"):
        viz.filters(trained, mode="colour")


def test_rgb_filters_are_drawn_in_colour():
    from cnnkit.models import lenet5
    model = lenet5(input_shape=(32, 32, 3))
    tiles, _ = viz.filter_tiles(model)
    assert tiles.shape == (6, 5, 5, 3)
    assert np.abs(tiles[..., 0] - tiles[..., 1]).max() > 0.1     # not grey


def test_missing_matplotlib_says_how_to_install(monkeypatch, trained):
    import sys
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib now raises ImportError
    with pytest.raises(CnnkitError, match=r"pip install cnnkit\[viz\]"):
        viz.filters(trained)
