"""The benchmark's networks written out in plain torch modules (torchvision is not a dependency).

Each builder takes ``torch.nn`` (so that importing this module imports no torch) and builds the
same architecture as its cnnkit counterpart in ``cnnkit.models``, with torch's own random
initialisation: the benchmark compares speed, never values. The ONNX engines run these same
networks, exported by ``benchmarks/onnx_engines.py``.
"""

from __future__ import annotations

#: torchvision's MobileNetV2 blocks: (expansion t, output channels c, blocks n, first stride s)
MOBILENET_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                     (6, 320, 1, 1))


def torch_vgg16(nn):
    """VGG16 (configuration D) with its 1,000-class classifier, as ``cnnkit.models.vgg16`` builds it."""
    layers, channels = [], 3
    for block, (width, convs) in enumerate(zip((64, 128, 256, 512, 512), (2, 2, 3, 3, 3))):
        for _ in range(convs):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.MaxPool2d(2, 2))
    layers += [nn.Flatten(), nn.Linear(25088, 4096), nn.ReLU(inplace=True), nn.Dropout(),
               nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(4096, 1000)]
    return nn.Sequential(*layers)


def torch_small_net(nn):
    """The small VGG-style network on 32x32x3 of ``benchmarks.worker.cnnkit_small_net``."""
    layers, channels = [], 3
    for width in (32, 64, 128):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True),
                   nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = width
    layers += [nn.Flatten(), nn.Linear(128 * 16, 256), nn.ReLU(inplace=True), nn.Linear(256, 10)]
    return nn.Sequential(*layers)


def torch_resnet(nn, depth: int):
    """torchvision's ResNet (v1.5) written out in plain modules: torchvision is not a dependency."""
    counts = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    expansion = 1 if depth < 50 else 4

    def conv_bn(cin, cout, kernel, stride=1):
        return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            if expansion == 1:
                branch = conv_bn(cin, planes, 3, stride) + [nn.ReLU(inplace=True)] + conv_bn(planes, planes, 3)
            else:
                branch = (conv_bn(cin, planes, 1) + [nn.ReLU(inplace=True)] + conv_bn(planes, planes, 3, stride)
                          + [nn.ReLU(inplace=True)] + conv_bn(planes, planes * 4, 1))
            self.branch = nn.Sequential(*branch)
            changes = stride != 1 or cin != planes * expansion
            self.downsample = nn.Sequential(*conv_bn(cin, planes * expansion, 1, stride)) if changes else None
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            shortcut = x if self.downsample is None else self.downsample(x)
            return self.relu(self.branch(x) + shortcut)

    layers, channels = conv_bn(3, 64, 7, 2) + [nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)], 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), counts)):
        for index in range(blocks):
            layers.append(Block(channels, planes, 2 if stage > 0 and index == 0 else 1))
            channels = planes * expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 1000)]
    return nn.Sequential(*layers)


def torch_mobilenet_v2(nn):
    """torchvision's MobileNetV2 (width 1) written out in plain modules: torchvision is not a dependency."""
    def conv_bn_relu6(cin, cout, kernel, stride=1, groups=1):
        return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU6(inplace=True)]

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expansion):
            super().__init__()
            hidden = cin * expansion
            expand = conv_bn_relu6(cin, hidden, 1) if expansion != 1 else []
            self.branch = nn.Sequential(*expand, *conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                                        nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.branch(x) if self.residual else self.branch(x)

    layers, channels = conv_bn_relu6(3, 32, 3, 2), 32
    for expansion, cout, blocks, stride in MOBILENET_SETTING:   # width 1: every count is a multiple of 8
        for index in range(blocks):
            layers.append(InvertedResidual(channels, cout, stride if index == 0 else 1, expansion))
            channels = cout
    layers += conv_bn_relu6(channels, 1280, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)

