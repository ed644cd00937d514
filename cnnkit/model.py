"""Models: a graph of layers (:class:`Model`, the functional API) and a chain (:class:`Sequential`).

Both are one differentiable function run by the one executor (:mod:`cnnkit.executor`) from a
plan made when the model is built.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack

import numpy as np

from .errors import ConfigError, ShapeError
from .executor import Plan, Step, Tape, run_backward, run_forward
from .graph import Input, Node, SymbolicTensor, trace
from .graph_config import GRAPH_FORMAT, graph_from_config
from .layers import LAYER_CLASSES
from .layers.base import Layer, as_compute_dtype, check_grad_dtype
from .model_file import TrainingCheckpoint, save_model
from .model_state import ModelState
from .ops.runtime import entry_point, folding_batch_norm
from .parameter import describing_only
from .summary import render_summary
from .train import evaluate as evaluate_model, fit as fit_model


class Model(ModelState):
    """A graph of layers from input tensors to output tensors (the Keras functional API).

    ::

        x = cnnkit.Input((32, 32, 3), name="image")
        y = Conv2d(16, 3, padding=1)(x)
        y = Add()([ReLU()(y), Conv2d(16, 1)(x)])
        model = cnnkit.Model(x, Dense(10)(Flatten()(y)), name="tiny_resnet")

    Args:
        inputs: a symbolic tensor from :func:`cnnkit.Input`, or a list of them.
        outputs: a symbolic tensor, or a list of them.
        name: the model's name.
        seed: seed of the generator that draws the weights of layers not built with weights yet,
            in the order of the graph's nodes.
        strict: as in :class:`Sequential` (windows that leave input rows unread are an error).

    A layer object used at several nodes shares its weights, and its gradients add up. Nodes are
    named after their layers; the second use of a layer ``conv`` is the node ``conv:1``.
    """

    def __init__(self, inputs, outputs, name: str = "model", seed: int | None = 0, strict: bool = False):
        self.name = name
        self.seed = seed
        self.strict = strict
        #: plain data saved with the architecture: ``preprocessing`` mode, ``class_names``, ...
        self.meta: dict = {}
        self._tape: Tape | None = None
        self._multi_input = isinstance(inputs, (list, tuple))
        self._multi_output = isinstance(outputs, (list, tuple))
        inputs = list(inputs) if self._multi_input else [inputs]
        outputs = list(outputs) if self._multi_output else [outputs]
        for role, tensors in (("inputs", inputs), ("outputs", outputs)):
            if not tensors or not all(isinstance(t, SymbolicTensor) for t in tensors):
                raise ConfigError(f"{name}: {role} must be symbolic tensors (cnnkit.Input(...) and the results of "
                                  f"calling layers on them); received {tensors!r}")
        if len({id(t) for t in inputs}) != len(inputs):
            raise ConfigError(f"{name}: a tensor appears twice among the inputs; list each cnnkit.Input once")
        nodes = trace(inputs, outputs, name)
        self._plan_graph(inputs, outputs, nodes)
        self._draw_weights(np.random.default_rng(seed))

    # ------------------------------------------------------------------ building
    def _plan_graph(self, inputs: list[SymbolicTensor], outputs: list[SymbolicTensor], nodes: list[Node]) -> None:
        """Name the layers and nodes and make the executor's plan."""
        self.inputs, self.outputs, self.nodes = inputs, outputs, nodes
        self.layers: list[Layer] = list({id(node.layer): node.layer for node in nodes}.values())
        _assign_names(self.layers)
        self._tensor_ids: dict[int, int] = {}
        self._names: list[str] = []
        for position, tensor in enumerate(inputs):
            self._tensor_ids[id(tensor)] = position
            self._names.append(tensor.name or ("input" if len(inputs) == 1 else f"input_{position + 1}"))
        uses: dict[int, int] = {}
        steps = []
        for position, node in enumerate(nodes):
            count = uses.get(id(node.layer), 0)
            uses[id(node.layer)] = count + 1
            step_name = node.layer.name if count == 0 else f"{node.layer.name}:{count}"
            output = len(inputs) + position
            self._tensor_ids[id(node.output)] = output
            self._names.append(step_name)
            steps.append(Step(position, node.layer, tuple(self._tensor_ids[id(t)] for t in node.inputs),
                              output, step_name))
        duplicates = sorted({n for n in self._names if self._names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"{self.name}: names must be unique; {duplicates} name both an input and a layer")
        self.plan = Plan(steps, list(range(len(inputs))), [self._tensor_ids[id(t)] for t in outputs])

    def _draw_weights(self, rng: np.random.Generator) -> None:
        """Build, with weights drawn from ``rng``, every layer that has only a description so far."""
        init_schemes = self._init_schemes()
        for step in self.plan.steps:
            layer = step.layer
            if layer.has_placeholders():
                layer.init_scheme = init_schemes[id(layer)]
                shape = self._shape_of_inputs(step)
                layer.build(shape, rng, strict=self.strict)
            elif self.strict and not layer._params and not layer.strict:
                # described before the model's strictness was known (a pooling layer): it must hold too,
                # or a file of this model would be refused when loaded, where the rule is applied
                layer.build(self._shape_of_inputs(step), strict=True)

    def _init_schemes(self) -> dict[int, str]:
        """He initialisation for a layer whose every reader wants it (a ReLU after it), else Glorot."""
        schemes = {}
        for step in self.plan.steps:
            readers = [self.plan.steps[p].layer for p in self.plan.readers.get(step.output, [])]
            he = bool(readers) and all(reader.wants_he_init for reader in readers)
            schemes[id(step.layer)] = "he" if he and schemes.get(id(step.layer), "he") == "he" else "glorot"
        return schemes

    def _shape_of_inputs(self, step: Step):
        shapes = [self.tensor_shape(t) for t in step.inputs]
        return shapes[0] if step.layer.arity == 1 else shapes

    def tensor_shape(self, tensor: int) -> tuple[int, ...]:
        """The per-sample shape of tensor number ``tensor`` of the plan."""
        if tensor < len(self.inputs):
            return self.inputs[tensor].shape
        return tuple(self.plan.steps[tensor - len(self.inputs)].layer.output_shape)

    @property
    def input_shape(self):
        """The input's per-sample shape (a list of them for several inputs)."""
        self._require_built()
        shapes = [tuple(t.shape) for t in self.inputs]
        return shapes if self._multi_input else shapes[0]

    @property
    def output_shape(self):
        """The output's per-sample shape (a list of them for several outputs)."""
        self._require_built()
        shapes = [self.tensor_shape(t) for t in self.plan.outputs]
        return shapes if self._multi_output else shapes[0]

    def _require_built(self) -> None:
        pass

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, key: int | str) -> Layer:
        """A layer by position (in the order of the graph) or by name."""
        if isinstance(key, str):
            return self.layers[self.index(key)]
        return self.layers[key]

    def index(self, name: str) -> int:
        """Position of the layer called ``name`` in :attr:`layers`."""
        for position, layer in enumerate(self.layers):
            if layer.name == name:
                return position
        raise ConfigError(f"{self.name}: no layer named {name!r}; layers are {self.layer_names()}")

    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def node_names(self) -> list[str]:
        """The names of every tensor: the inputs, then each node's output (a layer's second use: ``name:1``)."""
        self._require_built()
        return list(self._names)

    def tensor(self, name: str) -> int:
        """The plan's number of the tensor called ``name`` (an input or a node)."""
        self._require_built()
        if name in self._names:
            return self._names.index(name)
        raise ConfigError(f"{self.name}: no node named {name!r}; nodes are {self._names}")

    def ancestors(self, name: str) -> list[Layer]:
        """The layers the node ``name`` depends on, itself included, in the order of the graph."""
        tensor = self.tensor(name)
        if tensor < len(self.inputs):
            return []
        positions = self.plan.ancestors(tensor - len(self.inputs))
        return list({id(self.plan.steps[p].layer): self.plan.steps[p].layer for p in sorted(positions)}.values())

    # ------------------------------------------------------------------ computing
    def _arrays(self, x) -> list[np.ndarray]:
        """The input arrays, one per model input."""
        arrays = list(x) if self._multi_input and isinstance(x, (list, tuple)) else [x]
        if len(arrays) != len(self.inputs):
            raise ShapeError(f"{self.name}: expected {len(self.inputs)} input arrays (one per input "
                             f"{self._names[:len(self.inputs)]}); received {len(arrays)}")
        return arrays

    def _result(self, arrays: list, multi: bool):
        return arrays if multi else arrays[0]

    @entry_point
    def forward(self, x, training: bool = False):
        """Run inputs (an array of shape ``(B, *input_shape)``, or one per input) through the graph.

        In training mode the contexts backward needs are kept for the next :meth:`backward`.
        """
        self._require_built()
        tape = Tape() if training else None
        steps = frozenset(range(len(self.plan.steps))) if training else frozenset()
        outputs = run_forward(self.plan, self._arrays(x), self.plan.outputs, steps, tape, folding_batch_norm())
        self._tape = tape
        #: what backward's gradients must match, one (shape, dtype) per output
        self._expected_grads = [(y.shape, y.dtype) for y in outputs] if training else None
        return self._result(outputs, self._multi_output)

    __call__ = forward

    @entry_point
    def backward(self, dloss):
        """Back-propagate the loss gradient of the output (one per output) through the last training
        forward; add parameter gradients into ``Parameter.grad``; return the input's gradient."""
        if self._tape is None:
            raise ShapeError(f"{self.name}: backward called without a forward(x, training=True) before it")
        if self._multi_output and not isinstance(dloss, (list, tuple)):
            raise ShapeError(f"{self.name}: backward expects a list of {len(self.plan.outputs)} gradients, one per "
                             f"output (None for an output without loss); received {type(dloss).__name__}")
        grads = list(dloss) if self._multi_output else [dloss]
        if len(grads) != len(self.plan.outputs):
            raise ShapeError(f"{self.name}: expected {len(self.plan.outputs)} output gradients; received {len(grads)}")
        gradients: dict[int, np.ndarray] = {}
        for tensor, grad, expected in zip(self.plan.outputs, grads, self._expected_grads):
            if grad is not None:
                self._check_output_grad(tensor, grad, *expected)
                gradients[tensor] = grad if tensor not in gradients else gradients[tensor] + grad
        tape, self._tape = self._tape, None
        return self._result(run_backward(self.plan, tape, gradients), self._multi_input)

    def _check_output_grad(self, tensor: int, grad, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Refuse a gradient that is not an array of the forward output's shape and dtype."""
        node = self._names[tensor]
        if not isinstance(grad, np.ndarray) or grad.shape != shape:
            received = getattr(grad, "shape", type(grad).__name__)
            raise ShapeError(f"{node}: backward expected a gradient of shape {shape} (the output of the last "
                             f"forward, an output of {self.name}); received {received}")
        check_grad_dtype(grad, dtype, node)

    def predict(self, x, batch_size: int = 32):
        """Inference over ``x`` in batches of ``batch_size`` (no contexts are kept)."""
        self._require_built()
        return self._result(self._infer(x, list(self.plan.outputs), batch_size), self._multi_output)

    def features(self, x, layer: str | Sequence[str], batch_size: int = 32):
        """Inference up to the nodes named ``layer`` (``"fc7"``, ``"pool5"``; a list gives a list):
        only the steps they need run, once for all of them."""
        self._require_built()
        names = [layer] if isinstance(layer, str) else list(layer)
        arrays = self._infer(x, [self.tensor(name) for name in names], batch_size)
        return arrays[0] if isinstance(layer, str) else arrays

    @entry_point
    def _infer(self, x, tensors: list[int], batch_size: int) -> list[np.ndarray]:
        """The arrays of ``tensors`` for ``x`` in inference mode, a batch at a time."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"{self.name}: batch_size must be at least 1; received batch_size={batch_size}")
        arrays = [np.asarray(a) for a in self._arrays(x)]
        for array, tensor in zip(arrays, self.inputs):
            if array.ndim != len(tensor.shape) + 1:
                raise ShapeError(f"{self.name}: expected input of shape (B, {', '.join(map(str, tensor.shape))})"
                                 f"; received {array.shape}")
            as_compute_dtype(array[:0], self.name)   # a dtype no layer computes in fails now, even when empty
        count = len(arrays[0])
        parts: list[list[np.ndarray]] = [[] for _ in tensors]
        for start in range(0, count, batch_size):
            batch = [a[start:start + batch_size] for a in arrays]
            for part, value in zip(parts, run_forward(self.plan, batch, tensors, fold=folding_batch_norm())):
                part.append(value)
        return [np.concatenate(part) if part else np.zeros((0, *self.tensor_shape(t)), np.float32)
                for part, t in zip(parts, tensors)]

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        """The architecture as plain data (JSON-ready): the layers, the nodes that apply them and
        which tensors are the inputs and outputs; rebuild it with :meth:`from_config`."""
        return {"class": "Model", "format": GRAPH_FORMAT, "name": self.name, "strict": self.strict,
                "seed": self.seed, "meta": self.meta,
                "inputs": [{"name": self._names[t], "shape": list(self.tensor_shape(t))} for t in self.plan.inputs],
                "layers": [{"class": type(layer).__name__, "config": layer.get_config()} for layer in self.layers],
                "nodes": [{"layer": step.layer.name, "inputs": [self._names[t] for t in step.inputs]}
                          for step in self.plan.steps],
                "outputs": [self._names[t] for t in self.plan.outputs],
                "several_inputs": self._multi_input, "several_outputs": self._multi_output}

    @classmethod
    def from_config(cls, config: Mapping) -> "Model":
        """Build a model from :meth:`get_config` data; no code is run: layer classes come from a
        fixed table (and :func:`cnnkit.register_layer`)."""
        _require_mapping(config)
        if config.get("class") != "Model":
            return Sequential.from_config(config)
        inputs, outputs, options = graph_from_config(config)
        model = cls(inputs, outputs, **options)
        model.meta = dict(config.get("meta", {}))
        return model

    # ------------------------------------------------------------------ training (see cnnkit.train)
    def fit(self, train, epochs: int = 1, batch_size: int = 32, optimizer=None, checkpoint=None, resume=None,
            **options):
        """Train with back-propagation; see :func:`cnnkit.train.fit` for every other option.

        ``checkpoint``: a path; a training checkpoint (weights, optimizer, schedule, epoch, history
        and the callbacks' state) is written there atomically at the end of every epoch, after the
        callbacks (best model, logs); a path that cannot be written fails before training.
        ``resume``: a training checkpoint to continue from (the callbacks continue from their saved
        state, the logs are rewritten from its history, the optimizer's state is the checkpoint's).
        Both become the :class:`cnnkit.model_file.TrainingCheckpoint` that ``fit`` is given.
        """
        if checkpoint is not None or resume is not None:
            options["checkpoints"] = TrainingCheckpoint(save_to=checkpoint, resume_from=resume)
        return fit_model(self, train, epochs=epochs, batch_size=batch_size, optimizer=optimizer, **options)

    def evaluate(self, data, batch_size: int = 256, **options) -> dict[str, float]:
        """Loss and accuracy on ``data``; see :func:`cnnkit.train.evaluate`."""
        return evaluate_model(self, data, batch_size=batch_size, **options)

    def save(self, path) -> None:
        """Write architecture (JSON) and weights (safetensors) to one file, atomically; read it back
        with :func:`cnnkit.load` (see :mod:`cnnkit.model_file` for the format)."""
        save_model(self, path)

    # ------------------------------------------------------------------ description
    def summary(self, batch_size: int = 1, format: str = "text", print_fn=print):
        """The per-layer table of the lecture's arithmetic; see :mod:`cnnkit.summary`.

        ``format="text"`` prints the table (and returns it), ``"markdown"`` returns Markdown,
        ``"json"`` returns a JSON string, ``"dict"`` the data itself.
        """
        return render_summary(self, batch_size=batch_size, format=format, print_fn=print_fn)

    def __repr__(self) -> str:
        inner = ",\n".join(f"  {step.name}: {step.layer!r} <- {[self._names[t] for t in step.inputs]}"
                           for step in self.plan.steps)
        return f"Model(name={self.name!r}, inputs={self._names[:len(self.inputs)]}, [\n{inner}\n])"


class Sequential(Model):
    """Layers applied one after another, built for a fixed input volume: a :class:`Model` whose
    graph is a chain.

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
        self.meta: dict = {}
        self._tape = None
        self._multi_input = self._multi_output = False
        self.plan = None
        self._check_layers()
        _assign_names(self.layers)
        if input_shape is not None:
            self.build(input_shape)

    def _check_layers(self) -> None:
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise ConfigError(f"{self.name}: layer {index} must be a cnnkit Layer; "
                                  f"received {type(layer).__name__}")
            if layer.arity != 1:
                raise ConfigError(f"{self.name}: layer {index} ({type(layer).__name__}) merges several tensors; "
                                  f"build graphs with cnnkit.Model (the functional API)")
        if len({id(layer) for layer in self.layers}) != len(self.layers):
            raise ConfigError(f"{self.name}: a layer object appears twice in the list; a Sequential applies "
                              f"each layer once (share weights in a cnnkit.Model)")

    def build(self, input_shape: tuple[int, ...], rng: np.random.Generator | None = None,
              allocate: bool = True) -> tuple[int, ...]:
        """Build every layer in order for ``input_shape`` (drawing new weights) and return the
        output shape. ``allocate=False`` builds a description only (no weights: a summary)."""
        shape = _as_shape(input_shape, self.name)
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        tensor = first = Input(shape)
        nodes = []
        with ExitStack() as stack:
            if not allocate:
                stack.enter_context(describing_only())
            for layer, after in zip(self.layers, self.layers[1:] + [None]):
                layer.init_scheme = "he" if after is not None and after.wants_he_init else "glorot"
                layer.build(tensor.shape, rng, strict=self.strict)
                nodes.append(Node(layer, [tensor], layer.output_shape))
                tensor = nodes[-1].output
        self._plan_graph([first], [tensor], nodes)
        return tensor.shape

    @property
    def input_shape(self):
        return tuple(self.inputs[0].shape) if self.plan is not None else None

    def _require_built(self) -> None:
        if self.plan is None:
            raise ShapeError(f"{self.name}: the model is not built; pass input_shape=(H, W, C) "
                             f"or call build((H, W, C))")

    # ------------------------------------------------------------------ config (the chain format of every version)
    def get_config(self) -> dict:
        """The architecture as plain data (JSON-ready): rebuild it with :meth:`from_config`."""
        self._require_built()
        return {"name": self.name, "input_shape": list(self.input_shape), "strict": self.strict,
                "seed": self.seed, "meta": self.meta,
                "layers": [{"class": type(layer).__name__, "config": layer.get_config()} for layer in self.layers]}

    @classmethod
    def from_config(cls, config: Mapping) -> "Model":
        """Build a model from :meth:`get_config` data; no code is run, layer classes come from a fixed table.
        A graph's config (``"class": "Model"``) gives a :class:`Model`."""
        _require_mapping(config)
        if config.get("class") == "Model":
            return Model.from_config(config)
        layers = []
        for index, entry in enumerate(config.get("layers", [])):
            kind = entry.get("class") if isinstance(entry, Mapping) else None
            if kind not in LAYER_CLASSES:
                raise ConfigError(f"architecture: layer {index} has unknown class {kind!r}; known classes are "
                                  f"{sorted(LAYER_CLASSES)} (custom layers: decorate the class with "
                                  f"cnnkit.register_layer)")
            try:
                layers.append(LAYER_CLASSES[kind].from_config(entry.get("config", {})))
            except TypeError as error:
                raise ConfigError(f"architecture: layer {index} ({kind}) has bad arguments: {error}") from None
        model = cls(layers, input_shape=config.get("input_shape"), strict=config.get("strict", False),
                    seed=config.get("seed", 0), name=config.get("name", "sequential"))
        model.meta = dict(config.get("meta", {}))
        return model

    def __repr__(self) -> str:
        inner = ",\n".join(f"  {layer.name}: {layer!r}" for layer in self.layers)
        return f"Sequential(name={self.name!r}, input_shape={self.input_shape}, [\n{inner}\n])"



def _require_mapping(config) -> None:
    if not isinstance(config, Mapping):
        raise ConfigError(f"architecture: must be a mapping (a JSON object), as get_config gives; received "
                          f"{type(config).__name__}")


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
