"""The MobileNetV2 of keras.applications in Keras's layout (``layout="keras"``): Keras's parameter count,
its layer names, its padding (``"same"`` stem, ``correct_pad`` before each strided depthwise
convolution), batch norm, width rounding, and how the layout is chosen. Counting uses descriptions only
(``allocate=False``). The files real Keras writes are in tests/io/test_keras_mobilenet_files.py."""

import numpy as np
import pytest

import cnnkit
from cnnkit import models
from cnnkit.errors import ConfigError, WeightsError
from cnnkit.io import detect_source
from cnnkit.io.pretrained import keras_layer_order, load_pretrained
from cnnkit.layers import Add, BatchNorm2d, Conv2d, DepthwiseConv2d, ReLU6, ZeroPadding2d
from cnnkit.models.keras_mobilenet import keras_widths
from cnnkit.optim import SGD
from cnnkit.train import train_step

STRIDED = (1, 3, 6, 13)                      # blocks whose depthwise convolution has stride 2
RESIDUAL = (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)


def test_parameter_total_equals_kerass_count_params():
    """Keras's count_params() of MobileNetV2() is 3,538,984: cnnkit's parameters plus the batch norms'
    moving statistics, which are cnnkit's buffers."""
    model = models.mobilenet_v2(layout="keras", allocate=False)
    params = sum(param.value.size for param in model.parameters().values())
    buffers = sum(buffer.size for buffer in model.buffers().values())
    assert (params, buffers, params + buffers) == (3_504_872, 34_112, 3_538_984)
    totals = model.summary(format="dict")["totals"]
    assert totals["params"] + totals["buffers"] == 3_538_984
    assert all(param.placeholder for param in model.parameters().values())


def test_names_are_kerass_layer_names():
    names = models.mobilenet_v2(layout="keras", allocate=False).node_names()
    assert names[:9] == ["input_layer", "Conv1", "bn_Conv1", "Conv1_relu", "expanded_conv_depthwise",
                         "expanded_conv_depthwise_BN", "expanded_conv_depthwise_relu", "expanded_conv_project",
                         "expanded_conv_project_BN"]
    assert names[-5:] == ["Conv_1", "Conv_1_bn", "out_relu", "global_average_pooling2d", "predictions"]
    block = [name for name in names if name.startswith("block_3_")]
    assert block == [f"block_3_{part}" for part in ("expand", "expand_BN", "expand_relu", "pad", "depthwise",
                                                     "depthwise_BN", "depthwise_relu", "project", "project_BN")]
    assert {name for name in names if name.endswith("_pad")} == {f"block_{n}_pad" for n in STRIDED}
    assert {name for name in names if name.endswith("_add")} == {f"block_{n}_add" for n in RESIDUAL}
    assert "block_16_project_BN" in names and "block_17_expand" not in names


def test_layers_are_kerass_kinds_without_biases_with_kerass_batch_norm():
    model = models.mobilenet_v2(layout="keras", allocate=False)
    convs = [layer for layer in model.layers if isinstance(layer, Conv2d)]
    depthwise = [layer for layer in model.layers if isinstance(layer, DepthwiseConv2d)]
    norms = [layer for layer in model.layers if isinstance(layer, BatchNorm2d)]
    assert (len(convs), len(depthwise), len(norms)) == (35, 17, 52)
    assert not any(layer.use_bias for layer in convs + depthwise)
    assert {(layer.eps, layer.momentum) for layer in norms} == {(1e-3, 0.001)}   # Keras's momentum 0.999
    assert isinstance(model["out_relu"], ReLU6) and isinstance(model["block_2_add"], Add)
    assert model["block_5_depthwise"].stride == 1 and model["block_5_depthwise"].padding == 1
    assert model["block_6_depthwise"].stride == 2 and model["block_6_depthwise"].padding == 0


