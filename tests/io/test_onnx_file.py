"""The ONNX file reader (``cnnkit.io.onnx_file``): valid files read into the expected structure,
and every hostile or broken file refused with an ``OnnxError`` naming the file and the culprit,
before the reader allocates what the file asks for.

Files are built with ``onnx.helper`` (the onnx package is the reader's optional extra), one is
exported by ``torch.onnx.export``. Refusals are checked with ``refusal.assert_refused``: the
message names the file and the thing, and the Python heap stays small on the way.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from refusal import assert_refused

onnx = pytest.importorskip("onnx", reason="the ONNX reader needs the optional onnx package: pip install cnnkit[onnx]")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cnnkit.errors import CnnkitError, OnnxError  # noqa: E402
from cnnkit.io import onnx_attributes, onnx_file  # noqa: E402
from cnnkit.io.onnx_file import OnnxGraph, OnnxNode, OnnxValue, read_onnx_graph  # noqa: E402

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, initializers=(), *, opset=17, value_info=(), opsets=None, **kwargs):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers), value_info=list(value_info))
    imports = opsets if opsets is not None else [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=imports, producer_name="cnnkit-test", **kwargs)


def _save(model, path: Path) -> Path:
    """The bytes of ``model`` as they are, without onnx.save's processing of external data."""
    path.write_bytes(model.SerializeToString())
    return path


def _x(name="x", shape=("N", 3, 8, 8), elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _relu_model(**kwargs):
    """x -> Relu -> y, the smallest valid graph, with optional extra initializers."""
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_x()], [_x("y")], **kwargs)


def _conv_model():
    """A conv block written out of order, with an unnamed node, every attribute type, a Constant
    holding a tensor, symbolic and unknown dims, value_info, an optional input left empty and an
    initializer also listed as a graph input (as IR version 3 files do)."""
    weight = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = helper.make_tensor("b", TensorProto.FLOAT, [4], [0.5, -1.0, 2.0, 0.0])   # float_data
    scale = RNG.random(4).astype(np.float32)
    nodes = [
        helper.make_node("Add", ["r", "shift"], ["y"], name="add"),
        helper.make_node("Relu", ["bn"], ["r"], domain="ai.onnx"),             # no name: "Relu_1"
        helper.make_node("BatchNormalization", ["c", "scale", "b", "b", "scale"], ["bn"], name="bn",
                         epsilon=1e-3, momentum=0.9),
        helper.make_node("Conv", ["x", "w", ""], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         auto_pad="NOTSET", dilations=[1, 1]),
        helper.make_node("Constant", [], ["shift"], name="const",
                         value=numpy_helper.from_array(np.array([1.5], np.float32))),
        helper.make_node("Identity", ["y"], ["z"], name="tagged", floats_attr=[0.25, 2.0],
                         strings_attr=["a", "bé"], note="text"),
    ]
    value_info = [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4, None, 8]),
                  helper.make_tensor_value_info("r", TensorProto.FLOAT, None)]
    model = _model(nodes, [_x(), helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3])],
                   [_x("z", ("N", 4, 8, 8))],
                   [numpy_helper.from_array(weight, "w"), bias, numpy_helper.from_array(scale, "scale")],
                   value_info=value_info)
    return model, weight, scale


# ---------------------------------------------------------------------------- valid files


def test_a_conv_block_reads_into_the_expected_structure(tmp_path):
    model, weight, scale = _conv_model()
    graph = read_onnx_graph(_save(model, tmp_path / "conv.onnx"))
    assert isinstance(graph, OnnxGraph) and graph.path == tmp_path / "conv.onnx"
    assert graph.opset == 17 and graph.opset_imports == {"": 17} and graph.producer == "cnnkit-test"
    assert graph.inputs == (OnnxValue("x", ("N", 3, 8, 8), np.dtype(np.float32)),)  # "w" is an initializer
    assert graph.outputs == (OnnxValue("z", ("N", 4, 8, 8), np.dtype(np.float32)),)
    assert graph.value_info == {"c": OnnxValue("c", ("N", 4, None, 8), np.dtype(np.float32)),
                                "r": OnnxValue("r", None, np.dtype(np.float32))}
    assert [node.name for node in graph.nodes] == ["conv", "bn", "Relu_1", "const", "add", "tagged"]
    conv, bn, relu, const, add, tagged = graph.nodes
    assert conv == OnnxNode("Conv", "conv", ("x", "w", ""), ("c",),
                            {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1), "auto_pad": "NOTSET",
                             "dilations": (1, 1)}, "")
    assert relu.domain == "" and relu.op_type == "Relu"
    assert bn.attributes["epsilon"] == pytest.approx(1e-3) and isinstance(bn.attributes["epsilon"], float)
    assert tagged.attributes == {"floats_attr": (0.25, 2.0), "strings_attr": ("a", "bé"), "note": "text"}
    value = const.attributes["value"]
    assert isinstance(value, np.ndarray) and value.dtype == np.float32 and value.tolist() == [1.5]
    assert sorted(graph.initializers) == ["b", "scale", "w"]
    np.testing.assert_array_equal(graph.initializers["w"], weight)
    np.testing.assert_array_equal(graph.initializers["scale"], scale)
    assert graph.initializers["b"].tolist() == [0.5, -1.0, 2.0, 0.0]
    for array in [*graph.initializers.values(), value]:
        assert not array.flags.writeable and array.dtype.isnative
        with pytest.raises(ValueError):
            array[...] = 0


