"""Online (stepwise) EM for data seen once: Cappé & Moulines (2009).

Batch EM sums every component's statistics over all the rows, then takes the
M-step.  Online EM sees one batch at a time and keeps, for every gate and
expert, a *running average* of its statistics per unit weight:

    s  <-  (1 - gamma_t) s  +  gamma_t s_batch / (total weight of the batch),
    gamma_t = (t + 2) ** -alpha,   t = 0, 1, 2, ... (0: the first update after the start)

then takes the M-step from ``s`` (rescaled by the running average of the
batches' weights, so that a ridge penalty weighs against one batch's worth of
data, and ``gamma = 1`` is exactly one batch EM step on that batch).  With
``0.5 < alpha <= 1`` the steps satisfy ``sum gamma_t = inf`` and
``sum gamma_t^2 < inf``, Cappé & Moulines' conditions for convergence to a
stationary point of the population likelihood.

Components of three kinds:

* **Expected complete-data statistics** (linear-Gaussian least squares, the
  constant gate, point masses, Student-t's ECM statistics, censored
  Gaussian's expected latents): the running averages are the statistics of
  stepwise EM, and the component's own M-step (exact, or one ECM cycle) is
  taken from them.
* **Newton statistics** (the softmax gate, GLM experts: logistic, softmax,
  Poisson, binomial, gamma, negative binomial), whose gradient ``g_b`` and
  information ``H_b`` were computed at the parameters ``theta_b`` of their
  batch.  Averaging the gradients themselves would keep pushing with stale
  gradients after a step has used them; the running averages are instead
  those of the local quadratic models, i.e. of ``H_b`` and of
  ``u_b = g_b + H_b theta_b`` (the IRLS normal equations, ``X^T W z``), and
  the step goes to the maximiser of the averaged model,
  ``theta = H_bar^-1 u_bar`` (ridge penalty included): one stochastic Newton
  (IRLS) step from running averages of gradient and curvature.  With
  ``gamma = 1`` it is the ordinary Newton step from the batch's statistics.
  It is guarded, since no pass over the data can check it (batch EM halves a
  step that lowers the objective; online EM has only the batch): a step that
  would move the component's linear predictors (the gate's logits against
  the reference expert, an expert's linear predictor) by more than
  ``max_step`` in root mean square over the batch's rows (weighted as the
  component sees them) is shortened to that length, and a non-finite one is
  not taken (a singular averaged curvature is solved with
  :func:`~moekit._linalg.solve_spd`'s jitter, and the cap bounds the
  result).  The curvature's own metric cannot bound the step: where a gate
  or a logistic expert is saturated (separable data) the curvature vanishes
  and the averaged model's maximiser can lie anywhere, flipping the gate;
  the change of the linear predictors is what the predictions feel.  The
  price: a saturated start (a first batch that separates perfectly, or
  lacks a class) moves at most ``max_step`` per update towards the rows it
  mispredicts.  The other statistics of such an expert (gamma's shape,
  negative binomial's dispersion, whose Newton step is averaged in the same
  way and capped by the family) are averaged as they are.
* **No statistics** (neural gates and experts, scikit-learn experts): refused
  with a ``TypeError``; they are trained on their data, not from statistics.

Nested mixtures (hierarchical MoE) follow from the nested statistics: every
gate at every depth and every leaf is a component with a path of its own
(:meth:`moekit.MixtureOfExperts.components`).  Online EM never prunes.
"""

from __future__ import annotations

import math

import torch

from .._linalg import add_intercept
from .._mstep import has_stats
from .._validation import DivergenceError
from ..experts.newton import NewtonExpert
from ..gates import SoftmaxGate
from ..mixture import MixtureOfExperts
from ..stats import SuffStats
from .inputs import check_model_inputs

__all__ = ["OnlineEM", "check_online_model", "step_size"]


def step_size(t: int, alpha: float = 0.6) -> float:
    """The weight ``gamma_t = (t + 2) ** -alpha`` of the ``t``-th update's batch (``t = 0`` first).

    Examples
    --------
    >>> round(step_size(0), 4), round(step_size(398), 4)
    (0.6598, 0.0275)
    """
    return float((t + 2) ** -float(alpha))


