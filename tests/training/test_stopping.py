"""EarlyStopping: the best score is kept, patience is honoured, the kept state is a copy."""

import math

import pytest
import torch

from moekit.training.stopping import EarlyStopping


def test_best_score_and_epoch_are_kept():
    stop = EarlyStopping(patience=10, best=0.0)
    scores = [1.0, 3.0, 2.0, 3.0, 2.5]
    news = [stop.step(s, e) for e, s in enumerate(scores, start=1)]
    assert news == [True, True, False, False, False]  # a tie is not an improvement
    assert (stop.best, stop.best_epoch, stop.wait) == (3.0, 2, 3)


def test_min_delta_is_a_strict_margin():
    stop = EarlyStopping(patience=5, min_delta=0.5, best=1.0)
    assert not stop.step(1.5, 1)  # exactly min_delta above: not better
    assert stop.step(1.5000001, 2)
    assert stop.best == 1.5000001


def test_starting_best_defaults_to_minus_infinity_and_nan_never_improves():
    stop = EarlyStopping(patience=2)
    assert stop.best == -math.inf
    assert not stop.step(float("nan"), 1)
    assert stop.step(-1e300, 2)
    assert not stop.step(float("nan"), 3)
    assert stop.best == -1e300 and stop.wait == 1


@pytest.mark.parametrize("patience", [1, 2, 4])
def test_should_stop_after_exactly_patience_epochs_without_improvement(patience):
    stop = EarlyStopping(patience=patience, best=0.0)
    assert stop.step(1.0, 1)
    for i in range(patience):
        assert not stop.should_stop
        stop.step(0.5, 2 + i)
    assert stop.should_stop
    stop.restart_patience()
    assert not stop.should_stop and stop.best == 1.0
    assert stop.step(2.0, 10) and not stop.should_stop


def test_snapshot_is_a_copy_and_restore_loads_it():
    net = torch.nn.Linear(2, 1)
    stop = EarlyStopping(patience=3)
    with pytest.raises(RuntimeError, match="snapshot"):
        stop.restore(net)
    kept = {k: v.clone() for k, v in net.state_dict().items()}
    stop.snapshot(net, 7)
    with torch.no_grad():
        net.weight.add_(1.0)
        net.bias.mul_(-3.0)
    assert not torch.equal(net.weight, kept["weight"])
    stop.restore(net)
    assert stop.state_epoch == 7
    for k, v in net.state_dict().items():
        assert torch.equal(v, kept[k])
