"""2-D convolution: the one entry, :func:`conv2d` and :func:`conv2d_backward`, and the one table
of algorithms behind it.

Every convolution goes through here, and the way it is computed is decided here only, once per
call: :func:`choose_algorithm` takes the first row of :data:`ALGORITHMS` that computes the call
(the requested name, or for ``"auto"`` the first row whose measured thresholds it meets).

============  =========  ====================================  ======================================
name          compiled   supports                              chosen by ``"auto"``
============  =========  ====================================  ======================================
depthwise     no         any window, one input channel per     whenever it computes and groups > 1
                         group (groups == C; N = C*M)
winograd4     yes / no   3x3, stride 1, dilation 1, any pad;   C, N >= WINOGRAD_MIN_CHANNELS and the
                         groups 1                              batch has FORWARD_F4_MIN_TILES (backward
                                                               BACKWARD_F4_MIN_TILES) 4x4 output tiles
gemm          either     1x1, stride 1, unpadded (one          always (the fallback)
                         product over the pixels); groups 1
gemm          yes / no   any window; groups 1                  always (the fallback)
gemm          no         any window, any groups (a batched     always (the fallback for groups > 1)
                         product over the groups)
winograd2     no         3x3, stride 1, dilation 1, any pad;   never: only when requested
                         groups 1
============  =========  ====================================  ======================================

Grouped convolutions (``groups=g``) take a weight ``(Kh, Kw, C/g, N)``: filter ``n`` belongs to
group ``n // (N/g)`` and reads input channels ``k*C/g ... (k+1)*C/g - 1`` of its group ``k``
(PyTorch's ``(N, C/g, Kh, Kw)`` transposed, and Keras's own layout). A row says whether it
computes them (``grouped``) and whether it computes only one input channel per group
(``depthwise``); the rows derive ``g`` from the shapes, ``C / weight.shape[2]``.

"Compiled" rows run Numba kernels (:mod:`cnnkit.ops.jit`) and are used when
:func:`~cnnkit.ops.jit.enabled`; their NumPy references are the rows of the same name marked
``compiled=False``, used otherwise; ``compiled=None`` rows run either way. The thresholds live,
with the measurements behind them, in :mod:`cnnkit.ops.tuning`. The kernels behind the rows:
:mod:`~cnnkit.ops.gemm` (NumPy) and :mod:`~cnnkit.ops.gemm_fast` (compiled im2col),
:mod:`~cnnkit.ops.winograd` (NumPy, F(2x2) and F(4x4)) and :mod:`~cnnkit.ops.winograd_fast`
(compiled F(4x4)).

The forward returns a :class:`ConvContext` beside its output: what the backward needs, so one
layer can run at several places of a graph. The backward chooses again, with the backward's
thresholds. Winograd rows transform the filters, and the compiled GEMM row packs the weight
with the bias as its last row; a caller that passes ``filter_cache`` (a dict it keeps for one
weight and bias and replaces by a new one when either changes, as
:class:`~cnnkit.layers.Conv2d` does on their versions) has them kept there, by tile (or row) and
dtype, between calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from ..arithmetic import Geometry
from ..errors import ConfigError, ShapeError
from . import jit, tuning
from .activation import relu6_backward
from .depthwise import depthwise_conv2d, depthwise_conv2d_backward
from .gemm import (gemm_conv2d, gemm_conv2d_backward, grouped_conv2d, grouped_conv2d_backward, pointwise_conv2d,
                   pointwise_conv2d_backward)
from .gemm_fast import compiled_gemm_conv2d, compiled_gemm_conv2d_backward, packed_weight
from .winograd import filter_gradient, transform_filter, winograd_conv2d, winograd_conv2d_backward
from .winograd_fast import compiled_winograd_conv2d, compiled_winograd_conv2d_backward

#: What ``algorithm=`` may name.
ALGORITHM_NAMES = ("auto", "gemm", "winograd2", "winograd4", "depthwise")
#: Activations the convolution applies as it writes its output (``None``: none). Every row fuses
#: the ReLU; ReLU6 is that ReLU capped at 6 by :func:`conv2d` after the row (one more pass over
#: the output, none over the input) and its gradient masked before the row's backward.
ACTIVATIONS = (None, "relu", "relu6")


@dataclass(frozen=True)
class Algorithm:
    """One row of :data:`ALGORITHMS`: a way to compute a convolution and what it supports.

    ``forward(x, weight, bias, geometry, relu, filters) -> y`` and ``backward(dy, x, weight,
    geometry, need_input_grad, need_weight_grad, relu_output, filters) -> (dx, dweight, dbias)``,
    ``filters`` being the caller's ``filter_cache`` or None.
    """

    name: str                        # what ``algorithm=`` names
    compiled: bool | None            # True: Numba kernels; False: their NumPy reference; None: NumPy, always
    forward: Callable
    backward: Callable
    kernel: tuple[int, int] | None = None   # the one kernel size it computes (None: any)
    stride_one: bool = False         # needs stride 1 on both axes
    dilation_one: bool = False       # needs dilation 1 on both axes
    unpadded: bool = False           # needs no padding
    tile: int = 0                    # Winograd's output tile m (F(m x m, 3x3)); 0: not Winograd
    automatic: bool = False          # ``"auto"`` may choose it ...
    min_channels: str | None = None  # ... with C and N at least tuning.<min_channels>
    min_tiles: tuple[str, str] | None = None   # ... and tuning.<min_tiles[backward]> m x m output tiles
    needs: str = ""                  # what it supports, for messages
    grouped: bool = False            # computes grouped convolutions (groups > 1)
    depthwise: bool = False          # computes only one input channel per group (groups == C)
    pads_input: bool = True          # copies a padded input into a zero-padded plane (else reads zeros)

    def computes(self, geometry: Geometry, groups: int = 1, group_channels: int | None = None) -> bool:
        """True when this row computes convolutions of ``geometry`` with ``groups`` groups of
        ``group_channels`` input channels each (compiled or not)."""
        return self.computes_window(geometry) and self.computes_groups(groups, group_channels)

    def computes_window(self, geometry: Geometry) -> bool:
        """True when this row computes windows of ``geometry``."""
        return ((self.kernel is None or geometry.kernel == self.kernel)
                and (geometry.stride_one or not self.stride_one)
                and (geometry.dilation_one or not self.dilation_one)
                and not (self.unpadded and geometry.padded))

    def computes_groups(self, groups: int, group_channels: int | None) -> bool:
        """True when this row computes ``groups`` groups of ``group_channels`` input channels."""
        return (groups == 1 or self.grouped) and (not self.depthwise or group_channels == 1)

    @property
    def group_needs(self) -> str:
        """What it needs of the groups, for messages."""
        if self.depthwise:
            return "one input channel per group (groups equal to the input channels)"
        return "any groups" if self.grouped else "groups=1"

    def runs(self, geometry: Geometry, compiled: bool, groups: int = 1, group_channels: int | None = None) -> bool:
        """True when this row computes the call and runs now (``compiled``: kernels are enabled)."""
        return (self.compiled is None or self.compiled == compiled) and self.computes(geometry, groups, group_channels)

    def pays(self, x_shape: tuple[int, ...], weight_shape: tuple[int, ...], geometry: Geometry,
             backward: bool) -> bool:
        """True when ``"auto"`` takes this row for these shapes (the measured thresholds)."""
        if not self.automatic:
            return False
        if self.depthwise:   # a plain convolution of one channel goes to the faster general rows
            return x_shape[-1] > 1
        if self.min_tiles is None:
            return True
        if min(weight_shape[2:]) < getattr(tuning, self.min_channels):
            return False
        rows, columns = geometry.output_tiles(x_shape[1:3], self.tile)
        return x_shape[0] * rows * columns >= getattr(tuning, self.min_tiles[backward])


class ConvContext(NamedTuple):
    """What :func:`conv2d_backward` needs from the :func:`conv2d` it follows."""

    x: np.ndarray
    relu_output: np.ndarray | None   # the output, when a ReLU was fused (its mask)
    weight: np.ndarray
    geometry: Geometry
    algorithm: str                   # as requested: the backward chooses with its own thresholds
    filters: dict | None             # the caller's filter cache
    activation: str | None = None    # the fused activation (relu_output is its output)


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geometry: Geometry,
           activation: str | None = None, algorithm: str = "auto", filter_cache: dict | None = None,
           groups: int = 1) -> tuple[np.ndarray, ConvContext]:
    """Convolve ``x`` (B, H, W, C) with ``weight`` (Kh, Kw, C/groups, N), add ``bias`` (N,) or None,
    and apply ``activation`` (None, ``"relu"`` or ``"relu6"``) as the output is written; return
    ``(y, context)``.

    ``y`` is ``(B, Ho, Wo, N)`` in the dtype of ``x`` (weights are used in it) with
    ``Ho = floor((H + P_before + P_after - D*(Kh - 1) - 1)/S) + 1`` (likewise Wo), ``geometry``
    giving the windows (:func:`cnnkit.arithmetic.windows_2d`). ``algorithm``: ``"auto"`` or a
    name of :data:`ALGORITHM_NAMES` (see :func:`choose_algorithm`). ``filter_cache``: a dict the
    caller keeps for this weight and bias and replaces when either changes; Winograd keeps its
    transformed filters there, the compiled GEMM its weight matrix with the bias. ``groups``: input channels and filters cut into that many groups,
    each filter group reading its input group only (``groups == C``: a depthwise convolution).
    ``context`` is what :func:`conv2d_backward` needs.
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(f"conv2d: activation must be one of {ACTIVATIONS}; received activation={activation!r}")
    if weight.shape[:2] != geometry.kernel:
        raise ShapeError(f"conv2d: the weight's kernel {weight.shape[:2]} differs from the geometry's "
                         f"{geometry.kernel}; build the geometry with the weight's kernel size")
    _check_groups(x.shape, weight.shape, groups)
    row = choose_algorithm(x.shape, weight.shape, geometry, algorithm)
    y = row.forward(x, weight, bias, geometry, activation is not None, filter_cache)
    if activation == "relu6":
        np.minimum(y, 6.0, out=y)   # the row applied the ReLU
    return y, ConvContext(x, y if activation else None, weight, geometry, algorithm, filter_cache, activation)