TYPED = [(np.float32, TensorProto.FLOAT), (np.float64, TensorProto.DOUBLE), (np.float16, TensorProto.FLOAT16),
         (np.int8, TensorProto.INT8), (np.int16, TensorProto.INT16), (np.int32, TensorProto.INT32),
         (np.int64, TensorProto.INT64), (np.uint8, TensorProto.UINT8), (np.bool_, TensorProto.BOOL)]


@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "typed_field"])
@pytest.mark.parametrize("dtype, code", TYPED, ids=[np.dtype(t).name for t, _ in TYPED])
def test_every_supported_dtype_reads_from_raw_data_and_from_its_typed_field(tmp_path, dtype, code, raw):
    values = (RNG.standard_normal((2, 3)) * 50).astype(dtype)
    if raw:
        tensor = numpy_helper.from_array(values, "t")
        assert tensor.HasField("raw_data")
    else:
        tensor = helper.make_tensor("t", code, values.shape, values.flatten().tolist(), raw=False)
        assert not tensor.HasField("raw_data")
    graph = read_onnx_graph(_save(_relu_model(initializers=[tensor]), tmp_path / "t.onnx"))
    array = graph.initializers["t"]
    assert array.dtype == np.dtype(dtype) and array.shape == (2, 3)
    np.testing.assert_array_equal(array, values)


def test_scalars_and_empty_tensors_read(tmp_path):
    tensors = [numpy_helper.from_array(np.array(3, np.int64), "scalar"),
               numpy_helper.from_array(np.zeros((0, 4), np.float32), "empty"),
               helper.make_tensor("empty_typed", TensorProto.FLOAT, [4, 0], [])]
    graph = read_onnx_graph(_save(_relu_model(initializers=tensors), tmp_path / "s.onnx"))
    assert graph.initializers["scalar"].shape == () and graph.initializers["scalar"] == 3
    assert graph.initializers["empty"].shape == (0, 4) and graph.initializers["empty_typed"].shape == (4, 0)


def test_node_names_are_unique_and_the_files_own_names_win(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name=""),          # Relu_0
             helper.make_node("Relu", ["a"], ["b"], name="Relu_0"),    # the file's own name keeps it
             helper.make_node("Relu", ["b"], ["c"], name="dup"),
             helper.make_node("Relu", ["c"], ["y"], name="dup")]       # a repeated name: dup_1
    graph = read_onnx_graph(_save(_model(nodes, [_x()], [_x("y")]), tmp_path / "n.onnx"))
    assert [node.name for node in graph.nodes] == ["Relu_0_1", "Relu_0", "dup", "dup_1"]


