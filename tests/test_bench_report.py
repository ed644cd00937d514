"""The benchmark's report functions (benchmarks/report.py, benchmarks/cold_start.py): which engines
run, the fastest other engine, cnnkit's speed ratio and the tables. Nothing here times anything."""

import pytest

from benchmarks.cold_start import table as cold_start_table
from benchmarks.report import (available_engines, engines_for, fastest_other, format_ms, rss_table, speed_ratio,
                               time_table, versions_line)

ALL = ["cnnkit", "torch", "torch_cl", "onnxruntime", "openvino"]


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_fastest_other_is_the_quickest_engine_that_is_not_cnnkit():
    medians = {"cnnkit": 0.050, "torch": 0.300, "onnxruntime": 0.120, "openvino": 0.100}
    assert fastest_other(medians) == "openvino"
    assert fastest_other({"cnnkit": 0.1}) is None


@pytest.mark.parametrize("ours, theirs, expected", [(0.200, 0.100, 0.5), (0.100, 0.150, 1.5), (0.1, 0.1, 1.0)])
def test_speed_ratio_is_the_fastest_others_time_over_cnnkits(ours, theirs, expected):
    medians = {"cnnkit": ours, "torch": 10.0, "openvino": theirs}
    assert speed_ratio(medians) == pytest.approx(expected)


def test_speed_ratio_needs_cnnkit_and_another_engine():
    assert speed_ratio({"cnnkit": 0.1}) is None
    assert speed_ratio({"torch": 0.1, "openvino": 0.2}) is None


@pytest.mark.parametrize("seconds, text", [(0.1723, "172"), (0.0100, "10"), (0.00684, "6.8"), (2.13, "2130"),
                                           (None, "-")])
def test_format_ms(seconds, text):
    assert format_ms(seconds) == text


def test_time_table_shows_every_engine_the_fastest_other_and_the_ratio():
    rows = [("vgg16_infer_b1", {"cnnkit": 0.172, "torch": 0.188, "torch_cl": 0.130, "onnxruntime": 0.095,
                                "openvino": 0.100}),
            ("vgg16_train_b8", {"cnnkit": 2.130, "torch": 4.670, "torch_cl": 4.003})]
    header, rule, infer, train = time_table(rows, ALL)
    assert cells(header) == ["case", "cnnkit (ms)", "PyTorch NCHW (ms)", "PyTorch channels_last (ms)",
                             "ONNX Runtime (ms)", "OpenVINO (ms)", "fastest other engine", "cnnkit / fastest"]
    assert len(cells(rule)) == len(cells(header))
    assert cells(infer) == ["vgg16_infer_b1", "172", "188", "130", "95", "100", "ONNX Runtime", "**0.55x**"]
    assert cells(train) == ["vgg16_train_b8", "2130", "4670", "4003", "-", "-", "PyTorch channels_last", "**1.88x**"]


def test_time_table_without_cnnkit_has_no_ratio():
    _, _, row = time_table([("case", {"torch": 0.1})], ["cnnkit", "torch"])
    assert cells(row) == ["case", "-", "100", "PyTorch NCHW", "-"]


def test_rss_table_marks_engines_that_did_not_run():
    header, rule, row = rss_table([("vgg16_train_b8", {"cnnkit": 3116.4, "torch": 2726.0})],
                                  ["cnnkit", "torch", "openvino"])
    assert cells(header) == ["case", "cnnkit (MiB)", "PyTorch NCHW (MiB)", "OpenVINO (MiB)"]
    assert len(cells(rule)) == 4
    assert cells(row) == ["vgg16_train_b8", "3116", "2726", "-"]


def test_an_engine_whose_package_is_missing_drops_out_with_a_note():
    engines, notes = available_engines(lambda package: package != "openvino", ALL)
    assert engines == ["cnnkit", "torch", "torch_cl", "onnxruntime"]
    assert len(notes) == 1 and "OpenVINO" in notes[0] and "openvino not installed" in notes[0]
    assert "[bench]" in notes[0]


def test_without_torch_only_cnnkit_runs():
    engines, notes = available_engines(lambda package: package not in ("torch", "openvino"), ALL)
    assert engines == ["cnnkit"]
    assert [note.split(" left out")[0] for note in notes] == ["PyTorch NCHW", "PyTorch channels_last",
                                                              "ONNX Runtime", "OpenVINO"]
    assert "openvino, torch not installed" in notes[-1]


def test_inference_only_engines_sit_out_training_cases():
    assert engines_for("small_train_b128", ALL) == ["cnnkit", "torch", "torch_cl"]
    assert engines_for("resnet18_train_b32", ALL) == ["cnnkit", "torch", "torch_cl"]
    assert engines_for("small_infer_b128", ALL) == ALL


def test_versions_line_leaves_out_what_is_not_installed():
    assert versions_line({"NumPy": "2.4.6", "OpenVINO": None, "PyTorch": "2.13.0"}) == "NumPy 2.4.6, PyTorch 2.13.0"


def test_cold_start_table_has_a_row_per_run_and_the_medians():
    lines = cold_start_table([(9.0, 1.0, 40), (7.5, 1.4, 40), (8.0, 1.2, 41)])
    assert len(lines) == 2 + 3 + 1
    assert cells(lines[3]) == ["2", "7.50", "1.40", "40"]
    assert cells(lines[-1]) == ["median", "**8.00**", "**1.20**", "40"]
