"""The softmax gate's M-step: its curvature options, the E-step's reuse of the gate's output, ECM steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em
from moekit._mstep import fit_in_memory
from moekit.experts.newton import multinomial_newton_stats

D = torch.float64


def _gate_data(n=400, d=3, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D)
    targets = torch.rand(n, k, generator=g, dtype=D) * torch.rand(n, 1, generator=g, dtype=D) * 2
    return x, targets


def _mixture_data(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=D) * 4 - 2
    branch = x[:, 0] + 0.5 * x[:, 1] > 0
    y = torch.where(branch, 2 * x[:, 0] + 1, -x[:, 1]) + 0.2 * torch.randn(n, generator=g, dtype=D)
    return x, y


@pytest.mark.parametrize("k", [2, 3, 5])
def test_block_and_bound_curvatures_against_the_exact_information(k):
    """"block" is the exact information's diagonal blocks; Böhning's "bound" dominates it (Loewner order)."""
    x, t = _gate_data(k=k)
    xd = torch.cat([torch.ones(len(x), 1, dtype=D), x], 1)
    logp = torch.log_softmax(torch.randn(len(x), 1, k, dtype=D), -1)
    counts = t[:, None, :]
    _, grad, full = multinomial_newton_stats(xd, logp, counts, "full")
    _, grad_b, block = multinomial_newton_stats(xd, logp, counts, "block")
    _, grad_g, gram = multinomial_newton_stats(xd, logp, counts, "bound")
    torch.testing.assert_close(grad_b, grad)
    torch.testing.assert_close(grad_g, grad)
    p = xd.shape[1]
    for j in range(k - 1):
        torch.testing.assert_close(block[0, j], full[0, j * p : (j + 1) * p, j * p : (j + 1) * p])
    gate = SoftmaxGate(x.shape[1], k, hessian="bound")
    bound = gate._information(gram[0])
    assert torch.linalg.eigvalsh(bound - full[0]).min() > -1e-9 * full[0].diagonal().abs().max()
    assert torch.linalg.eigvalsh(full[0]).min() > 0


@pytest.mark.parametrize("hessian", ["full", "block", "bound"])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_every_curvature_reaches_the_same_weighted_optimum(hessian, l2):
    """Newton steps with any curvature climb to the maximiser of the (penalised) weighted objective."""
    x, t = _gate_data(k=3)
    ref = SoftmaxGate(3, 3, l2=l2, max_m_steps=100).fit_weighted(x, t)
    gate = SoftmaxGate(3, 3, l2=l2, max_m_steps=3000, hessian=hessian).fit_weighted(x, t)
    # the first-order curvatures converge linearly and stop on the objective's relative change (1e-10)
    torch.testing.assert_close(gate(x), ref(x), atol=1e-6 if hessian == "full" else 1e-4, rtol=0)


@pytest.mark.parametrize("hessian", ["full", "block", "bound"])
def test_one_newton_step_never_lowers_the_objective(hessian):
    x, t = _gate_data(k=4, seed=3)
    gate = SoftmaxGate(3, 4, max_m_steps=1, hessian=hessian)
    before = float(gate.objective(x, t))
    for _ in range(5):
        fit_in_memory(gate, x, t, max_steps=1)
        after = float(gate.objective(x, t))
        assert after >= before - 1e-10 * abs(before)
        before = after


def test_statistics_from_the_e_steps_log_gate_equal_recomputed_ones():
    x, t = _gate_data(k=4, seed=1)
    gate = SoftmaxGate(3, 4)
    with torch.no_grad():
        gate.coef.copy_(torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=D))
        lg = gate(x)
    a, b = gate.suff_stats(x, t), gate.suff_stats(x, t, log_gate=lg)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hessian", ["full", "block", "bound"])
@pytest.mark.parametrize("steps", [1, 3])
def test_em_never_lowers_the_likelihood_with_any_gate_step(hessian, steps):
    x, y = _mixture_data()
    moe = MixtureOfExperts(SoftmaxGate(2, 3, max_m_steps=steps, hessian=hessian), LinearGaussianExpert(2, n_experts=3))
    res = fit_em(moe, x, y, random_state=0, max_iter=60, tol=0)
    assert np.diff(res.history).min() >= -1e-9


def test_ecm_and_full_newton_m_steps_reach_the_same_maximum():
    """One Newton step per EM iteration (the default) and five reach the same likelihood from the same start."""
    x, y = _mixture_data(seed=4)
    finals = []
    for steps in (1, 5):
        moe = MixtureOfExperts(SoftmaxGate(2, 2, max_m_steps=steps), LinearGaussianExpert(2, n_experts=2))
        finals.append(fit_em(moe, x, y, random_state=0, max_iter=1000, tol=1e-10).history[-1])
    assert finals[0] == pytest.approx(finals[1], abs=1e-7)


def test_defaults_and_bad_arguments():
    g = SoftmaxGate(2, 3)
    assert g.max_m_steps == 1 and g.hessian == "full"
    with pytest.raises(ValueError, match="hessian must be one of"):
        SoftmaxGate(2, 3, hessian="diag")
    with pytest.raises(ValueError, match="max_m_steps must be a positive int"):
        SoftmaxGate(2, 3, max_m_steps=0)