def test_an_attribute_without_a_type_is_read_by_the_field_it_fills(tmp_path):
    node = helper.make_node("LeakyRelu", ["x"], ["y"], name="leaky", alpha=0.5)
    node.attribute[0].type = onnx.AttributeProto.UNDEFINED   # as IR version 1 files were written
    graph = read_onnx_graph(_save(_model([node], [_x()], [_x("y")]), tmp_path / "u.onnx"))
    assert graph.nodes[0].attributes == {"alpha": 0.5}


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # the TorchScript exporter says it is legacy
def test_a_model_exported_by_torch_onnx_export_reads(tmp_path):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5)).eval()
    with torch.no_grad():   # distinct values: the exporter shares equal initializers through Identity nodes
        for tensor in (net[1].weight, net[1].bias, net[1].running_mean, net[1].running_var):
            tensor.uniform_(0.5, 2.0)
    path = tmp_path / "torch.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False, opset_version=13,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                      do_constant_folding=False)
    graph = read_onnx_graph(path)
    assert graph.opset == 13 and graph.producer.startswith("pytorch")
    assert [value.name for value in graph.inputs] == ["image"]
    assert graph.inputs[0].shape == ("batch", 3, 8, 8) and graph.inputs[0].dtype == np.float32
    assert [value.name for value in graph.outputs] == ["logits"]
    ops = [node.op_type for node in graph.nodes]
    assert ops == ["Conv", "BatchNormalization", "Relu", "MaxPool", "Flatten", "Gemm"]
    assert graph.nodes[0].name == "/0/Conv" and graph.nodes[0].inputs == ("image", "0.weight", "0.bias")
    state = {name: tensor.detach().numpy() for name, tensor in net.state_dict().items()}
    np.testing.assert_array_equal(graph.initializers["0.weight"], state["0.weight"])
    np.testing.assert_array_equal(graph.initializers["5.weight"], state["5.weight"])
    np.testing.assert_array_equal(graph.initializers["1.running_var"], state["1.running_var"])
    defined = {value.name for value in graph.inputs} | set(graph.initializers)
    for node in graph.nodes:   # sorted: each node reads what is defined before it
        assert all(name in defined for name in node.inputs if name), node
        defined |= set(node.outputs)
    pool = next(node for node in graph.nodes if node.op_type == "MaxPool")
    assert pool.attributes["kernel_shape"] == (2, 2) and pool.attributes["strides"] == (2, 2)