def check_online_model(model) -> None:
    """TypeError unless ``model`` is a :class:`~moekit.MixtureOfExperts` whose gates and experts all have statistics.

    Examples
    --------
    >>> from moekit import MixtureOfExperts, SoftmaxGate, LinearGaussianExpert, MLPExpert
    >>> check_online_model(MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2)))
    >>> try:
    ...     check_online_model(MixtureOfExperts(SoftmaxGate(1, 2), MLPExpert(1, n_experts=2)))
    ... except TypeError as e:
    ...     print(str(e)[:60])
    online EM needs sufficient statistics, but MLPExpert at expe
    """
    if not isinstance(model, MixtureOfExperts):
        raise TypeError(f"model must be a MixtureOfExperts (a gate over experts), got {type(model).__name__}")
    for path, comp in model.components():
        if not has_stats(comp):
            raise TypeError(
                f"online EM needs sufficient statistics, but {type(comp).__name__} at {'/'.join(path)} has none "
                "(neural and scikit-learn components are trained on their data, not from statistics): fit such a "
                "model on all the data with fit (fit_method='em', or fit_method='gradient' for minibatch training), "
                "or use a softmax/constant gate and experts with statistics (linear, poisson, logistic, ...)"
            )


# ------------------------------------------------------- Newton components
class _Pair:
    """One Newton block of a component's statistics: the keys of its gradient and curvature, and how to read them.

    ``free(comp)``: the free parameters now; ``hv(comp, info, v)``: the
    curvature ``H`` (positive semi-definite, from the ``info`` statistic)
    times ``v``.  Only the main pair (``"grad"``/``"info"``) is capped here;
    ``set_free`` and ``eta_change`` (the RMS change of its linear predictors
    over the batch's rows, per block (B,): the gate's one, or one per
    expert, for a change ``delta`` of the free parameters) are given for it.
    """

    def __init__(self, grad, info, free, hv, set_free=None, eta_change=None):
        self.grad, self.info, self.free, self.hv = grad, info, free, hv
        self.set_free, self.eta_change = set_free, eta_change


def _gate_free(g: SoftmaxGate) -> torch.Tensor:
    coef = g.coef.detach()
    return coef[:-1] - coef[-1:]  # (K-1, p): the rows against the reference row


def _gate_set_free(g: SoftmaxGate, free: torch.Tensor) -> None:
    g.coef.data[:-1] = free
    g.coef.data[-1] = 0.0


