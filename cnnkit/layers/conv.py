"""`Conv2d`: N shared filters of size K x K x C slid over the input volume."""

from __future__ import annotations

import numpy as np

from ..arithmetic import (CallMemory, as_pair, check_positive, conv_macs, conv_params, unread_rows, window_output_size,
                          windows_2d)
from ..errors import ConfigError
from ..init import initial_weight
from ..ops import jit
from ..ops.conv import ACTIVATIONS, ALGORITHM_NAMES, conv2d, conv2d_backward, unmet_needs
from ..parameter import Parameter
from .base import Layer


class Conv2d(Layer):
    """2-D convolution over a channels-last volume.

    Args:
        filters: number of filters N (output channels).
        kernel_size: K, an int or a pair (K_h, K_w).
        stride: S, an int or a pair.
        padding: P, an int, a pair, or ``"valid"``, ``"same"`` (``out = ceil(H/S)``), ``"full"`` (``P = K-1``).
        dilation: D, spacing between kernel taps.
        use_bias: learn one bias per filter.
        init: ``"auto"`` (He when a ReLU follows, Glorot otherwise), ``"he"`` or ``"glorot"``.
        activation: ``None`` or ``"relu"``: a ReLU fused into the convolution (Keras's
            ``activation=``), the same numbers as a separate :class:`ReLU` layer after it with
            less memory traffic: the convolution applies it as it writes each output tile or
            block, and masks the gradient as it reads it. The executor fuses a separate
            ``ReLU`` layer after an ``activation=None`` convolution the same way when the
            convolution's output has no other reader (:mod:`cnnkit.executor`).
        algorithm: ``"auto"`` picks by shape, per call: Winograd F(4x4, 3x3) for 3x3 stride-1
            convolutions with enough channels and tiles, otherwise one matrix product over the
            windowed view (``"gemm"``); ``"winograd2"``/``"winograd4"`` force F(2x2)/F(4x4)
            (the table of :mod:`cnnkit.ops.conv`). Winograd-transformed filters are cached and
            recomputed when the weight's ``Parameter.version`` changes.

    Input ``(B, H, W, C)``, output ``(B, H2, W2, N)`` with
    ``H2 = floor((H + 2P - D*(K-1) - 1)/S) + 1``, the lecture's ``(H - K + 2P)/S + 1`` for D = 1.
    Parameters: ``weight`` of shape (K_h, K_w, C, N) and ``bias`` (N,): ``N*K*K*C + N`` numbers.
    """

    fresh_output = True
    fresh_input_grad = True
    skips_input_grad = True

    def __init__(self, filters: int, kernel_size=3, stride=1, padding=0, dilation=1,
                 use_bias: bool = True, init: str = "auto", activation: str | None = None, algorithm: str = "auto",
                 name: str | None = None):
        super().__init__(name)
        self.activation = activation
        # a fused ReLU keeps its output for the backward mask: the next layer must not overwrite it
        self.fresh_output = activation is None
        self.algorithm = algorithm
        self._filter_key = None
        self._filter_cache: dict = {}
        self.filters = filters
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.use_bias = use_bias
        self.init = init

    def _build(self, input_shape, rng):
        h, w, c = self._require_volume(input_shape)
        if not isinstance(self.filters, int) or isinstance(self.filters, bool):
            raise ConfigError(f"{self.label}: filters must be an int; received filters={self.filters!r}")
        check_positive(self.filters, "filters", self.label, "the number of filters N")
        self._windows = windows_2d((h, w), self.kernel_size, self.stride, self.padding,
                                   self.dilation, self.label)
        out = tuple(window_output_size(size, win, self.label, axis, self.strict)
                    for size, win, axis in zip((h, w), self._windows, "HW"))
        kh, kw = self.kernel
        self._check_algorithm()
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"{self.label}: activation must be one of {ACTIVATIONS}; received "
                              f"activation={self.activation!r}; put other activations in a layer of their own")
        scheme = "he" if self.activation == "relu" else self.init_scheme
        scheme = scheme if self.init == "auto" else self.init
        weight = initial_weight(scheme, (kh, kw, c, self.filters), kh * kw * c, kh * kw * self.filters,
                                rng, self.label)
        self._params = {"weight": Parameter(weight)}
        if self.use_bias:
            self._params["bias"] = Parameter(np.zeros(self.filters, np.float32))
        return (*out, self.filters)

    def _check_algorithm(self) -> None:
        if self.algorithm not in ALGORITHM_NAMES:
            raise ConfigError(f"{self.label}: algorithm must be one of {ALGORITHM_NAMES}; "
                              f"received algorithm={self.algorithm!r}")
        needs = unmet_needs(self.algorithm, self._windows)
        if needs:
            raise ConfigError(f"{self.label}: algorithm={self.algorithm!r} needs {needs}; received "
                              f"kernel_size={self.kernel_size!r}, stride={self.stride!r}, "
                              f"dilation={self.dilation!r}; use algorithm='auto' or 'gemm'")

    @property
    def kernel(self) -> tuple[int, int]:
        return as_pair(self.kernel_size, "kernel_size", self.label)

    def windows(self):
        return self._windows

    def unread(self):
        return tuple(unread_rows(size, win) for size, win in zip(self.input_shape[:2], self._windows))

    def param_count(self) -> int:
        return conv_params(self.filters, self.kernel, self.input_shape[2], self.use_bias)

    def macs(self) -> int:
        return conv_macs(self.output_shape, self.kernel, self.input_shape[2])

    def workspace_per_sample(self) -> int:
        # the NumPy paths copy the input into a zero-padded plane when there is padding; the
        # compiled ones read the border as zeros and work in small per-block buffers
        if jit.enabled() or not any(win.pad_before or win.pad_after for win in self._windows):
            return 0
        h, w, c = self.input_shape
        return (h + sum(self._windows[0].pads)) * (w + sum(self._windows[1].pads)) * c

    def cached_per_sample(self) -> int:
        fused_output = int(np.prod(self.output_shape)) if self.activation else 0   # the ReLU's mask
        return int(np.prod(self.input_shape)) + fused_output

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        # the context is the input, and the output of its own ReLU (the mask of the gradient)
        return CallMemory(workspace=self.workspace_per_sample(), keeps_input=True,
                          keeps_output=self.activation == "relu")

    @property
    def fusable_activations(self) -> tuple[str, ...]:
        """A convolution without an activation of its own can apply the ReLU layer after it."""
        return ("relu",) if self.activation is None else ()

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """``(B, H, W, C) -> (B, H2, W2, N)``; the context keeps the input (and a ReLU's output, its mask)."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        bias = self._params["bias"].value if self.use_bias else None
        y, context = conv2d(x, self._params["weight"].value, bias, self._windows, self.activation or activation,
                            self.algorithm, self._filters(x.dtype))
        return y, (context if training else None)

    def _filters(self, dtype) -> dict:
        """The cache of the weight's transformed filters that :func:`cnnkit.ops.conv2d` fills: a new
        one whenever the weight changed (its version, or its array) or the dtype computed in did."""
        weight = self._params["weight"]
        key = (weight.version, id(weight.value), dtype)
        if self._filter_key != key:
            self._filter_key, self._filter_cache = key, {}
        return self._filter_cache

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """Add ``dweight`` (and ``dbias``) into trainable parameters; return ``dx`` (None when not needed)."""
        self.check_grad(dy, (context.x.shape[0], *self.output_shape))
        weight = self._params["weight"]
        dx, dweight, dbias = conv2d_backward(dy, context, need_input_grad, need_weight_grad=weight.trainable)
        if weight.trainable:
            weight.accumulate(dweight, fresh=True)
        if self.use_bias and self._params["bias"].trainable:
            self._params["bias"].accumulate(dbias, fresh=True)
        return dx
