"""Coefficient tables with standard errors: what ``summary(refit(m))`` gives in R's flexmix.

:func:`inference_state` runs at the end of ``fit`` (observed information and sandwich, kept as
plain values in the estimator and its model file); :class:`SummaryMixin` adds ``summary()``,
``gate_coef_`` and ``expert_coef_`` to the mixture-of-experts estimators; :class:`Summary` is the
result, a pandas table that prints like R's coefficient tables and renders as HTML in notebooks.
"""

from __future__ import annotations

import copy
import math
import warnings
from contextlib import nullcontext

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import xlogy
from scipy.stats import norm
from sklearn.base import is_classifier
from sklearn.utils.validation import check_is_fitted

from .._validation import check_sample_weight, incomplete_targets
from ..inference.information import NoLikelihoodHessianError, ParameterInfo, observed_informations, reported_estimates
from ..training.em import fit_em

__all__ = ["Summary", "SummaryMixin", "inference_state"]

COLUMNS = ["block", "node", "component", "output", "term", "estimate", "std_error", "z", "p_value", "ci_low",
           "ci_high"]
_SE = ("hessian", "sandwich", "bootstrap")
_NO_TEST = ("sigma", "df", "shape", "alpha", "dispersion")  # positive quantities: no z test against 0
#: ``compute_se="auto"`` computes standard errors at fit where rows times free parameters are at most this.
AUTO_SE_BUDGET = 5e6


def inference_state(model, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, *, source=None, reduce=None) -> dict:
    """What ``summary()`` needs without the data, computed at the end of ``fit``: JSON-able values.

    Returns ``{"parameters", "estimate", "cov_hessian", "cov_sandwich", "warnings", "entropy",
    "log_likelihood", "n_samples"}``, or ``{"error": message}`` for a model without a likelihood
    Hessian (neural or scikit-learn parts).  ``source``: a source of model-level batches instead
    of ``x, y, w`` (then None), read once; every quantity is a sum over its batches.

    Shapes
    ------
    x : (n, d_x); y : (n,) or (n, d_y); w : (n,). ``estimate`` (P,), the covariances (P, P).
    """
    entropy = [0.0]
    batches = None
    if source is not None:
        def batches_with_entropy():
            for b in source:
                entropy[0] += _weighted_entropy(model, b.x, b.y, b.weight)
                yield b.x, b.y, b.weight
        batches = batches_with_entropy()
    try:
        # one Hessian for both
        both = observed_informations(model, x, y, w, methods=("hessian", "sandwich"), batches=batches, reduce=reduce)
    except NoLikelihoodHessianError as err:
        return {"error": str(err)}
    except torch.linalg.LinAlgError as err:  # fit succeeded: its standard errors failing must not fail it
        return {"error": f"the observed information could not be decomposed ({err}); use se='bootstrap'"}
    hess, sand = both["hessian"], both["sandwich"]
    return {
        "parameters": [[p.block, list(p.node), None if p.component is None else int(p.component), p.output, p.term,
                        None if p.input_columns is None else [int(c) for c in p.input_columns]]
                       for p in hess.parameters],
        "estimate": hess.estimate.cpu().numpy().astype(np.float64),
        "cov_hessian": hess.covariance.cpu().numpy().astype(np.float64),
        "cov_sandwich": sand.covariance.cpu().numpy().astype(np.float64),
        "warnings": list(hess.warnings),
        "worst": hess.worst,
        "condition": hess.condition,
        "entropy": _weighted_entropy(model, x, y, w) if source is None else
        (entropy[0] if reduce is None else float(reduce(torch.tensor(entropy[0], dtype=torch.float64)))),
        "log_likelihood": float(hess.log_likelihood),
        "n_samples": float(hess.n_samples),
    }


def _weighted_entropy(model, x, y, w) -> float:
    """``-sum_i w_i sum_k r_ik log r_ik``: what ICL adds to BIC (twice)."""
    with torch.no_grad():
        r = model.log_responsibilities(x, y).exp().cpu().numpy()
    return float(-(w.cpu().numpy()[:, None] * xlogy(r, r)).sum())


