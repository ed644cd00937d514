"""Fuzz every file reader: mutants of a valid file are read or refused with a CnnkitError,
never a crash, a hang, another exception, or an allocation beyond the memory limit.

Each format runs in one subprocess (``_worker.py``) under ``RLIMIT_AS`` and a time limit per
read, looping over hypothesis-generated mutations: bytes flipped, inserted, deleted, the file
cut short, integers overwritten with edge values, numbers in text headers replaced.
``CNNKIT_FUZZ_EXAMPLES`` sets the mutations per format (default 25, the same ones every run,
so ``make test`` stays fast; ``make fuzz`` runs 2,000 fresh ones). The workers run side by
side: each is mostly interpreter start-up. ``CNNKIT_FUZZ_MEMORY_MB`` (768) is what one read
may allocate above the worker's baseline; ``CNNKIT_FUZZ_READ_TIMEOUT`` (10 s) bounds one read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="the fuzz workers draw mutations with hypothesis")

EXAMPLES = int(os.environ.get("CNNKIT_FUZZ_EXAMPLES", "25"))
MEMORY_MB = int(os.environ.get("CNNKIT_FUZZ_MEMORY_MB", "768"))
READ_TIMEOUT = float(os.environ.get("CNNKIT_FUZZ_READ_TIMEOUT", "10"))
# make test: the same mutations every run; make fuzz: new ones each time.
DERANDOMIZE = os.environ.get("CNNKIT_FUZZ_RANDOM", "0") != "1"
WORKER = Path(__file__).with_name("_worker.py")
ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)


def _torch_state_dict():
    torch = pytest.importorskip("torch", reason="the .pth base files are written by torch.save")
    gen = torch.Generator().manual_seed(0)
    sd = OrderedDict()
    sd["features.0.weight"] = torch.randn(4, 3, 3, 3, generator=gen)
    sd["features.0.bias"] = torch.randn(4, generator=gen)
    sd["classifier.0.weight"] = torch.randn(5, 16, generator=gen)[:, ::2]  # a strided view
    sd["classifier.0.bias"] = torch.arange(5, dtype=torch.int64)
    sd["bn.running_mean"] = torch.randn(4, generator=gen).to(torch.float16)
    return torch, sd


def _torch_file(folder: Path, fmt: str):
    torch, sd = _torch_state_dict()
    path = folder / f"base-{fmt}.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path, {name: tensor.contiguous().numpy() for name, tensor in sd.items()}


def _safetensors_file(folder: Path):
    from cnnkit.io import write_safetensors

    arrays = {"conv.weight": RNG.standard_normal((3, 3, 2, 4)).astype(np.float32),
              "conv.bias": np.arange(4, dtype=np.float64), "steps": np.array(7, np.int64)}
    path = folder / "base.safetensors"
    write_safetensors(path, arrays, {"note": "fuzz base 123"})
    return path, dict(sorted(arrays.items()))


def _h5_file(folder: Path):
    h5py = pytest.importorskip("h5py", reason="the Keras reader needs the optional h5py")
    kernel = RNG.standard_normal((3, 3, 3, 4)).astype(np.float32)
    bias = RNG.standard_normal(4).astype(np.float32)
    path = folder / "base.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"block1_conv1", b"block1_pool"]
        group = f.create_group("block1_conv1")
        group.attrs["weight_names"] = [b"block1_conv1/kernel:0", b"block1_conv1/bias:0"]
        group.create_dataset("block1_conv1/kernel:0", data=kernel)
        group.create_dataset("block1_conv1/bias:0", data=bias)
        f.create_group("block1_pool").attrs["weight_names"] = np.array([], dtype="S1")
    return path, {"block1_conv1/kernel": kernel, "block1_conv1/bias": bias}


def _keras3_files(folder: Path, form: str):
    """A small model saved by real Keras 3 (torch backend) as ``.weights.h5`` or ``.keras``: layer
    paths numbered by class, the ``name`` attribute of each layer, config.json, a batch norm's four
    variables and a dense layer without bias. Read by ``read_weights``, which names them."""
    keras = pytest.importorskip("keras", reason="the Keras 3 base files are written by Keras")
    keras.utils.set_random_seed(0)
    layers = keras.layers
    with warnings.catch_warnings():   # Keras 3.15 on torch 2.13 warns about NumPy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        model = keras.Sequential([keras.Input((6, 6, 3)), layers.Conv2D(4, 3, name="block1_conv1"),
                                  layers.BatchNormalization(name="block1_bn1"), layers.MaxPooling2D(name="block1_pool"),
                                  layers.Conv2D(2, 1, name="block2_conv1"), layers.Flatten(),
                                  layers.Dense(3, use_bias=False, name="fc1")])
        path = folder / ("base.weights.h5" if form == "weights.h5" else "base.keras")
        model.save_weights(path) if form == "weights.h5" else model.save(path)
        expected = {f"{layer.name}/{variable.path.rpartition('/')[2]}": np.array(variable.numpy())
                    for layer in model.layers for variable in layer.weights}
    return path, expected


def _model_file(folder: Path):
    from cnnkit.layers import BatchNorm2d, Conv2d, Dense, Flatten, MaxPool2d, ReLU
    from cnnkit.model import Sequential

    model = Sequential([Conv2d(4, 3, padding="same", name="conv1"), BatchNorm2d(name="bn1"), ReLU(),
                        MaxPool2d(2), Flatten(), Dense(3, name="fc")], input_shape=(6, 6, 2))
    path = folder / "base.safetensors"
    model.save(path)
    return path, {name: np.array(value) for name, value in model.state_dict().items()}


def _graph_model_file(folder: Path):
    """A graph model file: a residual block (projection and identity shortcuts), a concatenation,
    a layer at two nodes, batch norm with frozen statistics, a frozen layer, two inputs and outputs."""
    import cnnkit
    from cnnkit.layers import Add, BatchNorm2d, Concatenate, Conv2d, Dense, Flatten, GlobalAvgPool2d, ReLU

    image, side = cnnkit.Input((6, 6, 2), name="image"), cnnkit.Input((6, 6, 1), name="side")
    y = ReLU()(BatchNorm2d(name="bn1", frozen_stats=True)(Conv2d(4, 3, padding=1, name="conv1")(image)))
    y = Add()([y, Conv2d(4, 1, name="proj")(image)])
    shared = Conv2d(4, 3, padding=1, name="shared")
    y = shared(Add()([ReLU()(shared(y)), y]))
    y = Concatenate()([y, Conv2d(2, 1, name="side_conv")(side)])
    model = cnnkit.Model([image, side], [Dense(3, name="fc")(Flatten()(y)), Dense(2, name="aux")(GlobalAvgPool2d()(y))],
                         name="graph")
    model.freeze("proj")
    path = folder / "base.safetensors"
    model.save(path)
    return path, {name: np.array(value) for name, value in model.state_dict().items()}


def _shape_layers_model_file(folder: Path):
    """A graph model file with the layers whose configs hold shapes and constants: Rescaling's
    buffers (a shape in the config), asymmetric and reflect padding, ceil-mode pooling, Permute,
    Reshape, Subtract and the channels-first Flatten."""
    import cnnkit
    from cnnkit.layers import (AvgPool2d, Conv2d, Dense, Flatten, MaxPool2d, Padding2d, Permute, Rescaling, Reshape,
                               Subtract)

    image = cnnkit.Input((7, 6, 2), name="image")
    x = Rescaling(RNG.standard_normal((1, 6, 2)), np.array([0.5, -0.5]), name="norm")(image)
    x = Padding2d(((1, 0), (2, 1)), mode="reflect", name="pad")(x)
    x = Conv2d(4, 3, padding=((0, 1), (1, 0)), name="conv")(x)
    x = MaxPool2d(2, 2, padding=((1, 0), (0, 1)), ceil_mode=True, name="pool")(x)
    y = Reshape((-1, 4), name="regroup")(Permute((2, 1, 3), name="swap")(x))
    x = Subtract(name="diff")([Reshape((-1, 4), name="flat_grid")(x), y])
    x = AvgPool2d((2, 1), padding=((0, 1), (0, 0)), ceil_mode=True, count_include_pad=True, name="avg")(
        Reshape((-1, 1, 4), name="column")(x))
    model = cnnkit.Model(image, Dense(3, name="fc")(Flatten("channels_first", name="flat")(x)), name="shapes")
    path = folder / "base.safetensors"
    model.save(path)
    return path, {name: np.array(value) for name, value in model.state_dict().items()}


def _image_file(folder: Path, fmt: str):
    from PIL import Image

    pixels = (RNG.random((12, 16, 3)) * 255).astype(np.uint8)
    path = folder / f"base.{fmt}"
    Image.fromarray(pixels).save(path, quality=90) if fmt == "jpg" else Image.fromarray(pixels).save(path)
    with Image.open(path) as im:  # what a correct decoder gives, lossy or not
        decoded = np.asarray(im.convert("RGB"), dtype=np.float32)
    return path, {"image": decoded}


def _onnx_model():
    """A small CNN as ONNX: raw and typed tensors of several dtypes, every plain attribute type,
    a Constant's tensor attribute, symbolic dims and value_info; nodes written out of order."""
    onnx = pytest.importorskip("onnx", reason="the ONNX base files are built with onnx.helper")
    from onnx import TensorProto, helper, numpy_helper

    arrays = {"conv.weight": RNG.standard_normal((4, 2, 3, 3)).astype(np.float32),
              "bn.scale": RNG.random(4).astype(np.float16), "bn.bias": np.arange(4, dtype=np.float64),
              "bn.mean": np.zeros(4, np.float32), "bn.var": np.ones(4, np.float32),
              "fc.weight": RNG.standard_normal((3, 36)).astype(np.float32), "shape": np.array([-1, 36], np.int64),
              "const.value": np.array([0.5, -2.0], np.float32)}
    tensors = [numpy_helper.from_array(array, name) for name, array in arrays.items() if name != "const.value"]
    tensors.append(helper.make_tensor("fc.bias", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]))   # float_data
    tensors.append(helper.make_tensor("mask", TensorProto.INT8, [2], [-1, 7]))                # int32_data
    arrays.update({"fc.bias": np.array([1.0, 2.0, 3.0], np.float32), "mask": np.array([-1, 7], np.int8)})
    nodes = [
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1, alpha=1.0),
        helper.make_node("Conv", ["x", "conv.weight", ""], ["c"], name="conv", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], auto_pad="NOTSET"),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"],
                         name="bn", epsilon=1e-5),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["flat"], name="reshape"),
        helper.make_node("Constant", [], ["k"], name="const", value=numpy_helper.from_array(arrays["const.value"])),
        helper.make_node("Add", ["y", "k"], ["z"], name="add", tags=["a", "b"], weights=[0.5, 1.5]),
    ]
    graph = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])], tensors,
                              value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4, 6, 6])])
    return onnx, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), arrays


