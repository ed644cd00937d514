"""Conv2dTranspose: float64 gradient checks over a table, PyTorch's ConvTranspose2d as the oracle
(and Keras 3's Conv2DTranspose for the string paddings), the transpose of Conv2d, its arithmetic
measured, configs and model files, and the exact text of errors."""

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
from cnnkit.arithmetic import ReceptiveField, conv_transpose_output_size
from cnnkit.checkpoint import load
from cnnkit.errors import ConfigError, WeightsError
from cnnkit.io import write_safetensors
from cnnkit.layers import Concatenate, Conv2d, Conv2dTranspose, ReLU, UpSampling2d

from field_probe import mean_centre, measured_rows, measured_size

CASES = [  # input (H, W, C), filters, kernel, stride, padding, output_padding, dilation
    ((4, 3, 2), 3, 3, 1, 0, 0, 1),
    ((4, 5, 3), 2, 3, 2, 1, 1, 1),
    ((3, 4, 2), 4, 4, 2, 1, 0, 1),
    ((3, 3, 2), 2, 2, 3, 0, 2, 1),
    ((4, 4, 2), 3, 3, 1, 2, 1, 2),
    ((3, 4, 1), 2, (3, 2), (2, 1), (2, 0), (1, 0), (1, 2)),
    ((3, 3, 2), 2, 1, 3, 1, 2, 1),
]
STRING_CASES = [  # input (H, W, C), filters, kernel, stride, padding, dilation
    ((5, 4, 3), 2, 3, 2, "same", 1),
    ((4, 4, 2), 3, 4, 2, "same", 1),
    ((3, 5, 2), 2, 1, 3, "same", 1),
    ((4, 3, 2), 2, 3, 1, "same", 2),
    ((3, 4, 2), 3, 3, 2, "valid", 1),
    ((3, 3, 2), 2, 2, 3, "valid", 1),
]


def _built(filters, kernel, stride, padding, output_padding, dilation, shape, seed=0, **kwargs):
    layer = Conv2dTranspose(filters, kernel, stride, padding, output_padding, dilation, **kwargs)
    layer.build(shape, np.random.default_rng(seed))
    if "bias" in layer.parameters():
        bias = layer.parameters()["bias"]
        bias.value = np.random.default_rng(seed + 1).standard_normal(bias.shape).astype(np.float32)
    return layer


@pytest.mark.parametrize("shape, filters, kernel, stride, padding, output_padding, dilation",
                         CASES + [(s, n, k, st, p, 0, d) for s, n, k, st, p, d in STRING_CASES])
def test_gradients_match_finite_differences(shape, filters, kernel, stride, padding, output_padding, dilation):
    layer = _built(filters, kernel, stride, padding, output_padding, dilation, shape)
    result = cnnkit.gradcheck(layer, np.random.default_rng(2).standard_normal((2, *shape)), max_entries=80)
    assert result.max_error < 1e-6, result.errors
    assert set(result.errors) == {"input", "weight", "bias"}


