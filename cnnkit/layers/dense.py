"""Fully connected, flatten and dropout layers."""

from __future__ import annotations

import numpy as np

from ..arithmetic import CallMemory, check_positive, dense_macs, dense_params
from ..errors import ConfigError, ShapeError
from ..init import initial_weight
from ..ops.linear import linear, linear_backward
from ..parameter import Parameter
from .base import Layer, check_choice


def channels_first_dense_to_last(weight: np.ndarray, volume_shape: tuple[int, int, int]) -> np.ndarray:
    """Reorder the input rows of a dense weight ``(in, out)`` trained after a channels-first flatten.

    PyTorch and Caffe flatten a ``(C, H, W)`` volume so that input ``c*H*W + h*W + w`` is
    pixel ``(h, w)`` of channel ``c``; cnnkit flattens ``(H, W, C)`` so that the same pixel is
    input ``h*W*C + w*C + c``. The returned weight, shape ``(H*W*C, out)``, gives after
    cnnkit's :class:`Flatten` exactly what ``weight`` gave after the channels-first flatten.
    A PyTorch ``nn.Linear`` weight is ``(out, in)``: pass its transpose.

    Args:
        weight: ``(C*H*W, out)`` in channels-first input order.
        volume_shape: the volume being flattened, channels last: ``(H, W, C)``.
    """
    weight = np.asarray(weight)
    try:
        h, w, c = (int(v) for v in volume_shape)
    except (TypeError, ValueError):
        raise ShapeError(f"channels_first_dense_to_last: volume_shape must be (H, W, C); "
                         f"received volume_shape={volume_shape!r}") from None
    if weight.ndim != 2 or weight.shape[0] != h * w * c:
        raise ShapeError(f"channels_first_dense_to_last: weight must be (H*W*C, out) = ({h * w * c}, out) for "
                         f"volume_shape={(h, w, c)}; received {weight.shape} (a torch Linear weight is "
                         f"(out, in): pass weight.T)")
    units = weight.shape[1]
    return np.ascontiguousarray(weight.reshape(c, h, w, units).transpose(1, 2, 0, 3).reshape(h * w * c, units))


DATA_FORMATS = ("channels_last", "channels_first")


class Flatten(Layer):
    """``(B, H, W, C) -> (B, H*W*C)``: each sample as one vector.

    Args:
        data_format: the order of the vector. ``"channels_last"`` (default): cnnkit's own, index
            ``h*W*C + w*C + c``, a view of the input (no copy). ``"channels_first"``: the order a
            channels-first framework flattens in (PyTorch, Caffe, ONNX: index ``c*H*W + h*W + w``),
            a copy, so that a dense layer trained there keeps its weight as it is (an imported
            ONNX model). Keras names the argument; in Keras it says how the *input* is laid out
            (its ``"channels_first"`` reads ``(C, H, W)`` and flattens it in ``H, W, C`` order),
            whereas cnnkit's volumes are always channels-last, so here it names the output order.
            Any per-sample rank: ``"channels_first"`` moves the last axis to the front first.

    With ``"channels_last"`` a dense weight trained after a channels-first flatten maps onto this
    layer by permuting its input rows: ``W_cl = W_cf.reshape(C, H, W, out).transpose(1, 2, 0, 3)
    .reshape(H*W*C, out)``; see :func:`cnnkit.layers.channels_first_dense_to_last`.
    """

    in_place = True

    def __init__(self, data_format: str = "channels_last", name: str | None = None):
        super().__init__(name)
        self.data_format = data_format

    def _build(self, input_shape, rng):
        check_choice(self.data_format, "data_format", DATA_FORMATS, self.label)
        # channels first permutes: its output and gradient are new arrays
        reorders = self.data_format == "channels_first" and len(input_shape) > 1
        self.in_place = not reorders
        self.fresh_output = self.fresh_input_grad = reorders
        return (int(np.prod(input_shape)),)

    def receptive_field(self, field):
        # whatever follows a flattened volume mixes all of it: each unit sees the whole input
        h, w, _ = self.input_shape if len(self.input_shape) == 3 else (1, 1, 1)
        return field[0].covering(h), field[1].covering(w)

    def _to_channels_first(self, rank: int) -> tuple[int, ...]:
        """The axes of a batch of per-sample rank ``rank`` with the last moved before the others."""
        return (0, rank, *range(1, rank))

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """Channels last: a view of ``x`` when it is contiguous (the usual case), else a copy;
        channels first: a new array. The context is the batch size."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        if not self.in_place:
            x = np.ascontiguousarray(x.transpose(self._to_channels_first(x.ndim - 1)))
        return x.reshape(x.shape[0], -1), (x.shape[0] if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """The gradient in the input's shape: a view of ``dy`` (channels last) or a new array."""
        self.check_grad(dy, (context, *self.output_shape))
        if self.in_place:
            return dy.reshape(dy.shape[0], *self.input_shape)
        *spatial, channels = self.input_shape
        rank = len(self.input_shape)
        back = np.argsort(self._to_channels_first(rank))
        return np.ascontiguousarray(dy.reshape(dy.shape[0], channels, *spatial).transpose(back))

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(output_is_input=self.in_place, grad_is_view=self.in_place)