def _onnx_file(folder: Path, external: bool):
    """The model above as one .onnx file, or with its tensors in ``weights.bin`` beside it (the
    worker copies it next to each mutant, so mutated locations, offsets and lengths are read)."""
    onnx, model, arrays = _onnx_model()
    path = folder / "base.onnx"
    if external:
        onnx.save_model(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    else:
        path.write_bytes(model.SerializeToString())
    return path, arrays


FORMATS = {
    "pth-zip": ("torch", ".pth", lambda d: _torch_file(d, "zip")),
    "pth-legacy": ("torch", ".pth", lambda d: _torch_file(d, "legacy")),
    "safetensors": ("safetensors", ".safetensors", _safetensors_file),
    "h5": ("h5", ".h5", _h5_file),
    "keras3-weights-h5": ("weights", ".weights.h5", lambda d: _keras3_files(d, "weights.h5")),
    "keras3-archive": ("weights", ".keras", lambda d: _keras3_files(d, "keras")),
    "model": ("model", ".safetensors", _model_file),
    "graph-model": ("model", ".safetensors", _graph_model_file),
    "shape-layers-model": ("model", ".safetensors", _shape_layers_model_file),
    "png": ("image", ".png", lambda d: _image_file(d, "png")),
    "jpeg": ("image", ".jpg", lambda d: _image_file(d, "jpg")),
    "onnx": ("onnx", ".onnx", lambda d: _onnx_file(d, external=False)),
    "onnx-external": ("onnx", ".onnx", lambda d: _onnx_file(d, external=True)),
}


def _start_worker(folder: Path, fmt: str) -> subprocess.Popen:
    reader, suffix, make = FORMATS[fmt]
    base, expected = make(folder)
    np.savez(folder / "expected.npz", **expected)
    spec = {"format": fmt, "reader": reader, "suffix": suffix, "base": str(base),
            "expected": str(folder / "expected.npz"), "names": list(expected),
            "examples": EXAMPLES, "memory_mb": MEMORY_MB, "read_timeout": READ_TIMEOUT,
            "derandomize": DERANDOMIZE,
            "companions": [str(file) for file in folder.iterdir() if file != base and file.suffix == ".bin"]}
    (folder / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "CNNKIT_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, str(WORKER), str(folder / "spec.json")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return worker


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """Start every format's worker at once (they are mostly start-up time), then wait for each."""
    started: dict[str, subprocess.Popen | str] = {}
    for fmt in FORMATS:
        try:
            started[fmt] = _start_worker(tmp_path_factory.mktemp(fmt), fmt)
        except pytest.skip.Exception as skip:
            started[fmt] = str(skip)
    yield started
    for worker in started.values():
        if isinstance(worker, subprocess.Popen) and worker.poll() is None:
            worker.kill()
            worker.wait()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_mutated_files_are_read_or_refused(workers, fmt):
    worker = workers[fmt]
    if isinstance(worker, str):
        pytest.skip(worker)
    budget = 120 + EXAMPLES * 0.5  # reads take milliseconds; start-up takes seconds
    try:
        stdout, stderr = worker.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        worker.kill()
        stdout, stderr = worker.communicate()
        pytest.fail(f"{fmt}: the fuzz worker hung (more than {budget:.0f} s); output:\n{stdout}\n{stderr[-4000:]}")
    assert worker.returncode >= 0, f"{fmt}: the worker died of signal {-worker.returncode}:\n{stderr[-4000:]}"
    assert worker.returncode == 0, f"{fmt}: a mutant was mishandled:\n{stdout[-2000:]}\n{stderr[-6000:]}"
    summary = json.loads(stdout.strip().splitlines()[-1])
    print(f"\nfuzz {json.dumps(summary)}")
    assert summary["mutations"] >= EXAMPLES