def _params_of(state: dict) -> list:
    return [ParameterInfo(b, tuple(n), None if c is None else int(c), o, t, None if cols is None else tuple(cols))
            for b, n, c, o, t, cols in state["parameters"]]


class Summary:
    """A fitted mixture's coefficients with standard errors, tests and confidence intervals.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per free parameter, columns ``block, node, component, output, term, estimate,
        std_error, z, p_value, ci_low, ci_high``. Gate rows are log-odds against component 0.
        Parameters common to all experts (``shared_features``' coefficients, a tied noise variance or
        covariance) are reported once, in block "shared" with an empty component.
    log_likelihood, n_samples, n_parameters, bic, aic, icl : float
    se : str
        "hessian", "sandwich" or "bootstrap".
    level : float
    notes : list of str
        Warnings about the information (singular, ill-conditioned), naming the parameter.

    Shapes
    ------
    ``table`` has P rows, P the number of free parameters (as in ``bic``).
    """

    def __init__(self, table, *, title, log_likelihood, n_samples, n_parameters, se, level, icl_penalty, notes):
        self.table = table
        self.title = title
        self.log_likelihood = float(log_likelihood)
        self.n_samples = float(n_samples)
        self.n_parameters = int(n_parameters)
        self.bic = -2 * self.log_likelihood + self.n_parameters * math.log(self.n_samples)
        self.aic = -2 * self.log_likelihood + 2 * self.n_parameters
        self.icl = self.bic + 2 * float(icl_penalty)
        self.se = se
        self.level = float(level)
        self.notes = list(notes)

    def _footer(self) -> list:
        n = int(self.n_samples) if float(self.n_samples).is_integer() else self.n_samples
        return [f"Log-likelihood: {self.log_likelihood:.4f} (n = {n}, parameters = {self.n_parameters})",
                f"BIC: {self.bic:.4f}   AIC: {self.aic:.4f}   ICL: {self.icl:.4f}"] + \
               [f"Note: {s}" for s in self.notes]

    def _header(self) -> str:
        what = {"hessian": "observed information", "sandwich": "sandwich (robust)", "bootstrap": "bootstrap"}[self.se]
        return f"{self.title}\nStandard errors: {what}; {100 * self.level:g} % confidence intervals"

    def __str__(self) -> str:
        lines = [self._header(), ""]
        t = self.table
        for (block, node), part in t.groupby(["block", "node"], sort=False):
            where = f" at node {node}" if node else ""
            if block == "gate":
                lines.append(f"Gate{where} (log-odds against component 0):")
            elif block == "shared":
                lines.append(f"Shared by all experts{where}:")
            else:
                lines.append(f"Experts{where}:")
            shown = part[["component", "output", "term", "estimate", "std_error", "z", "p_value"]].copy()
            for c in ("component", "output"):
                if (shown[c] == "").all():
                    shown = shown.drop(columns=c)
            shown.columns = [{"estimate": "Estimate", "std_error": "Std. Error", "z": "z value",
                              "p_value": "Pr(>|z|)"}.get(c, c) for c in shown.columns]
            lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.6g}", na_rep=""))
            lines.append("")
        return "\n".join(lines + self._footer())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "<br>".join(self._header().split("\n"))
        foot = "<br>".join(self._footer())
        body = self.table.to_html(index=False, float_format=lambda v: f"{v:.6g}", na_rep="")
        return f"<div><p>{head}</p>{body}<p>{foot}</p></div>"

    def to_dict(self) -> dict:
        """JSON-able: the table as a list of records (NaN as None) and the fit statistics."""
        records = []
        for rec in self.table.to_dict(orient="records"):
            records.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()})
        return {"title": self.title, "se": self.se, "level": self.level, "coefficients": records,
                "log_likelihood": self.log_likelihood, "n_samples": self.n_samples,
                "n_parameters": self.n_parameters, "bic": self.bic, "aic": self.aic, "icl": self.icl,
                "notes": self.notes}


