"""Composable transforms on one image of shape (H, W, C), and ImageNet preprocessing.

A transform is a callable ``t(img, rng=None) -> img``. Random transforms draw from the
``numpy.random.Generator`` passed as ``rng``; without one they use their own generator,
created from ``seed=`` at construction, so no global random state is ever touched.
Plain one-argument callables (``lambda img: img / 255``) are accepted wherever a
transform is, see :func:`apply_transform`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import inspect
from collections.abc import Callable, Sequence

import numpy as np

from cnnkit.errors import ConfigError, DataError

Transform = Callable[..., np.ndarray]

# Keras' imagenet_utils.preprocess_input constants: caffe means are BGR, 0-255 scale;
# torch mean/std are RGB on the 0-1 scale.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("caffe", "torch", "tf")


def apply_transform(transform: Transform, img: np.ndarray,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """Call ``transform(img, rng)``, or ``transform(img)`` when it takes one argument."""
    if _takes_rng(transform):
        return transform(img, rng)
    return transform(img)


def _takes_rng(fn: Callable) -> bool:
    if isinstance(fn, _RandomTransform | Compose | _Deterministic):
        return True
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature take one argument
        return False
    positional = [p for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _pair(value, name: str) -> tuple[int, int]:
    """An int or (H, W) pair of positive ints, else a ConfigError naming ``name``."""
    pair = (value, value) if isinstance(value, int | np.integer) else value
    try:
        h, w = (int(v) for v in pair)
        ok = all(isinstance(v, int | np.integer) for v in pair) and h > 0 and w > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"Invalid value for argument `{name}`: expected a positive int or "
                          f"an (H, W) pair of positive ints; received {name}={value!r}.")
    return h, w


def _check_image(img: np.ndarray, who: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3:
        raise DataError(f"{who}: expected one image of shape (H, W, C); received shape "
                        f"{img.shape}. Add a channel axis with img[..., None] for grey images.")
    return img


class _Deterministic(ABC):
    """Base of transforms that ignore ``rng``."""

    @abstractmethod
    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The transformed image."""


class _RandomTransform:
    """Base of transforms that draw from a Generator: the call's ``rng`` or their own."""

    def __init__(self, seed: int | None = None):
        self._rng = np.random.default_rng(seed)

    def _pick(self, rng: np.random.Generator | None) -> np.random.Generator:
        return self._rng if rng is None else rng


class Compose:
    """Apply transforms in order, passing the same ``rng`` to each."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)
        for i, t in enumerate(self.transforms):
            if not callable(t):
                raise ConfigError(f"Compose: transforms[{i}] is not callable; received {t!r}.")

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        for t in self.transforms:
            img = apply_transform(t, img, rng)
        return img

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomCrop(_RandomTransform):
    """Zero-pad each border by ``padding`` pixels, then crop a random ``size`` window.

    ``size`` is an int (square) or (H, W); the window's corner is uniform over all
    positions, as in torchvision's RandomCrop with constant padding.
    """

    def __init__(self, size: int | tuple[int, int], padding: int = 0, seed: int | None = None):
        super().__init__(seed)
        self.size = _pair(size, "size")
        if not isinstance(padding, int | np.integer) or padding < 0:
            raise ConfigError("Invalid value for argument `padding`: expected an int >= 0; "
                              f"received padding={padding!r}.")
        self.padding = int(padding)

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        img = _check_image(img, "RandomCrop")
        p = self.padding
        if p:
            img = np.pad(img, ((p, p), (p, p), (0, 0)))
        (h, w), (ch, cw) = img.shape[:2], self.size
        if ch > h or cw > w:
            raise DataError(f"RandomCrop: crop {ch}x{cw} does not fit the padded image {h}x{w}; "
                            "lower size or raise padding.")
        gen = self._pick(rng)
        top = int(gen.integers(0, h - ch + 1))
        left = int(gen.integers(0, w - cw + 1))
        return img[top:top + ch, left:left + cw]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip(_RandomTransform):
    """Mirror the image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__(seed)
        if not 0.0 <= float(p) <= 1.0:
            raise ConfigError(f"Invalid value for argument `p`: expected a probability in "
                              f"[0, 1]; received p={p!r}.")
        self.p = float(p)

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        img = _check_image(img, "RandomHorizontalFlip")
        if self._pick(rng).random() < self.p:
            return img[:, ::-1]
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased, Pillow) resize of an (H, W, C) image to ``size`` = (H, W).

    Each channel is resized as a 32-bit float Pillow image, so values are not rounded to
    uint8 along the way; the result is float32.
    """
    from PIL import Image

    img = _check_image(img, "resize")
    h, w = size
    if img.shape[:2] == (h, w):
        return img.astype(np.float32, copy=False)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32),
                                           mode="F").resize((w, h), Image.BILINEAR))
                for c in range(img.shape[2])]
    return np.stack(channels, axis=-1)


class Resize(_Deterministic):
    """Resize to exactly ``size`` (int for square, or (H, W)) with Pillow bilinear."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = _pair(size, "size")

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return resize(img, self.size)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class ResizeShorter(_Deterministic):
    """Resize so the shorter side is ``size``, keeping the aspect ratio (bilinear).

    The longer side becomes ``int(size * long / short)``, as torchvision's ``Resize(256)``.
    """

    def __init__(self, size: int):
        if not isinstance(size, int | np.integer) or size <= 0:
            raise ConfigError("Invalid value for argument `size`: expected a positive int "
                              f"(the shorter side); received size={size!r}.")
        self.size = int(size)

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        img = _check_image(img, "ResizeShorter")
        h, w = img.shape[:2]
        short, long = min(h, w), max(h, w)
        new_long = int(self.size * long / short)
        target = (self.size, new_long) if h <= w else (new_long, self.size)
        return resize(img, target)

    def __repr__(self) -> str:
        return f"ResizeShorter(size={self.size})"