def conv2d_backward(dy: np.ndarray, context: ConvContext, need_input_grad: bool = True,
                    need_weight_grad: bool = True) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Gradients ``(dx, dweight, dbias)`` of the :func:`conv2d` that returned ``context``, given
    ``dy`` (B, Ho, Wo, N), in the dtype of its input.

    ``dx`` is None when ``need_input_grad`` is False (a first layer), ``dweight`` is None when
    ``need_weight_grad`` is False (a frozen layer), which skips a third of the work each. With
    a fused ReLU, ``dy`` counts only where the output is positive (with ReLU6, below 6 too).
    """
    x, fused_output, weight, geometry, algorithm, filters, activation = context
    row = choose_algorithm(x.shape, weight.shape, geometry, algorithm, backward=True)
    if activation == "relu6":   # masked here whole; the row then has no mask to apply
        dy, fused_output = relu6_backward(dy, fused_output), None
    return row.backward(dy, x, weight, geometry, need_input_grad, need_weight_grad, fused_output, filters)


def choose_algorithm(x_shape: tuple[int, ...], weight_shape: tuple[int, ...], geometry: Geometry,
                     requested: str = "auto", backward: bool = False) -> Algorithm:
    """The row of :data:`ALGORITHMS` that computes this call.

    ``"auto"``: Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions with enough channels and
    enough 4x4 output tiles in the batch (the thresholds of :mod:`~cnnkit.ops.tuning`, the
    backward's higher), otherwise GEMM (one matrix product over the windowed view, or over the
    pixels for a 1x1 stride-1 unpadded kernel). A name takes its row as is; ``winograd2``
    runs only when requested. Compiled rows run when :func:`cnnkit.ops.jit.enabled`.
    """
    rows = _CANDIDATES.get(requested)
    if rows is None:
        raise ConfigError(f"conv2d: algorithm must be one of {ALGORITHM_NAMES}; received algorithm={requested!r}")
    compiled = jit.enabled()
    automatic = requested == "auto"
    group_channels = weight_shape[2]
    groups = x_shape[-1] // group_channels
    for row in rows:
        if row.runs(geometry, compiled, groups, group_channels) \
                and (not automatic or row.pays(x_shape, weight_shape, geometry, backward)):
            return row
    if not any(row.computes_window(geometry) for row in rows):
        raise ConfigError(f"conv2d: algorithm={requested!r} needs {rows[0].needs}; received kernel "
                          f"{geometry.kernel}, stride {geometry.stride}, dilation {geometry.dilation}; "
                          f"use algorithm='auto' or 'gemm'")
    raise ConfigError(f"conv2d: algorithm={requested!r} needs {rows[0].group_needs}; received groups={groups} of "
                      f"{group_channels} input channels each; use algorithm='auto' or 'gemm'")


def copies_padded_input(x_shape: tuple[int, ...], weight_shape: tuple[int, ...], geometry: Geometry,
                        algorithm: str = "auto") -> bool:
    """True when the row that computes this call copies its input into a zero-padded plane (the
    NumPy rows, on a padded window); the compiled rows and the depthwise kernel read the border
    as zeros. For a layer's workspace estimate."""
    return geometry.padded and choose_algorithm(x_shape, weight_shape, geometry, algorithm).pads_input


