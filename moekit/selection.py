"""Choosing the number of experts: fit one estimator per candidate K and keep the best by a criterion.

The criteria are the estimators' own ``bic``, ``aic`` and ``icl`` (the one place they are computed) on the data
the models were fitted to, or the mean log-likelihood of rows held out from fitting (the choice for
networks, whose parameter count says little about their flexibility).

An information criterion means nothing for a model with at least as many free parameters as rows (it
can interpolate the data): such a K is skipped, with a warning, and listed in
:attr:`SelectionResult.skipped`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CRITERIA", "LikelihoodRatioResult", "SelectionResult", "bootstrap_lrt", "log_likelihood_scorer",
           "parse_n_experts", "select_n_experts"]

CRITERIA = {
    "bic": "BIC (lower is better)",
    "aic": "AIC (lower is better)",
    "icl": "ICL (lower is better)",
    "heldout": "held-out mean log-likelihood (higher is better)",
    "cv": "cross-validated mean log-likelihood (higher is better)",
}
_MAX_K = 64


@dataclass
class SelectionResult:
    """What :func:`select_n_experts` found.

    Attributes
    ----------
    criterion : str
        'bic', 'aic', 'icl', 'heldout' or 'cv'.
    scores : dict of int to float
        The criterion for every candidate K, in the order tried.
    n_experts : int
        The chosen K.
    estimator : estimator
        The chosen model, fitted: for 'bic', 'aic' and 'icl' the fit that was scored, for 'heldout' and 'cv' a refit
        on every row.
    skipped : dict of int to int
        For 'bic', 'aic' and 'icl': the candidates K left out because their models have at least as many
        free parameters as the data has rows, with those numbers of parameters (not in ``scores``).
    fits : dict of int to dict
        For every K fitted on every row: its ``log_likelihood``, ``n_parameters``, ``bic``, ``aic`` and
        ``icl`` (those the estimator provides); see :attr:`table`.
    """

    criterion: str
    scores: dict
    n_experts: int
    estimator: object
    skipped: dict = field(default_factory=dict)
    fits: dict = field(default_factory=dict)

    @property
    def description(self) -> str:
        """The criterion in words, with its direction, e.g. 'BIC (lower is better)'."""
        return CRITERIA[self.criterion]

    @property
    def table(self):
        """Every candidate K in a pandas DataFrame, as R's ``stepFlexmix`` prints it.

        Columns ``n_experts``, ``log_likelihood`` (total, on every row), ``n_parameters``, ``bic``,
        ``aic``, ``icl``, ``heldout_log_likelihood`` (the mean held-out log-likelihood, for 'heldout'
        and 'cv'; NaN otherwise), ``chosen`` and ``note`` (why a K was skipped). Statistics an
        estimator does not provide are NaN.
        """
        import pandas as pd  # slow to import; only for this table

        rows = []
        for k in sorted(set(self.fits) | set(self.skipped) | set(self.scores)):
            f = self.fits.get(k, {})
            note = (f"skipped: {self.skipped[k]} parameters, not fewer than the rows" if k in self.skipped else "")
            rows.append({"n_experts": k, "log_likelihood": f.get("log_likelihood", math.nan),
                         "n_parameters": f.get("n_parameters", self.skipped.get(k, math.nan)),
                         "bic": f.get("bic", math.nan), "aic": f.get("aic", math.nan), "icl": f.get("icl", math.nan),
                         "heldout_log_likelihood": self.scores.get(k, math.nan) if self.criterion in ("heldout", "cv")
                         else math.nan,
                         "chosen": k == self.n_experts, "note": note})
        return pd.DataFrame(rows)


def parse_n_experts(spec: str) -> list[int]:
    """Candidate numbers of experts from text: a range '1..8' (or '1-8') or a list '2,3,5'.

    Raises
    ------
    ValueError
        text that is neither, or a number outside 1..64.

    Examples
    --------
    >>> parse_n_experts("1..4"), parse_n_experts("5,2,3")
    ([1, 2, 3, 4], [2, 3, 5])
    """
    s = spec.strip()
    try:
        if ".." in s:
            a, b = s.split("..", 1)
            ks = list(range(int(a), int(b) + 1))
        elif "-" in s[1:]:
            a, b = s.split("-", 1)
            ks = list(range(int(a), int(b) + 1))
        else:
            ks = sorted({int(p) for p in s.split(",") if p.strip()})
    except ValueError:
        raise ValueError(f"{spec!r}: give a range such as 1..8 or a list such as 2,3,5") from None
    if not ks or min(ks) < 1 or max(ks) > _MAX_K:
        raise ValueError(f"{spec!r}: the numbers of experts must lie between 1 and {_MAX_K}")
    return ks


def _rows(a, idx):
    """Rows ``idx`` of an array or a DataFrame (keeping its column names)."""
    return a.iloc[idx] if hasattr(a, "iloc") else np.asarray(a)[idx]


def _fit(est, X, y, sample_weight):
    return est.fit(X, y) if sample_weight is None else est.fit(X, y, sample_weight=sample_weight)


def select_n_experts(
    make_estimator: Callable[[int], object],
    X,
    y,
    ks: Sequence[int],
    criterion: str = "bic",
    sample_weight=None,
    *,
    validation_fraction: float = 0.2,
    n_folds: int = 5,
    random_state=None,
    callback: Callable[[int], None] | None = None,
) -> SelectionResult:
    """Fit ``make_estimator(k)`` for every k in ``ks`` and choose the best k.

    Parameters
    ----------
    make_estimator : callable
        ``k -> unfitted estimator`` with k experts (or components, or branching).
    X, y : array-like
        The data, as the estimator's ``fit`` takes them.
    ks : sequence of int
        Candidate values, each at least 1 (see :func:`parse_n_experts` for text).
    criterion : {'bic', 'aic', 'icl', 'heldout', 'cv'}
        'bic', 'aic' and 'icl': the estimator's ``bic(X, y)`` / ``aic(X, y)`` / ``icl(X, y)`` after
        fitting on every row (lower is better). 'heldout': each K is fitted on the rows left after holding out
        ``validation_fraction`` of them at random, and scored by the mean log-likelihood of the
        held-out rows (higher is better); the best K is then refitted on every row. 'cv': the same
        with ``n_folds``-fold cross-validation, every row held out once (its score is the mean
        held-out log-likelihood over all rows).
    sample_weight : array-like (n,), optional
        Passed to every ``fit``; with 'heldout' the held-out mean is weighted too. The estimators'
        ``bic``/``aic``/``icl`` count every row once, so those criteria do not take weights.
    validation_fraction : float
        Share of the rows held out for 'heldout' (at least one row).
    n_folds : int
        Folds for 'cv' (at least 2, at most the number of rows).
    random_state : int or numpy Generator, optional
        Seeds the held-out split and the folds.
    callback : callable, optional
        Called with k just before each fit (each fold's, for 'cv'; and before each K's fit on every row, which
        'heldout' and 'cv' make for the table and the chosen model): for progress bars, and to know which fit raised.

    Returns
    -------
    SelectionResult
        On ties the first K in ``ks`` wins.  With 'bic', 'aic' and 'icl' a K whose model has at least as
        many free parameters as rows is skipped (not fitted when its size is known before fitting),
        with a warning, and listed in ``skipped``.

    Raises
    ------
    ValueError
        A bad argument, or (for 'bic', 'aic' and 'icl') every K skipped.

    Examples
    --------
    >>> from moekit import MoERegressor
    >>> from moekit.datasets import load_tonedata
    >>> d = load_tonedata()
    >>> res = select_n_experts(lambda k: MoERegressor(n_experts=k, random_state=0), d.data, d.target, [1, 2, 3])
    >>> res.n_experts, res.estimator.n_experts_, sorted(res.scores) == [1, 2, 3]
    (3, 3, True)
    >>> list(res.table.columns)
    ['n_experts', 'log_likelihood', 'n_parameters', 'bic', 'aic', 'icl', 'heldout_log_likelihood', 'chosen', 'note']
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of integers >= 1, got {ks!r}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks lists a value twice: {ks!r}")
    ks = [int(k) for k in ks]
    if sample_weight is not None and criterion not in ("heldout", "cv"):
        raise ValueError(f"criterion={criterion!r} does not take sample_weight (the estimators' bic, aic and icl count "
                         "every row once); use criterion='heldout' or 'cv', or leave the weights out")
    notify = callback or (lambda k: None)
    scores: dict[int, float] = {}
    models: dict = {}
    if criterion in ("heldout", "cv"):
        n = len(X)
        perm = np.random.default_rng(random_state).permutation(n)
        if criterion == "heldout":
            if not 0 < validation_fraction < 1:
                raise ValueError(f"validation_fraction must lie strictly between 0 and 1, got {validation_fraction!r}")
            n_val = max(1, int(round(validation_fraction * n)))
            splits = [(perm[n_val:], perm[:n_val])]  # (fitted rows, held-out rows)
        else:
            if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or not 2 <= n_folds <= n:
                raise ValueError(f"n_folds must be an integer between 2 and the number of rows ({n}), got {n_folds!r}")
            splits = [(np.setdiff1d(np.arange(n), val), val) for val in np.array_split(perm, int(n_folds))]
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
        for k in ks:
            lls = []
            for tr, val in splits:
                notify(k)
                est = _fit(make_estimator(k), _rows(X, tr), _rows(y, tr), None if w is None else w[tr])
                lls.append(est.score_samples(_rows(X, val), _rows(y, val)))
            ll = np.concatenate(lls)
            held_out = np.concatenate([val for _, val in splits])
            scores[k] = float(np.mean(ll) if w is None else np.average(ll, weights=w[held_out]))
            notify(k)
            models[k] = _fit(make_estimator(k), X, y, sample_weight)  # on every row: the table's statistics
        best = max(ks, key=lambda k: scores[k])
        return SelectionResult(criterion, scores, best, models[best],
                               fits={k: _fit_statistics(m, X, y) for k, m in models.items()})
    n_rows = len(X)
    skipped = {}
    for k in ks:
        est = make_estimator(k)
        n_par = _free_parameters(est, X, y)
        if n_par is None or n_par < n_rows:
            notify(k)
            est = _fit(est, X, y, None)
            n_par = _fitted_parameters(est)  # after pruning
        if n_par is not None and n_par >= n_rows:
            skipped[k] = n_par
            continue
        scores[k] = float(getattr(est, criterion)(X, y))
        models[k] = est
    if skipped:
        listed = ", ".join(f"K={k} ({p} parameters)" for k, p in skipped.items())
        advice = ("use fewer experts, fewer input columns, more rows, or criterion='heldout'")
        if not scores:
            raise ValueError(
                f"ks: every candidate has at least as many free parameters as the data has rows ({n_rows}), so "
                f"{criterion.upper()} cannot compare them: {listed}; {advice}"
            )
        warnings.warn(
            f"{criterion.upper()} skipped {listed}: at least as many free parameters as the {n_rows} rows, so the "
            f"criterion means nothing for them; {advice}",
            UserWarning,
            stacklevel=2,
        )
    best = min(scores, key=lambda k: scores[k])
    return SelectionResult(criterion, scores, best, models[best], skipped,
                           fits={k: _fit_statistics(m, X, y) for k, m in models.items()})


