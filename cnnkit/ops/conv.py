"""2-D convolution: the one entry, :func:`conv2d` and :func:`conv2d_backward`, and the one table
of algorithms behind it.

Every convolution goes through here, and the way it is computed is decided here only, once per
call: :func:`choose_algorithm` takes the first row of :data:`ALGORITHMS` that computes the call
(the requested name, or for ``"auto"`` the first row whose measured thresholds it meets).

============  =========  ====================================  ======================================
name          compiled   supports                              chosen by ``"auto"``
============  =========  ====================================  ======================================
winograd4     yes / no   3x3, stride 1, dilation 1, any pad    C, N >= WINOGRAD_MIN_CHANNELS and the
                                                               batch has FORWARD_F4_MIN_TILES (backward
                                                               BACKWARD_F4_MIN_TILES) 4x4 output tiles
gemm          either     1x1, stride 1, unpadded (one          always (the fallback)
                         product over the pixels)
gemm          yes / no   any window                            always (the fallback)
winograd2     no         3x3, stride 1, dilation 1, any pad    never: only when requested
============  =========  ====================================  ======================================

"Compiled" rows run Numba kernels (:mod:`cnnkit.ops.jit`) and are used when
:func:`~cnnkit.ops.jit.enabled`; their NumPy references are the rows of the same name marked
``compiled=False``, used otherwise; ``compiled=None`` rows run either way. The thresholds live,
with the measurements behind them, in :mod:`cnnkit.ops.tuning`. The kernels behind the rows:
:mod:`~cnnkit.ops.gemm` (NumPy) and :mod:`~cnnkit.ops.gemm_fast` (compiled im2col),
:mod:`~cnnkit.ops.winograd` (NumPy, F(2x2) and F(4x4)) and :mod:`~cnnkit.ops.winograd_fast`
(compiled F(4x4)).

The forward returns a :class:`ConvContext` beside its output: what the backward needs, so one
layer can run at several places of a graph. The backward chooses again, with the backward's
thresholds. Winograd rows transform the filters; a caller that passes ``filter_cache`` (a dict
it keeps for one weight and replaces by a new one when the weight changes, as
:class:`~cnnkit.layers.Conv2d` does on the weight's version) has them kept there, by tile and
dtype, between calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from ..arithmetic import Geometry
from ..errors import ConfigError, ShapeError
from . import jit, tuning
from .gemm import gemm_conv2d, gemm_conv2d_backward, pointwise_conv2d, pointwise_conv2d_backward
from .gemm_fast import compiled_gemm_conv2d, compiled_gemm_conv2d_backward
from .winograd import filter_gradient, transform_filter, winograd_conv2d, winograd_conv2d_backward
from .winograd_fast import compiled_winograd_conv2d, compiled_winograd_conv2d_backward

#: What ``algorithm=`` may name.
ALGORITHM_NAMES = ("auto", "gemm", "winograd2", "winograd4")
#: Activations the convolution applies as it writes its output (``None``: none).
ACTIVATIONS = (None, "relu")


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

    def computes(self, geometry: Geometry) -> bool:
        """True when this row computes convolutions of ``geometry`` (compiled or not)."""
        return ((self.kernel is None or geometry.kernel == self.kernel)
                and (geometry.stride_one or not self.stride_one)
                and (geometry.dilation_one or not self.dilation_one)
                and not (self.unpadded and geometry.padded))

    def runs(self, geometry: Geometry, compiled: bool) -> bool:
        """True when this row computes ``geometry`` and runs now (``compiled``: kernels are enabled)."""
        return (self.compiled is None or self.compiled == compiled) and self.computes(geometry)

    def pays(self, x_shape: tuple[int, ...], weight_shape: tuple[int, ...], geometry: Geometry,
             backward: bool) -> bool:
        """True when ``"auto"`` takes this row for these shapes (the measured thresholds)."""
        if not self.automatic:
            return False
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


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geometry: Geometry,
           activation: str | None = None, algorithm: str = "auto", filter_cache: dict | None = None
           ) -> tuple[np.ndarray, ConvContext]:
    """Convolve ``x`` (B, H, W, C) with ``weight`` (Kh, Kw, C, N), add ``bias`` (N,) or None, and
    apply ``activation`` (None or ``"relu"``) as the output is written; return ``(y, context)``.

    ``y`` is ``(B, Ho, Wo, N)`` in the dtype of ``x`` (weights are used in it) with
    ``Ho = floor((H + P_before + P_after - D*(Kh - 1) - 1)/S) + 1`` (likewise Wo), ``geometry``
    giving the windows (:func:`cnnkit.arithmetic.windows_2d`). ``algorithm``: ``"auto"`` or a
    name of :data:`ALGORITHM_NAMES` (see :func:`choose_algorithm`). ``filter_cache``: a dict the
    caller keeps for this weight and replaces when the weight changes; Winograd keeps its
    transformed filters there. ``context`` is what :func:`conv2d_backward` needs.
    """
    relu = activation == "relu"
    if not relu and activation is not None:
        raise ConfigError(f"conv2d: activation must be one of {ACTIVATIONS}; received activation={activation!r}")
    if weight.shape[:2] != geometry.kernel:
        raise ShapeError(f"conv2d: the weight's kernel {weight.shape[:2]} differs from the geometry's "
                         f"{geometry.kernel}; build the geometry with the weight's kernel size")
    row = choose_algorithm(x.shape, weight.shape, geometry, algorithm)
    y = row.forward(x, weight, bias, geometry, relu, filter_cache)
    return y, ConvContext(x, y if relu else None, weight, geometry, algorithm, filter_cache)


def conv2d_backward(dy: np.ndarray, context: ConvContext, need_input_grad: bool = True,
                    need_weight_grad: bool = True) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Gradients ``(dx, dweight, dbias)`` of the :func:`conv2d` that returned ``context``, given
    ``dy`` (B, Ho, Wo, N), in the dtype of its input.

    ``dx`` is None when ``need_input_grad`` is False (a first layer), ``dweight`` is None when
    ``need_weight_grad`` is False (a frozen layer), which skips a third of the work each. With
    a fused ReLU, ``dy`` counts only where the output is positive.
    """
    x, relu_output, weight, geometry, algorithm, filters = context
    row = choose_algorithm(x.shape, weight.shape, geometry, algorithm, backward=True)
    return row.backward(dy, x, weight, geometry, need_input_grad, need_weight_grad, relu_output, filters)


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
    for row in rows:
        if row.runs(geometry, compiled) and (not automatic or row.pays(x_shape, weight_shape, geometry, backward)):
            return row
    raise ConfigError(f"conv2d: algorithm={requested!r} needs {rows[0].needs}; received kernel {geometry.kernel}, "
                      f"stride {geometry.stride}, dilation {geometry.dilation}; use algorithm='auto' or 'gemm'")


