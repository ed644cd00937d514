"""Pretrained VGG weights: torchvision (zip and legacy), timm, Keras .h5 and cnnkit files give torch's logits.

The oracle is a torch model written here in torchvision's VGG layout (``features`` and
``classifier``, no adaptive pooling) with small widths. A 64x64 input leaves a 2x2 pool5, so
fc6's channels-first -> channels-last row permutation is exercised.
"""

from __future__ import annotations

import gc
import os
import pickle
import tracemalloc

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import WeightsError
from cnnkit.io import load_pretrained, read_torch
from cnnkit.io.pretrained import to_cnnkit

# every test here maps files that PyTorch or Keras (h5py) wrote
torch = pytest.importorskip("torch", reason="PyTorch, the test-only oracle, is not installed: pip install torch==2.13.0")
h5py = pytest.importorskip("h5py", reason="h5py is not installed: pip install 'cnnkit[h5]'")
F, nn = torch.nn.functional, torch.nn

WIDTH = 1 / 16          # conv channels 4, 8, 16, 32, 32; fc 256
SIZE = 64               # pool5 is 2 x 2
CLASSES = 10
CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class TorchVGG(nn.Module):
    """torchvision's VGG layout (``features``, ``classifier``) without the adaptive pooling."""

    def __init__(self, arch="vgg16", width=WIDTH, batch_norm=False, size=SIZE, classes=CLASSES, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        layers, channels = [], 3
        for item in CONFIGS[arch]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out = round(item * width)
            layers += [nn.Conv2d(channels, out, 3, padding=1)] + ([nn.BatchNorm2d(out)] if batch_norm else [])
            layers.append(nn.ReLU(inplace=True))
            channels = out
        hidden, side = round(4096 * width), size // 32
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(channels * side * side, hidden), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(hidden, classes))
        self._randomise()
        self.eval()

    def _randomise(self):
        # He-scaled weights, non-zero biases and non-trivial running statistics keep every
        # activation informative through the 13+ layers.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.normal_(module.bias, std=0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5)
                nn.init.normal_(module.bias, std=0.1)
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def inputs(size=SIZE, batch=2, seed=1):
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return x, x.permute(0, 2, 3, 1).numpy().copy()


def torch_logits(net, x):
    with torch.no_grad():
        return net(x).numpy()


def cnnkit_vgg(arch="vgg16", weights=None, **options):
    options = {"width": WIDTH, "input_shape": (SIZE, SIZE, 3), "classifier_activation": None,
               "num_classes": CLASSES, **options}
    return getattr(cnnkit.models, arch)(weights=weights, **options)


def assert_close(actual, expected, rtol=1e-4):
    error = np.abs(actual - expected).max() / np.abs(expected).max()
    assert error <= rtol, f"relative error {error:.2e} > {rtol}"


def save(obj, path, fmt="zip"):
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


# ----------------------------------------------------------------- torchvision layout


def test_width_scales_channels_and_fc_like_the_torch_oracle():
    model = cnnkit_vgg()
    torch_net = TorchVGG()
    convs = [m.out_channels for m in torch_net.features if isinstance(m, nn.Conv2d)]
    assert [model[f"conv{b}_{i}"].filters for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
            for i in range(1, n + 1)] == convs == [round(c * WIDTH) for c in CONFIGS["vgg16"] if c != "M"]
    assert model["fc6"].units == model["fc7"].units == round(4096 * WIDTH) == torch_net.classifier[0].out_features
    assert model["pool5"].output_shape == (2, 2, 32)  # fc6 sees a 2x2 volume: the permutation matters


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_read_torch_returns_the_saved_arrays_bit_for_bit(tmp_path, fmt, batch_norm):
    state = TorchVGG(batch_norm=batch_norm).state_dict()
    arrays = read_torch(save(state, tmp_path / "vgg.pth", fmt))
    assert list(arrays) == list(state)
    for key, tensor in state.items():
        assert arrays[key].dtype == tensor.numpy().dtype, key
        np.testing.assert_array_equal(arrays[key], tensor.numpy(), err_msg=key)


@pytest.mark.parametrize("arch, batch_norm, fmt", [
    ("vgg16", False, "zip"), ("vgg16", False, "legacy"), ("vgg16", True, "zip"), ("vgg16", True, "legacy"),
    ("vgg11", False, "zip"), ("vgg13", False, "legacy"), ("vgg19", False, "zip"), ("vgg11", True, "legacy"),
])
def test_torchvision_weights_give_torch_logits(tmp_path, arch, batch_norm, fmt):
    net = TorchVGG(arch, batch_norm=batch_norm)
    path = save(net.state_dict(), tmp_path / "vgg.pth", fmt)
    x, x_nhwc = inputs()
    model = cnnkit_vgg(arch, weights=path, batch_norm=batch_norm)
    assert_close(model.predict(x_nhwc), torch_logits(net, x))
    assert model.meta["preprocessing"] == "torch"