def test_external_data_is_read_from_the_models_folder(tmp_path):
    weight = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    bias = RNG.standard_normal(8).astype(np.float64)
    model = _relu_model(initializers=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    (tmp_path / "weights").mkdir()
    onnx.save_model(model, tmp_path / "ext.onnx", save_as_external_data=True, location="weights/ext.bin",
                    size_threshold=0)
    saved = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    assert all(tensor.data_location == TensorProto.EXTERNAL for tensor in saved.graph.initializer)
    graph = read_onnx_graph(tmp_path / "ext.onnx")
    np.testing.assert_array_equal(graph.initializers["w"], weight)
    np.testing.assert_array_equal(graph.initializers["b"], bias)
    assert not graph.initializers["w"].flags.writeable
    # A symbolic link that stays inside the folder is followed.
    (tmp_path / "link.bin").symlink_to(tmp_path / "weights" / "ext.bin")
    for entry in saved.graph.initializer[0].external_data:
        entry.value = "link.bin" if entry.key == "location" else entry.value
    np.testing.assert_array_equal(read_onnx_graph(_save(saved, tmp_path / "linked.onnx")).initializers["w"], weight)


# -------------------------------------------------------------------------- refused files


def _read(path):
    return read_onnx_graph(path)


def test_a_missing_onnx_package_says_how_to_install_it(tmp_path, monkeypatch):
    path = _save(_relu_model(), tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)   # import onnx now raises ImportError
    with pytest.raises(OnnxError, match=r"pip install cnnkit\[onnx\]"):
        read_onnx_graph(path)


def test_a_file_larger_than_max_bytes_is_refused_before_parsing(tmp_path, monkeypatch):
    path = _save(_relu_model(), tmp_path / "m.onnx")
    monkeypatch.setattr(onnx.ModelProto, "ParseFromString", lambda *a: pytest.fail("parsed"), raising=False)
    message = assert_refused(lambda p: read_onnx_graph(p, max_bytes=10), path, OnnxError, "max_bytes=10")
    assert str(path.stat().st_size) in message


def test_missing_files_directories_and_fifos_are_refused(tmp_path):
    assert_refused(_read, tmp_path / "absent.onnx", OnnxError, "cannot open")
    (tmp_path / "dir.onnx").mkdir()
    assert_refused(_read, tmp_path / "dir.onnx", OnnxError, "not a regular file")
    os.mkfifo(tmp_path / "fifo.onnx")   # opened without blocking, then refused
    assert_refused(_read, tmp_path / "fifo.onnx", OnnxError, "not a regular file")


@pytest.mark.parametrize("cut", [b"not a protobuf at all \xff\xff\xff", "half"])
def test_bytes_that_are_no_onnx_protobuf_are_refused(tmp_path, cut):
    data = _relu_model().SerializeToString()
    path = tmp_path / "bad.onnx"
    path.write_bytes(data[: len(data) // 2] if cut == "half" else cut)
    assert_refused(_read, path, OnnxError, "not an ONNX model|damaged|no graph")


def test_subgraphs_nested_beyond_protobufs_depth_limit_are_refused(tmp_path):
    """Graphs inside If nodes inside graphs, 2000 deep, written as raw protobuf (onnx.helper cannot
    build them): the parser's depth limit refuses them, as a parse error, without a crash."""
    def field(number, payload):
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    graph = b""
    for _ in range(2000):   # GraphProto.node(1) -> NodeProto.attribute(5) -> AttributeProto.g(6)
        graph = field(1, field(4, b"If") + field(5, field(1, b"then_branch") + field(6, graph)))
    path = tmp_path / "deep.onnx"
    path.write_bytes(field(7, graph))   # ModelProto.graph
    assert_refused(_read, path, OnnxError, "is not an ONNX model .*protobuf")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def test_a_model_without_a_graph_is_refused(tmp_path):
    path = _save(onnx.ModelProto(ir_version=8), tmp_path / "empty.onnx")
    assert_refused(_read, path, OnnxError, "has no graph")


def test_opset_imports_are_checked(tmp_path):
    other = _relu_model(opsets=[helper.make_opsetid("com.example", 1)])
    assert_refused(_read, _save(other, tmp_path / "a.onnx"), OnnxError, "no version for the default ONNX domain")
    twice = _relu_model(opsets=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx", 17)])
    assert_refused(_read, _save(twice, tmp_path / "b.onnx"), OnnxError, "'ai.onnx' twice")
    zero = _relu_model(opsets=[helper.make_opsetid("", 0)])
    assert_refused(_read, _save(zero, tmp_path / "c.onnx"), OnnxError, "version 0")


def test_a_node_in_a_domain_not_imported_is_refused(tmp_path):
    node = helper.make_node("Custom", ["x"], ["y"], name="mine", domain="com.example")
    path = _save(_model([node], [_x()], [_x("y")]), tmp_path / "d.onnx")
    assert_refused(_read, path, OnnxError, r"node 'mine' \(Custom\) is in the domain 'com.example'")


def test_local_functions_are_refused_with_their_names(tmp_path):
    model = _relu_model(opsets=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    for name in ("Block", "Head"):
        model.functions.append(helper.make_function("local", name, ["a"], ["b"],
                                                    [helper.make_node("Relu", ["a"], ["b"])],
                                                    [helper.make_opsetid("", 17)]))
    message = assert_refused(_read, _save(model, tmp_path / "f.onnx"), OnnxError, "local functions")
    assert "local:Block" in message and "local:Head" in message


def test_subgraph_attributes_are_refused(tmp_path):
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [_x("t")])
    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=branch, else_branch=branch)
    model = _model([node], [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), _x()], [_x("y")])
    assert_refused(_read, _save(model, tmp_path / "if.onnx"), OnnxError,
                   r"attribute '(then|else)_branch' of node 'branch' \(If\) is a subgraph")


@pytest.mark.parametrize("kind", ["tensors", "type_proto", "untyped_empty", "ref_attr"])
def test_attributes_cnnkit_does_not_read_are_refused(tmp_path, kind):
    node = helper.make_node("Relu", ["x"], ["y"], name="act")
    if kind == "tensors":
        node.attribute.append(helper.make_attribute("ts", [numpy_helper.from_array(np.zeros(1, np.float32))]))
        match = "attribute 'ts' of node 'act' .* TENSORS"
    elif kind == "type_proto":
        node.attribute.append(helper.make_attribute("tp", helper.make_tensor_type_proto(TensorProto.FLOAT, [1])))
        match = "attribute 'tp' .* TYPE_PROTO"
    elif kind == "untyped_empty":
        node.attribute.append(onnx.AttributeProto(name="empty"))
        match = "attribute 'empty' of node 'act' .* no type and no value"
    else:
        node.attribute.append(onnx.AttributeProto(name="alpha", ref_attr_name="outer", type=onnx.AttributeProto.FLOAT))
        match = "attribute 'alpha' .* function attribute 'outer'"
    assert_refused(_read, _save(_model([node], [_x()], [_x("y")]), tmp_path / "a.onnx"), OnnxError, match)


def test_bad_attribute_values_are_refused(tmp_path, monkeypatch):
    node = helper.make_node("Relu", ["x"], ["y"], name="act", alpha=1.0)
    node.attribute.append(helper.make_attribute("alpha", 2.0))
    assert_refused(_read, _save(_model([node], [_x()], [_x("y")]), tmp_path / "a.onnx"), OnnxError,
                   "node 'act' sets the attribute 'alpha' twice")
    node = helper.make_node("Relu", ["x"], ["y"], name="act", mode=b"\xff\xfe")
    assert_refused(_read, _save(_model([node], [_x()], [_x("y")]), tmp_path / "b.onnx"), OnnxError,
                   "attribute 'mode' of node 'act' .* not UTF-8")
    monkeypatch.setattr(onnx_attributes, "MAX_ATTRIBUTE_VALUES", 8)
    node = helper.make_node("Reshape", ["x"], ["y"], name="reshape", shape=list(range(9)))
    assert_refused(_read, _save(_model([node], [_x()], [_x("y")]), tmp_path / "c.onnx"), OnnxError,
                   "attribute 'shape' of node 'reshape' .* 9 values, more than 8")


@pytest.mark.parametrize("where", ["node name", "initializer name", "external location"])
def test_names_that_are_not_utf8_are_refused(tmp_path, where):
    """protobuf hands such a string field back as bytes; the reader refuses it by name."""
    if where == "external location":
        path = _external_model(tmp_path, location="QQQQ.bin")
    else:
        tensor = numpy_helper.from_array(np.zeros(1, np.float32), "QQQQ" if where == "initializer name" else "t")
        model = _model([helper.make_node("Relu", ["x"], ["y"], name="QQQQ" if where == "node name" else "n")],
                       [_x()], [_x("y")], [tensor])
        path = _save(model, tmp_path / "model.onnx")
    data = path.read_bytes()
    assert data.count(b"QQQQ") == 1
    path.write_bytes(data.replace(b"QQQQ", b"Q\xff\xfeQ"))
    assert_refused(_read, path, OnnxError, "not UTF-8 text")


def test_too_many_nodes_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_file, "MAX_NODES", 3)
    nodes = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"]) for i in range(4)]
    model = _model(nodes, [_x("v0")], [_x("v4")])
    assert_refused(_read, _save(model, tmp_path / "n.onnx"), OnnxError, "4 node entries, more than the 3")


def test_a_name_defined_twice_is_refused(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="first"), helper.make_node("Sigmoid", ["x"], ["y"], name="second")]
    message = assert_refused(_read, _save(_model(nodes, [_x()], [_x("y")]), tmp_path / "a.onnx"), OnnxError,
                             r"node 'second' \(Sigmoid\) writes 'y'")
    assert "node 'first'" in message and "SSA" in message
    shadow = [helper.make_node("Relu", ["x"], ["w"], name="shadow")]
    model = _model(shadow, [_x()], [_x("w")], [numpy_helper.from_array(np.zeros(1, np.float32), "w")])
    assert_refused(_read, _save(model, tmp_path / "b.onnx"), OnnxError, "writes 'w', which an initializer already")
    tensors = [numpy_helper.from_array(np.zeros(1, np.float32), "w")] * 2
    assert_refused(_read, _save(_relu_model(initializers=tensors), tmp_path / "c.onnx"), OnnxError,
                   "initializer 'w' is defined twice")
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_x(), _x()], [_x("y")])
    assert_refused(_read, _save(model, tmp_path / "d.onnx"), OnnxError, "graph input 'x' is declared twice")


