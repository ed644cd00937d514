"""Elu, HardSigmoid, HardSwish, Clip, and Softmax / LogSoftmax on any axis: float64 gradient checks,
PyTorch as the oracle for values and input gradients, in-place rules, configs, files and summaries."""

import json

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

import cnnkit
from cnnkit.errors import ConfigError, WeightsError
from cnnkit.io import write_safetensors
from cnnkit.layers import (Clip, Conv2d, Dense, Elu, Flatten, HardSigmoid, HardSwish, LAYER_CLASSES, LogSoftmax, ReLU6,
                           Softmax)
from cnnkit.train import scoring_tensors

# each elementwise layer with the inputs where its derivative jumps (finite differences avoid them)
ELEMENTWISE = {
    "elu": (lambda: Elu(), [0.0]),
    "elu_half": (lambda: Elu(0.5), [0.0]),
    "elu_zero": (lambda: Elu(0.0), [0.0]),
    "hard_sigmoid_onnx": (lambda: HardSigmoid(), [-2.5, 2.5]),
    "hard_sigmoid_torch": (lambda: HardSigmoid(1 / 6, 0.5), [-3.0, 3.0]),
    "hard_sigmoid_falling": (lambda: HardSigmoid(-0.4, 0.3), [0.75, -1.75]),
    "hard_swish": (lambda: HardSwish(), [-3.0, 3.0]),
    "clip_both": (lambda: Clip(-1.5, 2.0), [-1.5, 2.0]),
    "clip_min": (lambda: Clip(min_value=0.5), [0.5]),
    "clip_max": (lambda: Clip(max_value=-0.5), [-0.5]),
    "clip_none": (lambda: Clip(), []),
}
SHAPES = [(5, 3, 2), (2, 7, 4), (9,)]


def _built(layer, shape):
    layer.build(shape, np.random.default_rng(0))
    return layer


def away_from(kinks, shape, seed=0, scale=5.0):
    """float64 values in [-scale, scale], none within 0.1 of a kink: finite differences never straddle one."""
    x = np.random.default_rng(seed).uniform(-scale, scale, shape)
    for kink in kinks:
        near = np.abs(x - kink) < 0.1
        x[near] = kink + np.where(x[near] < kink, -0.2, 0.2)
    return x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", list(ELEMENTWISE))
def test_elementwise_gradcheck(kind, shape):
    make, kinks = ELEMENTWISE[kind]
    x = away_from(kinks, (3, *shape))
    for kink in kinks:   # both sides of every kink are checked
        assert (x < kink).any() and (x > kink).any()
    result = cnnkit.gradcheck(_built(make(), shape), x)
    assert result.max_error < 1e-6, result.errors


AXES_2D = [-1, 1]
AXES_4D = [-1, -2, -3, 1, 2, 3]


@pytest.mark.parametrize("make", [Softmax, LogSoftmax])
@pytest.mark.parametrize("shape,axis", [((6,), a) for a in AXES_2D] + [((3, 4, 5), a) for a in AXES_4D])
def test_softmax_gradcheck_on_every_axis(make, shape, axis):
    layer = _built(make(axis=axis), shape)
    x = np.random.default_rng(1).standard_normal((2, *shape)) * 2
    result = cnnkit.gradcheck(layer, x)
    assert result.max_error < 1e-6, result.errors


@pytest.mark.parametrize("shape,axis", [((3, 4, 5), a) for a in AXES_4D] + [((6,), -1)])
def test_softmax_normalises_along_its_axis_only(shape, axis):
    x = np.random.default_rng(2).standard_normal((2, *shape))
    y = _built(Softmax(axis=axis), shape).forward(x)
    log_y = _built(LogSoftmax(axis=axis), shape).forward(x)
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(log_y), y, rtol=1e-12)
    # a naive reference: exp over the sum along the axis, written out once more
    np.testing.assert_allclose(y, np.exp(x) / np.exp(x).sum(axis=axis, keepdims=True), rtol=1e-12)


def _torch_pair(function, x, dy):
    """PyTorch's output and input gradient of ``function`` at ``x`` for the output gradient ``dy``."""
    xt = torch.tensor(x, requires_grad=True)
    yt = function(xt)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy()


def _ours(layer, x, dy):
    y = layer.forward(x, training=True)
    return y, layer.backward(dy)