def test_fc6_rows_are_permuted_to_channels_last(tmp_path):
    net = TorchVGG()
    model = cnnkit_vgg(weights=save(net.state_dict(), tmp_path / "vgg.pth"))
    w = net.classifier[0].weight.detach().numpy()          # (out, c*h*w), channels first
    expected = w.reshape(-1, 32, 2, 2).transpose(2, 3, 1, 0).reshape(2 * 2 * 32, -1)
    np.testing.assert_array_equal(model["fc6"].parameters()["weight"].value, expected)
    assert not np.array_equal(expected, w.T)  # a plain transpose would be wrong here


def test_nested_checkpoint_with_module_prefix_and_float16_loads(tmp_path):
    net = TorchVGG()
    half = {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    path = save({"epoch": 3, "state_dict": half}, tmp_path / "ckpt.pth")
    model = cnnkit_vgg(weights=path)
    expected = net.features[0].weight.detach().half().float().numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(model["conv1_1"].parameters()["weight"].value, expected)
    assert model["conv1_1"].parameters()["weight"].value.dtype == np.float32


# ----------------------------------------------------------------- timm layout


def timm_state(net):
    """timm's VGG names: fc6/fc7 as convolutions (pre_logits.fc1 over the pool5 volume) and head.fc."""
    state = {k: v for k, v in net.state_dict().items() if k.startswith("features.")}
    fc6, fc7, fc8 = net.classifier[0], net.classifier[3], net.classifier[6]
    state["pre_logits.fc1.weight"] = fc6.weight.detach().reshape(fc6.out_features, -1, 2, 2).clone()
    state["pre_logits.fc1.bias"] = fc6.bias.detach().clone()
    state["pre_logits.fc2.weight"] = fc7.weight.detach().reshape(fc7.out_features, -1, 1, 1).clone()
    state["pre_logits.fc2.bias"] = fc7.bias.detach().clone()
    state["head.fc.weight"], state["head.fc.bias"] = fc8.weight.detach(), fc8.bias.detach()
    return state


def timm_forward(net, state, x):
    """timm's ConvMlp pre-logits and pooled head, computed with convolutions."""
    with torch.no_grad():
        y = net.features(x)
        y = F.relu(F.conv2d(y, state["pre_logits.fc1.weight"], state["pre_logits.fc1.bias"]))
        y = F.relu(F.conv2d(y, state["pre_logits.fc2.weight"], state["pre_logits.fc2.bias"]))
        y = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return F.linear(y, state["head.fc.weight"], state["head.fc.bias"]).numpy()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_timm_weights_give_timm_logits(tmp_path, fmt):
    net = TorchVGG()
    state = timm_state(net)
    path = save(state, tmp_path / "timm.pth", fmt)
    x, x_nhwc = inputs()
    model = cnnkit_vgg(weights=path)
    assert load_pretrained(model, path) == "timm"
    assert_close(model.predict(x_nhwc), timm_forward(net, state, x))
    assert model.meta["preprocessing"] == "torch"


# ----------------------------------------------------------------- Keras layout


def write_keras_h5(path, net):
    """The layout of Keras 2's save_weights: layer_names on the root, weight_names per layer group."""
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    layers, block, conv = [("input_1", [])], 1, 0
    for index, module in enumerate(net.features):
        if isinstance(module, nn.Conv2d):
            conv += 1
            name = f"block{block}_conv{conv}"
            layers.append((name, [(f"{name}/kernel:0", state[f"features.{index}.weight"].transpose(2, 3, 1, 0)),
                                  (f"{name}/bias:0", state[f"features.{index}.bias"])]))
        elif isinstance(module, nn.MaxPool2d):
            layers.append((f"block{block}_pool", []))
            block, conv = block + 1, 0
    fc6 = state["classifier.0.weight"]
    channels_last = fc6.reshape(fc6.shape[0], -1, 2, 2).transpose(2, 3, 1, 0).reshape(-1, fc6.shape[0])
    layers += [("flatten", []),
               ("fc1", [("fc1/kernel:0", channels_last), ("fc1/bias:0", state["classifier.0.bias"])]),
               ("fc2", [("fc2/kernel:0", state["classifier.3.weight"].T), ("fc2/bias:0", state["classifier.3.bias"])]),
               ("predictions", [("predictions/kernel:0", state["classifier.6.weight"].T),
                                ("predictions/bias:0", state["classifier.6.bias"])])]
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = b"2.2.4"
        for name, weights in layers:
            group = handle.create_group(name)
            group.attrs["weight_names"] = np.array([w.encode() for w, _ in weights], dtype="S")
            for weight_name, value in weights:
                group.create_dataset(weight_name, data=np.ascontiguousarray(value))
    return path


def test_keras_h5_gives_the_logits_of_the_torchvision_file(tmp_path):
    net = TorchVGG()
    keras = cnnkit_vgg(weights=write_keras_h5(tmp_path / "vgg16.h5", net))
    torchvision = cnnkit_vgg(weights=save(net.state_dict(), tmp_path / "vgg16.pth"))
    for key, value in torchvision.state_dict().items():
        np.testing.assert_array_equal(keras.state_dict()[key], value, err_msg=key)
    x, x_nhwc = inputs()
    np.testing.assert_array_equal(keras.predict(x_nhwc), torchvision.predict(x_nhwc))
    assert_close(keras.predict(x_nhwc), torch_logits(net, x))
    assert keras.meta["preprocessing"] == "caffe"


# ----------------------------------------------------------------- cnnkit files and preprocessing


def test_preprocessing_follows_the_source_and_is_saved_with_the_model(tmp_path):
    net = TorchVGG()
    keras = cnnkit_vgg(weights=write_keras_h5(tmp_path / "vgg16.h5", net))
    keras.save(tmp_path / "mine.safetensors")
    assert cnnkit.load(tmp_path / "mine.safetensors").meta["preprocessing"] == "caffe"
    again = cnnkit_vgg(weights=tmp_path / "mine.safetensors")   # a cnnkit file keeps its own mode
    assert again.meta["preprocessing"] == "caffe"
    for key, value in keras.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[key], value, err_msg=key)
    assert cnnkit_vgg(weights=save(timm_state(net), tmp_path / "t.pth")).meta["preprocessing"] == "torch"


