"""Plots of fitted conditional mixtures (matplotlib, imported only when a plot is drawn).

Every function takes ``ax=None`` (a new figure is made with
``matplotlib.pyplot`` when it is ``None``) and returns the ``Axes`` it drew on,
so plots compose::

    fig, axes = plt.subplots(1, 2)
    plot_conditional_density(est, X, y, ax=axes[0])
    plot_gate(est, X, ax=axes[1])

For inputs with several columns, the curves are *slices*: ``feature`` varies
over its range while every other column is held at its median in ``X``; the
plot's title says so, with the held values (:func:`describe_slice` gives the
same text for a caption).
For vector targets, densities are the *marginal* density of column ``target``
of y (exact for Gaussian and Student-t components).

Functions
---------
plot_data, plot_conditional_density, plot_gate, plot_experts,
plot_hme_tree, plot_convergence, plot_robot_arm; tree_summary (the nodes
that plot_hme_tree draws, as data); describe_slice (which input a plot
varies and where the others are held, as text).
"""

from __future__ import annotations

import math
import numbers
import textwrap

import numpy as np
import torch

from .distributions import MixtureDistribution, flatten_leaves, marginal  # marginal stays public here too
from .inference import find_modes
from .mixture import MixtureOfExperts

__all__ = [
    "plot_data",
    "plot_conditional_density",
    "plot_gate",
    "plot_experts",
    "plot_hme_tree",
    "plot_convergence",
    "plot_robot_arm",
    "tree_summary",
    "describe_slice",
]


def _pyplot():
    import matplotlib.pyplot as plt  # matplotlib is slow to import: loaded when a plot is drawn

    return plt


def _get_ax(ax):
    if ax is None:
        _, ax = _pyplot().subplots()
    return ax


def _colors(n: int):
    from matplotlib import colormaps  # matplotlib is slow to import: loaded when a plot is drawn

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# ------------------------------------------------------------- input checks
def _as_2d(a, name: str) -> np.ndarray:
    if hasattr(a, "to_numpy"):
        a = a.to_numpy()
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got an array of dtype {arr.dtype}")
    arr = arr.astype(float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, d) with n >= 1, got {arr.shape}")
    return arr


def _check_index(i, n: int, name: str, what: str) -> int:
    if not (isinstance(i, numbers.Integral) and not isinstance(i, bool) and -n <= i < n):
        raise ValueError(f"{name} must be an integer index into the {n} {what}, got {i!r}")
    return int(i) % n


def _n_features(est) -> int:
    n = getattr(est, "n_features_in_", None)
    if n is None:
        raise ValueError("the estimator is not fitted; call fit(X, y) first")
    return int(n)


def _frame(est, Xg: np.ndarray):
    """Inputs in the form the estimator was fitted on (a DataFrame when it saw column names)."""
    names = getattr(est, "feature_names_in_", None)
    if names is None:
        return Xg
    import pandas as pd  # optional (not a moekit dependency): only estimators fitted on a DataFrame need it

    return pd.DataFrame(Xg, columns=list(names))


def _slice(est, X, feature: int, n_grid: int, x_range):
    """A grid over one input column, the others at their median: (grid (G,), inputs (G, d))."""
    d = _n_features(est)
    feature = _check_index(feature, d, "feature", "input columns")
    if not (isinstance(n_grid, numbers.Integral) and n_grid >= 2):
        raise ValueError(f"n_grid must be an integer >= 2, got {n_grid!r}")
    Xa = None if X is None else _as_2d(X, "X")
    if Xa is not None and Xa.shape[1] != d:
        raise ValueError(f"X has {Xa.shape[1]} columns but the estimator was fitted on {d}")
    if x_range is None:
        if Xa is None:
            raise ValueError("pass X (the data) or x_range=(low, high) to set the range of the plot")
        lo, hi = float(np.min(Xa[:, feature])), float(np.max(Xa[:, feature]))
        pad = 0.02 * (hi - lo) if hi > lo else 0.5
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = (float(v) for v in x_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"x_range must be (low, high) with low < high, got {x_range!r}")
    if Xa is None and d > 1:
        raise ValueError("with several input columns, pass X so that the other columns can be held at their median")
    base = np.zeros(d) if Xa is None else np.median(Xa, axis=0)
    grid = np.linspace(lo, hi, int(n_grid))
    Xg = np.tile(base, (len(grid), 1))
    Xg[:, feature] = grid
    return grid, Xg


def _fmt(v: float) -> str:
    return f"{float(v):.4g}"


