"""Golden-value cases: each case is defined once here and used by ``record.py`` and ``test_golden.py``.

A case is a function returning a dict of plain values (lists, floats, ints,
bools, strings).  ``record.py`` runs every case against the code that is to be
preserved and writes ``golden_values.json``; ``test_golden.py`` runs them again
against the installed moekit and compares.

Rules that keep these cases valid across the redesign:

* only names importable from the top-level ``moekit`` package (and
  ``moekit.datasets``) are used: module paths will move;
* training histories are read from ``fit_result_.history`` / ``FitResult.history``
  (mean per-row log-likelihoods), never from ``log_likelihood_`` (whose meaning
  changes from a mean to a total);
* everything is deterministic: fixed seeds, data from ``numpy.random.default_rng``,
  ``torch.Generator`` or ``moekit.datasets``, and one torch thread.

Every case carries its tolerance class in ``CASES[name].tolerance``:
``"em"`` (compared to 1e-10, relative for large values) or ``"network"``
(neural networks, float32 models and gradient-trained trajectories: 1e-6).
``slow`` cases (more than about 8 s) are marked ``@pytest.mark.slow`` in the test.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from moekit import (
    HMEClassifier,
    HMERegressor,
    LinearGaussianExpert,
    MDNRegressor,
    MixtureDensityNetwork,
    MixtureOfExperts,
    MoEClassifier,
    MoERegressor,
    SoftmaxGate,
    StudentTExpert,
    build_tree,
    fit_em,
    fit_gradient,
    fit_mdn,
    fit_tree_em,
)
from moekit.datasets import load_npreg, load_tonedata, make_inverse_sine

torch.set_num_threads(1)

TOLERANCES = {"em": 1e-10, "network": 1e-6}

# number of query points for predictions (at most ~30 per case)
N_QUERY = 25
# training rows scored with score_samples
N_SCORE = 10


@dataclass(frozen=True)
class Case:
    name: str
    func: Callable[[], dict]
    tolerance: str  # "em" or "network"
    slow: bool = False


CASES: dict[str, Case] = {}


def case(tolerance: str = "em", slow: bool = False):
    """Register a case under its function's name."""
    if tolerance not in TOLERANCES:
        raise ValueError(tolerance)

    def deco(func):
        CASES[func.__name__] = Case(func.__name__, func, tolerance, slow)
        return func

    return deco


def run_case(name: str, return_warnings: bool = False):
    """Run one case and return its values as plain JSON-able objects.

    Warnings are caught (not shown); with ``return_warnings`` the pair
    ``(values, [(category name, message), ...])`` is returned.
    """
    c = CASES[name]
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = c.func()
    out = to_plain(out)
    out["tolerance"] = c.tolerance
    if return_warnings:
        return out, [(w.category.__name__, str(w.message)) for w in caught]
    return out


# ------------------------------------------------------------------ helpers
def to_plain(v):
    """Convert arrays, tensors, tuples and numpy scalars into lists and Python scalars (no rounding)."""
    if isinstance(v, dict):
        return {str(k): to_plain(x) for k, x in v.items()}
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def history_values(res, first: int | None = None) -> dict:
    """History (mean per-row log-likelihoods), n_iter, converged and final value of a FitResult."""
    h = [float(v) for v in res.history]
    out = {
        "history": h if first is None else h[:first],
        "history_len": len(h),
        "final": h[-1],
        "n_iter": int(res.n_iter),
        "converged": bool(res.converged),
    }
    return out


def modes_values(m) -> dict:
    """Everything ``predict_modes`` returns (a ``Modes`` tuple with extra attributes)."""
    modes, weights = m  # unpacks as a pair; the other fields are attributes
    out = {"modes": np.asarray(modes), "weights": np.asarray(weights)}
    for attr in ("covariances", "log_density", "n_modes"):
        out[attr] = np.asarray(getattr(m, attr))
    return out


