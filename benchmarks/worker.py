"""One benchmark case on one engine, in its own process; prints a JSON line of timings.

Run by ``benchmarks/run.py``; never imports two engines (their thread pools would fight): the ONNX
engines export their network in a child process (``benchmarks/onnx_engines.py``).
    python -m benchmarks.worker --framework cnnkit --case vgg16_infer_b8 --repeats 5
    python -m benchmarks.worker --framework torch --case resnet18_train_b32 --repeats 1 --size 32   # a quick check
    python -m benchmarks.worker --framework openvino --case mobilenet_v2_infer_b8 --repeats 1 --size 32

Engines: ``cnnkit``; ``torch`` (PyTorch, NCHW) and ``torch_cl`` (PyTorch with the model and the
input in ``channels_last`` memory format); ``onnxruntime`` and ``openvino`` (inference cases only).
Every engine runs on :func:`engine_threads` threads. ``--size`` changes the image size of the
ResNet and MobileNetV2 cases (224 by default, as timed) to check quickly that one runs.
"""

from __future__ import annotations

import argparse
import json
import os
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
SMALL_INFER = "small_infer_b128"
ENGINES = ("cnnkit", "torch", "torch_cl", "onnxruntime", "openvino")
#: Engines that run inference only
INFERENCE_ENGINES = ("onnxruntime", "openvino")


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


def is_training(case: str) -> bool:
    """Does ``case`` time a training step (forward, backward and the optimizer's update)?"""
    return "_train_b" in case


def engine_threads() -> int:
    """Threads every engine runs on: ``CNNKIT_NUM_THREADS``, else the cores this process may use
    (cnnkit's own default, computed here so that the other engines' workers never import cnnkit)."""
    value = os.environ.get("CNNKIT_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
    if case == SMALL_INFER:
        model = cnnkit_small_net()
        x = rng.standard_normal((SMALL_BATCH, 32, 32, 3), dtype=np.float32)
        return {"times": time_calls(lambda: model.forward(x), repeats), "images": SMALL_BATCH}
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

def torch_inference_model(case: str, image_size: int = 224):
    """``(model in eval mode, NCHW input shape)`` of an inference case, None for other cases; the
    ONNX engines export this same model."""
    import torch
    from torch import nn

    from benchmarks.torch_models import torch_mobilenet_v2, torch_resnet, torch_small_net, torch_vgg16
    torch.manual_seed(0)
    resnet = resnet_case(case)
    if resnet and not resnet[1]:
        model, shape = torch_resnet(nn, resnet[0]), (resnet[2], 3, image_size, image_size)
    elif mobilenet_batch(case):
        model, shape = torch_mobilenet_v2(nn), (mobilenet_batch(case), 3, image_size, image_size)
    elif case.startswith("vgg16_infer_b"):
        model, shape = torch_vgg16(nn), (int(case.rsplit("b", 1)[1]), 3, 224, 224)
    elif case == SMALL_INFER:
        model, shape = torch_small_net(nn), (SMALL_BATCH, 3, 32, 32)
    else:
        return None
    return model.eval(), shape


def torch_training_model(case: str, image_size: int = 224):
    """``(model, NCHW input shape, classes of the labels)`` of a training case, None for other cases."""
    import torch
    from torch import nn

    from benchmarks.torch_models import torch_resnet, torch_small_net, torch_vgg16
    torch.manual_seed(0)
    resnet = resnet_case(case)
    if resnet and resnet[1]:
        return torch_resnet(nn, resnet[0]), (resnet[2], 3, image_size, image_size), 1000
    if case == "vgg16_train_b8":
        return torch_vgg16(nn), (8, 3, 224, 224), 10
    if case == "small_train_b128":
        return torch_small_net(nn), (SMALL_BATCH, 3, 32, 32), 10
    return None


def torch_case(case: str, repeats: int, image_size: int = 224, channels_last: bool = False) -> dict:
    """Time ``case`` in PyTorch, NCHW or with the model and input in ``channels_last`` memory format."""
    import torch
    from torch import nn
    torch.set_num_threads(engine_threads())
    layout = torch.channels_last if channels_last else torch.contiguous_format
    inference = torch_inference_model(case, image_size)
    if inference:
        model, shape = inference
        model, x = model.to(memory_format=layout), torch.randn(shape).to(memory_format=layout)

        def infer():
            with torch.inference_mode():
                model(x)
        return {"times": time_calls(infer, repeats), "images": shape[0]}
    training = torch_training_model(case, image_size)
    if training:
        model, shape, classes = training
        model, x = model.to(memory_format=layout), torch.randn(shape).to(memory_format=layout)
        y = torch.randint(0, classes, (shape[0],))
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step():
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return {"times": time_calls(step, repeats, TRAIN_WARMUP), "images": shape[0]}
    for size, cin, cout in VGG16_CONV_SHAPES:
        if case == conv_case_name(size, cin, cout):
            conv = nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=layout)
            x = torch.randn(CONV_BATCH, cin, size, size).to(memory_format=layout).requires_grad_()
            dy = torch.randn(CONV_BATCH, cout, size, size).to(memory_format=layout)
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


def run_engine(engine: str, case: str, repeats: int, image_size: int) -> dict:
    """Time ``case`` on ``engine``, importing only that engine."""
    if engine == "cnnkit":
        return cnnkit_case(case, repeats, image_size)
    if engine in ("torch", "torch_cl"):
        return torch_case(case, repeats, image_size, channels_last=engine == "torch_cl")
    from benchmarks.onnx_engines import onnx_engine_case
    return onnx_engine_case(engine, case, repeats, image_size)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=ENGINES, required=True, help="the engine to time")
    parser.add_argument("--case", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="image size of the ResNet and MobileNetV2 cases (224 when timed)")
    args = parser.parse_args()
    if args.framework in INFERENCE_ENGINES and is_training(args.case):
        raise SystemExit(f"{args.framework} runs inference only; {args.case} is a training case")
    result = run_engine(args.framework, args.case, args.repeats, args.size)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
