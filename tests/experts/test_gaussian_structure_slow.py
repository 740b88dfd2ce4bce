"""Recovery at n = 20,000 from known parameters: shared coefficients and tied noise covariances (two experts,
softmax gate), fitted by EM."""

import pytest
import torch

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em

D = torch.float64
N = 20_000


def _gated(n, seed):
    """x (n, 2) and the latent expert z in {0, 1} from a softmax gate on x."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=D)
    z = (torch.rand(n, generator=g, dtype=D) < torch.sigmoid(0.3 + 1.5 * x[:, 0] - x[:, 1])).long()
    return g, x, z


def _order(moe):
    """The experts in the order of their intercepts (the labels of a mixture are arbitrary)."""
    return torch.argsort(moe.experts.coef.detach()[:, 0, 0])


@pytest.mark.slow
def test_recovers_shared_coefficients():
    g, x, z = _gated(N, 0)
    own = torch.tensor([[-1.0, -0.5], [2.0, 1.0]], dtype=D)  # per expert: intercept, slope of x1
    shared, sigma = 1.5, torch.tensor([0.3, 0.6], dtype=D)  # slope of x0 common to both
    y = own[z, 0] + shared * x[:, 0] + own[z, 1] * x[:, 1] + sigma[z] * torch.randn(N, generator=g, dtype=D)
    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, n_experts=2, shared=[0]))
    res = fit_em(moe, x, y, random_state=0, n_init=2, max_iter=300)
    o = _order(moe)
    c = moe.experts.coef.detach()[o, :, 0]
    assert torch.equal(c[:, 1], c[:1, 1].expand(2))
    assert abs(float(c[0, 1]) - shared) < 0.02
    torch.testing.assert_close(c[:, [0, 2]], own, atol=0.04, rtol=0)
    torch.testing.assert_close(moe.experts.scale_tril().detach()[o, 0, 0], sigma, atol=0, rtol=0.05)
    assert all(b >= a - 1e-10 * (1 + abs(a)) for a, b in zip(res.history, res.history[1:]))  # EM never decreases


@pytest.mark.slow
def test_recovers_a_tied_variance():
    g, x, z = _gated(N, 1)
    beta = torch.tensor([[-1.0, 1.0, -0.5], [2.0, -1.0, 1.0]], dtype=D)  # per expert: intercept, two slopes
    y = (beta[z, 0] + (beta[z, 1:] * x).sum(1)) + 0.5 * torch.randn(N, generator=g, dtype=D)
    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, covariance="tied", n_experts=2))
    fit_em(moe, x, y, random_state=0, n_init=2, max_iter=300)
    o = _order(moe)
    torch.testing.assert_close(moe.experts.coef.detach()[o, :, 0], beta, atol=0.04, rtol=0)
    s = moe.experts.scale_tril().detach()[:, 0, 0]
    assert float(s[0]) == float(s[1])
    assert abs(float(s[0]) - 0.5) < 0.01


@pytest.mark.slow
def test_recovers_a_tied_full_covariance_of_a_vector_target():
    g, x, z = _gated(N, 2)
    beta = torch.tensor([[[-1.0, 0.5], [1.0, 0.0]], [[2.0, -1.0], [-1.0, 1.0]]], dtype=D)  # (K, 1 + slope of x0, d)
    cov = torch.tensor([[0.4, 0.15], [0.15, 0.3]], dtype=D)
    noise = torch.randn(N, 2, generator=g, dtype=D) @ torch.linalg.cholesky(cov).T
    y = beta[z, 0] + beta[z, 1] * x[:, :1] + noise
    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(1, 2, "tied", n_experts=2),
                           gate_features=[0, 1], expert_features=[0])
    fit_em(moe, x, y, random_state=0, n_init=2, max_iter=300)
    o = _order(moe)
    torch.testing.assert_close(moe.experts.coef.detach()[o], beta, atol=0.04, rtol=0)
    got = moe.experts.covariance_matrix().detach()
    assert torch.equal(got[0], got[1])
    torch.testing.assert_close(got[0], cov, atol=0.02, rtol=0)