def describe_slice(X, feature: int = 0, *, feature_names=None, max_shown: int | None = None) -> str:
    """Which input column a slice plot varies, and the values at which it holds the others.

    The plots of this module draw a model along one input column (``feature``)
    with every other column held at its median in ``X``; this is the sentence
    that says so (their axes' titles, and the report's captions).

    Parameters
    ----------
    X : array (n, d_x)
        The data whose medians hold the other columns.
    feature : int
        The varied column.
    feature_names : list of str, optional
        Names of the d_x columns (default ``x[0]``, ``x[1]``, ...).
    max_shown : int, optional
        Name at most this many held columns; the rest are counted.  Default: all.

    Returns
    -------
    str
        ``""`` for one input column, else for example
        ``"x1 varied; held at the median: x2 = 0.5"``.

    Shapes
    ------
    X (n, d_x); one median per column.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 1.0, 10.0], [1.0, 2.0, 20.0], [2.0, 4.0, 30.0]])
    >>> describe_slice(X, 0, feature_names=["a", "b", "c"])
    'a varied; held at their medians: b = 2, c = 20'
    >>> describe_slice(X, 2, max_shown=1)
    'x[2] varied; held at their medians: x[0] = 1 (+1 more)'
    >>> describe_slice(X[:, :1], 0)
    ''
    """
    Xa = _as_2d(X, "X")
    d = Xa.shape[1]
    f = _check_index(feature, d, "feature", "input columns")
    if d == 1:
        return ""
    if max_shown is not None and not (isinstance(max_shown, numbers.Integral) and max_shown >= 1):
        raise ValueError(f"max_shown must be a positive integer or None, got {max_shown!r}")
    med = np.median(Xa, axis=0)
    others = [i for i in range(d) if i != f]
    shown = others if max_shown is None else others[: int(max_shown)]
    held = ", ".join(f"{_label(feature_names, i, f'x[{i}]')} = {_fmt(med[i])}" for i in shown)
    more = f" (+{len(others) - len(shown)} more)" if len(shown) < len(others) else ""
    where = "the median" if len(others) == 1 else "their medians"
    return f"{_label(feature_names, f, f'x[{f}]')} varied; held at {where}: {held}{more}"


def _title_slice(ax, X, feature: int, feature_names) -> None:
    """Say on the axes which input is varied and where the others are held (several input columns only)."""
    if X is not None:
        text = describe_slice(X, feature, feature_names=feature_names, max_shown=2)
        if text:  # wrapped: side-by-side panels must not run into each other
            ax.set_title(textwrap.fill(text, 50), fontsize="small")


def _predict_dist(est, Xg) -> MixtureDistribution:
    if not hasattr(est, "predict_distribution"):
        raise TypeError(f"expected a fitted moekit estimator, got {type(est).__name__}")
    return est.predict_distribution(_frame(est, Xg))


# ------------------------------------------------------------ mixture views
def _leaves(dist) -> tuple[torch.Tensor, list]:
    """Leaf log-weights (n, L) of a (possibly nested) mixture and its L leaves.

    Each leaf is ``(distribution, k)``: ``k`` is None for a distribution with
    batch (n,), or the index along the expert axis of a stacked (n, K) one.
    """
    groups = flatten_leaves(dist)
    leaves = [(g.dist, k if g.stacked else None) for g in groups for k in range(g.log_weights.shape[1])]
    return torch.cat([g.log_weights for g in groups], dim=1), leaves


def _leaf_attr(leaf, attr: str) -> torch.Tensor:
    d, k = leaf
    t = getattr(d, attr)
    return t if k is None else t[:, k]


def _leaf_log_prob(leaf, value: torch.Tensor) -> torch.Tensor:
    d, k = leaf
    if k is None:
        return d.log_prob(value)
    ev = len(d.event_shape)
    return d.log_prob(value.unsqueeze(value.dim() - ev)).select(-1, k)


def _is_discrete(dist) -> bool:
    try:
        return dist._is_discrete()
    except (AttributeError, NotImplementedError):
        return False


def _targets(est, y, target: int):
    """(y column as (n,) float array or None, index of the target column, number of targets)."""
    if y is None:
        return None, int(target), None
    ya = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
    if ya.ndim == 1:
        if target not in (0, -1):
            raise ValueError(f"y has one column, so target must be 0, got {target!r}")
        return ya, 0, 1
    j = _check_index(target, ya.shape[1], "target", "target columns")
    return ya[:, j], j, ya.shape[1]


def _is_classifier(est) -> bool:
    return hasattr(est, "classes_")


