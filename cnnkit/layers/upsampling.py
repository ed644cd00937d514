"""`UpSampling2d`: a volume made ``size`` times larger along height and width, nearest or bilinear."""

from __future__ import annotations

import numpy as np

from ..arithmetic import INTERPOLATIONS, CallMemory, as_pair, check_positive, upsampled_field
from ..errors import ConfigError
from ..ops.resample import axis_taps, upsample2d, upsample2d_backward
from .base import Layer, check_choice


class UpSampling2d(Layer):
    """Upsample a channels-last volume by an integer factor per axis (Keras's ``UpSampling2D``,
    PyTorch's ``F.interpolate(scale_factor=size)``).

    Args:
        size: the factor, an int or a pair ``(s_h, s_w)`` of ints >= 1.
        interpolation: ``"nearest"`` (each pixel repeated ``s`` times: PyTorch's ``mode="nearest"``
            and Keras's default) or ``"bilinear"``.
        align_corners: bilinear only, PyTorch's two conventions: ``False`` (half-pixel centres:
            output row ``o`` samples ``max((o + 1/2)/s - 1/2, 0)``, the edges clamped; this is what
            Keras 3's ``UpSampling2D(interpolation="bilinear")`` computes, checked on its torch backend) or
            ``True`` (the corner pixels' centres coincide: row ``o`` samples ``o*(H-1)/(H*s-1)``,
            old Keras 2 / TF1 ``align_corners=True``). ``True`` with nearest is refused, as PyTorch does.

    Input ``(B, H, W, C)``, output ``(B, H*s_h, W*s_w, C)``. No parameters. Forward gathers with
    index and weight arrays made once (:mod:`cnnkit.ops.resample`), one axis after the other;
    backward adds each output's gradient, weighted, back to the pixels it read (the exact adjoint).
    Multiply-adds: none for nearest; bilinear, two per output of each axis pass,
    ``2*C*(H2*W + H2*W2)``. Receptive field: output units ``s`` times denser (``jump / s``),
    bilinear seeing one input unit more (:func:`cnnkit.arithmetic.upsampled_field`).
    """

    fresh_output = True
    fresh_input_grad = True

    def __init__(self, size=2, interpolation: str = "nearest", align_corners: bool = False, name: str | None = None):
        super().__init__(name)
        self.size = size
        self.interpolation = interpolation
        self.align_corners = align_corners

    def _build(self, input_shape, rng):
        h, w, c = self._require_volume(input_shape)
        factors = as_pair(self.size, "size", self.label)
        for factor in factors:
            check_positive(factor, "size", self.label, "the upsampling factor")
        check_choice(self.interpolation, "interpolation", INTERPOLATIONS, self.label)
        if not isinstance(self.align_corners, bool):
            raise ConfigError(f"{self.label}: align_corners must be True or False; "
                              f"received align_corners={self.align_corners!r}")
        if self.align_corners and self.interpolation == "nearest":
            raise ConfigError(f"{self.label}: align_corners=True applies to interpolation='bilinear' only (PyTorch "
                              f"refuses it for nearest too); use align_corners=False or interpolation='bilinear'")
        self._factors = factors
        self._taps = None   # made by the first call: a description (a file's check) allocates nothing
        return h * factors[0], w * factors[1], c

    @property
    def taps(self):
        """The (height, width) :class:`~cnnkit.ops.resample.AxisTaps`: the index and weight arrays."""
        if self._taps is None:
            self._taps = tuple(axis_taps(size, factor, self.interpolation, self.align_corners)
                               for size, factor in zip(self.input_shape[:2], self._factors))
        return self._taps

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """The upsampled volume (a new array); the context is the batch size, all the backward needs."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        return upsample2d(x, *self.taps), (x.shape[0] if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """Each output's gradient added back, with its weights, to the input pixels it read (a new array)."""
        self.check_grad(dy, (context, *self.output_shape))
        return upsample2d_backward(dy, *self.taps)

    def macs(self) -> int:
        if self.interpolation == "nearest":
            return 0
        (_, w, c), (h2, w2, _) = self.input_shape, self.output_shape
        return 2 * c * (h2 * w + h2 * w2)

    def receptive_field(self, field):
        return tuple(upsampled_field(axis_field, size, factor, self.interpolation, self.align_corners)
                     for axis_field, size, factor in zip(field, self.input_shape[:2], self._factors))

    def workspace_per_sample(self) -> int:
        # the volume upsampled along H only, before the W pass
        (_, w, c), h2 = self.input_shape, self.output_shape[0]
        return h2 * w * c

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(workspace=self.workspace_per_sample())
