"""Start strategies: subset (consensus) starts and the race of EM runs (moekit.training.starts)."""

import numpy as np
import pytest
import torch

from moekit import (
    ConstantGate,
    LinearGaussianExpert,
    LogisticExpert,
    MixtureOfExperts,
    PoissonExpert,
    SoftmaxGate,
    StudentTExpert,
    fit_em,
)
from moekit.datasets import load_npreg, load_tonedata
from moekit.training.starts import (
    small_em,
    start_kinds,
    subset_consensus,
    subset_responsibilities,
    supports_subset_start,
)
from moekit.tree import build_tree
from tests.tree_data import zigzag

D = torch.float64


def _tone():
    d = load_tonedata()
    return torch.tensor(d.data), torch.tensor(d.target)


def _npreg():
    d = load_npreg()
    return torch.tensor(np.column_stack([d.data, d.data**2])), torch.tensor(d.target)


def _gaussian_moe(gate, y, d=1, k=2, gate_features=None):
    """Linear-Gaussian experts with the estimators' variance floor (1e-6 times the variance of y)."""
    floor = 1e-6 * float(y.var(unbiased=False))
    g = SoftmaxGate(1 if gate_features else d, k) if gate == "softmax" else ConstantGate(k)
    return MixtureOfExperts(g, LinearGaussianExpert(d, n_experts=k, var_floor=floor), gate_features=gate_features)


def _fit_auto(model, x, y, seed, w=None, **kw):
    """fit_em with small_em as the start of its one run (the wiring proposed for init='auto')."""
    races = []

    def start(m, x_, y_, w_, s):
        races.append(small_em(m, x_, y_, w_, random_state=s, **kw))

    res = fit_em(model, x, y, w, init=start, random_state=seed)
    return res, races[0]


def _nondecreasing(h, rel=1e-10):
    h = np.asarray(h)
    return np.all(np.diff(h) >= -rel * (1 + np.abs(h[:-1])))


# ------------------------------------------------------- known maxima
@pytest.mark.parametrize("gate,best", [("softmax", 145.6503), ("constant", 145.4168)])
def test_tonedata_reaches_the_highest_known_maximum(gate, best):
    x, y = _tone()
    hits = 0
    for seed in range(10):
        res, race = _fit_auto(_gaussian_moe(gate, y), x, y, seed)
        assert res.log_likelihood <= best + 1e-3
        hits += abs(res.log_likelihood - best) < 1e-3
        assert race.start in ("subset", "random", "kmeans") and _nondecreasing(race.history)
    assert hits >= 9


@pytest.mark.parametrize("gate,optimum", [("softmax", -642.0639), ("constant", -642.5320)])
def test_npreg_global_maxima(gate, optimum):
    x, y = _npreg()
    for seed in range(3):
        res, _ = _fit_auto(_gaussian_moe(gate, y, d=2, gate_features=[0]), x, y, seed)
        assert res.log_likelihood == pytest.approx(optimum, abs=1e-3)


def test_subset_consensus_finds_the_tight_line_of_tonedata():
    x, y = _tone()
    on_line = (y - x[:, 0]).abs() < 0.01  # 58 rows within 0.01 of tuned = stretchratio
    for seed in range(5):
        r = subset_consensus(_gaussian_moe("constant", y), x, y, random_state=seed)
        assert r.shape == (150, 1)
        assert float(r[on_line, 0].sum()) > 50 and float(r[~on_line, 0].sum()) < 10
    r = subset_consensus(_gaussian_moe("constant", y), x, y, random_state=0, max_rows=100)  # screened on 100 rows
    assert r.shape == (150, 1) and float(r[on_line, 0].sum()) > 50 and float(r[~on_line, 0].sum()) < 10


# ------------------------------------------------------- determinism, weights
def test_same_random_state_same_race():
    x, y = _tone()
    a, b = _gaussian_moe("softmax", y), _gaussian_moe("softmax", y)
    ra, rb = small_em(a, x, y, random_state=7), small_em(b, x, y, random_state=7)
    assert ra.history == rb.history and ra.starts == rb.starts
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_integer_weights_give_the_start_of_repeated_rows():
    x, y = _tone()
    counts = torch.as_tensor(np.random.default_rng(0).integers(0, 4, size=150), dtype=D)  # zero weights too
    keep = counts > 0
    idx = torch.repeat_interleave(torch.arange(150), counts.long())
    xr, yr = x[idx], y[idx]
    model = _gaussian_moe("softmax", y)
    rw = subset_responsibilities(model, x, y, counts, random_state=3)
    rr = subset_responsibilities(model, xr, yr, random_state=3)
    torch.testing.assert_close(rw[idx], rr, rtol=1e-9, atol=1e-12)
    rw_start = small_em(_gaussian_moe("softmax", y), x, y, counts, random_state=3)
    rr_start = small_em(_gaussian_moe("softmax", y), xr, yr, random_state=3)
    assert rw_start.start == rr_start.start
    assert rw_start.history[-1] == pytest.approx(rr_start.history[-1], abs=1e-9)
    assert keep.sum() < 150


