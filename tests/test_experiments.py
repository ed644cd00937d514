"""The activations experiment: ReLU and tanh train, sigmoid through five layers does not.

Over seeds 0-4 at 1 and 2 threads, ReLU reached 95% training accuracy in 3-4 epochs, tanh in 5,
and sigmoid stayed at chance (about 0.09) for 15 epochs in every run; 8 epochs leave room.
"""

from cnnkit.experiments import activation_table, compare_activations


def test_relu_and_tanh_reach_the_target_and_sigmoid_stays_at_chance():
    results = {r.activation: r for r in compare_activations(epochs=8, seeds=(0, 1))}
    assert len(results["relu"].reached) == 2 and len(results["tanh"].reached) == 2
    assert results["sigmoid"].reached == [] and results["sigmoid"].final_train_accuracy.high < 0.3
    table = activation_table(list(results.values()))
    assert "not in 8" in table and "2 of 2" in table and "0 of 2" in table
