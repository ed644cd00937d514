"""What both layouts of MobileNetV2 (torchvision's :mod:`cnnkit.models.mobilenet`, Keras's
:mod:`cnnkit.models.keras_mobilenet`) share: the paper's inverted residual setting and the
rounding of a width to a multiple of 8."""

from __future__ import annotations

#: (expansion t, output channels c, blocks n, stride of the first block s), as in the paper and torchvision
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS, LAST_CHANNELS, DIVISOR = 32, 1280, 8


def make_divisible(value: float, divisor: int = DIVISOR) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``divisor``, and raised by one
    ``divisor`` where rounding down lost more than 10% (the rule of TensorFlow's, Keras's and
    torchvision's MobileNets)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded
