"""Parquet and CSV files as sources of batches (moekit.data.ParquetSource / CSVSource), by property:
batches concatenate to the table read whole, for any batch size; shards partition the rows and read
only their own files; the start sample is the rows sample_indices picks, whatever the batching or
sharding; Parquet and CSV of one table agree; the encoding is the estimators' (fit_frame_encoding /
encode_frame); every bad input is a one-line error naming what is wrong and where."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch

from moekit._encoding import encode_frame, fit_frame_encoding
from moekit.data import Batch, CSVSource, ParquetSource, sample_indices

FEATURES = ["num", "count", "flag", "city", "numtext"]


def _frame(n: int, seed: int = 0, categorical: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "num": rng.normal(size=n),
        "count": rng.integers(0, 50, size=n),
        "flag": rng.random(n) < 0.4,
        "city": rng.choice(["paris", "oslo", "rome", "lima"], size=n),
        "numtext": [f"{v:.3f}" for v in rng.uniform(-5, 5, size=n)],
        "y": rng.normal(size=n),
        "w": rng.uniform(0.5, 2.0, size=n),
        "off": rng.normal(size=n),
    })
    if categorical:
        df["grade"] = pd.Categorical(rng.choice(["lo", "mid"], size=n), categories=["hi", "mid", "lo"])
    return df


def _write_parquet(df: pd.DataFrame, folder, sizes, row_group_size) -> list[str]:
    """``df`` split into files of ``sizes`` rows (names sort in order), each in row groups of ``row_group_size``."""
    os.makedirs(folder, exist_ok=True)
    paths, at = [], 0
    for i, (m, rg) in enumerate(zip(sizes, row_group_size)):
        p = os.path.join(folder, f"part-{i:02d}.parquet")
        pq.write_table(pa.Table.from_pandas(df.iloc[at:at + m], preserve_index=False), p, row_group_size=rg)
        paths.append(p)
        at += m
    return paths


def _write_csv(df: pd.DataFrame, folder, sizes) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths, at = [], 0
    for i, m in enumerate(sizes):
        p = os.path.join(folder, f"part-{i:02d}.csv")
        pcsv.write_csv(pa.Table.from_pandas(df.iloc[at:at + m], preserve_index=False), p)
        paths.append(p)
        at += m
    return paths


def _cat(batches) -> Batch:
    bs = list(batches)
    return Batch(*(torch.cat([getattr(b, f) for b in bs]) for f in ("x", "y", "weight")),
                 offset=torch.cat([b.offset for b in bs]) if bs and bs[0].offset is not None else None)


def _equal(a: Batch, b: Batch) -> bool:
    return all((u is None and v is None) or (u.shape == v.shape and torch.equal(u, v))
               for u, v in [(a.x, b.x), (a.y, b.y), (a.weight, b.weight), (a.offset, b.offset)])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 230-row table in 3 Parquet files with row groups of 7, 40 and 100 rows, and the same as CSV."""
    root = tmp_path_factory.mktemp("data")
    df = _frame(230, seed=1, categorical=True)
    _write_parquet(df, root / "pq", [50, 100, 80], [7, 40, 100])
    _write_csv(df.drop(columns="grade"), root / "csv", [50, 100, 80])
    return df, root


def _expected(df, features):
    enc = fit_frame_encoding(df[features])
    return enc, torch.as_tensor(encode_frame(df[features], enc))


# ------------------------------------------------------------------ the encoding is the estimators'
def test_encoding_names_and_values_equal_fit_frame_encoding_and_encode_frame(dataset):
    df, root = dataset
    feats = FEATURES + ["grade"]
    src = ParquetSource(root / "pq", features=feats, target="y", weight="w", offset="off", batch_rows=64)
    enc, x = _expected(df, feats)
    assert src.encoding == enc and src.feature_names == enc["encoded_features"]
    assert src.feature_names == ["num", "count", "flag", "city[T.oslo]", "city[T.paris]", "city[T.rome]",
                                 "numtext", "grade[T.mid]", "grade[T.lo]"]  # a category keeps its declared order
    b = src.read_all()
    assert torch.equal(b.x, x)
    assert torch.equal(b.y, torch.tensor(df["y"].to_numpy()))
    assert torch.equal(b.weight, torch.tensor(df["w"].to_numpy()))
    assert torch.equal(b.offset, torch.tensor(df["off"].to_numpy()))
    assert b.trials is None and src.target_levels is None and src.target_names == ["y"]
    assert src.n_rows == 230 and src.in_memory is False and len(src.files) == 3
    assert src.nbytes_estimate == 230 * (9 + 1 + 1 + 1) * 8


