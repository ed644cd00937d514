"""The three scenarios: freezing is real, features are cached, results are normal model files."""

import numpy as np
import pytest

import cnnkit
from cnnkit import transfer
from cnnkit.experiments import few_shot
from cnnkit.layers import BatchNorm2d, ReLU, Softmax
from cnnkit.model import Sequential


def test_finetune_leaves_frozen_parameters_bit_for_bit_and_keeps_no_caches(pretrained, halves):
    (_, new), _ = halves
    data = few_shot(new, 10, seed=0)
    before = {k: v.copy() for k, v in pretrained.state_dict().items()}
    net = transfer.finetune(pretrained, data, layer="pool1", epochs=2, head_epochs=1, lr=0.05)
    cut = net.index("pool1")
    frozen = [layer for layer in net.layers[:cut + 1]]
    assert any(layer.parameters() for layer in frozen)
    for name, value in net.state_dict().items():
        if net.index(name.split(".")[0]) <= cut:
            assert np.array_equal(value, before[name]), name          # parameters and BN running statistics
            assert not net.parameters().get(name, cnnkit.Parameter(np.zeros(1))).trainable or "running" in name
    assert all(layer._cache is None for layer in frozen)
    assert not np.array_equal(net["conv2_1"].parameters()["weight"].value, before["conv2_1.weight"])
    assert all(pretrained.state_dict()[k].tobytes() == v.tobytes() for k, v in before.items())  # source untouched


def test_train_step_runs_frozen_prefix_in_inference_mode(pretrained, halves):
    (_, new), _ = halves
    net = transfer.with_new_head(pretrained, 5)
    net.freeze(up_to="pool2")
    calls = []
    for layer in net.layers:
        original = layer.call   # the executor runs every layer through call
        layer.call = (lambda f, n: lambda x, training=False, **kw: (calls.append((n, training)),
                                                                   f(x, training, **kw))[1])(original, layer.name)
    from cnnkit.optim import SGD
    from cnnkit.train import train_step
    optimizer = SGD(lr=0.01)
    optimizer.bind(net.parameters())
    train_step(net, optimizer, new.x[:8].astype(np.float32), new.y[:8])
    modes = dict(calls)
    frozen = net.layers[:net.index("pool2") + 1]
    # inference folds each batch norm (and fuses the ReLU after it) into the convolution before
    # it: their own calls do not run
    skipped = {layer.name for layer in frozen if isinstance(layer, (BatchNorm2d, ReLU))}
    assert skipped and {layer.name for layer in frozen} - set(modes) == skipped
    assert not any(modes.get(layer.name, False) for layer in frozen)
    assert modes["flatten"] is False and all(modes[layer.name] for layer in net.layers[net.index("fc1"):-1])
    assert all(layer._cache is None for layer in net.layers[:net.index("pool2") + 1])


def test_features_second_run_reads_the_cache_and_changes_recompute(pretrained, halves, tmp_path, monkeypatch):
    (_, new), _ = halves
    data = few_shot(new, 5, seed=0)
    calls = []
    original = Sequential.features

    def counting(self, x, layer, batch_size=32):
        calls.append(layer)
        return original(self, x, layer, batch_size)

    monkeypatch.setattr(Sequential, "features", counting)
    first = transfer.features(pretrained, data, layer="pool2", cache_dir=tmp_path)
    assert calls and len(list(tmp_path.glob("*.npy"))) == 1
    calls.clear()
    second = transfer.features(pretrained, data, layer="pool2", cache_dir=tmp_path, l2=0.1)
    assert calls == []                                              # nothing recomputed
    probe = data.x[:4].astype(np.float32)
    assert np.allclose(first.predict(probe).sum(axis=1), 1, atol=1e-5)
    assert not np.allclose(first.predict(probe), second.predict(probe))   # the new l2 did train anew
    transfer.features(pretrained, data, layer="pool1", cache_dir=tmp_path)
    assert calls == ["pool1"]                                       # another layer: computed
    changed = transfer.with_new_head(pretrained, 5)
    with changed["conv1_1"].parameters()["weight"].writing() as weight:
        weight[0, 0, 0, 0] += 1e-3
    calls.clear()
    transfer.features(changed, data, layer="pool2", cache_dir=tmp_path)
    assert calls == ["pool2"]                                       # another model: computed
    calls.clear()
    transfer.features(pretrained, few_shot(new, 5, seed=1), layer="pool2", cache_dir=tmp_path)
    assert calls == ["pool2"]                                       # other images: computed


def test_extractor_is_injectable_and_counted(pretrained, halves, tmp_path):
    (_, new), _ = halves
    data = few_shot(new, 3, seed=0)
    seen = []

    def extractor(x, layers):
        seen.append(len(x))
        return transfer.cache.forward_collect(pretrained, x, layers)

    a = transfer.extract(pretrained, data, "relu_fc1", cache_dir=tmp_path, extractor=extractor)["relu_fc1"]
    b = transfer.extract(pretrained, data, "relu_fc1", cache_dir=tmp_path, extractor=extractor)["relu_fc1"]
    assert sum(seen) == len(data) and isinstance(b, np.memmap)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.allclose(b, pretrained.features(data.x.astype(np.float32), "relu_fc1"), atol=1e-6)


@pytest.mark.parametrize("scenario", ["scratch", "features", "finetune"])
def test_each_scenario_saves_a_normal_model_file(pretrained, halves, tmp_path, scenario):
    (_, new), (_, new_test) = halves
    data = few_shot(new, 5, seed=0)
    run = {"scratch": lambda: transfer.scratch(pretrained, data, epochs=1),
           "features": lambda: transfer.features(pretrained, data, layer="pool2", cache_dir=None),
           "finetune": lambda: transfer.finetune(pretrained, data, layer="pool1", epochs=1)}[scenario]
    net = run()
    assert isinstance(net.layers[-1], Softmax) and net.output_shape == (5,)
    assert net.meta["class_names"] == ["5", "6", "7", "8", "9"]
    net.save(tmp_path / "model.safetensors")
    loaded = cnnkit.load(tmp_path / "model.safetensors")
    x = new_test.x[:6].astype(np.float32)
    assert np.allclose(loaded.predict(x), net.predict(x), atol=1e-6)
    assert loaded.meta["transfer"]["scenario"] == scenario


def test_cut_at_or_above_the_classifier_is_refused(pretrained, halves):
    (_, new), _ = halves
    with pytest.raises(cnnkit.ConfigError, match="fc2"):
        transfer.finetune(pretrained, few_shot(new, 2, 0), layer="fc2", epochs=1)


def test_cli_transfer_writes_a_model_that_loads(pretrained, tmp_path, capsys):
    from cnnkit.cli import main
    pretrained.save(tmp_path / "pre.safetensors")
    code = main(["transfer", "--data", "digits", "--weights", str(tmp_path / "pre.safetensors"), "--mode",
                 "finetune", "--layer", "pool2", "--epochs", "1", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0 and "test accuracy" in capsys.readouterr().out
    model = cnnkit.load(tmp_path / "out" / "model.safetensors")
    assert model.output_shape == (10,) and model.meta["class_names"][9] == "9"
