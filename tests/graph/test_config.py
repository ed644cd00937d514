"""A graph's architecture as data: ``Model.get_config`` -> JSON -> ``Model.from_config`` rebuilds
the same function, and a hostile architecture is refused with a ConfigError that says what is
wrong, before any weight is allocated (cnnkit/graph_config.py)."""

import copy
import json

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import ConfigError
from cnnkit.graph_config import MAX_PARAMETERS, MAX_VOLUME
from cnnkit.layers import Add, BatchNorm2d, Concatenate, Conv2d, Dense, Flatten, GlobalAvgPool2d, MaxPool2d, ReLU


def residual_model():
    x = cnnkit.Input((6, 6, 2), name="image")
    stem = ReLU(name="stem_relu")(BatchNorm2d(name="stem_bn")(Conv2d(4, 3, padding=1, name="stem")(x)))
    y = BatchNorm2d(name="b_bn")(Conv2d(4, 3, padding=1, name="b")(ReLU()(Conv2d(4, 3, padding=1, name="a")(stem))))
    y = ReLU(name="block_relu")(Add(name="sum")([y, stem]))
    return cnnkit.Model(x, Dense(3, name="out")(GlobalAvgPool2d()(y)), name="residual", seed=1)


def siamese_two_outputs():
    left, right = cnnkit.Input((5, 5, 2), name="left"), cnnkit.Input((5, 5, 2), name="right")
    conv, embed = Conv2d(3, 3, name="conv"), Dense(4, name="embed")
    features = [embed(Flatten()(ReLU()(conv(side)))) for side in (left, right)]
    merged = Concatenate(name="cat")(features)
    return cnnkit.Model([left, right], [Dense(2, name="same")(merged), Dense(3, name="kind")(merged)],
                        name="siamese", seed=2)


def inception_model():
    x = cnnkit.Input((6, 6, 3), name="image")
    branches = [ReLU()(Conv2d(2, k, padding="same")(x)) for k in (1, 3, 5)]
    branches.append(Conv2d(2, 1)(MaxPool2d(3, stride=1, padding=1)(x)))
    return cnnkit.Model(x, Concatenate()(branches), name="inception", seed=3)


BUILDERS = [residual_model, siamese_two_outputs, inception_model]


def _inputs(model, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((batch, *t.shape)).astype(np.float32) for t in model.inputs]
    return arrays if len(arrays) > 1 else arrays[0]


def _as_list(outputs):
    return outputs if isinstance(outputs, list) else [outputs]


@pytest.mark.parametrize("build", BUILDERS)
def test_a_graph_rebuilt_from_its_json_config_computes_the_same_function(build):
    model = build()
    model.meta = {"class_names": ["a", "b", "c"]}
    model.freeze("out" if "out" in model.layer_names() else model.layer_names()[0])
    config = json.loads(json.dumps(model.get_config()))   # plain data
    rebuilt = cnnkit.Model.from_config(config)
    assert type(rebuilt) is cnnkit.Model
    assert rebuilt.node_names() == model.node_names()
    assert rebuilt.get_config() == config
    assert rebuilt.meta == model.meta
    assert {k: p.trainable for k, p in rebuilt.parameters().items()} == \
        {k: p.trainable for k, p in model.parameters().items()}
    rebuilt.load_state_dict(model.state_dict())
    x = _inputs(model)
    for ours, theirs in zip(_as_list(rebuilt.predict(x)), _as_list(model.predict(x))):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(_as_list(rebuilt.forward(x, training=True)), _as_list(model.forward(x, training=True))):
        np.testing.assert_array_equal(ours, theirs)


def test_a_rebuilt_graph_shares_a_layer_where_the_original_did():
    rebuilt = cnnkit.Model.from_config(siamese_two_outputs().get_config())
    assert "conv:1" in rebuilt.node_names() and "embed:1" in rebuilt.node_names()
    steps = {step.name: step.layer for step in rebuilt.plan.steps}
    assert steps["conv"] is steps["conv:1"] and steps["embed"] is steps["embed:1"]
    assert len(rebuilt.parameters()) == len(siamese_two_outputs().parameters())


def test_the_same_seed_draws_the_same_weights_and_another_seed_others():
    config = residual_model().get_config()
    first, second = cnnkit.Model.from_config(config), cnnkit.Model.from_config(config)
    for name, value in first.state_dict().items():
        np.testing.assert_array_equal(value, second.state_dict()[name])
    other = cnnkit.Model.from_config({**config, "seed": 99})
    assert not np.array_equal(other.state_dict()["a.weight"], first.state_dict()["a.weight"])


