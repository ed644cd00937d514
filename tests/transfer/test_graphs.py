"""Transfer on graph models: a cut at any node, a new head on a named node, finetune freezing the
ancestors of a node (not the layers before it in node order), features and their cache at any node,
the advisor and the command line, on a residual network (``residual_digits_net`` in conftest)."""

import numpy as np
import pytest

import cnnkit
from cnnkit import transfer
from cnnkit.data import ArrayDataset
from cnnkit.experiments import few_shot
from cnnkit.layers import Concatenate, Conv2d, Dense, Flatten, MaxPool2d, ReLU, Softmax
from cnnkit.transfer.surgery import copy_model

#: every node the projection shortcut of block 2 depends on (block 2's own branch is not among them)
PROJ_ANCESTORS = ["stem", "stem_bn", "stem_relu", "res1_conv1", "res1_relu", "res1_conv2", "res1_add", "block1",
                  "pool1", "res2_proj"]


def _softmax(scores):
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _params(model):
    return {name: param.value.copy() for name, param in model.parameters().items()}


def test_block_outputs_are_the_nodes_every_path_passes(pretrained_graph):
    assert transfer.feature_layers(pretrained_graph) == ["block1", "pool1", "block2", "gap"]
    x = cnnkit.Input((8, 8, 2))
    stem = ReLU(name="stem_relu")(Conv2d(4, 3, padding=1, name="stem")(x))
    pooled = Conv2d(4, 1, name="pool_proj")(MaxPool2d(3, 1, padding=1, name="branch_pool")(stem))
    mixed = ReLU(name="mixed_relu")(Concatenate(name="mixed")([Conv2d(4, 1, name="one_by_one")(stem), pooled]))
    top = Flatten(name="flatten")(MaxPool2d(2, name="pool")(mixed))
    inception = cnnkit.Model(x, Softmax(name="prob")(Dense(3, name="fc")(top)))
    # the pooling inside one branch is no block output: the other branch goes round it
    assert transfer.feature_layers(inception) == ["mixed_relu", "pool"]


def test_truncate_cuts_a_graph_at_a_node_with_copies_of_its_weights(pretrained_graph, halves):
    _, (_, new_test) = halves
    x = new_test.x[:16].astype(np.float32)
    cut = transfer.truncate(pretrained_graph, "res2_proj")
    assert isinstance(cut, cnnkit.Model) and cut.node_names() == ["image"] + PROJ_ANCESTORS
    assert np.allclose(cut.predict(x), pretrained_graph.features(x, "res2_proj"), atol=1e-6)
    with cut["stem"].parameters()["weight"].writing() as weight:
        weight[...] = 0
    assert np.abs(pretrained_graph["stem"].parameters()["weight"].value).max() > 0   # copies, not shared
    # the cut is a model like any other: the functional API goes on from its output
    extended = cnnkit.Model(cut.inputs[0], Dense(3, name="extra")(Flatten(name="flat")(cut.outputs[0])))
    assert extended.predict(x).shape == (16, 3)


def test_a_new_head_on_a_named_node(pretrained_graph, halves):
    _, (_, new_test) = halves
    x = new_test.x[:16].astype(np.float32)
    net = transfer.with_new_head(pretrained_graph, 3, seed=1, class_names=["a", "b", "c"], at="block1")
    nodes = {entry["layer"]: entry["inputs"] for entry in net.get_config()["nodes"]}
    assert nodes["head"] == ["features_flatten"] and nodes["features_flatten"] == ["block1"]
    assert nodes["prob"] == ["head"] and net.node_names()[-1] == "prob" and net.output_shape == (3,)
    assert "pool1" not in nodes and net.meta["class_names"] == ["a", "b", "c"]
    weight, bias = (net["head"].parameters()[k].value for k in ("weight", "bias"))
    expected = _softmax(pretrained_graph.features(x, "block1").reshape(len(x), -1) @ weight + bias)
    assert np.allclose(net.predict(x), expected, atol=1e-5)
    source = pretrained_graph.state_dict()
    assert all(np.array_equal(value, source[name]) for name, value in net.state_dict().items()
               if not name.startswith("head."))


