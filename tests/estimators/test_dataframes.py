"""pandas DataFrames in Python behave as tables in the command line: one encoder, one naming scheme.

Text and ``category`` columns are one-hot encoded by :mod:`moekit._encoding` (the command
line's ``build_schema`` / ``encode_features`` call the same functions), the encoding is recorded on
the estimator and applied to every later X, and model files keep it.
"""

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

import moekit
from moekit import HMEClassifier, MDNRegressor, MoEClassifier, MoERegressor
from moekit.cli import main
from moekit.cli.tables import build_schema, encode_features, read_table
from moekit._encoding import MAX_LEVELS, encode_frame, fit_frame_encoding

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N = 120


def _frame(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    g = rng.choice(["c", "a", "b"], n)
    h = pd.Categorical(rng.choice(["lo", "hi"], n), categories=["lo", "hi"])
    return pd.DataFrame({"x": x, "g": g, "h": h})


def _y(df, seed=1):
    rng = np.random.default_rng(seed)
    return 2 * df["x"].to_numpy() + 3 * (df["g"] == "b") - (df["h"] == "hi") + 0.1 * rng.normal(size=len(df))


@pytest.fixture(scope="module")
def fitted():
    df = _frame()
    return df, MoERegressor(n_experts=1, random_state=0).fit(df, _y(df))


def test_text_and_category_columns_are_one_hot_encoded(fitted):
    df, est = fitted
    assert list(est.feature_names_in_) == ["x", "g[T.b]", "g[T.c]", "h[T.hi]"]
    assert est.n_features_in_ == 4
    feats = est.feature_encoding_["features"]
    assert feats[0] == {"name": "x", "kind": "numeric"}
    assert feats[1] == {"name": "g", "kind": "categorical", "levels": ["a", "b", "c"]}  # sorted, reference 'a'
    assert feats[2] == {"name": "h", "kind": "categorical", "levels": ["lo", "hi"]}  # declared order, reference 'lo'
    coef_rmse = np.sqrt(np.mean((est.predict(df) - _y(df)) ** 2))
    assert coef_rmse < 0.2  # the categories carry the signal, so they were used


def test_python_and_command_line_share_the_encoding(tmp_path):
    df = _frame()
    df["h"] = df["h"].astype(str)  # a CSV has no declared categories: both sort the levels
    path = tmp_path / "d.csv"
    pcsv.write_csv(pa.table({c: df[c].tolist() for c in df.columns} | {"y": _y(df).tolist()}), path)
    schema = build_schema(read_table(str(path)), ["y"], None, None, "regression")
    enc = fit_frame_encoding(df)
    assert schema["features"] == enc["features"]
    assert schema["encoded_features"] == enc["encoded_features"] == ["x", "g[T.b]", "g[T.c]", "h[T.lo]"]
    np.testing.assert_array_equal(encode_features(read_table(str(path)), schema), encode_frame(df, enc))


def test_prediction_applies_the_same_encoding(fitted):
    df, est = fitted
    p = est.predict(df)
    np.testing.assert_array_equal(est.predict(df[["h", "x", "g"]]), p)  # columns found by name
    np.testing.assert_array_equal(est.predict(df.to_numpy()), p)  # the original columns, in order
    encoded = pd.DataFrame(encode_frame(df, est.feature_encoding_), columns=est.feature_names_in_)
    np.testing.assert_allclose(est.predict(encoded), p, rtol=1e-13)  # the model's own (encoded) columns
    one = df.iloc[[5]]
    np.testing.assert_allclose(est.predict(one), p[[5]], rtol=1e-13)  # a single row: levels are not re-derived
    assert np.isfinite(est.score(df, _y(df))) and np.isfinite(est.bic(df, _y(df)))
    assert est.predict_quantiles(df, [0.5]).shape == (N, 1)


def test_the_callers_frame_is_not_modified():
    df = _frame()
    before = df.copy(deep=True)
    est = MoERegressor(n_experts=1, random_state=0).fit(df, _y(df))
    est.predict(df)
    pd.testing.assert_frame_equal(df, before)


def test_model_files_keep_the_encoding(fitted, tmp_path):
    df, est = fitted
    path = tmp_path / "m.moekit"
    est.save(path)
    again = moekit.load(path)
    assert again.feature_encoding_ == est.feature_encoding_
    np.testing.assert_array_equal(again.predict(df), est.predict(df))
    with pytest.raises(ValueError, match=r"input column 'g' of X holds the category 'zz'"):
        again.predict(df.assign(g="zz"))


def test_unseen_level_names_the_column_and_the_level(fitted):
    df, est = fitted
    with pytest.raises(ValueError, match=r"input column 'g' of X holds the category 'd' in row 3, which the model "
                                         r"never saw in training \(known: a, b, c\)"):
        est.predict(df.assign(g=["a", "b", "d"] * (N // 3)))


def test_missing_or_extra_columns_are_named(fitted):
    df, est = fitted
    with pytest.raises(ValueError, match=r"X must have the columns .*missing \['h'\]"):
        est.predict(df[["x", "g"]])
    with pytest.raises(ValueError, match=r"not seen in fit \['z'\]"):
        est.predict(df.assign(z=1.0))


def test_refit_on_numbers_forgets_the_encoding():
    df = _frame()
    est = MoERegressor(n_experts=1, random_state=0).fit(df, _y(df))
    est.fit(df[["x"]], _y(df))
    assert not hasattr(est, "feature_encoding_")
    assert list(est.feature_names_in_) == ["x"]
    with pytest.raises(ValueError, match=r"X has text or category columns \['g'\].*fitted on numbers only"):
        est.predict(df[["x", "g"]])


@pytest.mark.parametrize("cls", [MoEClassifier, HMEClassifier, MDNRegressor], ids=lambda c: c.__name__)
def test_every_estimator_encodes(cls, tmp_path):
    df = _frame()
    y = (_y(df) > 0).astype(int) if cls is not MDNRegressor else _y(df)
    kw = {"max_epochs": 20, "n_components": 2} if cls is MDNRegressor else {"max_iter": 30}
    est = cls(random_state=0, **kw).fit(df, y)
    assert list(est.feature_names_in_) == ["x", "g[T.b]", "g[T.c]", "h[T.hi]"]
    est.save(tmp_path / "m.moekit")
    np.testing.assert_array_equal(moekit.load(tmp_path / "m.moekit").predict(df), est.predict(df))


def test_encoded_columns_can_be_named_in_gate_features():
    df = _frame()
    est = MoERegressor(n_experts=2, gate_features=["x"], expert_features=["x", "g[T.b]"], random_state=0,
                       max_iter=20).fit(df, _y(df))
    assert est.predict(df).shape == (N,)


def test_numbers_written_as_text_are_numbers_as_on_the_command_line():
    df = _frame()
    y = _y(df)
    df["x"] = df["x"].map(repr).astype(object)  # numbers written as text
    est = MoERegressor(n_experts=1, random_state=0).fit(df, y)
    assert est.feature_encoding_["features"][0] == {"name": "x", "kind": "numeric"}
    bad = df.copy()
    bad.loc[4, "x"] = "oops"
    with pytest.raises(ValueError, match=r"X column 'x' holds the non-numeric value 'oops' in row 5"):
        MoERegressor().fit(bad, y)


def test_missing_text_value_is_named():
    df = _frame().astype({"g": object})
    df.loc[7, "g"] = None
    with pytest.raises(ValueError, match=r"X column 'g' has a missing value in row 8"):
        MoERegressor().fit(df, _y(_frame()))


# ------------------------------------------------------------ identifiers and many levels
def _countries(n=28):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"country": [f"country_{i:02d}" for i in range(n)], "gdp": rng.normal(size=n),
                         "life": rng.normal(size=n)})


def test_id_column_is_an_error_naming_it_in_python():
    d = _countries()
    with pytest.raises(ValueError, match=r"input column 'country' has a different value in every row \(28 levels in "
                                         r"28 rows\).*identifier.*X\.drop\(columns=\['country'\]\)"):
        MoERegressor().fit(d[["country", "gdp"]], d["life"])


def test_id_column_is_an_error_naming_it_on_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = _countries()
    pcsv.write_csv(pa.Table.from_pandas(d, preserve_index=False), "c.csv")
    rc = main(["fit", "c.csv", "-t", "life", "--select-k", "1..3", "-o", "m.moekit"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "input column 'country' of c.csv has a different value in every row" in err
    assert "--features" in err
    assert not os.path.exists("m.moekit")


def test_too_many_levels_is_an_error_in_both(tmp_path, capsys, monkeypatch):
    n = 2 * (MAX_LEVELS + 1)
    d = pd.DataFrame({"code": [f"k{i % (MAX_LEVELS + 1)}" for i in range(n)], "y": np.arange(n, dtype=float)})
    with pytest.raises(ValueError, match=rf"input column 'code' has {MAX_LEVELS + 1} distinct text values, too many"):
        MoERegressor().fit(d[["code"]], d["y"])
    monkeypatch.chdir(tmp_path)
    pcsv.write_csv(pa.Table.from_pandas(d, preserve_index=False), "k.csv")
    assert main(["fit", "k.csv", "-t", "y", "-o", "m.moekit"]) == 1
    assert "input column 'code' of k.csv has 201 distinct text values" in capsys.readouterr().err


# ------------------------------------------------------------ model files of the command line
def test_old_command_line_names_give_the_same_predictions(tmp_path, capsys, monkeypatch):
    """Model files written before the shared encoder name the columns 'group=b'; their X is the same."""
    monkeypatch.chdir(tmp_path)
    df = _frame()
    df["h"] = df["h"].astype(str)
    table = pa.table({c: df[c].tolist() for c in df.columns} | {"y": _y(df).tolist()})
    pcsv.write_csv(table, "d.csv")
    schema = build_schema(read_table("d.csv"), ["y"], None, None, "regression")
    est = MoERegressor(n_experts=1, random_state=0).fit(encode_features(read_table("d.csv"), schema), _y(df))
    old = dict(schema, encoded_features=["x", "g=b", "g=c", "h=lo"])
    moekit.io.save(est, "new.moekit", metadata={"cli": schema})
    moekit.io.save(est, "old.moekit", metadata={"cli": old})
    for name in ("new", "old"):
        assert main(["predict", f"{name}.moekit", "d.csv", "-o", f"{name}.csv", "-q"]) == 0, capsys.readouterr().err
    new_p = pcsv.read_csv("new.csv").column("y_mean").to_numpy()
    old_p = pcsv.read_csv("old.csv").column("y_mean").to_numpy()
    np.testing.assert_array_equal(old_p, new_p)
    np.testing.assert_allclose(new_p, est.predict(encode_frame(df, schema)))