def _fit_statistics(est, X, y) -> dict:
    """A fitted estimator's log-likelihood, parameters, BIC, AIC and ICL on (X, y) (those it provides)."""
    out = {}
    ll = getattr(est, "log_likelihood_", None)
    if ll is not None:
        out["log_likelihood"] = float(ll)
    n_par = _fitted_parameters(est)
    if n_par is not None:
        out["n_parameters"] = n_par
    for name in ("bic", "aic", "icl"):
        fn = getattr(est, name, None)
        if callable(fn):
            out[name] = float(fn(X, y))
    return out


def _fitted_parameters(est) -> int | None:
    """Free parameters of a fitted moekit estimator's model, or None for another kind of estimator."""
    model = getattr(est, "model_", None)
    return int(model.n_parameters()) if hasattr(model, "n_parameters") else None


def _free_parameters(est, X, y) -> int | None:
    """Free parameters of the model ``est.fit(X, y)`` would start from, or None where only a fit tells."""
    count = getattr(est, "count_parameters", None)
    if count is None:
        return None
    try:
        return int(count(X, y))
    except NotImplementedError:
        return None


def log_likelihood_scorer(estimator, X, y) -> float:
    """Mean log-likelihood of (X, y) under a fitted estimator: a scikit-learn scorer (higher is better).

    Pass it as ``scoring=`` to ``GridSearchCV`` or ``cross_val_score`` to choose the number of
    experts (or any other setting) by held-out log-likelihood; the estimators' own ``score`` is R²
    of the conditional mean (accuracy for classifiers), which cannot.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import GridSearchCV
    >>> from moekit import MoERegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, (300, 1))
    >>> y = np.where(rng.random(300) < 0.5, 2 * X[:, 0], -2 * X[:, 0]) + 0.1 * rng.normal(size=300)
    >>> grid = GridSearchCV(MoERegressor(random_state=0), {"n_experts": [1, 2]}, scoring=log_likelihood_scorer)
    >>> grid.fit(X, y).best_params_
    {'n_experts': 2}
    """
    return float(np.mean(estimator.score_samples(X, y)))