def test_a_new_classifier_replaces_the_old_one_in_the_graph(pretrained_graph):
    source = copy_model(pretrained_graph)
    source.freeze("stem")
    net = transfer.with_new_head(source, 7)
    assert net.node_names() == pretrained_graph.node_names() and net.output_shape == (7,)
    assert net["fc"].parameters()["weight"].value.shape == (16, 7) and net["fc"].parameters()["weight"].trainable
    assert not net["stem"].parameters()["weight"].trainable                           # frozen state kept
    source = pretrained_graph.state_dict()
    assert all(np.array_equal(value, source[name]) for name, value in net.state_dict().items()
               if not name.startswith("fc."))


@pytest.mark.parametrize("layer", ["res2_proj", "res1_conv1"])
def test_finetune_freezes_every_ancestor_of_the_node_and_trains_the_rest(pretrained_graph, halves, layer):
    (_, new), _ = halves
    before = {k: v.copy() for k, v in pretrained_graph.state_dict().items()}
    net = transfer.finetune(pretrained_graph, few_shot(new, 10, seed=0), layer=layer, epochs=2, head_epochs=1,
                            lr=0.05)
    frozen = {block.name for block in pretrained_graph.ancestors(layer)}
    after = net.state_dict()
    for name, value in after.items():
        owner = name.split(".")[0]
        if owner in frozen:   # parameters and batch norm's running statistics, bit for bit
            assert np.array_equal(value, before[name]), name
            assert "running" in name or not net.parameters()[name].trainable, name
        elif owner != "fc":
            assert not np.array_equal(value, before[name]), name
            assert net.parameters()[name].trainable, name
    assert net["stem_bn"].frozen_stats
    if layer == "res2_proj":   # block 2's branch runs before the shortcut, is no ancestor of it, and learns
        order = net.node_names()
        assert order.index("res2_conv2") < order.index("res2_proj") and "res2_conv2" not in frozen
    assert all(pretrained_graph.state_dict()[k].tobytes() == v.tobytes() for k, v in before.items())


def test_features_at_any_node_are_cached_by_what_the_node_depends_on(pretrained_graph, halves, tmp_path,
                                                                     monkeypatch):
    (_, new), (_, new_test) = halves
    data = few_shot(new, 10, seed=0)
    calls = []
    original = cnnkit.Model.features

    def counting(self, x, layer, batch_size=32):
        calls.append(layer)
        return original(self, x, layer, batch_size)

    monkeypatch.setattr(cnnkit.Model, "features", counting)
    net = transfer.features(pretrained_graph, data, layer="res2_proj", cache_dir=tmp_path)
    assert calls == ["res2_proj"] and len(list(tmp_path.glob("*.npy"))) == 1
    x = new_test.x[:16].astype(np.float32)
    weight, bias = (net["head"].parameters()[k].value for k in ("weight", "bias"))
    features = original(pretrained_graph, x, "res2_proj")
    assert np.allclose(net.predict(x), _softmax(features.reshape(len(x), -1) @ weight + bias), atol=1e-5)
    assert net.evaluate(new_test)["accuracy"] > 0.6
    changed = transfer.with_new_head(pretrained_graph, 5)
    with changed["res2_conv2"].parameters()["weight"].writing() as w:   # before the node, not an ancestor
        w[...] += 1e-3
    calls.clear()
    transfer.features(changed, data, layer="res2_proj", cache_dir=tmp_path)
    assert calls == []
    with changed["res1_conv2"].parameters()["weight"].writing() as w:   # an ancestor
        w[...] += 1e-3
    transfer.features(changed, data, layer="res2_proj", cache_dir=tmp_path)
    assert calls == ["res2_proj"]


