"""torchvision's ResNet layout written by hand in plain torch (torchvision itself is not needed):
the oracle of the ResNet tests. Importing this module needs torch.

Module names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``,
``fc``), so its ``state_dict()`` has the keys of a torchvision checkpoint. ``width`` scales every
channel count as cnnkit's ``width=`` does, to keep tests small.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CONFIGS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
           101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1):
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(inplanes, planes, 3, stride)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """v1.5: the stride on the 3x3 convolution."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(inplanes, planes, 1)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = conv_bn(planes, planes * 4, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
    def __init__(self, depth: int = 18, classes: int = 1000, width: float = 1.0):
        super().__init__()
        kind, counts = CONFIGS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.inplanes = max(1, round(64 * width))
        self.conv1, self.bn1 = conv_bn(3, self.inplanes, 7, 2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), counts), start=1):
            stride = 1 if stage == 1 else 2
            setattr(self, f"layer{stage}", self._stage(block, max(1, round(planes * width)), blocks, stride))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, classes)

    def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(*conv_bn(self.inplanes, planes * block.expansion, 1, stride))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomised(net: nn.Module, seed: int = 0) -> nn.Module:
    """He-scaled convolutions, batch norm with weights around 1 and non-trivial running
    statistics (so that eval mode is not the identity), an fc with spread-out biases."""
    generator = torch.Generator().manual_seed(seed)

    def draw(tensor, scale=1.0, shift=0.0, uniform=False):
        values = torch.rand(tensor.shape, generator=generator) if uniform else \
            torch.randn(tensor.shape, generator=generator)
        tensor.copy_(values * scale + shift)

    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                draw(module.weight, (2 / module.weight[0].numel()) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                draw(module.weight, 1.0, 0.5, uniform=True)
                draw(module.bias, 0.1)
                draw(module.running_mean, 0.2)
                draw(module.running_var, 1.5, 0.5, uniform=True)
                module.num_batches_tracked.fill_(7)
            elif isinstance(module, nn.Linear):
                draw(module.weight, module.in_features ** -0.5)
                module.bias.copy_(torch.linspace(-1, 1, module.out_features))
    return net


def as_cnnkit(array: np.ndarray, key: str) -> np.ndarray:
    """One torch array in cnnkit's layout: convolutions OIHW -> HWIO, fc (out, in) -> (in, out)."""
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    return array.T if key == "fc.weight" else array


def as_torch(array: np.ndarray, key: str) -> np.ndarray:
    """One cnnkit array in torch's layout (the inverse of :func:`as_cnnkit`)."""
    if array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    return array.T if key == "fc.weight" else array


def cnnkit_state(net: nn.Module) -> dict[str, np.ndarray]:
    """``net``'s weights under the same keys in cnnkit's layouts (no bookkeeping counters)."""
    return {key: np.ascontiguousarray(as_cnnkit(value.detach().numpy(), key))
            for key, value in net.state_dict().items() if not key.endswith("num_batches_tracked")}


def images(batch: int = 2, size: int = 64, seed: int = 1):
    """The same random images as a torch NCHW tensor and a NumPy NHWC array."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return x, x.permute(0, 2, 3, 1).numpy().copy()


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest difference over the largest magnitude of the reference."""
    return float(np.abs(actual - expected).max() / np.abs(expected).max())