def _gate_hv(g: SoftmaxGate, info: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    h = g._information(info)
    if h.dim() == 3:  # "block": (K-1, p, p) times (K-1, p)
        return (h @ v[..., None])[..., 0]
    return (h @ v.reshape(-1)).reshape(v.shape)


def _rms(change: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted RMS over rows of each row's largest change: ``change`` (n, B, C), ``weight`` (n, B) -> (B,)."""
    top = change.abs().amax(-1)  # (n, B)
    sw = weight.sum(0)
    ms = (weight * top * top).sum(0) / sw.clamp_min(torch.finfo(sw.dtype).tiny)
    return torch.where(sw > 0, ms, torch.zeros_like(ms)).sqrt()


def _gate_eta_change(g: SoftmaxGate, args: tuple, delta: torch.Tensor) -> torch.Tensor:
    """The gate's logits (against the reference expert) move by ``x delta``: their RMS over the batch's rows, (1,)."""
    x, targets = args[0], args[1]
    xd = add_intercept(x.to(delta.dtype))
    return _rms((xd @ delta.T)[:, None, :], targets.to(delta.dtype).sum(1, keepdim=True))


def _glm_eta_change(e: NewtonExpert, args: tuple, delta: torch.Tensor) -> torch.Tensor:
    """Each expert's linear predictors move by ``x delta_k``: their RMS over its weighted rows, (K,)."""
    x, y, weight = args
    xx = e._prepare_x(x)
    xd = e._design(xx)[0]
    w = e._weight_nk(weight, xx.shape[0], xx).to(delta.dtype)
    d = delta.reshape(delta.shape[0], -1, xd.shape[1])  # (K, C', p): C' = 1, or the free classes of a softmax expert
    return _rms(torch.einsum("np,kcp->nkc", xd, d), w)


def _glm_free(e: NewtonExpert) -> torch.Tensor:
    coef = e.coef.detach().clone()
    e._normalise(coef)
    return e._free(coef)  # (K, m)


def _glm_set_free(e: NewtonExpert, free: torch.Tensor) -> None:
    e._set_free(e.coef.data, free)


def _glm_hv(e: NewtonExpert, info: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (info @ v[..., None])[..., 0]


def _pairs(comp, stats: SuffStats) -> list[_Pair]:
    """The Newton blocks of ``comp``'s statistics (empty for expected complete-data statistics)."""
    if isinstance(comp, SoftmaxGate):
        return [_Pair("grad", "info", _gate_free, _gate_hv, _gate_set_free, _gate_eta_change)]
    if isinstance(comp, NewtonExpert):
        out = [_Pair("grad", "info", _glm_free, _glm_hv, _glm_set_free, _glm_eta_change)]
        if "alpha_grad" in stats:  # negative binomial: log alpha's own Newton step, "alpha_hess" is its 2nd derivative
            out.append(_Pair("alpha_grad", "alpha_hess", lambda c: c.log_alpha.detach(), lambda c, h, v: -h * v))
        return out
    if "grad" in stats or "info" in stats:
        raise TypeError(
            f"{type(comp).__name__} has Newton statistics (grad, info) that online EM does not know how to average "
            "(it knows the softmax gate and the GLM experts); fit this model on all the data with fit_em"
        )
    return []


# ----------------------------------------------------------------- driver
class OnlineEM:
    """Stepwise online EM of a :class:`~moekit.MixtureOfExperts` (Cappé & Moulines 2009), batch by batch.

    The model is updated in place.  :meth:`initialise` sets the running
    averages from one batch at the current parameters (no parameter
    changes: typically the batch the model was started on); each
    :meth:`step` is an E-step on a new batch, the running-average update
    ``s <- (1 - gamma_t) s + gamma_t s_batch`` (per unit weight, ``gamma_t =
    (t + 2) ** -alpha``) and an M-step from the averages.  How each kind of
    component is updated, and how the Newton steps are guarded, is in the
    module's docstring (:mod:`moekit.training.online`).

    Parameters
    ----------
    model : MixtureOfExperts
        Flat or nested; every gate and expert must have statistics (a
        ``TypeError`` otherwise, see :func:`check_online_model`).
    alpha : float, default=0.6
        The decay exponent of the step sizes, in (0.5, 1].
    max_step : float, default=1.0
        Cap of a Newton step (softmax gate, GLM experts): the root mean
        square, over the batch's rows, of the change of the linear
        predictors (logits, log means) it makes; a longer step is shortened.

    Attributes
    ----------
    n_updates : int
        ``t``: the updates taken since the start (the next one uses
        ``gamma_t``).
    mean_weight : float
        Running average of the batches' total weights.

    Shapes
    ------
    Each batch: x (b, d_x); y (b,) or (b, d_y); weight (b,).

    Examples
    --------
    >>> import torch
    >>> from moekit import MixtureOfExperts, SoftmaxGate, LinearGaussianExpert, fit_em
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(8000, 1, generator=g, dtype=torch.float64)
    >>> left = torch.rand(8000, generator=g, dtype=torch.float64) < torch.sigmoid(8 * (0.5 - x[:, 0]))
    >>> y = torch.where(left, 2 * x[:, 0], 1 - x[:, 0]) + 0.1 * torch.randn(8000, generator=g, dtype=torch.float64)
    >>> def moe():
    ...     return MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2))
    >>> online_moe = moe()
    >>> _ = fit_em(online_moe, x[:1000], y[:1000], random_state=0)  # a start on the first batch
    >>> online = OnlineEM(online_moe)
    >>> _ = online.initialise(x[:1000], y[:1000])
    >>> for i in range(1000, 8000, 1000):
    ...     _ = online.step(x[i : i + 1000], y[i : i + 1000])
    >>> batch_moe = moe()
    >>> _ = fit_em(batch_moe, x, y, random_state=0)  # batch EM on every row
    >>> with torch.no_grad():
    ...     gap = float(batch_moe.log_prob(x, y).mean() - online_moe.log_prob(x, y).mean())
    >>> online.n_updates, abs(gap) < 1e-3
    (7, True)
    """

    def __init__(self, model, alpha: float = 0.6, *, max_step: float = 1.0):
        check_online_model(model)
        if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0.5 < float(alpha) <= 1.0):
            raise ValueError(f"alpha must be a number in (0.5, 1] (step sizes (t + 2) ** -alpha), got {alpha!r}")
        if isinstance(max_step, bool) or not (isinstance(max_step, (int, float)) and float(max_step) > 0
                                              and math.isfinite(float(max_step))):
            raise ValueError(f"max_step must be a finite number > 0, got {max_step!r}")
        self.model = model
        self.alpha = float(alpha)
        self.max_step = float(max_step)
        self.n_updates = 0
        self.mean_weight = 0.0
        self._avg: dict | None = None  # path -> running average per unit weight (Newton gradients as u = g + H theta)
        self._data: dict = {}  # path -> the last batch's weighted data of each component

    @property
    def initialised(self) -> bool:
        """Whether the running averages hold statistics (after :meth:`initialise` or a first :meth:`step`)."""
        return self._avg is not None

    def step_size(self) -> float:
        """``gamma_t`` of the next update."""
        return step_size(self.n_updates, self.alpha)

    # ------------------------------------------------------------- E-step
    def _batch(self, x, y, weight):
        """The batch's statistics per unit weight at the current parameters: ``(per-path dict, total, mean ll)``."""
        x, y, w = check_model_inputs(self.model, x, y, weight)
        total = float(w.sum())
        data: dict = {}
        stats = self.model.suff_stats(x, y, w, data=data)
        mean_ll = float(stats["loglik"]) / total
        if not math.isfinite(mean_ll):
            raise DivergenceError(
                f"the batch's mean log-likelihood at the current parameters is {mean_ll}: some row is impossible "
                "under the model (or the parameters diverged); check the batch's data against the first one's, "
                "or refit on all the data"
            )
        out = {}
        for path, comp in self.model.components():
            s = stats
            for key in path:
                s = s[key]
            d = dict(s)
            for pr in _pairs(comp, s):  # the local quadratic model: u = g + H theta, at this batch's parameters
                d[pr.grad] = s[pr.grad] + pr.hv(comp, s[pr.info], pr.free(comp))
            out[path] = SuffStats(d).scale(1.0 / total)
        self._data = {path: args for path, (_, args) in data.items()}  # the batch's weighted data, for the guards
        return out, total, mean_ll

    def initialise(self, x, y, weight=None) -> float:
        """Set the running averages to a batch's statistics at the current parameters; the parameters stay.

        Returns
        -------
        float
            The batch's mean log-likelihood per unit weight.
        """
        self._avg, self.mean_weight, mean_ll = self._batch(x, y, weight)
        self.n_updates = 0
        return mean_ll

    def step(self, x, y, weight=None, *, gamma: float | None = None) -> float:
        """One online EM update on a batch: E-step, running averages, M-step from them.

        Parameters
        ----------
        x, y, weight
            The batch (``weight`` None: ones).
        gamma : float, optional
            The batch's weight in the running averages, in (0, 1]; default
            ``(t + 2) ** -alpha``.  Before any statistics (no
            :meth:`initialise`), the first step uses 1 and does not count
            as an update (``n_updates`` stays 0).

        Returns
        -------
        float
            The batch's mean log-likelihood per unit weight at the parameters
            *before* the step (what the E-step computes; a running measure of
            fit on unseen data).
        """
        if gamma is not None and not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool)
                                      and 0 < float(gamma) <= 1):
            raise ValueError(f"gamma must be a number in (0, 1], got {gamma!r}")
        batch, total, mean_ll = self._batch(x, y, weight)
        first = self._avg is None
        g = 1.0 if first else (self.step_size() if gamma is None else float(gamma))
        if first:
            self._avg, self.mean_weight = batch, total
        else:
            self._avg = {p: self._avg[p].scale(1.0 - g) + batch[p].scale(g) for p in batch}
            self.mean_weight = (1.0 - g) * self.mean_weight + g * total
            self.n_updates += 1
        self._m_step()
        return mean_ll

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The running state as plain values (numbers and CPU tensors: storable in a model file).

        ``{"alpha", "max_step", "n_updates", "mean_weight", "averages",
        "components"}``; ``averages`` maps each component's path
        (``"gate"``, ``"experts/stacked"``, ...) to its running averages by
        name (None before any statistics), ``components`` each path to the
        component's class (checked when the state is loaded).
        """
        avg = None
        if self._avg is not None:
            avg = {"/".join(p): {k: v.detach().to("cpu").clone() for k, v in s.items()} for p, s in self._avg.items()}
        return {"alpha": self.alpha, "max_step": self.max_step, "n_updates": self.n_updates,
                "mean_weight": self.mean_weight, "averages": avg, "components": self._signature()}

    def _signature(self) -> dict:
        """Each component's path and class: what the running averages belong to."""
        return {"/".join(p): type(c).__name__ for p, c in self.model.components()}

    def load_state_dict(self, state: dict) -> "OnlineEM":
        """Resume from :meth:`state_dict`'s values (the model must be the one they were taken from)."""
        avg = state.get("averages")
        if state.get("components") != self._signature():
            raise ValueError(
                f"the online state holds statistics of the components {state.get('components')}, but this model has "
                f"{self._signature()}: it was taken from another model; start a new OnlineEM on this one"
            )
        if avg is not None:
            paths = {"/".join(p): p for p, _ in self.model.components()}
            ref = next(self.model.parameters())
            avg = {paths[k]: SuffStats({n: t.to(device=ref.device) for n, t in v.items()}) for k, v in avg.items()}
        self._avg = avg
        self.alpha = float(state["alpha"])
        self.max_step = float(state["max_step"])
        self.n_updates = int(state["n_updates"])
        self.mean_weight = float(state["mean_weight"])
        return self

    # ------------------------------------------------------------- M-step
    @torch.no_grad()
    def _m_step(self) -> None:
        for path, comp in self.model.components():
            _update(comp, self._avg[path], self.mean_weight, self.max_step, self._data[path])


