"""The ResNet family: torchvision's parameter totals, its names, v1.5 strides, and the options
shared with the VGG functions. Counting uses descriptions only (``allocate=False``): instant."""

import numpy as np
import pytest

import cnnkit
from cnnkit import models
from cnnkit.errors import ConfigError
from cnnkit.layers import Add, BatchNorm2d, Conv2d, Identity, ReLU


@pytest.mark.parametrize("build, expected", [
    (models.resnet18, 11_689_512), (models.resnet34, 21_797_672), (models.resnet50, 25_557_032),
    (models.resnet101, 44_549_160), (models.resnet152, 60_192_808),
])
def test_parameter_totals_equal_torchvisions(build, expected):
    model = build(allocate=False)
    assert sum(param.value.size for param in model.parameters().values()) == expected
    assert model.summary(format="dict")["totals"]["params"] == expected
    assert all(param.placeholder for param in model.parameters().values())   # nothing was drawn


def test_names_follow_torchvisions_modules():
    model = models.resnet50(allocate=False)
    names = model.layer_names()
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"] and names[-2:] == ["avgpool", "fc"]
    block = [name for name in names if name.startswith("layer2.0")]
    assert block == ["layer2.0.conv1", "layer2.0.bn1", "layer2.0.relu1", "layer2.0.conv2", "layer2.0.bn2",
                     "layer2.0.relu2", "layer2.0.conv3", "layer2.0.bn3", "layer2.0.downsample.0",
                     "layer2.0.downsample.1", "layer2.0.add", "layer2.0"]
    # parameter keys are those of a torchvision state dict
    state = model.state_dict()
    assert {"conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer4.2.bn3.bias",
            "fc.weight", "fc.bias"} <= set(state)
    assert not any("relu" in key or "add" in key for key in state)


def test_each_stage_ends_in_a_named_identity_after_its_last_block_output():
    model = models.resnet18(allocate=False)
    for stage, blocks in zip((1, 2, 3, 4), (2, 2, 2, 2)):
        step = model.plan.steps[model.tensor(f"layer{stage}") - 1]
        assert isinstance(step.layer, Identity)
        assert model.node_names()[step.inputs[0]] == f"layer{stage}.{blocks - 1}"
        assert isinstance(model[f"layer{stage}.{blocks - 1}"], ReLU)
    add = model.plan.steps[model.tensor("layer3.1.add") - 1]
    assert isinstance(add.layer, Add)
    assert [model.node_names()[t] for t in add.inputs] == ["layer3.1.bn2", "layer3.0"]   # an identity shortcut


def test_bottleneck_strides_on_its_3x3_convolution_v1_5():
    model = models.resnet50(allocate=False)
    assert model["layer2.0.conv1"].stride == 1 and model["layer2.0.conv1"].kernel == (1, 1)
    assert model["layer2.0.conv2"].stride == 2 and model["layer2.0.conv2"].kernel == (3, 3)
    assert model["layer2.0.downsample.0"].stride == 2 and model["layer2.0.downsample.0"].kernel == (1, 1)
    # layer1.0 changes channels (64 -> 256) without a stride; later blocks keep their input
    assert model["layer1.0.downsample.0"].stride == 1
    assert "layer1.1.downsample.0" not in model.layer_names()


def test_stem_and_stage_shapes_at_224():
    model = models.resnet50(allocate=False)
    assert model["conv1"].kernel == (7, 7) and model["conv1"].stride == 2 and model["conv1"].padding == 3
    assert model["maxpool"].output_shape == (56, 56, 64)
    shapes = [model.tensor_shape(model.tensor(f"layer{s}")) for s in (1, 2, 3, 4)]
    assert shapes == [(56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048)]
    assert model.output_shape == (1000,)