def test_undefined_inputs_and_outputs_are_refused(tmp_path):
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="add")]
    assert_refused(_read, _save(_model(nodes, [_x()], [_x("y")]), tmp_path / "a.onnx"), OnnxError,
                   r"node 'add' \(Add\) reads 'ghost', which no graph input")
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    assert_refused(_read, _save(_model(nodes, [_x()], [_x("z")]), tmp_path / "b.onnx"), OnnxError,
                   "graph output 'z' is not produced")


def test_a_cycle_is_refused_naming_its_nodes(tmp_path):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="left"), helper.make_node("Relu", ["a"], ["b"], name="right"),
             helper.make_node("Relu", ["a"], ["y"], name="out")]
    message = assert_refused(_read, _save(_model(nodes, [_x()], [_x("y")]), tmp_path / "c.onnx"), OnnxError, "cycle")
    assert "'left'" in message and "'right'" in message
    loop = [helper.make_node("Add", ["x", "y"], ["y"], name="self")]
    assert_refused(_read, _save(_model(loop, [_x()], [_x("y")]), tmp_path / "d.onnx"), OnnxError, "cycle .*'self'")


@pytest.mark.parametrize("code", [TensorProto.STRING, TensorProto.BFLOAT16, TensorProto.UINT16,
                                  TensorProto.COMPLEX64, TensorProto.UINT64, TensorProto.FLOAT8E4M3FN])
