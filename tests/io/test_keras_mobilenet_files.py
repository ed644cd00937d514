"""Keras MobileNetV2 files written by real Keras 3 (torch backend) load into cnnkit's MobileNetV2 in Keras's
layout and reproduce Keras.

keras.applications.MobileNetV2 with weights=None, every variable redrawn (a new Keras model's batch
norms are identities, which would hide a swapped mapping), is saved in every form Keras users have
(``save_weights("x.weights.h5")``, ``save("x.keras")``, legacy ``save("x.h5")``, and the Keras 3
forms without the layer names older releases did not write). Two cases, small to stay fast: alpha
0.35 at 96 x 96 with 7 classes, and alpha 0.5 at 75 x 75 without the top, global max pooling (odd
sizes: Keras's ``correct_pad`` then pads before as well as after). The input is in [-1, 1] (``tf``
preprocessing), channels-last on both sides. Each file is about 2 MB.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from keras_files import FORMS, Written, assert_reproduces

import cnnkit
from cnnkit.errors import WeightsError
from cnnkit.io import read_weights
from cnnkit.io.pretrained import is_keras_file, keras_layer_order
from cnnkit.models.keras_mobilenet import keras_widths

pytestmark = [pytest.mark.keras, pytest.mark.h5py,
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")]

CASES = {
    "top-7": ({"alpha": 0.35, "input_shape": (96, 96, 3), "classes": 7, "classifier_activation": None},
              {"width_mult": 0.35, "input_shape": (96, 96, 3), "num_classes": 7}),
    "max-pool": ({"alpha": 0.5, "input_shape": (75, 75, 3), "include_top": False, "pooling": "max"},
                 {"width_mult": 0.5, "input_shape": (75, 75, 3), "include_top": False, "pooling": "max"}),
}
#: after the first asymmetric padding, at an odd size in the second case, deep in the network, the last ReLU6
FEATURES = ("block_1_depthwise", "block_3_depthwise_relu", "block_13_expand_relu", "out_relu")


class MobileNetWritten(Written):
    """A case of :data:`CASES` written by Keras, loaded by cnnkit's MobileNetV2."""

    def __init__(self, keras, case: str, folder):
        keras_args, self.cnnkit_args = CASES[case]
        super().__init__(keras, "MobileNetV2", keras_args, folder, randomize=True, preprocessing="tf")

    def load(self, form: str, **options):
        return cnnkit.models.mobilenet_v2(weights=self.path(form), **{**self.cnnkit_args, **options})

    def keras_features(self, names):
        inner = self.keras.Model(self.model.inputs, [self.model.get_layer(name).output for name in names])
        outputs = inner([self.x], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]   # Keras unwraps a single output
        return [self.keras.ops.convert_to_numpy(out) for out in outputs]


@pytest.fixture(scope="module")
def keras():
    import keras

    assert keras.backend.backend() == "torch", "the tests run Keras on the torch backend"
    return keras