class SummaryMixin:
    """``summary()``, ``gate_coef_`` and ``expert_coef_`` for the mixture-of-experts estimators."""

    def _fitted(self, x, y, w, *, source=None, reduce=None) -> None:
        """At the end of ``fit``: the observed information and the sandwich, for ``summary()`` without data.

        ``source``: the training data as a source of model-level batches (then ``x`` is its number
        of rows and ``y``, ``w`` None): the information is summed over its batches.
        ``reduce``: the sum across the ranks of a distributed fit, whose ``source`` is then this rank's shard.
        """
        cs = getattr(self, "compute_se", False)
        if cs == "auto":
            n = int(x) if source is not None else x.shape[0]
            cs = n * self.model_.n_parameters() <= AUTO_SE_BUDGET
        if cs:
            self.inference_ = inference_state(self.model_, None if source is not None else x, y, w, source=source,
                                              reduce=reduce)
        elif hasattr(self, "inference_"):
            del self.inference_

    # ------------------------------------------------------------ naming
    def _input_name(self, col: int) -> str:
        names = getattr(self, "feature_names_in_", None)
        if names is not None and len(names) == int(self.n_features_in_):
            return str(names[col])
        return f"x{col}"

    def _term_name(self, p: ParameterInfo) -> str:
        if isinstance(p.term, str):
            if p.term.startswith("cov["):
                i, j = (int(v) for v in p.term[4:-1].split(","))
                a, b = self._output_name(i), self._output_name(j)
                return f"var({a})" if i == j else f"cov({a}, {b})"
            return p.term
        if p.term == 0:
            return "(Intercept)"
        col = p.term - 1 if p.input_columns is None else p.input_columns[p.term - 1]
        return self._input_name(int(col))

    def _output_name(self, o) -> str:
        if o is None:
            return ""
        if is_classifier(self):
            return str(self.classes_[int(o)])
        return f"y{int(o)}"

    def _output_label(self, p: ParameterInfo) -> str:
        if is_classifier(self) and p.block == "expert" and p.output is None and isinstance(p.term, int):
            return str(self.classes_[1]) if len(self.classes_) == 2 else ""  # a logistic expert models its class 1
        return self._output_name(p.output)

    def _is_tree(self, params) -> bool:
        return any(p.block == "gate" and p.node for p in params)

    def _rows(self, params, estimate):
        tree = self._is_tree(params)
        rows = []
        for p, e in zip(params, estimate):
            rows.append({"block": p.block, "node": ".".join(str(i) for i in p.node) if tree else "",
                         "component": "" if p.component is None else int(p.component),
                         "output": self._output_label(p), "term": self._term_name(p),
                         "estimate": float(e)})
        return rows

    # ------------------------------------------------------------ summary
    def _inference(self) -> dict:
        check_is_fitted(self, "model_")
        state = getattr(self, "inference_", None)
        if state is None:
            raise ValueError("this model holds no standard errors (fitted with compute_se=False, or with 'auto' on "
                             f"more than {AUTO_SE_BUDGET:.0e} rows times parameters, or saved by an older moekit): call "
                             "summary(X=..., y=...) with the training data, or fit with compute_se=True")
        if "error" in state:
            raise TypeError(f"summary() with se='hessian' or 'sandwich' needs a likelihood Hessian: {state['error']}")
        return state

    def summary(self, se: str = "hessian", level: float = 0.95, X=None, y=None, sample_weight=None,
                n_boot: int = 200, random_state=None, *, offset=None, trials=None, lower=None,
                upper=None) -> Summary:
        """Every coefficient with its name, standard error, z test and confidence interval.

        Parameters
        ----------
        se : {"hessian", "sandwich", "bootstrap"}, default="hessian"
            The inverse observed information (the exact Hessian of the observed-data
            log-likelihood, computed at the end of ``fit``); the sandwich ``I^-1 B I^-1``, robust
            to a misspecified expert family (also computed at fit); or a nonparametric bootstrap
            (needs X and y: ``n_boot`` EM refits on resampled rows, each started from the fitted
            model, components matched to it).
        level : float, default=0.95
            Confidence level of the Wald intervals ``estimate +- z_{(1+level)/2} std_error``.
        X, y, sample_weight : optional
            The training data: with them, "hessian" and "sandwich" are recomputed from the data
            (needed for a model saved without standard errors); "bootstrap" needs them.
        n_boot : int, default=200
            Bootstrap replicates (at least 2).
        random_state : int, optional
            Seed of the bootstrap's resampling.
        offset, trials, lower, upper : array (n,), optional
            The per-row extras the model was fitted with (as for ``fit``), with X and y.

        Returns
        -------
        Summary
            ``.table`` (pandas DataFrame), fit statistics (log-likelihood, n, parameters, BIC,
            AIC, ICL); prints like R's coefficient tables.

        Shapes
        ------
        X : (n, d_x); y : (n,) or (n, d_y); sample_weight : (n,). The table has one row per free
        parameter.

        Examples
        --------
        >>> import numpy as np
        >>> from moekit import MoERegressor
        >>> rng = np.random.default_rng(0)
        >>> X = rng.uniform(-2, 2, size=(400, 1))
        >>> y = np.where(rng.uniform(size=400) < 0.5, 2 * X[:, 0], -X[:, 0]) + 0.2 * rng.normal(size=400)
        >>> s = MoERegressor(n_experts=2, random_state=0).fit(X, y).summary()
        >>> list(s.table.columns)[:5], len(s.table)
        (['block', 'node', 'component', 'output', 'term'], 8)
        """
        check_is_fitted(self, "model_")
        if se not in _SE:
            raise ValueError(f"se must be one of {_SE}, got {se!r}")
        if not (isinstance(level, (int, float)) and 0 < level < 1):
            raise ValueError(f"level must be a number strictly between 0 and 1 (e.g. 0.95), got {level!r}")
        if se == "bootstrap":
            if X is None or y is None:
                raise ValueError("se='bootstrap' refits the model on resampled rows: pass the training data, "
                                 "summary(se='bootstrap', X=X, y=y)")
            if not (isinstance(n_boot, (int, np.integer)) and not isinstance(n_boot, bool) and n_boot >= 2):
                raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
        if (X is None) != (y is None):
            raise ValueError("pass both X and y (the training data) to recompute standard errors, or neither")
        extras = {"offset": offset, "trials": trials, "lower": lower, "upper": upper}
        if X is None and any(v is not None for v in extras.values()):
            given = ", ".join(k for k, v in extras.items() if v is not None)
            raise ValueError(f"{given} given without X and y: the per-row extras belong to the data; pass them "
                             "with X and y, or leave them out")
        data = None if X is None else self._tensors(X, y, sample_weight, **extras)
        if se == "bootstrap":
            params, estimate = reported_estimates(self.model_, strict=False)
            if not params:
                raise TypeError("summary() reports named coefficients of softmax or constant gates and of GLM, "
                                "Gaussian or Student-t experts; this model has none (neural or scikit-learn parts)")
            cov = self._bootstrap_cov(*data, int(n_boot), random_state)
            state = self._fit_statistics(*data)
        else:
            if data is not None:
                state = inference_state(self.model_, *data)
                if "error" in state:
                    raise TypeError(f"summary(se={se!r}) needs a likelihood Hessian: {state['error']}")
            else:
                state = self._inference()
            params = _params_of(state)
            estimate = np.asarray(state["estimate"], dtype=np.float64)
            cov = np.asarray(state["cov_" + se], dtype=np.float64)
        return self._make_summary(params, estimate, cov, state, se, float(level))

    def _tensors(self, X, y, sample_weight, offset=None, trials=None, lower=None, upper=None) -> tuple:
        """The data as the model takes them: ``(x, y, weight)`` tensors, the per-row extras in x and y."""
        x = self._model_x(X, offset, trials)
        yt = self._target_tensor(y, x.shape[0], lower, upper)
        return x, yt, check_sample_weight(sample_weight, x.shape[0], x.dtype, x.device)

    def _fit_statistics(self, x, y, w) -> dict:
        """Log-likelihood, weight and the responsibilities' entropy on the data (for the footer of a bootstrap)."""
        with torch.no_grad():
            ll = float((w * self.model_.log_prob(x, y)).sum())
        return {"log_likelihood": ll, "n_samples": float(w.sum()), "entropy": _weighted_entropy(self.model_, x, y, w),
                "warnings": []}

    def _make_summary(self, params, estimate, cov, state, se, level) -> Summary:
        import pandas as pd  # optional heavy dependency, only for the table

        se_vals = np.sqrt(np.clip(np.diag(cov), 0, None))
        se_vals[~np.isfinite(np.diag(cov))] = math.nan  # not determined by the data (see the notes)
        order = _reading_order(params)
        params, estimate, se_vals = [params[i] for i in order], np.asarray(estimate)[order], se_vals[order]
        rows = self._rows(params, estimate)
        q = norm.ppf(0.5 + level / 2)
        for r, p, s in zip(rows, params, se_vals):
            testable = not (isinstance(p.term, str) and (p.term in _NO_TEST or _is_variance(p.term)))
            z = r["estimate"] / s if testable and s > 0 else math.nan
            r.update(std_error=float(s), z=z, p_value=float(2 * norm.sf(abs(z))) if math.isfinite(z) else math.nan,
                     ci_low=r["estimate"] - q * s, ci_high=r["estimate"] + q * s)
        table = pd.DataFrame(rows, columns=COLUMNS)
        notes = list(state.get("warnings", []))
        worst, condition = state.get("worst"), state.get("condition")
        if condition is not None and worst is not None and se != "bootstrap":  # the note, with the table's names
            r = self._rows([_params_of(state)[int(worst)]], [0.0])[0]
            where = f" at node '{r['node']}'" if r["node"] else ""
            notes = [f"the observed information is {condition}; the parameter most involved is {r['block']} "
                     f"component {r['component']} term {r['term']!r}{where}: its standard errors (and those of "
                     "parameters tied to it) are unreliable; a component with too little data, a gate that "
                     "separates the data, or collinear inputs"]
        for note in notes:
            warnings.warn(note, UserWarning, stacklevel=3)
        return Summary(table, title=self._title(params), log_likelihood=state["log_likelihood"],
                       n_samples=state["n_samples"], n_parameters=len(params), se=se, level=level,
                       icl_penalty=state.get("entropy", 0.0), notes=notes)

    def _title(self, params) -> str:
        n_leaves = getattr(self, "n_leaves_", None) or getattr(self, "n_experts_", None) or \
            1 + max((p.component for p in params if p.block == "expert"), default=0)
        title = f"{type(self).__name__} with {n_leaves} expert{'s' if n_leaves != 1 else ''}"
        families = getattr(self, "expert", None)
        if isinstance(families, (list, tuple)) and len(families) == n_leaves and len(set(families)) > 1:
            title += " (" + ", ".join(f"{k}: {f}" for k, f in enumerate(families)) + ")"  # a point mass has no rows
        return title

    # ---------------------------------------------------------- bootstrap
    def _bootstrap_cov(self, x, yt, w, n_boot, random_state) -> np.ndarray:
        rng = np.random.default_rng(random_state)
        n = x.shape[0]
        # censored rows ([y, lower, upper], ±inf limits) and missing coordinates reach the experts as in fit
        context = incomplete_targets if bool(yt.is_floating_point() and not torch.isfinite(yt).all()) else nullcontext
        p0 = w.cpu().numpy() / float(w.sum())
        draws = []
        for _ in range(n_boot):
            counts = rng.multinomial(n, p0)  # n rows drawn with replacement, in proportion to their weights
            wb = torch.as_tensor(counts, dtype=x.dtype, device=x.device) * (float(w.sum()) / n)
            m = copy.deepcopy(self.model_)
            with context():
                fit_em(m, x, yt, wb, init=None, max_iter=int(getattr(self, "max_iter", 200)),
                       tol=float(getattr(self, "tol", 1e-6)))
            _match_components(m, self.model_)
            draws.append(reported_estimates(m, strict=False)[1])
        draws = np.asarray(draws)
        return np.cov(draws, rowvar=False)

    # ------------------------------------------------- named coefficients
    def _coef_frame(self, block: str):
        import pandas as pd  # optional heavy dependency, only for the table

        state = self._inference_or_estimates()
        params, est = state
        every = self._rows(params, est)
        rows = [r for r in every if r["block"] == block]
        if not rows:
            return pd.DataFrame()
        if block == "expert":  # a value shared by all experts is each expert's coefficient: in every row
            leaves = {(r["node"], r["component"]) for r in rows}
            rows += [dict(r, block="expert", node=node, component=c) for r in every if r["block"] == "shared"
                     for node, c in sorted(leaves, key=str) if node.startswith(r["node"])]
        df = pd.DataFrame(rows)
        index = ["node", "component", "output"] if block == "expert" else ["node", "component"]
        index = [c for c in index if not (df[c] == "").all()]
        return df.pivot_table(index=index, columns="term", values="estimate", sort=False)

    def _inference_or_estimates(self):
        state = getattr(self, "inference_", None)
        if state is not None and "error" not in state:
            return _params_of(state), np.asarray(state["estimate"])
        return reported_estimates(self.model_, strict=False)

    @property
    def gate_coef_(self):
        """The gate's coefficients against component 0, named: a DataFrame (rows: node and component; columns: terms)."""
        check_is_fitted(self, "model_")
        return self._coef_frame("gate")

    @property
    def expert_coef_(self):
        """The experts' coefficients (and sigma), named: a DataFrame (rows: component and output; columns: terms).

        Coefficients shared by all experts (and a tied sigma) appear in every expert's row."""
        check_is_fitted(self, "model_")
        return self._coef_frame("expert")