def test_tensors_of_a_dtype_cnnkit_does_not_use_are_refused(tmp_path, code):
    tensor = onnx.TensorProto(name="odd", data_type=code, dims=[1], raw_data=b"\0" * 16)
    assert_refused(_read, _save(_relu_model(initializers=[tensor]), tmp_path / "t.onnx"), OnnxError,
                   "initializer 'odd': data type .* is not one cnnkit computes with")


def _tensor_case(kind):
    if kind == "negative_dims":
        return onnx.TensorProto(name="t", data_type=1, dims=[2, -3], raw_data=b""), "negative size"
    if kind == "raw_too_short":
        return onnx.TensorProto(name="t", data_type=1, dims=[2, 3], raw_data=b"\0" * 20), "holds 20 bytes .* need 6 x 4 = 24"
    if kind == "raw_too_long":
        return onnx.TensorProto(name="t", data_type=7, dims=[1], raw_data=b"\0" * 9), "holds 9 bytes"
    if kind == "huge_dims":   # 2**62 elements claimed by 4 bytes: refused before any allocation
        return onnx.TensorProto(name="t", data_type=1, dims=[2**31, 2**31], raw_data=b"\0" * 4), "need 4611686018427387904 x 4"
    if kind == "huge_dims_typed":
        return onnx.TensorProto(name="t", data_type=1, dims=[2**40, 2**20], float_data=[1.0]), "holds 1 values but dims"
    if kind == "typed_too_long":
        return onnx.TensorProto(name="t", data_type=7, dims=[2], int64_data=[1, 2, 3]), "int64_data holds 3 values"
    if kind == "wrong_field":
        return onnx.TensorProto(name="t", data_type=1, dims=[1], int64_data=[1]), "keeps its values in float_data"
    if kind == "raw_and_typed":
        return onnx.TensorProto(name="t", data_type=1, dims=[1], raw_data=b"\0" * 4, float_data=[1.0]), "both raw_data and float_data"
    if kind == "int8_out_of_range":
        return onnx.TensorProto(name="t", data_type=3, dims=[2], int32_data=[1, 300]), r"outside \[-128, 127\]"
    if kind == "float16_out_of_range":
        return onnx.TensorProto(name="t", data_type=10, dims=[1], int32_data=[70000]), r"outside \[0, 65535\]"
    if kind == "bool_not_0_or_1":
        return onnx.TensorProto(name="t", data_type=9, dims=[2], raw_data=b"\x01\x07"), "neither 0 nor 1"
    if kind == "segment":
        tensor = onnx.TensorProto(name="t", data_type=1, dims=[1], raw_data=b"\0" * 4)
        tensor.segment.begin, tensor.segment.end = 0, 1
        return tensor, "segmented"
    if kind == "rank":
        return onnx.TensorProto(name="t", data_type=1, dims=[1] * 40, raw_data=b"\0" * 4), "40 dims"
    raise AssertionError(kind)


TENSOR_CASES = ["negative_dims", "raw_too_short", "raw_too_long", "huge_dims", "huge_dims_typed", "typed_too_long",
                "wrong_field", "raw_and_typed", "int8_out_of_range", "float16_out_of_range", "bool_not_0_or_1",
                "segment", "rank"]


@pytest.mark.parametrize("kind", TENSOR_CASES)
def test_damaged_initializers_are_refused_before_allocating(tmp_path, kind):
    tensor, match = _tensor_case(kind)
    assert_refused(_read, _save(_relu_model(initializers=[tensor]), tmp_path / "t.onnx"), OnnxError,
                   f"initializer 't': .*{match}", peak_limit=8 << 20)