def _label(names, i, default):
    if names is not None and i < len(names):
        return str(names[i])
    return default


def _modes_for_plot(mix: MixtureDistribution, dens: np.ndarray, y_grid: np.ndarray):
    """Modes of each column's mixture: (xi, yi, weight) arrays.

    Uses :func:`moekit.inference.find_modes` (exact) when the family has
    modes; otherwise the local maxima of the density on the plotted grid,
    with the density's share of the column as weight.
    """
    try:
        m = find_modes(mix, min_weight=0.05).numpy()
        rows, cols = np.nonzero(np.isfinite(m.weights))
        return rows, m.modes[rows, cols], m.weights[rows, cols]
    except (TypeError, ValueError):
        pass  # a family without modes in this sense: fall back to the grid
    xi, yi, wi = [], [], []
    for i in range(dens.shape[1]):
        col = dens[:, i]
        if not np.isfinite(col).all() or col.max() <= 0:
            continue
        inner = (col[1:-1] > col[:-2]) & (col[1:-1] >= col[2:]) & (col[1:-1] > 0.05 * col.max())
        for j in np.flatnonzero(inner) + 1:
            xi.append(i)
            yi.append(y_grid[j])
            wi.append(col[j] / col.max())
    return np.asarray(xi, dtype=int), np.asarray(yi), np.asarray(wi)


# ================================================================== plots
def plot_data(X, y, *, feature: int = 0, target: int = 0, ax=None, feature_names=None, target_names=None, **scatter_kw):
    """Scatter of one target column against one input column.

    Parameters
    ----------
    X : array (n, d_x)
    y : array (n,) or (n, d_y); class labels are shown as colours on a second axis-free plot.
    feature, target : int
        Columns to show.
    ax : matplotlib Axes, optional
    feature_names, target_names : list of str, optional
        Axis labels.
    **scatter_kw
        Passed to ``ax.scatter``.

    Returns
    -------
    matplotlib.axes.Axes

    Shapes
    ------
    X (n, d_x) (a 1-D X (n,) is read as d_x = 1); y (n,) or (n, d_y)
    numbers, or (n,) class labels; one point per row.

    Examples
    --------
    >>> import numpy as np
    >>> ax = plot_data(np.arange(5.0)[:, None], np.arange(5.0))
    >>> len(ax.collections)
    1
    """
    Xa = _as_2d(X, "X")
    f = _check_index(feature, Xa.shape[1], "feature", "input columns")
    ya = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
    if ya.shape[0] != Xa.shape[0]:
        raise ValueError(f"X has {Xa.shape[0]} rows but y has {ya.shape[0]}")
    ax = _get_ax(ax)
    kw = {"s": 8, "alpha": 0.6, "color": "0.25", "edgecolors": "none"}
    kw.update(scatter_kw)
    if ya.dtype.kind not in "biuf":  # labels: one colour per class, y axis = class index
        classes, idx = np.unique(ya, return_inverse=True)
        cols = _colors(len(classes))
        kw.pop("color", None)
        for c, name in enumerate(classes):
            sel = idx == c
            ax.scatter(Xa[sel, f], np.full(sel.sum(), c), color=cols[c], label=str(name), **kw)
        ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    else:
        yy = ya if ya.ndim == 1 else ya[:, _check_index(target, ya.shape[1], "target", "target columns")]
        ax.scatter(Xa[:, f], yy, **kw)
    ax.set_xlabel(_label(feature_names, f, f"x[{f}]"))
    ax.set_ylabel(_label(target_names, target if ya.ndim > 1 else 0, "y"))
    return ax


