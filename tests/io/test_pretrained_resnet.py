"""ResNet weights as torchvision and timm users have them: a torch ResNet written by hand
(``tests/torch_resnet.py``), its ``state_dict()`` saved by torch in both formats and as
safetensors, loaded with ``cnnkit.models.resnetN(weights=path)``, gives torch's logits."""

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import WeightsError
from cnnkit.io import load_pretrained, write_safetensors

pytestmark = pytest.mark.torch
try:
    import torch
    from torch_resnet import TorchResNet, as_torch, images, randomised, relative_error
except ImportError:   # the marker skips every test
    torch = None

SIZE = 64
RTOL = 1e-4


def torch_net(depth=18, width=1.0, classes=1000, seed=0):
    return randomised(TorchResNet(depth, classes, width), seed).eval()


def logits(net, x):
    with torch.no_grad():
        return net(x).numpy()


def save(state, path, fmt):
    if fmt == "safetensors":
        from safetensors.torch import save_file   # how the Hugging Face hub holds timm's weights
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def build(depth=18, **options):
    options = {"input_shape": (SIZE, SIZE, 3), **options}
    return getattr(cnnkit.models, f"resnet{depth}")(**options)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_resnet18_state_dict_gives_torch_logits(tmp_path, fmt):
    net = torch_net(18)
    path = save(net.state_dict(), tmp_path / f"resnet18.{'safetensors' if fmt == 'safetensors' else 'pth'}", fmt)
    assert any(key.endswith("num_batches_tracked") for key in net.state_dict())   # understood, not unexpected
    x, x_nhwc = images(size=SIZE)
    model = build(18, weights=path)
    assert relative_error(model.predict(x_nhwc), logits(net, x)) <= RTOL
    assert model.meta["preprocessing"] == "torch"


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_resnet50_state_dict_gives_torch_logits(tmp_path, fmt):
    net = torch_net(50, width=0.25, classes=10)
    path = save(net.state_dict(), tmp_path / "resnet50.pth", fmt)
    x, x_nhwc = images(size=SIZE)
    model = build(50, width=0.25, num_classes=10)
    assert load_pretrained(model, path) == "torchvision"
    assert relative_error(model.predict(x_nhwc), logits(net, x)) <= RTOL


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_every_depth_maps_every_key_of_torchvisions_layout(depth):
    """Every key and shape of the torch layout, at every depth: built on torch's meta device
    (no memory), compared with a cnnkit description (no weights)."""
    with torch.device("meta"):
        state = TorchResNet(depth).state_dict()
    model = getattr(cnnkit.models, f"resnet{depth}")(allocate=False)
    ours = model.state_dict()
    assert set(ours) == {key for key in state if not key.endswith("num_batches_tracked")}
    for key, value in ours.items():
        assert as_torch(value, key).shape == tuple(state[key].shape), key


