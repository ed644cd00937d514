"""Images on disk: one photo (:func:`load_image`) or a class-per-folder tree (:class:`ImageFolder`).

Images are read with Pillow, turned upright by their EXIF orientation, converted to RGB
and returned as float32 (H, W, 3) on the 0-255 scale.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np

from cnnkit.errors import ConfigError, DataError
from cnnkit.data.transforms import Transform, _pair, apply_transform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm")
ON_ERROR = ("warn", "raise")
VERIFY = ("header", "decode")
# How Pillow fails on a bad file: unknown formats and truncated data are OSError
# (UnidentifiedImageError), corrupt headers and EXIF blocks SyntaxError, ValueError,
# struct.error, IndexError or EOFError.
_PILLOW_FAILURES = (OSError, ValueError, SyntaxError, struct.error, IndexError, EOFError)
# Largest image decoded (width x height), checked from the header before decoding: a few KB
# of PNG can declare a 30000 x 30000 image, and cnnkit's float32 RGB copy costs 12 bytes a
# pixel (this limit: 600 MB). Raise it for larger photos.
MAX_IMAGE_PIXELS = 50_000_000


def _size_pair(size) -> tuple[int, int] | None:
    return None if size is None else _pair(size, "size")


def _image_bytes(path: Path) -> io.BytesIO:
    """The file's bytes, for Pillow to parse in memory.

    Pillow reads some chunks with ``fp.read(length)`` for a length taken from the file; on
    a real file that allocates the whole length first (2 GB for a PNG chunk whose length
    field was flipped, as the fuzz found), where an in-memory buffer returns what is there.
    """
    return io.BytesIO(path.read_bytes())


def _open_rgb(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """Decode ``path`` to float32 (H, W, 3); Pillow's failures become DataError."""
    from PIL import Image, ImageOps

    try:
        with Image.open(_image_bytes(path)) as im:
            _check_pixels(path, im.size)
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.float32)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except _PILLOW_FAILURES + (Image.DecompressionBombError,) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    except MemoryError:
        raise DataError(f"cannot read image {path}: not enough memory to decode it") from None


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"image {path} declares {width}x{height} pixels, more than "
                        f"cnnkit.data.images.MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS:,}; "
                        "downscale it, or raise that limit if the image is genuine")


