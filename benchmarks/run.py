"""cnnkit against PyTorch on the CPU, side by side in one run; writes a Markdown table.

Each measurement runs in its own process (NumPy's OpenBLAS and torch's thread pools fight when
they share one), the two frameworks alternate (these machines are shared and noisy), and the
table reports medians over every timed run and the ratio cnnkit / PyTorch.

    python -m benchmarks.run                      # everything, 2 rounds x 5 runs per framework (make bench)
    python -m benchmarks.run --cases vgg16_infer_b8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.worker import VGG16_CONV_SHAPES, conv_case_name

HERE = Path(__file__).resolve().parent

MODEL_CASES = ["vgg16_infer_b1", "vgg16_infer_b8", "vgg16_train_b8", "small_train_b128", "resnet50_infer_b1",
               "resnet50_infer_b8", "resnet18_train_b32", "mobilenet_v2_infer_b8"]
CONV_CASES = [conv_case_name(*shape) for shape in VGG16_CONV_SHAPES]
FRAMEWORKS = ("cnnkit", "torch")


def run_worker(framework: str, case: str, repeats: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.worker", "--framework", framework, "--case", case,
               "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=HERE.parent)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(case: str, rounds: int, repeats: int) -> dict[str, dict]:
    """Alternate cnnkit and torch processes ``rounds`` times; pool every timed run."""
    pooled: dict[str, dict] = {fw: {"times": [], "backward": [], "peak_rss_mib": []} for fw in FRAMEWORKS}
    for round_index in range(rounds):
        order = FRAMEWORKS if round_index % 2 == 0 else FRAMEWORKS[::-1]
        for framework in order:
            result = run_worker(framework, case, repeats)
            pooled[framework]["times"] += result["times"]
            pooled[framework]["backward"] += result.get("backward", [])
            pooled[framework]["peak_rss_mib"].append(result["peak_rss_mib"])
            for key in ("images", "flops"):
                if key in result:
                    pooled[framework][key] = result[key]
        print(f"  {case}: round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    return pooled


def model_row(case: str, data: dict[str, dict]) -> str:
    ours, theirs = (statistics.median(data[fw]["times"]) for fw in FRAMEWORKS)
    images = data["cnnkit"]["images"]
    rss = [statistics.median(data[fw]["peak_rss_mib"]) for fw in FRAMEWORKS]
    return (f"| {case} | {images / ours:.2f} | {images / theirs:.2f} | **{theirs / ours:.2f}x** | "
            f"{ours * 1000:.0f} / {theirs * 1000:.0f} | {rss[0]:.0f} / {rss[1]:.0f} |")


def conv_row(case: str, data: dict[str, dict]) -> str:
    flops = data["cnnkit"]["flops"]
    forward = [statistics.median(data[fw]["times"]) for fw in FRAMEWORKS]
    backward = [statistics.median(data[fw]["backward"]) for fw in FRAMEWORKS]
    # backward computes two products (input and weight gradients) of the forward's size
    return (f"| {case} | {flops / forward[0] / 1e9:.0f} | {flops / forward[1] / 1e9:.0f} | "
            f"**{forward[1] / forward[0]:.2f}x** | {2 * flops / backward[0] / 1e9:.0f} | "
            f"{2 * flops / backward[1] / 1e9:.0f} | **{backward[1] / backward[0]:.2f}x** |")


def machine() -> str:
    import numpy
    import torch  # only to print its version: this process times nothing
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, NumPy {numpy.__version__}, "
            f"PyTorch {torch.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=MODEL_CASES + CONV_CASES)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two frameworks per case")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per process (after a warm-up)")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    models = [c for c in args.cases if c in MODEL_CASES]
    convs = [c for c in args.cases if c in CONV_CASES]
    lines = [f"Measured {started} on {machine()}; medians of {args.rounds} x {args.repeats} runs per framework, "
             f"alternating processes. Ratio = cnnkit speed / PyTorch speed (above 1: cnnkit is faster).", ""]
    if models:
        lines += ["| case | cnnkit images/s | PyTorch images/s | ratio | median ms (cnnkit / PyTorch) | "
                  "peak RSS MiB (cnnkit / PyTorch) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [model_row(case, measure(case, args.rounds, args.repeats)) for case in models]
        lines.append("")
    if convs:
        lines += ["VGG16 convolutions, batch 8, 3x3 padding 1; effective GFLOP/s = direct-algorithm FLOPs / time.", "",
                  "| shape (H x W x C to N) | cnnkit fwd GFLOP/s | PyTorch fwd | fwd ratio | cnnkit bwd GFLOP/s | "
                  "PyTorch bwd | bwd ratio |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [conv_row(case, measure(case, args.rounds, args.repeats)) for case in convs]
    table = "\n".join(lines) + "\n"
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
