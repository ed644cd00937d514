"""An image file cannot make cnnkit allocate what its header declares before it is checked."""

from __future__ import annotations

import tracemalloc

import pytest

from cnnkit.data import images
from cnnkit.data.images import ImageFolder, load_image
from cnnkit.errors import DataError

Image = pytest.importorskip("PIL.Image", reason="images are read with Pillow")


@pytest.fixture
def bomb(tmp_path):
    """A 10000 x 6000 PNG of one colour: 60 megapixels (720 MB as float32 RGB) in a few KB."""
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 6_000)).save(path)
    assert path.stat().st_size < 1 << 20
    return path


def test_an_image_bigger_than_the_limit_is_refused_before_decoding(bomb):
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"bomb\.png declares 10000x6000 pixels, more than "
                                             r"cnnkit\.data\.images\.MAX_IMAGE_PIXELS = 50,000,000"):
            load_image(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_an_image_folder_skips_it_with_the_reason(bomb, tmp_path):
    (tmp_path / "cls").mkdir()
    bomb.rename(tmp_path / "cls" / "bomb.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "cls" / "ok.png")
    with pytest.warns(UserWarning, match="declares 10000x6000 pixels"):
        folder = ImageFolder(tmp_path)
    assert len(folder) == 1


def test_the_limit_can_be_raised(bomb, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 60_000_000)
    with Image.open(bomb) as im:  # only the header: the limit no longer applies
        images._check_pixels(bomb, im.size)


def test_a_chunk_length_flipped_to_gigabytes_allocates_nothing(tmp_path):
    # Found by the fuzz: the first byte of the chunk length after IHDR set to 0xFF makes
    # Pillow read() ~4 GB from the file object; on a real file that allocates it first.
    path = tmp_path / "flipped.png"
    Image.new("RGB", (16, 12)).save(path)
    data = bytearray(path.read_bytes())
    data[33] = 0xFF
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        image = load_image(path)  # the pixels come before the bad length: they still decode
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.shape == (12, 16, 3)
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated"
