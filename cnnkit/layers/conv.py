"""`Conv2d`: N shared filters of size K x K x C (or C/groups) slid over the input volume, and
`DepthwiseConv2d`: M filters of size K x K slid over each channel of its own."""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np

from ..arithmetic import (CallMemory, as_pair, check_positive, conv_macs, conv_params, depthwise_params,
                          unread_rows, window_output_size, windows_2d)
from ..errors import ConfigError, ShapeError
from ..init import initial_weight
from ..ops.conv import ACTIVATIONS, ALGORITHM_NAMES, conv2d, conv2d_backward, copies_padded_input, unmet_needs
from ..ops.norm import folded_weights
from ..parameter import Parameter
from .base import Layer


class _Convolution(Layer):
    """What :class:`Conv2d` and :class:`DepthwiseConv2d` share: the windows, the call through
    :func:`cnnkit.ops.conv2d` (grouped, its weight in the grouped layout :meth:`_grouped_weight`),
    the fused activation, and the memory hooks."""

    fresh_output = True
    fresh_input_grad = True
    skips_input_grad = True

    def _init_convolution(self, kernel_size, stride, padding, dilation, use_bias, init, activation, algorithm):
        self.activation = activation
        # a fused activation keeps its output for the backward mask: the next layer must not overwrite it
        self.fresh_output = activation is None
        self.algorithm = algorithm
        self._filter_key = None
        self._filter_cache: dict = {}
        self._fold_key = None
        self._fold: tuple | None = None   # (weight, bias, filter cache) with an affine layer folded in
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.use_bias = use_bias
        self.init = init

    def _build_windows(self, h: int, w: int, groups: int, group_channels: int) -> tuple[int, int]:
        """Make the windows and check the algorithm and activation; return the output (H2, W2)."""
        self._windows = windows_2d((h, w), self.kernel_size, self.stride, self.padding, self.dilation, self.label)
        out = tuple(window_output_size(size, win, self.label, axis, self.strict)
                    for size, win, axis in zip((h, w), self._windows, "HW"))
        self._check_algorithm(groups, group_channels)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"{self.label}: activation must be one of {ACTIVATIONS}; received "
                              f"activation={self.activation!r}; put other activations in a layer of their own")
        return out

    def _scheme(self) -> str:
        """The initialiser: He when a ReLU (or ReLU6) is fused or follows, else Glorot, unless ``init`` names one."""
        if self.init != "auto":
            return self.init
        return "he" if self.activation is not None else self.init_scheme

    def _check_algorithm(self, groups: int, group_channels: int) -> None:
        if self.algorithm not in ALGORITHM_NAMES:
            raise ConfigError(f"{self.label}: algorithm must be one of {ALGORITHM_NAMES}; "
                              f"received algorithm={self.algorithm!r}")
        needs = unmet_needs(self.algorithm, self._windows, groups, group_channels)
        if needs:
            grouping = f", groups={groups}" if groups > 1 else ""
            raise ConfigError(f"{self.label}: algorithm={self.algorithm!r} needs {needs}; received "
                              f"kernel_size={self.kernel_size!r}, stride={self.stride!r}, "
                              f"dilation={self.dilation!r}{grouping}; use algorithm='auto' or 'gemm'")

    @property
    def kernel(self) -> tuple[int, int]:
        return as_pair(self.kernel_size, "kernel_size", self.label)

    def windows(self):
        return self._windows

    def unread(self):
        return tuple(unread_rows(size, win) for size, win in zip(self.input_shape[:2], self._windows))

    def workspace_per_sample(self) -> int:
        # the NumPy rows copy the input into a zero-padded plane when there is padding; the
        # compiled rows and the depthwise kernel read the border as zeros, in small per-block buffers
        kh, kw = self.kernel
        weight_shape = (kh, kw, self.input_shape[2] // self._groups(), self.output_shape[2])
        if not copies_padded_input((1, *self.input_shape), weight_shape, self._windows, self.algorithm):
            return 0
        h, w, c = self.input_shape
        return (h + sum(self._windows[0].pads)) * (w + sum(self._windows[1].pads)) * c

    def cached_per_sample(self) -> int:
        fused_output = int(np.prod(self.output_shape)) if self.activation else 0   # the activation's mask
        return int(np.prod(self.input_shape)) + fused_output

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        # the context is the input, and the output of its own activation (the mask of the gradient)
        return CallMemory(workspace=self.workspace_per_sample(), keeps_input=True,
                          keeps_output=self.activation is not None)

    @property
    def fusable_activations(self) -> tuple[str, ...]:
        """A convolution without an activation of its own can apply the ReLU or ReLU6 layer after it."""
        return ("relu", "relu6") if self.activation is None else ()

    @property
    def folds_affine(self) -> bool:
        """A convolution without an activation of its own can fold the batch norm after it (inference)."""
        return self.activation is None

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None,
             fold: Layer | None = None):
        """``(B, H, W, C) -> (B, H2, W2, N)``; the context keeps the input (and an activation's output, its mask).

        ``fold``: a layer that is a per-channel affine map in inference (:class:`BatchNorm2d`);
        the call then returns what that layer gives for this convolution's output (then
        ``activation``), computed as one convolution with the map folded into the weights
        (:func:`cnnkit.ops.norm.folded_weights`): equal to float32 rounding, not bit for bit.
        Inference only: the gradient of the pair is not the folded convolution's.
        """
        self._refuse_activation(activation)
        x = self.check_input(x)
        if fold is not None:
            return self._call_folded(x, training, activation, fold), None
        bias = self._params["bias"].value if self.use_bias else None
        y, context = conv2d(x, self._grouped_weight(), bias, self._windows, self.activation or activation,
                            self.algorithm, self._filters(x.dtype), self._groups())
        return y, (context if training else None)

    def _call_folded(self, x: np.ndarray, training: bool, activation: str | None, affine: Layer) -> np.ndarray:
        if training or not self.folds_affine or not affine.affine_in_inference:
            raise ConfigError(f"{self.label}: cannot fold {affine.label} into this convolution (training={training}, "
                              f"activation={self.activation!r}); a convolution without an activation of its own "
                              f"folds a batch norm in inference only, where the pair's gradient is not needed")
        weight, bias, filters = self._folded(affine, x.dtype)
        y, _ = conv2d(x, weight, bias, self._windows, activation, self.algorithm, filters, self._groups())
        return y

    def _folded(self, affine: Layer, dtype) -> tuple:
        """``(weight, bias, filter cache)`` with ``affine`` folded in, in ``dtype``: kept until this
        layer's or ``affine``'s parameters or buffers change (their :meth:`~Layer.state_version`),
        or another layer is folded (a convolution shared by two nodes keeps one fold at a time)."""
        key = (id(affine), affine.state_version(), self.state_version(), np.dtype(dtype))
        if self._fold_key != key:
            scale, shift = affine.inference_affine()
            if scale.shape != (self.output_shape[-1],):
                raise ShapeError(f"{self.label}: cannot fold {affine.label}, a map of {scale.shape[0]} channels, "
                                 f"into a convolution of {self.output_shape[-1]} output channels")
            bias = self._params["bias"].value if self.use_bias else None
            weight, bias = folded_weights(self._grouped_weight(), bias, scale, shift, dtype)
            self._fold_key, self._fold = key, (weight, bias, {})
        return self._fold

    def _filters(self, dtype) -> dict:
        """The cache of the weight's transformed filters (and the weight packed with the bias) that
        :func:`cnnkit.ops.conv2d` fills: a new one whenever the weight or the bias changed (their
        versions, or their arrays) or the dtype computed in did."""
        key = (self.state_version(), dtype)
        if self._filter_key != key:
            self._filter_key, self._filter_cache = key, {}
        return self._filter_cache

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """Add ``dweight`` (and ``dbias``) into trainable parameters; return ``dx`` (None when not needed)."""
        self.check_grad(dy, (context.x.shape[0], *self.output_shape))
        weight = self._params["weight"]
        dx, dweight, dbias = conv2d_backward(dy, context, need_input_grad, need_weight_grad=weight.trainable)
        if weight.trainable:
            weight.accumulate(dweight.reshape(weight.shape), fresh=True)
        if self.use_bias and self._params["bias"].trainable:
            self._params["bias"].accumulate(dbias, fresh=True)
        return dx

    @abstractmethod
    def _groups(self) -> int:
        """The groups :func:`cnnkit.ops.conv2d` computes in (each kind of convolution says)."""

    def _grouped_weight(self) -> np.ndarray:
        """The weight in the layout :func:`cnnkit.ops.conv2d` takes, ``(Kh, Kw, C/groups, N)``."""
        return self._params["weight"].value


