"""Tests of moekit.experts.mlp.MLPExpert."""

import copy
import warnings

import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from torch.distributions import Categorical, Independent, Normal
from torch.func import functional_call

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em
from moekit.experts.mlp import MLPExpert

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _data(n=60, d=2, seed=0):
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.sin(x[:, 0]) + 0.3 * torch.randn(n, generator=g, dtype=F64)
    return x, y


CONFIGS = {
    "scalar": dict(),
    "vector": dict(n_outputs=3),
    "categorical": dict(head="categorical", n_classes=4),
}


def _targets(kind, x, seed=1):
    g = _gen(seed)
    n = x.shape[0]
    if kind == "scalar":
        return torch.sin(x[:, 0]) + 0.3 * torch.randn(n, generator=g, dtype=F64)
    if kind == "vector":
        return torch.randn(n, 3, generator=g, dtype=F64) + x[:, :1]
    return torch.randint(0, 4, (n,), generator=g)


# ----------------------------------------------------------------- shapes
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_shapes_and_distribution_types(kind):
    x, _ = _data()
    y = _targets(kind, x)
    single = MLPExpert(2, hidden_layer_sizes=(5,), generator=_gen(), **CONFIGS[kind])
    stacked = MLPExpert(2, hidden_layer_sizes=(5,), n_experts=3, generator=_gen(), **CONFIGS[kind])
    ds, dk = single(x), stacked(x)
    assert ds.batch_shape == (60,) and dk.batch_shape == (60, 3)
    if kind == "vector":
        assert isinstance(ds, Independent) and ds.event_shape == (3,)
    elif kind == "scalar":
        assert isinstance(ds, Normal) and ds.event_shape == ()
    else:
        assert isinstance(ds, Categorical)
        assert single.y_kind == "categorical"
    assert single.log_prob(x, y).shape == (60,)
    assert stacked.log_prob(x, y).shape == (60, 3)
    for p in stacked.parameters():
        assert p.shape[0] == 3
    for p in single.parameters():
        assert p.shape[0] == 1
    per = sum(p.numel() for p in single.parameters())
    assert single.n_parameters() == stacked.n_parameters() == per


def test_scale_floor():
    e = MLPExpert(1, hidden_layer_sizes=(), var_floor=1e-4)
    with torch.no_grad():
        e.bias_0[..., 1] = -50.0  # log-scale far below the floor
    x = torch.zeros(3, 1, dtype=F64)
    assert torch.all(e(x).stddev >= 1e-2)


# ---------------------------------------------------------------- stacking
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_stacked_equals_unstacked(kind):
    x, _ = _data()
    y = _targets(kind, x)
    stacked = MLPExpert(2, hidden_layer_sizes=(6, 4), n_experts=3, generator=_gen(3), **CONFIGS[kind])
    parts = stacked.unstack()
    assert all(not p.stacked for p in parts)
    lp = stacked.log_prob(x, y)
    for k, p in enumerate(parts):
        torch.testing.assert_close(lp[:, k], p.log_prob(x, y), rtol=0, atol=1e-12)
    restacked = MLPExpert.stack(parts)
    torch.testing.assert_close(restacked.log_prob(x, y), lp, rtol=0, atol=1e-12)
    two = stacked.select([2, 0])
    torch.testing.assert_close(two.log_prob(x, y), lp[:, [2, 0]], rtol=0, atol=1e-12)
    gate = SoftmaxGate(2, 3)
    m1 = MixtureOfExperts(gate, stacked)
    m2 = MixtureOfExperts(copy.deepcopy(gate), parts)
    torch.testing.assert_close(m1.log_prob(x, y), m2.log_prob(x, y), rtol=0, atol=1e-12)