def test_default_features_are_every_other_column(dataset):
    df, root = dataset
    src = ParquetSource(root / "pq", target="y", weight="w", offset="off")
    assert [f["name"] for f in src.encoding["features"]] == FEATURES + ["grade"]
    # a pandas index column is not a feature
    p = root / "indexed.parquet"
    df.iloc[:20].set_index("city").to_parquet(p)
    src = ParquetSource(p, target="y", weight="w", offset="off")
    assert "city" not in [f["name"] for f in src.encoding["features"]]


@pytest.mark.parametrize("batch_rows", [1, 3, 7, 64, 100_000])
def test_batches_concatenate_to_the_table_for_any_batch_size(dataset, batch_rows):
    df, root = dataset
    src = ParquetSource(root / "pq", features=FEATURES, target="y", weight="w", offset="off", batch_rows=batch_rows)
    bs = list(src)
    sizes = [len(b) for b in bs]
    assert all(s == batch_rows for s in sizes[:-1]) and 0 < sizes[-1] <= batch_rows and sum(sizes) == 230
    _, x = _expected(df, FEATURES)
    whole = _cat(bs)
    assert torch.equal(whole.x, x) and torch.equal(whole.y, torch.tensor(df["y"].to_numpy()))
    assert _equal(whole, src.read_all())
    assert _equal(_cat(src), whole)  # re-iterable, the same rows in the same order
    assert all(b.x.dtype == torch.float64 and b.x.device.type == "cpu" for b in bs)


def test_parquet_and_csv_of_one_table_give_the_same_batches(dataset):
    df, root = dataset
    kw = dict(features=FEATURES, target="y", weight="w", offset="off", batch_rows=33)
    p, c = ParquetSource(root / "pq", **kw), CSVSource(root / "csv", **kw)
    assert c.encoding == p.encoding and c.n_rows == p.n_rows == 230
    for a, b in zip(p, c, strict=True):
        assert _equal(a, b)
    assert _equal(p.sample(40, seed=3), c.sample(40, seed=3))
    assert [c.shard(r, 3).n_rows for r in range(3)] == [50, 100, 80]  # CSV shards by whole files


def test_dtype_float32_and_text_targets_as_class_labels(tmp_path):
    df = _frame(60, seed=2)
    df["label"] = np.where(df["num"] > 0, "yes", "no")
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "a.parquet")
    src = ParquetSource(tmp_path / "a.parquet", features=["num", "city"], target="label", dtype=torch.float32,
                        batch_rows=25)
    assert src.target_levels == ["no", "yes"]
    b = src.read_all()
    assert b.x.dtype == torch.float32 and b.y.dtype == torch.int64 and b.weight.dtype == torch.float32
    assert b.y.tolist() == (df["label"] == "yes").astype(int).tolist()
    src = ParquetSource(tmp_path / "a.parquet", features=["num"], target="label",
                        categories={"label": ["yes", "no"]})  # declared levels keep their order
    assert src.target_levels == ["yes", "no"] and src.read_all().y.tolist() == (df["label"] == "no").astype(int).tolist()
    vec = ParquetSource(tmp_path / "a.parquet", features=["num"], target=["y", "off"])
    assert vec.read_all().y.shape == (60, 2) and vec.target_names == ["y", "off"]


def test_declared_categories_and_extras(tmp_path):
    t = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "c": ["b", "a", "b", "b"], "y": [0.0, 1.0, float("nan"), 3.0],
                  "n": [3, 4, 5, 6], "lo": [None, 0.5, 1.0, None], "hi": [2.0, None, 4.0, None]})
    pq.write_table(t, tmp_path / "a.parquet")
    src = ParquetSource(tmp_path / "a.parquet", features=["x", "c"], target="y", trials="n", lower="lo",
                        upper="hi", categories={"c": ["b", "a", "z"]})
    assert src.feature_names == ["x", "c[T.a]", "c[T.z]"]
    b = src.read_all()
    assert b.x[:, 1].tolist() == [0.0, 1.0, 0.0, 0.0] and b.x[:, 2].tolist() == [0.0] * 4
    assert torch.isnan(b.y[2]) and b.trials.tolist() == [3.0, 4.0, 5.0, 6.0]  # a missing target passes as NaN
    assert b.lower.tolist() == [-np.inf, 0.5, 1.0, -np.inf] and b.upper.tolist() == [2.0, np.inf, 4.0, np.inf]
    assert b.weight.tolist() == [1.0] * 4 and b.offset is None


