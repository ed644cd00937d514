"""The HTML report of a run, the end-of-run hook, the `cnnkit viz` / `cnnkit report` commands, and how
the page looks in a real browser."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from cnnkit import viz
from cnnkit.cli import main
from cnnkit.errors import DataError
from cnnkit.viz.report import SECTIONS

CHROMIUM = "/usr/bin/chromium"
IMAGES = ("curves", "confusion", "filters")


class _Page(HTMLParser):
    """Collects section ids, images (id -> src) and every tag name of a page."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.tags = [], {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images[attrs.get("id")] = attrs.get("src", "")


def parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def embedded_png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return base64.b64decode(src[len(prefix):], validate=True)


@pytest.mark.matplotlib
def test_train_run_writes_the_report(run_dir):
    """`cnnkit train` (cnnkit.run.train_run) ends by writing report.html beside report.json."""
    assert (run_dir / "report.html").is_file()
    assert (run_dir / "report.html").stat().st_mtime >= (run_dir / "report.json").stat().st_mtime


@pytest.mark.matplotlib
def test_report_has_every_section_and_embedded_image(run_dir, trained, png_pixels, assert_picture):
    text = (run_dir / "report.html").read_text()
    page = parse(text)
    assert page.sections == list(SECTIONS)
    assert sorted(page.images) == sorted(f"img-{name}" for name in IMAGES)
    for name in IMAGES:
        assert_picture(png_pixels(embedded_png(page.images[f"img-{name}"])), min_size=(250, 200))
    # self-contained: nothing is fetched from elsewhere
    assert "script" not in page.tags and "link" not in page.tags
    assert "http:" not in text and "https:" not in text and "url(" not in text
    record = json.loads((run_dir / "report.json").read_text())
    assert f"{record['test']['accuracy']:.2%}" in text
    assert f"{record['history']['history']['val_loss'][-1]:.4f}" in text
    for layer in trained.layer_names():
        assert f"<td>{layer}</td>" in text
    assert f"{record['summary']['totals']['params']:,}" in text


@pytest.mark.matplotlib
def test_write_report_elsewhere_and_errors(run_dir, tmp_path):
    target = viz.write_report(run_dir, out=tmp_path / "page.html")
    assert target == tmp_path / "page.html"
    assert parse(target.read_text()).sections == list(SECTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]          # no temporaries left
    with pytest.raises(DataError, match="has no report.json; pass a run folder"):
        viz.write_report(tmp_path)


@pytest.mark.matplotlib
def test_report_notes_what_a_run_lacks(trained):
    """A record without history or data still gives every section, each saying what is missing."""
    text = viz.render_report({"model": "vgg_small"}, trained, "the run records no data set")
    page = parse(text)
    assert page.sections == list(SECTIONS)
    assert list(page.images) == ["img-filters"]
    assert "no per-epoch history" in text and "no confusion matrix: the run records no data set" in text


def test_report_of_a_model_without_convolutions():
    from cnnkit import Sequential
    from cnnkit.layers import Dense, Flatten
    model = Sequential([Flatten(), Dense(10)], input_shape=(8, 8, 1), name="linear")
    text = viz.render_report({}, model, "the run records no data set")
    assert parse(text).sections == list(SECTIONS)
    assert "linear has no convolution layer" in text


def test_hook_does_nothing_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not viz.matplotlib_available()
    assert viz.report_after_run(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_the_core_does_not_import_matplotlib():
    code = ("import sys, cnnkit, cnnkit.run, cnnkit.cli, cnnkit.viz; "
            "cnnkit.cli.build_parser(); print('matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("arguments", [
    ["filters", "--model", "{run}", "--mode", "channels", "--layer", "conv1_2"],
    ["activations", "--model", "{run}/model.safetensors", "--image", "digits:7", "--most-active", "--n", "8"],
    ["curves", "{run}/metrics.csv"],
    ["confusion", "--model", "{run}", "--data", "digits", "--normalize"],
    ["functions"],
    ["receptive-field", "--model", "{run}", "--layer", "conv2_1", "--image", "digits:0"],
])
@pytest.mark.matplotlib
def test_viz_commands_write_pictures(run_dir, tmp_path, arguments, png_pixels, assert_picture, capsys):
    out = tmp_path / "picture.png"
    argv = ["viz", *[a.format(run=run_dir) for a in arguments], "--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert_picture(png_pixels(str(out)))


@pytest.mark.matplotlib
def test_report_command_and_its_errors(run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert parse(out.read_text()).sections == list(SECTIONS)
    assert main(["report", str(tmp_path)]) == 2
    assert "has no report.json" in capsys.readouterr().err
    assert main(["viz", "filters", "--model", str(run_dir), "--layer", "fc1", "--out", str(out)]) == 2
    assert "'fc1' is a Dense, not a convolution" in capsys.readouterr().err


# ------------------------------------------------------------------ in a real browser

def locate(screen: np.ndarray, picture: np.ndarray) -> tuple[int, int, float]:
    """Where ``picture`` appears in ``screen`` (best offset by sum of squared differences, via FFT)
    and the mean absolute difference there."""
    s, t = screen.mean(axis=-1), picture.mean(axis=-1)
    h, w = t.shape
    shape = tuple(1 << int(np.ceil(np.log2(n))) for n in (s.shape[0] + h, s.shape[1] + w))   # fast FFT sizes
    correlation = np.fft.irfft2(np.fft.rfft2(s, shape) * np.conj(np.fft.rfft2(t, shape)), shape)
    window = np.cumsum(np.cumsum(np.pad(s ** 2, ((1, 0), (1, 0))), axis=0), axis=1)
    rows, cols = s.shape[0] - h + 1, s.shape[1] - w + 1
    energy = (window[h:h + rows, w:w + cols] - window[:rows, w:w + cols]
              - window[h:h + rows, :cols] + window[:rows, :cols])      # sum of s^2 under each placement
    ssd = energy - 2 * correlation[:rows, :cols] + (t ** 2).sum()
    y, x = np.unravel_index(np.argmin(ssd), ssd.shape)
    return int(y), int(x), float(np.abs(screen[y:y + h, x:x + w] - picture).mean())


@pytest.mark.matplotlib
def test_report_screenshot_in_headless_chromium(run_dir, tmp_path, png_pixels, assert_picture):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) to check "
                    f"how the report looks in a browser")
    shot = tmp_path / "report.png"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
               (run_dir / "report.html").resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), result.stderr[-2000:]
    screen = png_pixels(str(shot))
    assert screen.shape == (3000, 1200, 3)
    assert_picture(screen, min_size=(1200, 3000), min_std=0.03)
    page = parse((run_dir / "report.html").read_text())
    found = {}
    for name in ("curves", "filters"):
        picture = png_pixels(embedded_png(page.images[f"img-{name}"]))
        y, x, difference = locate(screen, picture)
        assert difference < 0.02, (name, y, x, difference)        # drawn whole, at full size, unchanged
        found[name] = y
    assert found["curves"] < found["filters"]                      # in page order
