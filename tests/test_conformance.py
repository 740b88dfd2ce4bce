"""Every expert family and gate passes the conformance suite of :mod:`moekit.testing`; broken ones fail it."""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.linear_model import LinearRegression

from moekit import (
    BinomialExpert,
    CensoredGaussianExpert,
    ConstantGate,
    GammaExpert,
    LinearGaussianExpert,
    LogisticExpert,
    MixtureOfExperts,
    MLPExpert,
    MLPGate,
    NegativeBinomialExpert,
    PointMassExpert,
    PoissonExpert,
    SklearnExpert,
    SoftmaxExpert,
    SoftmaxGate,
    StudentTExpert,
)
from moekit.testing import check_expert, check_gate, class_data, count_data, regression_data, soft_targets

REG = regression_data(60, 2, seed=0)
VEC = regression_data(60, 2, d_y=2, seed=1)
COUNTS = count_data(60, 2, seed=2)
BINARY = class_data(60, 2, 2, seed=3)
THREE = class_data(60, 2, 3, seed=4)
# heavy tails, so that the Student-t degrees of freedom have an interior maximum (Gaussian data push them to the cap)
HEAVY = (REG[0], REG[1] + torch.tensor([(-1) ** i * (1.5 if i % 9 == 0 else 0.0) for i in range(60)], dtype=torch.float64))
# issue 15's families and constraints: per-row extras are trailing x columns (offset, then trials), censoring is y's
OFFSET = torch.linspace(-0.5, 0.5, 60, dtype=torch.float64)[:, None]
TRIALS = (torch.arange(60, dtype=torch.float64) % 5 + 1)[:, None]
SUCCESSES = torch.floor(TRIALS[:, 0] * torch.sigmoid(REG[0][:, 0]) + 0.5)
POSITIVE = (REG[0], (0.3 * REG[1]).exp())
LIMITED = (REG[0], torch.stack([REG[1].clamp(-0.5, 0.8), torch.full((60,), -0.5, dtype=torch.float64),
                                torch.full((60,), 0.8, dtype=torch.float64)], 1))


def _gen():
    return torch.Generator().manual_seed(0)


EXPERTS = {
    "gaussian": (lambda: LinearGaussianExpert(2), REG, {}),
    "gaussian-stacked": (lambda: LinearGaussianExpert(2, n_experts=3), REG, {}),
    # the ridge solution maximises a penalised objective, not the likelihood the suite evaluates
    "gaussian-ridge": (lambda: LinearGaussianExpert(2, alpha=0.5), REG, {"exact_m_step": False}),
    "gaussian-vector-full": (lambda: LinearGaussianExpert(2, 2), VEC, {}),
    "gaussian-vector-diag": (lambda: LinearGaussianExpert(2, 2, covariance="diag"), VEC, {}),
    "gaussian-vector-spherical-stacked": (lambda: LinearGaussianExpert(2, 2, n_experts=2, covariance="spherical"), VEC, {}),
    "poisson": (lambda: PoissonExpert(2), COUNTS, {}),
    "poisson-stacked-l2": (lambda: PoissonExpert(2, n_experts=2, l2=0.1), COUNTS, {}),
    "logistic": (lambda: LogisticExpert(2), BINARY, {}),
    "logistic-stacked": (lambda: LogisticExpert(2, n_experts=2), BINARY, {}),
    "softmax": (lambda: SoftmaxExpert(2, 3), THREE, {}),
    "softmax-stacked-l2": (lambda: SoftmaxExpert(2, 3, n_experts=2, l2=0.1), THREE, {}),
    "student-t": (lambda: StudentTExpert(2), HEAVY, {}),
    "student-t-stacked": (lambda: StudentTExpert(2, n_experts=2), HEAVY, {}),
    "mlp-gaussian": (lambda: MLPExpert(2, hidden_layer_sizes=(4,), generator=_gen()), REG, {}),
    "mlp-categorical-stacked": (
        lambda: MLPExpert(2, head="categorical", n_classes=3, hidden_layer_sizes=(4,), n_experts=2, generator=_gen()),
        THREE,
        {},
    ),
    "gaussian-tied-stacked": (lambda: LinearGaussianExpert(2, n_experts=2, covariance="tied"), REG, {}),
    "gaussian-vector-tied-stacked": (lambda: LinearGaussianExpert(2, 2, n_experts=2, covariance="tied"), VEC, {}),
    "gaussian-shared-stacked": (lambda: LinearGaussianExpert(2, n_experts=2, shared=[1]), REG, {}),
    "gaussian-offset": (lambda: LinearGaussianExpert(2, offset=True), (torch.cat([REG[0], OFFSET], 1), REG[1]), {}),
    "gaussian-intercept-only-stacked": (lambda: LinearGaussianExpert(0, n_experts=2), (REG[0][:, :0], REG[1]), {}),
    "poisson-offset-shared-stacked": (
        lambda: PoissonExpert(2, n_experts=2, offset=True, shared=[0]), (torch.cat([COUNTS[0], OFFSET], 1), COUNTS[1]), {}
    ),
    "logistic-shared-stacked": (lambda: LogisticExpert(2, n_experts=2, shared=[0]), BINARY, {}),
    "softmax-shared-stacked": (lambda: SoftmaxExpert(2, 3, n_experts=2, shared=[1]), THREE, {}),
    "binomial-trials": (lambda: BinomialExpert(2), (torch.cat([REG[0], TRIALS], 1), SUCCESSES), {}),
    "binomial-offset-stacked": (
        lambda: BinomialExpert(2, n_experts=2, offset=True), (torch.cat([REG[0], OFFSET, TRIALS], 1), SUCCESSES), {}
    ),
    "gamma": (lambda: GammaExpert(2), POSITIVE, {}),
    "gamma-stacked-shared": (lambda: GammaExpert(2, n_experts=2, shared=[0]), POSITIVE, {}),
    "negative-binomial": (lambda: NegativeBinomialExpert(2), COUNTS, {}),
    "negative-binomial-offset-stacked": (
        lambda: NegativeBinomialExpert(2, n_experts=2, offset=True), (torch.cat([COUNTS[0], OFFSET], 1), COUNTS[1]), {}
    ),
    "point-mass": (lambda: PointMassExpert(0.0), (COUNTS[0], COUNTS[1] * 0), {}),
    "censored-gaussian": (lambda: CensoredGaussianExpert(2), LIMITED, {}),
    "censored-gaussian-stacked": (lambda: CensoredGaussianExpert(2, n_experts=2), LIMITED, {}),
    "sklearn-linear": (lambda: SklearnExpert(LinearRegression(), 2), REG, {"exact_m_step": True}),
    "mixture-as-expert": (
        lambda: MixtureOfExperts(ConstantGate(2), LinearGaussianExpert(2, n_experts=2)),
        REG,
        {"exact_m_step": False},
    ),
}


