"""The layer contract: a differentiable function from one activation volume to another.

A layer is built once for an input volume ``(H, W, C)`` (Keras style: input channels are
inferred), then maps batches ``(B, H, W, C) -> (B, H2, W2, C2)`` forward and gradients back.
"""

from __future__ import annotations

from abc import ABC
import inspect

import numpy as np

from ..arithmetic import FLOAT32_BYTES, CallMemory, ReceptiveField, Window, volume
from ..errors import ConfigError, ShapeError
from ..graph import connect, is_symbolic
from ..parameter import Parameter, is_placeholder

Shape = tuple[int, int, int]


class Layer(ABC):
    """Base class of every layer.

    Subclasses store their hyper-parameters in ``__init__`` under the same names as the
    arguments (so :meth:`get_config` can rebuild them), create parameters in
    :meth:`_build`, and implement :meth:`forward` and :meth:`backward`.
    """

    #: ReLU-like layers make the layer before them use He initialisation.
    wants_he_init = False
    #: Layers whose output overwrites their input or is a view of it (ReLU, Flatten, ...)
    #: allocate no new activation volume; the summary's memory totals skip them.
    in_place = False
    #: The output of :meth:`call` is a new array that the layer's context does not hold, so the
    #: consumer may overwrite it when it is the only one (the executor decides, per call).
    fresh_output = False
    #: Likewise for the input gradient that :meth:`call_backward` returns.
    fresh_input_grad = False
    #: ``call`` and ``call_backward`` accept ``owned=True`` and then compute in the array handed
    #: over (the executor passes ``owned`` only to layers that set this).
    overwrites_owned = False
    #: ``call_backward(..., need_input_grad=False)`` skips computing the input gradient (the
    #: executor passes ``need_input_grad`` only to layers that set this).
    skips_input_grad = False
    #: Activations this layer can apply to its own output as it writes it (``call(activation=...)``).
    fusable_activations: tuple[str, ...] = ()
    #: The activation this layer is, when its producer may compute it instead (the executor fuses).
    fused_as: str | None = None
    #: How many input tensors the layer takes: 1, or None for any number (merge layers).
    arity: int | None = 1
    #: ``call(fold=layer)`` computes, in inference, what this layer followed by ``layer`` (one with
    #: :attr:`affine_in_inference`) computes, the map folded into this layer's weights.
    folds_affine = False
    #: In inference this layer is a per-channel affine map ``x * scale + shift`` over the last axis
    #: (:meth:`inference_affine`), which the layer before it may fold (the executor decides).
    affine_in_inference = False

    def __init__(self, name: str | None = None):
        self.name = name
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.strict = False
        self.init_scheme = "glorot"
        self._params: dict[str, Parameter] = {}
        self._buffers: dict[str, np.ndarray] = {}
        #: moves on whenever the buffers may have changed (see :meth:`mark_buffers_changed`)
        self.buffers_version = 0
        self._cache = None
        #: ``trainable`` from a saved config, applied to the parameters once build creates them
        self._saved_trainable: bool | dict[str, bool] = True

    # ------------------------------------------------------------------ building
    def build(self, input_shape: tuple[int, ...], rng: np.random.Generator | None = None,
              strict: bool = False) -> tuple[int, ...]:
        """Validate hyper-parameters against ``input_shape``, create parameters, return the output shape."""
        shape = tuple(int(v) for v in input_shape)
        if any(v < 1 for v in shape):
            raise ShapeError(f"{self.label}: input volume must have positive sizes; received {shape}")
        self.strict = strict
        self.input_shape = shape
        self.output_shape = tuple(self._build(shape, rng if rng is not None else np.random.default_rng()))
        self._apply_trainable(self._saved_trainable)
        return self.output_shape

    def _apply_trainable(self, trainable: bool | dict[str, bool]) -> None:
        """Set the parameters' ``trainable`` flags from a config value (one bool, or one per parameter)."""
        flags = trainable if isinstance(trainable, dict) else {name: trainable for name in self._params}
        unknown = sorted(set(flags) - set(self._params))
        if unknown:
            raise ConfigError(f"{self.label}: trainable names parameters {unknown} the layer does not have; "
                              f"its parameters are {sorted(self._params)}")
        for name, flag in flags.items():
            self._params[name].trainable = flag

    def _build(self, input_shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
        return input_shape

    @property
    def built(self) -> bool:
        return self.output_shape is not None

    @property
    def label(self) -> str:
        """The name used in messages: the layer's name, or its class when it has none yet."""
        return self.name or type(self).__name__

    def _require_volume(self, input_shape: tuple[int, ...]) -> Shape:
        """Raise unless the input is an image volume ``(H, W, C)``."""
        if len(input_shape) != 3:
            raise ShapeError(f"{self.label}: expects an image volume (H, W, C); received input shape "
                             f"{input_shape}; put Flatten only after the last spatial layer")
        return input_shape  # type: ignore[return-value]

    # ------------------------------------------------------------------ computing
    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False,
             activation: str | None = None) -> tuple[np.ndarray, object]:
        """Map a batch ``(B, *input_shape)`` to ``(B, *output_shape)``; return it with the context
        that :meth:`call_backward` needs (None in inference).

        The context is per call, so one layer can run at several places of a graph. ``owned``:
        the caller hands ``x`` over (nobody reads it afterwards), so the layer may compute in its
        memory. ``activation``: one of :attr:`fusable_activations`, applied to the output as it is
        written; the backward then applies its derivative as it reads the gradient. Only an
        executor that knows who reads what passes these two (and ``fold=layer``, in inference, to
        a layer that :attr:`folds_affine`).

        Layers written to the first contract (``forward`` keeping a cache in ``self._cache``,
        ``backward`` reading it) still work through this default, but such a layer object cannot
        run at two nodes of one training pass.
        """
        if type(self).forward is Layer.forward:
            raise NotImplementedError(f"{type(self).__name__} must implement call (or forward)")
        self._refuse_activation(activation)
        y = self.forward(x, training)
        context, self._cache = self._cache, None
        return y, context

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False,
                      need_input_grad: bool = True) -> np.ndarray | None:
        """The gradient with respect to the input, from the output's gradient ``dy`` and the
        context of the training :meth:`call` it belongs to; parameter gradients are added into
        ``Parameter.grad``. ``owned``: ``dy`` is handed over (the layer may overwrite it)."""
        if type(self).backward is Layer.backward:
            raise NotImplementedError(f"{type(self).__name__} must implement call_backward (or backward)")
        self._cache = context
        return self.backward(dy)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """:meth:`call` for a direct caller: ``x`` is never written, and the context of a training
        call is kept in the layer for the next :meth:`backward` (a model's executor keeps contexts
        itself and never uses this slot)."""
        y, context = self.call(x, training)
        self._cache = context if training else None
        #: what the gradient of the next backward must be: this output's (shape, dtype)
        self._output_spec = (y.shape, y.dtype) if training else None
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """The input gradient for the last :meth:`forward` in training mode (which it frees).

        ``dy`` must have the shape and dtype of that forward's output (checked before the context
        is taken, so a corrected call can follow)."""
        spec = getattr(self, "_output_spec", None)   # None: a layer that overrides forward
        if spec is not None:
            self.check_grad(dy, *spec)
        context = self.take_cache()
        if self.skips_input_grad:
            return self.call_backward(dy, context, need_input_grad=need_input_grad)
        return self.call_backward(dy, context)

    def __call__(self, x, training: bool = False):
        """``layer(x)``: :meth:`forward` of an array, or, on symbolic tensors (``cnnkit.Input``), a
        new node of a graph whose output tensor is returned (the functional API)."""
        if is_symbolic(x):
            return connect(self, x)
        return self.forward(x, training)

    def _refuse_activation(self, activation: str | None) -> None:
        if activation is not None and activation not in self.fusable_activations:
            raise ConfigError(f"{self.label}: cannot fuse activation {activation!r}; it fuses "
                              f"{list(self.fusable_activations) or 'none'}")

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` as the array to compute on; raise :class:`ShapeError` unless it is a non-empty
        batch of this layer's input volume in a dtype cnnkit computes in.

        float32 and float64 stay as they are; integer arrays (uint8 images) become float32,
        values unchanged (scale them yourself); other dtypes are refused (see :func:`as_compute_dtype`).
        """
        if not self.built:
            raise ShapeError(f"{self.label}: call build(input_shape) (or put the layer in a Sequential) "
                             f"before forward")
        if self.has_placeholders():
            raise ConfigError(f"{self.label}: was built as a description only (placeholder weights, e.g. "
                              f"allocate=False for a summary) and cannot compute; build it with weights "
                              f"(allocate=True) or give each parameter a value")
        if not isinstance(x, np.ndarray) or x.ndim != len(self.input_shape) + 1 \
                or tuple(x.shape[1:]) != self.input_shape:
            received = getattr(x, "shape", type(x).__name__)
            raise ShapeError(f"{self.label}: expected input of shape (B, {', '.join(map(str, self.input_shape))})"
                             f"; received {received}")
        if x.shape[0] == 0:
            raise ShapeError(f"{self.label}: received an empty batch, input shape {x.shape}; "
                             f"pass at least one sample")
        return as_compute_dtype(x, self.label)

    def check_grad(self, dy: np.ndarray, expected: tuple[int, ...], dtype: np.dtype | None = None) -> None:
        """Raise :class:`ShapeError` unless the gradient ``dy`` has the shape of the last forward's
        output and is float32 or float64 (``dtype`` when given: the output's own dtype)."""
        if not isinstance(dy, np.ndarray) or dy.shape != tuple(expected):
            received = getattr(dy, "shape", type(dy).__name__)
            raise ShapeError(f"{self.label}: backward expected a gradient of shape {tuple(expected)} "
                             f"(the output of the last forward); received {received}")
        check_grad_dtype(dy, dtype, self.label)

    def take_cache(self):
        """Return and forget the context the last training :meth:`forward` kept (backward frees it)."""
        if self._cache is None:
            raise ShapeError(f"{self.label}: backward called without a forward(x, training=True) before it")
        cache, self._cache = self._cache, None
        return cache

    # ------------------------------------------------------------------ parameters
    def parameters(self) -> dict[str, Parameter]:
        """This layer's parameters by local name (``weight``, ``bias``, ...)."""
        return dict(self._params)

    def has_placeholders(self) -> bool:
        """Was the layer built as a description only: does a parameter or buffer hold no numbers?"""
        return (any(param.placeholder for param in self._params.values())
                or any(is_placeholder(value) for value in self._buffers.values()))

    def buffers(self) -> dict[str, np.ndarray]:
        """State that is saved with the weights but never learned by gradient (running statistics),
        as read-only views; loaders write through :meth:`writable_buffers`."""
        return {name: _read_only(value) for name, value in self._buffers.items()}

    def writable_buffers(self) -> dict[str, np.ndarray]:
        """The buffers themselves, for loaders that fill them in place (``Sequential.load_state_dict``).

        Handing them out moves :attr:`buffers_version` on, so what was derived from them (a
        convolution's weights with this batch norm folded in) is recomputed at its next use; write
        before computing again, or call :meth:`mark_buffers_changed` after writing
        (``Model.writable_state`` does when its block ends)."""
        self.mark_buffers_changed()
        return dict(self._buffers)

    def mark_buffers_changed(self) -> None:
        """Move :attr:`buffers_version` on: every route that writes a buffer calls it (a training
        forward updating running statistics, loaders), as a ``Parameter``'s version moves."""
        self.buffers_version += 1

    def state_version(self) -> tuple:
        """A key that changes whenever a parameter or buffer of this layer may have changed: each
        parameter's version and array, the buffers' version and arrays. Caches derived from the
        layer's numbers (folded weights) are kept under it."""
        return (tuple((param.version, id(param.value)) for param in self._params.values()),
                self.buffers_version, tuple(id(value) for value in self._buffers.values()))

    def inference_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-channel ``(scale, shift)`` in float64 of a layer that is the map
        ``x * scale + shift`` in inference (:attr:`affine_in_inference`)."""
        raise NotImplementedError(f"{type(self).__name__} is not an affine map in inference")

    def param_count(self) -> int:
        """Learnable numbers in this layer (trainable or frozen; buffers excluded)."""
        return sum(param.size for param in self._params.values())

    def zero_grad(self) -> None:
        """Forget every parameter's accumulated gradient."""
        for param in self._params.values():
            param.zero_grad()

    # ------------------------------------------------------------------ arithmetic hooks
    def windows(self) -> tuple[Window, Window] | None:
        """The sliding window along (height, width), for layers that slide one."""
        return None

    def macs(self) -> int:
        """Multiply-accumulates for one input."""
        return 0

    def receptive_field(self, field: tuple[ReceptiveField, ReceptiveField]
                        ) -> tuple[ReceptiveField, ReceptiveField]:
        """The receptive field of one output unit, given that of one input unit."""
        windows = self.windows()
        if windows is None:
            return field
        return field[0].through(windows[0]), field[1].through(windows[1])

    def unread(self) -> tuple[int, int]:
        """Input rows and columns that no window reads: after the last window, or between taps that
        dilation or a long stride steps over (:func:`cnnkit.arithmetic.unread_rows`)."""
        return 0, 0

    def activations(self) -> int:
        """Activations in one output volume."""
        return volume(self.output_shape)

    def workspace_per_sample(self) -> int:
        """Numbers per sample a forward allocates besides its output (a padded copy of the input)."""
        return 0

    def cached_per_sample(self) -> int:
        """Numbers kept per sample between a training forward and its backward (an estimate)."""
        return 0

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        """How one call uses memory (:class:`cnnkit.arithmetic.CallMemory`), when the executor hands
        the input over (``owned``; one flag per input for a merge layer) or not.

        By default a layer marked :attr:`in_place` computes in a handed-over input, and a training
        context holds :meth:`cached_per_sample` float32 numbers of its own.
        """
        return CallMemory(output_is_input=self.in_place and bool(owned), workspace=self.workspace_per_sample(),
                          keeps_bytes=FLOAT32_BYTES * self.cached_per_sample() if training else 0)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        """Constructor arguments as plain data, and ``trainable`` (Keras style), enough to rebuild
        the layer without code (:meth:`from_config`).

        ``trainable`` is True or False when every parameter agrees (a layer without parameters:
        True), else a ``{parameter: bool}`` dict (``model.freeze("fc6.bias")``).
        """
        config = {}
        for arg in inspect.signature(type(self).__init__).parameters:
            if arg in ("self", "args", "kwargs"):
                continue
            value = getattr(self, arg)
            config[arg] = list(value) if isinstance(value, tuple) else value
        config["trainable"] = self._trainable_config()
        return config

    def _trainable_config(self) -> bool | dict[str, bool]:
        if not self._params:
            return self._saved_trainable
        flags = {name: param.trainable for name, param in self._params.items()}
        return next(iter(flags.values())) if len(set(flags.values())) == 1 else flags

    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        """The layer :meth:`get_config` describes; ``trainable`` (absent in old files: True) is
        applied to the parameters when the layer is built."""
        arguments = dict(config)
        trainable = arguments.pop("trainable", True)
        layer = cls(**arguments)
        layer._saved_trainable = _checked_trainable(trainable, layer.label)
        return layer

    def __repr__(self) -> str:
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()}
        defaults["trainable"] = True
        shown = [f"{k}={v!r}" for k, v in self.get_config().items()
                 if k not in defaults or defaults[k] is inspect.Parameter.empty
                 or _differs(v, defaults[k])]
        return f"{type(self).__name__}({', '.join(shown)})"


#: dtypes layers compute in; an input in another float or in a non-number dtype is refused
COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_compute_dtype(x: np.ndarray, label: str) -> np.ndarray:
    """``x`` in a dtype layers compute in: float32 and float64 as they are (no copy), integer
    arrays as float32 (a uint8 image computed in uint8 would wrap around); float16, bool, complex,
    strings and objects raise :class:`ShapeError` with the fix."""
    if x.dtype in COMPUTE_DTYPES:
        return x
    if x.dtype.kind in "iu":
        return x.astype(np.float32)
    raise ShapeError(f"{label}: cannot compute on an input of dtype {x.dtype}; cnnkit layers compute in "
                     f"float32 or float64 (integer images are converted to float32); convert it first, "
                     f"e.g. x.astype(np.float32)")


def check_grad_dtype(dy, expected: np.dtype | None, label: str) -> None:
    """Raise :class:`ShapeError` unless the gradient ``dy`` is float32 or float64 and, when
    ``expected`` is given, of that dtype (the forward output's). Arrays of other types are left
    to the shape check. A dtype comparison or two: cheap enough for every backward."""
    dtype = getattr(dy, "dtype", None)
    if not isinstance(dy, np.ndarray) or (dtype == expected and expected is not None):
        return
    if dtype not in COMPUTE_DTYPES:
        raise ShapeError(f"{label}: backward received a gradient of dtype {dtype}; gradients are float32 or "
                         f"float64, the dtype of the forward's output; convert it, e.g. dy.astype(y.dtype)")
    if expected is not None:
        raise ShapeError(f"{label}: backward received a gradient of dtype {dtype}, but the output of the last "
                         f"forward is {np.dtype(expected)}; pass the gradient in the output's dtype, "
                         f"e.g. dy.astype(y.dtype)")


def _checked_trainable(trainable, label: str) -> bool | dict[str, bool]:
    """A config's ``trainable``: a bool, or a dict of parameter names to bools."""
    if isinstance(trainable, bool):
        return trainable
    if isinstance(trainable, dict) and all(isinstance(k, str) and isinstance(v, bool) for k, v in trainable.items()):
        return dict(trainable)
    raise ConfigError(f"{label}: trainable must be true, false or a mapping of parameter names to booleans; "
                      f"received trainable={trainable!r}")


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _differs(value, default) -> bool:
    if isinstance(default, tuple):
        default = list(default)
    return value != default


def check_choice(value, argument: str, choices: tuple, layer: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{layer}: {argument} must be one of {choices}; received {argument}={value!r}")