def test_without_bias_the_gradients_match_too():
    layer = _built(3, 3, 2, 1, 1, 1, (3, 4, 2), use_bias=False)
    assert set(layer.parameters()) == {"weight"}
    result = cnnkit.gradcheck(layer, np.random.default_rng(3).standard_normal((2, 3, 4, 2)))
    assert result.max_error < 1e-6 and set(result.errors) == {"input", "weight"}


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _torch_transposed(x, weight, bias, dy, crop=None, **conv):
    """PyTorch's ConvTranspose2d in NCHW (weight (C, N, Kh, Kw)), cropped to ``crop`` = ((top, H2), (left, W2))
    when given (Keras's string paddings, which no PyTorch padding expresses)."""
    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    tw = torch.tensor(weight.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    tb = torch.tensor(bias, requires_grad=True)
    ty = F.conv_transpose2d(tx, tw, tb, **conv)
    if crop is not None:
        (top, h2), (left, w2) = crop
        # rows past the full output are the bias alone: pad them on (F.pad with negative amounts crops)
        ty = F.pad(ty - tb[:, None, None], (-left, w2 + left - ty.shape[3], -top, h2 + top - ty.shape[2])) \
            + tb[:, None, None]
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    return (ty.detach().numpy().transpose(0, 2, 3, 1), tx.grad.numpy().transpose(0, 2, 3, 1),
            tw.grad.numpy().transpose(2, 3, 1, 0), tb.grad.numpy())


def _ours(layer, x, seed):
    y = layer.forward(x, training=True)
    dy = np.random.default_rng(seed).standard_normal(y.shape, dtype=np.float32)
    dx = layer.backward(dy)
    params = layer.parameters()
    return (y, dx, params["weight"].grad, params["bias"].grad), dy


def _assert_close(ours, theirs):
    for got, want in zip(ours, theirs):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


TORCH_CASES = CASES + [  # larger ones: the backward's convolution on Winograd and the 1x1 product
    ((6, 5, 16), 16, 3, 1, 1, 0, 1),
    ((5, 6, 8), 12, 1, 1, 0, 0, 1),
    ((5, 4, 6), 8, 5, 3, 2, 2, 1),
]


@pytest.mark.torch
@pytest.mark.parametrize("shape, filters, kernel, stride, padding, output_padding, dilation", TORCH_CASES)
def test_matches_torch_conv_transpose2d(shape, filters, kernel, stride, padding, output_padding, dilation):
    layer = _built(filters, kernel, stride, padding, output_padding, dilation, shape, seed=4)
    x = np.random.default_rng(5).standard_normal((3, *shape), dtype=np.float32)
    ours, dy = _ours(layer, x, 6)
    params = layer.parameters()
    assert params["weight"].shape == (*_pair(kernel), filters, shape[2])
    theirs = _torch_transposed(x, params["weight"].value, params["bias"].value, dy, stride=stride, padding=padding,
                               output_padding=output_padding, dilation=dilation)
    _assert_close(ours, theirs)


def _keras_crop(size, kernel, stride, padding, dilation):
    """Keras's rule, written out: (rows cropped before, output size) per axis."""
    crops = []
    for n, k, s, d in zip(size, _pair(kernel), _pair(stride), _pair(dilation)):
        span = d * (k - 1) + 1
        crops.append((max(span - s, 0) // 2, n * s) if padding == "same" else (0, (n - 1) * s + max(span, s)))
    return tuple(crops)


@pytest.mark.torch
@pytest.mark.parametrize("shape, filters, kernel, stride, padding, dilation", STRING_CASES)
def test_string_paddings_crop_torch_full_output_as_keras_says(shape, filters, kernel, stride, padding, dilation):
    layer = _built(filters, kernel, stride, padding, 0, dilation, shape, seed=7)
    crop = _keras_crop(shape[:2], kernel, stride, padding, dilation)
    assert layer.output_shape == (crop[0][1], crop[1][1], filters)
    x = np.random.default_rng(8).standard_normal((2, *shape), dtype=np.float32)
    ours, dy = _ours(layer, x, 9)
    params = layer.parameters()
    _assert_close(ours, _torch_transposed(x, params["weight"].value, params["bias"].value, dy, crop=crop,
                                          stride=stride, dilation=dilation))


def _keras():
    """Keras 3 on the torch backend (no TensorFlow needed), or a skip that says what to install."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="Keras 3 checks Keras's rules: pip install keras==3.15.1")
    if keras.backend.backend() != "torch":
        pytest.skip(f"Keras runs on {keras.backend.backend()}; these checks set KERAS_BACKEND=torch")
    return keras


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # Keras's own np.array(x, copy=False)
@pytest.mark.parametrize("shape, filters, kernel, stride, padding, dilation", STRING_CASES)
def test_string_paddings_are_keras_conv2d_transpose_with_its_kernel_as_is(shape, filters, kernel, stride, padding,
                                                                         dilation):
    keras = _keras()
    layer = _built(filters, kernel, stride, padding, 0, dilation, shape, seed=10)
    theirs = keras.layers.Conv2DTranspose(filters, kernel, strides=stride, padding=padding, dilation_rate=dilation)
    x = np.random.default_rng(11).standard_normal((2, *shape), dtype=np.float32)
    theirs.build((None, *shape))
    theirs.set_weights([layer.parameters()["weight"].value, layer.parameters()["bias"].value])   # (Kh, Kw, N, C)
    want = keras.ops.convert_to_numpy(theirs(x))
    np.testing.assert_allclose(layer.forward(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("size, kernel, stride", [((5, 4), 3, 2), ((4, 6), 4, 2), ((3, 3), 2, 3), ((4, 5), 3, 1)])
def test_same_is_the_exact_transpose_of_conv2d_same_on_the_upsampled_size(size, kernel, stride):
    rng = np.random.default_rng(12)
    up = _built(3, kernel, stride, "same", 0, 1, (*size, 2), use_bias=False)
    h2, w2 = size[0] * stride, size[1] * stride
    assert up.output_shape == (h2, w2, 3)
    down = Conv2d(2, kernel, stride, "same", use_bias=False)
    down.build((h2, w2, 3), rng)
    down.parameters()["weight"].value = up.parameters()["weight"].value   # (K, K, 3, 2): one array, both roles
    x, z = rng.standard_normal((2, *size, 2)), rng.standard_normal((2, h2, w2, 3))
    assert np.isclose(np.sum(up.forward(x) * z), np.sum(x * down.forward(z)), rtol=1e-5)


def test_arithmetic_counts_the_transposed_convolution():
    layer = _built(8, 3, 2, 1, 1, 1, (7, 5, 4))
    assert layer.output_shape == (conv_transpose_output_size(7, 3, 2, 1, 1, 1), 10, 8) == (14, 10, 8)
    assert layer.param_count() == 3 * 3 * 4 * 8 + 8 == sum(p.size for p in layer.parameters().values())
    assert layer.macs() == 7 * 5 * 4 * 3 * 3 * 8   # every tap of every input pixel
    assert layer.windows() is None and layer.unread() == (0, 0)
    crops_all = _built(2, 1, 3, 1, 0, 1, (4, 4, 1))   # K=1, S=3, P=1: rows 0 and 3 land in the crop
    assert crops_all.output_shape == (8, 8, 2) and crops_all.unread() == (2, 2)


FIELD_CASES = [  # kernel, stride, padding, output_padding, dilation; every output row reached
    (3, 2, 1, 1, 1), (4, 2, 1, 0, 1), (3, 1, 1, 0, 1), (5, 3, 2, 2, 1), (3, 1, 2, 0, 2), (2, 2, 0, 0, 1),
    (3, 2, 0, 0, 3),
]


@pytest.mark.parametrize("kernel, stride, padding, output_padding, dilation",
                         FIELD_CASES + [(2, 3, 0, 2, 1), (3, 4, 1, 0, 1), (1, 2, 0, 1, 1), (3, 4, 1, 3, 3),
                                        (3, 2, 0, 0, 2)])   # rows no input reaches: S and D share a factor
def test_receptive_field_is_the_measured_one(kernel, stride, padding, output_padding, dilation):
    layer = Conv2dTranspose(1, (kernel, 1), (stride, 1), (padding, 0), (output_padding, 0), (dilation, 1))
    rows = measured_rows(layer, 9)
    field, _ = layer.receptive_field((ReceptiveField(), ReceptiveField()))
    assert field.size == measured_size(rows)
    assert field.jump == Fraction(1, stride)
    if (kernel, stride, padding, output_padding, dilation) in FIELD_CASES:   # the field's centre, on average
        first = len(rows) // 2 // stride * stride   # a period of S rows away from the edges
        middle = range(first, first + stride)
        assert mean_centre(rows, middle) == pytest.approx(field.start + float(field.jump) * np.mean(middle))


def test_a_decoder_summary_shows_fields_finer_than_a_pixel_and_its_json_loads():
    model = cnnkit.Sequential([Conv2d(4, 3, stride=2, padding=1, name="down"), ReLU(),
                               Conv2dTranspose(4, 4, stride=2, padding=1, name="up"),
                               Conv2dTranspose(2, 3, stride=2, padding=1, output_padding=1, name="finer")],
                              input_shape=(8, 8, 2), seed=0)
    rows = {row["name"]: row for row in json.loads(model.summary(format="json", print_fn=None))["layers"]}
    assert rows["down"]["jump"] == [2, 2] and rows["up"]["jump"] == [1, 1] and rows["finer"]["jump"] == [0.5, 0.5]
    assert rows["up"]["output_shape"] == [8, 8, 4] and rows["finer"]["output_shape"] == [16, 16, 2]
    assert rows["up"]["receptive_field"] == [3 + 1 * 2, 3 + 1 * 2]    # floor((4-1)/2) = 1 input unit more
    assert rows["finer"]["receptive_field"] == [5 + 1, 5 + 1]


def _decoder():
    return cnnkit.Sequential([Conv2d(4, 3, stride=2, padding="same", name="down"), ReLU(),
                              Conv2dTranspose(3, 3, stride=2, padding=1, output_padding=1, name="up")],
                             input_shape=(6, 6, 2), seed=1)


def test_config_rebuilds_the_layer_and_model_files_load(tmp_path):
    model = _decoder()
    config = model.get_config()["layers"][2]["config"]
    assert config == {"filters": 3, "kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1, "dilation": 1,
                      "use_bias": True, "init": "auto", "groups": 1, "name": "up", "trainable": True}
    model.save(tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    x = np.random.default_rng(13).standard_normal((2, 6, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    assert loaded.layers[2].parameters()["weight"].shape == (3, 3, 3, 4)
    pairs = Conv2dTranspose(2, (3, 1), (2, 1), [1, 0], [1, 0], name="t")
    assert repr(pairs) == "Conv2dTranspose(filters=2, kernel_size=[3, 1], stride=[2, 1], padding=[1, 0], " \
                          "output_padding=[1, 0], name='t')"


@pytest.mark.parametrize("change, count", [({"filters": 300_000}, 3 * 3 * 300_000 * 4 + 300_000),
                                           ({"kernel_size": 90}, 90 * 90 * 3 * 4 + 3)])
def test_a_transposed_convolution_bigger_than_its_tensors_is_refused_before_building(tmp_path, change, count):
    model = _decoder()
    config = model.get_config()
    config["layers"][2]["config"].update(change)
    path = tmp_path / "forged.safetensors"
    write_safetensors(path, model.state_dict(), {"format": "cnnkit-model", "version": "1",
                                                 "architecture": json.dumps(config)})
    with pytest.raises(WeightsError, match=rf"gives layer up \(Conv2dTranspose\) {count:,} parameters, but the "
                                           rf"file holds {3 * 3 * 3 * 4 + 3:,} numbers for it"):
        load(path)


def test_a_frozen_weight_and_a_first_layer_skip_their_gradients_and_float64_stays():
    layer = _built(2, 3, 2, 1, 1, 1, (3, 3, 2))
    x = np.random.default_rng(14).standard_normal((2, 3, 3, 2))
    y, context = layer.call(x, training=True)
    assert y.dtype == np.float64 and context.x is x
    layer.parameters()["weight"].trainable = False
    assert layer.call_backward(np.ones_like(y), context, need_input_grad=False) is None
    assert layer.parameters()["weight"].grad is None and layer.parameters()["bias"].grad.shape == (2,)


@pytest.mark.parametrize("make, shape, message", [
    (lambda: Conv2dTranspose(4, 3, groups=2, name="up1"), (6, 6, 4),
     "up1: Conv2dTranspose computes groups=1 only; received groups=2; use groups=1 (grouped transposed "
     "convolutions are not implemented)"),
    (lambda: Conv2dTranspose(0, 3, name="up1"), (6, 6, 4),
     "up1: filters must be at least 1 (the number of output channels N); received filters=0"),
    (lambda: Conv2dTranspose(4, 3, stride=2, output_padding=2, name="up1"), (6, 6, 4),
     "up1: output_padding must be smaller than the stride or the dilation along H (max(S, D) = 2); received "
     "output_padding=2; it picks one of the 2 output sizes a convolution maps back to the same input size"),
    (lambda: Conv2dTranspose(4, 3, stride=2, output_padding=-1, name="up1"), (6, 6, 4),
     "up1: output_padding must be >= 0; received output_padding=-1"),
    (lambda: Conv2dTranspose(4, 3, stride=2, padding="same", output_padding=1, name="up1"), (6, 6, 4),
     "up1: output_padding applies to numeric padding only; padding='same' fixes the output size (Keras's rule: "
     "'same' gives H*S, 'valid' (H-1)*S + max(D*(K-1)+1, S)); received output_padding=1; use padding=P with "
     "output_padding, or output_padding=0"),
    (lambda: Conv2dTranspose(4, 3, padding="full", name="up1"), (6, 6, 4),
     "up1: padding must be an int, a pair of ints or one of ('valid', 'same'); received padding='full'"),
    (lambda: Conv2dTranspose(4, 3, padding=-1, name="up1"), (6, 6, 4),
     "up1: padding must be >= 0; received padding=-1"),
    (lambda: Conv2dTranspose(4, 3, padding=(1, 3), name="up1"), (6, 2, 4),
     "up1: padding=3 leaves no output along W: (H-1)*S - 2P + D*(K-1) + output_padding + 1 = "
     "(2-1)*1 - 2*3 + 1*(3-1) + 0 + 1 = -2; lower padding"),
    (lambda: Conv2dTranspose(4, 1, stride=4, padding=2, output_padding=3, name="up1"), (1, 6, 4),
     "up1: padding=2 leaves no output along H: (H-1)*S - 2P + D*(K-1) + output_padding + 1 = "
     "(1-1)*4 - 2*2 + 1*(1-1) + 3 + 1 = 0; lower padding"),
    (lambda: Conv2dTranspose(4, 1, stride=4, padding=1, output_padding=3, name="up1"), (1, 6, 4),
     "up1: padding=1 crops every row the taps write along H ((H-1)*S + D*(K-1) + 1 = (1-1)*4 + 1*(1-1) + 1 = 1): "
     "the output would be the bias alone; lower padding"),
    (lambda: Conv2dTranspose(4, (3, 3, 3), name="up1"), (6, 6, 4),
     "up1: kernel_size must be an int or a pair of ints; received kernel_size=(3, 3, 3)"),
    (lambda: Conv2dTranspose(4, 3, stride=0, name="up1"), (6, 6, 4),
     "up1: stride must be at least 1 (the window must move by at least one pixel); received stride=0"),
])
def test_impossible_configurations_name_the_layer_the_numbers_and_the_fix(make, shape, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        make().build(shape)


def test_an_encoder_decoder_graph_with_a_skip_connection_passes_gradcheck():
    """U-Net's shape: down by a strided convolution, up by a transposed one and by bilinear
    upsampling, the skip concatenated; the executor runs both layers forward and backward."""
    inputs = cnnkit.Input((6, 6, 2), name="image")
    down = ReLU(name="act")(Conv2d(3, 3, stride=2, padding=1, name="down")(inputs))
    up = Conv2dTranspose(2, 3, stride=2, padding=1, output_padding=1, name="up")(down)
    resized = UpSampling2d(2, "bilinear", name="resize")(down)
    merged = Concatenate(name="cat")([inputs, up, resized])
    model = cnnkit.Model(inputs, Conv2d(2, 1, name="head")(merged), seed=2)
    assert model.tensor_shape(model.tensor("up")) == (6, 6, 2)
    result = cnnkit.gradcheck(model, np.random.default_rng(15).standard_normal((2, 6, 6, 2)), max_entries=60)
    assert result.max_error < 1e-6, result.errors
    assert {"input", "up.weight", "up.bias", "down.weight"} <= set(result.errors)