@pytest.mark.parametrize("name", sorted(EXPERTS))
def test_expert_family_conforms(name):
    make, (x, y), kw = EXPERTS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        check_expert(make, x, y, **kw)


GATES = {
    "constant": lambda: ConstantGate(3),
    "softmax": lambda: SoftmaxGate(2, 3),
    "softmax-l2": lambda: SoftmaxGate(2, 3, l2=0.5),
    "mlp": lambda: MLPGate(2, 3),
}


@pytest.mark.parametrize("name", sorted(GATES))
def test_gate_conforms(name):
    check_gate(GATES[name], REG[0], soft_targets(60, 3, seed=5))


# ------------------------------------------------- the suite catches faults
class _LazyGaussian(LinearGaussianExpert):
    """An M-step that stops halfway: it never reaches the weighted optimum."""

    @torch.no_grad()
    def m_step(self, stats):
        old = self.coef.detach().clone()
        super().m_step(stats)
        self.coef.data.copy_(0.5 * (old + self.coef.data))


class _LeakyStats(LinearGaussianExpert):
    """Statistics that are not additive (a normalised value)."""

    def suff_stats(self, x, y, weight=None):
        s = super().suff_stats(x, y, weight)
        return s.map(lambda t: t / x.shape[0])


class _CpuOnly(LinearGaussianExpert):
    """Creates a tensor without saying where: it lands on the default device."""

    def log_prob(self, x, y):
        return super().log_prob(x, y) + torch.zeros(x.shape[0], dtype=x.dtype)


class _BadShape(LinearGaussianExpert):
    def log_prob(self, x, y):
        return super().log_prob(x, y)[:, None]


@pytest.mark.parametrize(
    "cls, message",
    [
        (_LazyGaussian, "optimum"),
        (_LeakyStats, "additive"),
        (_CpuOnly, "device|meta"),
        (_BadShape, "shape"),
    ],
)
def test_faulty_experts_fail_the_suite(cls, message):
    with pytest.raises((AssertionError, RuntimeError, NotImplementedError), match=message):
        check_expert(lambda: cls(2), *REG)


class _MeanStatsGate(ConstantGate):
    """Statistics normalised by the batch size: not additive."""

    def suff_stats(self, x, targets):
        return super().suff_stats(x, targets).map(lambda t: t / x.shape[0])


class _HalfStepGate(ConstantGate):
    """An exact M-step that moves only halfway to the optimum."""

    @torch.no_grad()
    def m_step(self, stats):
        old = self.logits.detach().clone()
        super().m_step(stats)
        self.logits.data.copy_(0.5 * (old + self.logits.data))


@pytest.mark.parametrize("cls, message", [(_MeanStatsGate, "additive"), (_HalfStepGate, "optimum")])
def test_faulty_gates_fail_the_suite(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_gate(lambda: cls(3), REG[0], soft_targets(60, 3, seed=5))


def test_one_expert_gates_conform():
    """K = 1: nothing to fit (the softmax gate has no free coefficients), and nothing may break."""
    for make in (lambda: SoftmaxGate(2, 1), lambda: ConstantGate(1)):
        check_gate(make, REG[0], soft_targets(60, 1, seed=6))