def unmet_needs(algorithm: str, geometry: Geometry) -> str | None:
    """None when ``algorithm`` (a name of :data:`ALGORITHM_NAMES`) computes ``geometry``, else
    what it needs (for a layer's message at build time)."""
    rows = _CANDIDATES[algorithm]
    return None if any(row.computes(geometry) for row in rows) else rows[0].needs


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


# ----------------------------------------------------------------- the table

_WINOGRAD = dict(kernel=(3, 3), stride_one=True, dilation_one=True, needs="a 3x3 kernel with stride 1 and dilation 1")
_F4_AUTOMATIC = dict(automatic=True, min_channels="WINOGRAD_MIN_CHANNELS",
                     min_tiles=("FORWARD_F4_MIN_TILES", "BACKWARD_F4_MIN_TILES"))

#: Every way cnnkit computes a convolution, in the order ``"auto"`` considers them.
ALGORITHMS: tuple[Algorithm, ...] = (
    Algorithm("winograd4", True, _compiled_winograd4_forward, _compiled_winograd4_backward, tile=4,
              **_WINOGRAD, **_F4_AUTOMATIC),
    Algorithm("winograd4", False, *_winograd(4), tile=4, **_WINOGRAD, **_F4_AUTOMATIC),
    Algorithm("gemm", None, *_without_filters(pointwise_conv2d, pointwise_conv2d_backward), kernel=(1, 1),
              stride_one=True, unpadded=True, automatic=True, needs="a 1x1 kernel with stride 1 and no padding"),
    Algorithm("gemm", True, *_without_filters(compiled_gemm_conv2d, compiled_gemm_conv2d_backward), automatic=True,
              needs="any window"),
    Algorithm("gemm", False, *_without_filters(gemm_conv2d, gemm_conv2d_backward), automatic=True,
              needs="any window"),
    Algorithm("winograd2", None, *_winograd(2), tile=2, **_WINOGRAD),
)

# the rows each request considers, in table order
_CANDIDATES = {name: tuple(row for row in ALGORITHMS if row.name == name) for name in ALGORITHM_NAMES[1:]}
_CANDIDATES["auto"] = tuple(row for row in ALGORITHMS if row.automatic)
