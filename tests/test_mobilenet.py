"""MobileNetV2: torchvision's parameter total, names, block structure and channel rounding, and the
options shared with VGG and ResNet. Counting uses descriptions only (``allocate=False``): instant."""

import numpy as np
import pytest

import cnnkit
from cnnkit import models
from cnnkit.errors import ConfigError
from cnnkit.layers import Add, BatchNorm2d, Conv2d, Identity, ReLU6
from cnnkit.models.mobilenet import make_divisible

RESIDUAL_BLOCKS = [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]   # stride 1 and as many channels out as in


def test_parameter_total_equals_torchvisions():
    model = models.mobilenet_v2(allocate=False)
    assert sum(param.value.size for param in model.parameters().values()) == 3_504_872
    assert model.summary(format="dict")["totals"]["params"] == 3_504_872
    assert all(param.placeholder for param in model.parameters().values())   # nothing was drawn


def test_names_follow_torchvisions_modules():
    model = models.mobilenet_v2(allocate=False)
    names = model.layer_names()
    assert names[:4] == ["features.0.0", "features.0.1", "features.0.2", "features.0"]
    assert [name for name in names if name.startswith("features.1.") or name == "features.1"] == [
        "features.1.conv.0.0", "features.1.conv.0.1", "features.1.conv.0.2", "features.1.conv.1",
        "features.1.conv.2", "features.1"]
    assert [name for name in names if name.startswith("features.13.") or name == "features.13"] == [
        "features.13.conv.0.0", "features.13.conv.0.1", "features.13.conv.0.2", "features.13.conv.1.0",
        "features.13.conv.1.1", "features.13.conv.1.2", "features.13.conv.2", "features.13.conv.3", "features.13"]
    assert names[-8:] == ["features.18.0", "features.18.1", "features.18.2", "features.18", "features", "avgpool",
                          "classifier.0", "classifier.1"]
    state = model.state_dict()
    assert {"features.0.0.weight", "features.0.1.running_mean", "features.1.conv.0.0.weight",
            "features.2.conv.3.running_var", "features.17.conv.2.weight", "features.18.1.bias",
            "classifier.1.weight", "classifier.1.bias"} <= set(state)
    # the nodes named after a block hold no parameters: the keys stay torchvision's
    assert not any(key.rpartition(".")[0] in {f"features.{i}" for i in range(19)} for key in state)


def test_blocks_add_their_input_where_stride_and_channels_allow():
    model = models.mobilenet_v2(allocate=False)
    adds = [int(name.split(".")[1]) for name in model.layer_names() if isinstance(model[name], Add)]
    assert adds == RESIDUAL_BLOCKS
    for block in range(1, 18):
        step = model.plan.steps[model.tensor(f"features.{block}") - 1]
        if block in RESIDUAL_BLOCKS:   # the branch's last batch norm plus the block's input
            assert [model.node_names()[t] for t in step.inputs] == [f"features.{block}.conv.3",
                                                                    f"features.{block - 1}"]
        else:
            assert isinstance(step.layer, Identity)


def test_the_depthwise_convolution_has_the_blocks_stride_and_one_filter_per_channel():
    model = models.mobilenet_v2(allocate=False)
    for name, channels, stride in (("features.1.conv.0.0", 32, 1), ("features.2.conv.1.0", 96, 2),
                                   ("features.13.conv.1.0", 576, 1), ("features.14.conv.1.0", 576, 2)):
        layer = model[name]
        assert isinstance(layer, Conv2d) and layer.groups == layer.filters == channels
        assert layer.kernel == (3, 3) and layer.stride == stride and layer.padding == 1
        assert layer.parameters()["weight"].shape == (3, 3, 1, channels)   # torchvision's (C, 1, 3, 3) as HWIO
    assert model["features.13.conv.0.0"].kernel == (1, 1) and model["features.13.conv.0.0"].filters == 576
    assert model["features.13.conv.2"].filters == 96


def test_activations_are_relu6_and_the_projection_is_linear():
    model = models.mobilenet_v2(allocate=False)
    assert isinstance(model["features.0.2"], ReLU6) and isinstance(model["features.5.conv.1.2"], ReLU6)
    reader = model.plan.readers[model.tensor("features.5.conv.3")]
    assert {model.plan.steps[r].name for r in reader} == {"features.5"}   # no activation after the projection


def test_convolutions_have_no_bias_and_batch_norm_is_torchs():
    model = models.mobilenet_v2(allocate=False)
    assert all(not layer.use_bias for layer in model.layers if isinstance(layer, Conv2d))
    norms = [layer for layer in model.layers if isinstance(layer, BatchNorm2d)]
    assert len(norms) == 52 and {(layer.eps, layer.momentum) for layer in norms} == {(1e-5, 0.1)}
    assert model["classifier.0"].rate == 0.2