def unmet_needs(algorithm: str, geometry: Geometry, groups: int = 1, group_channels: int | None = None) -> str | None:
    """None when ``algorithm`` (a name of :data:`ALGORITHM_NAMES`) computes ``geometry`` with
    ``groups`` groups of ``group_channels`` input channels, else what it needs (for a layer's
    message at build time)."""
    rows = _CANDIDATES[algorithm]
    if any(row.computes(geometry, groups, group_channels) for row in rows):
        return None
    return rows[0].needs if not any(row.computes_window(geometry) for row in rows) else rows[0].group_needs


def _check_groups(x_shape: tuple[int, ...], weight_shape: tuple[int, ...], groups: int) -> None:
    """Raise :class:`ShapeError` unless the weight is ``(Kh, Kw, C/groups, N)`` with ``groups`` dividing N."""
    c, (group_channels, n) = x_shape[-1], weight_shape[2:]
    if group_channels * groups != c or n % groups:
        raise ShapeError(f"conv2d: a weight of shape {tuple(weight_shape)} does not convolve {c} input channels in "
                         f"groups={groups}; it must be (Kh, Kw, C/groups, N) = (Kh, Kw, {c / groups:g}, N) with N "
                         f"a multiple of {groups}")


# ----------------------------------------------------------------- the rows' calls

