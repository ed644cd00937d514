"""ONNX Runtime and OpenVINO on the benchmark's inference cases.

Both run the network that PyTorch times (``benchmarks.worker.torch_inference_model``: the same
architecture, random weights), exported with ``torch.onnx.export(..., dynamo=False)`` (the
dynamo exporter needs onnxscript) for the case's fixed input shape. The export runs once per
timed process, in a child process of its own, into a temporary folder: the timed process never
imports torch, whose thread pool would compete with the engine's, and the export is not timed.
    python -m benchmarks.onnx_engines --case vgg16_infer_b1 --out /tmp/vgg16.onnx   # the export alone

ONNX Runtime runs with its default session options (every graph optimisation) on the CPU
provider; OpenVINO compiles for ``CPU`` with f32 inference precision (its default on CPUs with
bf16 or f16 units is lower). Both get the thread count of the other engines
(``benchmarks.worker.engine_threads``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.worker import engine_threads, time_calls

HERE = Path(__file__).resolve().parent


def export(case: str, image_size: int, path: Path) -> None:
    """Write the torch model of inference ``case`` to ``path`` as ONNX (TorchScript exporter)."""
    import torch

    from benchmarks.worker import torch_inference_model
    found = torch_inference_model(case, image_size)
    if found is None:
        raise SystemExit(f"{case} is not an inference case; the ONNX engines run inference only")
    model, shape = found
    torch.onnx.export(model, (torch.randn(shape),), str(path), dynamo=False, input_names=["input"],
                      output_names=["scores"])


def export_in_child(case: str, image_size: int, path: Path) -> None:
    """Run :func:`export` in a child process (see the module's docstring for why)."""
    command = [sys.executable, "-m", "benchmarks.onnx_engines", "--case", case, "--size", str(image_size),
               "--out", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
    if done.returncode != 0:
        raise SystemExit(f"exporting {case} to ONNX failed:\n{done.stderr.strip()}")


def onnxruntime_runner(path: Path, threads: int):
    """``(run(x), input shape)`` of an ONNX Runtime session on the file at ``path``."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
    return (lambda x: session.run(None, {name: x})), tuple(shape)


def openvino_runner(path: Path, threads: int):
    """``(run(x), input shape)`` of an OpenVINO model compiled for the CPU at f32 precision."""
    import openvino
    import openvino.properties as props
    import openvino.properties.hint as hints
    config = {hints.inference_precision: openvino.Type.f32, props.inference_num_threads: threads}
    compiled = openvino.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    shape = tuple(compiled.input(0).get_shape())
    return (lambda x: request.infer({0: x})), shape


RUNNERS = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}


def onnx_engine_case(engine: str, case: str, repeats: int, image_size: int = 224) -> dict:
    """Time inference ``case`` on ``engine`` (``onnxruntime`` or ``openvino``); export not timed."""
    with tempfile.TemporaryDirectory(prefix="cnnkit-bench-") as folder:
        path = Path(folder) / f"{case}.onnx"
        export_in_child(case, image_size, path)
        run, shape = RUNNERS[engine](path, engine_threads())   # both engines hold the model in memory now
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return {"times": time_calls(lambda: run(x), repeats), "images": shape[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description="Export an inference case's torch model to ONNX.")
    parser.add_argument("--case", required=True)
    parser.add_argument("--size", type=int, default=224, help="image size of the ResNet and MobileNetV2 cases")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    export(args.case, args.size, args.out)


if __name__ == "__main__":
    main()