# ------------------------------------------------------------------ shards
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_partition_the_rows_in_rank_order(dataset, world):
    _, root = dataset
    src = ParquetSource(root / "pq", features=FEATURES, target="y", weight="w", offset="off", batch_rows=16)
    shards = [src.shard(r, world) for r in range(world)]
    assert sum(s.n_rows for s in shards) == 230
    assert _equal(_cat(b for s in shards for b in s), src.read_all())
    assert all(s.encoding is src.encoding for s in shards)
    if world > 1:  # balanced by rows (row groups of at most 100 rows)
        assert max(s.n_rows for s in shards) - min(s.n_rows for s in shards) <= 100


def test_a_shard_reads_only_its_own_files(tmp_path):
    df = _frame(120, seed=4)
    paths = _write_parquet(df, tmp_path / "d", [30, 30, 30, 30], [10, 10, 10, 10])
    src = ParquetSource(tmp_path / "d", features=FEATURES, target="y", batch_rows=8)
    expected = src.read_all()
    shard = src.shard(1, 4)
    assert shard.files == [paths[1]] and shard.n_rows == 30
    for p in paths[:1] + paths[2:]:  # every other rank's file becomes garbage
        with open(p, "wb") as f:
            f.write(b"not parquet at all")
    assert torch.equal(_cat(shard).x, expected.x[30:60])
    with pytest.raises(ValueError, match=r"cannot read .*part-00\.parquet as PARQUET"):
        list(src)


def test_a_single_row_group_gives_empty_shards_to_higher_ranks(tmp_path):
    pq.write_table(pa.Table.from_pandas(_frame(10)), tmp_path / "one.parquet")
    src = ParquetSource(tmp_path / "one.parquet", features=["num"], target="y")
    shards = [src.shard(r, 3) for r in range(3)]
    assert [s.n_rows for s in shards] == [0, 10, 0] or sorted(s.n_rows for s in shards) == [0, 0, 10]
    empty = next(s for s in shards if s.n_rows == 0)
    assert list(empty) == [] and empty.files == [] and empty.read_all().x.shape == (0, 1)


# ------------------------------------------------------------------ the start sample
def test_sample_is_the_rows_sample_indices_picks_whatever_the_batching_or_sharding(dataset):
    df, root = dataset
    kw = dict(features=FEATURES, target="y", weight="w", offset="off")
    whole = ParquetSource(root / "pq", batch_rows=1000, **kw).read_all()
    idx = torch.as_tensor(sample_indices(230, 37, 11))
    want = whole.rows(idx)
    for batch_rows in (1, 9, 1000):
        src = ParquetSource(root / "pq", batch_rows=batch_rows, **kw)
        assert _equal(src.sample(37, 11), want)
        assert all(_equal(src.shard(r, 3).sample(37, 11), want) for r in range(3))
    src = ParquetSource(root / "pq", **kw)
    assert _equal(src.sample(230, 0), whole) and _equal(src.sample(10_000, 5), whole)
    assert not _equal(src.sample(37, 12), want)


def test_sample_reads_only_the_files_holding_its_rows(tmp_path):
    df = _frame(400, seed=5)
    paths = _write_parquet(df, tmp_path / "d", [100] * 4, [25] * 4)
    src = ParquetSource(tmp_path / "d", features=["num", "count"], target="y")
    idx = sample_indices(400, 3, 0)
    want = src.read_all().rows(torch.as_tensor(idx))
    for i, p in enumerate(paths):
        if not ((idx >= 100 * i) & (idx < 100 * (i + 1))).any():
            with open(p, "wb") as f:
                f.write(b"garbage")
    assert _equal(src.sample(3, 0), want)