# ------------------------------------------------------- other families
def test_poisson_and_classifier_experts_start_as_fit_em_random():
    d = load_npreg()
    x = torch.tensor(d.data)
    cases = [
        (lambda: MixtureOfExperts(ConstantGate(2), PoissonExpert(1, n_experts=2)), torch.tensor(d.columns["yp"], dtype=D)),
        (lambda: MixtureOfExperts(SoftmaxGate(1, 2), LogisticExpert(1, n_experts=2)), torch.tensor(d.columns["yb"]).long()),
    ]
    for make, y in cases:
        model = make()
        assert not supports_subset_start(model) and start_kinds(model) == ("random",)
        assert subset_consensus(model, x, y, random_state=0) is None
        res, race = _fit_auto(model, x, y, seed=4)
        assert race.starts[0]["status"] == "single" and race.history == []
        ref = fit_em(make(), x, y, init="random", random_state=4)
        assert res.log_likelihood == ref.log_likelihood
        # a race of several starts runs for these families too
        res2, race2 = _fit_auto(make(), x, y, seed=4, starts=("random", "kmeans", "random"))
        assert len(race2.starts) == 3 and _nondecreasing(race2.history) and np.isfinite(res2.log_likelihood)
        assert res2.log_likelihood >= max(s["mean_log_likelihood"] for s in race2.starts if s["status"] == "converged") * float(
            len(y)
        ) - 1e-6 * len(y)


def test_two_level_tree():
    x, y = zigzag(n=300)
    tree = build_tree(1, depth=2, branching=2)
    assert start_kinds(tree) == ("random",)
    res, race = _fit_auto(tree, x, y, seed=0, starts=("random", "kmeans"))
    assert {s["kind"] for s in race.starts} == {"random", "kmeans"}
    assert _nondecreasing(race.history) and _nondecreasing(res.history) and np.isfinite(res.log_likelihood)
    assert race.history[-1] <= res.history[0] + 1e-9  # fit_em goes on from the winner


def test_student_t_and_vector_y_support_subset_starts():
    x, y = _tone()
    t = MixtureOfExperts(ConstantGate(2), StudentTExpert(1, n_experts=2, var_floor=1e-7))
    assert supports_subset_start(t) and start_kinds(t) == ("subset", "random", "kmeans")
    r = subset_consensus(t, x, y, random_state=0)
    on_line = (y - x[:, 0]).abs() < 0.01
    assert float(r[on_line, 0].sum()) > 40
    g = torch.Generator().manual_seed(0)
    xv = torch.rand(300, 1, generator=g, dtype=D)
    z = torch.rand(300, generator=g, dtype=D) < 0.5
    yv = torch.stack([torch.where(z, xv[:, 0], -xv[:, 0]), torch.where(z, 1 - xv[:, 0], xv[:, 0])], 1)
    yv = yv + 0.05 * torch.randn(300, 2, generator=g, dtype=D)
    model = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, 2, n_experts=2))
    resp = subset_responsibilities(model, xv, yv, random_state=0)
    assert resp.shape == (300, 2) and torch.allclose(resp.sum(1), torch.ones(300, dtype=D))
    race = small_em(model, xv, yv, random_state=0)
    assert race.converged and _nondecreasing(race.history)


