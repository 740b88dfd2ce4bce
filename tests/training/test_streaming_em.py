"""Exact streaming EM: a source read in many batches gives the in-memory fit, parameter for parameter.

Every EM iteration sums additive statistics over the batches, and every
Newton / ECM M-step re-reads the source at the frozen E-step parameters (a
source not held in memory) or revisits the weighted data it kept (a source in
memory): the numbers differ from one in-memory batch only by the order of
floating-point sums, so parameters and the whole history agree to 1e-10.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from moekit import (
    BinomialExpert,
    CensoredGaussianExpert,
    ConstantGate,
    GammaExpert,
    LinearGaussianExpert,
    LogisticExpert,
    MixtureOfExperts,
    MLPGate,
    NegativeBinomialExpert,
    PointMassExpert,
    PoissonExpert,
    SoftmaxExpert,
    SoftmaxGate,
    StudentTExpert,
    fit_em,
)
from moekit.data import ArrayBatches, Batch
from moekit.training.tree import fit_tree_em
from moekit.tree import build_tree

D = torch.float64
N = 600
TOL = 1e-10


class Streamed(ArrayBatches):
    """Rows served in batches as if read from files: not kept, so every Newton pass reads the source again."""

    in_memory = False

    def shard(self, rank, world_size):
        s = super().shard(rank, world_size)
        return Streamed(s.x, s.y, s.weight, batch_size=s.batch_size)


def _data(n=N, seed=0):
    """Two soft regimes of x (a logistic boundary of slope ~1.5: gates stay bounded), noise, row weights."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=D)
    z = torch.rand(n, generator=g, dtype=D) < torch.sigmoid(1.5 * x[:, 0] - 0.5 * x[:, 1])
    a = torch.where(z, 1.0 + x[:, 0] - x[:, 1], -1.0 + 0.5 * x[:, 1])
    e = torch.randn(n, 2, generator=g, dtype=D)
    u = torch.rand(n, generator=g, dtype=D)
    w = torch.rand(n, generator=g, dtype=D) + 0.2
    return g, x, a, e, u, w