@pytest.fixture(scope="module", params=list(CASES))
def written(request, keras, tmp_path_factory):
    return MobileNetWritten(keras, request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def top(keras, tmp_path_factory):
    return MobileNetWritten(keras, "top-7", tmp_path_factory.mktemp("top-7"))


@pytest.mark.parametrize("form", FORMS)
def test_keras_files_load_and_reproduce_keras(written, form):
    model = written.load(form)
    assert "block_1_pad" in model.layer_names()   # the file chose Keras's layout
    assert model.meta["preprocessing"] == "tf"
    assert_reproduces(model.predict(written.x), written.want)


def test_features_after_the_asymmetric_padding_and_deep_inside_are_kerass(written):
    """The outputs alone could hide a padding on the wrong side (the pooled scores move little);
    the features at the first strided depthwise convolution cannot."""
    model = written.load("weights.h5 without names")
    for name, ours, theirs in zip(FEATURES, model.features(written.x, list(FEATURES)),
                                  written.keras_features(FEATURES)):
        assert ours.shape == theirs.shape, name
        assert_reproduces(ours, theirs)


def test_the_structural_order_is_the_order_of_keras_model_layers(top):
    """A file without names is mapped by keras_layer_order: it must list each kind as Keras's
    model.layers does."""
    kinds = {"Conv2D": "conv2d", "DepthwiseConv2D": "depthwise_conv2d", "BatchNormalization": "batch_normalization",
             "Dense": "dense"}
    expected: dict[str, list[str]] = {kind: [] for kind in kinds.values()}
    for layer in top.model.layers:
        if type(layer).__name__ in kinds:
            expected[kinds[type(layer).__name__]].append(layer.name)
    assert keras_layer_order(top.load("keras")) == expected
    unnamed = read_weights(top.path("weights.h5 without names"))
    assert unnamed["depthwise_conv2d_16/0"].shape == (3, 3, 6 * 56, 1)   # block_16_depthwise, alpha 0.35


@pytest.mark.parametrize("alpha", [0.35, 0.75, 1.11875, 1.4])
def test_widths_are_kerass_for_its_alphas(keras, alpha):
    """At 1.11875 Keras's rounding (int(16 * alpha) = 17 -> 16) and torchvision's (17.9 -> 24) part."""
    model = keras.applications.MobileNetV2(weights=None, alpha=alpha, input_shape=(32, 32, 3), include_top=False)
    stem, projections, last = keras_widths(alpha)
    assert model.get_layer("Conv1").filters == stem and model.get_layer("Conv_1").filters == last
    names = ["expanded_conv_project"] + [f"block_{n}_project" for n in range(1, 17)]
    assert [model.get_layer(name).filters for name in names] == projections
    ours = cnnkit.models.mobilenet_v2(layout="keras", width_mult=alpha, input_shape=(32, 32, 3), include_top=False,
                                      allocate=False)
    theirs = sum(int(np.prod(variable.shape)) for variable in model.weights)
    assert sum(p.value.size for p in ours.parameters().values()) + sum(b.size for b in ours.buffers().values()) \
        == theirs


def test_keras_2s_depthwise_kernel_name_loads_too(top, tmp_path):
    """Keras 2 (its released MobileNetV2 files) calls a depthwise kernel ``depthwise_kernel:0``; Keras 3
    writes ``kernel`` in its legacy .h5. The same file with Keras 2's names loads alike."""
    path = tmp_path / "keras2.h5"
    path.write_bytes(top.path("legacy h5").read_bytes())
    renamed = 0
    with h5py.File(path, "a") as f:
        weights = f["model_weights"]
        for layer in weights:
            if layer.endswith("_depthwise"):
                group = weights[layer][layer]
                group.move("kernel", "depthwise_kernel:0")
                weights[layer].attrs["weight_names"] = [f"{layer}/depthwise_kernel:0"]
                renamed += 1
    assert renamed == 17
    assert "block_3_depthwise/depthwise_kernel" in read_weights(path)
    assert "block_3_depthwise/kernel" in read_weights(top.path("legacy h5"))
    assert_reproduces(cnnkit.models.mobilenet_v2(weights=path, **top.cnnkit_args).predict(top.x), top.want)


def test_a_file_with_the_top_loads_into_the_convolutional_part(top):
    want = top.keras_features(["out_relu"])[0]
    for form in ("weights.h5", "keras without names"):
        model = top.load(form, include_top=False, num_classes=1000)
        assert "predictions" not in model.layer_names()
        assert_reproduces(model.predict(top.x), want)


def test_the_layout_follows_the_file_or_is_refused_with_a_hint(top):
    path = top.path("weights.h5")
    assert is_keras_file(path) and is_keras_file(top.path("keras")) and is_keras_file(top.path("legacy h5"))
    with pytest.raises(WeightsError, match=r"Keras's MobileNetV2 .* build it with layout='keras'"):
        top.load("weights.h5", layout="torchvision")
    with pytest.raises(WeightsError, match=r"Keras 3 weights that name no layer .* torchvision's layout, which no "
                                           r"Keras model has"):
        top.load("weights.h5 without names", layout="torchvision")


def test_another_number_of_classes_or_width_is_named(top):
    with pytest.raises(WeightsError, match=r"predictions has 7 classes: build the model with num_classes=7"):
        top.load("weights.h5", num_classes=10)
    with pytest.raises(WeightsError, match=r"The file's Conv1 has 16 filters, the model's 24: the weights are of "
                                           r"another width_mult"):
        top.load("keras", width_mult=0.75)


@pytest.mark.parametrize("form, message", [
    ("keras", r"weights of Keras's MobileNetV2 .* not ResNet weights; build it in Keras's layout, e.g. "
              r"cnnkit.models.mobilenet_v2\(weights=path\)"),
    ("weights.h5 without names", r"it holds 17 depthwise_conv2d layers, resnet50 has 0. The file holds 35 "
                                 r"convolutions \(mobilenet_v2\): build the architecture"),
])
def test_a_mobilenet_file_given_to_a_resnet_is_named(top, form, message):
    """Named by the file, or (without names) by the ResNet's structure, which has no depthwise layer."""
    with pytest.raises(WeightsError, match=message):
        cnnkit.models.resnet50(weights=top.path(form), input_shape=(96, 96, 3), num_classes=7)
