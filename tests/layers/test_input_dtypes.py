"""What a layer or model computes on (issue 13, section 4): float32 and float64 as given, integer
images as float32, anything else and empty batches refused with a message that names the fix."""

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import ShapeError
from cnnkit.layers import AvgPool2d, BatchNorm2d, Conv2d, Dense, Flatten, MaxPool2d, ReLU


@pytest.fixture(params=["compiled", "numpy"])
def kernel_path(request, monkeypatch):
    monkeypatch.setenv("CNNKIT_JIT", "1" if request.param == "compiled" else "0")
    return request.param


def _image(dtype=np.uint8, shape=(2, 8, 8, 3), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(dtype)


def _built(layer, shape=(8, 8, 3)):
    layer.build(shape, np.random.default_rng(0))
    return layer


@pytest.mark.parametrize("make", [lambda: Conv2d(16, 3, padding=1), lambda: Conv2d(4, 5, stride=2),
                                  lambda: MaxPool2d(2), lambda: MaxPool2d(3, 2, padding=1),
                                  lambda: AvgPool2d(3, 1, padding=2)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_integer_images_compute_as_float32(make, dtype, kernel_path):
    layer = _built(make())
    image = _image(dtype)
    y = layer.forward(image)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, layer.forward(image.astype(np.float32)))
    assert np.abs(y).max() > 1                  # not the zeros a uint8 weight cast gave


def test_uint8_through_a_model_matches_float32_and_predict(kernel_path):
    model = cnnkit.Sequential([Conv2d(16, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(), Dense(4)],
                              input_shape=(8, 8, 3))
    image = _image(shape=(8, 8, 8, 3))
    expected = model.forward(image.astype(np.float32))
    np.testing.assert_array_equal(model.forward(image), expected)
    np.testing.assert_allclose(model.predict(image, batch_size=3), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float16, np.bool_, np.complex64, object, "U3"])
@pytest.mark.parametrize("make", [lambda: Conv2d(4, 3, name="conv1"), lambda: MaxPool2d(2, name="conv1"),
                                  lambda: BatchNorm2d(name="conv1"), lambda: ReLU(name="conv1")])
def test_other_dtypes_are_refused_naming_the_layer_and_the_fix(make, dtype):
    layer = _built(make())
    x = np.zeros((2, 8, 8, 3), dtype=dtype)
    name = np.dtype(dtype).name if dtype != "U3" else "<U3"
    with pytest.raises(ShapeError, match=rf"^conv1: cannot compute on an input of dtype {name}; cnnkit layers "
                                         r"compute in float32 or float64 \(integer images are converted to "
                                         r"float32\); convert it first, e.g. x.astype\(np.float32\)$"):
        layer.forward(x)


@pytest.mark.parametrize("dtype", [np.float16, np.bool_, np.complex128, object])
def test_models_refuse_them_at_the_first_layer_and_in_predict(dtype):
    model = cnnkit.Sequential([Conv2d(4, 3, name="conv1"), Flatten(), Dense(2)], input_shape=(8, 8, 3))
    x = np.zeros((2, 8, 8, 3), dtype=dtype)
    with pytest.raises(ShapeError, match=r"^conv1: cannot compute on an input of dtype"):
        model.forward(x)
    with pytest.raises(ShapeError, match=r"^sequential: cannot compute on an input of dtype"):
        model.predict(x[:0])                 # even with nothing to predict


@pytest.mark.parametrize("make", [lambda: Conv2d(4, 3, name="conv1"), lambda: MaxPool2d(2, name="conv1"),
                                  lambda: ReLU(name="conv1"), lambda: Flatten(name="conv1")])
def test_an_empty_batch_is_refused(make, kernel_path):
    layer = _built(make())
    with pytest.raises(ShapeError, match=r"^conv1: received an empty batch, input shape \(0, 8, 8, 3\); "
                                         r"pass at least one sample$"):
        layer.forward(np.zeros((0, 8, 8, 3), np.float32))


def test_an_empty_batch_through_a_model_names_its_first_layer():
    model = cnnkit.Sequential([Conv2d(4, 3, name="conv1"), Flatten(), Dense(2)], input_shape=(8, 8, 3))
    with pytest.raises(ShapeError, match=r"^conv1: received an empty batch"):
        model.forward(np.zeros((0, 8, 8, 3), np.float32))
    assert model.predict(np.zeros((0, 8, 8, 3), np.float32)).shape == (0, 2)