def _without_filters(forward, backward) -> tuple[Callable, Callable]:
    """A row's ``(forward, backward)`` from kernels that keep no transformed filters."""
    return (lambda x, weight, bias, geometry, relu, filters: forward(x, weight, bias, geometry, relu),
            lambda dy, x, weight, geometry, need_input_grad, need_weight_grad, relu_output, filters:
            backward(dy, x, weight, geometry, need_input_grad, need_weight_grad, relu_output))


def _transformed(weight: np.ndarray, dtype, tile: int, filters: dict | None) -> np.ndarray:
    """Winograd's ``U = G g G^T`` of ``weight`` in ``dtype``, from ``filters`` when it holds them
    (it keeps them when given)."""
    if filters is None:
        return transform_filter(weight.astype(dtype, copy=False), tile)
    key = (tile, dtype)
    u = filters.get(key)
    if u is None:
        u = filters[key] = transform_filter(weight.astype(dtype, copy=False), tile)
    return u


def _winograd(tile: int) -> tuple[Callable, Callable]:
    """``(forward, backward)`` of the NumPy Winograd F(tile x tile, 3x3)."""
    def forward(x, weight, bias, geometry, relu, filters):
        return winograd_conv2d(x, weight, bias, geometry, tile, _transformed(weight, x.dtype, tile, filters), relu)

    def backward(dy, x, weight, geometry, need_input_grad, need_weight_grad, relu_output, filters):
        return winograd_conv2d_backward(dy, x, weight, geometry, tile, need_input_grad, need_weight_grad,
                                        _transformed(weight, x.dtype, tile, filters), relu_output)
    return forward, backward


def _compiled_winograd4_forward(x, weight, bias, geometry, relu, filters):
    return compiled_winograd_conv2d(x, _transformed(weight, x.dtype, 4, filters), bias, geometry, relu)