def _family(name):
    """(experts factory, x, y) of one family on the two-regime data."""
    g, x, a, e, u, _ = _data()
    if name == "gaussian":
        return lambda: LinearGaussianExpert(2, n_experts=2), x, a + 0.3 * e[:, 0]
    if name == "gaussian-tied":
        return lambda: LinearGaussianExpert(2, n_experts=2, covariance="tied"), x, a + 0.3 * e[:, 0]
    vec = torch.stack([a + 0.3 * e[:, 0], -a + 0.2 * e[:, 1] + 0.1 * e[:, 0]], 1)
    if name in ("vector-full", "vector-diag", "vector-tied", "vector-spherical"):
        cov = name.split("-")[1]
        return lambda: LinearGaussianExpert(2, 2, covariance=cov, n_experts=2), x, vec
    if name == "vector-missing":  # y's second column missing on the first 150 rows: whole batches see none of it
        vec = vec.clone()
        vec[:150, 1] = float("nan")
        return lambda: LinearGaussianExpert(2, 2, n_experts=2), x, vec
    if name == "logistic":
        return lambda: LogisticExpert(2, n_experts=2), x, (u < torch.sigmoid(2 * a)).long()
    if name == "softmax":
        score = torch.stack([a, -a, 0.5 * x[:, 1]], 1) + e[:, :1] * torch.tensor([1.0, -1.0, 0.0], dtype=D)
        return lambda: SoftmaxExpert(2, 3, n_experts=2), x, score.argmax(1)
    if name == "poisson":
        return lambda: PoissonExpert(2, n_experts=2), x, torch.poisson((0.5 * a).exp(), generator=g)
    if name == "poisson-offset-shared":  # an offset as x's trailing column; x1's coefficient shared by the experts
        offset = torch.linspace(-0.5, 0.5, N, dtype=D)
        y = torch.poisson((0.5 * a + offset).exp(), generator=g)
        return (lambda: PoissonExpert(2, n_experts=2, offset=True, shared=[1]), torch.cat([x, offset[:, None]], 1),
                y)
    if name == "poisson-l2":  # a ridge penalty: step-halving evaluates full statistics at its trial points
        return lambda: PoissonExpert(2, n_experts=2, l2=0.5), x, torch.poisson((0.5 * a).exp(), generator=g)
    if name == "binomial-trials":  # the number of trials is x's trailing column
        trials = (torch.arange(N, dtype=D) % 5 + 1)
        y = torch.binomial(trials, torch.sigmoid(a), generator=g)
        return lambda: BinomialExpert(2, n_experts=2), torch.cat([x, trials[:, None]], 1), y
    if name == "gamma":
        return lambda: GammaExpert(2, n_experts=2), x, (0.4 * a + 0.3 * e[:, 0]).exp()
    if name == "negative-binomial":
        return (lambda: NegativeBinomialExpert(2, n_experts=2), x,
                torch.poisson((0.5 * a + 0.5 * e[:, 0]).exp(), generator=g))
    if name == "student-t":  # heavy tails: the degrees of freedom have an interior maximum
        y = a + 0.3 * e[:, 0] * torch.where(u < 0.1, 5.0, 1.0).to(D)
        return lambda: StudentTExpert(2, n_experts=2), x, y
    if name == "censored-gaussian":  # [y, lower, upper]: rows at a limit are censored there
        lo, hi = -1.2, 1.5
        y = (a + 0.3 * e[:, 0]).clamp(lo, hi)
        y3 = torch.stack([y, torch.full_like(y, lo), torch.full_like(y, hi)], 1)
        return lambda: CensoredGaussianExpert(2, n_experts=2), x, y3
    if name == "point-mass+poisson":  # a zero-inflated Poisson: a list of two families
        y = torch.where(u < 0.3, torch.zeros_like(a), torch.poisson((0.3 * a + 0.5).exp(), generator=g))
        return lambda: [PointMassExpert(0.0), PoissonExpert(2)], x, y
    raise KeyError(name)


FAMILIES = ["gaussian", "gaussian-tied", "vector-full", "vector-diag", "vector-tied", "vector-spherical",
            "vector-missing", "logistic", "softmax", "poisson", "poisson-offset-shared", "poisson-l2",
            "binomial-trials", "gamma", "negative-binomial", "student-t", "censored-gaussian", "point-mass+poisson"]
CONSTANT_GATE = {"gaussian", "poisson", "point-mass+poisson"}  # also fitted with a constant gate
SLOW = {"student-t", "censored-gaussian", "gamma"}  # ECM / Newton steps of many passes each: fewer iterations


def _flat(name, gate):
    make, x, y = _family(name)
    d_gate = 2  # the gate reads x's first two columns (not a trials column)

    def model():
        g = {"softmax": lambda: SoftmaxGate(d_gate, 2), "softmax-l2": lambda: SoftmaxGate(d_gate, 2, l2=0.1),
             "constant": lambda: ConstantGate(2)}[gate]()
        return MixtureOfExperts(g, make(), gate_features=[0, 1])

    return model, x, y


def _assert_same_fit(m_ref, r_ref, m, r):
    """Every parameter and buffer to 1e-10 (absolute + relative); the whole history to 1e-10."""
    a, b = m_ref.state_dict(), m.state_dict()
    assert list(a) == list(b)
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=TOL, atol=TOL, msg=lambda s, k=k: f"{k}: {s}")
        else:
            assert torch.equal(a[k], b[k]), k
    assert len(r.history) == len(r_ref.history) and r.n_iter == r_ref.n_iter
    np.testing.assert_allclose(r.history, r_ref.history, rtol=0, atol=TOL)
    assert r.converged == r_ref.converged and r.pruned == r_ref.pruned
    assert r.total_weight == pytest.approx(r_ref.total_weight, rel=1e-12)


