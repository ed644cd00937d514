"""MobileNetV2 weights as torchvision users have them: a torch MobileNetV2 written by hand
(``tests/torch_mobilenet.py``), its ``state_dict()`` saved by torch in both formats and as
safetensors, loaded with ``cnnkit.models.mobilenet_v2(weights=path)``, gives torch's logits."""

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import WeightsError
from cnnkit.io import load_pretrained, write_safetensors

pytestmark = pytest.mark.torch
try:
    import torch
    from torch_mobilenet import TorchMobileNetV2, as_torch
    from torch_resnet import TorchResNet, images, randomised, relative_error
except ImportError:   # the marker skips every test
    torch = None

SIZE = 64
RTOL = 1e-4


def torch_net(width_mult=1.0, classes=1000, seed=0):
    return randomised(TorchMobileNetV2(classes, width_mult), seed).eval()


def logits(net, x):
    with torch.no_grad():
        return net(x).numpy()


def save(state, path, fmt):
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def build(**options):
    return cnnkit.models.mobilenet_v2(**{"input_shape": (SIZE, SIZE, 3), **options})


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_state_dict_gives_torch_logits(tmp_path, fmt):
    net = torch_net()
    path = save(net.state_dict(), tmp_path / f"mobilenet_v2.{'safetensors' if fmt == 'safetensors' else 'pth'}", fmt)
    assert any(key.endswith("num_batches_tracked") for key in net.state_dict())   # understood, not unexpected
    x, x_nhwc = images(size=SIZE)
    model = build(weights=path)
    assert relative_error(model.predict(x_nhwc), logits(net, x)) <= RTOL
    assert model.meta["preprocessing"] == "torch"


def test_a_narrow_network_with_other_classes_loads(tmp_path):
    net = torch_net(width_mult=0.5, classes=10)
    path = save(net.state_dict(), tmp_path / "mobilenet_v2.pth", "zip")
    x, x_nhwc = images(size=SIZE)
    model = build(width_mult=0.5, num_classes=10)
    assert load_pretrained(model, path) == "torchvision"
    assert relative_error(model.predict(x_nhwc), logits(net, x)) <= RTOL


@pytest.mark.parametrize("width_mult", [0.35, 0.5, 0.75, 1.0, 1.4])
def test_every_width_maps_every_key_of_torchvisions_layout(width_mult):
    """Every key and shape of the torch layout: built on torch's meta device (no memory), compared
    with a cnnkit description (no weights)."""
    with torch.device("meta"):
        state = TorchMobileNetV2(width_mult=width_mult).state_dict()
    model = cnnkit.models.mobilenet_v2(width_mult=width_mult, allocate=False)
    ours = model.state_dict()
    assert set(ours) == {key for key in state if not key.endswith("num_batches_tracked")}
    for key, value in ours.items():
        assert as_torch(value, key).shape == tuple(state[key].shape), key


def test_cnnkit_state_dicts_and_model_files_load_as_they_are(tmp_path):
    source = build(width_mult=0.25, num_classes=4, seed=5)
    source.meta["preprocessing"] = "unit"
    write_safetensors(tmp_path / "state.safetensors", source.state_dict())
    source.save(tmp_path / "model.safetensors")
    x = np.random.default_rng(0).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    for name in ("state.safetensors", "model.safetensors"):
        model = build(width_mult=0.25, num_classes=4, seed=9)
        assert load_pretrained(model, tmp_path / name) == "cnnkit"
        np.testing.assert_array_equal(model.predict(x), source.predict(x))
    assert model.meta["preprocessing"] == "unit"   # the model file's own


def test_include_top_false_ignores_the_files_classifier(tmp_path):
    net = torch_net(width_mult=0.5, classes=4)
    path = save(net.state_dict(), tmp_path / "mobilenet_v2.pth", "zip")
    x, x_nhwc = images(size=SIZE)
    model = build(width_mult=0.5, include_top=False, weights=path)
    with torch.no_grad():
        expected = net.features(x).permute(0, 2, 3, 1).numpy()
    assert relative_error(model.predict(x_nhwc), expected) <= RTOL
    other = build(width_mult=0.5, num_classes=4, seed=3)
    before = other.parameters()["classifier.1.weight"].value.copy()
    load_pretrained(other, path, include_top=False)
    np.testing.assert_array_equal(other.parameters()["classifier.1.weight"].value, before)