# ------------------------------------------------------------------ memory
def test_memory_is_bounded_by_the_batch_not_the_table(tmp_path):
    n = 200_000
    rng = np.random.default_rng(0)
    t = pa.table({f"x{j}": rng.normal(size=n) for j in range(4)} | {"y": rng.normal(size=n)})
    pq.write_table(t, tmp_path / "big.parquet", row_group_size=10_000)
    src = ParquetSource(tmp_path / "big.parquet", target="y", batch_rows=2_000)
    base, peak, rows = pa.total_allocated_bytes(), 0, 0
    for b in src:
        peak = max(peak, pa.total_allocated_bytes() - base)
        rows += len(b)
    assert rows == n and peak < t.nbytes / 4  # Arrow holds about a row group, never the table


# ------------------------------------------------------------------ bad rows
def test_bad_rows_are_errors_naming_file_and_row_or_are_skipped(tmp_path):
    df = _frame(30, seed=6)
    df.loc[7, "num"] = np.nan
    df.loc[12, "w"] = np.inf
    df.loc[20, "y"] = np.nan  # a missing target is not a bad row
    paths = _write_parquet(df, tmp_path / "d", [10, 20], [10, 20])
    with pytest.raises(ValueError, match=r"feature column 'num' has a missing value in row 8 of .*part-00\.parquet"):
        list(ParquetSource(tmp_path / "d", features=FEATURES, target="y", weight="w"))
    src = ParquetSource(tmp_path / "d", features=FEATURES, target="y", weight="w", on_bad_rows="skip", batch_rows=4)
    bs = list(src)
    assert sum(len(b) for b in bs) == 28 and src.n_skipped_rows == src.skipped_rows_last_pass == 2
    assert src.n_rows == 30 and all(len(b) == 4 for b in bs[:-1])
    keep = [i for i in range(30) if i not in (7, 12)]
    assert torch.equal(_cat(bs).x, _expected(df, FEATURES)[1][keep])
    assert torch.isnan(_cat(bs).y).sum() == 1
    list(src)
    assert src.n_skipped_rows == 2  # counted afresh on each pass
    s = src.sample(30, 0)  # every row, bad ones dropped
    assert len(s) == 28
    df.loc[12, "w"] = 1.0
    df.loc[3, "w"] = -1.0
    _write_parquet(df, tmp_path / "e", [30], [30])
    with pytest.raises(ValueError, match=r"weight column 'w' holds the negative weight -1\.0 in row 4 of "):
        list(ParquetSource(tmp_path / "e", features=["count"], target="y", weight="w", on_bad_rows="skip"))
    del paths


@pytest.mark.parametrize("column, value, message", [
    ("off", np.nan, r"offset column 'off' has a missing value in row 3 of "),
    ("y", np.inf, r"target column 'y' has the value inf in row 3 of "),
    ("count", None, r"feature column 'count' has a missing value in row 3 of "),
    ("w", np.inf, r"weight column 'w' has the value inf in row 3 of "),
    ("w", -np.inf, r"weight column 'w' has the value -inf in row 3 of "),
])
def test_each_bad_value_names_its_column(tmp_path, column, value, message):
    t = pa.Table.from_pandas(_frame(5, seed=7)).to_pydict()
    t[column][2] = value
    pq.write_table(pa.table(t), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=message):
        list(ParquetSource(tmp_path / "a.parquet", features=["num", "count"], target="y", offset="off", weight="w"))


def test_csv_rows_are_named_with_their_line(tmp_path):
    (tmp_path / "a.csv").write_text("x,c,y\n1,a,1\n2,b,2\n,a,3\n4,b,x4\n")
    with pytest.raises(ValueError, match=r"feature column 'x' has a missing value in row 3 \(line 4\) of .*a\.csv"):
        list(CSVSource(tmp_path / "a.csv", target="y"))
    (tmp_path / "b.csv").write_text("x,c,y\n1,a,1\n2,b,2\n3,a,3\n4,b,x4\n")
    with pytest.raises(ValueError, match=r"target column 'y' holds the non-numeric value 'x4' in row 4 \(line 5\)"):
        list(CSVSource(tmp_path / "b.csv", target="y"))


