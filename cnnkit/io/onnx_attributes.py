"""The attributes of an ONNX node, decoded into plain Python values and arrays.

An ``AttributeProto`` says its type (``INT``, ``FLOATS``, ``TENSOR``, ...; files of IR version 1
may leave it out, and then the one field it fills says it) and keeps its value in that type's
field. INT, FLOAT and STRING become ``int``, ``float`` and ``str``, the list types tuples of
them, TENSOR a read-only array (``cnnkit.io.onnx_tensors``). Subgraphs (``GRAPH``, ``GRAPHS``:
the bodies of If, Loop and Scan) are refused: a CNN import does not need control flow, and a
reader that followed them would have to check graphs inside graphs. So are the types cnnkit
never reads (``TENSORS``, sparse tensors, type protos) and references to function attributes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnkit.errors import OnnxError
from cnnkit.io.onnx_tensors import TensorSource, tensor_array

__all__ = ["MAX_ATTRIBUTES", "MAX_ATTRIBUTE_VALUES", "MAX_NAME_LENGTH", "checked_text", "node_attributes"]

MAX_ATTRIBUTES = 1_000          # per node
MAX_ATTRIBUTE_VALUES = 1 << 16  # entries of an INTS / FLOATS / STRINGS attribute
MAX_NAME_LENGTH = 4096          # characters of a name, op type, domain or string attribute

# AttributeProto.AttributeType codes: readable ones, and the field that holds each.
_FLOAT, _INT, _STRING, _TENSOR, _FLOATS, _INTS, _STRINGS = 1, 2, 3, 4, 6, 7, 8
_GRAPHS = {5: "GRAPH", 10: "GRAPHS"}
_UNREAD = {9: "TENSORS", 11: "SPARSE_TENSOR", 12: "SPARSE_TENSORS", 13: "TYPE_PROTO", 14: "TYPE_PROTOS"}
_SINGLE_FIELDS = {"f": _FLOAT, "i": _INT, "s": _STRING, "t": _TENSOR, "g": 5, "sparse_tensor": 11, "tp": 13}
_LIST_FIELDS = {"floats": _FLOATS, "ints": _INTS, "strings": _STRINGS, "tensors": 9, "graphs": 10,
                "sparse_tensors": 12, "type_protos": 14}


def node_attributes(proto: Any, node: str, source: TensorSource) -> dict:
    """The attributes of ``proto`` (a ``NodeProto`` named ``node``) as ``{name: value}``: int,
    float, str, tuples of those, or a read-only array for a TENSOR. Refuses subgraphs, types
    cnnkit does not read, repeated names and oversized lists, naming the node and attribute."""
    path = source.path
    if len(proto.attribute) > MAX_ATTRIBUTES:
        raise OnnxError(f"{path}: node '{node}' has {len(proto.attribute)} attributes, more than {MAX_ATTRIBUTES}")
    values: dict = {}
    for attribute in proto.attribute:
        name = checked_text(attribute.name, "attribute name", path)
        where = f"attribute '{name}' of node '{node}' ({proto.op_type})"
        if not name:
            raise OnnxError(f"{path}: node '{node}' has an attribute without a name; the file is damaged")
        if name in values:
            raise OnnxError(f"{path}: node '{node}' sets the attribute '{name}' twice; the file is damaged")
        if attribute.ref_attr_name:
            raise OnnxError(f"{path}: {where} refers to a function attribute "
                            f"'{attribute.ref_attr_name[:100]}', which only exists inside functions; the "
                            "file is damaged")
        values[name] = _attribute_value(attribute, where, source)
    return values


def _attribute_type(attribute: Any, where: str, path: Path) -> int:
    """The attribute's declared type; for files that leave it UNDEFINED, the one field it fills."""
    if attribute.type:
        return attribute.type
    filled = [code for field_name, code in _SINGLE_FIELDS.items() if attribute.HasField(field_name)]
    filled += [code for field_name, code in _LIST_FIELDS.items() if len(getattr(attribute, field_name))]
    if len(filled) != 1:
        raise OnnxError(f"{path}: {where} has no type and {'no value' if not filled else 'several values'}; "
                        "the file is damaged")
    return filled[0]


def _attribute_value(attribute: Any, where: str, source: TensorSource) -> Any:
    path = source.path
    code = _attribute_type(attribute, where, path)
    if code in _GRAPHS:
        raise OnnxError(f"{path}: {where} is a subgraph ({_GRAPHS[code]}); control flow (If, Loop, Scan) "
                        "is not part of a CNN cnnkit imports: export the model without it (constant "
                        "conditions folded, loops unrolled)")
    if code in _UNREAD:
        raise OnnxError(f"{path}: {where} has type {_UNREAD[code]}, which cnnkit does not read")
    if code == _FLOAT:
        return float(attribute.f)
    if code == _INT:
        return int(attribute.i)
    if code == _STRING:
        return _decode(attribute.s, where, path)
    if code == _TENSOR:
        return tensor_array(attribute.t, where, source)
    if code in (_FLOATS, _INTS, _STRINGS):
        items = {_FLOATS: attribute.floats, _INTS: attribute.ints, _STRINGS: attribute.strings}[code]
        if len(items) > MAX_ATTRIBUTE_VALUES:
            raise OnnxError(f"{path}: {where} has {len(items)} values, more than {MAX_ATTRIBUTE_VALUES}")
        if code == _FLOATS:
            return tuple(float(v) for v in items)
        if code == _INTS:
            return tuple(int(v) for v in items)
        return tuple(_decode(v, where, path) for v in items)
    raise OnnxError(f"{path}: {where} has the unknown attribute type {code}; the file is damaged")


def _decode(raw: bytes, where: str, path: Path) -> str:
    if len(raw) > MAX_NAME_LENGTH:
        raise OnnxError(f"{path}: {where} holds a string of {len(raw)} bytes, more than {MAX_NAME_LENGTH}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OnnxError(f"{path}: {where} holds {raw[:40]!r}, which is not UTF-8 text; the file is damaged") from None


def checked_text(text: str, what: str, path: Path) -> str:
    """A string field of the file (a name, op type, domain), checked: protobuf hands it back as
    bytes when it is not UTF-8, and its length is bounded."""
    if not isinstance(text, str):
        raise OnnxError(f"{path}: a {what} holds {bytes(text)[:40]!r}, which is not UTF-8 text; the file is damaged")
    if len(text) > MAX_NAME_LENGTH:
        raise OnnxError(f"{path}: a {what} is {len(text)} characters long, more than {MAX_NAME_LENGTH}; "
                        "the file is damaged")
    return text