def test_convolutions_have_no_bias_and_batch_norm_is_torchs():
    model = models.resnet18(allocate=False)
    assert all(not layer.use_bias for layer in model.layers if isinstance(layer, Conv2d))
    norms = [layer for layer in model.layers if isinstance(layer, BatchNorm2d)]
    assert len(norms) == 20 and {(layer.eps, layer.momentum) for layer in norms} == {(1e-5, 0.1)}


def test_features_at_a_stage_and_at_a_block():
    model = models.resnet18(input_shape=(64, 64, 3), width=1 / 8)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    layer3, block = model.features(x, ["layer3", "layer3.1"])
    assert layer3.shape == (2, 4, 4, 32)
    np.testing.assert_array_equal(layer3, block)   # the stage's output is its last block's


def test_options_without_top():
    plain = models.resnet34(include_top=False, allocate=False)
    assert plain.node_names()[-1] == "layer4" and plain.output_shape == (7, 7, 512)
    avg = models.resnet50(include_top=False, pooling="avg", allocate=False)
    assert avg.node_names()[-1] == "avgpool" and avg.output_shape == (2048,)
    top_max = models.resnet18(include_top=False, pooling="max", allocate=False)
    assert top_max.node_names()[-1] == "global_maxpool" and top_max.output_shape == (512,)
    soft = models.resnet18(num_classes=7, classifier_activation="softmax", allocate=False)
    assert soft.node_names()[-2:] == ["fc", "prob"] and soft.output_shape == (7,)


def test_width_scales_every_stage():
    model = models.resnet50(width=0.25, allocate=False)
    assert model["conv1"].filters == 16 and model["layer4.2.conv3"].filters == 512
    assert model["fc"].input_shape == (512,)


def test_small_inputs_build_and_run():
    model = models.resnet18(input_shape=(8, 8, 3), width=1 / 16, num_classes=3)
    assert model.tensor_shape(model.tensor("layer4")) == (1, 1, 32)
    assert model.predict(np.zeros((1, 8, 8, 3), np.float32)).shape == (1, 3)


def test_preprocessing_is_torchvisions():
    assert models.resnet18(allocate=False).meta["preprocessing"] == "torch"


@pytest.mark.parametrize("options, message", [
    ({"pooling": "avg"}, "resnet18: pooling='avg' applies only with include_top=False"),
    ({"include_top": False, "pooling": "sum"}, "resnet18: pooling must be one of"),
    ({"classifier_activation": "sigmoid"}, "resnet18: classifier_activation must be one of"),
    ({"width": 0}, "resnet18: width must be a positive number"),
    ({"weights": "w.pth", "allocate": False}, "resnet18: weights='w.pth' need the weights allocated"),
])
def test_impossible_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        models.resnet18(**options)


def test_an_unknown_depth_is_refused():
    with pytest.raises(ConfigError, match=r"resnet: depth must be one of \[18, 34, 50, 101, 152\]; received "
                                          r"depth=20"):
        models.resnet(20)


def test_freeze_a_stage_by_its_prefix_and_up_to_a_stage():
    model = models.resnet18(allocate=False)
    frozen = model.freeze("layer1")
    assert frozen == [name for name in model.layer_names() if name.startswith("layer1.")
                      and model[name].parameters()]
    assert model.parameters()["layer2.0.conv1.weight"].trainable and model.parameters()["conv1.weight"].trainable
    model.unfreeze()
    model.freeze(up_to="layer2")
    trainable = {name.rpartition(".")[0] for name, param in model.parameters().items() if param.trainable}
    assert trainable and all(name.startswith(("layer3", "layer4", "fc")) for name in trainable)
    assert not model.parameters()["bn1.weight"].trainable


def test_a_saved_resnet_loads_with_the_same_outputs(tmp_path):
    model = models.resnet18(input_shape=(32, 32, 3), width=1 / 8, num_classes=5, seed=3)
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "resnet.safetensors")
    loaded = cnnkit.load(tmp_path / "resnet.safetensors")
    assert loaded.node_names() == model.node_names() and loaded.meta["preprocessing"] == "torch"
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
