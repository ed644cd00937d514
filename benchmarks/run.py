"""cnnkit against PyTorch (NCHW, channels_last), ONNX Runtime and OpenVINO on the CPU, in one run.

Writes Markdown tables (``benchmarks/results.md`` unless ``--out``) and prints them.

Each measurement runs in its own process (the engines' thread pools fight when they share one),
the engines alternate (these machines are shared and noisy: the order is reversed every other
round), and the tables report medians over every timed run and cnnkit's speed ratio to the
fastest other engine. ONNX Runtime and OpenVINO run the inference cases only, on the torch
network exported to ONNX (``benchmarks/onnx_engines.py``). An engine whose package is missing
drops out of the tables with a note; one that fails on a case gets ``-`` there and a note.

    python -m benchmarks.run                      # everything, 2 rounds x 5 runs per engine (make bench)
    python -m benchmarks.run --cases vgg16_infer_b8 --rounds 3
    python -m benchmarks.run --cases small_infer_b128 --engines cnnkit onnxruntime
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import ENGINE_PACKAGES, available_engines, engines_for, rss_table, time_table, versions_line
from benchmarks.worker import ENGINES, VGG16_CONV_SHAPES, conv_case_name

HERE = Path(__file__).resolve().parent

MODEL_CASES = ["vgg16_infer_b1", "vgg16_infer_b8", "small_infer_b128", "small_train_b128", "vgg16_train_b8",
               "resnet50_infer_b1", "resnet50_infer_b8", "resnet18_train_b32", "mobilenet_v2_infer_b8"]
CONV_CASES = [conv_case_name(*shape) for shape in VGG16_CONV_SHAPES]
#: The single convolutions compare cnnkit with PyTorch's default layout only.
CONV_ENGINES = ("cnnkit", "torch")


class WorkerFailed(Exception):
    """A worker process exited with an error; the message is the end of its stderr."""


def run_worker(engine: str, case: str, repeats: int, size: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.worker", "--framework", engine, "--case", case,
               "--repeats", str(repeats), "--size", str(size)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise WorkerFailed(last)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(case: str, engines: list[str], rounds: int, repeats: int, notes: list[str],
            size: int = 224) -> dict[str, dict]:
    """Alternate the engines' processes ``rounds`` times and pool every timed run; an engine that
    fails is dropped from this case with a note."""
    pooled: dict[str, dict] = {engine: {"times": [], "backward": [], "peak_rss_mib": []} for engine in engines}
    for round_index in range(rounds):
        order = engines if round_index % 2 == 0 else engines[::-1]
        for engine in order:
            if engine not in pooled:
                continue
            try:
                result = run_worker(engine, case, repeats, size)
            except WorkerFailed as error:
                notes.append(f"{case}: {engine} failed ({error}); its cell is -.")
                del pooled[engine]
                continue
            pooled[engine]["times"] += result["times"]
            pooled[engine]["backward"] += result.get("backward", [])
            pooled[engine]["peak_rss_mib"].append(result["peak_rss_mib"])
            for key in ("images", "flops"):
                if key in result:
                    pooled[engine][key] = result[key]
        print(f"  {case}: round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    return pooled


def medians(data: dict[str, dict], key: str) -> dict[str, float]:
    """The median of ``key`` per engine that measured it."""
    return {engine: statistics.median(runs[key]) for engine, runs in data.items() if runs[key]}


def conv_row(case: str, data: dict[str, dict]) -> str:
    if any(engine not in data for engine in CONV_ENGINES):
        return f"| {case} |" + " - |" * 6
    flops = data["cnnkit"]["flops"]
    forward = [statistics.median(data[engine]["times"]) for engine in CONV_ENGINES]
    backward = [statistics.median(data[engine]["backward"]) for engine in CONV_ENGINES]
    # backward computes two products (input and weight gradients) of the forward's size
    return (f"| {case} | {flops / forward[0] / 1e9:.0f} | {flops / forward[1] / 1e9:.0f} | "
            f"**{forward[1] / forward[0]:.2f}x** | {2 * flops / backward[0] / 1e9:.0f} | "
            f"{2 * flops / backward[1] / 1e9:.0f} | **{backward[1] / backward[0]:.2f}x** |")


def installed(package: str) -> bool:
    """Can ``package`` be imported here (found without importing it)?"""
    return importlib.util.find_spec(package) is not None


def version(package: str) -> str | None:
    """The installed version of ``package``, None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine(engines: list[str]) -> str:
    """The CPU, its cores, and the version of Python, NumPy and each engine's package (read from the
    installed metadata: this process imports no engine)."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"Python": platform.python_version(), "NumPy": version("numpy"), "Numba": version("numba"),
                "cnnkit": version("cnnkit")}
    used = {package for engine in engines for package in ENGINE_PACKAGES[engine]}
    for package, name in (("torch", "PyTorch"), ("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO")):
        if package in used:
            versions[name] = version(package)
    return f"{cpu}, {os.cpu_count()} cores; " + versions_line(versions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=MODEL_CASES + CONV_CASES, choices=MODEL_CASES + CONV_CASES,
                        metavar="CASE", help=f"cases to run (default: all): {', '.join(MODEL_CASES + CONV_CASES)}")
    parser.add_argument("--engines", nargs="*", default=list(ENGINES), choices=ENGINES,
                        help="engines to compare (default: every one installed)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the engines per case")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per process (after a warm-up)")
    parser.add_argument("--size", type=int, default=224,
                        help="image size of the ResNet and MobileNetV2 cases (224 when timed; smaller for a check)")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    engines, notes = available_engines(installed, args.engines)
    models = [c for c in args.cases if c in MODEL_CASES]
    convs = [c for c in args.cases if c in CONV_CASES]
    lines = [f"Measured {started} on {machine(engines)}; each engine in its own process, alternating; medians of "
             f"{args.rounds} x {args.repeats} runs per engine; every engine on the same number of threads. "
             f"cnnkit / fastest = cnnkit's speed over the fastest other engine's (above 1: cnnkit is faster).", ""]
    if args.size != 224:
        lines[0] += (f" ResNet and MobileNetV2 on {args.size}x{args.size} images: a check that they run, "
                     f"not the timed size.")
    if models:
        measured = [(case, measure(case, engines_for(case, engines), args.rounds, args.repeats, notes, args.size))
                    for case in models]
        lines += time_table([(case, medians(data, "times")) for case, data in measured], engines) + [""]
        lines += ["Peak resident memory of each engine's process (median over its processes):", ""]
        lines += rss_table([(case, medians(data, "peak_rss_mib")) for case, data in measured], engines) + [""]
    conv_engines = [engine for engine in CONV_ENGINES if engine in engines]
    if convs and conv_engines != list(CONV_ENGINES):
        notes.append("The single convolutions compare cnnkit with PyTorch, which is not installed: left out.")
    elif convs:
        lines += ["VGG16 convolutions, batch 8, 3x3 padding 1; effective GFLOP/s = direct-algorithm FLOPs / time; "
                  "cnnkit against PyTorch NCHW.", "",
                  "| shape (H x W x C to N) | cnnkit fwd GFLOP/s | PyTorch fwd | fwd ratio | cnnkit bwd GFLOP/s | "
                  "PyTorch bwd | bwd ratio |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [conv_row(case, measure(case, conv_engines, args.rounds, args.repeats, notes)) for case in convs]
        lines.append("")
    lines += [f"- {note}" for note in notes]
    table = "\n".join(lines).rstrip() + "\n"
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
