"""The experiment itself, k = 10 (and k = 1): transfer against training from scratch."""

from cnnkit.experiments import compare_transfer, transfer_table


def test_k10_features_beat_scratch_on_the_5_9_test_split(pretrained):
    results = compare_transfer(ks=(10,), scenarios=("scratch", "features pool1"), pretrained=pretrained)
    assert results[("features pool1", 10)] > results[("scratch", 10)]
    assert "k=10" in transfer_table(results)


def test_k1_finetune_and_features_beat_scratch(pretrained):
    results = compare_transfer(ks=(1,), scenarios=("scratch", "features pool1", "finetune"), pretrained=pretrained)
    assert results[("finetune", 1)] > results[("scratch", 1)]
    assert results[("features pool1", 1)] > results[("scratch", 1)]
