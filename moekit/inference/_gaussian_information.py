"""The observed information of a softmax- or constant-gated mixture of linear-Gaussian experts (scalar y), in closed form.

The default regression model, ``MoERegressor``'s, gets its standard errors from the exact Hessian of
the observed-data log-likelihood.  Automatic differentiation forms it with one backward pass per
free parameter over all the rows (about 35 passes at K = 2 and ten inputs); here it is a few matrix
products over the rows, with the same value up to rounding (tested against the automatic one).

For one row write ``a_k = log g_k + log p_k`` (gate and expert k), ``r = softmax(a)`` (the
responsibilities) and ``J_k`` the gradient of ``a_k`` in the free parameters of
:mod:`moekit.inference.information` (gate rows against component 0; each expert's coefficients;
each expert's log noise scale, or one for a tied scale).  Then the row's log-likelihood
``log sum_k exp(a_k)`` has the score ``s = sum_k r_k J_k`` and the Hessian

    ``sum_k r_k J_k J_k^T - s s^T + sum_k r_k d2 a_k``

(Louis 1982: the covariance of the complete-data scores under the responsibilities plus their
expected curvature).  With ``u = [1, x_gate]``, ``v = [1, x_expert]``, ``z_k = (y - mu_k) / sigma_k``
and ``e_k = z_k / sigma_k``:

* ``J_k``: gate row c >= 1: ``(delta_kc - g_c) u`` (``u = 1`` for a constant gate); expert k's
  coefficients ``e_k v``; its log scale ``z_k^2 - 1``; zero for the other experts.
* ``d2 a_k``: gate rows c, d: ``-(g_c delta_cd - g_c g_d) u u^T`` (the same for every k); expert
  k's coefficients ``-v v^T / sigma_k^2``; coefficients and log scale ``-2 e_k v``; log scale
  ``-2 z_k^2``.

The first two terms are one product of the stacked ``J_k`` (rows x experts by parameters) weighted by
``w r``, and of the scores weighted by ``w``, which is also the sandwich's middle term.
"""

from __future__ import annotations

import math

import torch

from .._linalg import add_intercept
from ..experts.gaussian import LinearGaussianExpert
from ..gates import ConstantGate, SoftmaxGate
from ..mixture import MixtureOfExperts

__all__ = ["gaussian_information", "supports_closed_form"]

#: Elements of the (rows, experts, parameters) Jacobian held at once (16 MB of float64).
_CHUNK_ELEMENTS = 1 << 21


def supports_closed_form(model) -> bool:
    """Whether :func:`gaussian_information` applies: a flat mixture with a softmax or constant gate over
    stacked linear-Gaussian experts with scalar y, no offset and no shared coefficients, every noise scale
    above its floor (at the floor the likelihood is flat in it, as the automatic Hessian then sees)."""
    if not isinstance(model, MixtureOfExperts) or not model.is_stacked:
        return False
    gate, ex = model.gate, model.experts
    if type(gate) not in (SoftmaxGate, ConstantGate) or type(ex) is not LinearGaussianExpert:
        return False
    if ex.n_outputs is not None or ex.offset or ex.shared or not hasattr(ex, "log_scale"):
        return False
    return bool((ex._scales().detach() > math.sqrt(ex.var_floor)).all())


@torch.no_grad()
def gaussian_information(model: MixtureOfExperts, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, tied: bool):
    """``(hessian, meat, loglik)`` of one batch: the Hessian (F, F) of ``sum_i w_i log p(y_i | x_i)`` in the free
    parameters, the weighted sum of the rows' score outer products (F, F), and the log-likelihood.

    ``tied``: the experts' noise scale is one free parameter (the information module's parametrisation).

    Shapes
    ------
    x (n, d_x); y (n,); w (n,).
    """
    gate, ex = model.gate, model.experts
    k = model.n_experts
    dtype = ex.coef.dtype
    softmax = isinstance(gate, SoftmaxGate)
    x, y, w = x.to(dtype), y.to(dtype), w.to(dtype)
    u = add_intercept(model.gate_input(x)) if softmax else x.new_ones(x.shape[0], 1)
    v = add_intercept(model.expert_input(x))
    pg, pe = u.shape[1], v.shape[1]
    nt = 1 if tied else k
    n_gate = (k - 1) * pg
    f = n_gate + k * pe + nt
    sigma = ex._scales().detach()[:, 0]  # (K,), above the floor (supports_closed_form)
    beta = ex._coef().detach()[:, :, 0]  # (K, pe)
    gcoef = gate.coef.detach() if softmax else gate.logits.detach()[:, None]
    hess = x.new_zeros(f, f)
    meat = x.new_zeros(f, f)
    loglik = x.new_zeros(())
    rows = max(1, _CHUNK_ELEMENTS // (k * f))
    ig = slice(0, n_gate)
    eye = torch.eye(k, dtype=dtype, device=x.device)[:, 1:]  # delta_kc, c >= 1
    for i in range(0, x.shape[0], rows):
        uc, vc, yc, wc = u[i : i + rows], v[i : i + rows], y[i : i + rows], w[i : i + rows]
        m = uc.shape[0]
        log_g = torch.log_softmax(uc @ gcoef.T, dim=1)  # (m, K)
        g = log_g.exp()
        resid = yc[:, None] - vc @ beta.T  # (m, K)
        z = resid / sigma
        e = z / sigma
        a = log_g - 0.5 * z * z - (sigma.log() + 0.5 * math.log(2 * math.pi))
        lse = torch.logsumexp(a, dim=1, keepdim=True)
        r = (a - lse).exp()  # (m, K)
        loglik += (wc * lse[:, 0]).sum()
        jac = x.new_zeros(m, k, f)  # J_k for every row and expert
        jac[:, :, ig] = ((eye[None] - g[:, None, 1:])[..., None] * uc[:, None, None, :]).reshape(m, k, n_gate)
        for j in range(k):
            jac[:, j, n_gate + j * pe : n_gate + (j + 1) * pe] = e[:, j, None] * vc
        t0 = n_gate + k * pe
        if tied:
            jac[:, :, t0] = z * z - 1.0
        else:
            jac[:, :, t0 : t0 + k] = torch.diag_embed(z * z - 1.0)
        wr = (wc[:, None] * r).reshape(-1)
        flat = jac.reshape(m * k, f)
        hess += flat.T @ (wr[:, None] * flat)
        score = torch.einsum("mk,mkf->mf", r, jac)
        meat += score.T @ (wc[:, None] * score)
        # the expected curvature of the complete data: the gate's multinomial information and each expert's
        if k > 1:
            gt = g[:, 1:]  # (m, K-1)
            cov = torch.diag_embed(gt) - gt[:, :, None] * gt[:, None, :]  # (m, K-1, K-1)
            uw = wc[:, None] * uc
            block = torch.einsum("mcd,mi,mj->cidj", cov, uw, uc).reshape(n_gate, n_gate)
            hess[ig, ig] -= block
        for j in range(k):
            sj = slice(n_gate + j * pe, n_gate + (j + 1) * pe)
            tj = t0 if tied else t0 + j
            wj = wc * r[:, j]
            hess[sj, sj] -= (vc * (wj / sigma[j] ** 2)[:, None]).T @ vc
            cross = -2.0 * ((wj * e[:, j]) @ vc)
            hess[sj, tj] += cross
            hess[tj, sj] += cross
            hess[tj, tj] -= 2.0 * (wj * z[:, j] ** 2).sum()
    return hess - meat, meat, loglik