def load_image(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """One image file as float32 (H, W, 3), RGB, 0-255; bilinear-resized to ``size`` if given.

    ``size`` is an int (square) or (H, W). An unreadable file raises DataError naming it.
    """
    return _open_rgb(Path(path), _size_pair(size))


def _verify(path: Path, how: str) -> None:
    """Raise DataError if ``path`` is not a readable image (header check or full decode)."""
    from PIL import Image

    if how == "decode":
        _open_rgb(path, None)
        return
    try:
        with Image.open(_image_bytes(path)) as im:
            _check_pixels(path, im.size)
            im.verify()
    except _PILLOW_FAILURES + (Image.DecompressionBombError,) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class folders of ``root`` and every image file below each, sorted."""
    if not root.is_dir():
        raise DataError(f"ImageFolder: root {str(root)!r} is not a directory; expected "
                        "root/<class name>/<image files>.")
    real_root = os.path.realpath(root)
    visited: set[str] = {real_root}
    classes = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if _may_enter(entry, real_root, visited, root):
            classes.append(entry.name)
    if not classes:
        raise DataError(f"ImageFolder: no class folders in {str(root)!r}; expected "
                        "root/<class name>/<image files>.")
    samples, seen_files = [], set()
    for label, name in enumerate(classes):
        samples += [(path, label) for path in _images_below(root / name, visited, seen_files)]
    return classes, samples


def _may_enter(entry: os.DirEntry, inside: str, visited: set[str], where: Path) -> bool:
    """Whether the walk enters the folder ``entry``: a real folder, or a link to a folder below
    ``inside`` (a real path), and in both cases one that the walk has not entered before.

    This is what keeps a link loop (``cls/up -> ..``) from listing files again and again under
    the wrong class, and a link from leading out of the data.
    """
    real = os.path.realpath(entry.path)
    if entry.is_symlink() and not real.startswith(inside + os.sep):
        warnings.warn(f"ImageFolder: not following the link {entry.path} -> {real}: it leads out of "
                      f"{str(where)!r}", stacklevel=4)
        return False
    if real in visited:
        if entry.is_symlink():
            warnings.warn(f"ImageFolder: not following the link {entry.path} -> {real}: that folder "
                          f"is already read", stacklevel=4)
        return False
    visited.add(real)
    return True


def _images_below(folder: Path, visited: set[str], seen_files: set[str]) -> list[Path]:
    """Image files in ``folder`` and its sub-folders, sorted, each real file once; a linked folder
    is entered only when it lies inside ``folder`` (so a class never takes another's images)."""
    inside = os.path.realpath(folder)
    found, stack = [], [folder]
    while stack:
        here = stack.pop()
        entries = sorted(os.scandir(here), key=lambda e: e.name)
        for entry in entries:
            if entry.is_file() and _is_image(entry.name):
                real = os.path.realpath(entry.path)
                if real not in seen_files:
                    seen_files.add(real)
                    found.append(Path(entry.path))
        subfolders = [e for e in entries if e.is_dir() and _may_enter(e, inside, visited, folder)]
        stack += [Path(e.path) for e in reversed(subfolders)]
    return found


class ImageFolder:
    """Images stored as ``root/<class name>/**/<image>``; sorted class names give labels 0..K-1.

    Args:
        root: the folder holding one sub-folder per class.
        size: None (keep each image's size), an int (square) or (H, W): bilinear resize.
        transform: ``t(img, rng=None)`` applied to each image after loading.
        on_error: what to do with a file that is not a readable image, found when the
            folder is scanned: ``"warn"`` skips it with a warning naming the path,
            ``"raise"`` raises DataError naming the path and Pillow's reason.
        verify: ``"header"`` (fast: Pillow's ``verify()``, catches non-images, empty
            and cut-off-header files, bad PNG checksums) or ``"decode"`` (decode every
            image once at construction; slow, but also catches truncated JPEG data).

    A file that passed the check but fails to decode later raises DataError naming it.
    Skipped files are listed in ``skipped`` as (path, reason).
    """

    def __init__(self, root: str | os.PathLike, size: int | tuple[int, int] | None = None,
                 transform: Transform | None = None, on_error: str = "warn",
                 verify: str = "header"):
        if on_error not in ON_ERROR:
            raise ConfigError(f"Invalid value for argument `on_error`: expected one of "
                              f"{ON_ERROR}; received on_error={on_error!r}.")
        if verify not in VERIFY:
            raise ConfigError(f"Invalid value for argument `verify`: expected one of "
                              f"{VERIFY}; received verify={verify!r}.")
        if transform is not None and not callable(transform):
            raise ConfigError(f"ImageFolder: `transform` must be callable; received {transform!r}.")
        self.root = Path(root)
        self.size = _size_pair(size)
        self.transform = transform
        self.classes, found = _scan(self.root)
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[tuple[Path, str]] = []
        for path, label in found:
            try:
                _verify(path, verify)
            except DataError as e:
                if on_error == "raise":
                    raise
                warnings.warn(f"ImageFolder: skipping {path}: {e.__cause__ or e}", stacklevel=2)
                self.skipped.append((path, str(e.__cause__ or e)))
                continue
            self.samples.append((path, label))
        if not self.samples:
            raise DataError(f"ImageFolder: no readable images under {str(self.root)!r} "
                            f"(extensions {', '.join(IMAGE_EXTENSIONS)}).")

    @property
    def labels(self) -> np.ndarray:
        """Label of every image, int64 (N,)."""
        return np.asarray([label for _, label in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        img = _open_rgb(path, self.size)
        if self.transform is not None:
            img = apply_transform(self.transform, img)
        return img, label

    def __repr__(self) -> str:
        return (f"ImageFolder(root={str(self.root)!r}, n={len(self)}, "
                f"classes={len(self.classes)}, size={self.size})")
