"""A model's parameters and state: selecting, freezing, reading and loading them by dotted name.

:class:`ModelState` is the part of :class:`cnnkit.Model` that works on ``self.layers`` (each
layer once, however many nodes use it) and never runs the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager

import numpy as np

from .errors import ConfigError, WeightsError
from .parameter import Parameter


class ModelState:
    """Parameters, buffers, freezing and the strict state dict of a model with ``layers``."""

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
        ``conv1_2``; ``"layer1"`` every layer of a ResNet's ``layer1.*``; ``"fc6.bias"`` one
        parameter); ``up_to`` freezes every layer up to and including the named one. With
        neither, the whole model is frozen.
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
                touched.append(_layer_of(dotted))
        return list(dict.fromkeys(touched))

    def _select(self, names, up_to) -> set[str]:
        params = list(self.parameters())
        if names is None and up_to is None:
            return set(params)
        chosen: set[str] = set()
        if up_to is not None:
            below = {layer.name for layer in self.ancestors(up_to)}
            chosen |= {name for name in params if _layer_of(name) in below}
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
        (re-laying out a file's weights as they go); every parameter's version, and every layer's
        buffers' version, moves on at the end (so folded batch norms follow)."""
        self._require_built()
        with ExitStack() as stack:
            for layer in self.layers:
                stack.callback(layer.mark_buffers_changed)
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


def _layer_of(dotted: str) -> str:
    """The layer of a parameter's dotted name: everything before the last dot (layer names may
    hold dots themselves, as torchvision's ``layer1.0.conv1``; local names never do)."""
    return dotted.rpartition(".")[0]


def _matches(dotted: str, pattern: str) -> bool:
    """Does a parameter name fall under a layer name, block prefix or exact parameter name?
    A block prefix is followed by ``_`` (``conv1`` of ``conv1_1``) or ``.`` (``layer1`` of
    ``layer1.0.conv1``)."""
    layer = _layer_of(dotted)
    return dotted == pattern or layer == pattern or layer.startswith((pattern + "_", pattern + "."))
