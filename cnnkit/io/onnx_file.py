"""Read an ONNX file into plain, checked data: nodes, values, initializers; no cnnkit model yet.

This is the layer under the ONNX importer: it answers "what does the file say", safely, and
leaves "what does it mean for cnnkit" to the converter. What it guarantees:

* the file is a regular file no larger than ``max_bytes``, checked before it is parsed; a
  protobuf that does not parse, or is cut short, is an ``OnnxError``;
* tensors (initializers and TENSOR attributes) are numeric arrays of a dtype cnnkit uses, their
  dims checked against the bytes present before any allocation, external data read only from
  the model's folder (``cnnkit.io.onnx_tensors``); attributes are plain values
  (``cnnkit.io.onnx_attributes``);
* the graph is SSA (every name defined once), closed (every input defined) and acyclic, and
  its nodes come back topologically sorted (files are required to be, but are not always);
* what a CNN import never needs and a reader would have to trust is refused, not skipped:
  subgraphs (If/Loop/Scan bodies, GRAPH attributes), model-local functions, sparse tensors.

Nothing from the file is executed. The ``onnx`` package (``pip install cnnkit[onnx]``) parses
the protobuf and is imported only when a file is read.
"""

from __future__ import annotations

import heapq
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.errors import OnnxError
from cnnkit.io.onnx_attributes import MAX_NAME_LENGTH, checked_text, node_attributes
from cnnkit.io.onnx_tensors import DTYPES, MAX_RANK, TensorSource, dtype_name, tensor_array

__all__ = ["DEFAULT_MAX_BYTES", "OnnxGraph", "OnnxNode", "OnnxValue", "read_onnx_graph"]

# Limits on what one file may declare. Real CNNs sit far below them (ResNet-152: ~500 nodes,
# ~300 initializers); they bound the Python objects a hostile file can make the reader build.
DEFAULT_MAX_BYTES = 4 << 30   # the model file and its external data together
MAX_NODES = 100_000
MAX_TENSORS = 100_000          # initializers
MAX_VALUES = 100_000           # graph inputs, outputs and value_info entries, each
MAX_NODE_ARITY = 10_000        # inputs, or outputs, of one node

_DEFAULT_DOMAINS = ("", "ai.onnx")



@dataclass(frozen=True)
class OnnxNode:
    """One node of the graph, as the file states it (names, attributes), attributes decoded."""

    op_type: str
    name: str                 # the node's name, or f"{op_type}_{index}" when the file leaves it empty; unique
    inputs: tuple[str, ...]   # "" for an omitted optional input
    outputs: tuple[str, ...]  # "" for an omitted optional output
    attributes: dict          # name -> int | float | str | tuple of those | np.ndarray (TENSOR attribute)
    domain: str               # "" for the default ONNX domain ("ai.onnx" normalised to "")


@dataclass(frozen=True)
class OnnxValue:
    """A named tensor the file declares: a graph input or output, or an intermediate's value_info."""

    name: str
    shape: tuple | None       # each dim an int, a str (symbolic, e.g. "batch") or None; None if rank unknown
    dtype: np.dtype | None    # None when the file does not say, or (value_info only) a type cnnkit lacks


@dataclass(frozen=True)
class OnnxGraph:
    """A checked ONNX model: the main graph, its tensors and the opsets it was written for."""

    path: Path
    opset: int                              # the default-domain opset version
    inputs: tuple[OnnxValue, ...]           # graph inputs that are not initializers
    outputs: tuple[OnnxValue, ...]
    initializers: dict[str, np.ndarray]     # read-only arrays, external data resolved
    nodes: tuple[OnnxNode, ...]             # topologically sorted; every input defined earlier
    value_info: dict[str, OnnxValue]        # shapes the file declares for intermediate tensors (may be empty)
    opset_imports: dict[str, int] = field(default_factory=dict)  # every domain's version ("" for ONNX's)
    ir_version: int = 0
    producer: str = ""                      # producer_name and producer_version, e.g. "pytorch 2.13.0"