def test_stacked_and_list_em_steps_agree():
    """One M-step of the stack equals the M-steps of its parts (weights normalised per expert)."""
    x, y = _data()
    stacked = MLPExpert(2, hidden_layer_sizes=(5,), n_experts=2, generator=_gen(4))
    parts = stacked.unstack()
    w = torch.rand(60, 2, generator=_gen(5), dtype=F64)
    w[:, 1] *= 100.0  # a very different share: the step size must not depend on it
    stacked.fit_weighted(x, y, w)
    for k, p in enumerate(parts):
        p.fit_weighted(x, y, w[:, k])
        torch.testing.assert_close(stacked.log_prob(x, y)[:, k], p.log_prob(x, y), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ M-step
def _per_expert_objective(e, x, y, w):
    with torch.no_grad():
        return (w * e.log_prob(x, y).reshape(w.shape)).sum(0)


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("lr", [1e-2, 5.0])
def test_fit_weighted_never_lowers_objective(kind, lr):
    x, _ = _data()
    y = _targets(kind, x)
    e = MLPExpert(2, hidden_layer_sizes=(8,), n_experts=3, learning_rate=lr, generator=_gen(6), **CONFIGS[kind])
    w = torch.rand(60, 3, generator=_gen(7), dtype=F64)
    w[:10, 0] = 0.0
    for _ in range(4):
        before = _per_expert_objective(e, x, y, w)
        e.fit_weighted(x, y, w)
        after = _per_expert_objective(e, x, y, w)
        assert torch.all(after >= before - 1e-12), (before, after)
        assert all(torch.isfinite(p).all() for p in e.parameters())


def test_fit_weighted_improves_single_expert_with_default_weights():
    x, y = _data(n=100)
    e = MLPExpert(2, hidden_layer_sizes=(8,), generator=_gen(8))
    before = float(e.log_prob(x, y).detach().sum())
    e.fit_weighted(x, y)
    assert float(e.log_prob(x, y).detach().sum()) > before


def test_fit_after_stack_and_deepcopy():
    """The Adam state kept between M-steps must not break after stack/select/deepcopy."""
    x, y = _data()
    e = MLPExpert(2, hidden_layer_sizes=(4,), n_experts=2, generator=_gen(9))
    w = torch.rand(60, 2, generator=_gen(10), dtype=F64)
    e.fit_weighted(x, y, w)
    parts = e.unstack()
    for p in parts:
        p.fit_weighted(x, y, w[:, 0])
    restacked = MLPExpert.stack(parts)
    restacked.fit_weighted(x, y, w)
    c = copy.deepcopy(restacked)
    c.fit_weighted(x, y, w)
    restacked.fit_weighted(x, y, w)
    torch.testing.assert_close(c.log_prob(x, y), restacked.log_prob(x, y))


def test_weight_shape_errors():
    x, y = _data()
    e = MLPExpert(2, n_experts=2, generator=_gen())
    with pytest.raises(ValueError, match="shape"):
        e.fit_weighted(x, y, torch.ones(60, dtype=F64))
    with pytest.raises(ValueError, match="n_outputs"):
        MLPExpert(2, generator=_gen()).log_prob(x, torch.zeros(60, 2, dtype=F64))


# --------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("n_experts", [None, 2])
def test_gradcheck_log_prob_wrt_parameters(kind, n_experts):
    x, _ = _data(n=5)
    y = _targets(kind, x)
    e = MLPExpert(2, hidden_layer_sizes=(3,), n_experts=n_experts, generator=_gen(11), **CONFIGS[kind])
    names = [n for n, _ in e.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in e.parameters())
    yy = y if n_experts is None else y.unsqueeze(1)

    def fn(*ps):
        return functional_call(e, dict(zip(names, ps)), (x,)).log_prob(yy)

    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-6)


# --------------------------------------------------------------- EM
def _two_branch(n=300, seed=0):
    g = _gen(seed)
    x = torch.rand(n, 1, generator=g, dtype=F64) * 2 - 1
    branch = torch.rand(n, generator=g, dtype=F64) < 0.5
    y = torch.where(branch, torch.sin(3 * x[:, 0]), 1.0 - x[:, 0] ** 2) + 0.05 * torch.randn(n, generator=g, dtype=F64)
    return x, y