@torch.no_grad()
def plot_conditional_density(
    estimator,
    X=None,
    y=None,
    *,
    feature: int = 0,
    target: int = 0,
    n_grid: int = 200,
    x_range=None,
    y_range=None,
    show_modes: bool = True,
    show_data: bool = True,
    cmap: str = "magma",
    ax=None,
    feature_names=None,
    target_names=None,
):
    """Heat map of the conditional density p(y | x) with its modes and the data.

    Parameters
    ----------
    estimator : fitted moekit regressor
        Anything with ``predict_distribution`` (MoE, HME, MDN).
    X : array (n, d_x), optional
        The data (sets the x range and the median of the other columns).
    y : array (n,) or (n, d_y), optional
        Plotted as points over the heat map; sets the y range.
    feature : int
        Input column on the horizontal axis.
    target : int
        Target column on the vertical axis (its marginal density for vector y).
    n_grid : int
        Grid points along each axis.
    x_range, y_range : (low, high), optional
    show_modes, show_data : bool
        Draw the modes of p(y | x) at every grid x (sized by their probability
        mass; modes lighter than 0.05 are left out) and the data.
    cmap : str
    ax : matplotlib Axes, optional
    feature_names, target_names : list of str, optional

    Returns
    -------
    matplotlib.axes.Axes

    Shapes
    ------
    The heat map is (n_grid, n_grid): rows are y values, columns x values.

    Examples
    --------
    >>> from moekit import MoERegressor
    >>> from moekit.datasets import make_inverse_sine
    >>> X, y = make_inverse_sine(300, random_state=0)
    >>> est = MoERegressor(n_experts=3, random_state=0).fit(X, y)
    >>> ax = plot_conditional_density(est, X, y, n_grid=50)
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('x[0]', 'y')
    """
    if _is_classifier(estimator):
        raise TypeError("plot_conditional_density is for regressors (a density over a continuous or count y); "
                        "for a classifier use plot_experts, which shows class probabilities")
    grid, Xg = _slice(estimator, X, feature, n_grid, x_range)
    f = _check_index(feature, Xg.shape[1], "feature", "input columns")
    ycol, j, _ = _targets(estimator, y, target)
    dist = _predict_dist(estimator, Xg)
    mix = marginal(dist, j)
    if y_range is None:
        if ycol is not None:
            lo, hi = float(np.min(ycol)), float(np.max(ycol))
        else:
            m = mix.mean.cpu().numpy()
            s = mix.stddev.cpu().numpy()
            lo, hi = float(np.min(m - 3 * s)), float(np.max(m + 3 * s))
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = (float(v) for v in y_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"y_range must be (low, high) with low < high, got {y_range!r}")
    if _is_discrete(mix):
        y_grid = np.arange(math.floor(max(lo, 0)), math.ceil(hi) + 1, dtype=float)
    else:
        y_grid = np.linspace(lo, hi, int(n_grid))
    dtype = mix.log_weights.dtype
    dev = mix.log_weights.device
    value = torch.as_tensor(y_grid, dtype=dtype, device=dev)[:, None].expand(len(y_grid), len(grid))
    dens = mix.log_prob(value).exp().cpu().numpy()  # (G_y, G_x)
    if not np.isfinite(dens).all():
        raise FloatingPointError("the conditional density is not finite on the plotted grid; the model is degenerate")
    ax = _get_ax(ax)
    step_x = (grid[1] - grid[0]) / 2
    step_y = (y_grid[1] - y_grid[0]) / 2 if len(y_grid) > 1 else 0.5
    from matplotlib.colors import PowerNorm  # matplotlib is slow to import: loaded when a plot is drawn

    ax.imshow(
        dens,
        origin="lower",
        aspect="auto",
        cmap=cmap,
        extent=(grid[0] - step_x, grid[-1] + step_x, y_grid[0] - step_y, y_grid[-1] + step_y),
        norm=PowerNorm(gamma=0.5, vmin=0, vmax=float(dens.max()) if dens.max() > 0 else 1.0),
        interpolation="nearest",
    )
    if show_data and X is not None and ycol is not None:
        Xa = _as_2d(X, "X")
        ax.scatter(Xa[:, f], ycol, s=4, color="#7fd3ff", alpha=0.5, edgecolors="none", label="data")
    if show_modes:
        xi, yi, wi = _modes_for_plot(mix, dens, y_grid)
        if len(xi):
            ax.scatter(grid[xi], yi, s=1 + 14 * np.asarray(wi), color="white", edgecolors="none", label="modes")
    ax.set_xlim(grid[0], grid[-1])
    ax.set_ylim(y_grid[0] - step_y, y_grid[-1] + step_y)
    _title_slice(ax, X, f, feature_names)
    ax.set_xlabel(_label(feature_names, f, f"x[{f}]"))
    ax.set_ylabel(_label(target_names, j, "y" if len(dist.event_shape) == 0 else f"y[{j}]"))
    return ax