def read_onnx_graph(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> OnnxGraph:
    """Read and check the ONNX model at ``path``; build nothing from it.

    ``max_bytes`` bounds what is read: the model file, then its external data files, together.
    External data is read only from files inside the model's folder.

    Raises:
        OnnxError: the ``onnx`` package is missing; the file is missing, too large, not an ONNX
            protobuf; or it breaks one of the checks above. The message names the file, the
            node, initializer or attribute, the value found and what to do.
    """
    path = Path(path)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise OnnxError(f"{path}: max_bytes={max_bytes!r} is not a number of bytes; give a non-negative int")
    onnx = _import_onnx()
    model, size = _parse(path, max_bytes, onnx)
    try:
        return _read_model(model, path, TensorSource(path, path.absolute().parent.resolve(), max_bytes - size))
    except MemoryError:
        raise OnnxError(f"{path}: not enough memory to read the model's tensors") from None


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise OnnxError("reading ONNX files needs the optional onnx package, which is not installed; "
                        "install it with: pip install cnnkit[onnx]") from None
    return onnx


def _parse(path: Path, max_bytes: int, onnx: Any) -> tuple[Any, int]:
    """The file's ``ModelProto``, its size checked before its bytes are read. The bytes are parsed
    as binary protobuf, as ``onnx.load(path, load_external_data=False)`` does for ``.onnx`` files,
    but from the descriptor that was checked (never by the file name's guess of a text format)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise OnnxError(f"{path}: cannot open the ONNX file ({exc.strerror or exc}); check the path") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OnnxError(f"{path}: is not a regular file (a directory, FIFO or device); give an .onnx file")
    with os.fdopen(fd, "rb", buffering=0) as handle:
        if info.st_size > max_bytes:
            raise OnnxError(f"{path}: the file has {info.st_size} bytes, more than max_bytes={max_bytes}; "
                            "raise max_bytes if the model is really that large")
        try:
            data = handle.read(info.st_size + 1)
        except MemoryError:
            raise OnnxError(f"{path}: not enough memory to read the file ({info.st_size} bytes)") from None
    if len(data) > max_bytes:
        raise OnnxError(f"{path}: the file grew past max_bytes={max_bytes} while it was read; read it again")
    model = onnx.ModelProto()
    try:
        consumed = model.ParseFromString(data)
    except MemoryError:
        raise OnnxError(f"{path}: not enough memory to parse the file ({len(data)} bytes)") from None
    except Exception as exc:  # protobuf's DecodeError, or any failure on untrusted bytes
        raise OnnxError(f"{path}: is not an ONNX model (protobuf: {exc}); is it a damaged or "
                        "truncated .onnx file?") from None
    if consumed is not None and consumed != len(data):
        raise OnnxError(f"{path}: the protobuf ends after {consumed} of {len(data)} bytes; the file is damaged")
    return model, len(data)


def _read_model(model: Any, path: Path, source: TensorSource) -> OnnxGraph:
    if not model.HasField("graph"):
        raise OnnxError(f"{path}: the model has no graph; is it an ONNX model file?")
    opsets = _opsets(model, path)
    _refuse_functions(model, path)
    graph = model.graph
    _check_counts(graph, path)
    initializers = _initializers(graph, source)
    inputs = _graph_values(graph.input, "graph input", path)
    _check_unique([value.name for value in inputs], "graph input", path)
    inputs = tuple(value for value in inputs if value.name not in initializers)
    outputs = _graph_values(graph.output, "graph output", path)
    _check_unique([value.name for value in outputs], "graph output", path)
    value_info = {value.name: value for value in (_value(info, "value_info", path, strict=False)
                                                  for info in graph.value_info)}
    nodes = _nodes(graph, opsets, source)
    defined = {**{name: "an initializer" for name in initializers},
               **{value.name: "a graph input" for value in inputs}}
    nodes = _sorted(nodes, defined, path)
    for value in outputs:
        if value.name not in defined:
            raise OnnxError(f"{path}: graph output '{value.name}' is not produced by any node, graph input "
                            "or initializer; the graph is incomplete")
    producer = " ".join(filter(None, (checked_text(model.producer_name, "producer_name", path),
                                      checked_text(model.producer_version, "producer_version", path))))
    return OnnxGraph(path=path, opset=opsets[""], inputs=inputs, outputs=outputs, initializers=initializers,
                     nodes=nodes, value_info=value_info, opset_imports=opsets,
                     ir_version=int(model.ir_version), producer=producer)


def _opsets(model: Any, path: Path) -> dict[str, int]:
    opsets: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain in _DEFAULT_DOMAINS else checked_text(entry.domain, "opset domain", path)
        if domain in opsets:
            raise OnnxError(f"{path}: opset_import lists the domain {domain or 'ai.onnx'!r} twice; the "
                            "file is damaged")
        if entry.version < 1:
            raise OnnxError(f"{path}: opset_import gives the domain {domain or 'ai.onnx'!r} version "
                            f"{entry.version}; a version is at least 1")
        opsets[domain] = int(entry.version)
    if "" not in opsets:
        raise OnnxError(f"{path}: opset_import has no version for the default ONNX domain (imports: "
                        f"{sorted(opsets) or 'none'}); re-export the model with an opset (e.g. opset_version=17)")
    return opsets


def _refuse_functions(model: Any, path: Path) -> None:
    if len(model.functions):
        names = [f"{function.domain}:{function.name}" if function.domain else function.name
                 for function in list(model.functions)[:20]]
        raise OnnxError(f"{path}: the model defines local functions {names}, which cnnkit does not "
                        "import; inline them first (onnx.inliner.inline_local_functions)")


def _check_counts(graph: Any, path: Path) -> None:
    limits = (("node", graph.node, MAX_NODES), ("initializer", graph.initializer, MAX_TENSORS),
              ("input", graph.input, MAX_VALUES), ("output", graph.output, MAX_VALUES),
              ("value_info", graph.value_info, MAX_VALUES))
    for what, entries, limit in limits:
        if len(entries) > limit:
            raise OnnxError(f"{path}: the graph has {len(entries)} {what} entries, more than the {limit} "
                            "cnnkit reads; this is no CNN cnnkit can import")
    if len(graph.sparse_initializer):
        raise OnnxError(f"{path}: sparse initializer '{graph.sparse_initializer[0].values.name}' is not "
                        "supported; store the weights dense")


def _initializers(graph: Any, source: TensorSource) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        name = checked_text(tensor.name, "initializer name", source.path)
        if not name:
            raise OnnxError(f"{source.path}: an initializer has no name; the file is damaged")
        if name in arrays:
            raise OnnxError(f"{source.path}: initializer '{name}' is defined twice; the file is damaged")
        arrays[name] = tensor_array(tensor, f"initializer '{name}'", source)
    return arrays


def _graph_values(entries: Any, what: str, path: Path) -> tuple[OnnxValue, ...]:
    return tuple(_value(info, what, path, strict=True) for info in entries)


def _value(info: Any, what: str, path: Path, *, strict: bool) -> OnnxValue:
    """A ValueInfoProto as an OnnxValue. ``strict``: a graph input or output must be a tensor of a
    dtype cnnkit uses; a value_info entry only documents, so what cnnkit cannot use reads as None."""
    name = checked_text(info.name, f"{what} name", path)
    if not name:
        raise OnnxError(f"{path}: a {what} has no name; the file is damaged")
    kind = info.type.WhichOneof("value") if info.HasField("type") else None
    if kind is None:
        return OnnxValue(name, None, None)
    if kind != "tensor_type":
        if strict:
            raise OnnxError(f"{path}: {what} '{name}' is a {kind.removesuffix('_type')}, not a tensor; "
                            "cnnkit imports models whose inputs and outputs are tensors")
        return OnnxValue(name, None, None)
    tensor_type = info.type.tensor_type
    code = tensor_type.elem_type
    if code and code not in DTYPES and strict:
        raise OnnxError(f"{path}: {what} '{name}' has data type {dtype_name(code)}, which cnnkit does not "
                        "compute with; export the model with float32 inputs and outputs")
    shape = _shape(tensor_type.shape, f"{what} '{name}'", path) if tensor_type.HasField("shape") else None
    return OnnxValue(name, shape, DTYPES.get(code))


def _shape(shape: Any, what: str, path: Path) -> tuple:
    if len(shape.dim) > MAX_RANK:
        raise OnnxError(f"{path}: {what} has rank {len(shape.dim)}, more than the {MAX_RANK} cnnkit reads")
    dims: list = []
    for dim in shape.dim:
        kind = dim.WhichOneof("value")
        if kind == "dim_value":
            if dim.dim_value < 0:
                raise OnnxError(f"{path}: {what} has the negative dimension {dim.dim_value}; mark an unknown "
                                "size with a dim_param name instead")
            dims.append(int(dim.dim_value))
        else:  # a symbolic name ("batch"), or nothing known
            dims.append(checked_text(dim.dim_param, f"{what} dim_param", path) or None)
    return tuple(dims)


def _check_unique(names: list[str], what: str, path: Path) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise OnnxError(f"{path}: {what} '{name}' is declared twice; the file is damaged")
        seen.add(name)


# -------------------------------------------------------------------------------- nodes


def _nodes(graph: Any, opsets: dict[str, int], source: TensorSource) -> list[OnnxNode]:
    path, protos = source.path, list(graph.node)
    names = _node_names(protos, path)
    nodes = []
    for proto, name in zip(protos, names):
        op_type = checked_text(proto.op_type, "op_type", path)
        if not op_type:
            raise OnnxError(f"{path}: node '{name}' has no op_type; the file is damaged")
        domain = "" if proto.domain in _DEFAULT_DOMAINS else checked_text(proto.domain, "domain", path)
        if domain not in opsets:
            raise OnnxError(f"{path}: node '{name}' ({op_type}) is in the domain {domain!r}, which the "
                            f"model does not import (imports: {sorted(opsets)}); the file is damaged")
        for what, names_ in (("inputs", proto.input), ("outputs", proto.output)):
            if len(names_) > MAX_NODE_ARITY:
                raise OnnxError(f"{path}: node '{name}' has {len(names_)} {what}, more than {MAX_NODE_ARITY}")
        nodes.append(OnnxNode(op_type=op_type, name=name,
                              inputs=tuple(checked_text(n, "input name", path) for n in proto.input),
                              outputs=tuple(checked_text(n, "output name", path) for n in proto.output),
                              attributes=node_attributes(proto, name, source), domain=domain))
    return nodes


def _node_names(protos: list, path: Path) -> list[str]:
    """Each node's name, unique: the file's own names first; an empty or repeated one becomes
    ``{op_type}_{index}`` (index in file order), suffixed ``_1``, ``_2`` ... if that is taken."""
    given = [checked_text(proto.name, "node name", path) for proto in protos]
    taken: set[str] = set()
    keep = []
    for name in given:
        keep.append(bool(name) and name not in taken)
        taken.add(name)
    names, suffix = [], {}
    for index, (proto, name, kept) in enumerate(zip(protos, given, keep)):
        if not kept:
            base = name if name else f"{proto.op_type[:MAX_NAME_LENGTH]}_{index}"
            name = base
            while name in taken or not name:
                suffix[base] = suffix.get(base, 0) + 1
                name = f"{base}_{suffix[base]}"
            taken.add(name)
        names.append(name)
    return names


# -------------------------------------------------------------------------------- graph


def _sorted(nodes: list[OnnxNode], defined: dict[str, str], path: Path) -> tuple[OnnxNode, ...]:
    """The nodes in an order where each reads only what is defined before it (file order kept
    where it already is one); refuses a name defined twice, an undefined input and a cycle.
    ``defined`` (graph inputs and initializers) gains every node output."""
    producer: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for output in node.outputs:
            if not output:
                continue
            if output in defined:
                raise OnnxError(f"{path}: node '{node.name}' ({node.op_type}) writes '{output}', which "
                                f"{defined[output]} already defines; every name may be defined once (SSA)")
            defined[output] = f"node '{node.name}'"
            producer[output] = index
    readers: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for index, node in enumerate(nodes):
        for name in set(node.inputs):
            if name and name not in defined:
                raise OnnxError(f"{path}: node '{node.name}' ({node.op_type}) reads '{name}', which no graph "
                                "input, initializer or node defines; the graph is incomplete")
            if name in producer:
                readers[producer[name]].append(index)
                waiting[index] += 1
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) < len(nodes):
        stuck = [nodes[index].name for index, count in enumerate(waiting) if count][:10]
        raise OnnxError(f"{path}: the graph has a cycle through the nodes {stuck}; an ONNX graph must be "
                        "acyclic (re-export the model)")
    return tuple(nodes[index] for index in order)