def test_more_experts_get_distinct_consensus_sets():
    g = np.random.default_rng(0)
    xx = g.uniform(0, 1, 300)
    c = g.integers(0, 3, 300)
    yy = np.choose(c, [1 + 2 * xx, 3 - 2 * xx, 2 + 0 * xx]) + 0.05 * g.standard_normal(300)
    x, y = torch.tensor(xx[:, None]), torch.tensor(yy)
    model = _gaussian_moe("constant", y, k=3)
    resp = subset_responsibilities(model, x, y, random_state=1)
    assert resp.shape == (300, 3) and torch.allclose(resp.sum(1), torch.ones(300, dtype=D))
    res, race = _fit_auto(_gaussian_moe("constant", y, k=3), x, y, seed=1)
    truth = MixtureOfExperts(ConstantGate(3), LinearGaussianExpert(1, n_experts=3, var_floor=1e-6))
    ref = fit_em(truth, x, y, init=np.eye(3)[c], tol=1e-10)
    assert res.log_likelihood == pytest.approx(ref.log_likelihood, abs=1e-2)
    assert [s["kind"] for s in race.starts] == ["subset", "random", "kmeans"]


# ------------------------------------------------------- arguments
def test_bad_starts_are_refused():
    x, y = _tone()
    for bad in ("best", (), ("subset", "sometimes")):
        with pytest.raises(ValueError, match="starts must be"):
            small_em(_gaussian_moe("softmax", y), x, y, starts=bad)


def test_race_keeps_the_best_finished_run_and_counts_its_iterations():
    x, y = _tone()
    race = small_em(_gaussian_moe("constant", y), x, y, random_state=0, starts=("random", "subset", "kmeans", "random"))
    finished = [s for s in race.starts if s["status"] in ("converged", "max_iter")]
    assert race.history[-1] == max(s["mean_log_likelihood"] for s in finished)
    assert race.n_iter == len(race.history) and race.n_iter_total == sum(s["n_iter"] for s in race.starts)
    assert [s["kind"] for s in race.starts] == ["random", "subset", "kmeans", "random"]


# ------------------------------------------------ the start on a sample of the rows
def _three_lines(n, seed=0):
    """Three well-separated lines of y against x (K = 3), n rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=D) * 4 - 2
    z = torch.randint(0, 3, (n,), generator=g)
    slope, icpt = torch.tensor([1.0, -1.0, 0.0], dtype=D), torch.tensor([0.0, 0.0, 3.0], dtype=D)
    y = slope[z] * x[:, 0] + icpt[z] + 0.1 * torch.randn(n, generator=g, dtype=D)
    return x, y


def test_race_on_a_sample_reaches_the_maximum_of_the_race_on_every_row():
    """With more rows than init_sample_rows the race runs on a seeded sample and EM continues on every row:
    the same maximum as the race on every row, a history that holds only the full-data iterations, and a
    model that takes far fewer full-data iterations."""
    x, y = _three_lines(3000)
    fits = {}
    for rows in (3000, 600):
        moe = _gaussian_moe("softmax", y, k=3)
        fits[rows] = fit_em(moe, x, y, init="auto", random_state=1, init_sample_rows=rows, max_iter=500)
    whole, sampled = fits[3000], fits[600]
    assert whole.converged and sampled.converged
    assert sampled.mean_log_likelihood == pytest.approx(whole.mean_log_likelihood, abs=1e-6)
    assert sampled.n_iter < whole.n_iter  # the race's iterations on the sample are not in the history
    assert _nondecreasing(sampled.history)
    again = fit_em(_gaussian_moe("softmax", y, k=3), x, y, init="auto", random_state=1, init_sample_rows=600,
                   max_iter=500)
    assert again.history == sampled.history  # the sample is seeded


def test_array_start_uses_every_row_whatever_the_sample_size():
    """An (n, K) array of responsibilities names every row, so its start is made on every row: the same fit for
    any init_sample_rows (a sample of its rows would not match the array)."""
    x, y = _three_lines(500)
    r = torch.nn.functional.one_hot(torch.arange(500) % 3, 3).to(D)
    a = fit_em(_gaussian_moe("softmax", y, k=3), x, y, init=r, random_state=0, init_sample_rows=100, max_iter=50)
    b = fit_em(_gaussian_moe("softmax", y, k=3), x, y, init=r, random_state=0, init_sample_rows=500, max_iter=50)
    assert a.history == b.history


@pytest.mark.parametrize("bad", [5, 2.5])
def test_unsized_init_is_refused_with_the_shape_it_needs(bad):
    """A value that is neither a kind of start, an array of rows nor a callable is refused by name, not with a
    TypeError from sizing the start sample."""
    x, y = _three_lines(50)
    with pytest.raises(ValueError, match=r"init must be 'auto', 'kmeans', 'random', an \(n, K\) array .* got "):
        fit_em(_gaussian_moe("softmax", y, k=3), x, y, init=bad, init_sample_rows=20)