def regressor_values(est, X, y, Xq, *, interval: bool = True, modes: bool = True, first: int | None = None,
                     experts: bool = True) -> dict:
    """History of ``fit_result_`` and predictions of a fitted regressor on the query grid."""
    out = history_values(est.fit_result_, first)
    out["predict"] = est.predict(Xq)
    if interval:
        out["predict_interval_0.9"] = est.predict_interval(Xq, 0.9)
    if modes:
        out["predict_modes"] = modes_values(est.predict_modes(Xq))
    out["score_samples"] = est.score_samples(X[:N_SCORE], y[:N_SCORE])
    if experts:  # MoE / HME estimators: experts (leaves) left after pruning, and the pruned ones
        out["n_experts"] = int(est.n_experts_)
        out["pruned"] = [int(i) for i in est.fit_result_.pruned]
    return out


def classifier_values(est, X, y, Xq) -> dict:
    out = history_values(est.fit_result_)
    out["predict_proba"] = est.predict_proba(Xq)
    out["predict"] = est.predict(Xq)
    out["score_samples"] = est.score_samples(X[:N_SCORE], y[:N_SCORE])
    out["pruned"] = [int(i) for i in est.fit_result_.pruned]
    return out


def grid(X, n: int = N_QUERY) -> np.ndarray:
    """A query grid spanning every column of X (column j: linspace over its range, rolled by 3 j)."""
    X = np.asarray(X, dtype=float)
    cols = [np.roll(np.linspace(X[:, j].min(), X[:, j].max(), n), 3 * j) for j in range(X.shape[1])]
    return np.column_stack(cols)


def tone():
    d = load_tonedata()
    return d.data, d.target