def test_to_cnnkit_converts_without_touching_the_model(tmp_path):
    net = TorchVGG()
    model = cnnkit_vgg()
    before = {key: value.copy() for key, value in model.state_dict().items()}
    state = read_torch(save(net.state_dict(), tmp_path / "vgg.pth"))
    converted = to_cnnkit(state, model, "torchvision")
    loaded = cnnkit_vgg(weights=tmp_path / "vgg.pth")
    assert set(converted) == set(model.state_dict()) and len(state) == 32
    for key, value in loaded.state_dict().items():
        np.testing.assert_array_equal(converted[key], value, err_msg=key)
        np.testing.assert_array_equal(model.state_dict()[key], before[key], err_msg=key)


# ----------------------------------------------------------------- include_top=False


def test_include_top_false_loads_only_the_convolutions(tmp_path):
    net = TorchVGG(batch_norm=True)
    path = save(net.state_dict(), tmp_path / "vgg.pth")
    x, x_nhwc = inputs()
    base = cnnkit_vgg(weights=path, include_top=False, batch_norm=True)
    assert "fc6" not in base.layer_names()
    with torch.no_grad():
        expected = net.features(x).permute(0, 2, 3, 1).numpy()
    assert_close(base.predict(x_nhwc), expected)

    full = cnnkit_vgg(batch_norm=True, num_classes=3)   # a new 3-class head: the file's fc8 cannot fit it
    fc_before = {k: v.copy() for k, v in full.state_dict().items() if k.startswith("fc")}
    load_pretrained(full, path, include_top=False)
    for key, value in fc_before.items():
        np.testing.assert_array_equal(full.state_dict()[key], value, err_msg=key)
    np.testing.assert_array_equal(full.state_dict()["conv5_3.weight"], base.state_dict()["conv5_3.weight"])


# ----------------------------------------------------------------- errors


def test_another_vgg_configuration_lists_every_disagreement(tmp_path):
    path = save(TorchVGG("vgg11").state_dict(), tmp_path / "vgg11.pth")
    with pytest.raises(WeightsError) as caught:
        cnnkit_vgg("vgg16", weights=path)
    message = str(caught.value)
    assert str(path) in message and "torchvision layout" in message and "vgg16" in message
    assert "missing keys: features.2.weight (conv1_2.weight)" in message
    assert "features.28.weight (conv5_3.weight)" in message          # the last missing one too
    assert "unexpected keys: features.3.weight" in message
    assert "features.18.bias" in message                              # vgg11's last conv, unexpected
    assert "24 missing keys" in message and "14 unexpected keys" in message
    assert "8 convolutions (vgg11)" in message