def test_a_data_parallel_checkpoint_loads(tmp_path):
    net = torch_net(18, width=0.125, classes=4)
    nested = {"epoch": 90, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    path = save(nested, tmp_path / "checkpoint.pth", "zip")
    x, x_nhwc = images(size=SIZE)
    model = build(18, width=0.125, num_classes=4, weights=path)
    assert relative_error(model.predict(x_nhwc), logits(net, x)) <= RTOL


def test_cnnkit_state_dicts_and_model_files_load_as_they_are(tmp_path):
    source = build(18, width=0.125, num_classes=4, seed=5)
    source.meta["preprocessing"] = "unit"
    write_safetensors(tmp_path / "state.safetensors", source.state_dict())
    source.save(tmp_path / "model.safetensors")
    x = np.random.default_rng(0).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    for name, source_name in (("state.safetensors", "cnnkit"), ("model.safetensors", "cnnkit")):
        model = build(18, width=0.125, num_classes=4, seed=9)
        assert load_pretrained(model, tmp_path / name) == source_name
        np.testing.assert_array_equal(model.predict(x), source.predict(x))
    assert model.meta["preprocessing"] == "unit"   # the model file's own


def test_include_top_false_ignores_the_files_fc(tmp_path):
    net = torch_net(18, width=0.125, classes=4)
    path = save(net.state_dict(), tmp_path / "resnet18.pth", "zip")
    x, x_nhwc = images(size=SIZE)
    model = build(18, width=0.125, include_top=False, weights=path)
    with torch.no_grad():
        expected = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
    assert relative_error(model.predict(x_nhwc), expected.permute(0, 2, 3, 1).numpy()) <= RTOL
    # a model with a top of its own keeps it when told not to load the file's
    other = build(18, width=0.125, num_classes=4, seed=3)
    before = other.parameters()["fc.weight"].value.copy()
    load_pretrained(other, path, include_top=False)
    np.testing.assert_array_equal(other.parameters()["fc.weight"].value, before)


def test_another_depth_is_named(tmp_path):
    path = save(torch_net(34, width=0.125).state_dict(), tmp_path / "resnet34.pth", "zip")
    with pytest.raises(WeightsError) as error:
        build(18, width=0.125, weights=path)
    message = str(error.value)
    assert "unexpected keys" in message and "layer3.5.conv1.weight" in message
    assert "The file holds resnet34 (basic blocks (3, 4, 6, 3)); the model is resnet18 (basic blocks (2, 2, 2, 2))" \
        in message


def test_another_number_of_classes_lists_the_wrong_shapes(tmp_path):
    path = save(torch_net(18, width=0.125, classes=10).state_dict(), tmp_path / "resnet18.pth", "zip")
    model = build(18, width=0.125, num_classes=4)
    before = model.parameters()["conv1.weight"].value.copy()
    with pytest.raises(WeightsError, match=r"2 wrong shapes: fc.weight: file \(10, 64\), model needs \(4, 64\), "
                                           r"fc.bias: .*The file's fc has 10 classes: build the model with "
                                           r"num_classes=10"):
        load_pretrained(model, path)
    np.testing.assert_array_equal(model.parameters()["conv1.weight"].value, before)   # nothing copied


def test_a_file_without_fc_suggests_include_top_false(tmp_path):
    state = {k: v for k, v in torch_net(18, width=0.125).state_dict().items() if not k.startswith("fc.")}
    path = save(state, tmp_path / "headless.pth", "zip")
    with pytest.raises(WeightsError, match="2 missing keys: fc.weight, fc.bias. The file has no fc: build the "
                                           "model with include_top=False"):
        build(18, width=0.125, weights=path)


def test_timms_deep_stem_variant_is_named(tmp_path):
    state = dict(torch_net(18, width=0.125).state_dict())
    stem = state.pop("conv1.weight")
    state["conv1.0.weight"], state["conv1.3.weight"] = stem[:, :, :3, :3], stem[:, :, :3, :3]
    path = save(state, tmp_path / "resnet18d.pth", "zip")
    with pytest.raises(WeightsError, match="deep stem .*timm's resnet\\*c/d/s variants"):
        build(18, width=0.125, weights=path)


def test_vgg_and_resnet_files_refuse_each_others_models(tmp_path):
    path = save(torch_net(18, width=0.125).state_dict(), tmp_path / "resnet18.pth", "zip")
    with pytest.raises(WeightsError, match="these are ResNet weights .* cnnkit.models.resnet50"):
        cnnkit.models.vgg16(width=1 / 16, input_shape=(32, 32, 3), weights=path)
    write_safetensors(tmp_path / "vgg.safetensors", {f"features.0.{k}": v for k, v in (
        ("weight", np.zeros((4, 3, 3, 3), np.float32)), ("bias", np.zeros(4, np.float32)))})
    with pytest.raises(WeightsError, match="cannot tell which ResNet release .*'features.0.bias'"):
        build(18, width=0.125, weights=tmp_path / "vgg.safetensors")