def two_lines(n=200, seed=0):
    """Two crossing lines y = 1 + 2x and y = 3 - 1.5x with Gaussian noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    z = rng.random(n) < 0.5
    y = np.where(z, 1 + 2 * x, 3 - 1.5 * x) + 0.2 * rng.normal(size=n)
    return x[:, None], y


def model_values(model, x, y, xq) -> dict:
    """Low-level predictions of a MixtureOfExperts: predictive mean on a grid and log_prob on rows."""
    with torch.no_grad():
        return {
            "mean": model(xq).mean,
            "log_prob": model.log_prob(x[:N_SCORE], y[:N_SCORE]),
        }


def fitresult_values(res) -> dict:
    out = history_values(res)
    out["pruned"] = [int(i) for i in res.pruned]
    return out


# =================================================================== MoERegressor
@case("em")
def moe_reg_default_tone():
    X, y = tone()
    est = MoERegressor(random_state=0).fit(X, y)
    return regressor_values(est, X, y, grid(X))


@case("em")
def moe_reg_ninit3_tone():
    X, y = tone()
    est = MoERegressor(n_experts=2, n_init=3, random_state=1).fit(X, y)
    return regressor_values(est, X, y, grid(X))


@case("em")
def moe_reg_kmeans_tone():
    X, y = tone()
    est = MoERegressor(n_experts=2, init="kmeans", random_state=0).fit(X, y)
    return regressor_values(est, X, y, grid(X))


@case("em")
def moe_reg_random3_twolines():
    X, y = two_lines()
    est = MoERegressor(n_experts=3, init="random", random_state=2).fit(X, y)
    return regressor_values(est, X, y, grid(X))


@case("em")
def moe_reg_sample_weight():
    X, y = two_lines(150, seed=3)
    w = np.random.default_rng(3).integers(0, 4, size=len(y))  # integer weights, some zero
    est = MoERegressor(n_experts=2, random_state=0).fit(X, y, sample_weight=w)
    return regressor_values(est, X, y, grid(X))


@case("em")
def moe_reg_constant_gate():
    X, y = two_lines(200, seed=4)
    est = MoERegressor(n_experts=2, gate="constant", n_init=2, random_state=0).fit(X, y)
    return regressor_values(est, X, y, grid(X))


@case("em")
def moe_reg_alpha_l2():
    X, y = tone()
    est = MoERegressor(n_experts=2, alpha=0.5, random_state=0).fit(X, y)
    return regressor_values(est, X, y, grid(X))


@case("em")
def moe_reg_gate_instance_l2():
    X, y = two_lines(200, seed=5)
    est = MoERegressor(n_experts=2, gate=SoftmaxGate(1, 2, l2=1.0), random_state=0).fit(X, y)
    return regressor_values(est, X, y, grid(X))


@case("em")
def moe_reg_feature_subsets():
    rng = np.random.default_rng(6)
    n = 240
    X = rng.normal(size=(n, 3))
    z = X[:, 0] > 0  # the gate needs column 0; the experts use columns 1 and 2
    y = np.where(z, 1 + X[:, 1] - 0.5 * X[:, 2], -1 - X[:, 1] + 2 * X[:, 2]) + 0.1 * rng.normal(size=n)
    est = MoERegressor(n_experts=2, gate_features=[0], expert_features=[1, 2], random_state=0).fit(X, y)
    return regressor_values(est, X, y, grid(X))


def _vector_y(seed=7, n=200):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    z = x + 0.3 * rng.normal(size=n) > 0
    e = rng.multivariate_normal([0, 0], [[0.04, 0.02], [0.02, 0.05]], size=n)
    y = np.column_stack([np.where(z, 1 + x, -1 - 2 * x), np.where(z, 0.5 * x, 2 - x)]) + e
    return x[:, None], y


@case("em")
def moe_reg_vector_full():
    X, y = _vector_y()
    est = MoERegressor(n_experts=2, covariance="full", random_state=0).fit(X, y)
    return regressor_values(est, X, y, grid(X), interval=False)


@case("em")
def moe_reg_vector_diag():
    X, y = _vector_y()
    est = MoERegressor(n_experts=2, covariance="diag", random_state=0).fit(X, y)
    return regressor_values(est, X, y, grid(X), interval=False)


@case("em")
def moe_reg_poisson_npreg():
    d = load_npreg()
    X, y = d.data, d.columns["yp"]
    est = MoERegressor(n_experts=2, expert="poisson", random_state=0).fit(X, y)
    # predict_interval / predict_modes raise TypeError for discrete y: record quantiles instead
    out = history_values(est.fit_result_)
    Xq = grid(X)
    out["predict"] = est.predict(Xq)
    out["predict_quantiles"] = est.predict_quantiles(Xq, [0.1, 0.5, 0.9])
    out["predict_gate"] = est.predict_gate(Xq)
    out["score_samples"] = est.score_samples(X[:N_SCORE], y[:N_SCORE])
    out["pruned"] = [int(i) for i in est.fit_result_.pruned]
    return out


@case("em")
def moe_reg_student_t():
    rng = np.random.default_rng(8)
    X, y = two_lines(200, seed=8)
    out_rows = rng.choice(len(y), 10, replace=False)
    y = y.copy()
    y[out_rows] += rng.choice([-4.0, 4.0], size=10)  # outliers
    est = MoERegressor(n_experts=2, expert="student_t", random_state=0, max_iter=100).fit(X, y)
    return regressor_values(est, X, y, grid(X))


@case("network")
def moe_reg_mlp_experts():
    X, y = tone()
    est = MoERegressor(n_experts=2, expert="mlp", hidden_layer_sizes=(8,), max_iter=25, random_state=0).fit(X, y)
    return regressor_values(est, X, y, grid(X))


@case("network")
def moe_reg_mlp_gate():
    X, y = two_lines(200, seed=9)
    est = MoERegressor(n_experts=2, gate="mlp", hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(X, y)
    return regressor_values(est, X, y, grid(X))


@case("em")
def moe_reg_sklearn_tree_expert():
    from sklearn.tree import DecisionTreeRegressor

    X, y = two_lines(160, seed=10)
    est = MoERegressor(
        n_experts=2, expert=DecisionTreeRegressor(max_depth=2, random_state=0), max_iter=30, random_state=0
    ).fit(X, y)
    return regressor_values(est, X, y, grid(X))


@case("network")
def moe_reg_gradient_adam():
    X, y = two_lines(200, seed=11)
    est = MoERegressor(n_experts=2, fit_method="gradient", init="kmeans", max_iter=40, batch_size=64,
                       random_state=0).fit(X, y)
    out = regressor_values(est, X, y, grid(X))
    vh = est.fit_result_.validation_history
    out["validation_history"] = None if vh is None else [float(v) for v in vh]
    return out


@case("network")
def moe_reg_gradient_lbfgs():
    X, y = tone()
    est = MoERegressor(n_experts=2, fit_method="gradient", optimizer="lbfgs", init="kmeans", max_iter=15,
                       random_state=0).fit(X, y)
    return regressor_values(est, X, y, grid(X))


# ================================================================== MoEClassifier
def _three_class(seed=12, n=300):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    logits = np.column_stack([2 * X[:, 0], -X[:, 0] + X[:, 1], X[:, 0] * X[:, 1]])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    return X, y


@case("em")
def moe_clf_three_class():
    X, y = _three_class()
    est = MoEClassifier(n_experts=2, random_state=0).fit(X, y)
    return classifier_values(est, X, y, grid(X))


@case("em")
def moe_clf_binary_xor():
    rng = np.random.default_rng(13)
    X = rng.normal(size=(200, 2))
    y = (X[:, 0] * X[:, 1] + 0.3 * rng.normal(size=200) > 0).astype(int)
    est = MoEClassifier(n_experts=3, n_init=2, random_state=0, max_iter=100).fit(X, y)
    return classifier_values(est, X, y, grid(X))


# ========================================================================== HME
def _zigzag(seed=14, n=300):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 1))
    y = np.abs(X[:, 0] - np.round(X[:, 0])) + 0.03 * rng.normal(size=n)
    return X, y


@case("em")
def hme_reg_depth2():
    X, y = _zigzag()
    est = HMERegressor(depth=2, branching=2, init="kmeans_x", random_state=0, max_iter=100).fit(X, y)
    out = regressor_values(est, X, y, grid(X))
    out["n_leaves"] = int(est.n_leaves_)
    return out


@case("em")
def hme_reg_grow():
    rng = np.random.default_rng(2)
    X = rng.uniform(-1, 1, size=(300, 1))
    y = np.abs(X[:, 0] - np.round(X[:, 0])) + 0.05 * rng.normal(size=300)  # grows to 4 leaves (max_leaves)
    est = HMERegressor(grow=True, max_leaves=4, random_state=0, max_iter=100).fit(X, y)
    out = regressor_values(est, X, y, grid(X))
    out["n_leaves"] = int(est.n_leaves_)
    out["depth"] = int(est.depth_)
    g = est.grow_result_
    out["grow_stopped"] = g.stopped
    out["grow_history"] = [
        {"n_leaves": int(h["n_leaves"]), "split": None if h["split"] is None else [int(i) for i in h["split"]],
         "gain": None if h["gain"] is None else float(h["gain"]),
         "train_log_likelihood": float(h["train_log_likelihood"]),
         "validation_log_likelihood": float(h["validation_log_likelihood"])}
        for h in g.history
    ]
    return out


@case("em")
def hme_clf_xor():
    rng = np.random.default_rng(16)
    X = rng.normal(size=(240, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    est = HMEClassifier(depth=2, branching=2, random_state=0, max_iter=60).fit(X, y)
    out = classifier_values(est, X, y, grid(X))
    out["n_leaves"] = int(est.n_leaves_)
    return out


# ==================================================================== low level
def _torch_data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1
    k = (x[:, 0] > -0.3).long() + (x[:, 0] > 0.4).long()
    slopes = torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64)
    icpt = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    y = icpt[k] + slopes[k] * x[:, 0] + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def _xq():
    return torch.linspace(-1, 1, N_QUERY, dtype=torch.float64)[:, None]


@case("em")
def low_fit_em_stacked():
    x, y = _torch_data()
    model = MixtureOfExperts(SoftmaxGate(1, 3), LinearGaussianExpert(1, n_experts=3))
    res = fit_em(model, x, y, random_state=0)
    return {**fitresult_values(res), **model_values(model, x, y, _xq())}


@case("em")
def low_fit_em_mixed_list():
    x, y = _torch_data(seed=1)
    model = MixtureOfExperts(SoftmaxGate(1, 3), [LinearGaussianExpert(1), StudentTExpert(1), LinearGaussianExpert(1)])
    res = fit_em(model, x, y, random_state=0, max_iter=80)
    return {**fitresult_values(res), **model_values(model, x, y, _xq())}


@case("em")
def low_fit_em_pruning():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(30, 1, generator=g, dtype=torch.float64)
    y = 1 + 2 * x[:, 0] + 0.1 * torch.randn(30, generator=g, dtype=torch.float64)
    model = MixtureOfExperts(SoftmaxGate(1, 5), LinearGaussianExpert(1, n_experts=5))
    res = fit_em(model, x, y, random_state=0, prune_threshold=0.15, max_iter=50)
    out = {**fitresult_values(res), **model_values(model, x, y, _xq())}
    out["n_experts"] = int(model.n_experts)
    return out


@case("em")
def low_tree_em():
    x, y = _torch_data(seed=3)
    tree = build_tree(1, depth=2, branching=2)
    res = fit_tree_em(tree, x, y, init="kmeans_x", n_init=2, random_state=0, max_iter=80)
    return {**fitresult_values(res), **model_values(tree, x, y, _xq())}


@case("network")
def low_fit_gradient_lbfgs():
    x, y = _torch_data(seed=4)
    model = MixtureOfExperts(SoftmaxGate(1, 3), LinearGaussianExpert(1, n_experts=3))
    res = fit_gradient(model, x, y, optimizer="lbfgs", init="kmeans", validation_fraction=0.0, max_epochs=15,
                       random_state=0)
    return {**history_values(res), **model_values(model, x, y, _xq())}


@case("network")
def low_fit_gradient_adam():
    x, y = _torch_data(seed=5, n=200)
    model = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2))
    res = fit_gradient(model, x, y, optimizer="adam", init="random", max_epochs=30, batch_size=50, random_state=0)
    out = {**history_values(res), **model_values(model, x, y, _xq())}
    out["validation_history"] = [float(v) for v in res.validation_history]
    return out


# ========================================================================== MDN
MDN_FIRST = 50


def _mdn_values(est, X, y):
    out = regressor_values(est, X, y, grid(X), first=MDN_FIRST, experts=False)
    vh = est.fit_result_.validation_history
    out["validation_history"] = None if vh is None else [float(v) for v in vh][:MDN_FIRST]
    out["best_epoch"] = int(est.best_epoch_)
    return out


@case("network")
def mdn_reg_inverse_sine():
    X, y = make_inverse_sine(500, random_state=0)
    est = MDNRegressor(n_components=3, hidden_layer_sizes=(32, 32), max_epochs=80, random_state=0).fit(X, y)
    return _mdn_values(est, X, y)


@case("network")
def mdn_reg_target_noise():
    X, y = make_inverse_sine(500, random_state=1)
    est = MDNRegressor(n_components=3, hidden_layer_sizes=(32, 32), max_epochs=80, target_noise=0.1,
                       random_state=0).fit(X, y)
    return _mdn_values(est, X, y)


@case("network")
def mdn_fit_mdn_direct():
    X, y = make_inverse_sine(400, random_state=2)
    x = torch.as_tensor(X, dtype=torch.float32)
    t = torch.as_tensor(y, dtype=torch.float32)
    net = MixtureDensityNetwork(1, n_components=3, hidden_layer_sizes=(16,),
                                generator=torch.Generator().manual_seed(0))
    res = fit_mdn(net, x, t, max_epochs=30, random_state=0)
    out = history_values(res, MDN_FIRST)
    out["validation_history"] = [float(v) for v in res.validation_history][:MDN_FIRST]
    xq = torch.linspace(float(x.min()), float(x.max()), N_QUERY, dtype=torch.float32)[:, None]
    with torch.no_grad():
        out["mean"] = net(xq).mean
        out["log_prob"] = net.log_prob(x[:N_SCORE], t[:N_SCORE])
    return out


# ==================================================================== comparing
def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numeric_array(v):
    """An ndarray if ``v`` is a number or a rectangular nested list of numbers, else None."""
    if _is_number(v):
        return np.asarray(v)
    if not isinstance(v, list):
        return None
    flat, stack = [], [v]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif _is_number(item):
            flat.append(item)
        else:
            return None
    try:
        arr = np.asarray(v)
    except ValueError:  # ragged
        return None
    if arr.dtype == object:
        return None
    return arr


def compare(golden, new, tol: float, where: str = "") -> None:
    """Assert that ``new`` equals ``golden``: same structure and list lengths, numbers within tolerance.

    Floats: ``|new - golden| <= tol * max(1, |golden|)`` (NaN matches NaN, infinities
    must match exactly); integers, booleans, strings and None exactly.
    """
    where = where or "<root>"
    if isinstance(golden, dict):
        assert isinstance(new, dict), f"{where}: expected a dict, got {type(new).__name__}"
        assert sorted(new) == sorted(golden), f"{where}: keys {sorted(new)} != golden keys {sorted(golden)}"
        for k in golden:
            compare(golden[k], new[k], tol, f"{where}.{k}" if where != "<root>" else k)
        return
    g_arr, n_arr = _numeric_array(golden), _numeric_array(new)
    if g_arr is not None and n_arr is not None:
        assert g_arr.shape == n_arr.shape, f"{where}: shape {n_arr.shape} != golden shape {g_arr.shape}"
        if g_arr.dtype.kind in "iu" and n_arr.dtype.kind in "iu":
            bad = np.flatnonzero(g_arr.reshape(-1) != n_arr.reshape(-1))
            assert bad.size == 0, (
                f"{where}: integers differ at {bad.size} place(s), first flat index {bad[0]}: "
                f"{n_arr.reshape(-1)[bad[0]]} != golden {g_arr.reshape(-1)[bad[0]]}"
            )
            return
        g = g_arr.astype(float).reshape(-1)
        a = n_arr.astype(float).reshape(-1)
        both_nan = np.isnan(g) & np.isnan(a)
        same_inf = np.isinf(g) & (g == a)
        err = np.abs(a - g)
        bound = tol * np.maximum(1.0, np.abs(g))
        ok = both_nan | same_inf | (err <= bound)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            i = bad[0]
            with np.errstate(invalid="ignore", divide="ignore"):
                worst = bad[np.nanargmax(np.where(np.isfinite(err[bad] / bound[bad]), err[bad] / bound[bad], np.inf))]
            raise AssertionError(
                f"{where}: {bad.size} of {g.size} value(s) differ beyond {tol:g} * max(1, |golden|); "
                f"first at flat index {i}: {a[i]!r} vs golden {g[i]!r}; "
                f"worst at flat index {worst}: {a[worst]!r} vs golden {g[worst]!r} (|diff| {err[worst]:.3g})"
            )
        return
    if isinstance(golden, list):
        assert isinstance(new, list), f"{where}: expected a list, got {type(new).__name__}"
        assert len(new) == len(golden), f"{where}: length {len(new)} != golden length {len(golden)}"
        for i, (g, n) in enumerate(zip(golden, new)):
            compare(g, n, tol, f"{where}[{i}]")
        return
    assert type(new) is type(golden) and new == golden, f"{where}: {new!r} != golden {golden!r}"


__all__ = ["CASES", "TOLERANCES", "compare", "run_case", "to_plain"]