# ---------------------------------------------------------------- hostile architectures
BASE = residual_model().get_config()


def _layer(config, name):
    return next(entry for entry in config["layers"] if entry["config"]["name"] == name)


def _node(config, name):
    return next(entry for entry in config["nodes"] if entry["layer"] == name)


HOSTILE = {
    "unknown class": (lambda c: _layer(c, "a").update({"class": "Evil"}),
                      "architecture: layer 3 has unknown class 'Evil'; known classes are"),
    "class not a string": (lambda c: _layer(c, "a").update({"class": ["Conv2d"]}),
                           r"architecture: layer 3 has unknown class \['Conv2d'\]"),
    "a node reads an undefined tensor": (lambda c: _node(c, "b").update({"inputs": ["nowhere"]}),
                                         "architecture: node 5 \\(b\\) reads 'nowhere', which is not an input or an "
                                         "earlier node"),
    "a node reads a later node (a cycle)": (lambda c: _node(c, "stem").update({"inputs": ["sum"]}),
                                            "architecture: node 0 \\(stem\\) reads 'sum', which is not an input or "
                                            "an earlier node"),
    "node inputs a string": (lambda c: _node(c, "a").update({"inputs": "stem_relu"}),
                             "architecture: node 3 \\(a\\) inputs must be a non-empty list of tensor names; received "
                             "'stem_relu'"),
    "node inputs a number": (lambda c: _node(c, "a").update({"inputs": 3}),
                             "architecture: node 3 \\(a\\) inputs must be a non-empty list"),
    "node inputs a mapping": (lambda c: _node(c, "a").update({"inputs": {"stem_relu": 1}}),
                              "architecture: node 3 \\(a\\) inputs must be a non-empty list"),
    "duplicate layer names": (lambda c: _layer(c, "b")["config"].update({"name": "a"}),
                              "architecture: layer 5 \\(Conv2d\\) needs a unique name; received 'a'"),
    "duplicate input names": (lambda c: c["inputs"].append(dict(c["inputs"][0])),
                              "architecture: input name 'image' appears twice"),
    "an input named as a layer": (lambda c: (c["inputs"][0].update({"name": "a"}),
                                             c["nodes"][0].update({"inputs": ["a"]})),
                                  r"residual: names must be unique; \['a'\] name both an input and a layer"),
    "a layer applied by no node": (lambda c: c["layers"].append({"class": "ReLU", "config": {"name": "spare"}}),
                                   r"architecture: layers \['spare'\] are applied by no node"),
    "a shape of floats": (lambda c: c["inputs"][0].update({"shape": [6.5, 6, 2]}),
                          r"architecture: input 'image' shape must be a list of positive ints such as \[224, 224, "
                          r"3\]; received \[6.5, 6, 2\]"),
    "a shape of strings": (lambda c: c["inputs"][0].update({"shape": "6x6x2"}),
                           "architecture: input 'image' shape must be a list of positive ints"),
    "a negative size": (lambda c: c["inputs"][0].update({"shape": [-6, 6, 2]}),
                        "architecture: input 'image' shape must be a list of positive ints"),
    "an absurd input": (lambda c: c["inputs"][0].update({"shape": [10**9, 10**9, 2]}),
                        "architecture: input 'image' has shape \\(1000000000, 1000000000, 2\\), "
                        "2,000,000,000,000,000,000 numbers per sample, more than the 2,147,483,648 cnnkit computes on"),
    "a size past int64": (lambda c: c["inputs"][0].update({"shape": [2**62, 1, 2]}),
                          "architecture: input 'image' has shape"),
    "absurd filters": (lambda c: _layer(c, "stem")["config"].update({"filters": 10**9}),
                       "architecture: node 0 \\(stem\\) has shape \\(6, 6, 1000000000\\), 36,000,000,000 numbers per "
                       "sample, more than the"),
    "absurd padding": (lambda c: _layer(c, "stem")["config"].update({"padding": 10**12}),
                       "architecture: node 0 \\(stem\\) has shape"),
    # Dense allocates its bias (lazily zeroed) before any check can see units; a size far past
    # the machine's memory would make malloc fail, and a failed malloc changes the process's heap
    "absurd units": (lambda c: _layer(c, "out")["config"].update({"units": 3 * 10**9}),
                     "architecture: node 10 \\(out\\)"),
    "filters a string": (lambda c: _layer(c, "stem")["config"].update({"filters": "4"}),
                         "architecture: node 0 \\(stem\\): stem: filters must be an int; received filters='4'"),
    "an unknown argument": (lambda c: _layer(c, "stem")["config"].update({"evil": 1}),
                            "architecture: layer 0 \\(Conv2d\\) has bad arguments: .*unexpected keyword argument "
                            "'evil'"),
    "a merge of one tensor": (lambda c: _node(c, "sum").update({"inputs": ["b_bn"]}),
                              "architecture: node 7 \\(sum\\): sum: merges a list of at least two tensors"),
    "shapes that do not merge": (lambda c: _node(c, "sum").update({"inputs": ["b_bn", "image"]}),
                                 "architecture: node 7 \\(sum\\): sum: every input must have the same shape"),
    "a one-input layer given two": (lambda c: _node(c, "out").update({"inputs": ["global_avg_pool2d_1"] * 2}),
                                    "architecture: node 10 \\(out\\) reads 2 tensors; the layer takes 1"),
    "an undefined output": (lambda c: c.update({"outputs": ["nowhere"]}),
                            "architecture: output 'nowhere' is not an input or a node"),
    "no outputs": (lambda c: c.update({"outputs": []}),
                   "architecture: a graph needs at least one input and one output"),
    "layers not a list": (lambda c: c.update({"layers": {}}), "architecture: layers must be a list; received dict"),
    "an unread format": (lambda c: c.update({"format": 2}),
                         "architecture: graph format 2 is not one this cnnkit reads \\(1\\)"),
    "a seed of a string": (lambda c: c.update({"seed": "x"}),
                           "architecture: seed must be a non-negative int or null; received 'x'"),
    "a negative seed": (lambda c: c.update({"seed": -1}), "architecture: seed must be a non-negative int"),
    "strict not a bool": (lambda c: c.update({"strict": "no"}),
                          "architecture: strict must be true or false; received 'no'"),
    "meta not a mapping": (lambda c: c.update({"meta": [1, 2]}), "architecture: meta must be a mapping; received list"),
    "trainable not a bool": (lambda c: _layer(c, "stem")["config"].update({"trainable": "yes"}),
                             "stem: trainable must be true, false or a mapping"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_architecture_is_a_config_error_that_says_what_is_wrong(case):
    mutate, message = HOSTILE[case]
    config = copy.deepcopy(BASE)
    mutate(config)
    with pytest.raises(ConfigError, match=message):
        cnnkit.Model.from_config(config)


def test_the_hostile_cases_start_from_a_config_that_builds():
    assert [entry["layer"] for entry in BASE["nodes"]][:3] == ["stem", "stem_bn", "stem_relu"]
    cnnkit.Model.from_config(copy.deepcopy(BASE))


@pytest.mark.parametrize("config", [[1, 2], "model", None])
def test_an_architecture_that_is_not_a_mapping_is_a_config_error(config):
    for reader in (cnnkit.Model.from_config, cnnkit.Sequential.from_config):
        with pytest.raises(ConfigError, match="architecture: must be a mapping \\(a JSON object\\)"):
            reader(config)


def test_a_graph_with_too_many_parameters_is_refused_before_any_weight_is_drawn():
    # two Dense layers whose outputs stay under the volume limit but whose weights do not fit
    config = copy.deepcopy(BASE)
    config["inputs"][0]["shape"] = [MAX_VOLUME // 4]
    config["layers"] = [{"class": "Dense", "config": {"units": 8, "name": "d1"}},
                        {"class": "Dropout", "config": {"rate": 0.5, "name": "drop"}}]
    config["nodes"] = [{"layer": "d1", "inputs": ["image"]}, {"layer": "drop", "inputs": ["d1"]}]
    config["outputs"] = ["drop"]
    with pytest.raises(ConfigError, match=f"architecture: the layers have 4,294,967,304 parameters, more than the "
                                          f"{MAX_PARAMETERS:,} cnnkit builds"):
        cnnkit.Model.from_config(config)


def test_a_dropout_with_a_bad_seed_is_a_config_error():
    config = copy.deepcopy(BASE)
    config["layers"].append({"class": "Dropout", "config": {"rate": 0.5, "seed": "x", "name": "drop"}})
    with pytest.raises(ConfigError, match="architecture: layer 11 \\(Dropout\\) has bad arguments"):
        cnnkit.Model.from_config(config)
