"""Cold start: wall times of the first ``cnnkit classify`` of a photo after a fresh install and the next.

    python -m benchmarks.cold_start                              # VGG16, median of 3 runs
    python -m benchmarks.cold_start --arch mobilenet_v2 --runs 5
    python -m benchmarks.cold_start --arch vgg_small --runs 1    # a quick check that it works

cnnkit's compiled kernels (``cnnkit/ops/jit.py``: Numba with ``cache=True``) are cached on disk,
by default in the ``__pycache__`` folders beside cnnkit's sources, which a fresh install has
empty. Each run points ``NUMBA_CACHE_DIR`` at a new empty folder, so the first command compiles
every kernel it runs, as after ``pip install``; the second command, on the same folder, loads
them. Both are whole commands in their own process (the interpreter's start, the imports, reading
the model file, reading the photo, the forward pass, printing), timed from outside. The model is
the architecture with random weights (seed 0), saved once as a cnnkit model file; the photo is a
random 500x375 JPEG. The model file is read from the page cache in every run, as a file just
downloaded would be.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write_inputs(arch: str, folder: Path) -> tuple[Path, Path]:
    """``(model file, photo)``: ``arch`` with random weights and a random JPEG photo, in ``folder``."""
    import numpy as np
    from PIL import Image

    import cnnkit
    model_path, photo_path = folder / f"{arch}.safetensors", folder / "photo.jpg"
    cnnkit.models.MODELS[arch](seed=0).save(model_path)
    pixels = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo_path, quality=90)
    return model_path, photo_path


def classify_command(model_path: Path, photo_path: Path) -> list[str]:
    """The user's command: the ``cnnkit`` script beside this Python when installed, else the same entry point."""
    script = Path(sys.executable).with_name("cnnkit")
    entry = [str(script)] if script.is_file() else [sys.executable, "-c",
                                                     "import sys; from cnnkit.cli import main; sys.exit(main())"]
    return entry + ["classify", "--weights", str(model_path), "--top", "1", str(photo_path)]


def timed_run(command: list[str], cache: Path) -> float:
    """Seconds of wall time of ``command`` with Numba's cache in ``cache``; an error stops the script."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=HERE.parent)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
    return seconds


def cached_kernels(cache: Path) -> int:
    """How many compiled kernels (Numba ``.nbc`` files) the cache holds."""
    return sum(1 for _ in cache.rglob("*.nbc"))


def table(runs: list[tuple[float, float, int]]) -> list[str]:
    """Markdown lines: per run the cold and warm seconds and the kernels compiled, then the medians."""
    lines = ["| run | first classify, empty cache (s) | second classify (s) | kernels compiled |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {index} | {cold:.2f} | {warm:.2f} | {kernels} |" for index, (cold, warm, kernels) in
              enumerate(runs, start=1)]
    lines.append(f"| median | **{statistics.median(r[0] for r in runs):.2f}** | "
                 f"**{statistics.median(r[1] for r in runs):.2f}** | {statistics.median(r[2] for r in runs):.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16", help="a name in cnnkit.models.MODELS (default vgg16)")
    parser.add_argument("--runs", type=int, default=3, help="cold + warm pairs, each on a new empty cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cnnkit-cold-start-") as folder:
        model_path, photo_path = write_inputs(args.arch, Path(folder))
        command = classify_command(model_path, photo_path)
        runs = []
        for index in range(args.runs):
            cache = Path(folder) / f"numba-cache-{index}"
            cache.mkdir()
            cold = timed_run(command, cache)
            kernels = cached_kernels(cache)
            runs.append((cold, timed_run(command, cache), kernels))
            print(f"  run {index + 1}/{args.runs} done", file=sys.stderr, flush=True)
    print(f"`cnnkit classify` of one 500x375 JPEG photo with {args.arch} (random weights), whole command, "
          f"on {os.cpu_count()} cores; median of {args.runs} runs:\n")
    print("\n".join(table(runs)))
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("\nPYTHONDONTWRITEBYTECODE is set: Python compiled the sources without a bytecode cache in every run.")


if __name__ == "__main__":
    main()