def _fits(model, x, y, w, fit=fit_em, **kw):
    """The in-memory fit (arrays) and the same fit over a streamed source and over kept batches."""
    kw = {"random_state": 0, "max_iter": 25, "tol": 0.0, **kw}  # tol=0: every start runs max_iter iterations
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning (tol=0), pruning
        m0 = model()
        r0 = fit(m0, x, y, w, **kw)
        out = []
        for source in (Streamed(x, y, w, batch_size=97), ArrayBatches(x, y, w, batch_size=250)):
            m = model()
            out.append((m, fit(m, source, **kw)))
    return (m0, r0), out


CASES = ([(f, "softmax", None) for f in FAMILIES] + [(f, "constant", None) for f in sorted(CONSTANT_GATE)]
         + [("gaussian", "softmax-l2", None), ("poisson", "softmax", "squarem")])


@pytest.mark.parametrize("family, gate, accelerate", CASES, ids=["-".join(filter(None, c)) for c in CASES])
def test_streamed_and_batched_em_equal_in_memory_em(family, gate, accelerate):
    model, x, y = _flat(family, gate)
    w = _data()[-1]
    # (SQUAREM is stopped before it converges: there its accept test ll3 >= ll2 is a tie that one rounding decides)
    max_iter = 12 if family in SLOW else 25
    (m0, r0), others = _fits(model, x, y, w, accelerate=accelerate, max_iter=max_iter)
    assert np.isfinite(r0.history).all() and (accelerate is not None or len(r0.history) == max_iter + 1)
    assert r0.history[-1] > r0.history[0]  # the fit did something
    for m, r in others:
        _assert_same_fit(m0, r0, m, r)


