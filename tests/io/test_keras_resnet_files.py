"""Keras ResNet50 files written by real Keras 3 (torch backend) load into cnnkit's ResNet in Keras's
layout and reproduce Keras.

keras.applications.ResNet50 with weights=None at 64 x 64 (the smallest Keras accepts is 32 x 32;
the weights do not depend on the input size), every variable redrawn (a new Keras model's batch
norms are identities and its biases zero, which would hide a swapped mapping), is saved in every
form Keras users have (``save_weights("x.weights.h5")``, ``save("x.keras")``, legacy
``save("x.h5")``, and the Keras 3 forms without the layer names older releases did not write).
Two cases: the classifier with 7 classes, and no top with global max pooling. The input is already
caffe-preprocessed, channels-last on both sides. Each file is about 95 MB.
"""

from __future__ import annotations

import numpy as np
import pytest
from keras_files import FORMS, Written, assert_reproduces

import cnnkit
from cnnkit.errors import ConfigError, WeightsError
from cnnkit.io import read_weights
from cnnkit.io.pretrained import is_keras_file, keras_layer_order

pytestmark = [pytest.mark.keras, pytest.mark.h5py,
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]

SHAPE = (64, 64, 3)
CASES = {
    "top-7": ({"include_top": True, "classes": 7, "classifier_activation": None},
              {"num_classes": 7}),
    "max-pool": ({"include_top": False, "pooling": "max"},
                 {"include_top": False, "pooling": "max"}),
}


class ResNetWritten(Written):
    """A case of :data:`CASES` written by Keras, loaded by cnnkit's ResNet50."""

    def __init__(self, keras, case: str, folder):
        keras_args, self.cnnkit_args = CASES[case]
        super().__init__(keras, "ResNet50", {**keras_args, "input_shape": SHAPE}, folder, randomize=True)

    def load(self, form: str, **options):
        return cnnkit.models.resnet50(weights=self.path(form), **{"input_shape": SHAPE, **self.cnnkit_args,
                                                                  **options})


@pytest.fixture(scope="module")
def keras():
    import keras

    assert keras.backend.backend() == "torch", "the tests run Keras on the torch backend"
    return keras


@pytest.fixture(scope="module", params=list(CASES))
def written(request, keras, tmp_path_factory):
    return ResNetWritten(keras, request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def top(keras, tmp_path_factory):
    return ResNetWritten(keras, "top-7", tmp_path_factory.mktemp("top-7"))


@pytest.mark.parametrize("form", FORMS)
def test_keras_files_load_and_reproduce_keras(written, form):
    model = written.load(form)
    assert "conv1_pad" in model.layer_names()   # the file chose Keras's layout
    assert model.meta["preprocessing"] == "caffe"
    assert_reproduces(model.predict(written.x), written.want)


def test_the_structural_order_is_the_order_of_keras_model_layers(top, keras):
    """A file without names is mapped by keras_layer_order: it must list each kind as Keras's
    model.layers does (the shortcut's convolution third in a stage's first block)."""
    kinds = {"Conv2D": "conv2d", "BatchNormalization": "batch_normalization", "Dense": "dense"}
    expected: dict[str, list[str]] = {kind: [] for kind in kinds.values()}
    for layer in top.model.layers:
        if type(layer).__name__ in kinds:
            expected[kinds[type(layer).__name__]].append(layer.name)
    order = keras_layer_order(cnnkit.models.resnet50(layout="keras", allocate=False))
    assert order == expected
    assert order["conv2d"][1:5] == ["conv2_block1_1_conv", "conv2_block1_2_conv", "conv2_block1_0_conv",
                                    "conv2_block1_3_conv"]
    # conv2_block1's shortcut and last convolution have the same shape: only the order tells them apart
    unnamed = read_weights(top.path("weights.h5 without names"))
    assert unnamed["conv2d_3/0"].shape == unnamed["conv2d_4/0"].shape == (1, 1, 64, 256)


def test_features_at_a_block_output_are_kerass(top, keras):
    model = top.load("weights.h5 without names")
    inner = keras.Model(top.model.inputs, [top.model.get_layer(name).output
                                           for name in ("conv4_block6_out", "pool1_pool")])
    want = [keras.ops.convert_to_numpy(out) for out in inner([top.x], training=False)]
    got = model.features(top.x, ["conv4_block6_out", "pool1_pool"])
    for ours, theirs in zip(got, want):
        assert_reproduces(ours, theirs)


def test_a_file_with_the_top_loads_into_the_convolutional_part(top, keras):
    want = keras.ops.convert_to_numpy(
        keras.Model(top.model.inputs, top.model.get_layer("conv5_block3_out").output)([top.x], training=False))
    for form in ("weights.h5", "keras without names"):
        model = top.load(form, include_top=False, num_classes=1000)
        assert "predictions" not in model.layer_names()
        assert_reproduces(model.predict(top.x), want)


def test_the_layout_follows_the_file_or_is_refused_with_a_hint(top, tmp_path):
    path = top.path("weights.h5")
    assert is_keras_file(path) and is_keras_file(top.path("keras")) and is_keras_file(top.path("legacy h5"))
    with pytest.raises(WeightsError, match=r"Keras's ResNet .* build it with layout='keras'"):
        cnnkit.models.resnet50(weights=path, layout="torchvision", input_shape=SHAPE, num_classes=7)
    with pytest.raises(WeightsError, match=r"Keras 3 weights that name no layer .* torchvision's layout, which no "
                                           r"Keras model has"):
        cnnkit.models.resnet50(weights=top.path("weights.h5 without names"), layout="torchvision",
                               input_shape=SHAPE, num_classes=7)
    with pytest.raises(ConfigError, match=r"resnet18: weights=.* is a Keras file, and Keras has no ResNet-18"):
        cnnkit.models.resnet18(weights=path)


def test_another_number_of_classes_is_named(top):
    with pytest.raises(WeightsError, match=r"predictions has 7 classes: build the model with num_classes=7"):
        top.load("weights.h5", num_classes=10)


@pytest.mark.parametrize("form", ["keras", "weights.h5 without names"])
def test_another_depth_is_named_by_its_convolutions(top, form):
    """Named by the file or by ResNet-101's structure (then it runs out of layers in conv4), the
    file's 53 convolutions name ResNet-50."""
    with pytest.raises(WeightsError, match=r"The file holds 53 convolutions \(resnet50\), resnet101 in Keras's "
                                           r"layout has 104: build the architecture"):
        cnnkit.models.resnet101(weights=top.path(form), input_shape=SHAPE, num_classes=7)


def test_a_cnnkit_state_dict_of_the_keras_layout_loads_as_it_is(top, tmp_path):
    model = top.load("keras")
    path = tmp_path / "state.npz"
    np.savez(path, **model.state_dict())
    again = cnnkit.models.resnet50(weights=path, layout="keras", input_shape=SHAPE, num_classes=7)
    np.testing.assert_array_equal(again.predict(top.x), model.predict(top.x))
    with pytest.raises(WeightsError, match=r"Keras's ResNet .* build it with layout='keras'"):
        cnnkit.models.resnet50(weights=path, input_shape=SHAPE, num_classes=7)   # .npz: torchvision by default
