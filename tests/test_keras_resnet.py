"""The ResNet of keras.applications in Keras's layout (``layout="keras"``): Keras's parameter counts,
its layer names, v1 strides, convolution biases, its batch norm and padding layers, and how the
layout is chosen. Counting uses descriptions only (``allocate=False``). The files real Keras writes
are in tests/io/test_keras_resnet_files.py."""

import numpy as np
import pytest

import cnnkit
from cnnkit import models
from cnnkit.errors import ConfigError, WeightsError
from cnnkit.io import detect_source
from cnnkit.io.pretrained import is_keras_file, keras_layer_order
from cnnkit.layers import Add, BatchNorm2d, Conv2d, MaxPool2d, ReLU, ZeroPadding2d
from cnnkit.optim import SGD
from cnnkit.train import train_step


@pytest.mark.parametrize("build, trainable, keras_count", [
    (models.resnet50, 25_583_592, 25_636_712), (models.resnet101, 44_601_832, 44_707_176),
    (models.resnet152, 60_268_520, 60_419_944),
])
def test_parameter_totals_equal_keras_count_params(build, trainable, keras_count):
    """Keras's count_params() includes the batch norms' moving statistics, which are cnnkit's buffers."""
    model = build(layout="keras", allocate=False)
    params = sum(param.value.size for param in model.parameters().values())
    buffers = sum(buffer.size for buffer in model.buffers().values())
    assert (params, params + buffers) == (trainable, keras_count)
    totals = model.summary(format="dict")["totals"]
    assert totals["params"] + totals["buffers"] == keras_count
    assert all(param.placeholder for param in model.parameters().values())


def test_names_are_kerass_layer_names():
    model = models.resnet50(layout="keras", allocate=False)
    names = model.node_names()
    assert names[:7] == ["input_layer", "conv1_pad", "conv1_conv", "conv1_bn", "conv1_relu", "pool1_pad",
                         "pool1_pool"]
    assert names[-3:] == ["conv5_block3_out", "avg_pool", "predictions"]
    block = {name for name in names if name.startswith("conv3_block1_")}
    assert block == {f"conv3_block1_{part}" for part in ("0_conv", "0_bn", "1_conv", "1_bn", "1_relu", "2_conv",
                                                          "2_bn", "2_relu", "3_conv", "3_bn", "add", "out")}
    assert "conv3_block2_0_conv" not in names and "conv4_block6_out" in names and "conv4_block7_out" not in names
    assert {"conv1_conv.bias", "conv2_block1_0_bn.running_var", "predictions.weight"} <= set(model.state_dict())


def test_stride_is_on_the_first_1x1_convolution_v1():
    model = models.resnet50(layout="keras", allocate=False)
    assert model["conv3_block1_1_conv"].stride == 2 and model["conv3_block1_1_conv"].kernel == (1, 1)
    assert model["conv3_block1_2_conv"].stride == 1 and model["conv3_block1_2_conv"].padding == 1
    assert model["conv3_block1_0_conv"].stride == 2
    assert model["conv2_block1_1_conv"].stride == 1 and model["conv2_block1_0_conv"].stride == 1
    add = model.plan.steps[model.tensor("conv2_block2_add") - 1]
    assert isinstance(add.layer, Add)
    assert [model.node_names()[t] for t in add.inputs] == ["conv2_block1_out", "conv2_block2_3_bn"]