class Conv2d(_Convolution):
    """2-D convolution over a channels-last volume.

    Args:
        filters: number of filters N (output channels).
        kernel_size: K, an int or a pair (K_h, K_w).
        stride: S, an int or a pair.
        padding: P, an int, a pair, or ``"valid"``, ``"same"`` (``out = ceil(H/S)``), ``"full"`` (``P = K-1``).
        dilation: D, spacing between kernel taps.
        use_bias: learn one bias per filter.
        init: ``"auto"`` (He when a ReLU follows, Glorot otherwise), ``"he"`` or ``"glorot"``.
        activation: ``None``, ``"relu"`` or ``"relu6"``: the activation fused into the
            convolution (Keras's ``activation=``), the same numbers as a separate :class:`ReLU`
            (:class:`ReLU6`) layer after it with less memory traffic: the convolution applies
            the ReLU as it writes each output tile or block (ReLU6 then caps it at 6), and masks
            the gradient as it reads it. The executor fuses a separate ``ReLU`` or ``ReLU6``
            layer after an ``activation=None`` convolution the same way when the convolution's
            output has no other reader (:mod:`cnnkit.executor`).
        algorithm: ``"auto"`` picks by shape, per call: Winograd F(4x4, 3x3) for 3x3 stride-1
            convolutions with enough channels and tiles, otherwise one matrix product over the
            windowed view (``"gemm"``); ``"winograd2"``/``"winograd4"`` force F(2x2)/F(4x4)
            (the table of :mod:`cnnkit.ops.conv`). Winograd-transformed filters are cached and
            recomputed when the weight's ``Parameter.version`` changes. Grouped convolutions run
            as one batched product over the groups (``"gemm"``), or with ``groups == C`` as the
            depthwise kernel (``"depthwise"``, :class:`DepthwiseConv2d`'s).
        groups: G, cutting the C input channels and the N filters into G groups, filter group k
            seeing input group k only (ResNeXt; ``groups == C``: a depthwise convolution with
            ``N / C`` filters per channel, filter ``c*N/C + m`` reading channel c). G must divide
            C and N.

    Input ``(B, H, W, C)``, output ``(B, H2, W2, N)`` with
    ``H2 = floor((H + 2P - D*(K-1) - 1)/S) + 1``, the lecture's ``(H - K + 2P)/S + 1`` for D = 1.
    Parameters: ``weight`` of shape (K_h, K_w, C/G, N) and ``bias`` (N,): ``N*K*K*C/G + N``
    numbers. The weight layout is Keras's; PyTorch's ``(N, C/G, K_h, K_w)`` transposed
    (``weight.transpose(2, 3, 1, 0)``).
    """

    def __init__(self, filters: int, kernel_size=3, stride=1, padding=0, dilation=1,
                 use_bias: bool = True, init: str = "auto", activation: str | None = None, algorithm: str = "auto",
                 groups: int = 1, name: str | None = None):
        super().__init__(name)
        self._init_convolution(kernel_size, stride, padding, dilation, use_bias, init, activation, algorithm)
        self.filters = filters
        self.groups = groups

    def _build(self, input_shape, rng):
        h, w, c = self._require_volume(input_shape)
        _check_count(self.filters, "filters", self.label, "the number of filters N")
        _check_count(self.groups, "groups", self.label, "the number of channel groups G")
        _check_groups(c, self.filters, self.groups, self.label)
        out = self._build_windows(h, w, self.groups, c // self.groups)
        kh, kw = self.kernel
        per_group = c // self.groups
        weight = initial_weight(self._scheme(), (kh, kw, per_group, self.filters), kh * kw * per_group,
                                kh * kw * self.filters, rng, self.label)
        self._params = {"weight": Parameter(weight)}
        if self.use_bias:
            self._params["bias"] = Parameter(np.zeros(self.filters, np.float32))
        return (*out, self.filters)

    def _groups(self) -> int:
        return self.groups

    def param_count(self) -> int:
        return conv_params(self.filters, self.kernel, self.input_shape[2] // self.groups, self.use_bias)

    def macs(self) -> int:
        return conv_macs(self.output_shape, self.kernel, self.input_shape[2] // self.groups)


class DepthwiseConv2d(_Convolution):
    """Depthwise convolution: each input channel convolved with ``depth_multiplier`` filters of its
    own (Keras's ``DepthwiseConv2D``; MobileNet's 3x3 stage between two 1x1 convolutions).

    Args:
        kernel_size, stride, padding, dilation, use_bias, init, activation: as :class:`Conv2d`.
        depth_multiplier: M, the filters per input channel: C input channels give C*M outputs,
            output channel ``c*M + m`` from channel c's filter m (Keras's order, and PyTorch's
            ``Conv2d(C, C*M, groups=C)``).
        algorithm: ``"auto"`` or ``"depthwise"`` (the per-tap kernel of :mod:`cnnkit.ops.depthwise`:
            Kh*Kw vectorised multiply-adds over all channels at once), or ``"gemm"`` (the grouped
            product, C products of one channel each: slower, a reference).

    Input ``(B, H, W, C)``, output ``(B, H2, W2, C*M)``, H2 as :class:`Conv2d`. Parameters:
    ``weight`` of shape (K_h, K_w, C, M), as Keras stores a depthwise kernel (PyTorch's
    ``(C*M, 1, K_h, K_w)`` is ``weight.reshape(K_h, K_w, 1, C*M).transpose(3, 2, 0, 1)``), and
    ``bias`` (C*M,): ``K*K*C*M + C*M`` numbers; ``H2*W2*C*M * K*K`` multiply-adds. It computes
    what ``Conv2d(C*M, groups=C)`` does, whose weight is this one reshaped to (K_h, K_w, 1, C*M).
    """

    def __init__(self, kernel_size=3, stride=1, padding=0, dilation=1, depth_multiplier: int = 1,
                 use_bias: bool = True, init: str = "auto", activation: str | None = None, algorithm: str = "auto",
                 name: str | None = None):
        super().__init__(name)
        self._init_convolution(kernel_size, stride, padding, dilation, use_bias, init, activation, algorithm)
        self.depth_multiplier = depth_multiplier

    def _build(self, input_shape, rng):
        h, w, c = self._require_volume(input_shape)
        _check_count(self.depth_multiplier, "depth_multiplier", self.label, "the filters per input channel M")
        out = self._build_windows(h, w, c, 1)
        kh, kw = self.kernel
        m = self.depth_multiplier
        # each output sees K*K inputs; each input feeds K*K*M outputs
        weight = initial_weight(self._scheme(), (kh, kw, c, m), kh * kw, kh * kw * m, rng, self.label)
        self._params = {"weight": Parameter(weight)}
        if self.use_bias:
            self._params["bias"] = Parameter(np.zeros(c * m, np.float32))
        return (*out, c * m)

    def _groups(self) -> int:
        return self.input_shape[2]

    def _grouped_weight(self) -> np.ndarray:
        kh, kw, c, m = self._params["weight"].shape
        return self._params["weight"].value.reshape(kh, kw, 1, c * m)

    def param_count(self) -> int:
        return depthwise_params(self.kernel, self.input_shape[2], self.depth_multiplier, self.use_bias)

    def macs(self) -> int:
        return conv_macs(self.output_shape, self.kernel, 1)


def _check_count(value, argument: str, label: str, meaning: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int of at least 1."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{label}: {argument} must be an int; received {argument}={value!r}")
    check_positive(value, argument, label, meaning)


def _check_groups(channels: int, filters: int, groups: int, label: str) -> None:
    """Raise :class:`ConfigError` unless ``groups`` divides both the input channels and the filters."""
    for count, what in ((channels, "input channels C"), (filters, "filters N")):
        if count % groups:
            raise ConfigError(f"{label}: groups={groups} does not divide the {count} {what} ({count} % {groups} = "
                              f"{count % groups}); groups must divide both C={channels} and N={filters}: a "
                              f"divisor of {math.gcd(channels, filters)}")