@torch.no_grad()
def plot_gate(estimator, X=None, *, feature: int = 0, n_grid: int = 200, x_range=None, leaves: bool = True,
              stacked: bool = True, ax=None, feature_names=None):
    """Mixing weights over one input column: who is trusted where.

    Parameters
    ----------
    estimator : fitted moekit estimator
    X : array (n, d_x), optional
    feature : int
    n_grid : int
    x_range : (low, high), optional
    leaves : bool
        For a hierarchy, the probability of every leaf (product of the gates
        along its path); otherwise the top gate only.
    stacked : bool
        Stacked areas (they sum to one) or one line per expert.
    ax : matplotlib Axes, optional
    feature_names : list of str, optional

    Returns
    -------
    matplotlib.axes.Axes

    Shapes
    ------
    X (n, d_x) (d_x as the estimator was fitted on); the plotted weights are
    (n_grid, K) for the K experts of the top gate, or (n_grid, L) for the L
    leaves of a hierarchy with ``leaves=True``; one curve or area per column.

    Examples
    --------
    >>> from moekit import MoERegressor
    >>> from moekit.datasets import load_tonedata
    >>> d = load_tonedata()
    >>> est = MoERegressor(n_experts=2, random_state=0).fit(d.data, d.target)
    >>> ax = plot_gate(est, d.data)
    >>> [float(v) for v in ax.get_ylim()]
    [0.0, 1.0]
    """
    grid, Xg = _slice(estimator, X, feature, n_grid, x_range)
    f = _check_index(feature, Xg.shape[1], "feature", "input columns")
    dist = _predict_dist(estimator, Xg)
    lw = _leaves(dist)[0] if leaves else dist.log_weights
    w = lw.exp().cpu().numpy()
    ax = _get_ax(ax)
    cols = _colors(w.shape[1])
    labels = [f"expert {k}" if w.shape[1] == dist.log_weights.shape[1] else f"leaf {k}" for k in range(w.shape[1])]
    if stacked:
        ax.stackplot(grid, w.T, colors=cols, labels=labels, alpha=0.85)
    else:
        for k in range(w.shape[1]):
            ax.plot(grid, w[:, k], color=cols[k], label=labels[k])
    ax.set_xlim(grid[0], grid[-1])
    ax.set_ylim(0.0, 1.0)
    _title_slice(ax, X, f, feature_names)
    ax.set_xlabel(_label(feature_names, f, f"x[{f}]"))
    ax.set_ylabel("gate probability")
    if w.shape[1] <= 10:
        ax.legend(loc="upper right", fontsize="small", framealpha=0.7)
    return ax