def _tree_data(n=N, seed=1):
    """A smooth curve with several soft regimes (well posed for a few leaves), integer weights with zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=D) * 2 - 1
    y = torch.sin(2.5 * x[:, 0]) + 0.5 * x[:, 1] + 0.3 * torch.randn(n, generator=g, dtype=D)
    w = torch.randint(0, 4, (n,), generator=g).to(D)
    return x, y, w


TREES = {  # a small ridge on the depth-3 gates keeps them soft (8 leaves on one smooth curve: else they sharpen)
    "depth3-linear": lambda: build_tree(2, depth=3, branching=2, gate=lambda d, k: SoftmaxGate(d, k, l2=0.01)),
    "depth2-poisson-constant": lambda: build_tree(2, depth=2, branching=2, leaf="poisson", gate="constant"),
    "branching-3x2": lambda: build_tree(2, branching=(3, 2)),
}


@pytest.mark.parametrize("name", sorted(TREES))
def test_streamed_tree_em_equals_in_memory(name):
    x, y, w = _tree_data()
    if "poisson" in name:
        y = torch.poisson((0.5 * y).exp(), generator=torch.Generator().manual_seed(2))
    (m0, r0), others = _fits(TREES[name], x, y, w, fit=fit_tree_em, init="kmeans", max_iter=12)
    assert r0.history[-1] > r0.history[0]
    for m, r in others:
        _assert_same_fit(m0, r0, m, r)
    # and fit_em's own start on a tree (nested nodes split by k-means), two starts
    (m0, r0), others = _fits(TREES[name], x, y, w, n_init=2, max_iter=6)
    for m, r in others:
        _assert_same_fit(m0, r0, m, r)


# ------------------------------------------------------------ the start sample
@pytest.mark.parametrize("init", ["auto", "kmeans"])
def test_start_on_a_sample_does_not_depend_on_the_batching(init):
    """init_sample_rows < n: the start is made on the same seeded rows whether in memory or streamed, in any
    batch size, and differs from the start on every row."""
    model, x, y = _flat("gaussian", "softmax")
    w = _data()[-1]
    starts = []

    def first(it, ll, m):
        if it == 0:
            starts.append({k: v.clone() for k, v in m.state_dict().items()})

    kw = dict(init=init, random_state=3, max_iter=5, tol=0.0, init_sample_rows=200, callback=first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m0 = model()
        r0 = fit_em(m0, x, y, w, **kw)
        for bs in (50, 97, 600):
            for src in (Streamed(x, y, w, batch_size=bs), ArrayBatches(x, y, w, batch_size=bs)):
                m = model()
                r = fit_em(m, src, **kw)
                _assert_same_fit(m0, r0, m, r)
        m_all = model()
        fit_em(m_all, x, y, w, **{**kw, "init_sample_rows": N})
    for s in starts[1:-1]:
        for k in s:
            assert torch.equal(s[k], starts[0][k]), k
    assert any(not torch.allclose(starts[-1][k], starts[0][k]) for k in starts[0] if starts[0][k].is_floating_point())


# ------------------------------------------------------------ bad inputs
class _Custom:
    """A minimal source of given batches (no total_weight, no n_rows)."""

    in_memory = False
    n_rows = None

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def shard(self, rank, world_size):
        return self

    def sample(self, max_rows, seed):
        return self.batches[0]


def _moe():
    return MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, n_experts=2))


def test_bad_sources_are_refused_with_a_clear_message():
    _, x, y = _family("gaussian")
    w = _data()[-1]
    src = Streamed(x, y, w, batch_size=100)
    with pytest.raises(ValueError, match="x is a source of batches, which carries y and the row weights: leave y and "
                                         "sample_weight None"):
        fit_em(_moe(), src, y)
    with pytest.raises(ValueError, match="leave y and sample_weight None"):
        fit_em(_moe(), src, sample_weight=w)
    extras = _Custom([Batch(x[:300], y[:300], w[:300], offset=torch.zeros(300, dtype=D))])
    with pytest.raises(ValueError, match="fit_em reads model-level batches: offsets and trials as trailing columns "
                                         "of x"):
        fit_em(_moe(), extras)
    wide = _Custom([Batch(x[:300], y[:300], w[:300]), Batch(torch.cat([x[300:], x[300:, :1]], 1), y[300:], w[300:])])
    with pytest.raises(ValueError, match="a batch of the source has 3 columns of x, an earlier one had 2; every batch "
                                         "must have the same columns"):
        fit_em(_moe(), wide)
    neg = w.clone()
    neg[450] = -1.0
    with pytest.raises(ValueError, match="a batch of the source has negative or non-finite row weights; weights must "
                                         "be finite and >= 0"):
        fit_em(_moe(), Streamed(x, y, neg, batch_size=100))
    nan = w.clone()
    nan[10] = float("nan")
    with pytest.raises(ValueError, match="negative or non-finite row weights"):
        fit_em(_moe(), _Custom([Batch(x, y, nan)]))
    for empty in (ArrayBatches(x[:0], y[:0], w[:0]), Streamed(x[:0], y[:0], w[:0], batch_size=10), _Custom([])):
        with pytest.raises(ValueError, match="the source has no rows: there is nothing to fit"):
            fit_em(_moe(), empty)
    with pytest.raises(ValueError, match="the row weights of the source sum to 0.0; at least one row needs a positive "
                                         "weight"):
        fit_em(_moe(), Streamed(x, y, torch.zeros_like(w), batch_size=100))
    # a column of a vector y missing on every row: refused at the end of the first pass (batches may miss it)
    _, xv, yv = _family("vector-full")
    yv = yv.clone()
    yv[:, 1] = float("nan")
    with pytest.raises(ValueError, match="y column 1 is missing \\(NaN\\) on every row with positive weight"):
        fit_em(MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, 2, n_experts=2)),
               Streamed(xv, yv, w, batch_size=100), init_sample_rows=50)
    # components without statistics need their weighted data in memory, in one batch
    for src in (Streamed(x, y, w, batch_size=100), ArrayBatches(x, y, w, batch_size=100)):
        mlp = MixtureOfExperts(MLPGate(2, 2, (4,), generator=torch.Generator().manual_seed(0)),
                               LinearGaussianExpert(2, n_experts=2))
        with pytest.raises(TypeError, match="MLPGate has no sufficient statistics, so it can be fitted only on data "
                                            "held in memory \\(one batch\\), not streamed"):
            fit_em(mlp, src, max_iter=2)
