"""`Parameter`: a learnable array, its gradient, and whether training may change it."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

# Inside describing_only(), parameters are shapes without numbers: placeholders that allocate
# nothing, for a model built only to be described (its summary). A context variable: it belongs
# to the block that builds, not to the process.
_describing: ContextVar[bool] = ContextVar("describing_only", default=False)


@contextmanager
def describing_only():
    """Build layers inside this block without allocating their weights: every weight is a
    zero-strided placeholder of the right shape and dtype (``Parameter.placeholder`` is True).
    Counting parameters, multiply-adds and memory works; computing with them is refused."""
    token = _describing.set(True)
    try:
        yield
    finally:
        _describing.reset(token)


def describing() -> bool:
    """Are layers being built as descriptions only (:func:`describing_only`)?"""
    return _describing.get()


def placeholder_array(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A read-only array of ``shape`` that takes no memory (every element is the same zero)."""
    return np.broadcast_to(np.zeros((), dtype), tuple(shape))


def is_placeholder(array: np.ndarray) -> bool:
    """Is ``array`` a :func:`placeholder_array` (a layer's buffer built as a description)? Read-only
    with every stride zero: a buffer that holds numbers is writable (its loaders fill it in place)."""
    return not array.flags.writeable and all(stride == 0 for stride in array.strides)


class Parameter:
    """A learnable array with its accumulated gradient.

    ``grad`` is ``None`` until a backward pass adds into it (as in PyTorch), so a model used
    only for inference never pays for a second copy of its weights.

    A weight changes through known routes only, so that layers may cache things derived from it
    (a convolution's Winograd-transformed filters) and key them on ``version``:

    - ``param.value`` is a read-only view: writing into it (or into ``model.state_dict()``
      values) raises NumPy's ``ValueError: assignment destination is read-only``;
    - ``param.value = array`` stores a copy of ``array`` and moves the version on;
    - ``with param.writing() as array:`` hands out the writable array for in-place updates
      (optimizer steps, ``Sequential.load_state_dict``) and moves the version on at the end.

    The constructor takes a writable ``value`` over without copying it (layers pass fresh
    arrays): keep no other reference to it that you write through.
    """

    __slots__ = ("_value", "_view", "grad", "trainable", "version", "placeholder")

    def __init__(self, value: np.ndarray, trainable: bool = True):
        array = np.asarray(value)
        #: built inside :func:`describing_only`: a shape without numbers
        self.placeholder = describing()
        if self.placeholder:
            array = placeholder_array(array.shape, array.dtype)
        elif not array.flags.writeable:
            # a read-only array (a memory map, a file's buffer) could never be updated in place
            array = array.copy()
        self._store(array)
        self.grad: np.ndarray | None = None
        self.trainable = trainable
        self.version = 0

    def __getstate__(self):
        # the view is rebuilt on the copy: copied on its own it would stop following the value
        return self._value, self.grad, self.trainable, self.version, self.placeholder

    def __setstate__(self, state) -> None:
        value, self.grad, self.trainable, self.version, self.placeholder = state
        self._store(value)

    def _store(self, array: np.ndarray) -> None:
        self._value = array
        # one read-only view per value: reads are free and ``param.value is param.value``
        self._view = array.view()
        self._view.flags.writeable = False

    @property
    def value(self) -> np.ndarray:
        """The value as a read-only array; assign ``value`` or use :meth:`writing` to change it."""
        return self._view

    @value.setter
    def value(self, array: np.ndarray) -> None:
        # a copy: the caller's array stays the caller's, and writing to it cannot bypass the version
        self._store(np.array(array, copy=True))
        self.placeholder = False
        self.version += 1

    @contextmanager
    def writing(self):
        """The writable value, for in-place updates; the version moves on when the block ends."""
        try:
            yield self._value
        finally:
            self.version += 1

    def mark_changed(self) -> None:
        """Move the version on: derived caches are recomputed at their next use."""
        self.version += 1

    @property
    def shape(self) -> tuple[int, ...]:
        return self._value.shape

    @property
    def size(self) -> int:
        return int(self._value.size)

    def accumulate(self, grad: np.ndarray, fresh: bool = False) -> None:
        """Add ``grad`` into ``self.grad`` (allocating it on first use).

        ``fresh=True`` hands over an array nobody else holds (a layer's newly computed gradient),
        so the first accumulation keeps it instead of copying it: VGG16's fc6 gradient alone is
        400 MB, copied every step otherwise.
        """
        if self.grad is None:
            adopt = fresh and isinstance(grad, np.ndarray) and grad.dtype == self._value.dtype
            self.grad = grad if adopt else np.array(grad, dtype=self._value.dtype, copy=True)
        else:
            self.grad += grad

    def zero_grad(self) -> None:
        """Forget the accumulated gradient."""
        self.grad = None

    def __repr__(self) -> str:
        frozen = "" if self.trainable else ", trainable=False"
        return f"Parameter(shape={self._value.shape}, dtype={self._value.dtype}{frozen})"
