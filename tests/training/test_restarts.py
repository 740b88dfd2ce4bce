"""best_of: one restart helper for every trainer."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from moekit.training.restarts import best_of


def _recording_run(scores, seeds_seen, starts_seen):
    """A start that records its seed and starting weight, sets the weight to its index, and scores ``scores[i]``."""

    def run_one(m, seed):
        i = len(seeds_seen)
        seeds_seen.append(seed)
        starts_seen.append(float(m.weight.detach()[0, 0]))
        with torch.no_grad():
            m.weight.fill_(float(i))
        return SimpleNamespace(log_likelihood=scores[i], index=i)

    return run_one


def test_seeds_are_drawn_as_fit_em_draws_them():
    seeds, starts = [], []
    best_of(torch.nn.Linear(1, 1), 4, 123, _recording_run([0.0] * 4, seeds, starts))
    assert seeds == [int(s) for s in np.random.default_rng(123).integers(0, 2**31 - 1, size=4)]


def test_a_numpy_generator_is_drawn_from_as_it_is():
    """The estimators draw their model seed first, then the starts' seeds from the same generator."""
    rng = np.random.default_rng(5)
    rng.integers(0, 2**31 - 1)
    seeds, starts = [], []
    best_of(torch.nn.Linear(1, 1), 3, rng, _recording_run([0.0] * 3, seeds, starts))
    ref = np.random.default_rng(5)
    ref.integers(0, 2**31 - 1)
    assert seeds == [int(s) for s in ref.integers(0, 2**31 - 1, size=3)]


@pytest.mark.parametrize("scores,winner", [([1.0, 3.0, 2.0], 1), ([2.0, 2.0, 1.0], 0), ([1.0, float("nan"), 0.5], 0),
                                           ([-5.0, -1.0, -1.0], 1)])
def test_the_best_start_is_kept_in_the_callers_model(scores, winner):
    net = torch.nn.Linear(1, 1)
    with torch.no_grad():
        net.weight.fill_(-7.0)
    seeds, starts = [], []
    i, result, finals = best_of(net, len(scores), 0, _recording_run(scores, seeds, starts))
    assert i == winner and result.index == winner
    np.testing.assert_array_equal(finals, scores)
    assert float(net.weight.detach()[0, 0]) == float(winner)  # the caller's object holds the winner
    # every start begins from the model as it was before the first start
    assert starts == [-7.0] * len(scores)


def test_one_start_trains_the_model_itself():
    net = torch.nn.Linear(1, 1)
    seen = []

    def run_one(m, seed):
        seen.append(m)
        return SimpleNamespace(log_likelihood=0.0)

    assert best_of(net, 1, None, run_one)[0] == 0
    assert seen == [net]


def test_identical_seeds_give_identical_results():
    def run_one(m, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
        return SimpleNamespace(log_likelihood=-float(m.weight.detach().abs().sum()))

    a = torch.nn.Linear(3, 1)
    b = copy.deepcopy(a)
    ra = best_of(a, 5, 9, run_one)
    rb = best_of(b, 5, 9, run_one)
    assert ra[0] == rb[0] and ra[2] == rb[2]
    assert torch.equal(a.weight, b.weight)


def test_custom_score_and_bad_n_init():
    seeds, starts = [], []
    i, _, finals = best_of(torch.nn.Linear(1, 1), 2, 0, _recording_run([5.0, 1.0], seeds, starts),
                           score=lambda r: -r.log_likelihood)
    assert i == 1 and finals == [-5.0, -1.0]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_init must be a positive int"):
            best_of(torch.nn.Linear(1, 1), bad, 0, lambda m, s: None)
