"""``est.fit(source)``, predictions on a source, and ``warm_start``: a source gives the fit of its rows as arrays.

A source read whole (held in memory, or within ``memory_budget``) is fitted as the arrays it holds;
a larger one is streamed (``memory_budget=0`` here), its extras folded into the model's x and y
batch by batch.  Either way the parameters, the log-likelihood and the whole history equal the
array fit's up to the order of floating-point sums (1e-10).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

import moekit
from moekit import HMERegressor, MDNRegressor, MoEClassifier, MoERegressor
from moekit.data import ArrayBatches, Batch, sample_indices

TOL = 1e-10
EXTRAS = ("offset", "trials", "lower", "upper")


class RawSource:
    """Raw batches as a file source gives them (extras in their own fields), read anew on every pass."""

    in_memory = False

    def __init__(self, x, y, weight=None, *, batch_size=64, names=None, levels=None, **extras):
        self.x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        self.y = torch.as_tensor(np.asarray(y))
        n = self.x.shape[0]
        self.weight = torch.ones(n, dtype=torch.float64) if weight is None else torch.as_tensor(weight, dtype=torch.float64)
        self.extras = {k: (None if v is None else torch.as_tensor(v, dtype=torch.float64)) for k, v in extras.items()}
        self.batch_size, self.feature_names, self.target_levels = batch_size, names, levels
        self.passes = 0

    @property
    def n_rows(self):
        return int(self.x.shape[0])

    def _rows(self, index) -> Batch:
        return Batch(self.x[index], self.y[index], self.weight[index],
                     **{k: (None if self.extras.get(k) is None else self.extras[k][index]) for k in EXTRAS})

    def __iter__(self):
        self.passes += 1
        for i in range(0, self.n_rows, self.batch_size):
            yield self._rows(slice(i, i + self.batch_size))

    def shard(self, rank, world_size):
        bounds = np.linspace(0, self.n_rows, world_size + 1).round().astype(int)
        s = slice(int(bounds[rank]), int(bounds[rank + 1]))
        return RawSource(self.x[s], self.y[s], self.weight[s], batch_size=self.batch_size, names=self.feature_names,
                         levels=self.target_levels, **{k: (None if v is None else v[s]) for k, v in self.extras.items()})

    def sample(self, max_rows, seed):
        idx = sample_indices(self.n_rows, max_rows, seed)
        return self._rows(slice(None) if idx is None else torch.as_tensor(idx))


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    z = rng.random(n) < 1 / (1 + np.exp(-1.5 * X[:, 0]))
    y = np.where(z, 1 + X[:, 0], -1 + 0.5 * X[:, 1]) + 0.3 * rng.normal(size=n)
    w = rng.integers(0, 3, n).astype(float)
    return rng, X, y, w


def _same(a, b, tol=TOL):
    """Parameters, log-likelihood and history equal."""
    sa, sb = a.model_.state_dict(), b.model_.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=tol, msg=k)
    assert a.n_iter_ == b.n_iter_
    assert a.log_likelihood_ == pytest.approx(b.log_likelihood_, rel=tol, abs=tol)
    np.testing.assert_allclose(a.mean_log_likelihood_history_, b.mean_log_likelihood_history_, rtol=0, atol=tol)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        from sklearn.exceptions import ConvergenceWarning
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        yield


# ------------------------------------------------------------------ fit(source) == fit(arrays)
@pytest.mark.parametrize("init", ["kmeans", "auto"])
def test_regressor_with_weights_streamed_and_in_memory_equal_arrays(init):
    _, X, y, w = _data()
    a = MoERegressor(random_state=0, init=init).fit(X, y, sample_weight=w)
    src = RawSource(X, y, w, batch_size=37)
    b = MoERegressor(random_state=0, init=init).fit(src, memory_budget=0)
    if init == "kmeans":
        assert src.passes > a.n_iter_  # streamed: every EM pass read the source again
    _same(a, b)
    c = MoERegressor(random_state=0, init=init).fit(ArrayBatches(torch.as_tensor(X), torch.as_tensor(y),
                                                                 torch.as_tensor(w), batch_size=50))
    _same(a, c, tol=0)  # held in memory: read whole and fitted as the arrays
    assert b.n_features_in_ == 2 and not hasattr(b, "feature_names_in_")
    # standard errors summed over the batches, and the summary without data
    np.testing.assert_allclose(b.inference_["cov_sandwich"], a.inference_["cov_sandwich"], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(b.inference_["cov_hessian"], a.inference_["cov_hessian"], rtol=1e-8, atol=1e-12)
    assert b.inference_["n_samples"] == pytest.approx(w.sum())
    np.testing.assert_allclose(b.summary().table["std_error"], a.summary().table["std_error"], rtol=1e-7)


def test_predictions_on_a_source_equal_the_array_calls_and_stream_by_batch():
    _, X, y, w = _data()
    est = MoERegressor(random_state=0, init="kmeans").fit(X, y, sample_weight=w)
    src = RawSource(X, y, w, batch_size=64)
    np.testing.assert_allclose(est.predict(src), est.predict(X), rtol=0, atol=1e-13)
    np.testing.assert_allclose(est.score_samples(src), est.score_samples(X, y), rtol=0, atol=1e-12)
    np.testing.assert_allclose(est.predict_quantiles(src, [0.1, 0.9]), est.predict_quantiles(X, [0.1, 0.9]), atol=1e-10)
    assert est.score(src) == pytest.approx(est.score(X, y, sample_weight=w), rel=1e-12)
    parts = list(est.iter_predict(src, "predict_gate"))
    assert [len(p) for p in parts] == [64, 64, 64, 64, 44]
    np.testing.assert_allclose(np.concatenate(parts), est.predict_gate(X), atol=1e-14)
    r = list(est.iter_predict(src, "responsibilities"))
    np.testing.assert_allclose(np.concatenate(r), est.responsibilities(X, y), atol=1e-13)


def test_poisson_with_offset_streamed_equals_arrays():
    rng, X, _, _ = _data()
    off = rng.normal(scale=0.3, size=len(X))
    yc = rng.poisson(np.exp(0.3 + 0.5 * X[:, 0] + off)).astype(float)
    kw = dict(expert="poisson", random_state=0, init="random", max_iter=25)
    a = MoERegressor(**kw).fit(X, yc, offset=off)
    src = RawSource(X, yc, offset=off, batch_size=80)
    b = MoERegressor(**kw).fit(src, memory_budget=0)
    _same(a, b)
    assert b.extras_ == ("offset",) and b.extras_required_ == ("offset",)
    np.testing.assert_allclose(b.predict(src), a.predict(X, offset=off), atol=1e-12)
    with pytest.raises(ValueError, match="pass offset= here too"):
        b.predict(RawSource(X, yc))  # fitted with offsets: a source without them is refused


def test_censored_linear_experts_streamed_equal_arrays():
    _, X, y, _ = _data()
    lo, hi = np.full(len(y), -1.0), np.full(len(y), 1.5)
    yy = np.clip(y, -1.0, 1.5)
    kw = dict(random_state=0, init="random", max_iter=10)
    a = MoERegressor(**kw).fit(X, yy, lower=lo, upper=hi)
    src = RawSource(X, yy, lower=lo, upper=hi, batch_size=100)
    b = MoERegressor(**kw).fit(src, memory_budget=0)
    _same(a, b)
    assert b.censored_
    np.testing.assert_allclose(b.score_samples(src), a.score_samples(X, yy, lower=lo, upper=hi), atol=1e-12)


def test_classifier_with_text_labels_streamed_equals_arrays():
    rng, X, _, _ = _data()
    levels = ["b", "c", "a"]  # the source's order; classes_ are sorted, as np.unique sorts labels
    codes = np.clip(np.round(X[:, 0] + 0.8 * rng.normal(size=len(X))).astype(int) + 1, 0, 2)
    labels = np.asarray(levels)[codes]
    kw = dict(random_state=0, init="random", max_iter=30, alpha=0.1)
    a = MoEClassifier(**kw).fit(X, labels)
    src = RawSource(X, torch.as_tensor(codes), names=["u", "v"], levels=levels, batch_size=90)
    b = MoEClassifier(**kw).fit(src, memory_budget=0)
    _same(a, b)
    assert list(b.classes_) == ["a", "b", "c"] and list(b.feature_names_in_) == ["u", "v"]
    np.testing.assert_allclose(b.predict_proba(src), a.predict_proba(X), atol=1e-12)
    assert (b.predict(src) == a.predict(X)).all()
    assert b.score(src) == pytest.approx(a.score(X, labels))
    c = MoEClassifier(**kw).fit(src)  # small: read whole, fitted as the arrays
    _same(a, c, tol=0)


def test_hme_regressor_streamed_equals_arrays():
    _, X, y, w = _data(240)
    kw = dict(depth=2, random_state=0, alpha=0.1, max_iter=15)
    a = HMERegressor(**kw).fit(X, y, sample_weight=w)
    b = HMERegressor(**kw).fit(RawSource(X, y, w, batch_size=100), memory_budget=0)
    _same(a, b)
    assert b.n_leaves_ == a.n_leaves_ == 4 and b.grow_result_ is None


def test_missing_rows_dropped_per_batch_and_counted():
    _, X, y, w = _data()
    X = X.copy()
    X[[3, 70, 150], 1] = np.nan
    kw = dict(random_state=0, init="kmeans", missing="drop")
    a = MoERegressor(**kw).fit(X, y, sample_weight=w)
    with pytest.warns(UserWarning, match="dropped 3 of 300 rows"):
        b = MoERegressor(**kw).fit(RawSource(X, y, w, batch_size=64), memory_budget=0)
    assert a.n_rows_dropped_ == b.n_rows_dropped_ == 3
    _same(a, b)
    with pytest.raises(ValueError, match=r"Input X contains NaN in rows \[3\].*missing='drop'.*batch 0 of the source"):
        MoERegressor().fit(RawSource(X, y, batch_size=64), memory_budget=0)


def test_inputs_beyond_the_supported_range_are_rescaled_alike():
    _, X, y, w = _data()
    big = X * 2.0**600  # magnitudes near 1e180: squares overflow, so X is divided by a power of two inside
    a = MoERegressor(random_state=0, init="kmeans").fit(big, y, sample_weight=w)
    b = MoERegressor(random_state=0, init="kmeans").fit(RawSource(big, y, w), memory_budget=0)
    for (k, p), q in zip(a.model_.state_dict().items(), b.model_.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=0, msg=k)
    assert a.log_likelihood_ == pytest.approx(b.log_likelihood_, rel=1e-12)


# ------------------------------------------------------------------ warm_start
def test_warm_start_continues_from_the_fitted_model():
    _, X, y, w = _data()
    est = MoERegressor(random_state=0, init="kmeans", warm_start=True).fit(X, y, sample_weight=w)
    first = est.mean_log_likelihood_history_[-1]
    coef = est.model_.state_dict()["experts.coef"].clone()
    est.set_params(max_iter=3)
    est.fit(X, y, sample_weight=w)
    assert est.mean_log_likelihood_history_[0] == pytest.approx(first, rel=1e-13)
    assert est.n_iter_ <= 3 and est.fit_result_.best_init == 0
    assert (np.diff(est.mean_log_likelihood_history_) >= -1e-12).all()  # it goes on climbing from there
    torch.testing.assert_close(est.model_.state_dict()["experts.coef"], coef, rtol=0, atol=1e-3)
    # from a source too (streamed): the first value is the fitted model's on those rows
    second = est.mean_log_likelihood_history_[-1]
    est.fit(RawSource(X, y, w), memory_budget=0)
    assert est.mean_log_likelihood_history_[0] == pytest.approx(second, rel=1e-12)
    assert "warm_start" in est.get_params() and MoERegressor().warm_start is False


def test_warm_start_refuses_another_structure_or_other_columns():
    _, X, y, _ = _data()
    est = MoERegressor(random_state=0, warm_start=True, max_iter=20).fit(X, y)
    with pytest.raises(ValueError, match="warm_start=True continues.*another structure.*n_experts=2"):
        est.set_params(n_experts=3).fit(X, y)
    est.set_params(n_experts=2)
    with pytest.raises(ValueError, match="the number of features changed: fitted with 2, now 3"):
        est.fit(np.column_stack([X, X[:, 0]]), y)
    cold = MoERegressor(random_state=0, max_iter=20).fit(X, y)
    again = MoERegressor(random_state=0, max_iter=20).fit(X, y)
    _same(cold, again, tol=0)  # warm_start=False (default): every fit starts afresh


def test_warm_start_is_kept_in_model_files(tmp_path):
    _, X, y, _ = _data(120)
    est = MoERegressor(random_state=0, warm_start=True, max_iter=10).fit(X, y)
    path = tmp_path / "m.moekit"
    est.save(path)
    back = moekit.load(path)
    assert back.warm_start is True
    back.fit(X, y)
    assert back.mean_log_likelihood_history_[0] == pytest.approx(est.mean_log_likelihood_history_[-1], rel=1e-12)


# ------------------------------------------------------------------ Parquet
def test_parquet_source_with_a_category_equals_the_dataframe_fit(tmp_path):
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    files = pytest.importorskip("moekit.data.files")
    rng = np.random.default_rng(1)
    n = 240
    x = rng.normal(size=n)
    city = rng.choice(["a", "b", "c"], size=n)
    z = rng.random(n) < 1 / (1 + np.exp(-2 * x))
    y = np.where(z, 1 + x, -1 - 0.5 * x) + np.select([city == "b", city == "c"], [1.0, -1.0], 0.0) \
        + 0.3 * rng.normal(size=n)
    df = pd.DataFrame({"x": x, "city": city, "y": y, "w": rng.integers(1, 3, n).astype(float)})
    for i, part in enumerate((df.iloc[:100], df.iloc[100:])):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), os.path.join(tmp_path, f"part-{i}.parquet"),
                       row_group_size=40)
    src = files.ParquetSource(tmp_path, target="y", weight="w", batch_rows=64)
    kw = dict(random_state=0, init="kmeans")
    a = MoERegressor(**kw).fit(df[["x", "city"]], df["y"], sample_weight=df["w"])
    for budget in (None, 0):  # read whole, and streamed
        b = MoERegressor(**kw).fit(src, memory_budget=budget)
        _same(a, b)
        assert list(b.feature_names_in_) == ["x", "city[T.b]", "city[T.c]"]
        assert b.feature_encoding_ == a.feature_encoding_
        np.testing.assert_allclose(b.predict(df[["x", "city"]]), a.predict(df[["x", "city"]]), atol=1e-12)
        np.testing.assert_allclose(b.predict(src), a.predict(df[["x", "city"]]), atol=1e-12)
    out = tmp_path / "other"
    out.mkdir()
    pq.write_table(pa.Table.from_pandas(df[["x", "y"]], preserve_index=False), os.path.join(out, "p.parquet"))
    with pytest.raises(ValueError, match=r"the source's features \['x'\] are not those the model was fitted on"):
        b.predict(files.ParquetSource(out, target="y"))


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs_with_a_source_are_clear_errors():
    _, X, y, w = _data(120)
    src = RawSource(X, y, w)
    with pytest.raises(ValueError, match="y is given, but X is a source of batches.*call fit\\(source\\) alone"):
        MoERegressor().fit(src, y)
    with pytest.raises(ValueError, match="sample_weight is given, but X is a source"):
        MoERegressor().fit(src, sample_weight=w)
    with pytest.raises(ValueError, match="fit_method='gradient' cannot stream a source.*fit_method='em'"):
        MoERegressor(fit_method="gradient").fit(src, memory_budget=0)
    with pytest.raises(ValueError, match="no sufficient statistics, so it cannot stream"):
        MoERegressor(expert="mlp", hidden_layer_sizes=(2,)).fit(src, memory_budget=0)
    with pytest.raises(ValueError, match="grow=True .* cannot stream"):
        HMERegressor(grow=True).fit(src, memory_budget=0)
    with pytest.raises(ValueError, match="the source has a offset column, but MoEClassifier takes no offset"):
        MoEClassifier().fit(RawSource(X, (y > 0).astype(int), offset=np.zeros(len(y))), memory_budget=0)
    with pytest.raises(ValueError, match="a regressor needs numbers"):
        MoERegressor().fit(RawSource(X, torch.as_tensor((y > 0).astype(int)), levels=["no", "yes"]), memory_budget=0)
    with pytest.raises(ValueError, match="formula= reads a pandas DataFrame"):
        MoERegressor(formula="y ~ x").fit(src)
    with pytest.raises(ValueError, match="the source has no rows"):
        MoERegressor().fit(RawSource(X[:0], y[:0]), memory_budget=0)
    with pytest.raises(ValueError, match="MDNRegressor trained by minibatch gradients cannot be checkpointed"):
        MDNRegressor().fit(src, checkpoint="c.ckpt")
    with pytest.raises(ValueError, match="memory_budget is given, but X is not a source"):
        MoERegressor().fit(X, y, memory_budget=0)
    est = MoERegressor(random_state=0, max_iter=5).fit(X, y)
    with pytest.raises(ValueError, match="y is given, but X is a source of batches"):
        est.score_samples(src, y)
    with pytest.raises(ValueError, match="what must name a prediction method"):
        list(est.iter_predict(src, "fit"))
    bad = X.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match=r"Input X contains NaN or infinity in rows \[5\] of batch 0 of the source"):
        est.predict(RawSource(bad, y))
    with pytest.raises(ValueError, match="score_samples needs y"):
        est.score_samples(X)
    # a small gradient fit reads the source whole: it is the arrays' fit
    g = MoERegressor(fit_method="gradient", random_state=0, max_iter=3).fit(src)
    g2 = MoERegressor(fit_method="gradient", random_state=0, max_iter=3).fit(X, y, sample_weight=w)
    _same(g, g2, tol=0)