@pytest.mark.parametrize("scenario", ["scratch", "features", "finetune"])
def test_each_scenario_on_a_graph_saves_a_graph_model_file(pretrained_graph, halves, tmp_path, scenario):
    (_, new), (_, new_test) = halves
    data = few_shot(new, 5, seed=0)
    run = {"scratch": lambda: transfer.scratch(pretrained_graph, data, epochs=1),
           "features": lambda: transfer.features(pretrained_graph, data, layer="block2", cache_dir=None),
           "finetune": lambda: transfer.finetune(pretrained_graph, data, layer="pool1", epochs=1)}[scenario]
    net = run()
    assert type(net) is cnnkit.Model and isinstance(net["prob"], Softmax) and net.output_shape == (5,)
    assert net.meta["class_names"] == ["5", "6", "7", "8", "9"]
    if scenario == "scratch":
        assert all(p.trainable for p in net.parameters().values())
        assert not np.array_equal(net["stem"].parameters()["weight"].value,
                                  pretrained_graph["stem"].parameters()["weight"].value)
    net.save(tmp_path / "model.safetensors")
    loaded = cnnkit.load(tmp_path / "model.safetensors")
    x = new_test.x[:6].astype(np.float32)
    assert type(loaded) is cnnkit.Model and np.allclose(loaded.predict(x), net.predict(x), atol=1e-6)
    assert loaded.meta["transfer"]["scenario"] == scenario


def test_the_advisor_reads_a_graph(pretrained_graph, halves):
    _, (old_test, _) = halves
    similar = few_shot(old_test, 20, seed=0)
    order = np.random.default_rng(0).permutation(64)
    different = ArrayDataset(similar.x.reshape(len(similar), -1)[:, order].reshape(similar.x.shape), similar.y,
                             similar.classes)
    near, far = transfer.advise(pretrained_graph, similar), transfer.advise(pretrained_graph, different)
    assert list(near.probes) == ["input", "block1", "pool1", "block2", "gap"]
    assert near.similar and near.scenario == "features" and near.layer == "gap"
    assert not far.similar and far.similarity < near.similarity and far.layer in ("block1", "pool1", "block2")
    large = transfer.advise(pretrained_graph, similar, large_per_class=10)
    assert large.scenario == "finetune" and large.layer == "block2"


def test_cuts_at_the_input_at_or_above_the_classifier_and_models_with_two_outputs_are_refused(pretrained_graph,
                                                                                            halves):
    (_, new), _ = halves
    data = few_shot(new, 2, 0)
    with pytest.raises(cnnkit.ConfigError, match="layer='prob' is the classifier or above it; name a layer below 'fc'"):
        transfer.finetune(pretrained_graph, data, layer="prob", epochs=1)
    with pytest.raises(cnnkit.ConfigError, match="at='image' is the model's input"):
        transfer.with_new_head(pretrained_graph, 3, at="image")
    x = cnnkit.Input((8, 8, 1))
    body = Flatten(name="flatten")(Conv2d(2, 3, name="conv")(x))
    two = cnnkit.Model(x, [Dense(3, name="fc_a")(body), Dense(2, name="fc_b")(body)])
    with pytest.raises(cnnkit.ConfigError, match=r"one input and one output; this one has outputs \['fc_a', 'fc_b'\]"):
        transfer.features(two, data, layer="conv", cache_dir=None)


def test_cli_advise_reads_a_graph_model_file(pretrained_graph, tmp_path, capsys):
    from cnnkit.cli import main
    pretrained_graph.save(tmp_path / "graph.safetensors")
    assert main(["advise", "--data", "digits", "--weights", str(tmp_path / "graph.safetensors"),
                 "--cache", "none"]) == 0
    out = capsys.readouterr().out
    assert "  block2 " in out and "recommendation: " in out


def test_cli_transfer_on_a_graph_model_file_writes_a_graph_that_loads(pretrained_graph, tmp_path, capsys):
    from cnnkit.cli import main
    pretrained_graph.save(tmp_path / "graph.safetensors")
    code = main(["transfer", "--data", "digits", "--weights", str(tmp_path / "graph.safetensors"), "--mode",
                 "finetune", "--layer", "res2_proj", "--epochs", "1", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0 and "test accuracy" in capsys.readouterr().out
    model = cnnkit.load(tmp_path / "out" / "model.safetensors")
    assert type(model) is cnnkit.Model and model.output_shape == (10,) and model.meta["class_names"][9] == "9"