TORCH_ORACLES = {
    "elu": (lambda: Elu(), lambda t: F.elu(t)),
    "elu_alpha": (lambda: Elu(0.3), lambda t: F.elu(t, alpha=0.3)),
    "hard_sigmoid_torch": (lambda: HardSigmoid(1 / 6, 0.5), lambda t: F.hardsigmoid(t)),
    # ONNX's defaults by their formula, y = max(0, min(1, alpha * x + beta))
    "hard_sigmoid_onnx": (lambda: HardSigmoid(), lambda t: torch.clamp(0.2 * t + 0.5, 0, 1)),
    "hard_swish": (lambda: HardSwish(), lambda t: F.hardswish(t)),
    "clip_both": (lambda: Clip(-1.0, 2.5), lambda t: torch.clamp(t, -1.0, 2.5)),
    "clip_min": (lambda: Clip(min_value=0.5), lambda t: torch.clamp(t, min=0.5)),
    "clip_max": (lambda: Clip(max_value=1.0), lambda t: torch.clamp(t, max=1.0)),
    "clip_relu6": (lambda: Clip(0, 6), lambda t: F.relu6(t)),
}


@pytest.mark.torch
@pytest.mark.parametrize("dtype,tolerance", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("kind", list(TORCH_ORACLES))
def test_elementwise_matches_torch(kind, dtype, tolerance):
    make, function = TORCH_ORACLES[kind]
    rng = np.random.default_rng(3)
    x = (4 * rng.standard_normal((2, 5, 4, 3))).astype(dtype)   # reaches past every corner (-3, 3, 6)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, dx = _ours(_built(make(), (5, 4, 3)), x, dy)
    y_ref, dx_ref = _torch_pair(function, x, dy)
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(y, y_ref, rtol=tolerance, atol=tolerance)
    if kind == "hard_sigmoid_torch":   # PyTorch's backward multiplies by 1/6 rounded to float32, even in float64
        tolerance = max(tolerance, 1e-7)
    np.testing.assert_allclose(dx, dx_ref, rtol=tolerance, atol=tolerance)


def _torch_dim(axis, ndim):
    """The NCHW dimension of the NHWC axis ``axis`` (channels 3 -> 1, H 1 -> 2, W 2 -> 3)."""
    axis %= ndim
    return {1: 2, 2: 3, 3: 1}[axis] if ndim == 4 else axis


@pytest.mark.torch
@pytest.mark.parametrize("ours,theirs", [(Softmax, "softmax"), (LogSoftmax, "log_softmax")])
@pytest.mark.parametrize("shape,axis", [((7,), -1), ((7,), 1)] + [((4, 5, 3), a) for a in AXES_4D])
def test_softmax_matches_torch_with_the_axis_mapped_to_channels_first(ours, theirs, shape, axis):
    rng = np.random.default_rng(4)
    x = (3 * rng.standard_normal((2, *shape))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, dx = _ours(_built(ours(axis=axis), shape), x, dy)
    to_first = (0, 3, 1, 2) if x.ndim == 4 else (0, 1)
    to_last = (0, 2, 3, 1) if x.ndim == 4 else (0, 1)
    dim = _torch_dim(axis, x.ndim)
    y_ref, dx_ref = _torch_pair(lambda t: getattr(F, theirs)(t, dim=dim),
                                x.transpose(to_first).copy(), dy.transpose(to_first).copy())
    np.testing.assert_allclose(y, y_ref.transpose(to_last), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, dx_ref.transpose(to_last), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [Elu, HardSigmoid, lambda: Clip(-1, 1), lambda: Clip(0, 6)],
                         ids=["elu", "hard_sigmoid", "clip", "clip_relu6"])
def test_caller_arrays_are_never_modified_unless_handed_over(make):
    x = np.linspace(-8, 8, 2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    dy = np.linspace(-1, 1, x.size, dtype=np.float32).reshape(x.shape)
    original_x, original_dy = x.copy(), dy.copy()
    layer = _built(make(), (3, 4, 5))
    expected_y, expected_dx = _ours(layer, x, dy)
    np.testing.assert_array_equal(x, original_x)
    np.testing.assert_array_equal(dy, original_dy)

    owned_x, owned_dy = x.copy(), dy.copy()
    y, context = layer.call(owned_x, training=True, owned=True)
    dx = layer.call_backward(owned_dy, context, owned=True)
    assert y is owned_x and layer.call_memory(owned=True).output_is_input
    assert (dx is owned_dy) == layer.call_memory(owned=True).grad_in_place
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(dx, expected_dx)


@pytest.mark.parametrize("make", [HardSwish, Softmax, LogSoftmax, lambda: Softmax(axis=1)])
def test_layers_that_keep_a_new_output_leave_their_input_alone(make):
    x = np.linspace(-5, 5, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    original = x.copy()
    layer = _built(make(), (3, 4))
    y, context = layer.call(x, training=True, owned=True)
    layer.call_backward(np.ones_like(y), context, owned=True)
    assert y is not x
    np.testing.assert_array_equal(x, original)


def test_clip_fuses_into_the_convolution_before_it_as_relu6_and_relu(monkeypatch):
    assert Clip(0, 6).fused_as == "relu6" and Clip(0.0).fused_as == "relu"
    assert Clip(0, 5).fused_as is None and Clip(-1, 6).fused_as is None and Clip().fused_as is None
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 6, 3))
    for clip, reference in ((Clip(0, 6), ReLU6()), (Clip(min_value=0), cnnkit.layers.ReLU())):
        fused = cnnkit.Sequential([Conv2d(4, 3, padding=1), clip, Flatten(), Dense(3)], input_shape=(6, 6, 3), seed=1)
        single = cnnkit.Sequential([Conv2d(4, 3, padding=1), reference, Flatten(), Dense(3)], input_shape=(6, 6, 3),
                                   seed=1)
        single.load_state_dict(fused.state_dict())
        calls = []
        original = Clip._apply
        monkeypatch.setattr(Clip, "_apply", lambda self, x, out: calls.append(self.name) or original(self, x, out))
        y = fused.forward(x * 4, training=True)
        assert calls == []   # the convolution applied it as it wrote its output
        np.testing.assert_array_equal(y, single.forward(x * 4, training=True))
        dy = rng.standard_normal(y.shape)
        np.testing.assert_allclose(fused.backward(dy), single.backward(dy), rtol=1e-12, atol=1e-12)
        assert cnnkit.gradcheck(fused, x).passed(1e-6)


def test_only_a_final_softmax_over_the_last_axis_is_trained_through_the_fused_loss():
    def ending_in(layer, shape):
        return cnnkit.Sequential([Conv2d(4, 1), layer], input_shape=shape, seed=0)

    for layer, shape, fused in ((Softmax(), (1, 1, 3), True), (Softmax(axis=3), (1, 1, 3), True),
                                (Softmax(axis=1), (2, 2, 3), False), (Softmax(axis=-2), (2, 2, 3), False),
                                (LogSoftmax(), (1, 1, 3), False)):
        model = ending_in(layer, shape)
        [tensor] = scoring_tensors(model)
        assert (tensor != model.plan.outputs[0]) == fused, layer
    assert Softmax(axis=-1).over_last_axis and not Softmax(axis=2).over_last_axis   # before build: by the sign


def test_softmax_over_a_spatial_axis_sees_that_whole_axis():
    model = cnnkit.Sequential([Conv2d(2, 3, padding=1), Softmax(axis=1)], input_shape=(8, 6, 1), seed=0)
    row = model.summary(format="dict")["layers"][1]
    # each output sees the 3 columns of its convolution, and the 8 rows plus the padding they read
    assert row["receptive_field"] == [3 + (8 - 1), 3] and not row["whole_input"]
    channels = cnnkit.Sequential([Conv2d(2, 3, padding=1), Softmax()], input_shape=(8, 6, 1), seed=0)
    assert channels.summary(format="dict")["layers"][1]["receptive_field"] == [3, 3]


ALL = [Elu(0.5, name="elu"), HardSigmoid(0.25, -0.1, name="hsig"), HardSwish(name="hswish"),
       Clip(-1.0, None, name="clip"), Softmax(axis=2, name="soft"), LogSoftmax(axis=-3, name="logsoft")]


@pytest.mark.parametrize("layer", ALL, ids=lambda layer: type(layer).__name__)
def test_config_round_trip(layer):
    config = layer.get_config()
    again = LAYER_CLASSES[type(layer).__name__].from_config(config)
    assert again.get_config() == config and type(again) is type(layer)
    assert repr(again) == repr(layer)


def test_repr_shows_what_differs_from_the_defaults():
    assert repr(HardSigmoid()) == "HardSigmoid()"
    assert repr(Clip(max_value=6)) == "Clip(max_value=6.0)"
    assert repr(Softmax(axis=1, name="p")) == "Softmax(axis=1, name='p')"
    assert Softmax().get_config() == {"axis": -1, "name": None, "trainable": True}


def _model_with_all():
    image = cnnkit.Input((5, 4, 3))
    x = Conv2d(6, 3, padding=1, name="conv")(image)
    for layer in [Elu(0.5, name="elu"), HardSigmoid(0.25, -0.1, name="hsig"), HardSwish(name="hswish"),
                  Clip(-1.0, None, name="clip"), Softmax(axis=2, name="soft"), LogSoftmax(axis=-3, name="logsoft")]:
        x = layer(x)
    x = Dense(4, name="fc")(Flatten(name="flat")(x))
    return cnnkit.Model(image, Softmax(name="prob")(x), name="all_activations", seed=3)


def test_model_with_these_layers_saves_and_loads(tmp_path):
    model = _model_with_all()
    model.save(tmp_path / "m.safetensors")
    loaded = cnnkit.load(tmp_path / "m.safetensors")
    for name in ("elu", "hsig", "hswish", "clip", "soft", "logsoft"):
        assert loaded[name].get_config() == model[name].get_config()
    x = np.random.default_rng(6).standard_normal((2, 5, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_model_with_these_layers_passes_the_gradient_check():
    model = _model_with_all()
    x = np.random.default_rng(7).standard_normal((2, 5, 4, 3))
    assert cnnkit.gradcheck(model, x).passed(1e-6)


def test_summary_lists_each_layer_without_parameters():
    summary = _model_with_all().summary(format="dict")
    rows = {row["name"]: row for row in summary["layers"]}
    for name, kind in (("elu", "Elu"), ("hsig", "HardSigmoid"), ("hswish", "HardSwish"), ("clip", "Clip"),
                       ("soft", "Softmax"), ("logsoft", "LogSoftmax")):
        assert rows[name]["type"] == kind and rows[name]["params"] == 0
        assert rows[name]["output_shape"] == [5, 4, 6] and rows[name]["activations"] == 120
    assert summary["totals"]["params"] == 6 * 27 + 6 + 120 * 4 + 4
    text = _model_with_all().summary(print_fn=None)
    assert "HardSwish" in text and "LogSoftmax" in text


def test_errors_name_the_layer_the_value_and_the_fix():
    with pytest.raises(ConfigError) as info:
        _built(Softmax(axis=0, name="p"), (3, 4, 5))
    assert str(info.value) == ("p: axis=0 is the batch axis; a sample's output may not depend on the other samples "
                               "of its batch; give an axis in 1..3 or -3..-1")
    with pytest.raises(ConfigError, match=r"the batch axis"):
        _built(LogSoftmax(axis=-2), (6,))
    with pytest.raises(ConfigError) as info:
        _built(LogSoftmax(axis=4, name="ls"), (3, 4, 5))
    assert str(info.value) == ("ls: axis=4 is not an axis of a batch of shape (B, 3, 4, 5) (4 axes); give an axis "
                               "in 1..3 or -3..-1")
    with pytest.raises(ConfigError, match=r"Softmax: axis must be an int .*received axis=1.5"):
        Softmax(axis=1.5)
    with pytest.raises(ConfigError, match=r"e1: alpha .* must be a finite number >= 0; received alpha=-1"):
        Elu(-1, name="e1")
    with pytest.raises(ConfigError, match=r"HardSigmoid: beta .* must be a finite number; received beta=nan"):
        HardSigmoid(beta=float("nan"))
    with pytest.raises(ConfigError) as info:
        Clip(2, 1, name="c")
    assert str(info.value) == "c: min_value must not exceed max_value; received min_value=2, max_value=1; swap them"
    with pytest.raises(ConfigError, match=r"Clip: max_value .* received max_value='6'"):
        Clip(0, "6")


@pytest.mark.parametrize("entry,match", [
    ({"class": "Softmax", "config": {"axis": 0, "name": "p"}}, r"p: axis=0 is the batch axis"),
    ({"class": "LogSoftmax", "config": {"axis": "1"}}, r"LogSoftmax: axis must be an int"),
    ({"class": "Elu", "config": {"alpha": -2.0}}, r"Elu: alpha .* received alpha=-2.0"),
    ({"class": "Clip", "config": {"min_value": 3, "max_value": 1}}, r"Clip: min_value must not exceed max_value"),
    ({"class": "HardSigmoid", "config": {"alpha": None}}, r"HardSigmoid: alpha .* received alpha=None"),
])
def test_a_file_with_bad_arguments_is_refused_naming_the_file_and_the_layer(tmp_path, entry, match):
    model = cnnkit.Sequential([Flatten(), Dense(3, name="fc")], input_shape=(2, 2, 1))
    config = model.get_config()
    config["layers"].append(entry)
    path = tmp_path / "forged.safetensors"
    write_safetensors(path, model.state_dict(), {"format": "cnnkit-model", "version": "1",
                                                 "architecture": json.dumps(config)})
    with pytest.raises(WeightsError, match=match) as info:
        cnnkit.load(path)
    assert str(info.value).startswith(f"{path}: ")