@torch.no_grad()
def plot_experts(estimator, X, y=None, *, feature: int = 0, target: int = 0, n_grid: int = 200, x_range=None,
                 min_weight: float = 0.01, ax=None, feature_names=None, target_names=None):
    """Each expert's prediction over one input column, drawn where the gate trusts it.

    For regressors: every expert's (leaf's) mean of y; for classifiers: every
    expert's probability of class ``target``.  The line's opacity follows the
    expert's gate probability at that x, and the line stops where that
    probability falls below ``min_weight``: an expert is not extrapolated
    where the model does not use it (a steep local line would otherwise run
    far outside the data and stretch the axis).  The x axis spans the data
    (or ``x_range``); for regressors the y axis spans the data's y when ``y``
    is given, else the drawn lines.  With ``y`` the data points are coloured
    by their most responsible expert (largest posterior).

    Parameters
    ----------
    estimator : fitted moekit estimator
    X : array (n, d_x)
    y : array, optional
    feature, target : int
        Input column on the horizontal axis; target column (regression) or
        class index (classification) on the vertical axis.
    n_grid : int
    x_range : (low, high), optional
    min_weight : float, default=0.01
        Draw an expert's line only where its gate probability (a leaf's path
        probability in a hierarchy) is at least this; 0 draws every line over
        the whole range.
    ax : matplotlib Axes, optional
    feature_names, target_names : list of str, optional

    Returns
    -------
    matplotlib.axes.Axes

    Shapes
    ------
    X (n, d_x); y (n,) or (n, d_y) for regressors, (n,) class labels for
    classifiers, rows matching X.  One line collection per expert (per leaf
    L of a hierarchy) with at most n_grid - 1 segments.

    Examples
    --------
    >>> from moekit import MoERegressor
    >>> from moekit.datasets import load_tonedata
    >>> d = load_tonedata()
    >>> est = MoERegressor(n_experts=2, random_state=0).fit(d.data, d.target)
    >>> ax = plot_experts(est, d.data, d.target)
    >>> len(ax.collections)  # one line per expert and the data
    3
    """
    from matplotlib.collections import LineCollection  # matplotlib is slow to import: loaded when a plot is drawn

    if not (isinstance(min_weight, numbers.Real) and 0 <= min_weight < 1):
        raise ValueError(f"min_weight must be a number in [0, 1), got {min_weight!r}")
    grid, Xg = _slice(estimator, X, feature, n_grid, x_range)
    f = _check_index(feature, Xg.shape[1], "feature", "input columns")
    clf = _is_classifier(estimator)
    dist = _predict_dist(estimator, Xg)
    lw, leaves = _leaves(dist)
    L = len(leaves)
    w = lw.exp().cpu().numpy()
    cols = _colors(L)
    ax = _get_ax(ax)
    j = 0
    drawn: list = []  # y values of the drawn segments
    for k, leaf in enumerate(leaves):
        if clf:
            p = _leaf_attr(leaf, "probs")
            if p.dim() == 1:  # Bernoulli: probability of the second class
                p = torch.stack([1 - p, p], dim=-1)
            j = _check_index(target, p.shape[-1], "target", "classes")
            curve = p[:, j].cpu().numpy()
        else:
            m = _leaf_attr(leaf, "mean")
            if m.dim() > 1:
                j = _check_index(target, m.shape[1], "target", "target columns")
                m = m[:, j]
            curve = m.cpu().numpy()
        pts = np.column_stack([grid, curve])
        wk = 0.5 * (w[:-1, k] + w[1:, k])  # the gate's trust in expert k along each segment
        keep = (wk >= min_weight) & np.isfinite(pts[:-1, 1]) & np.isfinite(pts[1:, 1])
        segs = np.stack([pts[:-1], pts[1:]], axis=1)[keep]
        rgba = np.tile(np.asarray(cols[k]), (len(segs), 1))
        rgba[:, 3] = np.clip(wk[keep], 0.08, 1.0)
        ax.add_collection(LineCollection(segs, colors=rgba, linewidths=2.0, label=f"expert {k}"))
        if len(segs):
            drawn.append(segs[:, :, 1].ravel())
    if y is not None:
        Xa = _as_2d(X, "X")
        ya = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
        if ya.shape[0] != Xa.shape[0]:
            raise ValueError(f"X has {Xa.shape[0]} rows but y has {ya.shape[0]}")
        dd = _predict_dist(estimator, Xa)
        lw_d, leaves_d = _leaves(dd)
        if clf:
            yt = torch.as_tensor(np.searchsorted(estimator.classes_, ya), device=lw_d.device)
            yplot = (ya == estimator.classes_[j]).astype(float)
        else:
            yt = torch.as_tensor(ya.astype(float), dtype=lw_d.dtype, device=lw_d.device)
            yplot = ya if ya.ndim == 1 else ya[:, j]
        joint = lw_d + torch.stack([_leaf_log_prob(lf, yt) for lf in leaves_d], dim=1)
        best = joint.argmax(1).cpu().numpy()
        ax.scatter(Xa[:, f], yplot, s=8, c=[cols[b] for b in best], alpha=0.6, edgecolors="none")
    ax.set_xlim(grid[0], grid[-1])
    if clf:
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel(f"P(class {estimator.classes_[j]!s})")
    else:
        span = np.asarray(yplot, dtype=float) if y is not None else np.concatenate(drawn) if drawn else np.zeros(0)
        span = span[np.isfinite(span)]
        if len(span):  # the data's range (else the drawn lines'), not a far extrapolation
            lo, hi = float(span.min()), float(span.max())
            pad = 0.05 * (hi - lo) if hi > lo else 0.5 * max(abs(lo), 1.0)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_ylabel(_label(target_names, j, "y" if len(dist.event_shape) == 0 else f"y[{j}]"))
    _title_slice(ax, X, f, feature_names)
    ax.set_xlabel(_label(feature_names, f, f"x[{f}]"))
    return ax


# ------------------------------------------------------------ HME tree
_SHORT = {"LinearGaussianExpert": "linear", "StudentTExpert": "Student-t", "PoissonExpert": "Poisson",
          "LogisticExpert": "logistic", "SoftmaxExpert": "softmax", "MLPExpert": "MLP", "SklearnExpert": "sklearn"}


def _short_family(name: str) -> str:
    return _SHORT.get(name, name.replace("Expert", ""))


