"""``MDNRegressor.fit(source)``: a source within ``memory_budget`` is the fit of its arrays; a larger one trains on
minibatches streamed from it, with the arrays' standardisation (summed in a first pass) and a validation split by
row content that does not depend on the batches; predictions read a source batch by batch."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from moekit.data import ArrayBatches, ParquetSource
from moekit.estimators import MDNRegressor
from moekit.estimators.mdn_streaming import row_uniforms

KW = dict(n_components=2, hidden_layer_sizes=(8,), max_epochs=8, batch_size=32, random_state=0)
BUFFERS = ("x_loc", "x_scale", "y_loc", "y_scale")


class Files(ArrayBatches):
    """Rows in memory posing as a source read from files (``in_memory`` False): fit must stream it."""

    in_memory = False

    def __init__(self, x, y, w=None, batch_size=64, names=None, **extras):
        as_t = lambda a: None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
        super().__init__(as_t(x), as_t(y), as_t(w), batch_size=batch_size)
        self.feature_names, self.extras, self.passes = names, extras, 0

    def __iter__(self):
        self.passes += 1
        for b in super().__iter__():
            yield b if not self.extras else type(b)(b.x, b.y, b.weight, **{k: torch.zeros(len(b)) for k in self.extras})

    def shard(self, rank, world_size):
        s = super().shard(rank, world_size)
        return Files(s.x, s.y, s.weight, batch_size=self.batch_size, names=self.feature_names)


def _data(n=400, seed=0, d_y=1):
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.uniform(-1, 1, n) * 50 + 7, np.full(n, 3.0)])  # a constant input: scale 1
    u = (x[:, 0] - 7) / 50
    y = np.where(rng.random(n) < 0.5, np.sin(3 * u), -u) + 0.1 * rng.normal(size=n)
    if d_y == 2:
        y = np.column_stack([y, 100 * y + rng.normal(size=n)])
    w = rng.uniform(0.5, 1.5, n)
    w[::17] = 0.0  # rows of weight 0 count nowhere
    return x, y, w


def _buffers(est):
    return {k: getattr(est.model_, k).detach().double() for k in BUFFERS}


def _state(est):
    return est.model_.state_dict()


# ------------------------------------------------------------------ within memory_budget: the arrays' fit
def test_a_source_within_memory_budget_is_the_fit_of_its_arrays(tmp_path):
    x, y, w = _data()
    folder = tmp_path / "data"
    folder.mkdir()
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": y, "w": w})
    df.iloc[:250].to_parquet(folder / "p0.parquet")
    df.iloc[250:].to_parquet(folder / "p1.parquet")
    got = MDNRegressor(**KW).fit(ParquetSource(folder, target="y", weight="w", batch_rows=64))
    want = MDNRegressor(**KW).fit(df[["a", "b"]], y, sample_weight=w)
    assert list(got.feature_names_in_) == ["a", "b"]
    assert got.mean_log_likelihood_history_.tolist() == want.mean_log_likelihood_history_.tolist()
    for k, v in _state(want).items():
        assert torch.equal(_state(got)[k], v), k
    # an in-memory source of several batches, and a file-like one within the budget, too
    for src in (ArrayBatches(*(torch.as_tensor(a) for a in (x, y, w)), batch_size=50), Files(x, y, w)):
        est = MDNRegressor(**KW).fit(src, memory_budget=10**9)
        ref = MDNRegressor(**KW).fit(x, y, sample_weight=w)
        assert all(torch.equal(_state(est)[k], v) for k, v in _state(ref).items())


# ------------------------------------------------------------------ larger: streamed minibatches
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("d_y", [1, 2])
def test_streamed_standardisation_is_that_of_the_arrays(dtype, d_y):
    x, y, w = _data(d_y=d_y)
    kw = dict(KW, max_epochs=1, dtype=dtype)  # the standardisation (buffers: not trained)
    src = Files(x, y, w, batch_size=37)
    streamed = MDNRegressor(**kw).fit(src, memory_budget=0)
    arrays = MDNRegressor(**kw).fit(x, y, sample_weight=w)
    assert src.passes >= 2  # the first pass, then the epochs' passes: streamed
    got, want = _buffers(streamed), _buffers(arrays)
    rtol = 1e-12 if dtype == "float64" else 2e-7  # Chan's merge of the batches' sums; rounded to the dtype
    for k in BUFFERS:
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=0)
    assert got["x_scale"][1] == 1.0  # the constant input column
    assert streamed.model_.n_outputs == arrays.model_.n_outputs and streamed.n_features_in_ == 2


def test_streamed_fit_with_missing_values_dropped_standardises_the_kept_rows():
    x, y, w = _data()
    x[[3, 50, 333], 0] = np.nan
    y[[7]] = np.nan
    kw = dict(KW, max_epochs=1, dtype="float64", missing="drop")
    with pytest.warns(UserWarning, match="dropped 4 of 400 rows"):
        streamed = MDNRegressor(**kw).fit(Files(x, y, w, batch_size=64), memory_budget=0)
    with pytest.warns(UserWarning, match="dropped 4 of 400 rows"):
        arrays = MDNRegressor(**kw).fit(x, y, sample_weight=w)
    assert streamed.n_rows_dropped_ == arrays.n_rows_dropped_ == 4
    for k in BUFFERS:
        torch.testing.assert_close(_buffers(streamed)[k], _buffers(arrays)[k], rtol=1e-12, atol=0)


def test_streamed_fit_trains_with_a_validation_split_that_does_not_depend_on_the_batches():
    x, y, w = _data(600)
    kw = dict(KW, max_epochs=15, dtype="float64")
    a_src = Files(x, y, w, batch_size=64)
    a = MDNRegressor(**kw).fit(a_src, memory_budget=0)  # validation rows read again at every epoch
    b = MDNRegressor(**kw).fit(Files(x, y, w, batch_size=100), memory_budget=0)
    ra, rb = a.fit_result_, b.fit_result_
    # the same rows held out however the source is cut: a seeded share of the rows, by their values
    assert ra.train_weight == pytest.approx(rb.train_weight, rel=1e-12)
    assert 0.85 < ra.train_weight / ra.total_weight < 0.95
    assert ra.total_weight == pytest.approx(w.sum(), rel=1e-12)
    assert len(a.validation_history_) == a.n_iter_ + 1 and a.n_iter_ == 15
    assert a.validation_history_[-1] > a.validation_history_[0] + 0.1  # it learns
    # the validation rows held in memory (they fit this budget; the whole source does not): the same fit
    c_src = Files(x, y, w, batch_size=64)
    c = MDNRegressor(**kw).fit(c_src, memory_budget=600 * 4 * 8 // 2)
    np.testing.assert_allclose(c.validation_history_, a.validation_history_, rtol=1e-10)
    np.testing.assert_allclose(c.mean_log_likelihood_history_, a.mean_log_likelihood_history_, rtol=1e-10)
    assert c_src.passes < a_src.passes  # one pass an epoch fewer
    # the reported mean log-likelihood is over every row (training and validation) in y's units
    lp = a.score_samples(x, y)
    assert a.mean_log_likelihood_ == pytest.approx(float((w * lp).sum() / w.sum()), rel=1e-9)
    # the split: rows of equal values fall alike, whatever their position
    u = row_uniforms(torch.as_tensor(x), torch.as_tensor(y), 5)
    assert np.array_equal(u[::-1], row_uniforms(x[::-1], y[::-1], 5)) and not np.array_equal(u, row_uniforms(x, y, 6))


def test_predictions_on_a_source_equal_those_on_arrays():
    x, y, w = _data(300)
    est = MDNRegressor(**dict(KW, dtype="float64")).fit(x, y, sample_weight=w)
    src = Files(x, y, w, batch_size=70)
    assert np.array_equal(est.predict(src), est.predict(x))
    assert np.array_equal(est.predict_gate(src), est.predict_gate(x))
    assert np.array_equal(est.predict_quantiles(src, [0.1, 0.9]), est.predict_quantiles(x, [0.1, 0.9]))
    assert np.array_equal(est.score_samples(src), est.score_samples(x, y))
    assert np.array_equal(est.responsibilities(src), est.responsibilities(x, y))
    assert est.score(src) == pytest.approx(est.score(x, y, sample_weight=w), rel=1e-12)
    assert [p.shape for p in est.iter_predict(src, "predict_gate")] == [(70, 2)] * 4 + [(20, 2)]
    # sample_y: a source of one batch draws as its arrays; batches draw afresh (one random stream)
    one = Files(x, y, w, batch_size=None)
    assert np.array_equal(est.sample_y(one, 3, random_state=4), est.sample_y(x, 3, random_state=4))
    twice = Files(np.vstack([x[:50], x[:50]]), np.r_[y[:50], y[:50]], batch_size=50)
    s = est.sample_y(twice, 2, random_state=4)
    assert s.shape == (100, 2) and not np.array_equal(s[:50], s[50:])


def test_bad_sources_are_clear_errors():
    x, y, w = _data(120)
    src = Files(x, y, w, batch_size=50)
    with pytest.raises(ValueError, match="y is given, but X is a source of batches"):
        MDNRegressor().fit(src, y)
    with pytest.raises(ValueError, match="cannot be checkpointed"):
        MDNRegressor().fit(src, checkpoint="c.ckpt")
    with pytest.raises(ValueError, match="with process_group, MDNRegressor trains .* exceeds memory_budget"):
        MDNRegressor().fit(src, process_group=object(), memory_budget=0)
    for kw in ({}, {"memory_budget": 0}):
        with pytest.raises(ValueError, match="y is constant"):
            MDNRegressor(**KW).fit(Files(x, np.full(120, 2.5), w), **kw)
    bad = x.copy()
    bad[60, 0] = np.nan
    with pytest.raises(ValueError, match=r"Input X contains NaN in rows \[10\].*missing='drop'.*batch 1 of the source"):
        MDNRegressor(**KW).fit(Files(bad, y, w, batch_size=50), memory_budget=0)
    with pytest.raises(ValueError, match="the source has a offset column, but MDNRegressor takes no offset"):
        MDNRegressor(**KW).fit(Files(x, y, w, offset=True), memory_budget=0)
    with pytest.raises(ValueError, match="the source has no rows"):
        MDNRegressor(**KW).fit(Files(x[:0], y[:0], w[:0]), memory_budget=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = MDNRegressor(**dict(KW, max_epochs=1)).fit(src, memory_budget=0)
    with pytest.raises(ValueError, match="y is given, but X is a source"):
        est.score_samples(src, y)
    with pytest.raises(ValueError, match="responsibilities needs y"):
        est.responsibilities(x)