def _reading_order(params) -> list:
    """Rows as R prints them: the gates first (node by node), then each expert with its coefficients and its
    noise parameters together, then the parameters shared by all experts (a stable sort keeps the terms' own
    order)."""
    rank = {"gate": 0, "expert": 1, "shared": 2}
    return sorted(range(len(params)), key=lambda i: (rank.get(params[i].block, 3), params[i].node if
                                                     params[i].block == "gate" else (),
                                                     -1 if params[i].component is None else params[i].component))


def _is_variance(term: str) -> bool:
    if not term.startswith("cov["):
        return False
    i, j = term[4:-1].split(",")
    return i == j


def _match_components(model, reference) -> None:
    """Permute a flat refit's experts (and gate rows) to the reference's order: label switching undone by the
    assignment that minimises the distance between the experts' parameters."""
    if getattr(model, "is_stacked", False) is False or not hasattr(model.experts, "coef"):
        return  # trees and lists of experts: warm-started refits keep their labels
    a = model.experts.coef.detach().reshape(model.n_experts, -1).cpu().numpy()
    b = reference.experts.coef.detach().reshape(reference.n_experts, -1).cpu().numpy()
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    order = rows[np.argsort(cols)]  # model's expert that plays reference expert j
    if np.array_equal(order, np.arange(len(order))):
        return
    idx = torch.as_tensor(order, device=model.experts.coef.device)
    for p in list(model.gate.parameters()) + list(model.experts.parameters()):
        if p.dim() and p.shape[0] == len(order):  # a tied parameter, stored once, is common to all experts
            p.data = p.data[idx].clone()  # softmax / constant gates hold one row per expert, stacked experts one slice