def test_another_number_of_classes_lists_the_wrong_shapes(tmp_path):
    path = save(torch_net(width_mult=0.5, classes=10).state_dict(), tmp_path / "mobilenet_v2.pth", "zip")
    model = build(width_mult=0.5, num_classes=4)
    before = model.parameters()["features.0.0.weight"].value.copy()
    with pytest.raises(WeightsError, match=r"2 wrong shapes: classifier.1.weight: file \(10, 1280\), model needs "
                                           r"\(4, 1280\), classifier.1.bias: .*The file's classifier.1 has 10 "
                                           r"classes: build the model with num_classes=10"):
        load_pretrained(model, path)
    np.testing.assert_array_equal(model.parameters()["features.0.0.weight"].value, before)   # nothing copied


def test_another_width_is_named(tmp_path):
    path = save(torch_net(width_mult=0.5).state_dict(), tmp_path / "mobilenet_v2_050.pth", "zip")
    with pytest.raises(WeightsError) as error:
        build(width_mult=0.75, weights=path)
    message = str(error.value)
    assert "wrong shapes: features.0.0.weight: file (16, 3, 3, 3), model needs (24, 3, 3, 3)" in message
    assert "The file's features.0.0 has 16 filters, the model's 24: the weights are of another width_mult" \
        in message


def test_a_file_without_classifier_suggests_include_top_false(tmp_path):
    state = {k: v for k, v in torch_net(width_mult=0.5).state_dict().items() if not k.startswith("classifier.")}
    path = save(state, tmp_path / "headless.pth", "zip")
    with pytest.raises(WeightsError, match="2 missing keys: classifier.1.weight, classifier.1.bias. The file has "
                                           "no classifier.1: build the model with include_top=False"):
        build(width_mult=0.5, weights=path)


def test_another_block_setting_is_named(tmp_path):
    state = dict(torch_net(width_mult=0.5).state_dict())
    state = {key: value for key, value in state.items() if not key.startswith("features.18.")}
    path = save(state, tmp_path / "short.pth", "zip")
    with pytest.raises(WeightsError, match=r"missing keys: features.18.0.weight.*The file's features run from "
                                           r"features.0 to features.17, the model's to features.18"):
        build(width_mult=0.5, weights=path)


def test_resnet_vgg_and_mobilenet_files_refuse_each_others_models(tmp_path):
    resnet = save(randomised(TorchResNet(18, 4, 0.125)).state_dict(), tmp_path / "resnet18.pth", "zip")
    with pytest.raises(WeightsError, match=r"these are ResNet weights .* not MobileNetV2 weights; build the ResNet"):
        build(width_mult=0.5, weights=resnet)
    mobilenet = save(torch_net(width_mult=0.5).state_dict(), tmp_path / "mobilenet_v2.pth", "zip")
    with pytest.raises(WeightsError, match=r"these are MobileNetV2 weights .* cnnkit.models.mobilenet_v2"):
        cnnkit.models.vgg16(width=1 / 16, input_shape=(32, 32, 3), weights=mobilenet)
    with pytest.raises(WeightsError, match=r"cannot tell which ResNet release .*'classifier.1.bias'"):
        cnnkit.models.resnet18(width=0.125, input_shape=(32, 32, 3), weights=mobilenet)
    write_safetensors(tmp_path / "vgg.safetensors", {f"features.0.{k}": v for k, v in (
        ("weight", np.zeros((4, 3, 3, 3), np.float32)), ("bias", np.zeros(4, np.float32)))})
    with pytest.raises(WeightsError, match=r"these are VGG weights .*cnnkit.models.vgg16"):
        build(width_mult=0.5, weights=tmp_path / "vgg.safetensors")