@pytest.mark.parametrize("kind", ["huge_dims", "bool_not_0_or_1", "raw_too_short"])
def test_damaged_tensor_attributes_are_refused_naming_the_node(tmp_path, kind):
    tensor, match = _tensor_case(kind)
    node = helper.make_node("Constant", [], ["y"], name="const", value=tensor)
    model = _model([node], [], [_x("y")])
    assert_refused(_read, _save(model, tmp_path / "c.onnx"), OnnxError,
                   f"attribute 'value' of node 'const' \\(Constant\\): .*{match}", peak_limit=8 << 20)


def test_sparse_initializers_are_refused(tmp_path):
    values = numpy_helper.from_array(np.ones(2, np.float32), "sparse_w")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0, 3], np.int64), "i"), [4])
    model = _relu_model()
    model.graph.sparse_initializer.append(sparse)
    assert_refused(_read, _save(model, tmp_path / "s.onnx"), OnnxError, "sparse initializer 'sparse_w'")


def test_graph_inputs_and_outputs_must_be_usable_tensors(tmp_path):
    sequence = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_x(), sequence], [_x("y")])
    assert_refused(_read, _save(model, tmp_path / "a.onnx"), OnnxError, "graph input 'seq' is a sequence")
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_x(elem=TensorProto.STRING)], [_x("y")])
    assert_refused(_read, _save(model, tmp_path / "b.onnx"), OnnxError, "graph input 'x' has data type STRING")
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_x(shape=(1, -3, 8, 8))], [_x("y")])
    assert_refused(_read, _save(model, tmp_path / "c.onnx"), OnnxError, "graph input 'x' has the negative dimension -3")


def test_value_info_cnnkit_cannot_use_reads_as_unknown(tmp_path):
    """value_info only documents intermediate tensors: a sequence or an unusable dtype there is
    not refused (as it is for graph inputs), it reads as unknown."""
    infos = [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None),
             helper.make_tensor_value_info("text", TensorProto.STRING, [2]),
             helper.make_tensor_value_info("half", TensorProto.FLOAT16, [1, "C"])]
    graph = read_onnx_graph(_save(_relu_model(value_info=infos), tmp_path / "v.onnx"))
    assert graph.value_info == {"seq": OnnxValue("seq", None, None), "text": OnnxValue("text", (2,), None),
                                "half": OnnxValue("half", (1, "C"), np.dtype(np.float16))}


@pytest.mark.parametrize("max_bytes", [-1, 1.5, None, True])
def test_max_bytes_must_be_a_count_of_bytes(tmp_path, max_bytes):
    path = _save(_relu_model(), tmp_path / "m.onnx")
    with pytest.raises(OnnxError, match=f"max_bytes={max_bytes!r} is not a number of bytes"):
        read_onnx_graph(path, max_bytes=max_bytes)


def test_every_refusal_is_a_cnnkit_error():
    assert issubclass(OnnxError, CnnkitError)


# ----------------------------------------------------------------------------- external data


def _set_external(tensor, **entries):
    """Point ``tensor`` at external data: its entries replaced by ``entries`` (str values)."""
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=str(value))


def _external_model(folder: Path, **entries) -> Path:
    """A model whose 2x3 float32 initializer 'w' is external data with ``entries``; the data file
    ``w.bin`` (24 bytes) is written beside the model."""
    (folder / "w.bin").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    tensor = numpy_helper.from_array(np.zeros((2, 3), np.float32), "w")
    _set_external(tensor, **entries)
    return _save(_relu_model(initializers=[tensor]), folder / "model.onnx")


def test_external_data_with_an_offset_reads_only_its_range(tmp_path):
    path = _external_model(tmp_path, location="w.bin")
    (tmp_path / "w.bin").write_bytes(b"\xff" * 8 + np.arange(6, dtype=np.float32).tobytes() + b"\xee" * 8)
    model = onnx.load(path, load_external_data=False)
    _set_external(model.graph.initializer[0], location="w.bin", offset=8, length=24)
    graph = read_onnx_graph(_save(model, path))
    np.testing.assert_array_equal(graph.initializers["w"], np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("location, match", [
    ("../w.bin", "leaves the model's folder through '..'"),
    ("sub/../../w.bin", "through '..'"),
    ("/etc/passwd", "is absolute"),
    ("C:\\weights\\w.bin", "is absolute"),
    ("absent.bin", "cannot be opened"),
    (".", "outside the model's folder|not a regular file"),
])
def test_external_locations_outside_the_folder_are_refused(tmp_path, location, match):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "w.bin").write_bytes(np.arange(6, dtype=np.float32).tobytes())   # the target of an escape
    path = _external_model(folder, location=location)
    message = assert_refused(_read, path, OnnxError, f"initializer 'w': external data .*{match}")
    assert "w.bin" in message or location in message