def _compiled_winograd4_backward(dy, x, weight, geometry, need_input_grad, need_weight_grad, relu_output, filters):
    dx, du, dbias = compiled_winograd_conv2d_backward(dy, x, _transformed(weight, x.dtype, 4, filters), geometry,
                                                      need_input_grad, need_weight_grad, relu_output)
    return dx, filter_gradient(du, 4, weight), dbias


def _compiled_gemm_forward(x, weight, bias, geometry, relu, filters):
    # with a bias the packed matrix is a copy of the weight: kept in ``filters`` rather than made per call
    packed = None
    if filters is not None:
        key = ("gemm", x.dtype, bias is not None)
        packed = filters.get(key)
        if packed is None:
            packed = filters[key] = packed_weight(weight, bias, x.dtype)
    return compiled_gemm_conv2d(x, weight, bias, geometry, relu, packed)


def _compiled_gemm_backward(dy, x, weight, geometry, need_input_grad, need_weight_grad, relu_output, filters):
    return compiled_gemm_conv2d_backward(dy, x, weight, geometry, need_input_grad, need_weight_grad, relu_output)


def _depthwise_forward(x, weight, bias, geometry, relu, filters):
    return depthwise_conv2d(x, _per_channel(weight, x.shape[-1]), bias, geometry, relu)


def _depthwise_backward(dy, x, weight, geometry, need_input_grad, need_weight_grad, relu_output, filters):
    dx, dweight, dbias = depthwise_conv2d_backward(dy, x, _per_channel(weight, x.shape[-1]), geometry,
                                                   need_input_grad, need_weight_grad, relu_output)
    return dx, (None if dweight is None else dweight.reshape(weight.shape)), dbias


def _per_channel(weight: np.ndarray, channels: int) -> np.ndarray:
    """A depthwise weight in the grouped layout ``(Kh, Kw, 1, C*M)`` as ``(Kh, Kw, C, M)`` (a view):
    filter ``c*M + m`` is filter ``m`` of channel ``c``."""
    kh, kw, _, n = weight.shape
    return weight.reshape(kh, kw, channels, n // channels)


# ----------------------------------------------------------------- the table

_WINOGRAD = dict(kernel=(3, 3), stride_one=True, dilation_one=True, needs="a 3x3 kernel with stride 1 and dilation 1")
_F4_AUTOMATIC = dict(automatic=True, min_channels="WINOGRAD_MIN_CHANNELS",
                     min_tiles=("FORWARD_F4_MIN_TILES", "BACKWARD_F4_MIN_TILES"))

#: Every way cnnkit computes a convolution, in the order ``"auto"`` considers them.
ALGORITHMS: tuple[Algorithm, ...] = (
    Algorithm("depthwise", None, _depthwise_forward, _depthwise_backward, automatic=True, grouped=True,
              depthwise=True, pads_input=False, needs="any window"),
    Algorithm("winograd4", True, _compiled_winograd4_forward, _compiled_winograd4_backward, tile=4,
              pads_input=False, **_WINOGRAD, **_F4_AUTOMATIC),
    Algorithm("winograd4", False, *_winograd(4), tile=4, **_WINOGRAD, **_F4_AUTOMATIC),
    Algorithm("gemm", None, *_without_filters(pointwise_conv2d, pointwise_conv2d_backward), kernel=(1, 1),
              stride_one=True, unpadded=True, automatic=True, pads_input=False,
              needs="a 1x1 kernel with stride 1 and no padding"),
    Algorithm("gemm", True, _compiled_gemm_forward, _compiled_gemm_backward, automatic=True,
              pads_input=False, needs="any window"),
    Algorithm("gemm", False, *_without_filters(gemm_conv2d, gemm_conv2d_backward), automatic=True,
              needs="any window"),
    Algorithm("gemm", None, *_without_filters(grouped_conv2d, grouped_conv2d_backward), automatic=True,
              grouped=True, needs="any window"),
    Algorithm("winograd2", None, *_winograd(2), tile=2, **_WINOGRAD),
)

# the rows each request considers, in table order
_CANDIDATES = {name: tuple(row for row in ALGORITHMS if row.name == name) for name in ALGORITHM_NAMES[1:]}
_CANDIDATES["auto"] = tuple(row for row in ALGORITHMS if row.automatic)