@torch.no_grad()
def tree_summary(model, x: torch.Tensor | None) -> list[dict]:
    """The nodes of a mixture of experts seen as a tree (a flat MoE is a tree of depth one).

    Parameters
    ----------
    model : MixtureOfExperts
        Flat, stacked or nested (an HME).
    x : tensor (n, d_x) or None
        With x, every node gets its routing share on these rows.

    Returns
    -------
    list of dict
        One per node, parents before their children: ``path`` (tuple of branch indices from the
        root), ``label`` (the gate's or the expert family's short name), ``leaf`` (bool) and
        ``share`` (mean probability over the rows of reaching the node; ``None`` without x).
    """
    nodes: list[dict] = []

    def share(logp):
        return None if logp is None else float(logp.exp().mean())

    def visit(node, path, logp, xx):
        nodes.append({"path": path, "label": type(node.gate).__name__.replace("Gate", " gate"), "leaf": False,
                      "share": share(logp)})
        lg = None if xx is None else node.log_gate(xx)
        xe = None if xx is None else node.expert_input(xx)
        for k in range(node.n_experts):
            clp = None if lg is None else logp + lg[:, k]
            child = None if node.is_stacked else node.experts[k]
            if isinstance(child, MixtureOfExperts):
                visit(child, path + (k,), clp, xe)
            else:
                fam = _short_family(type(node.experts if node.is_stacked else child).__name__)
                nodes.append({"path": path + (k,), "label": fam, "leaf": True, "share": share(clp)})

    visit(model, (), None if x is None else torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), x)
    return nodes


