"""UpSampling2d: float64 gradient checks, PyTorch's F.interpolate as the oracle for both
align_corners choices, Keras 3's UpSampling2D for its two interpolations, the receptive field
measured, the config, and the exact text of errors."""

from __future__ import annotations

import json
import os
import re
from fractions import Fraction

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

import cnnkit
from cnnkit.arithmetic import ReceptiveField
from cnnkit.errors import ConfigError
from cnnkit.layers import Conv2d, UpSampling2d

from field_probe import mean_centre, measured_rows, measured_size

CASES = [  # input (H, W, C), size, interpolation, align_corners
    ((4, 3, 2), 2, "nearest", False),
    ((3, 4, 2), (3, 2), "nearest", False),
    ((4, 3, 2), 2, "bilinear", False),
    ((3, 5, 2), (2, 3), "bilinear", False),
    ((4, 3, 2), (3, 2), "bilinear", True),
    ((1, 4, 3), 4, "bilinear", True),
    ((2, 2, 1), (1, 5), "bilinear", False),
    ((5, 4, 1), 1, "bilinear", True),
]


def _built(size, interpolation, align_corners, shape, name=None):
    layer = UpSampling2d(size, interpolation, align_corners, name=name)
    layer.build(shape)
    return layer


@pytest.mark.parametrize("shape, size, interpolation, align_corners", CASES)
def test_gradients_match_finite_differences(shape, size, interpolation, align_corners):
    layer = _built(size, interpolation, align_corners, shape)
    result = cnnkit.gradcheck(layer, np.random.default_rng(0).standard_normal((2, *shape)))
    assert result.max_error < 1e-6 and set(result.errors) == {"input"}


@pytest.mark.torch
@pytest.mark.parametrize("shape, size, interpolation, align_corners",
                         CASES + [((7, 6, 8), 2, "bilinear", False), ((6, 7, 3), 3, "nearest", False)])
def test_matches_torch_interpolate(shape, size, interpolation, align_corners):
    layer = _built(size, interpolation, align_corners, shape)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, *shape), dtype=np.float32)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx = layer.backward(dy)
    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    corners = {} if interpolation == "nearest" else {"align_corners": align_corners}
    factors = (size, size) if isinstance(size, int) else size
    ty = F.interpolate(tx, scale_factor=factors, mode=interpolation, **corners)
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    for got, want in ((y, ty.detach().numpy().transpose(0, 2, 3, 1)), (dx, tx.grad.numpy().transpose(0, 2, 3, 1))):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _keras():
    """Keras 3 on the torch backend (no TensorFlow needed), or a skip that says what to install."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="Keras 3 checks Keras's rules: pip install keras==3.15.1")
    if keras.backend.backend() != "torch":
        pytest.skip(f"Keras runs on {keras.backend.backend()}; these checks set KERAS_BACKEND=torch")
    return keras


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # Keras's own np.array(x, copy=False)
@pytest.mark.parametrize("size", [2, (3, 2), (1, 4)])
def test_keras_bilinear_is_half_pixel_and_its_nearest_repeats(size):
    """Keras 3's ``UpSampling2D(interpolation="bilinear")`` is ``align_corners=False``, not ``True``."""
    keras = _keras()
    x = np.random.default_rng(2).standard_normal((2, 5, 4, 3), dtype=np.float32)
    for interpolation in ("nearest", "bilinear"):
        want = keras.ops.convert_to_numpy(keras.layers.UpSampling2D(size, interpolation=interpolation)(x))
        np.testing.assert_allclose(_built(size, interpolation, False, (5, 4, 3)).forward(x), want,
                                   rtol=1e-5, atol=1e-5)
    aligned = _built(size, "bilinear", True, (5, 4, 3)).forward(x)
    assert np.abs(aligned - want).max() > 0.1


@pytest.mark.parametrize("shape, size, interpolation, align_corners", CASES)
def test_arithmetic_counts_the_upsampling(shape, size, interpolation, align_corners):
    layer = _built(size, interpolation, align_corners, shape)
    sh, sw = (size, size) if isinstance(size, int) else size
    h, w, c = shape
    assert layer.output_shape == (h * sh, w * sw, c)
    assert layer.param_count() == 0 and layer.parameters() == {} and layer.unread() == (0, 0)
    assert layer.macs() == (0 if interpolation == "nearest" else 2 * c * (h * sh * w + h * sh * w * sw))


