"""Observed information and standard errors of a fitted (hierarchical) mixture of experts.

The log-likelihood of a softmax-gated mixture does not change when a constant vector is added to
every row of a gate's coefficients (or of a softmax expert's class coefficients): its Hessian in
the model's own parametrisation is singular. Standard errors are therefore computed in an
identifiable parametrisation: each gate is written against its component 0 (the differences
``beta_k - beta_0``, k >= 1, as R's multinomial logit reports them), each softmax expert against
its class 0, and the positive quantities through their logarithms (the noise scale ``sigma``, the
Student-t degrees of freedom) or a Cholesky factor (a full noise covariance). The reported values
(``sigma``, covariance entries) get their errors by the delta method.

Three estimates of the covariance of the estimates:

* ``"hessian"``: the inverse of the observed information, minus the Hessian of the (weighted)
  observed-data log-likelihood, by automatic differentiation (one backward pass per free
  parameter); for the default regression model (a softmax or constant gate over linear-Gaussian
  experts with scalar y) in closed form instead, the same matrix in a few products over the rows
  (:mod:`moekit.inference._gaussian_information`);
* ``"sandwich"``: ``I^-1 B I^-1`` with ``B`` the weighted sum of the per-row score outer products
  (robust to a misspecified expert family; Huber 1967, White 1982); with one expert it is the
  HC0 estimator of a linear regression;
* the bootstrap lives with the estimators, which can refit.

Only families with a likelihood Hessian are supported (linear-Gaussian, Student-t, logistic,
softmax, Poisson, binomial, Gamma, negative-binomial, censored-Gaussian and point-mass experts
under softmax or constant gates, to any depth); neural gates and experts and scikit-learn experts
get a :class:`NoLikelihoodHessianError`.

Model structure (issue 15): offsets and binomial trials are known columns of x, not parameters;
coefficients shared by all experts of a stack (``shared``) and a tied noise variance or covariance
are one parameter each, reported once with block "shared" and no component; a Gamma shape and a
negative-binomial alpha are estimated through their logarithms (delta method); a point-mass expert
has no parameters (its weight is the gate's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from ..experts.censored import CensoredGaussianExpert
from ..experts.gaussian import LinearGaussianExpert
from ..experts.logistic import SoftmaxExpert
from ..experts.newton import NewtonExpert
from ..experts.point_mass import PointMassExpert
from ..experts.student_t import StudentTExpert
from ..gates import ConstantGate, SoftmaxGate
from ..mixture import MixtureOfExperts
from ._gaussian_information import gaussian_information, supports_closed_form

__all__ = ["NoLikelihoodHessianError", "ParameterInfo", "Information", "observed_information", "observed_informations",
           "reported_estimates"]

_METHODS = ("hessian", "sandwich")


class NoLikelihoodHessianError(TypeError):
    """The model has a part (a neural gate or expert, a scikit-learn expert) whose likelihood
    Hessian moekit does not compute; bootstrap standard errors still work."""


@dataclass(frozen=True)
class ParameterInfo:
    """Where one reported parameter lives.

    ``block`` is "gate" or "expert"; ``node`` the tree path of the gate (or of the leaf) as a
    tuple of child indices, ``()`` at the root; ``component`` the gate's row (child index) or
    the expert's index among the leaves (the columns of ``predict_gate``); ``output`` the y
    coordinate or class index (``None`` for a scalar y); ``term`` either an int (0 the
    intercept, j >= 1 the j-th column of the module's input) or a name ("sigma", "df",
    "cov[i,j]").
    """

    block: str
    node: tuple
    component: int
    output: int | None
    term: int | str
    input_columns: tuple | None = None  # the columns of X the module sees (None: all of them)


@dataclass
class Information:
    """Estimates, their covariance and standard errors, in the reported parametrisation.

    Shapes
    ------
    estimate, std_error : (P,); covariance : (P, P); information : (F, F) over the F = P free
    parameters (the identifiable parametrisation).
    """

    parameters: list
    estimate: torch.Tensor
    covariance: torch.Tensor
    std_error: torch.Tensor
    information: torch.Tensor
    method: str
    log_likelihood: float
    n_samples: float
    warnings: list = field(default_factory=list)
    worst: int | None = None  # with warnings: the parameter most involved in the information's weakest direction
    condition: str | None = None  # with warnings: "singular (...)" or "ill-conditioned (condition number ...)"


@dataclass
class _Block:
    name: str  # the parameter's name in model.named_parameters()
    size: int  # number of free values
    to_full: Callable  # free (size,) -> the parameter's full tensor
    report: Callable  # free (size,) -> reported values (size,)
    infos: list  # ParameterInfo per free value
    free: torch.Tensor  # current free values


def _gate_blocks(gate, prefix: str, node: tuple, cols, strict: bool = True) -> list:
    if isinstance(gate, SoftmaxGate):
        coef = gate.coef.detach()
        k, p = coef.shape
        free = (coef[1:] - coef[:1]).reshape(-1)

        def to_full(f, p=p):
            return torch.cat([f.new_zeros(1, p), f.reshape(-1, p)], dim=0)

        infos = [ParameterInfo("gate", node, c, None, j, cols) for c in range(1, k) for j in range(p)]
        return [_Block(prefix + "gate.coef", free.numel(), to_full, lambda f: f, infos, free)]
    if isinstance(gate, ConstantGate):
        lg = gate.logits.detach()
        free = lg[1:] - lg[0]
        infos = [ParameterInfo("gate", node, c, None, 0, cols) for c in range(1, lg.shape[0])]
        return [_Block(prefix + "gate.logits", free.numel(), lambda f: torch.cat([f.new_zeros(1), f]),
                       lambda f: f, infos, free)]
    if not strict:
        return []
    raise NoLikelihoodHessianError(
        f"standard errors need a softmax or constant gate; the gate at node {node} is a {type(gate).__name__} "
        "(a neural gate has no identifiable likelihood Hessian); use se='bootstrap'")


def _identity(f):
    return f


def _leaf(node: tuple, c: int, stacked: bool) -> tuple:
    """The tree path of expert c of a module: ``node + (c,)`` for stacked experts (``node`` is their
    parent's), ``node`` itself for a single expert (the caller gave its path)."""
    return node + (c,) if stacked else node


def _expert_blocks(e, prefix: str, node: tuple, first: int, cols, stacked: bool, strict: bool = True) -> list:
    """Blocks of one expert module holding experts ``first, first + 1, ...``."""
    if isinstance(e, PointMassExpert):
        return []  # y equal to a constant: nothing estimated (its weight is the gate's)
    if isinstance(e, (LinearGaussianExpert, StudentTExpert)):
        coef = e.coef.detach()
        k, _, d = coef.shape
        scalar = e.n_outputs is None
        blocks = [_coef_block(e, prefix, node, first, cols, stacked, None if scalar else list(range(d)))]
        raw = getattr(e, "scale_tril_raw", None)
        if isinstance(e, LinearGaussianExpert) and isinstance(raw, torch.Tensor):
            blocks.append(_cov_block(e, raw.detach(), k, d, prefix, node, first, cols, stacked))
        else:
            blocks.append(_positive_block(e, "log_scale", "sigma", prefix, node, first, cols, stacked,
                                          outputs=not scalar))
        if isinstance(e, StudentTExpert) and not e.fixed_df:
            blocks.append(_positive_block(e, "log_df", "df", prefix, node, first, cols, stacked))
        return blocks
    if isinstance(e, SoftmaxExpert):
        coef = e.coef.detach()  # (k, C, p)
        k, c_, p = coef.shape
        diff = coef[:, 1:] - coef[:, :1]  # (k, C-1, p): against class 0
        tied = sorted({1 + int(j) for j in (getattr(e, "shared", None) or ())}) if k > 1 else []
        own = [j for j in range(p) if j not in tied]
        own_i = torch.as_tensor(own, dtype=torch.long, device=coef.device)
        tied_i = torch.as_tensor(tied, dtype=torch.long, device=coef.device)
        free = torch.cat([diff[:, :, own_i].reshape(-1), diff[0][:, tied_i].reshape(-1)])
        n_own = k * (c_ - 1) * len(own)

        def to_full(f, k=k, c_=c_, p=p, own_i=own_i, tied_i=tied_i, n_own=n_own):
            d = f.new_zeros(k, c_ - 1, p)
            d = d.index_copy(2, own_i, f[:n_own].reshape(k, c_ - 1, len(own_i)))
            if len(tied_i):  # a shared feature: one coefficient per free class, the same in every expert
                d = d.index_copy(2, tied_i, f[n_own:].reshape(1, c_ - 1, len(tied_i)).expand(k, -1, -1))
            return torch.cat([d.new_zeros(k, 1, p), d], dim=1)

        infos = [ParameterInfo("expert", _leaf(node, c, stacked), first + c, o, j, cols)
                 for c in range(k) for o in range(1, c_) for j in own]
        infos += [ParameterInfo("shared", node, None, o, j, cols) for o in range(1, c_) for j in tied]
        return [_Block(prefix + "coef", free.numel(), to_full, _identity, infos, free)]
    if isinstance(e, (NewtonExpert, CensoredGaussianExpert)):
        # GLM experts (logistic, Poisson, binomial, Gamma, negative binomial) and censored Gaussians: coef (k, p),
        # then their positive parameters (a Gamma shape, a negative-binomial alpha, a censored Gaussian's sigma)
        blocks = [_coef_block(e, prefix, node, first, cols, stacked, None)]
        for name, term in _POSITIVE:
            if isinstance(getattr(e, name, None), nn.Parameter):
                blocks.append(_positive_block(e, name, term, prefix, node, first, cols, stacked))
        return blocks
    if not strict:
        return []
    raise NoLikelihoodHessianError(
        f"standard errors need experts with a likelihood Hessian (linear-Gaussian, Student-t, logistic, softmax, "
        f"Poisson, binomial, Gamma, negative-binomial, censored Gaussian, point mass); expert {first} at node {node} "
        f"is a {type(e).__name__}; use se='bootstrap'")


#: Positive parameters of GLM-type experts, kept as logarithms: (attribute, reported term); errors by the delta method.
_POSITIVE = (("log_shape", "shape"), ("log_alpha", "alpha"), ("log_dispersion", "dispersion"),
             ("log_scale", "sigma"))


def _tied(e, k: int, param: torch.Tensor) -> bool:
    """Whether a noise parameter is one for all experts of the stack: stored once (leading axis 1 for K > 1), or
    K copies kept equal (``covariance="tied*"``)."""
    cov = getattr(e, "covariance", None)
    return (isinstance(cov, str) and cov.startswith("tied")) or (k > 1 and param.shape[0] == 1)


def _coef_block(e, prefix, node, first, cols, stacked, outputs) -> _Block:
    """The coefficients ``coef`` (k, p) or (k, p, d): one free value per expert and term (and output), except the
    rows of shared features (``e.shared``), one value per term (and output) for the whole stack (block "shared").

    ``outputs``: the output index of the last axis (vector y), or None (scalar y: the output is not named).
    """
    coef = e.coef.detach()
    k, p = coef.shape[:2]
    rest = tuple(coef.shape[2:])
    m = int(math.prod(rest))
    tied = sorted({1 + int(j) for j in (getattr(e, "shared", None) or ())})
    own = [j for j in range(p) if j not in tied]
    outs = [None] * m if outputs is None or m != len(outputs) else list(outputs)
    infos = [ParameterInfo("expert", _leaf(node, c, stacked), first + c, outs[o], j, cols)
             for c in range(k) for j in own for o in range(m)]
    infos += [ParameterInfo("shared", node, None, outs[o], j, cols) for j in tied for o in range(m)]
    if not tied:
        return _Block(prefix + "coef", coef.numel(), lambda f, s=coef.shape: f.reshape(s), _identity, infos,
                      coef.reshape(-1))
    own_i = torch.as_tensor(own, dtype=torch.long, device=coef.device)
    tied_i = torch.as_tensor(tied, dtype=torch.long, device=coef.device)
    free = torch.cat([coef[:, own_i].reshape(-1), coef[0, tied_i].reshape(-1)])
    n_own = k * len(own) * m

    def to_full(f, k=k, p=p, rest=rest, own_i=own_i, tied_i=tied_i, n_own=n_own):
        full = f.new_zeros(k, p, *rest)
        full[:, own_i] = f[:n_own].reshape(k, len(own_i), *rest)
        full[:, tied_i] = f[n_own:].reshape(1, len(tied_i), *rest).expand(k, len(tied_i), *rest)
        return full

    return _Block(prefix + "coef", free.numel(), to_full, _identity, infos, free)


def _positive_block(e, name, term, prefix, node, first, cols, stacked, outputs: bool = False) -> _Block:
    """A positive parameter kept as its logarithm, ``name`` (k,) or (k, m), reported as ``exp`` (term ``term``);
    tied across the stack (one value, block "shared") where :func:`_tied` says so."""
    raw = getattr(e, name).detach()
    shape = tuple(raw.shape)
    k = shape[0] if raw.dim() else 1
    m = int(math.prod(shape[1:]))
    out = (lambda o: o) if outputs and m > 1 else (lambda o: None)
    if raw.dim() and _tied(e, k, raw):
        infos = [ParameterInfo("shared", node, None, out(o), term, cols) for o in range(m)]

        def to_full(f, shape=shape):
            return f.reshape(1, *shape[1:]).expand(*shape)

        return _Block(prefix + name, m, to_full, torch.exp, infos, raw.reshape(shape[0], -1)[0])
    infos = [ParameterInfo("expert", _leaf(node, c, stacked), first + c, out(o), term, cols)
             for c in range(k) for o in range(m)]
    return _Block(prefix + name, raw.numel(), lambda f, s=shape: f.reshape(s), torch.exp, infos, raw.reshape(-1))


def _cov_block(e, raw, k, d, prefix, node, first, cols, stacked) -> _Block:
    """A full noise covariance through its Cholesky factor (log diagonal), reported as its entries ``cov[i,j]``;
    one for the whole stack (block "shared") when tied."""
    rows, cols_ = torch.tril_indices(d, d, device=raw.device)
    tied = _tied(e, raw.shape[0], raw)
    kk = 1 if tied else raw.shape[0]

    def tril_full(f, kk=kk, d=d, rows=rows, cols_=cols_, n=raw.shape[0]):
        out = f.new_zeros(kk, d, d)
        out[:, rows, cols_] = f.reshape(kk, -1)
        return out.expand(n, d, d) if kk != n else out

    def cov_entries(f, kk=kk, d=d, rows=rows, cols_=cols_):
        r = f.new_zeros(kk, d, d)
        r[:, rows, cols_] = f.reshape(kk, -1)
        l = torch.tril(r, -1) + torch.diag_embed(r.diagonal(dim1=-2, dim2=-1).exp())
        return (l @ l.transpose(-1, -2))[:, rows, cols_].reshape(-1)

    if tied:
        infos = [ParameterInfo("shared", node, None, None, f"cov[{int(i)},{int(j)}]", cols) for i, j in zip(rows, cols_)]
    else:
        infos = [ParameterInfo("expert", _leaf(node, c, stacked), first + c, None, f"cov[{int(i)},{int(j)}]", cols)
                 for c in range(kk) for i, j in zip(rows, cols_)]
    return _Block(prefix + "scale_tril_raw", len(infos), tril_full, cov_entries, infos,
                  raw[:kk][:, rows, cols_].reshape(-1))


def _compose(cols, sub):
    if sub is None:
        return cols
    if cols is None:
        return tuple(sub)
    return tuple(cols[i] for i in sub)


def _blocks(model: MixtureOfExperts, prefix: str = "", node: tuple = (), cols=None, first: int = 0,
            strict: bool = True):
    """Every free block of the tree, and the number of leaves below this node (``strict=False``: neural and
    scikit-learn parts, which have no named coefficients, are left out instead of refused)."""
    if not isinstance(model, MixtureOfExperts):
        raise NoLikelihoodHessianError(
            f"standard errors are computed for mixtures of experts (MoE, HME); got a {type(model).__name__}; "
            "use se='bootstrap'")
    blocks = _gate_blocks(model.gate, prefix, node, _compose(cols, model.gate_features), strict)
    ecols = _compose(cols, model.expert_features)
    if model.is_stacked:
        blocks += _expert_blocks(model.experts, prefix + "experts.", node, first, ecols, True, strict)
        return blocks, model.n_experts
    n_leaves = 0
    for k, e in enumerate(model.experts):
        if isinstance(e, MixtureOfExperts):
            sub, n = _blocks(e, f"{prefix}experts.{k}.", node + (k,), ecols, first + n_leaves, strict)
            blocks += sub
            n_leaves += n
        else:
            blocks += _expert_blocks(e, f"{prefix}experts.{k}.", node + (k,), first + n_leaves, ecols, False, strict)
            n_leaves += 1
    return blocks, n_leaves


def reported_estimates(model: MixtureOfExperts, strict: bool = True) -> tuple:
    """The reported parameters and their values, without the information: ``(list of ParameterInfo, (P,) array)``.

    Gate rows against component 0, ``sigma`` and covariance entries, as :func:`observed_information`
    reports them; with ``strict=False`` neural and scikit-learn parts (no named coefficients) are left
    out instead of refused (what a bootstrap of a partly neural model can report).
    """
    blocks, _ = _blocks(model, strict=strict)
    with torch.no_grad():
        est = torch.cat([b.report(b.free) for b in blocks])
    return [i for b in blocks for i in b.infos], est.cpu().numpy().astype("float64")


class _LogProb(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x, y):
        return self.m.log_prob(x, y)


def _split(phi, blocks):
    out, i = [], 0
    for b in blocks:
        out.append(phi[i:i + b.size])
        i += b.size
    return out


def observed_information(model: MixtureOfExperts, x: torch.Tensor, y: torch.Tensor, weight=None, *,
                         method: str = "hessian", cond_limit: float = 1e12) -> Information:
    """Standard errors of a fitted mixture of experts from its observed information.

    Parameters
    ----------
    model : MixtureOfExperts
        A fitted model (flat or a tree); it is not modified.
    x, y : torch.Tensor
        The data it was fitted on, in the model's dtype.
    weight : torch.Tensor, optional
        Row weights (frequency weights: an integer weight equals repeated rows).
    method : {"hessian", "sandwich"}
        The observed information's inverse, or the sandwich ``I^-1 B I^-1``.
    cond_limit : float
        Condition number of the information above which it is reported as ill-conditioned.

    Returns
    -------
    Information
        One :class:`ParameterInfo` per reported parameter, with estimates, covariance and
        standard errors. Gate rows are against component 0; ``sigma`` and covariance entries by
        the delta method.

    Raises
    ------
    NoLikelihoodHessianError
        For neural gates or experts and scikit-learn experts.

    Shapes
    ------
    x : (n, d_x); y : (n,) or (n, d_y); weight : (n,).

    Examples
    --------
    >>> import torch
    >>> from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(300, 1, dtype=torch.float64, generator=g)
    >>> right = torch.rand(300, dtype=torch.float64, generator=g) < torch.sigmoid(2 * x[:, 0])  # a soft gate
    >>> y = torch.where(right, 2 * x[:, 0], -x[:, 0]) + 0.1 * torch.randn(300, dtype=torch.float64, generator=g)
    >>> m = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2))
    >>> _ = fit_em(m, x, y, random_state=0)
    >>> info = observed_information(m, x, y)
    >>> len(info.parameters), bool((info.std_error > 0).all()), info.warnings
    (8, True, [])
    """
    return observed_informations(model, x, y, weight, methods=(method,), cond_limit=cond_limit)[method]


def observed_informations(model: MixtureOfExperts, x: torch.Tensor, y: torch.Tensor, weight=None, *,
                          methods=_METHODS, cond_limit: float = 1e12, batches=None, reduce=None) -> dict:
    """:func:`observed_information` for several methods from one Hessian: ``{method: Information}``.

    The Hessian (one backward pass per free parameter), its eigen-decomposition and the delta
    method's Jacobian are shared; the sandwich adds the per-row scores.

    ``batches``: an iterable of ``(x, y, weight)`` triples used instead of ``x, y, weight`` (which
    are then None): the information and the sandwich's middle term are sums over rows, summed
    batch by batch in one pass, so data read from files in batches give the numbers of the whole
    data set (up to the order of the sums).  ``reduce``: a
    sum across the ranks of a distributed fit (each rank's ``batches`` its own
    rows), applied to the Hessian, the sandwich's middle term, the
    log-likelihood and the weight before they are inverted.

    Shapes
    ------
    x : (n, d_x); y : (n,) or (n, d_y); weight : (n,).
    """
    methods = tuple(methods)
    bad = [m for m in methods if m not in _METHODS]
    if bad or not methods:
        raise ValueError(f"method must be one of {_METHODS}, got {bad[0] if bad else methods!r}")
    blocks, _ = _blocks(model)
    names = {n for n, _ in model.named_parameters()}
    missing = [b.name for b in blocks if b.name not in names]
    if missing:  # e.g. a fixed Student-t df is a buffer: it is not estimated
        raise NoLikelihoodHessianError(f"parameters {missing} are not parameters of the model")
    dtype = next(model.parameters()).dtype
    wrapper = _LogProb(model)
    fixed = {f"m.{n}": p.detach() for n, p in model.named_parameters()}
    phi0 = torch.cat([b.free for b in blocks]).to(dtype).detach()

    def report(phi):
        return torch.cat([b.report(f) for b, f in zip(blocks, _split(phi, blocks))])

    def autodiff(xb, yb, w):
        """``(hessian, meat or None, loglik)`` of one batch by automatic differentiation (the meat for a sandwich)."""
        def rows(phi):
            params = dict(fixed)
            for b, f in zip(blocks, _split(phi, blocks)):
                params[f"m.{b.name}"] = b.to_full(f)
            return functional_call(wrapper, params, (xb, yb))

        def total(phi):
            return (w * rows(phi)).sum()

        with torch.enable_grad():
            h = torch.autograd.functional.hessian(total, phi0)
            ll = total(phi0)
        if "sandwich" not in methods:
            return h, None, ll
        scores = _row_scores(rows, phi0)  # (n, F)
        return h, scores.T @ (w[:, None] * scores), ll

    hess = meat = None
    loglik = n_samples = 0.0
    closed = _closed_form_layout(model, blocks)
    for xb, yb, wb in ([(x, y, weight)] if batches is None else batches):
        w = torch.ones(xb.shape[0], dtype=dtype, device=xb.device) if wb is None else wb.to(dtype)
        if closed is not None:  # the default regression model: the same Hessian in closed form, a few products
            h, m, ll = gaussian_information(model, xb, yb, w, tied=closed)
        else:
            h, m, ll = autodiff(xb, yb, w)
        hess = h if hess is None else hess + h
        if m is not None:
            meat = m if meat is None else meat + m
        loglik += float(ll)
        n_samples += float(w.sum())
    if reduce is not None:  # the sums of every rank's rows (a rank may hold none)
        n_free = phi0.numel()
        if hess is None:
            hess = phi0.new_zeros(n_free, n_free)
        hess = reduce(hess)
        if "sandwich" in methods:
            meat = reduce(phi0.new_zeros(n_free, n_free) if meat is None else meat)
        loglik = float(reduce(torch.tensor(loglik, dtype=torch.float64)))
        n_samples = float(reduce(torch.tensor(n_samples, dtype=torch.float64)))
    if hess is None:
        raise ValueError("batches yielded no rows: the observed information needs the data the model was fitted on")
    with torch.enable_grad():
        jac = torch.autograd.functional.jacobian(report, phi0)
    info_matrix = -0.5 * (hess + hess.T)
    if not bool(torch.isfinite(info_matrix).all()):
        raise NoLikelihoodHessianError(
            "the observed information is not finite (the inputs' scale squared is beyond the dtype's range); "
            "rescale X and refit to get standard errors, or use se='bootstrap'")
    infos = [i for b in blocks for i in b.infos]
    inv, unknown, condition, worst = _spectrum(info_matrix, infos, cond_limit)
    notes = [] if condition is None else [_condition_note(condition, infos[worst])]
    # a reported value that depends on a direction the data do not determine has no standard error
    unknown_out = (jac.abs() @ unknown.to(jac.dtype)) > 0
    estimate = report(phi0).detach()
    out = {}
    for method in methods:
        free_cov = inv
        if method == "sandwich":
            free_cov = inv @ meat @ inv
        cov = jac @ free_cov @ jac.T
        cov[unknown_out, :] = math.nan
        cov[:, unknown_out] = math.nan
        se = cov.diagonal().clamp_min(0).sqrt()
        out[method] = Information(parameters=infos, estimate=estimate, covariance=cov.detach(),
                                  std_error=se.detach(), information=info_matrix.detach(), method=method,
                                  log_likelihood=loglik, n_samples=n_samples, warnings=list(notes),
                                  worst=worst, condition=condition)
    return out


def _closed_form_layout(model, blocks) -> bool | None:
    """For a model :func:`~moekit.inference._gaussian_information.gaussian_information` covers, whether its noise
    scale is one tied free parameter; None where the automatic Hessian is used (another model, or blocks laid out
    otherwise than that function assumes: gate, coefficients, log scales)."""
    if not supports_closed_form(model) or len(blocks) != 3:
        return None
    k, pe = model.n_experts, model.experts.coef.shape[1]
    pg = model.gate.coef.shape[1] if isinstance(model.gate, SoftmaxGate) else 1
    sizes = [b.size for b in blocks]
    if sizes[:2] != [(k - 1) * pg, k * pe] or sizes[2] not in (1, k) or not blocks[2].name.endswith("log_scale"):
        return None
    return sizes[2] == 1 and k > 1


def _equilibrated(info: torch.Tensor):
    """``(D^-1 I D^-1, d)`` with ``d = sqrt(|diag I|)`` (1 where 0): the information in units where every parameter
    has unit curvature, so that conditioning does not depend on the scale of the inputs."""
    d = info.diagonal().abs().sqrt()
    d = torch.where(d > 0, d, torch.ones_like(d))
    return info / d[:, None] / d[None, :], d


def _row_scores(rows, phi0) -> torch.Tensor:
    """Per-row gradients of the log-likelihood, (n, F): one Jacobian-vector product per free parameter
    (by double backward, which every op of the model supports)."""
    phi = phi0.clone().requires_grad_(True)
    with torch.enable_grad():
        r = rows(phi)
        v = torch.zeros_like(r, requires_grad=True)
        (g,) = torch.autograd.grad(r, phi, grad_outputs=v, create_graph=True)
        cols = []
        for j in range(phi.numel()):
            (col,) = torch.autograd.grad(g[j], v, retain_graph=True)
            cols.append(col)
    return torch.stack(cols, dim=1).detach()


def _spectrum(info: torch.Tensor, infos: list, cond_limit: float) -> tuple:
    """One eigen-decomposition of the equilibrated information: ``(inverse, unknown, condition, index)``.

    ``inverse``: the inverse on the directions the data determine; ``unknown``: the free parameters that load
    on a direction they do not (eigenvalue <= 1e-12 of the largest, or negative); ``condition`` says how the
    information is singular or ill-conditioned, and ``index`` is the parameter most involved (both ``None``
    when it is well conditioned).
    """
    if info.numel() == 0:
        return info.clone(), torch.zeros(0, dtype=torch.bool, device=info.device), None, None
    scaled, d = _equilibrated(info)
    evals, evecs = torch.linalg.eigh(scaled)
    ok = evals > 1e-12 * evals.abs().max().clamp_min(torch.finfo(info.dtype).tiny)
    v = evecs[:, ok]
    inv = ((v / evals[ok]) @ v.T) / d[:, None] / d[None, :]
    unknown = (evecs[:, ~ok] ** 2).sum(dim=1) > 1e-8
    top, low = float(evals[-1]), float(evals[0])
    if low > 0 and top / low < cond_limit:
        return inv, unknown, None, None
    condition = "singular (not positive definite)" if low <= 0 else \
        f"ill-conditioned (condition number {top / low:.3g})"
    return inv, unknown, condition, int(evecs[:, 0].abs().argmax())


def _condition_note(condition: str, worst: ParameterInfo) -> str:
    return (f"the observed information is {condition}; the parameter most involved is the {worst.block} "
            f"{'row' if worst.block == 'gate' else 'expert'} {worst.component} term {worst.term!r} at node "
            f"{worst.node}; its standard errors are unreliable (a component with too little data, separated "
            "classes or collinear inputs)")
