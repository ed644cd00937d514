"""torchvision's MobileNetV2 layout written by hand in plain torch (torchvision itself is not
needed): the oracle of the MobileNetV2 tests. Importing this module needs torch.

Module names are torchvision's (``features.0.0``, ``features.1.conv.0.0``, ``features.2.conv.3``,
``classifier.1``), so its ``state_dict()`` has the keys of a torchvision checkpoint. The channel
rounding is written here from the rule (nearest multiple of 8, at least 8, never below 90%), not
imported from cnnkit, so that a slip in cnnkit's shows as a shape mismatch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation``: children ``0`` (conv), ``1`` (batch norm), ``2`` (ReLU6)."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = int(round(cin * expansion))
        self.residual = stride == 1 and cin == cout
        layers = [conv_bn_relu6(cin, hidden, 1)] if expansion != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class TorchMobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        channels = divisible(32 * width_mult)
        self.last_channel = divisible(1280 * max(1.0, width_mult))
        features = [conv_bn_relu6(3, channels, 3, 2)]
        for expansion, c, n, s in SETTING:
            out = divisible(c * width_mult)
            for index in range(n):
                features.append(InvertedResidual(channels, out, s if index == 0 else 1, expansion))
                channels = out
        features.append(conv_bn_relu6(channels, self.last_channel, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


DENSE_KEYS = ("classifier.1.weight",)


def as_cnnkit(array: np.ndarray, key: str) -> np.ndarray:
    """One torch array in cnnkit's layout: convolutions OIHW -> HWIO (a depthwise (C, 1, 3, 3) ->
    (3, 3, 1, C)), the classifier (out, in) -> (in, out)."""
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    return array.T if key in DENSE_KEYS else array


def as_torch(array: np.ndarray, key: str) -> np.ndarray:
    """One cnnkit array in torch's layout (the inverse of :func:`as_cnnkit`)."""
    if array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    return array.T if key in DENSE_KEYS else array


def cnnkit_state(net: nn.Module) -> dict[str, np.ndarray]:
    """``net``'s weights under the same keys in cnnkit's layouts (no bookkeeping counters)."""
    return {key: np.ascontiguousarray(as_cnnkit(value.detach().numpy(), key))
            for key, value in net.state_dict().items() if not key.endswith("num_batches_tracked")}
