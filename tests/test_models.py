"""The VGG family and the classic networks: the totals the lecture and the issue quote."""

import pytest

from cnnkit import models
from cnnkit.errors import ConfigError


@pytest.fixture(scope="module")
def vgg16_summary():
    return models.vgg16().summary(format="dict")


def test_vgg16_parameter_totals(vgg16_summary):
    rows = {row["name"]: row for row in vgg16_summary["layers"]}
    totals = vgg16_summary["totals"]
    assert totals["params"] == 138_357_544
    assert rows["fc6"]["params"] == 102_764_544
    fully_connected = sum(rows[name]["params"] for name in ("fc6", "fc7", "fc8"))
    assert fully_connected == 123_642_856
    assert round(fully_connected / totals["params"], 3) == 0.894
    assert round(totals["share_by_kind"]["Dense"], 3) == 0.894


def test_vgg16_activations_memory_and_macs(vgg16_summary):
    totals = vgg16_summary["totals"]
    assert totals["activations"] == 15_237_608
    assert round(totals["activation_bytes"] / 2 ** 20, 1) == 58.1
    assert round(totals["macs"] / 1e9, 2) == 15.47


def test_vgg16_conv5_3_receptive_field(vgg16_summary):
    rows = {row["name"]: row for row in vgg16_summary["layers"]}
    assert rows["conv5_3"]["receptive_field"] == [196, 196]
    assert rows["pool5"]["output_shape"] == [7, 7, 512]


@pytest.mark.parametrize("build, expected", [
    (models.vgg11, 132_863_336), (models.vgg13, 133_047_848), (models.vgg19, 143_667_240),
    (lambda: models.vgg16(batch_norm=True), 138_365_992),
])
def test_vgg_family_totals(build, expected):
    assert build().summary(format="dict")["totals"]["params"] == expected


def test_vgg16_bn_has_running_statistics_as_buffers():
    model = models.vgg16(batch_norm=True, include_top=False, input_shape=(32, 32, 3))
    buffers = model.buffers()
    assert "bn1_1.running_mean" in buffers and buffers["bn5_3.running_var"].shape == (512,)
    assert model.summary(format="dict")["totals"]["buffers"] == 2 * 4224


def test_vgg16c_has_1x1_convolutions():
    model = models.vgg16c(include_top=False, input_shape=(32, 32, 3))
    assert model["conv3_3"].kernel == (1, 1) and model["conv3_3"].padding == 0
    assert model["conv5_3"].param_count() == 512 * 512 + 512


def test_layer_names_follow_the_caffe_release():
    names = models.vgg16(width=1 / 16, input_shape=(32, 32, 3)).layer_names()
    for expected in ("conv1_1", "conv5_3", "pool1", "pool5", "fc6", "fc7", "fc8", "prob"):
        assert expected in names


def test_headless_vgg_with_global_pooling():
    model = models.vgg16(include_top=False, pooling="avg", input_shape=(64, 64, 3))
    assert model.output_shape == (512,)
    assert "fc6" not in model.layer_names()
    assert models.vgg16(include_top=False, input_shape=(64, 64, 3)).output_shape == (2, 2, 512)


def test_vgg_option_errors():
    with pytest.raises(ConfigError, match="pooling must be one of"):
        models.vgg16(include_top=False, pooling="median")
    with pytest.raises(ConfigError, match="applies only with include_top=False"):
        models.vgg16(pooling="avg")
    with pytest.raises(ConfigError, match="config must be one of"):
        models.vgg("F")
    with pytest.raises(ConfigError, match="pool5: kernel_size=2 does not fit"):
        models.vgg16(input_shape=(16, 16, 3))


def test_vgg_width_scales_channels():
    model = models.vgg16(width=0.25, num_classes=10, input_shape=(32, 32, 3))
    assert model["conv1_1"].filters == 16 and model["fc6"].units == 1024 and model.output_shape == (10,)


@pytest.mark.parametrize("build, params, output", [
    (models.lenet5, 61_706, (10,)),
    (models.alexnet, 62_378_344, (1000,)),
    (models.allconv, 1_369_738, (10,)),
])
def test_classic_networks(build, params, output):
    model = build()
    assert model.summary(format="dict")["totals"]["params"] == params
    assert model.output_shape == output


def test_alexnet_first_layer_is_the_lectures_96_filters():
    model = models.alexnet()
    assert model["conv1"].parameters()["weight"].shape == (11, 11, 3, 96)
    assert model["conv1"].output_shape == (55, 55, 96)