@dataclass
class LikelihoodRatioResult:
    """A parametric-bootstrap likelihood-ratio test of K experts against K + 1 (:func:`bootstrap_lrt`).

    Attributes
    ----------
    n_experts : int
        K, the null hypothesis' number of experts (the alternative has K + 1).
    statistic : float
        ``2 (log L_{K+1} - log L_K)`` on the data.
    p_value : float
        ``(1 + #{bootstrap statistics >= statistic}) / (n_boot + 1)``.
    null_statistics : numpy.ndarray
        The statistic on each data set simulated from the fitted K-expert model: (n_boot,).
    null, alternative : estimator
        The K- and (K + 1)-expert fits to the data.
    """

    n_experts: int
    statistic: float
    p_value: float
    null_statistics: np.ndarray
    null: object
    alternative: object


def _lrt_statistic(make_estimator, k, X, y, sample_weight):
    a = _fit(make_estimator(k), X, y, sample_weight)
    b = _fit(make_estimator(k + 1), X, y, sample_weight)
    return 2.0 * (float(b.log_likelihood_) - float(a.log_likelihood_)), a, b


def bootstrap_lrt(make_estimator: Callable, X, y, n_experts: int, *, n_boot: int = 99, sample_weight=None,
                  random_state=None, callback: Callable | None = None) -> LikelihoodRatioResult:
    """Test K experts against K + 1 by a parametric bootstrap of the likelihood-ratio statistic.

    The usual chi-squared reference does not hold for the number of components of a mixture (the
    null lies on the boundary of the alternative); instead the statistic's null distribution is
    simulated (McLachlan 1987; mixtools' ``boot.comp``): ``n_boot`` data sets of y drawn from the
    fitted K-expert model at the observed x, each refitted with K and K + 1 experts.

    Parameters
    ----------
    make_estimator : callable
        ``make_estimator(k)`` returns an unfitted estimator with k experts (``fit`` and
        ``log_likelihood_``, ``sample_y``).
    X, y : array-like
        The data.
    n_experts : int
        K (>= 1).
    n_boot : int, default=99
        Bootstrap data sets (>= 2).
    sample_weight : array-like, optional
        Row weights, used in every fit.
    random_state : int, optional
        Seed of the simulated data sets.
    callback : callable, optional
        Called with the replicate's index after each bootstrap replicate (progress).

    Returns
    -------
    LikelihoodRatioResult

    Shapes
    ------
    X : (n, d_x); y : (n,) or (n, d_y); sample_weight : (n,).

    Examples
    --------
    >>> import numpy as np
    >>> from moekit import MoERegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, (200, 1))
    >>> y = np.where(rng.random(200) < 0.5, 2 * X[:, 0], -2 * X[:, 0]) + 0.1 * rng.normal(size=200)
    >>> res = bootstrap_lrt(lambda k: MoERegressor(n_experts=k, random_state=0), X, y, 1, n_boot=4, random_state=0)
    >>> res.p_value  # two regimes: one expert is rejected
    0.2
    """
    if not (isinstance(n_experts, (int, np.integer)) and not isinstance(n_experts, bool) and 1 <= n_experts < _MAX_K):
        raise ValueError(f"n_experts must be an integer between 1 and {_MAX_K - 1} (K, tested against K + 1), "
                         f"got {n_experts!r}")
    if not (isinstance(n_boot, (int, np.integer)) and not isinstance(n_boot, bool) and n_boot >= 2):
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    k = int(n_experts)
    observed, null, alt = _lrt_statistic(make_estimator, k, X, y, sample_weight)
    rng = np.random.default_rng(random_state)
    stats = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        y_star = null.sample_y(X, random_state=int(rng.integers(2**31 - 1)))
        y_star = np.asarray(y_star).reshape(np.shape(y)) if np.ndim(y) == 1 else np.asarray(y_star)
        stats[b] = _lrt_statistic(make_estimator, k, X, y_star, sample_weight)[0]
        if callback is not None:
            callback(b)
    p = (1.0 + float(np.sum(stats >= observed))) / (n_boot + 1.0)
    return LikelihoodRatioResult(k, observed, p, stats, null, alt)