class Dense(Layer):
    """Fully connected: ``y = x @ weight + bias`` with ``weight`` (in, units) and ``bias`` (units,).

    Learnable parameters: ``in*units + units``.
    """

    fresh_output = True
    fresh_input_grad = True

    def __init__(self, units: int, use_bias: bool = True, init: str = "auto", name: str | None = None):
        super().__init__(name)
        self.units = units
        self.use_bias = use_bias
        self.init = init

    def _build(self, input_shape, rng):
        if len(input_shape) != 1:
            raise ShapeError(f"{self.label}: expects a flat vector per sample; received input shape "
                             f"{input_shape}; put Flatten() or a global pooling layer before it")
        if not isinstance(self.units, int) or isinstance(self.units, bool):
            raise ConfigError(f"{self.label}: units must be an int; received units={self.units!r}")
        check_positive(self.units, "units", self.label, "the number of output neurons")
        fan_in = input_shape[0]
        scheme = self.init_scheme if self.init == "auto" else self.init
        self._params = {"weight": Parameter(initial_weight(scheme, (fan_in, self.units), fan_in, self.units,
                                                           rng, self.label))}
        if self.use_bias:
            self._params["bias"] = Parameter(np.zeros(self.units, np.float32))
        return (self.units,)

    def param_count(self) -> int:
        return dense_params(self.input_shape[0], self.units, self.use_bias)

    def macs(self) -> int:
        return dense_macs(self.input_shape[0], self.units)

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        self._refuse_activation(activation)
        x = self.check_input(x)
        bias = self._params.get("bias")
        y = linear(x, self._params["weight"].value, None if bias is None else bias.value)
        return y, (x if training else None)  # the weight's gradient needs the input

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        x = context
        self.check_grad(dy, (x.shape[0], self.units))
        weight, bias = self._params["weight"], self._params.get("bias")
        dx, dweight, dbias = linear_backward(dy, x, weight.value, need_weight_grad=weight.trainable,
                                             need_bias_grad=bias is not None and bias.trainable)
        if dweight is not None:
            weight.accumulate(dweight, fresh=True)
        if dbias is not None:
            bias.accumulate(dbias, fresh=True)
        return dx

    def cached_per_sample(self) -> int:
        return self.input_shape[0]

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(keeps_input=True)


class Dropout(Layer):
    """Inverted dropout: in training, zero each activation with probability ``rate`` and scale the
    rest by ``1 / (1 - rate)``; in inference, the identity. Masks come from a seeded generator."""

    in_place = True

    def __init__(self, rate: float = 0.5, seed: int | None = None, name: str | None = None):
        super().__init__(name)
        if not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ConfigError(f"{name or 'Dropout'}: rate must be in [0, 1); received rate={rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """Inference returns ``x`` itself (no copy); training returns a new, masked and scaled array."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        if not training:
            return x, None
        uniform = self._rng.random(x.shape, dtype=np.float64 if x.dtype == np.float64 else np.float32)
        keep = uniform >= self.rate
        # the uniform draws are not needed any more: their buffer becomes the output
        y = np.multiply(x, keep, out=uniform) if uniform.dtype == x.dtype else np.multiply(x, keep)
        y *= 1.0 / (1.0 - self.rate)
        return y, keep  # a boolean mask, one byte per activation

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        keep = context
        self.check_grad(dy, keep.shape)
        dx = np.multiply(dy, keep, dtype=dy.dtype)
        dx *= 1.0 / (1.0 - self.rate)
        return dx

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        # inference returns the input; training a new array, and keeps a one-byte mask
        return CallMemory(output_is_input=not training, keeps_bytes=self.activations() if training else 0)
