"""The closed-form observed information of gated linear-Gaussian mixtures equals the automatic Hessian.

``observed_informations`` computes the Hessian of the default regression model (a softmax or
constant gate over stacked linear-Gaussian experts, scalar y) in closed form
(:mod:`moekit.inference._gaussian_information`, Louis' identity); every other model goes through
automatic differentiation.  Both must give the same information, sandwich and standard errors.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import moekit.inference.information as information
from moekit import ConstantGate, LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em
from moekit.inference._gaussian_information import supports_closed_form

D = torch.float64


def _fitted(n, d, k, gate="softmax", covariance="full", weighted=True, features=None, seed=0):
    g = torch.Generator().manual_seed(seed + 7 * n + d + k)
    x = torch.randn(n, d, dtype=D, generator=g)
    sign = torch.where(torch.rand(n, generator=g, dtype=D) < 0.5, 1.0, -1.0)
    y = (x.sum(1) if d else torch.zeros(n, dtype=D)) * sign + 0.3 * torch.randn(n, generator=g, dtype=D)
    w = torch.rand(n, generator=g, dtype=D) + 0.5 if weighted else None
    gf, ef = (None, None) if features is None else features
    dg, de = (d if gf is None else len(gf)), (d if ef is None else len(ef))
    gate_module = SoftmaxGate(dg, k) if gate == "softmax" else ConstantGate(k)
    m = MixtureOfExperts(gate_module, LinearGaussianExpert(de, n_experts=k, covariance=covariance),
                         gate_features=gf, expert_features=ef)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_em(m, x, y, w, random_state=0, max_iter=60)
    return m, x, y, w


def _automatic(m, x, y, w, monkeypatch, **kw):
    with monkeypatch.context() as mp:
        mp.setattr(information, "_closed_form_layout", lambda *a: None)
        return information.observed_informations(m, x, y, w, **kw)


@pytest.mark.parametrize(
    "n, d, k, gate, covariance, weighted, features",
    [
        (300, 1, 2, "softmax", "full", False, None),
        (400, 3, 3, "softmax", "full", True, None),
        (300, 0, 2, "softmax", "full", True, None),
        (500, 2, 3, "constant", "full", True, None),
        (500, 2, 3, "softmax", "tied", True, None),
        (300, 1, 1, "softmax", "full", False, None),
        (600, 3, 2, "softmax", "full", True, ([0, 1], [1, 2])),
        (800, 2, 4, "constant", "tied", False, None),
    ],
)
def test_closed_form_information_equals_the_automatic_hessian(n, d, k, gate, covariance, weighted, features,
                                                                monkeypatch):
    m, x, y, w = _fitted(n, d, k, gate, covariance, weighted, features)
    assert supports_closed_form(m)
    assert information._closed_form_layout(m, information._blocks(m)[0]) is not None
    closed = information.observed_informations(m, x, y, w)
    auto = _automatic(m, x, y, w, monkeypatch)
    for method in ("hessian", "sandwich"):
        a, b = closed[method], auto[method]
        torch.testing.assert_close(a.information, b.information, rtol=1e-10, atol=1e-8 * float(b.information.abs().max()))
        torch.testing.assert_close(a.std_error, b.std_error, rtol=1e-8, atol=0, equal_nan=True)
        assert a.log_likelihood == pytest.approx(b.log_likelihood, rel=1e-13, abs=1e-10)
        assert a.n_samples == b.n_samples


def test_closed_form_in_batches_equals_one_batch():
    m, x, y, w = _fitted(900, 2, 3)
    whole = information.observed_informations(m, x, y, w)
    parts = information.observed_informations(m, None, None, None,
                                              batches=[(x[i:i + 250], y[i:i + 250], w[i:i + 250]) for i in range(0, 900, 250)])
    for method in ("hessian", "sandwich"):
        torch.testing.assert_close(parts[method].std_error, whole[method].std_error, rtol=1e-10, atol=0)


def test_closed_form_is_not_used_where_it_does_not_apply():
    m, x, y, w = _fitted(300, 2, 2)
    assert supports_closed_form(m)
    with torch.no_grad():  # a noise scale at its floor: the likelihood is flat in it, as the automatic Hessian sees
        m.experts.log_scale[0] = 0.5 * torch.log(torch.tensor(m.experts.var_floor, dtype=D)) - 1.0
    assert not supports_closed_form(m)
    vector = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, n_outputs=2, n_experts=2))
    offset = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, n_experts=2, offset=True),
                              gate_features=[0, 1], expert_features=[0, 1, 2])
    shared = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, n_experts=2, shared=[0]))
    for other in (vector, offset, shared):
        assert not supports_closed_form(other)