@torch.no_grad()
def _update(comp, avg: SuffStats, scale: float, max_step: float, args: tuple) -> None:
    """``comp``'s M-step from its running averages ``avg`` (per unit weight) rescaled to ``scale``'s weight.

    ``args``: the component's weighted data on the last batch, on which a Newton step's size is measured.
    """
    s = avg.scale(scale)
    pairs = _pairs(comp, s)
    if not pairs:
        comp.m_step(s)
        return
    d = dict(s)
    for pr in pairs:  # the averaged quadratic model's gradient at the current parameters: g = u - H theta
        d[pr.grad] = s[pr.grad] - pr.hv(comp, s[pr.info], pr.free(comp))
    main = pairs[0]
    old = main.free(comp).clone()
    comp.m_step(SuffStats(d))
    if old.numel() == 0:  # nothing free (a gate over one expert)
        return
    delta = main.free(comp) - old
    # the guard: a step that moves the linear predictors by more than max_step (RMS over the batch's rows) shrinks
    # to that length; a non-finite one is not taken
    moved = main.eta_change(comp, args, delta)  # (B,): the gate's one block, or one per expert
    dv = delta.reshape(moved.shape[0], -1)
    factor = torch.clamp(max_step / moved.clamp_min(1e-300), max=1.0)
    factor = torch.where(torch.isfinite(moved) & torch.isfinite(dv).all(-1), factor, torch.zeros_like(factor))
    if getattr(comp, "shared", None) and dv.shape[0] > 1:  # coefficients tied across the stack move together
        factor = factor.min().expand_as(factor)
    if bool((factor < 1).any()):
        main.set_free(comp, old + (factor[:, None] * dv).reshape(old.shape))
