"""The advisor's recommendation follows the data: same domain vs scrambled pixels."""

import numpy as np

from cnnkit import transfer
from cnnkit.data import ArrayDataset
from cnnkit.experiments import few_shot


def test_advice_changes_from_similar_to_different_data(pretrained, halves):
    _, (old_test, _) = halves
    similar = few_shot(old_test, 20, seed=0)            # new images of the classes the network learned
    order = np.random.default_rng(0).permutation(64)    # the same images with their pixels scrambled
    scrambled = similar.x.reshape(len(similar), -1)[:, order].reshape(similar.x.shape)
    different = ArrayDataset(scrambled, similar.y, similar.classes)
    near, far = transfer.advise(pretrained, similar), transfer.advise(pretrained, different)
    assert near.size == far.size == "small" and near.images_per_class == 20
    assert near.similar and near.scenario == "features" and near.layer == "relu_fc1"
    assert not far.similar and far.similarity < near.similarity
    assert far.layer != near.layer and far.layer in ("pool1", "pool2")
    assert "recommendation: features at layer relu_fc1" in near.report()


def test_thresholds_are_parameters(pretrained, halves):
    _, (old_test, _) = halves
    data = few_shot(old_test, 20, seed=0)
    advice = transfer.advise(pretrained, data, large_per_class=10)
    assert advice.size == "large" and advice.scenario == "finetune" and advice.layer == "pool2"
