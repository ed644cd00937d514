"""`Conv2dTranspose`: the transposed ("fractionally strided") convolution that upsamples a volume,
each input pixel spreading a K x K x N stamp of its own, S pixels from its neighbours'."""

from __future__ import annotations

import numpy as np

from ..arithmetic import (CallMemory, as_pair, conv_macs, conv_params, transposed_field, transposed_unread_rows,
                          transposed_windows)
from ..errors import ConfigError
from ..init import initial_weight
from ..ops.transposed import conv_transpose2d, conv_transpose2d_backward, full_hw
from ..parameter import Parameter
from .base import Layer
from .conv import _check_count


class Conv2dTranspose(Layer):
    """Transposed 2-D convolution over a channels-last volume (PyTorch's ``ConvTranspose2d``,
    Keras's ``Conv2DTranspose``): the input gradient of a convolution, used as a layer to upsample
    (decoders, segmentation heads, generators).

    Args:
        filters: N, the output channels.
        kernel_size: K, an int or a pair (K_h, K_w).
        stride: S, an int or a pair: the output is about S times larger.
        padding: P, an int or a pair, cropped from both ends of each axis (PyTorch's meaning), or
            Keras's ``"valid"`` (nothing cropped: ``out = (H-1)*S + max(D*(K-1)+1, S)``) or
            ``"same"`` (``out = H*S``, cropping ``D*(K-1)+1-S`` rows with the odd one after: the
            exact transpose of ``Conv2d(padding="same")`` on an ``H*S`` input, TensorFlow's rule,
            which Keras 3 keeps on the torch backend too; no PyTorch padding crops unevenly).
        output_padding: an int or a pair, rows added at the end of each axis, smaller than
            ``max(S, D)``: it picks which of the S input sizes that a stride-S convolution maps to
            H this layer maps H back to (PyTorch's; numeric padding only).
        dilation: D, spacing between kernel taps.
        use_bias: learn one bias per output channel.
        init: ``"auto"`` (He when a ReLU follows, Glorot otherwise), ``"he"`` or ``"glorot"``; the
            fans are those Keras and PyTorch use, the transposed convolution's own
            (``fan_in = K*K*N``, ``fan_out = K*K*C``).
        groups: 1 only (grouped transposed convolutions are not implemented; any other value is refused).

    Input ``(B, H, W, C)``, output ``(B, H2, W2, N)`` with
    ``H2 = (H-1)*S - 2P + D*(K-1) + output_padding + 1`` (:func:`cnnkit.arithmetic.conv_transpose_output_size`).
    Parameters: ``weight`` of shape (K_h, K_w, N, C), Keras's ``Conv2DTranspose`` kernel as it is,
    PyTorch's ``(C, N, K_h, K_w)`` as ``weight.transpose(2, 3, 1, 0)`` (the reverse:
    ``transpose(3, 2, 0, 1)``); it is also the weight ``(K_h, K_w, C_in, C_out)`` of the convolution
    from N channels to C that this layer transposes. ``bias`` (N,). ``K*K*C*N + N`` numbers;
    ``H*W*C * K*K*N`` multiply-adds (every tap of every input pixel, the convolution's own count).

    Forward spreads each pixel's taps with one matrix product and one strided add per tap
    (:mod:`cnnkit.ops.transposed`); backward is that convolution (``dx``, by any algorithm of
    :mod:`cnnkit.ops.conv`) and its weight gradient. Receptive field: output units are S times
    denser than input units (``jump / S``), each seeing ``floor((K-1)*g/S) * D/g`` neighbouring input
    units besides one, ``g = gcd(S, D)`` (:func:`cnnkit.arithmetic.transposed_field`).
    """

    fresh_output = True
    fresh_input_grad = True
    skips_input_grad = True

    def __init__(self, filters: int, kernel_size, stride=1, padding=0, output_padding=0, dilation=1,
                 use_bias: bool = True, init: str = "auto", groups: int = 1, name: str | None = None):
        super().__init__(name)
        self.filters = filters
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.output_padding = output_padding
        self.dilation = dilation
        self.use_bias = use_bias
        self.init = init
        self.groups = groups
        self._filter_key = None
        self._filter_cache: dict = {}

    def _build(self, input_shape, rng):
        h, w, c = self._require_volume(input_shape)
        _check_count(self.filters, "filters", self.label, "the number of output channels N")
        if self.groups != 1:
            raise ConfigError(f"{self.label}: Conv2dTranspose computes groups=1 only; received groups={self.groups!r}; "
                              f"use groups=1 (grouped transposed convolutions are not implemented)")
        self._windows, out = transposed_windows((h, w), self.kernel_size, self.stride, self.padding,
                                                self.output_padding, self.dilation, self.label)
        kh, kw = self.kernel
        scheme = self.init_scheme if self.init == "auto" else self.init
        weight = initial_weight(scheme, (kh, kw, self.filters, c), kh * kw * self.filters, kh * kw * c, rng,
                                self.label)
        self._params = {"weight": Parameter(weight)}
        if self.use_bias:
            self._params["bias"] = Parameter(np.zeros(self.filters, np.float32))
        return (*out, self.filters)

    @property
    def kernel(self) -> tuple[int, int]:
        return as_pair(self.kernel_size, "kernel_size", self.label)

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """``(B, H, W, C) -> (B, H2, W2, N)``; the context keeps the input (for the weight gradient)."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        bias = self._params["bias"].value if self.use_bias else None
        y, context = conv_transpose2d(x, self._params["weight"].value, bias, self._windows, self.output_shape[:2],
                                      self._filters(x.dtype))
        return y, (context if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """Add ``dweight`` (and ``dbias``) into trainable parameters; return ``dx`` (None when not needed)."""
        self.check_grad(dy, (context.x.shape[0], *self.output_shape))
        weight = self._params["weight"]
        dx, dweight, dbias = conv_transpose2d_backward(dy, context, need_input_grad, weight.trainable)
        if weight.trainable:
            weight.accumulate(dweight, fresh=True)
        if self.use_bias and self._params["bias"].trainable:
            self._params["bias"].accumulate(dbias, fresh=True)
        return dx

    def _filters(self, dtype) -> dict:
        """The cache of transformed filters for the backward's convolution (as :class:`Conv2d`
        keeps one): a new one whenever the weight or the dtype changed."""
        weight = self._params["weight"]
        key = (weight.version, id(weight.value), dtype)
        if self._filter_key != key:
            self._filter_key, self._filter_cache = key, {}
        return self._filter_cache

    # ------------------------------------------------------------------ arithmetic hooks
    def param_count(self) -> int:
        return conv_params(self.filters, self.kernel, self.input_shape[2], self.use_bias)

    def macs(self) -> int:
        return conv_macs(self.input_shape, self.kernel, self.filters)

    def receptive_field(self, field):
        return tuple(transposed_field(axis_field, window) for axis_field, window in zip(field, self._windows))

    def unread(self):
        return tuple(transposed_unread_rows(size, window, out)
                     for size, window, out in zip(self.input_shape[:2], self._windows, self.output_shape[:2]))

    def workspace_per_sample(self) -> int:
        # the full output the taps write, when padding is cropped from it or zeros close it
        full = full_hw(self._windows, self.input_shape[:2])
        return 0 if full == tuple(self.output_shape[:2]) and not self._windows.padded \
            else full[0] * full[1] * self.filters

    def cached_per_sample(self) -> int:
        return int(np.prod(self.input_shape))

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(workspace=self.workspace_per_sample(), keeps_input=True)
