"""Keras files written by real Keras 3 (torch backend) load into cnnkit's VGG and reproduce Keras.

keras.applications.VGG16 and VGG19 with random weights at a small input are saved in every form
Keras users have: ``save_weights("x.weights.h5")``, ``save("x.keras")`` and the legacy
``save("x.h5")``. Keras 3.15 records each layer's name in its ``.weights.h5``; releases before
that attribute did not, so each Keras 3 form is also loaded with the attribute removed from the
file Keras wrote: then the ``.weights.h5`` is mapped by the model's structure and the ``.keras``
by its ``config.json``. Inputs are already caffe-preprocessed (BGR, mean subtracted), channels-last
on both sides.

VGG16 runs with its classifier at 64 x 64 (pool5 is 2 x 2 x 512, so fc1 sees a flatten of more
than one position: a wrong flatten order would show); keras.applications accepts any input of
at least 32 x 32 with ``weights=None``. One test writes the released shape, 224 x 224 with 1,000
classes (a 527 MiB ``.weights.h5``, about 2 GB of memory at its peak, seconds to run).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from keras_files import CAFFE_MEAN_BGR, FORMS, Written, assert_reproduces

import cnnkit
from cnnkit.errors import WeightsError
from cnnkit.io import detect_source, read_weights

pytestmark = [pytest.mark.keras, pytest.mark.h5py,
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]

CASES = {
    "vgg16-top-64": ("VGG16", "vgg16", {"include_top": True, "input_shape": (64, 64, 3), "classes": 10,
                                        "classifier_activation": None},
                     {"input_shape": (64, 64, 3), "num_classes": 10, "classifier_activation": None}),
    "vgg19-avg-32": ("VGG19", "vgg19", {"include_top": False, "pooling": "avg", "input_shape": (32, 32, 3)},
                     {"include_top": False, "pooling": "avg", "input_shape": (32, 32, 3)}),
}


@pytest.fixture(scope="module")
def keras():
    import keras

    assert keras.backend.backend() == "torch", "the tests run Keras on the torch backend"
    return keras


class VggWritten(Written):
    """A case of :data:`CASES` written by Keras, loaded by the cnnkit VGG of the same case."""

    def __init__(self, keras, case: str, folder):
        keras_class, self.arch, keras_args, self.cnnkit_args = CASES[case]
        super().__init__(keras, keras_class, keras_args, folder)

    def load(self, form: str, arch: str | None = None, **options):
        build = getattr(cnnkit.models, arch or self.arch)
        return build(weights=self.path(form), **{**self.cnnkit_args, **options})


@pytest.fixture(scope="module", params=list(CASES))
def written(request, keras, tmp_path_factory):
    return VggWritten(keras, request.param, tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("form", FORMS)
def test_keras_files_load_and_reproduce_keras(written, form):
    model = written.load(form)
    assert model.meta["preprocessing"] == "caffe"
    assert_reproduces(model.predict(written.x), written.want)


def test_the_keras3_keys_are_numbered_by_kind_not_sorted_as_text(written):
    """The file as Keras wrote it stores conv2d_10 beside conv2d_1; the reader names them in
    model.layers order, and without names they are numbered as Keras numbered them."""
    named = read_weights(written.path("weights.h5"))
    convs = [key[:-len("/kernel")] for key in named if key.endswith("/kernel") and key.startswith("block")]
    assert convs == sorted(convs, key=lambda name: (int(name[5]), int(name.rsplit("conv", 1)[1])))
    assert len(convs) == {"vgg16": 13, "vgg19": 16}[written.arch]
    unnamed = read_weights(written.path("weights.h5 without names"))
    assert [key for key in unnamed if key.startswith("conv2d")][:2] == ["conv2d/0", "conv2d/1"]
    assert f"conv2d_{len(convs) - 1}/0" in unnamed
    with pytest.raises(WeightsError, match=r"Keras 3 weights whose file names no layer.*load_pretrained"):
        detect_source(unnamed)
    from_config = read_weights(written.path("keras without names"))   # config.json names the layers
    assert list(from_config) == list(named) and detect_source(from_config) == "keras"


def test_a_model_without_the_top_reproduces_keras_pool5(written, keras):
    """A file with the classifier (or with global pooling) loads into the convolutional part alone."""
    pool5 = keras.Model(written.model.inputs, written.model.get_layer("block5_pool").output)
    want = keras.ops.convert_to_numpy(pool5([written.x], training=False))
    for form in ("weights.h5", "weights.h5 without names", "keras without names"):
        model = written.load(form, include_top=False, pooling=None, num_classes=1000, classifier_activation="softmax")
        assert "fc6" not in model.layer_names()
        assert_reproduces(model.predict(written.x), want)


@pytest.mark.parametrize("form", ["weights.h5", "weights.h5 without names", "keras", "keras without names"])
def test_a_file_of_another_vgg_names_it(written, form):
    other, convs, guess = {"vgg16": ("vgg19", 13, "vgg16 or vgg16c"), "vgg19": ("vgg16", 16, "vgg19")}[written.arch]
    with pytest.raises(WeightsError, match=rf"holds {convs} convolutions \({guess}\)") as error:
        written.load(form, arch=other)
    assert str(written.path(form)) in str(error.value)


def test_vgg16_as_released_224_with_1000_classes(keras, tmp_path):
    """The shape of the ImageNet release: fc1 sees pool5's 7 x 7 x 512 flattened channels-last."""
    keras.utils.set_random_seed(1)
    model = keras.applications.VGG16(weights=None, classifier_activation=None)
    x = (np.random.default_rng(1).uniform(0, 255, (1, 224, 224, 3)) - CAFFE_MEAN_BGR).astype(np.float32)
    want = keras.ops.convert_to_numpy(model(x, training=False))
    path = tmp_path / "vgg16.weights.h5"
    model.save_weights(path)
    del model
    gc.collect()   # one 138M-parameter model at a time
    ours = cnnkit.models.vgg16(weights=path, classifier_activation=None)
    assert_reproduces(ours.predict(x), want)