@pytest.mark.parametrize("factor, interpolation, align_corners",
                         [(2, "nearest", False), (3, "nearest", False), (2, "bilinear", False),
                          (3, "bilinear", False), (4, "bilinear", False), (2, "bilinear", True),
                          (3, "bilinear", True)])
def test_receptive_field_is_the_measured_one(factor, interpolation, align_corners):
    height = 7
    layer = UpSampling2d((factor, 1), interpolation, align_corners)
    rows = measured_rows(layer, height)
    field, _ = layer.receptive_field((ReceptiveField(), ReceptiveField()))
    assert field.size == measured_size(rows)
    if align_corners:   # the corner units are centred on the corner pixels
        assert field.jump == Fraction(height - 1, height * factor - 1)
        assert field.start == mean_centre(rows, [0]) == 0.5
        assert field.start + float(field.jump) * (height * factor - 1) == mean_centre(rows, [-1]) == height - 0.5
    else:               # half-pixel centres: on average over a period of units away from the edges
        assert field.jump == Fraction(1, factor)
        middle = range(3 * factor, 4 * factor)
        assert mean_centre(rows, middle) == pytest.approx(field.start + float(field.jump) * np.mean(middle))


def test_a_super_resolution_summary_counts_fields_in_whole_pixels_and_its_json_loads():
    model = cnnkit.Sequential([UpSampling2d(2, "bilinear", name="up"), Conv2d(2, 3, padding=1, name="conv")],
                              input_shape=(4, 4, 1), seed=0)
    rows = {row["name"]: row for row in json.loads(model.summary(format="json", print_fn=None))["layers"]}
    assert rows["up"]["jump"] == [0.5, 0.5] and rows["up"]["receptive_field"] == [2, 2]
    assert rows["conv"]["receptive_field"] == [3, 3]   # three neighbours half a pixel apart read 3 pixels at most
    assert "3x3" in model.summary(print_fn=None)


def test_config_rebuilds_the_layer_and_a_graph_runs_it():
    model = cnnkit.Sequential([UpSampling2d((2, 3), "bilinear", True, name="up")], input_shape=(3, 2, 2), seed=0)
    config = model.get_config()
    assert config["layers"][0]["config"] == {"size": [2, 3], "interpolation": "bilinear", "align_corners": True,
                                             "name": "up", "trainable": True}
    rebuilt = cnnkit.Sequential.from_config(json.loads(json.dumps(config)))
    x = np.random.default_rng(3).standard_normal((2, 3, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(rebuilt.forward(x), model.forward(x))
    assert repr(model.layers[0]) == "UpSampling2d(size=[2, 3], interpolation='bilinear', align_corners=True, name='up')"
    inputs = cnnkit.Input((3, 2, 2))
    graph = cnnkit.Model(inputs, UpSampling2d(2, name="up")(inputs))
    np.testing.assert_array_equal(graph.forward(x), x.repeat(2, axis=1).repeat(2, axis=2))


def test_a_description_allocates_no_index_arrays():
    layer = UpSampling2d(10**9)
    layer.build((4, 4, 1))   # what a model file's check does: shapes, no arrays
    assert layer.output_shape == (4 * 10**9, 4 * 10**9, 1) and layer._taps is None


@pytest.mark.parametrize("make, message", [
    (lambda: UpSampling2d(0, name="up1"), "up1: size must be at least 1 (the upsampling factor); received size=0"),
    (lambda: UpSampling2d(1.5, name="up1"), "up1: size must be an int or a pair of ints; received size=1.5"),
    (lambda: UpSampling2d(2, "bicubic", name="up1"),
     "up1: interpolation must be one of ('nearest', 'bilinear'); received interpolation='bicubic'"),
    (lambda: UpSampling2d(2, "nearest", True, name="up1"),
     "up1: align_corners=True applies to interpolation='bilinear' only (PyTorch refuses it for nearest too); "
     "use align_corners=False or interpolation='bilinear'"),
    (lambda: UpSampling2d(2, "bilinear", "yes", name="up1"),
     "up1: align_corners must be True or False; received align_corners='yes'"),
])
def test_impossible_configurations_name_the_layer_the_value_and_the_fix(make, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        make().build((4, 4, 2))
