"""The base layer and the M-step driver: SuffStats values, initial partitions, maximize and Passes, data sources."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from moekit import ConstantGate, LinearGaussianExpert, MixtureOfExperts, SoftmaxGate
from moekit._mstep import Passes, fit_in_memory, maximize
from moekit._partition import initial_responsibilities
from moekit.data import ArrayBatches
from moekit.stats import SuffStats
from moekit.testing import regression_data, soft_targets
from moekit.training.em import e_step_pass

D = torch.float64


# ------------------------------------------------------------- SuffStats
def _stats(seed):
    g = torch.Generator().manual_seed(seed)
    return SuffStats(n=torch.rand((), generator=g, dtype=D), inner=SuffStats(m=torch.rand(3, 2, generator=g, dtype=D)))


def test_suffstats_add_is_commutative_associative_and_zero_is_neutral():
    a, b, c = _stats(0), _stats(1), _stats(2)
    for x, y in [((a + b) + c, a + (b + c)), (a + b, b + a), (0 + a, a), (sum([a, b, c]), a + b + c)]:
        for u, v in zip(x.tensors(), y.tensors()):
            assert torch.allclose(u, v, rtol=1e-15, atol=0)


def test_suffstats_are_values_not_buffers():
    a, b = _stats(0), _stats(1)
    before = [t.clone() for t in a.tensors()]
    _ = a + b
    _ = a.scale(3.0)
    assert all(torch.equal(u, v) for u, v in zip(a.tensors(), before))


def test_suffstats_keys_must_match():
    with pytest.raises(ValueError, match="different keys"):
        SuffStats(n=torch.ones(())) + SuffStats(m=torch.ones(()))


def test_suffstats_tensors_round_trip_and_map():
    a = _stats(3)
    rebuilt = a.with_tensors([t * 2 for t in a.tensors()])
    assert torch.equal(rebuilt["inner"]["m"], 2 * a["inner"]["m"])
    assert torch.equal(a.map(lambda t: t + 1)["n"], a["n"] + 1)
    assert "inner" in repr(a) and len(a) == 2
    assert pickle.loads(pickle.dumps(a))["n"] == a["n"]


# ----------------------------------------------------- initial partitions
def test_initial_responsibilities_are_one_hot_rows_of_k_experts():
    x, y = regression_data(50, 2, seed=0)
    for init in ("kmeans", "random"):
        r = initial_responsibilities(x, y, 3, init, 0)
        assert r.shape == (50, 3) and torch.allclose(r.sum(1), torch.ones(50, dtype=r.dtype))
        assert set(r.unique().tolist()) <= {0.0, 1.0}


def test_initial_responsibilities_repeat_with_the_seed_and_differ_across_seeds():
    x, y = regression_data(60, 2, seed=1)
    a = initial_responsibilities(x, y, 3, "random", 5)
    assert torch.equal(a, initial_responsibilities(x, y, 3, "random", 5))
    assert not torch.equal(a, initial_responsibilities(x, y, 3, "random", 6))


def test_user_responsibilities_are_normalised_and_checked():
    x, y = regression_data(4, 1, seed=2)
    r = initial_responsibilities(x, y, 2, np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0], [1.0, 3.0]]))
    assert torch.allclose(r.sum(1), torch.ones(4, dtype=r.dtype))
    with pytest.raises(ValueError, match="shape"):
        initial_responsibilities(x, y, 3, np.ones((4, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        initial_responsibilities(x, y, 2, np.array([[1.0, -1.0]] * 4))
    with pytest.raises(ValueError, match="init must be"):
        initial_responsibilities(x, y, 2, "nearest")


# ------------------------------------------------------- the M-step driver
def test_maximize_never_lowers_the_objective_and_reaches_the_newton_optimum():
    x, _ = regression_data(80, 2, seed=3)
    t = soft_targets(80, 3, seed=4)
    gate = SoftmaxGate(2, 3)
    f0 = float(gate.objective(x, t))
    steps = maximize(gate, lambda: gate.suff_stats(x, t), max_steps=50)
    f1 = float(gate.objective(x, t))
    assert steps >= 1 and f1 >= f0
    grad = gate.suff_stats(x, t)["grad"]
    assert float(grad.abs().max()) < 1e-8  # the Newton iteration's fixed point: a stationary point


def test_maximize_with_given_statistics_and_no_pass_takes_one_step():
    x, _ = regression_data(80, 2, seed=3)
    t = soft_targets(80, 3, seed=4)
    a, b = SoftmaxGate(2, 3), SoftmaxGate(2, 3)
    maximize(a, None, stats=a.suff_stats(x, t))
    b.m_step(b.suff_stats(x, t))
    assert torch.equal(a.coef, b.coef)


def test_maximize_keeps_the_parameters_when_no_step_helps():
    x, _ = regression_data(40, 1, seed=5)
    t = soft_targets(40, 2, seed=6)
    gate = SoftmaxGate(1, 2)
    fit_in_memory(gate, x, t)
    for _ in range(5):
        fit_in_memory(gate, x, t)
    before = gate.coef.detach().clone()
    f_before = float(gate.objective(x, t))
    fit_in_memory(gate, x, t)  # at the optimum: any accepted step changes nothing that matters
    assert float(gate.objective(x, t)) >= f_before - 1e-12 * (1 + abs(f_before))
    assert torch.allclose(gate.coef, before, atol=1e-8)


def test_passes_sum_statistics_over_batches():
    x, y = regression_data(90, 2, seed=7)
    w = torch.rand(90, dtype=D, generator=torch.Generator().manual_seed(8)) + 0.5
    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, n_experts=2))
    moe.init_from_responsibilities(x, y, w[:, None] * initial_responsibilities(x, y, 2, "kmeans", 0, w))
    whole, p1 = e_step_pass(moe, ArrayBatches(x, y, w))
    parts, p3 = e_step_pass(moe, ArrayBatches(x, y, w, batch_size=30))
    for u, v in zip(whole.tensors(), parts.tensors()):
        assert torch.allclose(u, v, rtol=1e-12, atol=1e-12)
    path = ("gate",)
    for u, v in zip(p1.stats_fn(path)().tensors(), p3.stats_fn(path)().tensors()):
        assert torch.allclose(u, v, rtol=1e-12, atol=1e-12)
    assert torch.allclose(p1.objective_fn(path)(), p3.objective_fn(path)(), rtol=1e-12)


def test_m_step_from_batched_passes_equals_in_memory_em_step():
    """Streaming is a change of data source: the same EM step from three batches as from one."""
    x, y = regression_data(90, 2, seed=9)
    w = torch.ones(90, dtype=D)
    a = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, n_experts=2))
    a.init_from_responsibilities(x, y, initial_responsibilities(x, y, 2, "kmeans", 0))
    b = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, n_experts=2))
    b.load_state_dict(a.state_dict())
    a.em_step(x, y, w)
    stats, passes = e_step_pass(b, ArrayBatches(x, y, w, batch_size=25))
    b.m_step(stats, passes)
    for u, v in zip(a.parameters(), b.parameters()):
        assert torch.allclose(u, v, rtol=1e-9, atol=1e-11)


def test_components_without_statistics_cannot_be_streamed():
    from moekit import MLPExpert

    x, y = regression_data(40, 1, seed=10)
    w = torch.ones(40, dtype=D)
    moe = MixtureOfExperts(ConstantGate(2), MLPExpert(1, hidden_layer_sizes=(3,), n_experts=2))
    moe.init_from_responsibilities(x, y, initial_responsibilities(x, y, 2, "random", 0))
    stats, passes = e_step_pass(moe, ArrayBatches(x, y, w, batch_size=20))
    with pytest.raises(TypeError, match="held in memory"):
        moe.m_step(stats, passes)
    with pytest.raises(TypeError, match="no statistics"):
        moe.m_step(stats)


def test_array_batches_check_their_inputs():
    with pytest.raises(ValueError, match="same number of rows"):
        ArrayBatches(torch.zeros(3, 1), torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match="batch_size"):
        ArrayBatches(torch.zeros(3, 1), torch.zeros(3), torch.ones(3), batch_size=0)
    assert Passes([]).data == []


def test_solve_shared_is_the_joint_optimum_with_tied_coordinates():
    """solve_shared: own coordinates solve their own systems, shared ones the summed system, tied across k."""
    from moekit._linalg import solve_shared, solve_spd

    g = torch.Generator().manual_seed(0)
    k, p, m = 3, 4, 2
    mm = torch.randn(k, p, p, generator=g, dtype=torch.float64)
    a = mm @ mm.transpose(1, 2) + torch.eye(p, dtype=torch.float64)
    b = torch.randn(k, p, m, generator=g, dtype=torch.float64)
    x = solve_shared(a, b, [3, 1])
    assert torch.equal(x[:, [1, 3]], x[:1, [1, 3]].expand(k, 2, m))
    r = b - a @ x  # the joint gradient: zero in every own coordinate, zero summed over k in the shared ones
    assert float(r[:, [0, 2]].abs().max()) < 1e-12
    assert float(r[:, [1, 3]].sum(0).abs().max()) < 1e-12
    assert torch.equal(solve_shared(a, b, []), solve_spd(a, b))


@pytest.mark.parametrize("case", ["continuous", "ties", "signed-zero", "one-row", "no-columns", "integers"])
def test_unique_rows_equals_numpys_unique_rows(case):
    """The distinct rows of a start (sorted, first occurrences, inverse) equal np.unique(axis=0)'s, with or without
    ties in the first column (the fast path sorts that column alone)."""
    from moekit._partition import _unique_rows

    rng = np.random.default_rng(3)
    z = {
        "continuous": rng.normal(size=(500, 3)),
        "ties": np.round(rng.normal(size=(500, 2)), 1),
        "signed-zero": np.array([[0.0, 1.0], [-0.0, 1.0], [1.0, 2.0], [0.0, 1.0]]),
        "one-row": rng.normal(size=(1, 2)),
        "no-columns": np.zeros((4, 0)),
        "integers": rng.integers(0, 3, size=(50, 2)).astype(float),
    }[case]
    uniq, first, inverse = np.unique(z, axis=0, return_index=True, return_inverse=True)
    got = _unique_rows(z)
    np.testing.assert_array_equal(got[0], uniq)
    np.testing.assert_array_equal(got[1], first)
    np.testing.assert_array_equal(got[2], inverse.reshape(-1))
