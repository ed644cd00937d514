"""One benchmark case in one framework, in its own process; prints a JSON line of timings.

Run by ``benchmarks/run.py``; never imports both frameworks (their thread pools would fight).
    python -m benchmarks.worker --framework cnnkit --case vgg16_infer_b8 --repeats 5
    python -m benchmarks.worker --framework torch --case resnet18_train_b32 --repeats 1 --size 32   # a quick check

``--size`` changes the image size of the ResNet and MobileNetV2 cases (224 by default, as timed) to check
quickly that one runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

VGG16_CONV_SHAPES = [  # (spatial size, input channels, filters), each distinct 3x3 convolution of VGG16
    (224, 3, 64), (224, 64, 64), (112, 64, 128), (112, 128, 128), (56, 128, 256), (56, 256, 256),
    (28, 256, 512), (28, 512, 512), (14, 512, 512)]
CONV_BATCH = 8
SMALL_BATCH = 128
#: Training steps run before timing, in both frameworks: the first steps of a process also pay
#: for growing the heap (fresh pages from the kernel), which a real training run pays once.
TRAIN_WARMUP = 3
#: ResNet cases: (depth, training?) by case-name prefix; the batch is the number after "_b"
RESNET_CASES = {"resnet50_infer": (50, False), "resnet18_train": (18, True)}
MOBILENET_INFER = "mobilenet_v2_infer_b"
#: torchvision's MobileNetV2 blocks: (expansion t, output channels c, blocks n, first stride s)
MOBILENET_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                     (6, 320, 1, 1))


def resnet_case(case: str) -> tuple[int, bool, int] | None:
    """``(depth, training, batch)`` of a ResNet case such as ``resnet50_infer_b8``, else None."""
    prefix, _, batch = case.rpartition("_b")
    if prefix not in RESNET_CASES or not batch.isdigit():
        return None
    return (*RESNET_CASES[prefix], int(batch))


def mobilenet_batch(case: str) -> int | None:
    """The batch of a MobileNetV2 inference case such as ``mobilenet_v2_infer_b8``, else None."""
    batch = case[len(MOBILENET_INFER):]
    return int(batch) if case.startswith(MOBILENET_INFER) and batch.isdigit() else None


def conv_case_name(size: int, cin: int, cout: int) -> str:
    return f"conv_{size}x{size}x{cin}_to_{cout}"


def conv_flops(size: int, cin: int, cout: int, batch: int = CONV_BATCH) -> float:
    """Direct-algorithm floating point operations of one forward: 2 * multiply-adds."""
    return 2.0 * batch * size * size * cout * 9 * cin


def time_calls(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# ----------------------------------------------------------------- cnnkit

def cnnkit_small_net():
    from cnnkit import Sequential
    from cnnkit.layers import Conv2d, Dense, Flatten, MaxPool2d, ReLU
    layers = []
    for width in (32, 64, 128):
        layers += [Conv2d(width, 3, padding=1), ReLU(), Conv2d(width, 3, padding=1), ReLU(), MaxPool2d(2)]
    layers += [Flatten(), Dense(256), ReLU(), Dense(10)]
    return Sequential(layers, input_shape=(32, 32, 3))


def cnnkit_resnet(depth: int, training: bool, batch: int, size: int, repeats: int) -> dict:
    import cnnkit
    from cnnkit.optim import SGD
    from cnnkit.train import train_step
    rng = np.random.default_rng(0)
    model = getattr(cnnkit.models, f"resnet{depth}")(input_shape=(size, size, 3))
    x = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    if not training:
        return {"times": time_calls(lambda: model.forward(x), repeats), "images": batch}
    y = rng.integers(0, 1000, batch)
    optimizer = SGD(lr=1e-4, momentum=0.9, params=model.parameters())
    return {"times": time_calls(lambda: train_step(model, optimizer, x, y), repeats, TRAIN_WARMUP), "images": batch}


def cnnkit_case(case: str, repeats: int, image_size: int = 224) -> dict:
    import cnnkit
    from cnnkit.optim import SGD
    from cnnkit.train import train_step
    rng = np.random.default_rng(0)
    if resnet_case(case):
        return cnnkit_resnet(*resnet_case(case), image_size, repeats)
    if mobilenet_batch(case):
        batch = mobilenet_batch(case)
        model = cnnkit.models.mobilenet_v2(input_shape=(image_size, image_size, 3))
        x = rng.standard_normal((batch, image_size, image_size, 3), dtype=np.float32)
        return {"times": time_calls(lambda: model.forward(x), repeats), "images": batch}
    if case.startswith("vgg16_infer_b"):
        batch = int(case.rsplit("b", 1)[1])
        model = cnnkit.models.vgg16()
        x = rng.standard_normal((batch, 224, 224, 3), dtype=np.float32)
        return {"times": time_calls(lambda: model.forward(x), repeats), "images": batch}
    if case in ("vgg16_train_b8", "small_train_b128"):
        batch = 8 if case == "vgg16_train_b8" else SMALL_BATCH
        model = cnnkit.models.vgg16(classifier_activation=None) if batch == 8 else cnnkit_small_net()
        size = 224 if batch == 8 else 32
        x = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
        y = rng.integers(0, model.output_shape[-1], batch)
        optimizer = SGD(lr=1e-4, momentum=0.9, params=model.parameters())
        return {"times": time_calls(lambda: train_step(model, optimizer, x, y), repeats, TRAIN_WARMUP),
                "images": batch}
    for size, cin, cout in VGG16_CONV_SHAPES:
        if case == conv_case_name(size, cin, cout):
            layer = cnnkit.layers.Conv2d(cout, 3, padding=1)
            layer.build((size, size, cin), rng)
            x = rng.standard_normal((CONV_BATCH, size, size, cin), dtype=np.float32)
            dy = rng.standard_normal((CONV_BATCH, size, size, cout), dtype=np.float32)
            forward = time_calls(lambda: layer.forward(x, training=True), repeats)
            backward = []
            for _ in range(repeats + 1):
                layer.zero_grad()
                layer.forward(x, training=True)
                start = time.perf_counter()
                layer.backward(dy)
                backward.append(time.perf_counter() - start)
            return {"times": forward, "backward": backward[1:], "flops": conv_flops(size, cin, cout)}
    raise SystemExit(f"unknown case {case}")


# ----------------------------------------------------------------- PyTorch

def torch_vgg16(nn):
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


def torch_resnet_case(depth: int, training: bool, batch: int, size: int, repeats: int) -> dict:
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = torch_resnet(nn, depth)
    x = torch.randn(batch, 3, size, size)
    if not training:
        model.eval()

        def infer():
            with torch.inference_mode():
                model(x)
        return {"times": time_calls(infer, repeats), "images": batch}
    y = torch.randint(0, 1000, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return {"times": time_calls(step, repeats, TRAIN_WARMUP), "images": batch}


def torch_case(case: str, repeats: int, image_size: int = 224) -> dict:
    import torch
    from torch import nn
    torch.manual_seed(0)
    if resnet_case(case):
        return torch_resnet_case(*resnet_case(case), image_size, repeats)
    if mobilenet_batch(case):
        model = torch_mobilenet_v2(nn).eval()
        x = torch.randn(mobilenet_batch(case), 3, image_size, image_size)

        def infer_mobilenet():
            with torch.inference_mode():
                model(x)
        return {"times": time_calls(infer_mobilenet, repeats), "images": mobilenet_batch(case)}
    if case.startswith("vgg16_infer_b"):
        batch = int(case.rsplit("b", 1)[1])
        model = torch_vgg16(nn).eval()
        x = torch.randn(batch, 3, 224, 224)

        def infer():
            with torch.inference_mode():
                model(x)
        return {"times": time_calls(infer, repeats), "images": batch}
    if case in ("vgg16_train_b8", "small_train_b128"):
        batch = 8 if case == "vgg16_train_b8" else SMALL_BATCH
        model = torch_vgg16(nn) if batch == 8 else torch_small_net(nn)
        size = 224 if batch == 8 else 32
        x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step():
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return {"times": time_calls(step, repeats, TRAIN_WARMUP), "images": batch}
    for size, cin, cout in VGG16_CONV_SHAPES:
        if case == conv_case_name(size, cin, cout):
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            x = torch.randn(CONV_BATCH, cin, size, size, requires_grad=True)
            dy = torch.randn(CONV_BATCH, cout, size, size)
            forward = time_calls(lambda: conv(x), repeats)
            backward = []
            for _ in range(repeats + 1):
                conv.zero_grad()
                x.grad = None
                y = conv(x)
                start = time.perf_counter()
                y.backward(dy)
                backward.append(time.perf_counter() - start)
            return {"times": forward, "backward": backward[1:], "flops": conv_flops(size, cin, cout)}
    raise SystemExit(f"unknown case {case}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=("cnnkit", "torch"), required=True)
    parser.add_argument("--case", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="image size of the ResNet and MobileNetV2 cases (224 when timed)")
    args = parser.parse_args()
    run = cnnkit_case if args.framework == "cnnkit" else torch_case
    result = run(args.case, args.repeats, args.size)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