@torch.no_grad()
def plot_hme_tree(estimator, X=None, *, ax=None, max_leaves: int = 64):
    """The tree of gates and experts, with the share of the data routed along every edge.

    Works for any mixture of experts (a flat MoE is a tree of depth one) and
    for hierarchies of any depth and branching; for a mixture density network
    (one network, no tree) the components are drawn under one root.

    Parameters
    ----------
    estimator : fitted moekit estimator, or a ``MixtureOfExperts`` module
    X : array (n, d_x), optional
        With X, every node shows the mean probability of reaching it (its
        routing share; the leaves' shares sum to one).
    ax : matplotlib Axes, optional
    max_leaves : int
        Refuse to draw trees with more leaves than this (they would be unreadable).

    Returns
    -------
    matplotlib.axes.Axes

    Shapes
    ------
    X (n, d_x) (a 1-D X (n,) is read as d_x = 1); the share shown at a node
    is the mean over the n rows of its path probability.

    Examples
    --------
    >>> from moekit import MoERegressor
    >>> from moekit.datasets import load_tonedata
    >>> d = load_tonedata()
    >>> est = MoERegressor(n_experts=2, random_state=0).fit(d.data, d.target)
    >>> ax = plot_hme_tree(est, d.data)
    >>> shares = [float(t.get_text()) for t in ax.texts if t.get_text()[0].isdigit()]
    >>> len(ax.texts), round(sum(shares), 2)  # root, 2 leaves, 2 edge shares summing to one
    (5, 1.0)
    """
    model = getattr(estimator, "model_", estimator)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected a fitted moekit estimator or a mixture module, got {type(estimator).__name__}")
    x = None
    if X is not None:
        Xa = _as_2d(X, "X")
        p = next((q for q in model.parameters() if q.is_floating_point()), None)
        x = torch.as_tensor(Xa, dtype=p.dtype if p is not None else torch.float64,
                            device=p.device if p is not None else "cpu")
    if isinstance(model, MixtureOfExperts):
        nodes = tree_summary(model, x)
    else:  # one network: its components under one root
        if x is None:
            raise ValueError("for a model that is not a tree of gates, pass X to show its components")
        w = model(x).weights.mean(0).cpu().numpy()
        nodes = [{"path": (), "label": type(model).__name__, "leaf": False, "share": 1.0}]
        nodes += [{"path": (k,), "label": f"component {k}", "leaf": True, "share": float(w[k])} for k in range(len(w))]
    leaves = [n for n in nodes if n["leaf"]]
    if len(leaves) > max_leaves:
        raise ValueError(f"the tree has {len(leaves)} leaves, more than max_leaves={max_leaves}; raise max_leaves to draw it")
    pos = {}
    for i, n in enumerate(leaves):
        pos[n["path"]] = i
    for n in sorted(nodes, key=lambda n: -len(n["path"])):
        if not n["leaf"]:
            kids = [pos[m["path"]] for m in nodes if len(m["path"]) == len(n["path"]) + 1 and m["path"][:-1] == n["path"]]
            pos[n["path"]] = float(np.mean(kids))
    depth = max(len(n["path"]) for n in nodes)
    ax = _get_ax(ax)
    for n in nodes:
        xp, yp = pos[n["path"]], -len(n["path"])
        if n["path"]:
            parent = n["path"][:-1]
            ax.plot([pos[parent], xp], [yp + 1, yp], color="0.5", lw=1 + 3 * (n["share"] or 0), zorder=1)
            if n["share"] is not None:
                ax.text((pos[parent] + xp) / 2, yp + 0.5, f"{n['share']:.3f}", ha="center", va="center",
                        fontsize=8, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none"}, zorder=3)
        face = "#cfe8cf" if n["leaf"] else "#cfdcf0"
        ax.text(xp, yp, n["label"], ha="center", va="center", fontsize=8, zorder=4,
                bbox={"boxstyle": "round,pad=0.3", "fc": face, "ec": "0.4"})
    ax.set_xlim(-0.7, len(leaves) - 0.3)
    ax.set_ylim(-depth - 0.5, 0.5)
    ax.set_axis_off()
    return ax


def plot_convergence(result, *, ax=None, validation: bool = True):
    """Mean per-sample log-likelihood per EM iteration or epoch.

    Parameters
    ----------
    result : fitted estimator, FitResult, or sequence of float
        An estimator's ``fit_result_`` (or ``mean_log_likelihood_history_``) is used.
    ax : matplotlib Axes, optional
    validation : bool
        Also draw the validation curve of gradient training when there is one.

    Returns
    -------
    matplotlib.axes.Axes

    Shapes
    ------
    A sequence of floats is read as a history (I,) of I iterations (any
    array is flattened); one point per iteration or epoch.

    Examples
    --------
    >>> ax = plot_convergence([-1.5, -1.2, -1.1, -1.05])
    >>> ax.get_ylabel()
    'mean log-likelihood per row'
    """
    hist, val, method = None, None, None
    fr = getattr(result, "fit_result_", result)
    if hasattr(fr, "history") and not isinstance(fr, (list, tuple, np.ndarray)):
        hist = list(fr.history)
        val = getattr(fr, "validation_history", None)
        method = getattr(fr, "method", None)
    elif hasattr(result, "mean_log_likelihood_history_"):
        hist = list(result.mean_log_likelihood_history_)
    else:
        hist = list(np.asarray(result, dtype=float).ravel())
    if len(hist) == 0:
        raise ValueError("the history is empty: nothing to plot")
    ax = _get_ax(ax)
    ax.plot(np.arange(len(hist)), hist, marker="o" if len(hist) <= 30 else None, ms=3, label="training")
    if validation and val:
        ax.plot(np.arange(len(val)), val, label="validation")
        ax.legend(fontsize="small")
    ax.set_xlabel("EM iteration" if method in (None, "em") else "epoch")
    ax.set_ylabel("mean log-likelihood per row")
    return ax


def plot_robot_arm(angles, *, l1: float = 0.8, l2: float = 0.2, target=None, ax=None, color=None, label=None,
                   alpha: float = 0.9, linewidth: float = 2.0):
    """Configurations of Bishop's two-link planar arm (see :func:`moekit.datasets.make_robot_arm`).

    The base is at the origin, the elbow at ``L1 (cos t1, sin t1)`` and the
    hand at ``elbow - L2 (cos(t1 + t2), sin(t1 + t2))``.

    Parameters
    ----------
    angles : array (2,) or (m, 2)
        Joint angles (t1, t2) of one or several configurations.
    l1, l2 : float
        Link lengths.
    target : array (2,) or (m, 2), optional
        Hand positions to mark (a cross).
    ax : matplotlib Axes, optional
    color, label : optional
        Line colour and legend label (the label is given to the first arm only).
    alpha, linewidth : float

    Returns
    -------
    matplotlib.axes.Axes

    Shapes
    ------
    angles (2,) or (m, 2): m arms drawn; target (2,) or (k, 2) hand
    positions (any array with an even number of entries is read as pairs).

    Examples
    --------
    >>> import numpy as np
    >>> ax = plot_robot_arm(np.array([[0.5, 2.0], [1.0, 4.0]]), target=[0.6, 0.5])
    >>> len(ax.lines)
    3
    """
    a = np.asarray(angles, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"angles must have shape (2,) or (m, 2), got {np.shape(angles)}")
    if not np.isfinite(a).all():
        raise ValueError("angles hold NaN or infinite values")
    ax = _get_ax(ax)
    t1, t2 = a[:, 0], a[:, 1]
    ex, ey = l1 * np.cos(t1), l1 * np.sin(t1)
    hx, hy = ex - l2 * np.cos(t1 + t2), ey - l2 * np.sin(t1 + t2)
    for i in range(len(a)):
        ax.plot([0, ex[i], hx[i]], [0, ey[i], hy[i]], "-o", color=color, alpha=alpha, lw=linewidth, ms=3,
                label=label if i == 0 else None)
    if target is not None:
        t = np.asarray(target, dtype=float).reshape(-1, 2)
        ax.plot(t[:, 0], t[:, 1], "x", color="black", ms=9, mew=2, linestyle="none")
    ax.set_aspect("equal")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    return ax
