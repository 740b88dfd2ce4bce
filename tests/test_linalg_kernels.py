"""The CPU kernels of the E-step and the M-step statistics (issue 12) against their plain definitions."""

from __future__ import annotations

import pytest
import torch

from moekit._linalg import log_softmax_rows, logsumexp_rows, row_sums, weighted_grams
from moekit._validation import all_finite
from moekit.experts.newton import multinomial_newton_stats

D = torch.float64
INF = float("inf")
NAN = float("nan")


@pytest.mark.parametrize("k", [1, 2, 3, 8, 65])
def test_row_reductions_equal_torchs(k):
    g = torch.Generator().manual_seed(k)
    a = torch.randn(300, k, generator=g, dtype=D) * 40
    torch.testing.assert_close(row_sums(a), a.sum(1, keepdim=True), rtol=1e-14, atol=1e-12)
    torch.testing.assert_close(logsumexp_rows(a), torch.logsumexp(a, 1, keepdim=True), rtol=1e-14, atol=1e-13)
    torch.testing.assert_close(log_softmax_rows(a), torch.log_softmax(a, 1), rtol=1e-14, atol=1e-13)


def test_row_reductions_of_infinities_and_nan_are_torchs():
    a = torch.tensor([[0.0, 1.0], [-INF, -INF], [INF, INF], [NAN, 0.0], [1e308, 1e308], [-1e308, -INF]], dtype=D)
    torch.testing.assert_close(logsumexp_rows(a), torch.logsumexp(a, 1, keepdim=True), equal_nan=True)
    # huge logits keep their exact log-softmax (no cancellation against a rounded log-sum-exp)
    torch.testing.assert_close(log_softmax_rows(a[[0, 4, 5]]), torch.log_softmax(a[[0, 4, 5]], 1))


def test_row_reductions_keep_autograd():
    a = torch.randn(50, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: logsumexp_rows(t), (a,))
    assert torch.autograd.gradcheck(lambda t: log_softmax_rows(t), (a,))
    assert torch.autograd.gradcheck(lambda t: row_sums(t), (a,))


@pytest.mark.parametrize("n,p,k", [(500, 11, 2), (500, 11, 8), (500, 3, 4), (0, 5, 1), (7, 2, 3)])
@pytest.mark.parametrize("sign", ["non-negative", "mixed"])
def test_weighted_grams_equal_the_definition(n, p, k, sign):
    """Both paths (one symmetric product per expert for few experts, packed outer products otherwise)."""
    g = torch.Generator().manual_seed(n + p + k)
    xd = torch.randn(n, p, generator=g, dtype=D)
    w = torch.rand(n, k, generator=g, dtype=D)
    if sign == "mixed":
        w = w - 0.5
    want = torch.einsum("nk,ni,nj->kij", w, xd, xd)
    torch.testing.assert_close(weighted_grams(xd, w), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [3, 11])  # the symmetric product for few inputs and many classes, else pair blocks
@pytest.mark.parametrize("b,c", [(1, 2), (1, 4), (3, 3), (2, 5), (1, 9)])
def test_full_information_equals_the_kronecker_sum(b, c, p):
    """sum_i s_i (diag(g_i) - g_i g_i^T) (x) x_i x_i^T over the free classes, for B regressions."""
    g = torch.Generator().manual_seed(b * 10 + c + p)
    n = 60
    xd = torch.randn(n, p, generator=g, dtype=D)
    logp = torch.log_softmax(torch.randn(n, b, c, generator=g, dtype=D), -1)
    counts = torch.rand(n, b, c, generator=g, dtype=D)
    _, _, info = multinomial_newton_stats(xd, logp, counts)
    prob, s, km = logp.exp(), counts.sum(-1), c - 1
    want = torch.zeros(b, km * p, km * p, dtype=D)
    for j in range(b):
        for i in range(n):
            gi = prob[i, j, :km]
            want[j] += s[i, j] * torch.kron(torch.diag(gi) - torch.outer(gi, gi), torch.outer(xd[i], xd[i]))
    torch.testing.assert_close(info, want, rtol=1e-12, atol=1e-12)


def test_all_finite():
    assert all_finite(torch.zeros(0, 3, dtype=D))
    assert all_finite(torch.tensor([[1.0, -1e308]], dtype=D))
    for bad in (NAN, INF, -INF):
        t = torch.ones(4, 3, dtype=D)
        t[2, 1] = bad
        assert not all_finite(t)