class CenterCrop(_Deterministic):
    """Crop the central ``size`` window (int for square, or (H, W))."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = _pair(size, "size")

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        img = _check_image(img, "CenterCrop")
        (h, w), (ch, cw) = img.shape[:2], self.size
        if ch > h or cw > w:
            raise DataError(f"CenterCrop: crop {ch}x{cw} is larger than the image {h}x{w}; "
                            "resize first (e.g. ResizeShorter) or lower size.")
        # Same rounding of the offset as torchvision's center_crop.
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return img[top:top + ch, left:left + cw]

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class Normalize(_Deterministic):
    """Per-channel ``(img - mean) / std``; returns float32."""

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float):
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float32))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float32))
        if self.mean.ndim != 1 or self.std.ndim != 1:
            raise ConfigError(f"Normalize: mean and std must be numbers or 1-D sequences; "
                              f"received mean={mean!r}, std={std!r}.")
        if np.any(self.std <= 0):
            raise ConfigError(f"Normalize: every std must be > 0; received std={std!r}.")

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        img = _check_image(img, "Normalize")
        c = img.shape[-1]
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v.size not in (1, c):
                raise DataError(f"Normalize: {name} has {v.size} values but the image has "
                                f"{c} channels; give 1 or {c} values.")
        return ((img.astype(np.float32, copy=False) - self.mean) / self.std).astype(np.float32)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def imagenet_preprocess(img: np.ndarray, mode: str = "caffe") -> np.ndarray:
    """ImageNet input preprocessing of RGB pixels on the 0-255 scale, as Keras does it.

    Works on one image (H, W, 3) or a batch (B, H, W, 3); returns a new float32 array.

    - ``"caffe"``: RGB -> BGR, then subtract the BGR means (103.939, 116.779, 123.68);
      values stay on the 0-255 scale (VGG16/19 and ResNet50 from Keras, Caffe models).
    - ``"torch"``: ``(img / 255 - mean) / std`` with mean (0.485, 0.456, 0.406) and std
      (0.229, 0.224, 0.225), channels stay RGB (torchvision models).
    - ``"tf"``: ``img / 127.5 - 1``, range [-1, 1] (Inception, MobileNet in Keras).
    """
    if mode not in PREPROCESS_MODES:
        raise ConfigError(f"Invalid value for argument `mode`: expected one of "
                          f"{PREPROCESS_MODES}; received mode={mode!r}.")
    x = np.asarray(img)
    if x.ndim not in (3, 4) or x.shape[-1] != 3:
        raise DataError("imagenet_preprocess: expected RGB pixels of shape (H, W, 3) or "
                        f"(B, H, W, 3); received shape {x.shape}.")
    x = x.astype(np.float32)
    if mode == "caffe":
        return x[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
    if mode == "torch":
        mean = np.asarray(TORCH_MEAN, dtype=np.float32)
        std = np.asarray(TORCH_STD, dtype=np.float32)
        return (x / np.float32(255.0) - mean) / std
    return x / np.float32(127.5) - np.float32(1.0)


class ImagenetPreprocess(_Deterministic):
    """:func:`imagenet_preprocess` as a transform."""

    def __init__(self, mode: str = "caffe"):
        if mode not in PREPROCESS_MODES:
            raise ConfigError(f"Invalid value for argument `mode`: expected one of "
                              f"{PREPROCESS_MODES}; received mode={mode!r}.")
        self.mode = mode

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return imagenet_preprocess(img, self.mode)

    def __repr__(self) -> str:
        return f"ImagenetPreprocess(mode={self.mode!r})"


def imagenet_eval_transform(mode: str = "caffe", resize_to: int = 256,
                            crop: int = 224) -> Compose:
    """The standard ImageNet evaluation pipeline: shorter side to 256, center 224, preprocess."""
    return Compose([ResizeShorter(resize_to), CenterCrop(crop), ImagenetPreprocess(mode)])