# ------------------------------------------------------------------ bad data sets and arguments
def _one_line_error(fn, pattern):
    with pytest.raises(ValueError, match=pattern) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_data_sets_are_one_line_errors(tmp_path):
    df = _frame(20, seed=8)
    good = tmp_path / "d"
    _write_parquet(df, good, [10, 10], [10, 10])
    # another file with a column missing
    bad = tmp_path / "cols"
    _write_parquet(df, bad, [10], [10])
    pq.write_table(pa.Table.from_pandas(df.iloc[10:].drop(columns="city"), preserve_index=False),
                   bad / "part-01.parquet")
    _one_line_error(lambda: ParquetSource(bad, target="y"), r"part-01\.parquet has other columns .*\['city'\]")
    # another file with another type
    typed = tmp_path / "types"
    _write_parquet(df, typed, [10], [10])
    other = df.iloc[10:].assign(count=df["count"].iloc[10:].astype(str) + "x")
    pq.write_table(pa.Table.from_pandas(other, preserve_index=False), typed / "part-01.parquet")
    _one_line_error(lambda: ParquetSource(typed, target="y"), r"column 'count' of .*part-01\.parquet has type (large_)?string, but int64")
    # a named column that is not there
    msg = _one_line_error(lambda: ParquetSource(good, target="nope"), r"target column 'nope' is not in ")
    assert "num, count, flag" in msg
    _one_line_error(lambda: ParquetSource(good, target="y", weight="ww"), r"weight column 'ww' is not in ")
    # empty sources, missing paths
    (tmp_path / "empty").mkdir()
    _one_line_error(lambda: ParquetSource(tmp_path / "empty", target="y"), r"^no rows in .*empty")
    pq.write_table(pa.Table.from_pandas(df.iloc[:0]), tmp_path / "zero.parquet")
    _one_line_error(lambda: ParquetSource(tmp_path / "zero.parquet", target="y"), r"^no rows in .*zero\.parquet")
    (tmp_path / "head.csv").write_text("x,y\n")
    _one_line_error(lambda: CSVSource(tmp_path / "head.csv", target="y"), r"^no rows in .*head\.csv")
    _one_line_error(lambda: ParquetSource([], target="y"), r"^no rows in \[\]")
    _one_line_error(lambda: ParquetSource(tmp_path / "nowhere", target="y"), r"data path .*nowhere' does not exist")
    # arguments
    _one_line_error(lambda: ParquetSource(good, target="y", on_bad_rows="drop"),
                    r"on_bad_rows must be 'error' or 'skip', got 'drop'")
    _one_line_error(lambda: ParquetSource(good, target="y", batch_rows=0), r"batch_rows must be a positive int")
    _one_line_error(lambda: ParquetSource(good, target="y", features=["num", "y"]), r"both features and the target")


def test_a_level_outside_the_declared_ones_names_file_column_and_level(tmp_path):
    df = _frame(20, seed=9)
    _write_parquet(df.assign(city="paris"), tmp_path / "d", [10], [10])
    later = df.iloc[10:].assign(city=["paris"] * 9 + ["tokyo"])
    pq.write_table(pa.Table.from_pandas(later, preserve_index=False), tmp_path / "d" / "part-01.parquet")
    src = ParquetSource(tmp_path / "d", features=["num", "city"], target="y",
                        categories={"city": ["paris", "oslo"]})
    _one_line_error(lambda: list(src), r"feature column 'city' holds the level 'tokyo' in row 10 of .*part-01\.parquet")


def test_identifier_and_too_many_levels_use_the_encoders_checks(tmp_path):
    t = pa.table({"id": [f"r{i}" for i in range(300)], "many": [f"v{i % 250}" for i in range(300)],
                  "y": np.zeros(300)})
    pq.write_table(t, tmp_path / "a.parquet")
    _one_line_error(lambda: ParquetSource(tmp_path / "a.parquet", features=["id"], target="y"),
                    r"input column 'id' .* has a different value in every row \(300 levels in 300 rows\)")
    _one_line_error(lambda: ParquetSource(tmp_path / "a.parquet", features=["many"], target="y"),
                    r"input column 'many' .* has 250 distinct text values, too many")


def test_a_source_pickles(dataset):
    _, root = dataset
    src = ParquetSource(root / "pq", features=FEATURES, target="y").shard(1, 2)
    back = pickle.loads(pickle.dumps(src))
    assert _equal(back.read_all(), src.read_all())