def test_the_stem_pads_with_layers_before_valid_windows():
    model = models.resnet50(layout="keras", allocate=False)
    assert isinstance(model["conv1_pad"], ZeroPadding2d) and model["conv1_pad"].output_shape == (230, 230, 3)
    assert model["conv1_conv"].kernel == (7, 7) and model["conv1_conv"].stride == 2 and model["conv1_conv"].padding == 0
    assert isinstance(model["pool1_pad"], ZeroPadding2d) and isinstance(model["pool1_pool"], MaxPool2d)
    assert model["pool1_pool"].padding == 0 and model["pool1_pool"].output_shape == (56, 56, 64)
    shapes = [model.tensor_shape(model.tensor(name))
              for name in ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out")]
    assert shapes == [(56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048)]


def test_every_convolution_has_a_bias_and_batch_norm_is_kerass():
    model = models.resnet50(layout="keras", allocate=False)
    convs = [layer for layer in model.layers if isinstance(layer, Conv2d)]
    assert len(convs) == 53 and all(layer.use_bias for layer in convs)
    norms = [layer for layer in model.layers if isinstance(layer, BatchNorm2d)]
    assert len(norms) == 53 and {(layer.eps, layer.momentum) for layer in norms} == {(1.001e-5, 0.01)}
    assert isinstance(model["conv5_block3_out"], ReLU)


def test_options_without_top_and_with_a_softmax():
    avg = models.resnet50(layout="keras", include_top=False, pooling="avg", allocate=False)
    assert avg.node_names()[-1] == "avg_pool" and avg.output_shape == (2048,)
    top_max = models.resnet50(layout="keras", include_top=False, pooling="max", allocate=False)
    assert top_max.node_names()[-1] == "max_pool"
    plain = models.resnet50(layout="keras", include_top=False, allocate=False)
    assert plain.node_names()[-1] == "conv5_block3_out" and plain.output_shape == (7, 7, 2048)
    soft = models.resnet50(layout="keras", num_classes=7, classifier_activation="softmax", allocate=False)
    assert soft.node_names()[-2:] == ["predictions", "prob"] and soft.output_shape == (7,)


def test_preprocessing_is_caffe_and_the_default_layout_torchvisions():
    assert models.resnet50(layout="keras", allocate=False).meta["preprocessing"] == "caffe"
    assert "layer1.0.conv1" in models.resnet50(allocate=False).layer_names()


def test_the_keras_order_puts_the_shortcut_third_in_a_stages_first_block():
    order = keras_layer_order(models.resnet50(layout="keras", allocate=False))
    assert order["conv2d"][:6] == ["conv1_conv", "conv2_block1_1_conv", "conv2_block1_2_conv", "conv2_block1_0_conv",
                                   "conv2_block1_3_conv", "conv2_block2_1_conv"]
    assert order["batch_normalization"][11:15] == ["conv3_block1_1_bn", "conv3_block1_2_bn", "conv3_block1_0_bn",
                                                   "conv3_block1_3_bn"]
    assert len(order["conv2d"]) == len(order["batch_normalization"]) == 53 and order["dense"] == ["predictions"]


@pytest.mark.parametrize("call, message", [
    (lambda: models.resnet50(layout="tf"), r"resnet50: layout must be one of \('torchvision', 'keras'\); "
                                           r"received layout='tf'"),
    (lambda: models.resnet18(layout="keras"), r"resnet18: layout='keras' builds keras.applications' ResNet50, "
                                              r"ResNet101 or ResNet152; Keras has no ResNet-18"),
])
def test_impossible_layouts_are_refused(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_a_keras_file_is_told_by_its_content(tmp_path):
    hdf5 = tmp_path / "weights.bin"
    hdf5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    torch_like = tmp_path / "resnet.h5"   # a suffix decides nothing
    torch_like.write_bytes(b"\x80\x02" + bytes(64))
    assert is_keras_file(hdf5) and not is_keras_file(torch_like) and not is_keras_file(tmp_path / "missing.h5")
    with pytest.raises(ConfigError, match=r"resnet34: weights=.*weights.bin' is a Keras file, and Keras has no "
                                          r"ResNet-34"):
        models.resnet34(weights=hdf5)


def test_features_train_and_a_saved_model_reloads(tmp_path):
    model = models.resnet50(layout="keras", input_shape=(64, 64, 3), width=1 / 16, num_classes=3, seed=1)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    features = model.features(x, "conv4_block6_out")
    assert features.shape == (2, 4, 4, 64) and features.min() >= 0   # a block's output is its ReLU's
    before = model.state_dict()["conv3_block1_0_conv.bias"].copy()
    loss, _ = train_step(model, SGD(1e-3, params=model.parameters()), x, np.array([0, 2]))
    assert np.isfinite(loss) and not np.array_equal(model.state_dict()["conv3_block1_0_conv.bias"], before)
    path = tmp_path / "keras_resnet.safetensors"
    model.save(path)
    again = cnnkit.load(path)
    assert again.node_names() == model.node_names() and again.meta["preprocessing"] == "caffe"
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def test_keras_resnet_keys_are_named_to_a_vgg():
    state = {"conv1_conv/kernel": np.zeros((7, 7, 3, 64), np.float32)}
    with pytest.raises(WeightsError, match=r"weights of Keras's ResNet .* not VGG weights"):
        detect_source(state)