def test_shapes_at_224():
    model = models.mobilenet_v2(allocate=False)
    shapes = {name: model.tensor_shape(model.tensor(name)) for name in
              ("features.0", "features.1", "features.3", "features.6", "features.13", "features.16", "features")}
    assert shapes == {"features.0": (112, 112, 32), "features.1": (112, 112, 16), "features.3": (56, 56, 24),
                      "features.6": (28, 28, 32), "features.13": (14, 14, 96), "features.16": (7, 7, 160),
                      "features": (7, 7, 1280)}
    assert model.output_shape == (1000,)


@pytest.mark.parametrize("value, expected", [
    (32, 32), (16, 16), (12, 16), (8 * 0.35, 8), (32 * 0.35, 16), (24 * 0.35, 8), (96 * 0.35, 32),
    (160 * 0.75, 120), (320 * 1.4, 448), (1280 * 1.4, 1792), (10, 16), (44, 48), (19, 24), (35, 32), (36, 40),
])
def test_channel_rounding_is_torchvisions(value, expected):
    """Nearest multiple of 8 (halves up), at least 8, and one more 8 where rounding lost over 10%."""
    assert make_divisible(value) == expected


def test_width_mult_rounds_every_channel_count():
    model = models.mobilenet_v2(width_mult=0.35, allocate=False)
    assert model["features.0.0"].filters == 16 and model["features.1.conv.1"].filters == 8
    assert model["features.17.conv.2"].filters == 112 and model["features.18.0"].filters == 1280
    wide = models.mobilenet_v2(width_mult=1.4, allocate=False)
    assert wide["features.0.0"].filters == 48 and wide["features.18.0"].filters == 1792
    assert wide["classifier.1"].input_shape == (1792,)


def test_options_without_top():
    plain = models.mobilenet_v2(include_top=False, allocate=False)
    assert plain.node_names()[-1] == "features" and plain.output_shape == (7, 7, 1280)
    avg = models.mobilenet_v2(include_top=False, pooling="avg", allocate=False)
    assert avg.node_names()[-1] == "avgpool" and avg.output_shape == (1280,)
    top_max = models.mobilenet_v2(include_top=False, pooling="max", allocate=False)
    assert top_max.node_names()[-1] == "global_maxpool" and top_max.output_shape == (1280,)
    soft = models.mobilenet_v2(num_classes=7, classifier_activation="softmax", allocate=False)
    assert soft.node_names()[-2:] == ["classifier.1", "prob"] and soft.output_shape == (7,)


def test_small_inputs_build_and_run():
    model = models.mobilenet_v2(input_shape=(8, 8, 3), width_mult=0.25, num_classes=3)
    assert model.tensor_shape(model.tensor("features")) == (1, 1, 1280)
    assert model.predict(np.zeros((1, 8, 8, 3), np.float32)).shape == (1, 3)


def test_preprocessing_is_torchvisions():
    assert models.mobilenet_v2(allocate=False).meta["preprocessing"] == "torch"


@pytest.mark.parametrize("options, message", [
    ({"pooling": "avg"}, "mobilenet_v2: pooling='avg' applies only with include_top=False"),
    ({"include_top": False, "pooling": "sum"}, "mobilenet_v2: pooling must be one of"),
    ({"classifier_activation": "sigmoid"}, "mobilenet_v2: classifier_activation must be one of"),
    ({"width_mult": 0}, "mobilenet_v2: width_mult must be a positive number; received width_mult=0"),
    ({"dropout": 1.0}, r"mobilenet_v2: dropout must be a rate in \[0, 1\); received dropout=1.0"),
    ({"weights": "w.pth", "allocate": False}, "mobilenet_v2: weights='w.pth' need the weights allocated"),
])
def test_impossible_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        models.mobilenet_v2(**options)


def test_freeze_up_to_a_block():
    model = models.mobilenet_v2(allocate=False)
    model.freeze(up_to="features.13")
    trainable = {name.rpartition(".")[0] for name, param in model.parameters().items() if param.trainable}
    assert "features.14.conv.0.0" in trainable and "classifier.1" in trainable
    assert not any(name.startswith(tuple(f"features.{i}." for i in range(14))) for name in trainable)


def test_a_saved_mobilenet_loads_with_the_same_outputs(tmp_path):
    model = models.mobilenet_v2(input_shape=(32, 32, 3), width_mult=0.25, num_classes=5, seed=3)
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "mobilenet.safetensors")   # the file's check counts the grouped convolutions
    loaded = cnnkit.load(tmp_path / "mobilenet.safetensors")
    assert loaded.node_names() == model.node_names() and loaded.meta["preprocessing"] == "torch"
    assert loaded["features.2.conv.1.0"].groups == 48
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
