"""`Sequential`: a stack of layers that is itself one differentiable function."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager

import numpy as np

from .errors import ConfigError, ShapeError, WeightsError
from .layers.base import Layer, as_compute_dtype
from .layers.fusion import backward_layers, forward_layers
from .ops.threads import uses_worker_pool
from .parameter import Parameter


class Sequential:
    """Layers applied one after another, built for a fixed input volume.

    Args:
        layers: the layers, in order. Unnamed layers get ``<kind>_<n>`` names (``conv2d_1``).
        input_shape: the input volume ``(H, W, C)``; the model is built at once when given.
        strict: make windows that leave input rows unread (stride, dilation) an error instead of skipping them.
        seed: seed of the generator that initialises the weights.
        name: the model's name.
    """

    def __init__(self, layers: Iterable[Layer], input_shape: tuple[int, ...] | None = None,
                 strict: bool = False, seed: int | None = 0, name: str = "sequential"):
        self.layers: list[Layer] = list(layers)
        self.name = name
        self.strict = strict
        self.seed = seed
        self.input_shape: tuple[int, ...] | None = None
        #: plain data saved with the architecture: ``preprocessing`` mode, ``class_names``, ...
        self.meta: dict = {}
        self._check_layers()
        _assign_names(self.layers)
        if input_shape is not None:
            self.build(input_shape)

    def _check_layers(self) -> None:
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise ConfigError(f"{self.name}: layer {index} must be a cnnkit Layer; "
                                  f"received {type(layer).__name__}")

    # ------------------------------------------------------------------ building
    def build(self, input_shape: tuple[int, ...], rng: np.random.Generator | None = None) -> tuple[int, ...]:
        """Build every layer in order for ``input_shape`` and return the output shape."""
        shape = _as_shape(input_shape, self.name)
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        self.input_shape = shape
        for layer, after in zip(self.layers, self.layers[1:] + [None]):
            layer.init_scheme = "he" if after is not None and after.wants_he_init else "glorot"
            shape = layer.build(shape, rng, strict=self.strict)
        return shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        self._require_built()
        return self.layers[-1].output_shape if self.layers else self.input_shape

    def _require_built(self) -> None:
        if self.input_shape is None:
            raise ShapeError(f"{self.name}: the model is not built; pass input_shape=(H, W, C) "
                             f"or call build((H, W, C))")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, key: int | str) -> Layer:
        """A layer by position or by name."""
        if isinstance(key, str):
            return self.layers[self.index(key)]
        return self.layers[key]

    def index(self, name: str) -> int:
        """Position of the layer called ``name``."""
        for position, layer in enumerate(self.layers):
            if layer.name == name:
                return position
        raise ConfigError(f"{self.name}: no layer named {name!r}; layers are {self.layer_names()}")

    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    # ------------------------------------------------------------------ computing
    @uses_worker_pool
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Run ``x`` of shape ``(B, H, W, C)`` through every layer."""
        self._require_built()
        return forward_layers(self.layers, x, training_from=0 if training else len(self.layers))

    __call__ = forward

    def features(self, x: np.ndarray, layer: str, batch_size: int = 32) -> np.ndarray:
        """Inference up to and including the layer called ``layer`` (the output of ``fc7``, ``pool5``, ...)."""
        self._require_built()
        return self._infer(x, self.index(layer) + 1, batch_size)

    @uses_worker_pool
    def backward(self, dloss: np.ndarray) -> np.ndarray:
        """Back-propagate the loss gradient of the output; return the gradient of the input."""
        return backward_layers(self.layers, dloss)

    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Inference over ``x`` in batches of ``batch_size`` (no caches are kept)."""
        self._require_built()
        return self._infer(x, len(self.layers), batch_size)

    @uses_worker_pool
    def _infer(self, x: np.ndarray, stop: int, batch_size: int) -> np.ndarray:
        """The output of the first ``stop`` layers for ``x``, in inference mode, a batch at a time."""
        if batch_size < 1:
            raise ConfigError(f"{self.name}: batch_size must be at least 1; received batch_size={batch_size}")
        x = np.asarray(x)
        if x.ndim != len(self.input_shape) + 1:
            raise ShapeError(f"{self.name}: expected input of shape (B, {', '.join(map(str, self.input_shape))})"
                             f"; received {x.shape}")
        as_compute_dtype(x[:0], self.name)   # a dtype no layer computes in fails now, even when empty
        outputs = []
        for start in range(0, len(x), batch_size):
            outputs.append(forward_layers(self.layers[:stop], x[start:start + batch_size], training_from=stop))
        shape = self.layers[stop - 1].output_shape if stop else self.input_shape
        return np.concatenate(outputs) if outputs else np.zeros((0, *shape), np.float32)

    # ------------------------------------------------------------------ parameters
    def parameters(self, trainable_only: bool = False) -> dict[str, Parameter]:
        """Every parameter by dotted name (``conv1_1.weight``), in layer order."""
        return {f"{layer.name}.{local}": param
                for layer in self.layers for local, param in layer.parameters().items()
                if param.trainable or not trainable_only}

    def buffers(self) -> dict[str, np.ndarray]:
        """Saved state that is not learned by gradient (batch norm running statistics)."""
        return {f"{layer.name}.{local}": value for layer in self.layers for local, value in layer.buffers().items()}

    def zero_grad(self) -> None:
        """Forget every accumulated gradient."""
        for layer in self.layers:
            layer.zero_grad()

    def freeze(self, names: str | Iterable[str] | None = None, up_to: str | None = None) -> list[str]:
        """Make parameters untrainable; return the names of the layers frozen.

        ``names`` are layer names or block prefixes (``"conv1"`` freezes ``conv1_1`` and
        ``conv1_2``; ``"fc6.bias"`` one parameter); ``up_to`` freezes every layer up to and
        including the named one. With neither, the whole model is frozen.
        """
        return self._set_trainable(names, up_to, trainable=False)

    def unfreeze(self, names: str | Iterable[str] | None = None, up_to: str | None = None) -> list[str]:
        """Make parameters trainable again (same selection rules as :meth:`freeze`)."""
        return self._set_trainable(names, up_to, trainable=True)

    def _set_trainable(self, names, up_to, trainable: bool) -> list[str]:
        selected = self._select(names, up_to)
        touched = []
        for dotted, param in self.parameters().items():
            if dotted in selected:
                param.trainable = trainable
                touched.append(dotted.split(".")[0])
        return list(dict.fromkeys(touched))

    def _select(self, names, up_to) -> set[str]:
        params = list(self.parameters())
        if names is None and up_to is None:
            return set(params)
        chosen: set[str] = set()
        if up_to is not None:
            stop = self.index(up_to)
            chosen |= {name for name in params if self.index(name.split(".")[0]) <= stop}
        patterns = [names] if isinstance(names, str) else list(names or [])
        for pattern in patterns:
            matched = {name for name in params if _matches(name, pattern)}
            if not matched and pattern not in self.layer_names():
                raise ConfigError(f"{self.name}: {pattern!r} matches no layer or parameter; "
                                  f"layers are {self.layer_names()}")
            chosen |= matched
        return chosen

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers by dotted name: read-only views of the model's own arrays (no copies).

        Writing into them raises NumPy's ``ValueError: assignment destination is read-only``;
        change weights with :meth:`load_state_dict` or ``param.value = array``, so that derived
        caches (Winograd filters) follow. ``{k: v.copy() for k, v in ...}`` gives arrays of your own.
        """
        state = {name: param.value for name, param in self.parameters().items()}
        state.update(self.buffers())
        return state

    @contextmanager
    def writable_state(self) -> Iterator[dict[str, np.ndarray]]:
        """The model's own arrays by dotted name, writable, for loaders that fill them in place
        (re-laying out a file's weights as they go); every parameter's version moves on at the end."""
        self._require_built()
        with ExitStack() as stack:
            targets = {name: stack.enter_context(param.writing()) for name, param in self.parameters().items()}
            targets.update({f"{layer.name}.{local}": value
                            for layer in self.layers for local, value in layer.writable_buffers().items()})
            yield targets

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the model, checking every key and shape; all mismatches are reported at once.

        With ``strict=False`` missing and unexpected keys are allowed, but shapes must still agree.
        """
        if not isinstance(state, Mapping):
            raise WeightsError(f"{self.name}: load_state_dict expects a mapping of names to arrays, such as "
                               f"model.state_dict() or cnnkit.io.read_weights(path); received "
                               f"{type(state).__name__}")
        self._require_built()
        shapes = {name: value.shape for name, value in self.state_dict().items()}
        problems = _state_problems(state, shapes, strict)
        if problems:
            raise WeightsError(f"{self.name}: the state dict does not fit the model: " + " | ".join(problems))
        with self.writable_state() as targets:
            for key, target in targets.items():
                if key in state:
                    target[...] = state[key]

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        """The architecture as plain data (JSON-ready): rebuild it with :meth:`from_config`."""
        self._require_built()
        return {"name": self.name, "input_shape": list(self.input_shape), "strict": self.strict,
                "seed": self.seed, "meta": self.meta,
                "layers": [{"class": type(layer).__name__, "config": layer.get_config()} for layer in self.layers]}

    @classmethod
    def from_config(cls, config: Mapping) -> "Sequential":
        """Build a model from :meth:`get_config` data; no code is run, layer classes come from a fixed table."""
        from .layers import LAYER_CLASSES
        layers = []
        for index, entry in enumerate(config.get("layers", [])):
            kind = entry.get("class") if isinstance(entry, Mapping) else None
            if kind not in LAYER_CLASSES:
                raise ConfigError(f"architecture: layer {index} has unknown class {kind!r}; "
                                  f"known classes are {sorted(LAYER_CLASSES)}")
            try:
                layers.append(LAYER_CLASSES[kind].from_config(entry.get("config", {})))
            except TypeError as error:
                raise ConfigError(f"architecture: layer {index} ({kind}) has bad arguments: {error}") from None
        model = cls(layers, input_shape=config.get("input_shape"), strict=config.get("strict", False),
                    seed=config.get("seed", 0), name=config.get("name", "sequential"))
        model.meta = dict(config.get("meta", {}))
        return model

    # ------------------------------------------------------------------ training (see cnnkit.train)
    def fit(self, train, epochs: int = 1, batch_size: int = 32, optimizer=None, **options):
        """Train with back-propagation; see :func:`cnnkit.train.fit` for every option."""
        from .train import fit
        return fit(self, train, epochs=epochs, batch_size=batch_size, optimizer=optimizer, **options)

    def evaluate(self, data, batch_size: int = 256, **options) -> dict[str, float]:
        """Loss and accuracy on ``data``; see :func:`cnnkit.train.evaluate`."""
        from .train import evaluate
        return evaluate(self, data, batch_size=batch_size, **options)

    def save(self, path) -> None:
        """Write architecture (JSON) and weights (safetensors) to one file, atomically."""
        from .checkpoint import save_model
        save_model(self, path)

    # ------------------------------------------------------------------ description
    def summary(self, batch_size: int = 1, format: str = "text", print_fn=print):
        """The per-layer table of the lecture's arithmetic; see :mod:`cnnkit.summary`.

        ``format="text"`` prints the table (and returns it), ``"markdown"`` returns Markdown,
        ``"json"`` returns a JSON string, ``"dict"`` the data itself.
        """
        from .summary import render_summary
        return render_summary(self, batch_size=batch_size, format=format, print_fn=print_fn)

    def __repr__(self) -> str:
        inner = ",\n".join(f"  {layer.name}: {layer!r}" for layer in self.layers)
        return f"Sequential(name={self.name!r}, input_shape={self.input_shape}, [\n{inner}\n])"


def _state_problems(state: Mapping, shapes: dict[str, tuple[int, ...]], strict: bool) -> list[str]:
    """Every way ``state`` does not fit arrays of ``shapes``: wrong shapes or non-numbers, and
    (when ``strict``) missing and unexpected keys."""
    wrong, not_numbers = [], []
    for key in shapes:
        if key not in state:
            continue
        try:
            value = np.asarray(state[key])
        except (TypeError, ValueError):   # ragged nested lists
            not_numbers.append(f"{key}: not an array")
            continue
        if value.dtype.kind not in "biuf":
            not_numbers.append(f"{key}: dtype {value.dtype}")
        elif value.shape != shapes[key]:
            wrong.append(f"{key}: model {shapes[key]}, given {value.shape}")
    problems = [f"wrong shapes: {'; '.join(wrong)}"] if wrong else []
    problems += [f"not real numbers: {'; '.join(not_numbers)}"] if not_numbers else []
    if strict:
        missing = [key for key in shapes if key not in state]
        unexpected = [key for key in state if key not in shapes]
        problems += [f"missing keys: {missing}"] if missing else []
        problems += [f"unexpected keys: {unexpected}"] if unexpected else []
    return problems


def _as_shape(input_shape, model: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise ShapeError(f"{model}: input_shape must be a tuple of ints such as (224, 224, 3); "
                         f"received input_shape={input_shape!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise ShapeError(f"{model}: input_shape must be positive sizes such as (224, 224, 3); "
                         f"received input_shape={input_shape!r}")
    return shape


def _assign_names(layers: list[Layer]) -> None:
    """Give unnamed layers ``<kind>_<n>`` names and refuse duplicates."""
    taken = {layer.name for layer in layers if layer.name}
    counters: dict[str, int] = {}
    for layer in layers:
        if layer.name:
            continue
        kind = _snake(type(layer).__name__)
        while True:
            counters[kind] = counters.get(kind, 0) + 1
            candidate = f"{kind}_{counters[kind]}"
            if candidate not in taken:
                break
        layer.name = candidate
        taken.add(candidate)
    names = [layer.name for layer in layers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"layer names must be unique; {duplicates} appear more than once")


def _snake(class_name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z])", "_", class_name).lower()


def _matches(dotted: str, pattern: str) -> bool:
    """Does a parameter name fall under a layer name, block prefix or exact parameter name?"""
    layer = dotted.split(".")[0]
    return dotted == pattern or layer == pattern or layer.startswith(pattern + "_")