def test_a_symlink_leaving_the_folder_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    path = _external_model(folder, location="link.bin")
    (folder / "link.bin").symlink_to(tmp_path / "secret.bin")
    assert_refused(_read, path, OnnxError, "initializer 'w': external data location 'link.bin' resolves to .*secret.bin, "
                                           "outside the model's folder")
    (folder / "sub").symlink_to(tmp_path)   # a linked folder, too
    path = _external_model(folder, location="sub/secret.bin")
    assert_refused(_read, path, OnnxError, "outside the model's folder")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the check after opening uses Linux's /proc/self/fd")
def test_a_file_swapped_out_of_the_folder_after_the_check_is_refused(tmp_path, monkeypatch):
    """The path is checked, then opened: the descriptor is checked again, so a directory replaced
    by a link between the two (simulated: the checked path is outside) is still refused."""
    from cnnkit.io import onnx_tensors

    folder = tmp_path / "model"
    folder.mkdir()
    path = _external_model(folder, location="w.bin")
    (tmp_path / "outside.bin").write_bytes((folder / "w.bin").read_bytes())
    monkeypatch.setattr(onnx_tensors, "external_path", lambda *args: tmp_path / "outside.bin")
    assert_refused(_read, path, OnnxError, "opened as .*outside.bin, outside the model's folder")


def test_external_directories_and_fifos_are_refused(tmp_path):
    (tmp_path / "data").mkdir()
    assert_refused(_read, _external_model(tmp_path, location="data"), OnnxError, "'data'|data is not a regular file")
    os.mkfifo(tmp_path / "pipe.bin")   # never opened for reading (it would block)
    assert_refused(_read, _external_model(tmp_path, location="pipe.bin"), OnnxError, "pipe.bin is not a regular file")


@pytest.mark.parametrize("entries, match", [
    ({"offset": 100}, "offset 100 lies beyond the end of .*w.bin \\(24 bytes\\)"),
    ({"offset": 8, "length": 24}, "offset 8 \\+ length 24 runs past the end"),
    ({"length": 20}, "length 20 is not the 24 bytes"),
    ({"offset": 4}, "length 20 is not the 24 bytes"),     # no length: to the end of the file
    ({"offset": "-4"}, "offset='-4' is not a non-negative integer"),
    ({"length": "1e3"}, "length='1e3' is not a non-negative integer"),
    ({"offset": 2**70}, "offset='1180591620717411303424' is not"),
])
def test_external_offsets_and_lengths_are_checked_against_the_file(tmp_path, entries, match):
    path = _external_model(tmp_path, location="w.bin", **entries)
    assert_refused(_read, path, OnnxError, f"initializer 'w': external data {match}")


def test_external_data_counts_against_max_bytes(tmp_path):
    path = _external_model(tmp_path, location="w.bin")
    size = path.stat().st_size
    assert read_onnx_graph(path, max_bytes=size + 24).initializers["w"].shape == (2, 3)
    assert_refused(lambda p: read_onnx_graph(p, max_bytes=size + 23), path, OnnxError,
                   "initializer 'w': reading its 24 bytes would pass the limit .*max_bytes")


def test_inconsistent_external_fields_are_refused(tmp_path):
    path = _external_model(tmp_path)   # no location at all
    assert_refused(_read, path, OnnxError, "external_data has no location")
    model = onnx.load(_external_model(tmp_path, location="w.bin"), load_external_data=False)
    model.graph.initializer[0].raw_data = b"\0" * 24
    assert_refused(_read, _save(model, tmp_path / "mixed.onnx"), OnnxError, "mixes external data")
    model.graph.initializer[0].ClearField("raw_data")
    model.graph.initializer[0].data_location = TensorProto.DEFAULT
    assert_refused(_read, _save(model, tmp_path / "mixed2.onnx"), OnnxError, "mixes external data")
    model = onnx.load(_external_model(tmp_path, location="w.bin"), load_external_data=False)
    model.graph.initializer[0].external_data.add(key="location", value="w.bin")
    assert_refused(_read, _save(model, tmp_path / "twice.onnx"), OnnxError, "names 'location' twice")