def test_em_with_mlp_experts_monotone_and_beats_linear():
    x, y = _two_branch()
    experts = MLPExpert(1, n_experts=2, hidden_layer_sizes=(16,), m_step_iter=20, learning_rate=2e-2, generator=_gen(12))
    moe = MixtureOfExperts(SoftmaxGate(1, 2), experts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_em(moe, x, y, max_iter=60, tol=1e-8, random_state=0)
    h = res.history
    assert all(b >= a - 1e-9 for a, b in zip(h, h[1:])), h
    lin = LinearGaussianExpert(1).fit_weighted(x, y)
    lin_ll = float(lin.log_prob(x, y).detach().mean())
    assert res.mean_log_likelihood > lin_ll + 1.0, (res.mean_log_likelihood, lin_ll)
    with torch.no_grad():
        assert torch.allclose(moe.log_prob(x, y).mean(), torch.tensor(res.mean_log_likelihood, dtype=F64))


def test_em_with_list_of_mlp_experts_and_vector_y():
    g = _gen(13)
    x = torch.rand(120, 1, generator=g, dtype=F64)
    y = torch.cat([x, -x], 1) + 0.1 * torch.randn(120, 2, generator=g, dtype=F64)
    experts = [MLPExpert(1, n_outputs=2, hidden_layer_sizes=(4,), generator=_gen(k)) for k in range(2)]
    moe = MixtureOfExperts(SoftmaxGate(1, 2), experts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_em(moe, x, y, max_iter=10, random_state=0)
    assert all(b >= a - 1e-9 for a, b in zip(res.history, res.history[1:]))
    assert moe(x).mean.shape == (120, 2)


# ----------------------------------------------------------- categorical
def test_categorical_head_with_integer_labels():
    g = _gen(14)
    x = torch.randn(200, 2, generator=g, dtype=F64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # labels 0, 1, 2
    e = MLPExpert(2, head="categorical", n_classes=3, hidden_layer_sizes=(8,), m_step_iter=100,
                  learning_rate=5e-2, generator=_gen(15))
    before = float(e.log_prob(x, y).detach().mean())
    e.fit_weighted(x, y)
    after = float(e.log_prob(x, y).detach().mean())
    assert after > before
    acc = float((e(x).probs.argmax(1) == y).double().mean())
    assert acc > 0.8
    # float labels holding integers are accepted, others are not
    torch.testing.assert_close(e.log_prob(x, y.double()), e.log_prob(x, y))
    with pytest.raises(ValueError, match="n_classes"):
        e.log_prob(x, torch.full((200,), 3))
    with pytest.raises(ValueError, match="integer"):
        e.log_prob(x, y.double() + 0.5)
    # inside a mixture fitted by EM
    moe = MixtureOfExperts(SoftmaxGate(2, 2), MLPExpert(2, head="categorical", n_classes=3, n_experts=2,
                                                       hidden_layer_sizes=(4,), generator=_gen(16)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_em(moe, x, y, max_iter=10, random_state=0)
    assert all(b >= a - 1e-9 for a, b in zip(res.history, res.history[1:]))
    probs = moe(x).probs
    assert probs.shape == (200, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(200, dtype=F64))


def test_constructor_errors():
    with pytest.raises(ValueError, match="n_classes"):
        MLPExpert(1, head="categorical")
    with pytest.raises(ValueError, match="head"):
        MLPExpert(1, head="poisson")
    with pytest.raises(ValueError, match="activation"):
        MLPExpert(1, activation="sigmoidish")
    with pytest.raises(ValueError, match="n_classes is only"):
        MLPExpert(1, n_classes=3)
    with pytest.raises(ValueError, match="x must have shape"):
        MLPExpert(2).log_prob(torch.zeros(3, 1, dtype=F64), torch.zeros(3, dtype=F64))


# ------------------------------------------------------------- robustness
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_no_nan_with_extreme_inputs(activation, kind):
    x = torch.tensor([[1e8, -1e8], [-1e12, 3.0], [0.0, 0.0], [1e-300, 1e6]], dtype=F64)
    y = _targets(kind, x) * 1e6 if kind != "categorical" else _targets(kind, x)
    e = MLPExpert(2, hidden_layer_sizes=(5,), activation=activation, n_experts=2, generator=_gen(17),
                  **CONFIGS[kind])
    lp = e.log_prob(x, y)
    assert torch.isfinite(lp).all()
    d = e(x)
    if kind == "categorical":
        assert torch.isfinite(d.probs).all()
    else:
        assert torch.isfinite(d.mean).all() and torch.isfinite(d.stddev).all()
    e.fit_weighted(x, y, torch.ones(4, 2, dtype=F64))
    assert all(torch.isfinite(p).all() for p in e.parameters())
    assert torch.isfinite(e.log_prob(x, y)).all()


def test_seeded_init_does_not_touch_global_rng():
    state = torch.get_rng_state()
    a = MLPExpert(3, n_experts=2, generator=_gen(18))
    b = MLPExpert(3, n_experts=2, generator=_gen(18))
    assert torch.equal(torch.get_rng_state(), state)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    c = MLPExpert(3, n_experts=2, generator=_gen(19))
    assert not torch.equal(a.weight_0, c.weight_0)
    # the two stacked experts start differently
    assert not torch.equal(a.weight_0[0], a.weight_0[1])


def test_float32():
    x, y = _data()
    e = MLPExpert(2, n_experts=2, dtype=torch.float32, generator=_gen())
    lp = e.log_prob(x, y)  # float64 data is cast to the parameters' dtype
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    e.fit_weighted(x, y, torch.ones(60, 2))