def test_missing_unexpected_and_wrong_shapes_come_in_one_error(tmp_path):
    path = save(TorchVGG("vgg13").state_dict(), tmp_path / "vgg13.pth")
    with pytest.raises(WeightsError) as caught:
        cnnkit_vgg("vgg16", weights=path)
    message = str(caught.value)
    # vgg13's features.17 is conv4_2 (32 -> 32), vgg16's is conv4_1 (16 -> 32)
    assert "1 wrong shapes: features.17.weight (conv4_1.weight): file (32, 32, 3, 3), model needs (32, 16, 3, 3)" \
        in message
    assert "12 missing keys: features.14.weight (conv3_3.weight)" in message
    assert "6 unexpected keys: features.15.weight, features.15.bias, features.20.weight" in message
    assert "10 convolutions (vgg13)" in message


def test_another_width_lists_every_wrong_shape(tmp_path):
    path = save(TorchVGG(width=1 / 8).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(WeightsError) as caught:
        cnnkit_vgg(weights=path)
    message = str(caught.value)
    # every array but fc8.bias (10 classes either way)
    assert "31 wrong shapes" in message and "fc8.bias" not in message
    assert "missing" not in message and "unexpected" not in message
    assert "features.0.weight (conv1_1.weight): file (8, 3, 3, 3), model needs (4, 3, 3, 3)" in message
    assert "classifier.0.weight (fc6.weight): file (512, 256), model needs (256, 128)" in message
    assert "another width" in message


def test_batch_norm_on_one_side_only_is_named(tmp_path):
    path = save(TorchVGG(batch_norm=True).state_dict(), tmp_path / "bn.pth")
    with pytest.raises(WeightsError, match=r"unexpected keys: features\.1\.weight.*batch_norm=True"):
        cnnkit_vgg(weights=path)


def test_a_file_without_the_top_suggests_include_top_false(tmp_path):
    features_only = {k: v for k, v in TorchVGG().state_dict().items() if k.startswith("features.")}
    path = save(features_only, tmp_path / "features.pth")
    with pytest.raises(WeightsError, match=r"6 missing keys: classifier\.0\.weight \(fc6\.weight\).*include_top=False"):
        cnnkit_vgg(weights=path)
    assert "conv5_3" in cnnkit_vgg(weights=path, include_top=False).layer_names()


def test_weights_error_leaves_the_model_untouched(tmp_path):
    path = save(TorchVGG(width=1 / 8).state_dict(), tmp_path / "wide.pth")
    model = cnnkit_vgg()
    before = model.state_dict()["conv1_1.weight"].copy()
    with pytest.raises(WeightsError):
        load_pretrained(model, path)
    np.testing.assert_array_equal(model.state_dict()["conv1_1.weight"], before)
    assert "preprocessing" not in model.meta


@pytest.mark.parametrize("name", ["notes.pth", "notes.safetensors", "notes.h5", "notes.npz", "notes"])
def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, name):
    path = tmp_path / name
    path.write_text("these are not weights\n" * 20)
    with pytest.raises(WeightsError, match=str(path)):
        cnnkit_vgg(weights=path)


@pytest.mark.parametrize("kind", ["zip", "legacy", "h5", "safetensors"])
def test_a_truncated_file_is_named(tmp_path, kind):
    net = TorchVGG()
    if kind == "h5":
        path = write_keras_h5(tmp_path / "vgg.h5", net)
    elif kind == "safetensors":
        path = tmp_path / "vgg.safetensors"
        cnnkit_vgg(weights=save(net.state_dict(), tmp_path / "vgg.pth")).save(path)
    else:
        path = save(net.state_dict(), tmp_path / "vgg.pth", kind)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=str(path)):
        cnnkit_vgg(weights=path)


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"features.0.weight": _Payload(marker)}, protocol=2))
    with pytest.raises(WeightsError, match="system"):
        cnnkit_vgg(weights=path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())   # the same bytes do run the command when unpickled for real
    assert marker.exists()


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="nowhere.pth"):
        cnnkit_vgg(weights=tmp_path / "nowhere.pth")


def test_unknown_key_names_are_refused_with_the_expected_names(tmp_path):
    path = save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"encoder\.weight.*features\.0\.weight"):
        cnnkit_vgg(weights=path)


# ----------------------------------------------------------------- memory


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_loading_peaks_at_about_twice_the_file_size(tmp_path, fmt):
    # width 0.25 at 224: fc6 (6272 x 1024) dominates, as in the real VGG16 (25088 x 4096).
    net = TorchVGG(width=0.25, size=224, classes=1000)
    path = save(net.state_dict(), tmp_path / "vgg16.pth", fmt)
    del net
    gc.collect()
    size = os.path.getsize(path)
    tracemalloc.start()
    try:
        model = cnnkit.models.vgg16(width=0.25, weights=path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert model.meta["preprocessing"] == "torch"
    params = sum(value.nbytes for value in model.state_dict().values())
    assert params > 0.99 * size                  # the file is the model: peak / size is the real ratio
    assert peak <= 2.2 * size, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file ({peak / size:.2f}x)"
