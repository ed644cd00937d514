"""The lecture's arithmetic as pure integer functions: no arrays are touched here.

Every layer, the summary and the memory estimates call these functions, so each formula
lives once. Spatial sizes are per axis; a 2-D window is a :class:`Geometry`: one
:class:`Window` per axis (height, then width).

Output size of a convolution or pooling window along one axis (PyTorch and Keras, floor)::

    out = floor((H + P_before + P_after - D*(K - 1) - 1) / S) + 1

which, for dilation ``D = 1`` and symmetric padding ``P``, is the lecture's
``(H - K + 2P)/S + 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Union

from .errors import ConfigError

PaddingSpec = Union[int, str, tuple]
FLOAT32_BYTES = 4
PADDING_MODES = ("valid", "same", "full")


def as_pair(value, argument: str, layer: str) -> tuple[int, int]:
    """Return ``(a, b)`` from an int or a pair of ints, for kernel sizes, strides and dilations."""
    pair = (value, value) if isinstance(value, (int,)) and not isinstance(value, bool) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
        raise ConfigError(f"{layer}: {argument} must be an int or a pair of ints; received {argument}={value!r}")
    return int(pair[0]), int(pair[1])


def check_positive(value: int, argument: str, layer: str, meaning: str) -> None:
    """Raise :class:`ConfigError` unless ``value >= 1`` (filters N, kernel K, stride S, ...)."""
    if value < 1:
        raise ConfigError(f"{layer}: {argument} must be at least 1 ({meaning}); received {argument}={value}")


@dataclass(frozen=True)
class Window:
    """A window sliding along one axis: kernel K, stride S, padding before/after, dilation D.

    ``overhang``: how many of the ``pad_after`` rows are not padding but room that a pooling
    with ``ceil_mode=True`` lets its last window reach past the padded input (:func:`ceil_mode_windows`);
    they pad like padding, but an average that counts the padding does not count them.
    """

    kernel: int
    stride: int
    pad_before: int
    pad_after: int
    dilation: int = 1
    overhang: int = 0

    @property
    def pads(self) -> tuple[int, int]:
        """Padding (before, after)."""
        return self.pad_before, self.pad_after

    @property
    def effective_kernel(self) -> int:
        """The span a dilated kernel covers: ``D*(K - 1) + 1``."""
        return self.dilation * (self.kernel - 1) + 1

    def positions(self, padded_size: int) -> int:
        """Windows along an already padded line of ``padded_size``: ``floor((Hp - D*(K-1) - 1)/S) + 1``."""
        return (padded_size - self.effective_kernel) // self.stride + 1

    def output_size(self, in_size: int) -> int:
        """``floor((H + P_before + P_after - D*(K-1) - 1)/S) + 1``, unchecked (see :func:`window_output_size`)."""
        return self.positions(in_size + self.pad_before + self.pad_after)


class Geometry(tuple):
    """The 2-D window every windowed op takes: one :class:`Window` per axis, ``(height, width)``.

    It unpacks like the pair it is (``wh, ww = geometry``); what the kernels need from it is
    derived here once, when it is made (a layer makes its own at ``build``), not in each kernel:

    - ``kernel``, ``stride``, ``dilation``: ``(height, width)`` pairs; ``top``, ``left``: the
      padding before each axis;
    - ``padded`` (some side is padded), ``stride_one``, ``dilation_one`` (on both axes);
    - ``kernel_args``: ``(Kh, Kw, Sh, Sw, top, left, Dh, Dw)``, the integers the compiled kernels take.

    Build one with :func:`windows_2d` (from a layer's arguments) or ``Geometry((wh, ww))``.
    """

    def __new__(cls, windows):
        height, width = windows
        self = super().__new__(cls, (height, width))
        self.kernel = (height.kernel, width.kernel)
        self.stride = (height.stride, width.stride)
        self.dilation = (height.dilation, width.dilation)
        self.top, self.left = height.pad_before, width.pad_before
        self.padded = any(height.pads + width.pads)
        self.stride_one = self.stride == (1, 1)
        self.dilation_one = self.dilation == (1, 1)
        self.kernel_args = (*self.kernel, *self.stride, self.top, self.left, *self.dilation)
        return self

    def output_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Output ``(Ho, Wo)`` for an input plane ``(H, W)`` (:meth:`Window.output_size` per axis)."""
        height, width = self
        return height.output_size(hw[0]), width.output_size(hw[1])

    def padded_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """``(B, H + P_before + P_after, W + ..., C)`` for an input of shape ``(B, H, W, C)``."""
        b, h, w, c = shape
        height, width = self
        return b, h + height.pad_before + height.pad_after, w + width.pad_before + width.pad_after, c

    def output_tiles(self, hw: tuple[int, int], tile: int) -> tuple[int, int]:
        """``(rows, columns)`` of ``tile x tile`` output tiles that cover the output of an ``(H, W)`` plane."""
        out_h, out_w = self.output_hw(hw)
        return -(-out_h // tile), -(-out_w // tile)

    def tiles_exactly(self, hw: tuple[int, int]) -> bool:
        """True when the windows cut the ``(H, W)`` plane into disjoint tiles that cover it all."""
        return all(win.stride == win.kernel and win.pad_before == win.pad_after == 0
                   and (win.dilation == 1 or win.kernel == 1) and size % win.kernel == 0
                   for size, win in zip(hw, self))


def padding_amounts(padding: PaddingSpec, in_size: int, kernel: int, stride: int, dilation: int,
                    axis: int, layer: str) -> tuple[int, int]:
    """Padding (before, after) along one axis (0 = height, 1 = width) for a padding spec.

    ``"valid"`` is no padding; ``"full"`` pads ``D*(K-1)`` on both sides; ``"same"`` pads so
    that ``out = ceil(H / S)``, the odd row going after (the TensorFlow and Keras rule).
    An int pads both sides of both axes, a pair ``(P_h, P_w)`` pads each axis symmetrically, and
    ``((top, bottom), (left, right))`` pads each side its own amount (ONNX's ``pads``, Keras's
    ``ZeroPadding2D``); the output size then uses ``P_before + P_after`` for ``2P``.
    """
    span = dilation * (kernel - 1) + 1
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0
        if padding == "full":
            return span - 1, span - 1
        if padding == "same":
            total = max((math.ceil(in_size / stride) - 1) * stride + span - in_size, 0)
            return total // 2, total - total // 2
        raise ConfigError(f"{layer}: padding must be an int, a pair of ints, a pair of pairs ((top, bottom), "
                          f"(left, right)) or one of {PADDING_MODES}; received padding={padding!r}")
    sides = _padding_sides(padding, layer)
    if min(sides[0] + sides[1]) < 0:
        raise ConfigError(f"{layer}: padding must be >= 0; received padding={padding!r}")
    return sides[axis]


def _padding_sides(padding, layer: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` from a numeric padding spec (signs unchecked)."""
    if _is_int(padding):
        return (padding, padding), (padding, padding)
    if isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(map(_is_int, padding)):
            return (int(padding[0]),) * 2, (int(padding[1]),) * 2
        if all(isinstance(pair, (tuple, list)) and len(pair) == 2 and all(map(_is_int, pair)) for pair in padding):
            return (int(padding[0][0]), int(padding[0][1])), (int(padding[1][0]), int(padding[1][1]))
    raise ConfigError(f"{layer}: padding must be an int, a pair of ints, a pair of pairs ((top, bottom), "
                      f"(left, right)) or one of {PADDING_MODES}; received padding={padding!r}")


def _is_int(value) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def windows_2d(in_sizes: tuple[int, int], kernel_size, stride, padding: PaddingSpec, dilation,
               layer: str) -> Geometry:
    """The (height, width) windows for a layer's ``kernel_size``, ``stride``, ``padding`` and ``dilation``."""
    kernel = as_pair(kernel_size, "kernel_size", layer)
    strides = as_pair(stride, "stride", layer)
    dilations = as_pair(dilation, "dilation", layer)
    for k, s, d in zip(kernel, strides, dilations):
        check_positive(k, "kernel_size", layer, "the window must cover at least one pixel")
        check_positive(s, "stride", layer, "the window must move by at least one pixel")
        check_positive(d, "dilation", layer, "kernel taps must be at least one pixel apart")
    return Geometry(Window(k, s, *padding_amounts(padding, size, k, s, d, axis, layer), d)
                    for axis, (size, k, s, d) in enumerate(zip(in_sizes, kernel, strides, dilations)))


def ceil_mode_windows(geometry: Geometry, in_sizes: tuple[int, int]) -> Geometry:
    """The windows of a pooling with ``ceil_mode=True`` (PyTorch's and ONNX's rule) on an ``(H, W)`` plane.

    Along each axis the output rounds up instead of down, unless that last window would start
    in the padding after the input (it would see no input pixel)::

        out = ceil((H + P_before + P_after - D*(K-1) - 1) / S) + 1,
        minus 1 if (out - 1)*S >= H + P_before

    The rows the last window reaches past the padded input are added to ``pad_after`` as the
    window's :attr:`Window.overhang`, so every kernel that honours padding computes it.
    """
    return Geometry(_with_overhang(size, win) for size, win in zip(in_sizes, geometry))


def _with_overhang(in_size: int, window: Window) -> Window:
    padded = in_size + window.pad_before + window.pad_after
    span = window.effective_kernel
    if padded < span:
        return window   # no window fits at all: window_output_size reports it
    out = -(-(padded - span) // window.stride) + 1
    if (out - 1) * window.stride >= in_size + window.pad_before:
        out -= 1
    overhang = max((out - 1) * window.stride + span - padded, 0)
    return Window(window.kernel, window.stride, window.pad_before, window.pad_after + overhang,
                  window.dilation, overhang)


def zero_padding(padding, layer: str) -> Geometry:
    """The windows of a zero-padding layer (Keras's ``ZeroPadding2D``) as a :class:`Geometry` of
    1x1, stride-1 windows that only pad: ``padding`` an int (every side), a pair ``(pad_h, pad_w)``
    (each axis on both sides) or ``((top, bottom), (left, right))``, every amount an int >= 0.
    The output is ``(H + top + bottom, W + left + right)``; the receptive field moves by ``top``/``left``.
    """
    if _is_count(padding):
        sides = ((padding, padding), (padding, padding))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(map(_is_count, padding)):
        sides = ((padding[0], padding[0]), (padding[1], padding[1]))
    elif (isinstance(padding, (tuple, list)) and len(padding) == 2
          and all(isinstance(pair, (tuple, list)) and len(pair) == 2 and all(map(_is_count, pair))
                  for pair in padding)):
        sides = tuple(tuple(pair) for pair in padding)
    else:
        raise ConfigError(f"{layer}: padding must be an int, a pair (pad_h, pad_w) or a pair of pairs "
                          f"((top, bottom), (left, right)), every amount an int >= 0; received padding={padding!r}")
    return Geometry(Window(1, 1, int(before), int(after)) for before, after in sides)


def _is_count(value) -> bool:
    """An int >= 0 that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def window_output_size(in_size: int, window: Window, layer: str = "layer", axis_name: str = "H",
                       strict: bool = False, ceil_mode: bool = False) -> int:
    """Output size along one axis; raise :class:`ConfigError` when the window cannot fit.

    With ``strict=True`` a stride that does not divide the padded input exactly, or windows whose
    taps step over input rows (:func:`unread_rows`), are an error; otherwise those rows are
    silently skipped, as in PyTorch. ``ceil_mode``: ``window`` is from :func:`ceil_mode_windows`,
    whose windows reach every input row by construction (a row left over is padding), so only
    the rows the taps step over count.
    """
    k, s, d = window.kernel, window.stride, window.dilation
    padded = in_size + window.pad_before + window.pad_after
    span = window.effective_kernel
    if padded < span:
        dilated = f"D*(K-1)+1 = {span}" if d > 1 else f"K = {k}"
        raise ConfigError(
            f"{layer}: kernel_size={k} does not fit the padded input along {axis_name} "
            f"({axis_name} + 2P = {padded} < {dilated}); lower kernel_size or raise padding")
    remainder = 0 if ceil_mode else (padded - span) % s
    if strict and remainder:
        raise ConfigError(f"{layer}: {_formula(in_size, window, axis_name)} = "
                          f"{(padded - span) / s + 1:g} is not a whole number; "
                          f"change stride, padding or the input size (or build with strict=False "
                          f"to skip the last {remainder} row(s) as PyTorch does)")
    unread = unread_rows(in_size, window) if strict else 0
    if unread:
        raise ConfigError(f"{layer}: no window reads {unread} of the {in_size} input rows along {axis_name}: "
                          f"window o reads rows o*S - P + t*D for taps t < K, and K={k}, S={s}, "
                          f"P={window.pad_before}, D={d} step over them; change stride, dilation or padding "
                          f"(or build with strict=False to skip them as PyTorch does)")
    return window.output_size(in_size)


def _formula(in_size: int, window: Window, axis_name: str) -> str:
    """The lecture's formula filled in with the numbers, for error messages."""
    k, s, d = window.kernel, window.stride, window.dilation
    pad = window.pad_before + window.pad_after
    if d == 1:
        return f"({axis_name} - K + 2P)/S + 1 = ({in_size} - {k} + {pad})/{s} + 1"
    return (f"({axis_name} + 2P - D*(K-1) - 1)/S + 1 = "
            f"({in_size} + {pad} - {d}*({k}-1) - 1)/{s} + 1")


def unread_rows(in_size: int, window: Window) -> int:
    """How many input rows (or columns) along one axis no tap of any window reads.

    Window ``o`` reads, with tap ``t``, input row ``o*S - P_before + t*D``. Rows go unread after
    the last window when the stride does not divide the padded input, and between taps when
    dilation, or a stride longer than the kernel, steps over them: ``K = 3, S = 4, P = 1, D = 2``
    on 11 rows reads rows 1, 3, 5, 7 and 9 only, and leaves 6 unread.
    """
    read = bytearray(in_size)
    for tap in range(window.kernel):
        for row in _tap_rows(in_size, window, tap):
            read[row] = 1
    return in_size - sum(read)


def _tap_rows(in_size: int, window: Window, tap: int) -> list[int]:
    """The input rows that kernel tap ``tap`` reads over all windows (rows in the padding left out)."""
    padded = in_size + window.pad_before + window.pad_after
    outputs = max((padded - window.effective_kernel) // window.stride + 1, 0)
    first = tap * window.dilation - window.pad_before       # the row it reads in window 0
    return [row for row in range(first, first + outputs * window.stride, window.stride) if 0 <= row < in_size]


# ----------------------------------------------------------------- transposed convolution

TRANSPOSED_PADDING_MODES = ("valid", "same")


def conv_transpose_output_size(in_size: int, kernel: int, stride: int, padding: int, output_padding: int,
                               dilation: int) -> int:
    """Output size of a transposed convolution along one axis (PyTorch's ``ConvTranspose2d``)::

        out = (H - 1)*S - 2P + D*(K - 1) + output_padding + 1

    Every input pixel spreads its K taps, D apart, from position ``i*S`` of a line of
    ``(H - 1)*S + D*(K - 1) + 1``; P is cropped from both ends and ``output_padding`` added at the
    end (that is how one of the ``S`` input sizes a strided convolution maps to the same size is
    chosen back). It is the convolution output formula solved for the input size.
    """
    return (in_size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def transposed_windows(in_sizes: tuple[int, int], kernel_size, stride, padding, output_padding, dilation,
                       layer: str) -> tuple[Geometry, tuple[int, int]]:
    """``(geometry, (Ho, Wo))`` of a transposed convolution on an ``(H, W)`` plane.

    A transposed convolution is the input gradient of a convolution: ``geometry`` is that
    convolution's windows (kernel, stride, dilation, and as padding the rows cropped before and
    after the line of ``(H - 1)*S + D*(K - 1) + 1`` the taps cover), on an input of
    ``Ho - extra`` rows, where ``extra = Ho + P_before + P_after - line`` rows of zeros close the
    output (``output_padding`` beyond P, or a stride longer than the kernel). ``padding`` is an int
    or a pair (PyTorch's P, both sides) with ``output_padding`` an int or a pair smaller than
    ``max(S, D)``, or Keras's ``Conv2DTranspose`` strings (``output_padding`` 0):

    - ``"valid"``: nothing cropped, ``out = (H - 1)*S + max(D*(K - 1) + 1, S)`` (a stride longer than
      the kernel leaves ``S - D*(K-1) - 1`` rows of bias alone at the end);
    - ``"same"``: ``out = H*S``, cropping ``D*(K-1) + 1 - S`` rows, the odd one after: the exact
      transpose of ``Conv2d(padding="same")`` on an ``H*S`` input (TensorFlow's rule, which Keras 3
      computes on the torch backend too, checked in the tests). PyTorch has no padding that crops unevenly.
    """
    kernel = as_pair(kernel_size, "kernel_size", layer)
    strides = as_pair(stride, "stride", layer)
    dilations = as_pair(dilation, "dilation", layer)
    for k, s, d in zip(kernel, strides, dilations):
        check_positive(k, "kernel_size", layer, "the window must cover at least one pixel")
        check_positive(s, "stride", layer, "the window must move by at least one pixel")
        check_positive(d, "dilation", layer, "kernel taps must be at least one pixel apart")
    extras = _output_paddings(padding, output_padding, layer)
    windows, out = [], []
    for axis, (size, k, s, d) in enumerate(zip(in_sizes, kernel, strides, dilations)):
        before, length = _transposed_axis(padding, extras[axis], size, k, s, d, axis, layer)
        line = (size - 1) * s + d * (k - 1) + 1
        windows.append(Window(k, s, before, max(line - before - length, 0), d))
        out.append(length)
    return Geometry(windows), (out[0], out[1])


def _output_paddings(padding, output_padding, layer: str) -> tuple[int, int]:
    """``output_padding`` as a pair of ints >= 0; only numeric padding takes a non-zero one."""
    extras = as_pair(output_padding, "output_padding", layer)
    if min(extras) < 0:
        raise ConfigError(f"{layer}: output_padding must be >= 0; received output_padding={output_padding!r}")
    if isinstance(padding, str) and any(extras):
        raise ConfigError(f"{layer}: output_padding applies to numeric padding only; padding={padding!r} fixes "
                          f"the output size (Keras's rule: 'same' gives H*S, 'valid' (H-1)*S + max(D*(K-1)+1, S)); "
                          f"received output_padding={output_padding!r}; use padding=P with output_padding, "
                          f"or output_padding=0")
    return extras


def _transposed_axis(padding, extra: int, size: int, k: int, s: int, d: int, axis: int,
                     layer: str) -> tuple[int, int]:
    """``(rows cropped before, output size)`` of a transposed convolution along one axis."""
    span = d * (k - 1) + 1
    name = "HW"[axis]
    if isinstance(padding, str):
        if padding == "valid":
            return 0, (size - 1) * s + max(span, s)
        if padding == "same":
            return max(span - s, 0) // 2, size * s
        raise ConfigError(f"{layer}: padding must be an int, a pair of ints or one of {TRANSPOSED_PADDING_MODES}; "
                          f"received padding={padding!r}")
    pad = as_pair(padding, "padding", layer)[axis]
    if pad < 0:
        raise ConfigError(f"{layer}: padding must be >= 0; received padding={padding!r}")
    if extra >= max(s, d):
        raise ConfigError(f"{layer}: output_padding must be smaller than the stride or the dilation along {name} "
                          f"(max(S, D) = {max(s, d)}); received output_padding={extra}; it picks one of the "
                          f"{max(s, d)} output sizes a convolution maps back to the same input size")
    out = conv_transpose_output_size(size, k, s, pad, extra, d)
    if out < 1:
        raise ConfigError(f"{layer}: padding={pad} leaves no output along {name}: "
                          f"(H-1)*S - 2P + D*(K-1) + output_padding + 1 = ({size}-1)*{s} - 2*{pad} + "
                          f"{d}*({k}-1) + {extra} + 1 = {out}; lower padding")
    line = (size - 1) * s + span
    if pad >= line:
        raise ConfigError(f"{layer}: padding={pad} crops every row the taps write along {name} "
                          f"((H-1)*S + D*(K-1) + 1 = ({size}-1)*{s} + {d}*({k}-1) + 1 = {line}): the output "
                          f"would be the bias alone; lower padding")
    return pad, out


def transposed_unread_rows(in_size: int, window: Window, out_size: int) -> int:
    """Input rows (or columns) of a transposed convolution that reach no output row: every
    position ``i*S + t*D`` their taps write is cropped (``window`` as :func:`transposed_windows`
    gives it, its padding before the crop)."""
    first, stop = window.pad_before, window.pad_before + out_size
    return sum(1 for row in range(in_size)
               if not any(first <= row * window.stride + tap * window.dilation < stop for tap in range(window.kernel)))


def transposed_field(field: "ReceptiveField", window: Window) -> "ReceptiveField":
    """The receptive field after a transposed convolution (``window`` as :func:`transposed_windows`
    gives it): the units get S times denser, and each sees a few neighbouring input units.

    Output unit o is written by input units ``i`` with ``o + P_before = i*S + t*D``, taps t < K: its
    centre lies at input unit ``(o + P_before - D*(K-1)/2) / S`` (the window it transposes, read
    backwards) and the units it sees span ``floor((K-1)*g/S) * D/g`` input units at most (g =
    gcd(S, D): the taps whose positions a multiple of S apart)::

        size'  = size + floor((K-1)*g/S) * (D/g) * jump
        jump'  = jump / S
        start' = start + (P_before - D*(K-1)/2) / S * jump
    """
    k, s, d = window.kernel, window.stride, window.dilation
    g = math.gcd(s, d)
    return field.resampled(Fraction(1, s), Fraction(2 * window.pad_before - d * (k - 1), 2 * s),
                           ((k - 1) * g // s) * (d // g))


INTERPOLATIONS = ("nearest", "bilinear")


def upsampled_field(field: "ReceptiveField", in_size: int, factor: int, interpolation: str,
                    align_corners: bool) -> "ReceptiveField":
    """The receptive field after upsampling one axis of ``in_size`` units by ``factor``.

    Nearest copies input unit ``floor(o/factor)``; bilinear mixes the two units around
    ``(o + 1/2)/factor - 1/2`` (``align_corners=False``, the half-pixel rule) or
    ``o*(H - 1)/(H*factor - 1)`` (``align_corners=True``). Either way the units get ``factor``
    times denser (with aligned corners ``(H*factor - 1)/(H - 1)`` times) and the half-pixel
    centre of unit 0 lies ``(factor - 1)/(2*factor)`` units before input unit 0's (nearest too:
    its units' centres average there); bilinear adds one input unit to the field::

        size' = size + [bilinear] * jump,  jump' = jump * step,  start' = start + first * jump
    """
    reach = int(interpolation == "bilinear" and in_size > 1)
    out_size = in_size * factor
    if align_corners and out_size > 1:
        return field.resampled(Fraction(in_size - 1, out_size - 1), Fraction(0), reach)
    return field.resampled(Fraction(1, factor), Fraction(1 - factor, 2 * factor), reach)


# ----------------------------------------------------------------- learnable parameters

def conv_params(filters: int, kernel: tuple[int, int], in_channels: int, bias: bool = True) -> int:
    """Learnable parameters of a convolution: ``N*K*K*C + N`` (without bias ``N*K*K*C``)."""
    return filters * kernel[0] * kernel[1] * in_channels + (filters if bias else 0)


def depthwise_params(kernel: tuple[int, int], in_channels: int, multiplier: int, bias: bool = True) -> int:
    """Learnable parameters of a depthwise convolution: ``K*K*C*M + C*M`` (M filters per channel),
    which is :func:`conv_params` of ``N = C*M`` filters over one channel each (groups = C)."""
    return conv_params(in_channels * multiplier, kernel, 1, bias)


def dense_params(in_features: int, units: int, bias: bool = True) -> int:
    """Learnable parameters of a fully connected layer: ``in*out + out``."""
    return in_features * units + (units if bias else 0)


def batchnorm_params(channels: int) -> tuple[int, int]:
    """Batch norm parameters as (trainable, not trainable): gamma and beta, running mean and variance."""
    return 2 * channels, 2 * channels


def prelu_params(channels: int) -> int:
    """PReLU learns one negative slope per channel."""
    return channels


def maxout_params(in_features: int, units: int, pieces: int, bias: bool = True) -> int:
    """Learnable parameters of a maxout unit layer (Goodfellow et al.): ``pieces * (in*units + units)``.

    In cnnkit a maxout layer is ``Dense(units * pieces)`` (or a convolution) followed by the
    parameter-free ``Maxout(pieces)`` activation, which is exactly this count.
    """
    return pieces * dense_params(in_features, units, bias)


# ----------------------------------------------------------------- work and memory

def conv_macs(out_shape: tuple[int, int, int], kernel: tuple[int, int], in_channels: int) -> int:
    """Multiply-accumulates of a convolution for one image: ``H2*W2*N * K*K*C``."""
    h, w, n = out_shape
    return h * w * n * kernel[0] * kernel[1] * in_channels


def dense_macs(in_features: int, units: int) -> int:
    """Multiply-accumulates of a fully connected layer for one input: ``in*out``."""
    return in_features * units


def volume(shape: tuple[int, ...]) -> int:
    """Number of activations in a volume (``H*W*C``)."""
    return math.prod(shape)


def float32_bytes(count: int) -> int:
    """Bytes that ``count`` float32 numbers occupy."""
    return count * FLOAT32_BYTES


OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2}


def optimizer_state_count(trainable_params: int, optimizer: str) -> int:
    """Numbers an optimizer keeps per model: SGD none, SGD with momentum one, Adam two per parameter."""
    if optimizer not in OPTIMIZER_SLOTS:
        raise ConfigError(f"optimizer must be one of {sorted(OPTIMIZER_SLOTS)}; received optimizer={optimizer!r}")
    return OPTIMIZER_SLOTS[optimizer] * trainable_params


# ----------------------------------------------------------------- receptive field

@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one unit along one axis, in input pixels.

    ``size`` is how many input pixels one unit sees, ``jump`` the distance in input pixels
    between two neighbouring units, and ``start`` the input coordinate of the centre of the
    first unit's field (negative when it lies in the padding). After upsampling (a transposed
    convolution, :class:`~cnnkit.layers.UpSampling2d`) units are closer than a pixel: ``jump`` is
    then an exact :class:`~fractions.Fraction`, and ``size`` is rounded up to whole pixels.
    """

    size: int = 1
    jump: int | Fraction = 1
    start: float = 0.5
    whole: bool = False

    def through(self, window: Window) -> "ReceptiveField":
        """The field after one more window, by the standard recurrence::

            size'  = size + (D*(K-1)) * jump
            jump'  = jump * S
            start' = start + ((D*(K-1))/2 - P_before) * jump
        """
        span = window.effective_kernel - 1
        return self.resampled(Fraction(window.stride), Fraction(span, 2) - window.pad_before, span)

    def covering(self, in_size: int) -> "ReceptiveField":
        """The field of a unit that sees every unit of its input (after Flatten, global pooling).

        ``size`` may exceed the image: it counts the padding the outermost units see.
        """
        return ReceptiveField(size=_pixels(self.size + (in_size - 1) * self.jump), jump=_exact(self.jump * in_size),
                              start=self.start + float((in_size - 1) * self.jump) / 2, whole=True)

    def resampled(self, step: Fraction, first: Fraction, reach: int) -> "ReceptiveField":
        """The field after a layer whose output unit o sees the input units within ``reach/2`` of
        input unit ``first + o*step`` (a convolution: ``step = S``, ``first = D*(K-1)/2 - P``,
        ``reach = D*(K-1)``, which :meth:`through` computes; an upsampling layer: a step below 1)::

            size'  = size + reach * jump   (rounded up to whole pixels)
            jump'  = jump * step
            start' = start + first * jump
        """
        return ReceptiveField(size=_pixels(self.size + reach * self.jump), jump=_exact(self.jump * step),
                              start=self.start + float(first * self.jump), whole=self.whole)


def _exact(value) -> int | Fraction:
    """A jump as an int when it is whole, else as the exact fraction."""
    value = Fraction(value)
    return int(value) if value.denominator == 1 else value


def _pixels(value) -> int:
    """A field's extent in whole pixels (rounded up when units are closer than a pixel)."""
    return math.ceil(value)


def merged_field(fields: "list[ReceptiveField]") -> ReceptiveField:
    """The field of a unit that combines the units at its position of several inputs (Add,
    Concatenate): the union of their fields, which is the widest one when the paths' strides and
    padding keep the fields centred alike (a residual block)::

        begin = min(start - size/2),  end = max(start + size/2),  size' = end - begin
    """
    begin = min(field.start - field.size / 2 for field in fields)
    end = max(field.start + field.size / 2 for field in fields)
    return ReceptiveField(size=round(end - begin), jump=max(field.jump for field in fields),
                          start=(begin + end) / 2, whole=any(field.whole for field in fields))


def narrowest_field(fields: "list[ReceptiveField]") -> ReceptiveField:
    """The smallest of the fields that paths through a graph give one unit (the shortest path's)."""
    return min(fields, key=lambda field: (field.size, field.whole))


# ----------------------------------------------------------------- memory of a whole network

@dataclass(frozen=True)
class CallMemory:
    """How one call of a layer uses memory, per sample: what the summary's live set
    (:mod:`cnnkit.live_set`) needs to follow the executor.

    ``output_is_input``: the output lives in the input's memory (a view such as Flatten's, or
    computed in an input the executor handed over); otherwise it is a new volume.
    ``workspace``: numbers allocated during the call besides the output and freed by its end (a
    padded copy of the input). A training call's context holds its input(s) (``keeps_input``),
    its output (``keeps_output``) and ``keeps_bytes`` bytes of arrays of its own (masks, the
    indices of maxima, a normalised copy). Backward returns the output's gradient itself, or
    views of it, as the input gradient (``grad_is_view``: Add, Flatten), or computes it in the
    output's gradient when the executor hands that over (``grad_in_place``: ReLU).
    """

    output_is_input: bool = False
    workspace: int = 0
    keeps_input: bool = False
    keeps_output: bool = False
    keeps_bytes: int = 0
    grad_is_view: bool = False
    grad_in_place: bool = False


def counted_activations(input_count: int, stored_outputs: list[int]) -> int:
    """Activations stored for one forward pass: the inputs plus every output that is a new volume
    (not an in-place layer's)."""
    return input_count + sum(stored_outputs)
