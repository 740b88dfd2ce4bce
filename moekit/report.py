"""A one-page, self-contained HTML report of a fitted conditional mixture.

:func:`make_report` writes one HTML file with every picture embedded as a PNG
(``data:`` URIs: no external files, no scripts, no network): the model, the
metrics, the data, the fitted experts with the gate's regions, the
conditional density with its modes, the convergence curve and the tree of
gates.  :func:`compute_metrics` and :func:`describe_model` are the numbers
and the text it shows; the command line (``moekit evaluate``, ``moekit info``)
prints the same.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
import os
import textwrap

import numpy as np
import torch

from . import __version__
from .distributions import marginal
from .inference import find_modes
from .mixture import MixtureOfExperts
from .plotting import (
    describe_slice,
    plot_conditional_density,
    plot_convergence,
    plot_data,
    plot_experts,
    plot_gate,
    plot_hme_tree,
    tree_summary,
)
from .tree.render import render_tree

__all__ = ["compute_metrics", "describe_model", "make_report", "figure_to_png", "format_value", "METRIC_LABELS",
           "metric_notes", "convergence_note", "metrics_text"]


# ================================================================= metrics
def _np(a):
    return a.to_numpy() if hasattr(a, "to_numpy") else np.asarray(a)


def _is_classifier(est) -> bool:
    return hasattr(est, "classes_")


def _finite(v):
    return float(v) if v is not None and math.isfinite(float(v)) else None


@torch.no_grad()
def compute_metrics(estimator, X, y, *, level: float = 0.9) -> dict:
    """Goodness of fit of a fitted estimator on data (X, y).

    Parameters
    ----------
    estimator : fitted moekit estimator
    X : array (n, d_x)
    y : array (n,) or (n, d_y)
    level : float
        Nominal level of the central predictive intervals whose coverage is reported.

    Returns
    -------
    dict
        ``n``, ``log_likelihood`` (sum over rows), ``mean_log_likelihood``,
        ``nll`` (mean negative log-likelihood per row; it can be negative for
        a density, since densities can exceed one), ``n_parameters``, ``bic``;
        for regressors ``rmse_mean`` (RMSE of the conditional mean),
        ``rmse_top_mode`` (of the heaviest mode of p(y | x); ``None`` for count
        data, which has no modes in this sense), ``coverage`` (share of rows
        whose y lies in the central ``level`` interval of p(y | x), per
        target column), ``interval_level`` and ``coverage_50`` (the same for
        the central 50 % interval, between the quartiles); for classifiers
        ``accuracy``.  :func:`metric_notes` says what each one means.

    Shapes
    ------
    X (n, d_x); y (n,) or (n, d_y).

    Examples
    --------
    >>> from moekit import MoERegressor
    >>> from moekit.datasets import load_tonedata
    >>> d = load_tonedata()
    >>> est = MoERegressor(n_experts=2, random_state=0).fit(d.data, d.target)
    >>> m = compute_metrics(est, d.data, d.target)
    >>> m["n"], round(m["log_likelihood"], 2), 0.8 < m["coverage"][0] <= 1.0
    (150, 145.65, True)
    """
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must be strictly between 0 and 1, got {level!r}")
    ya = _np(y)
    ll = np.asarray(estimator.score_samples(X, y), dtype=float)
    n = int(ll.shape[0])
    out: dict = {"n": n, "log_likelihood": float(ll.sum()), "mean_log_likelihood": float(ll.mean()),
                 "nll": float(-ll.mean())}
    try:
        p = int(estimator.model_.n_parameters())
        out["n_parameters"] = p
        out["bic"] = float(estimator.bic(X, y))  # the estimators' bic(): BIC is computed in one place
    except (AttributeError, NotImplementedError, TypeError):
        out["n_parameters"] = None
        out["bic"] = None
    if _is_classifier(estimator):
        out["accuracy"] = float(np.mean(estimator.predict(X) == ya))
        return out
    dist = estimator.predict_distribution(X)
    mean = dist.mean.cpu().numpy()
    yf = ya.astype(float).reshape(mean.shape)
    err = (mean - yf).reshape(n, -1)
    seen = ~np.isnan(err)  # missing target coordinates (NaN in y) are left out of every error and coverage
    out["rmse_mean"] = float(np.sqrt(np.mean(err[seen] ** 2))) if seen.any() else None
    out["rmse_top_mode"] = None
    try:
        modes = find_modes(dist, max_modes=1).numpy().modes[:, 0]
        merr = modes.reshape(n, -1) - yf.reshape(n, -1)
        out["rmse_top_mode"] = _finite(np.sqrt(np.mean(merr[seen] ** 2))) if seen.any() else None
    except TypeError:  # discrete families have no modes in this sense
        pass
    cov, cov50 = [], []
    n_t = 1 if yf.ndim == 1 else yf.shape[1]
    probs = [(1 - level) / 2, (1 + level) / 2, 0.25, 0.75]
    for j in range(n_t):
        try:
            mj = marginal(dist, j)
            q = mj.quantiles(probs).cpu().numpy()
        except (TypeError, ValueError):
            cov.append(None)
            cov50.append(None)
            continue
        yj = yf if yf.ndim == 1 else yf[:, j]
        ok = ~np.isnan(yj)
        if not ok.any():
            cov.append(None)
            cov50.append(None)
            continue
        yj, qj = yj[ok], q[ok]
        cov.append(float(np.mean((yj >= qj[:, 0]) & (yj <= qj[:, 1]))))
        cov50.append(float(np.mean((yj >= qj[:, 2]) & (yj <= qj[:, 3]))))
    out["coverage"] = cov
    out["interval_level"] = float(level)
    out["coverage_50"] = cov50
    return out


# ============================================================ explanations
def _pct(p: float) -> str:
    return f"{100 * p:.4g} %"


def metric_notes(metrics: dict, target_names=None) -> dict:
    """One line per metric of :func:`compute_metrics` saying what it measures and what to expect.

    Parameters
    ----------
    metrics : dict
        As returned by :func:`compute_metrics` (keys it does not know get no note).
    target_names : list of str, optional
        Names of the target columns, in the order of the per-column coverages.

    Returns
    -------
    dict
        ``{key: sentence}`` for the keys of ``metrics`` that have a note.

    Shapes
    ------
    No arrays.

    Examples
    --------
    >>> notes = metric_notes({"coverage": [1.0, 1.0], "interval_level": 0.9}, target_names=["a", "b"])
    >>> notes["coverage"].split(";")[0]
    'for each target column (a, b), the share of rows whose y lies inside the central 90 % interval of p(y | x) (between its 5 % and 95 % quantiles)'
    """
    level = metrics.get("interval_level", 0.9)
    cols = ""
    if isinstance(metrics.get("coverage"), (list, tuple)) and len(metrics["coverage"]) > 1:
        cols = f" ({', '.join(map(str, target_names))})" if target_names is not None else " (in order)"
    lo, hi = _pct((1 - level) / 2), _pct((1 + level) / 2)
    notes = {
        "n": "rows of data the metrics are computed on",
        "log_likelihood": "sum over the rows of log p(y | x); higher is better; compare models on the same rows only",
        "mean_log_likelihood": "the same per row, so that data sets of different sizes compare",
        "nll": "mean negative log-likelihood per row; lower is better; below zero is normal for a density "
               "that is sharper than one unit of y",
        "n_parameters": "free parameters of the model, as BIC counts them",
        "bic": "-2 log-likelihood + free parameters x log(rows); lower is better; it compares models "
               "(such as numbers of experts) on the same data",
        "rmse_mean": "root mean squared error of the conditional mean E[y | x], the best single guess under "
                     "squared error (for vector y, over all target columns)",
        "rmse_top_mode": "root mean squared error of the heaviest mode of p(y | x) taken as the answer; usually above "
                         "the mean's RMSE, even for unimodal p(y | x), as the mean is what minimises squared error (a "
                         "skewed density's mode lies off its mean) and a wrong pick among branches costs the gap "
                         "between them; the right measure where one real branch must be chosen and an average of "
                         "branches is no answer",
        "coverage": f"for each target column{cols}, the share of rows whose y lies inside the central {_pct(level)} "
                    f"interval of p(y | x) (between its {lo} and {hi} quantiles); about {level:g} is expected of "
                    f"calibrated predictions; above (1 = no row outside) means the intervals are wider than needed, "
                    f"well below that they are too narrow",
        "interval_level": "the nominal level of the intervals whose coverage is shown",
        "coverage_50": "the same for the central 50 % interval (between the quartiles); about 0.5 is expected",
        "accuracy": "share of rows whose most probable class is the true one",
    }
    return {k: notes[k] for k in metrics if k in notes}


def convergence_note(fit_result) -> str:
    """One sentence on what the fit's "converged" or "did not converge" means, and what to do.

    Parameters
    ----------
    fit_result : FitResult
        An estimator's ``fit_result_`` (``converged``, ``method``, ``n_iter``).

    Returns
    -------
    str

    Shapes
    ------
    No arrays.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> convergence_note(SimpleNamespace(converged=True, method="em", n_iter=7)).split(";")[0]
    'converged: in its last iteration EM raised the mean log-likelihood per row by less than tol'
    """
    if getattr(fit_result, "method", "em") == "em":
        if fit_result.converged:
            return ("converged: in its last iteration EM raised the mean log-likelihood per row by less than tol; "
                    "it is at a (local) maximum of the likelihood")
        return (f"did not converge: EM stopped at its iteration limit (max_iter) after {fit_result.n_iter} "
                "iterations while the "
                "log-likelihood was still rising by more than tol per iteration, so the parameters may be short of "
                "the maximum; if the convergence curve has flattened the fit is usable, otherwise refit with a "
                "larger max_iter (--max-iter on the command line)")
    if fit_result.converged:
        return ("converged: early stopping ended training (the monitored log-likelihood, on held-out rows where "
                "there are some, had stopped improving) and the best epoch is kept")
    return (f"did not converge: training stopped at its epoch limit ({fit_result.n_iter} epochs) while the monitored "
            "log-likelihood was still improving, so the network may be short of its best; if the convergence curve "
            "has flattened the fit is usable, otherwise refit with more epochs (max_epochs, --max-iter on the "
            "command line)")


def metrics_text(metrics: dict, target_names=None, *, explain: bool = True) -> str:
    """The metrics as aligned text lines, each followed by its note (what ``moekit evaluate`` can print).

    Parameters
    ----------
    metrics : dict
        As returned by :func:`compute_metrics`.
    target_names : list of str, optional
        Names of the target columns (for the coverage's note).
    explain : bool, default=True
        Add each metric's note (:func:`metric_notes`), wrapped, under its value.

    Returns
    -------
    str

    Shapes
    ------
    No arrays.

    Examples
    --------
    >>> print(metrics_text({"n": 150, "rmse_mean": 0.25}, explain=False))
      rows              150
      RMSE of the mean  0.25
    """
    width = max((len(METRIC_LABELS.get(k, k)) for k in metrics), default=0)
    notes = metric_notes(metrics, target_names) if explain else {}
    lines = []
    for k, v in metrics.items():
        lines.append(f"  {METRIC_LABELS.get(k, k).ljust(width)}  {format_value(v)}")
        if k in notes:
            lines.extend(textwrap.wrap(notes[k], 100, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


# ============================================================ description
def describe_model(estimator, feature_names=None, target_names=None, *, explain: bool = True) -> str:
    """A few lines on what a fitted estimator is: type, structure, sizes, fit.

    Parameters
    ----------
    estimator : fitted moekit estimator
        MoE, HME or MDN regressor or classifier (anything with ``model_``
        and ``n_features_in_``).
    feature_names : list of str, optional
        Names of the d_x input columns (default: the estimator's
        ``feature_names_in_``, if any).
    target_names : list of str, optional
        Names of the target columns, for regressors.
    explain : bool, default=True
        Add what the fit's convergence means (:func:`convergence_note`), wrapped.

    Returns
    -------
    str
        Several lines: the model, its inputs and outputs, its size and its fit.

    Shapes
    ------
    No arrays; ``feature_names`` has d_x entries and ``target_names`` one
    per target column (d_y, or 1 for scalar y).

    Examples
    --------
    >>> from moekit import MoERegressor
    >>> from moekit.datasets import load_tonedata
    >>> d = load_tonedata()
    >>> print(describe_model(MoERegressor(n_experts=2, random_state=0).fit(d.data, d.target)).splitlines()[0])
    MoERegressor: 2 experts (LinearGaussianExpert, stacked) under a SoftmaxGate
    """
    model = estimator.model_
    name = type(estimator).__name__
    lines = []
    nested = isinstance(model, MixtureOfExperts) and not model.is_stacked and any(
        isinstance(e, MixtureOfExperts) for e in model.experts
    )
    if nested:
        lines.append(f"{name}: hierarchical mixture of experts")
        lines.extend("  " + ln for ln in render_tree(model).splitlines())
    elif isinstance(model, MixtureOfExperts):
        ex = model.experts
        fams = type(ex).__name__ + ", stacked" if model.is_stacked else ", ".join(sorted({type(e).__name__ for e in ex}))
        lines.append(f"{name}: {model.n_experts} experts ({fams}) under a {type(model.gate).__name__}")
    else:
        k = getattr(model, "n_experts", getattr(model, "n_components", "?"))
        lines.append(f"{name}: {type(model).__name__} with {k} components")
    names = feature_names if feature_names is not None else getattr(estimator, "feature_names_in_", None)
    d = int(estimator.n_features_in_)
    inputs = f"{d} input column(s)" + (f" ({', '.join(map(str, names))})" if names is not None else "")
    if _is_classifier(estimator):
        outputs = f"{len(estimator.classes_)} classes ({', '.join(map(str, estimator.classes_[:10]))})"
    else:
        ev = estimator.target_shape()  # the estimator probes its model with its own x (offset and trials columns too)
        outputs = "a scalar target" if not ev else f"a {ev[0]}-dimensional target"
        if target_names is not None:
            outputs += f" ({', '.join(map(str, target_names))})"
    lines.append(f"  inputs: {inputs}; outputs: {outputs}")
    try:
        lines.append(f"  free parameters: {model.n_parameters()}; dtype {getattr(estimator, 'dtype', '?')}; "
                     f"device {getattr(estimator, 'device', '?')}")
    except (AttributeError, NotImplementedError):
        pass
    fr = getattr(estimator, "fit_result_", None)
    if fr is not None:
        conv = "converged" if fr.converged else "did not converge"
        unit = "EM iterations" if fr.method == "em" else "epochs"
        lines.append(f"  fit: {fr.method}, {fr.n_iter} {unit}, {conv}; final log-likelihood {fr.log_likelihood:.6g} "
                     f"(mean {fr.mean_log_likelihood:.6g} per row); {fr.seconds:.2f} s")
        if explain:
            lines.extend(textwrap.wrap(convergence_note(fr), 100, initial_indent="    ", subsequent_indent="    "))
        if fr.pruned:
            lines.append(f"  pruned experts: {list(fr.pruned)}")
    return "\n".join(lines)


# ================================================================ figures
def figure_to_png(fig, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    dpi : int, default=100
        Resolution; the figure is cropped to its contents (``bbox_inches="tight"``).

    Returns
    -------
    bytes
        The PNG file.

    Shapes
    ------
    No arrays; the image is about (height * dpi, width * dpi) pixels before
    cropping.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> fig = Figure(figsize=(1, 1))
    >>> _ = fig.subplots().plot([0, 1], [0, 1])
    >>> figure_to_png(fig, dpi=20)[1:4]  # the PNG signature
    b'PNG'
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _figure(w: float, h: float, nrows: int = 1, ncols: int = 1, **kw):
    from matplotlib.figure import Figure  # matplotlib is slow to import: loaded when a picture is drawn

    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _names(names, n, prefix):
    if names is None:
        return [f"{prefix}[{i}]" for i in range(n)] if n > 1 else [prefix]
    names = [str(s) for s in names]
    if len(names) != n:
        raise ValueError(f"expected {n} {prefix} names, got {len(names)}")
    return names


def _default_figures(est, X, y, fnames, tnames) -> list[tuple[str, str, bytes]]:
    Xa = _np(X).astype(float)
    if Xa.ndim == 1:
        Xa = Xa[:, None]
    ya = _np(y)
    clf = _is_classifier(est)
    d = Xa.shape[1]
    n_t = 1 if ya.ndim == 1 else ya.shape[1]
    feats = list(range(min(d, 3)))
    targs = list(range(min(n_t, 3)))
    figs = []
    slice_note = ""
    if d > 1:  # the curves are slices: say which input each column of panels varies, and where the others are
        sides = ["Left", "Right"]
        slice_note = " " + " ".join(f"{sides[c]}: {describe_slice(Xa, c, feature_names=fnames)}."
                                    for c in range(min(d, 2)))
        if d > 2:
            slice_note += f" Only the first two of the {d} input columns are drawn."

    fig, axes = _figure(3.6 * len(feats), 2.8 * len(targs), len(targs), len(feats))
    for r, j in enumerate(targs):
        for c, f in enumerate(feats):
            plot_data(Xa, ya, feature=f, target=j, ax=axes[r, c], feature_names=fnames, target_names=tnames)
    figs.append(("Data", f"{len(Xa)} rows: each target column against each input column.", figure_to_png(fig)))

    fig, axes = _figure(4.2 * min(d, 2), 5.2, 2, min(d, 2), sharex="col", gridspec_kw={"height_ratios": [3, 2]})
    for c in range(min(d, 2)):
        plot_experts(est, Xa, ya, feature=c, ax=axes[0, c], feature_names=fnames, target_names=tnames)
        plot_gate(est, Xa, feature=c, ax=axes[1, c], feature_names=fnames)
        axes[0, c].set_xlabel("")
        axes[1, c].set_title("")  # the same slice as the panel above, whose title says so
    what = "probability of each class" if clf else "mean of y"
    figs.append(("Fitted experts and gate regions",
                 f"Top: each expert's {what}, opaque where the gate trusts it; points coloured by their most "
                 f"responsible expert. Bottom: the gate's probabilities (stacked).{slice_note}", figure_to_png(fig)))

    if not clf:
        dens_targets = targs[:2]
        fig, axes = _figure(4.4 * min(d, 2), 3.4 * len(dens_targets), len(dens_targets), min(d, 2))
        for r, j in enumerate(dens_targets):
            for c in range(min(d, 2)):
                plot_conditional_density(est, Xa, ya, feature=c, target=j, n_grid=160, ax=axes[r, c],
                                         feature_names=fnames, target_names=tnames)
        marg = " (marginal density of each target column)" if n_t > 1 else ""
        figs.append(("Conditional density with modes",
                     f"Heat map of p(y | x){marg}; white dots: its modes at every x (size: their probability "
                     f"mass); blue: the data.{slice_note}", figure_to_png(fig)))

    fig, axes = _figure(5.0, 3.0)
    plot_convergence(est, ax=axes[0, 0])
    fr = getattr(est, "fit_result_", None)
    conv = f" The fit {convergence_note(fr)}." if fr is not None else ""
    figs.append(("Convergence", f"Mean log-likelihood per row after every iteration of the best start.{conv}",
                 figure_to_png(fig)))

    model = est.model_
    if isinstance(model, MixtureOfExperts):
        n_leaves = sum(1 for nd in tree_summary(model, None) if nd["leaf"])
        if n_leaves <= 64:
            fig, axes = _figure(max(4.0, 1.0 * n_leaves), 1.2 + 1.1 * max(1, _depth(model)))
            plot_hme_tree(est, Xa, ax=axes[0, 0])
            figs.append(("Tree of gates and experts",
                         "Numbers on the edges: mean probability of being routed there on these data.",
                         figure_to_png(fig)))
    return figs


def _depth(model) -> int:
    if not isinstance(model, MixtureOfExperts) or model.is_stacked:
        return 1
    return 1 + max((_depth(e) if isinstance(e, MixtureOfExperts) else 0) for e in model.experts)


# ================================================================== HTML
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .7em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em;margin-top:.3em}img{max-width:100%;height:auto}
td.note,p.note{color:#555;font-size:.9em}
"""


def format_value(v) -> str:
    """A metric's value as text: 6 significant digits, lists joined by commas, ``None`` as "n/a".

    Examples
    --------
    >>> format_value(0.123456789), format_value([0.9, None]), format_value(150)
    ('0.123457', '0.9, n/a', '150')
    """
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(format_value(x) for x in v)
    return str(v)


# how each key of compute_metrics' dict is named in the report and by ``moekit evaluate``
METRIC_LABELS = {
    "n": "rows",
    "log_likelihood": "log-likelihood (sum)",
    "mean_log_likelihood": "mean log-likelihood per row",
    "nll": "NLL (mean per row)",
    "n_parameters": "free parameters",
    "bic": "BIC",
    "rmse_mean": "RMSE of the mean",
    "rmse_top_mode": "RMSE of the top mode",
    "coverage": "interval coverage",
    "interval_level": "interval level",
    "coverage_50": "interval coverage (50 %)",
    "accuracy": "accuracy",
}


def metrics_table_html(metrics: dict, target_names=None) -> str:
    """The metrics as an HTML table: name, value and what it means (:func:`metric_notes`)."""
    notes = metric_notes(metrics, target_names)
    rows = ["<tr><th>metric</th><th>value</th><th>what it means</th></tr>"]
    for k, v in metrics.items():
        label = METRIC_LABELS.get(k, k.replace("_", " "))
        rows.append(f"<tr><th>{html.escape(label)}</th><td class='num'>{html.escape(format_value(v))}</td>"
                    f"<td class='note'>{html.escape(notes.get(k, ''))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def make_report(
    estimator,
    X,
    y,
    path=None,
    *,
    title: str | None = None,
    feature_names=None,
    target_names=None,
    metrics: dict | None = None,
    level: float = 0.9,
    extra_figures=None,
    notes: str | None = None,
) -> str:
    """Build the HTML report (and write it to ``path`` when given).

    Parameters
    ----------
    estimator : fitted moekit estimator
    X : array (n, d_x)
        Data to show and evaluate on (the training data, or held-out data).
    y : array (n,) or (n, d_y)
    path : str or os.PathLike, optional
        Where to write the page (UTF-8).  The folder must exist.
    title : str, optional
    feature_names, target_names : list of str, optional
        Axis labels (default: the estimator's ``feature_names_in_`` or x[i], y[j]).
    metrics : dict, optional
        Shown instead of :func:`compute_metrics` ``(estimator, X, y, level=level)``.
    level : float
        Level of the predictive intervals whose coverage is reported.
    extra_figures : list of (title, caption, figure or PNG bytes), optional
        Added after the standard pictures (a matplotlib Figure is rendered to PNG).
    notes : str, optional
        A paragraph of text shown under the title.

    Returns
    -------
    str
        The HTML page: self-contained (images are embedded PNGs), no scripts.

    Shapes
    ------
    X (n, d_x); y (n,) or (n, d_y).

    Examples
    --------
    >>> from moekit import MoERegressor
    >>> from moekit.datasets import load_tonedata
    >>> d = load_tonedata()
    >>> est = MoERegressor(n_experts=2, random_state=0).fit(d.data, d.target)
    >>> page = make_report(est, d.data, d.target, title="Tone data")
    >>> page.startswith("<!DOCTYPE html>"), page.count("data:image/png;base64,") >= 4
    (True, True)
    """
    Xa = _np(X)
    ya = _np(y)
    if Xa.ndim == 1:
        Xa = Xa[:, None]
    if Xa.shape[0] != ya.shape[0]:
        raise ValueError(f"X has {Xa.shape[0]} rows but y has {ya.shape[0]}; pass the rows of one data set")
    if Xa.shape[0] == 0:
        raise ValueError("X has no rows: nothing to report")
    d = int(estimator.n_features_in_)
    fnames = feature_names if feature_names is not None else getattr(estimator, "feature_names_in_", None)
    fnames = _names(fnames, d, "x")
    n_t = 1 if ya.ndim == 1 else ya.shape[1]
    tnames = _names(target_names, n_t, "y")
    if metrics is None:
        metrics = compute_metrics(estimator, X, y, level=level)
    figs = _default_figures(estimator, X, y, fnames, tnames)
    for item in extra_figures or []:
        t, cap, fig = item
        png = fig if isinstance(fig, (bytes, bytearray)) else figure_to_png(fig)
        figs.append((t, cap, bytes(png)))
    title = title or f"moekit report: {type(estimator).__name__}"
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='sub'>moekit {html.escape(__version__)} &middot; {html.escape(when)} &middot; "
        f"{Xa.shape[0]} rows</p>",
    ]
    if notes:
        parts.append(f"<p>{html.escape(notes)}</p>")
    parts.append("<h2>Model</h2>")
    parts.append(f"<pre>{html.escape(describe_model(estimator, fnames, tnames, explain=False))}</pre>")
    fr = getattr(estimator, "fit_result_", None)
    if fr is not None:
        parts.append(f"<p class='note'>The fit {html.escape(convergence_note(fr))}.</p>")
    parts.append("<h2>Metrics</h2>")
    parts.append(metrics_table_html(metrics, None if _is_classifier(estimator) else tnames))
    for i, (t, cap, png) in enumerate(figs):
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{html.escape(t)}</h2><figure><img id='fig{i}' alt='{html.escape(t, quote=True)}' "
                     f"src='data:image/png;base64,{b64}'><figcaption>{html.escape(cap)}</figcaption></figure>")
    parts.append("</body></html>")
    page = "\n".join(parts) + "\n"
    if path is not None:
        with open(os.fspath(path), "w", encoding="utf-8") as f:
            f.write(page)
    return page
