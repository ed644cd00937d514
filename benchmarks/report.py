"""The benchmark's report: which engines can run, the fastest of them, and the Markdown tables.

Pure functions over medians (seconds per call, by engine), so that they are tested without timing
anything; ``benchmarks/run.py`` measures and calls them.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

from benchmarks.worker import ENGINES, INFERENCE_ENGINES, is_training

ENGINE_LABELS = {"cnnkit": "cnnkit", "torch": "PyTorch NCHW", "torch_cl": "PyTorch channels_last",
                 "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
#: The packages each engine needs: the ONNX engines run a network exported from torch.
ENGINE_PACKAGES = {"cnnkit": (), "torch": ("torch",), "torch_cl": ("torch",), "onnxruntime": ("onnxruntime", "torch"),
                   "openvino": ("openvino", "torch")}
INSTALL_HINT = "make bench installs the bench extra (pip install -e '.[bench]')"


def available_engines(installed: Callable[[str], bool],
                      engines: Sequence[str] = ENGINES) -> tuple[list[str], list[str]]:
    """``(engines whose packages are all installed, one note per engine left out)``; ``installed``
    tells whether a package imports (``importlib.util.find_spec`` in the benchmark)."""
    kept, notes = [], []
    for engine in engines:
        missing = [package for package in ENGINE_PACKAGES[engine] if not installed(package)]
        if missing:
            notes.append(f"{ENGINE_LABELS[engine]} left out: {', '.join(missing)} not installed; {INSTALL_HINT}.")
        else:
            kept.append(engine)
    return kept, notes


def engines_for(case: str, engines: Iterable[str]) -> list[str]:
    """The engines that run ``case``: the inference-only engines sit out training cases."""
    return [engine for engine in engines if not (is_training(case) and engine in INFERENCE_ENGINES)]


def fastest_other(medians: Mapping[str, float]) -> str | None:
    """The engine other than cnnkit with the smallest median time, None when there is none."""
    others = {engine: time for engine, time in medians.items() if engine != "cnnkit"}
    return min(others, key=others.get) if others else None


def speed_ratio(medians: Mapping[str, float]) -> float | None:
    """cnnkit's speed over the fastest other engine's (above 1: cnnkit is faster), None without both."""
    other = fastest_other(medians)
    if other is None or "cnnkit" not in medians:
        return None
    return medians[other] / medians["cnnkit"]


def format_ms(seconds: float | None) -> str:
    """Milliseconds, whole from 10 ms up and with one decimal below; ``-`` for no measurement."""
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 10 else f"{ms:.1f}"


def time_table(rows: Sequence[tuple[str, Mapping[str, float]]], engines: Sequence[str]) -> list[str]:
    """Markdown lines: per case the median ms of each engine (``-`` where it did not run), the
    fastest other engine and cnnkit's speed ratio to it."""
    header = ["case", *(f"{ENGINE_LABELS[e]} (ms)" for e in engines), "fastest other engine", "cnnkit / fastest"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(engines) + " --- | ---: |"]
    for case, medians in rows:
        other, ratio = fastest_other(medians), speed_ratio(medians)
        cells = [case, *(format_ms(medians.get(e)) for e in engines), ENGINE_LABELS[other] if other else "-",
                 f"**{ratio:.2f}x**" if ratio is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def rss_table(rows: Sequence[tuple[str, Mapping[str, float]]], engines: Sequence[str]) -> list[str]:
    """Markdown lines: per case the median peak resident memory (MiB) of each engine's process."""
    lines = ["| case | " + " | ".join(f"{ENGINE_LABELS[e]} (MiB)" for e in engines) + " |",
             "| --- |" + " ---: |" * len(engines)]
    for case, peaks in rows:
        cells = [f"{peaks[e]:.0f}" if e in peaks else "-" for e in engines]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return lines


def versions_line(versions: Mapping[str, str | None]) -> str:
    """``name version`` pairs joined by commas, leaving out what is not installed (None)."""
    return ", ".join(f"{name} {version}" for name, version in versions.items() if version)