@pytest.mark.parametrize("size, stem_out, pads", [
    (224, 112, {1: ((0, 1), (0, 1)), 3: ((0, 1), (0, 1)), 6: ((0, 1), (0, 1)), 13: ((0, 1), (0, 1))}),
    # 75 -> 38 -> 19 (odd: one before too) -> 10 -> 5
    (75, 38, {1: ((0, 1), (0, 1)), 3: ((1, 1), (1, 1)), 6: ((0, 1), (0, 1)), 13: ((1, 1), (1, 1))}),
])
def test_strided_depthwise_convolutions_pad_as_kerass_correct_pad(size, stem_out, pads):
    """Keras pads one row and column after (and one before on an odd side), then a valid window; the
    stem is ``"same"``: on an even input its odd row and column go after."""
    model = models.mobilenet_v2(layout="keras", input_shape=(size, size, 3), allocate=False)
    assert model["Conv1"].output_shape[:2] == (stem_out, stem_out)
    before = 1 if size % 2 else 0
    assert model["Conv1"].windows()[0].pad_before == before and model["Conv1"].windows()[0].pad_after == 1
    for block, padding in pads.items():
        pad = model[f"block_{block}_pad"]
        assert isinstance(pad, ZeroPadding2d)
        (top, bottom), (left, right) = padding
        h, w, _ = pad.input_shape
        assert pad.output_shape[:2] == (h + top + bottom, w + left + right)
        assert [(win.pad_before, win.pad_after) for win in pad.windows()] == [(top, bottom), (left, right)]
        assert model[f"block_{block}_depthwise"].output_shape[:2] == ((h + 1) // 2, (w + 1) // 2)


def test_widths_follow_kerass_rounding_of_alpha():
    """Keras truncates ``c * alpha`` before rounding to a multiple of 8 (torchvision does not) and keeps
    1280 last filters below alpha 1. At alpha 1.11875 the first block's 16 * alpha = 17.9 is 24 filters in
    torchvision's rounding (16 loses more than 10%) but 16 in Keras's (of 17)."""
    assert keras_widths(1.0) == (32, [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320], 1280)
    assert keras_widths(0.35)[0] == 16 and keras_widths(0.35)[2] == 1280 and keras_widths(1.4)[2] == 1792
    keras = models.mobilenet_v2(layout="keras", width_mult=1.11875, allocate=False)
    torchvision = models.mobilenet_v2(width_mult=1.11875, allocate=False)
    assert keras["expanded_conv_project"].filters == 16 and torchvision["features.1.conv.1"].filters == 24
    assert keras["block_1_expand"].filters == 6 * 16


def test_options_without_top_with_a_softmax_and_preprocessing():
    avg = models.mobilenet_v2(layout="keras", include_top=False, pooling="avg", allocate=False)
    assert avg.node_names()[-1] == "global_average_pooling2d" and avg.output_shape == (1280,)
    top_max = models.mobilenet_v2(layout="keras", include_top=False, pooling="max", allocate=False)
    assert top_max.node_names()[-1] == "global_max_pooling2d"
    plain = models.mobilenet_v2(layout="keras", include_top=False, allocate=False)
    assert plain.node_names()[-1] == "out_relu" and plain.output_shape == (7, 7, 1280)
    soft = models.mobilenet_v2(layout="keras", num_classes=7, classifier_activation="softmax", allocate=False)
    assert soft.node_names()[-2:] == ["predictions", "prob"] and soft.output_shape == (7,)
    assert soft.meta["preprocessing"] == "tf"    # Keras's MobileNetV2 scales pixels to [-1, 1]
    assert models.mobilenet_v2(allocate=False).meta["preprocessing"] == "torch"
    assert "features.1.conv.0.0" in models.mobilenet_v2(allocate=False).layer_names()   # the default layout


@pytest.mark.parametrize("options, message", [
    ({"layout": "tf"}, r"mobilenet_v2: layout must be one of \('torchvision', 'keras'\); received layout='tf'"),
    ({"layout": "keras", "dropout": 0.2}, r"mobilenet_v2: keras.applications' MobileNetV2 has no dropout; "
                                          r"received dropout=0.2 with layout='keras'"),
    ({"dropout": 1.0}, r"mobilenet_v2: dropout must be a rate in \[0, 1\); received dropout=1.0"),
])
def test_impossible_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        models.mobilenet_v2(allocate=False, **options)


def test_the_keras_order_is_the_creation_order_by_kind():
    order = keras_layer_order(models.mobilenet_v2(layout="keras", include_top=False, allocate=False))
    assert order["conv2d"][:4] == ["Conv1", "expanded_conv_project", "block_1_expand", "block_1_project"]
    assert order["conv2d"][-1] == "Conv_1" and len(order["conv2d"]) == 35
    assert order["depthwise_conv2d"][:2] == ["expanded_conv_depthwise", "block_1_depthwise"]
    assert order["batch_normalization"][:4] == ["bn_Conv1", "expanded_conv_depthwise_BN", "expanded_conv_project_BN",
                                                "block_1_expand_BN"]
    assert len(order["batch_normalization"]) == 52 and order["dense"] == ["predictions"]


def test_features_train_and_a_saved_model_reloads(tmp_path):
    model = models.mobilenet_v2(layout="keras", input_shape=(33, 33, 3), width_mult=0.35, num_classes=3, seed=1)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 33, 33, 3)).astype(np.float32)
    features = model.features(x, "block_13_expand_relu")
    assert features.shape == (2, 3, 3, 6 * 32) and 0 <= features.min() and features.max() <= 6
    before = model.state_dict()["block_3_depthwise.weight"].copy()
    loss, _ = train_step(model, SGD(1e-2, params=model.parameters()), x, np.array([0, 2]))
    assert np.isfinite(loss) and not np.array_equal(model.state_dict()["block_3_depthwise.weight"], before)
    path = tmp_path / "keras_mobilenet.safetensors"
    model.save(path)
    again = cnnkit.load(path)
    assert again.node_names() == model.node_names() and again.meta["preprocessing"] == "tf"
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def test_each_layouts_weights_are_named_to_the_other(tmp_path):
    keras = models.mobilenet_v2(layout="keras", input_shape=(32, 32, 3), width_mult=0.35, num_classes=3)
    torchvision = models.mobilenet_v2(input_shape=(32, 32, 3), width_mult=0.35, num_classes=3)
    np.savez(tmp_path / "torchvision.npz", **torchvision.state_dict())
    with pytest.raises(WeightsError, match=r"weights of torchvision's MobileNetV2 .* build it with "
                                           r"layout='torchvision'"):
        load_pretrained(keras, tmp_path / "torchvision.npz")
    keras_named = {f"{key.rpartition('.')[0]}/kernel": value for key, value in keras.state_dict().items()}
    np.savez(tmp_path / "keras.npz", **keras_named)
    with pytest.raises(WeightsError, match=r"weights of Keras's MobileNetV2 .* build it with layout='keras'"):
        load_pretrained(torchvision, tmp_path / "keras.npz")
    with pytest.raises(WeightsError, match=r"weights of Keras's MobileNetV2 .* not VGG weights"):
        detect_source({"Conv1/kernel": np.zeros((3, 3, 3, 32), np.float32)})


def test_a_cnnkit_state_dict_of_the_keras_layout_loads_as_it_is(tmp_path):
    model = models.mobilenet_v2(layout="keras", input_shape=(32, 32, 3), width_mult=0.35, num_classes=3, seed=3)
    np.savez(tmp_path / "state.npz", **model.state_dict())
    again = models.mobilenet_v2(layout="keras", input_shape=(32, 32, 3), width_mult=0.35, num_classes=3, seed=4,
                                weights=tmp_path / "state.npz")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    assert again.meta["preprocessing"] == "tf"
