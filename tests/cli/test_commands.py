"""The ``moekit`` command, run for real in a subprocess (and in-process for the many small cases)."""

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

import moekit
import moekit.io
from moekit.cli import main
from moekit.datasets import load_tonedata
from cli_helpers import run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 150

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _table():
    d = load_tonedata()
    rng = np.random.default_rng(0)
    return pa.table({
        "id": np.arange(N),
        "stretch": d.data[:, 0],
        "group": rng.choice(["a", "b", "c"], size=N).tolist(),
        "tuned": d.target,
    })


def _write(table, path):
    if str(path).endswith(".parquet"):
        pq.write_table(table, path)
    else:
        pcsv.write_csv(table, path)
    return path


def _read(path):
    return pq.read_table(path) if str(path).endswith(".parquet") else pcsv.read_csv(path)


def _one_line_error(rc, out, err, code, pattern):
    assert rc == code, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("moekit: error: ")
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]


# ============================================================ the pipeline
@pytest.fixture(scope="module", params=["csv", "parquet"])
def pipeline(request, tmp_path_factory):
    ext = request.param
    tmp = tmp_path_factory.mktemp(f"pipe-{ext}")
    data = _write(_table(), tmp / f"tone.{ext}")
    rc, out, err = run("fit", data.name, "--target", "tuned", "--features", "stretch", "group",
                       "--select-k", "1..3", "--n-init", "2", "-o", "model.moekit", cwd=tmp)
    assert rc == 0, err
    assert "\r" not in err  # no progress bar in a pipe
    return tmp, data, ext, out


def test_fit_selects_k_by_bic_and_records_the_encoding(pipeline):
    tmp, data, ext, out = pipeline
    assert "BIC (lower is better) by number of experts" in out
    assert re.search(r"fitted MoERegressor \(\d experts\) on 150 rows, 3 input column\(s\) -> tuned", out)
    info = moekit.io.read_info(tmp / "model.moekit")
    cli = info["metadata"]["cli"]
    # one column per level but the reference 'a', named by the shared encoder's scheme (moekit._encoding)
    enc = cli["encoded_features"]
    assert len(enc) == 3 and enc[0] == "stretch" and all(e.startswith("group") and lv in e[5:] for e, lv in
                                                          zip(enc[1:], "bc", strict=True)), enc
    assert cli["features"][1] == {"name": "group", "kind": "categorical", "levels": ["a", "b", "c"]}
    assert cli["training_data"]["rows"] == N
    assert set(cli["selection"]["scores"]) == {"1", "2", "3"}
    scores = {int(k): v for k, v in cli["selection"]["scores"].items()}
    assert cli["selection"]["chosen"] == min(scores, key=scores.get)


def test_predict_modes_and_mean(pipeline):
    tmp, data, ext, _ = pipeline
    rc, out, err = run("predict", "model.moekit", data.name, "-o", f"modes.{ext}", "--what", "modes",
                       "--max-modes", "2", "--keep", "id", cwd=tmp)
    assert rc == 0, err
    t = _read(tmp / f"modes.{ext}")
    assert t.column_names == ["id", "n_modes", "tuned_mode1", "mode1_weight", "tuned_mode2", "mode2_weight"]
    assert t.num_rows == N
    assert t.column("id").to_pylist() == list(range(N))
    w1 = np.asarray(t.column("mode1_weight").to_pylist(), dtype=float)
    assert np.all((w1 > 0) & (w1 <= 1 + 1e-9))
    n_modes = np.asarray(t.column("n_modes").to_pylist())
    second = t.column("tuned_mode2").to_pylist()
    assert all((m >= 2) == (v is not None) for m, v in zip(n_modes, second))  # empty cells where no second mode


def test_predict_to_stdout_matches_the_library(pipeline, capsys, monkeypatch):
    tmp, data, ext, _ = pipeline
    monkeypatch.chdir(tmp)
    rc, out, err = _main(["predict", "model.moekit", data.name, "-o", "-"], capsys)
    assert rc == 0 and err == ""
    t = pcsv.read_csv(io.BytesIO(out.encode()))
    assert t.column_names == ["tuned_mean"] and t.num_rows == N
    est = moekit.load(tmp / "model.moekit")  # the command predicts what the library predicts
    np.testing.assert_allclose(t.column("tuned_mean").to_numpy(), est.predict(_encoded(data)), rtol=1e-12)


def _encoded(data):
    """The inputs as 'moekit fit' encoded them, with their names (the command fits on the named columns)."""
    t = _read(data)
    g = np.asarray(t.column("group").to_pylist())
    X = np.column_stack([t.column("stretch").to_numpy(), g == "b", g == "c"]).astype(float)
    return pd.DataFrame(X, columns=["stretch", "group[T.b]", "group[T.c]"])


def test_predict_quantiles_gate_and_samples(pipeline, capsys, monkeypatch):
    tmp, data, ext, _ = pipeline
    if ext != "csv":
        pytest.skip("format-independent; run once")
    monkeypatch.chdir(tmp)
    rc, _, err = _main(["predict", "model.moekit", data.name, "-o", "q.csv", "--what", "quantiles", "--quantiles",
                        "0.1", "0.5", "0.9"], capsys)
    assert rc == 0, err
    t = _read(tmp / "q.csv")
    assert t.column_names == ["tuned_q0.1", "tuned_q0.5", "tuned_q0.9"]
    q = np.column_stack([c.to_numpy() for c in t.columns])
    assert np.all(np.diff(q, axis=1) > 0)
    rc, _, err = _main(["predict", "model.moekit", data.name, "-o", "g.parquet", "--what", "gate", "--quiet"], capsys)
    assert rc == 0 and err == ""
    g = _read(tmp / "g.parquet")
    assert all(re.fullmatch(r"gate\d", c) for c in g.column_names)
    np.testing.assert_allclose(np.column_stack([c.to_numpy() for c in g.columns]).sum(1), 1.0, atol=1e-12)
    rc, _, err = _main(["predict", "model.moekit", data.name, "-o", "s.tsv", "--what", "samples", "--n-samples", "4"],
                       capsys)
    assert rc == 0, err
    s = pcsv.read_csv(tmp / "s.tsv", parse_options=pcsv.ParseOptions(delimiter="\t"))
    assert s.column_names == [f"tuned_sample{i}" for i in range(1, 5)] and s.num_rows == N
    rc, out, err = _main(["evaluate", "model.moekit", data.name], capsys)
    assert rc == 0 and "log-likelihood (sum)" in out and "RMSE of the top mode" in out
    # each metric with its explanation (moekit.report.metrics_text)
    assert "sum over the rows of log p(y | x); higher is better" in out
    assert "the share of rows whose y lies inside the central 90 % interval" in out


def test_evaluate_json_matches_the_library(pipeline):
    tmp, data, ext, _ = pipeline
    rc, out, err = run("evaluate", "model.moekit", data.name, "--json", cwd=tmp)
    assert rc == 0, err
    m = json.loads(out)
    assert m["n"] == N
    assert {"log_likelihood", "nll", "rmse_mean", "rmse_top_mode", "coverage", "bic"} <= set(m)
    est = moekit.load(tmp / "model.moekit")
    X = _encoded(data)
    y = _read(data).column("tuned").to_numpy()
    assert m["log_likelihood"] == pytest.approx(float(est.score_samples(X, y).sum()), rel=1e-12)
    assert m["nll"] == pytest.approx(-m["log_likelihood"] / N)
    assert 0.5 < m["coverage"][0] <= 1.0


def test_report_embeds_its_images(pipeline):
    tmp, data, ext, _ = pipeline
    rc, out, err = run("report", "model.moekit", data.name, "-o", "report.html", cwd=tmp)
    assert rc == 0, err
    page = (tmp / "report.html").read_text(encoding="utf-8")
    imgs = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(imgs) >= 5
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    group_b = moekit.io.read_info(tmp / "model.moekit")["metadata"]["cli"]["encoded_features"][1]
    for word in ("Metrics", "Conditional density with modes", "Convergence", "Fitted experts and gate regions",
                 html.escape(group_b, quote=True)):
        assert word in page
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_info(pipeline, capsys, monkeypatch):
    tmp, data, ext, _ = pipeline
    if ext != "csv":
        pytest.skip("format-independent; run once")
    monkeypatch.chdir(tmp)
    rc, out, err = _main(["info", "model.moekit"], capsys)
    assert rc == 0, err
    assert "moekit model file, format version 1" in out
    assert "MoERegressor" in out and "one-hot encoded: group -> levels ['a', 'b', 'c']" in out
    assert "trained on tone.csv: 150 rows" in out


# =========================================================== bad input
def test_bad_inputs_give_one_line_and_the_right_exit_code(tmp_path):
    _write(_table(), tmp_path / "ok.csv")
    text = (tmp_path / "ok.csv").read_text().splitlines()
    cells = text[7].split(",")
    cells[1] = "abc"
    text[7] = ",".join(cells)
    (tmp_path / "bad.csv").write_text("\n".join(text) + "\n")
    (tmp_path / "empty.csv").write_text("")
    cases = [
        # a missing file
        (["fit", "nope.csv", "--target", "y", "-o", "m.moekit"], 1, r"data file 'nope.csv' does not exist"),
        # a missing target column
        (["fit", "ok.csv", "--target", "pitch", "-o", "m.moekit"], 1,
         r"target column 'pitch' is not in ok\.csv; its columns are: id, stretch, group, tuned"),
        # a non-numeric value in a numeric column
        (["fit", "bad.csv", "--target", "tuned", "-o", "m.moekit"], 1,
         r"column 'stretch' of bad\.csv holds the non-numeric value 'abc' in row 7 \(line 8\)"),
        # an empty file
        (["fit", "empty.csv", "--target", "tuned", "-o", "m.moekit"], 1, r"data file 'empty.csv' is empty"),
        # a model file that is not a moekit file
        (["predict", "ok.csv", "ok.csv", "-o", "p.csv"], 1, r"'ok.csv' is not a moekit model file"),
        # a usage error
        (["predict", "ok.csv", "ok.csv", "-o", "p.csv", "--what", "median"], 2, r"argument --what: invalid choice"),
    ]
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("MOEKIT_DEBUG", None)
    procs = [subprocess.Popen([sys.executable, "-m", "moekit", *argv], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv, _, _ in cases]
    for p, (argv, code, pattern) in zip(procs, cases):
        out, err = p.communicate(timeout=300)
        _one_line_error(p.returncode, out, err, code, pattern)
    assert sorted(os.listdir(tmp_path)) == ["bad.csv", "empty.csv", "ok.csv"]  # nothing written


@pytest.fixture()
def tone_csv(tmp_path):
    return _write(_table(), tmp_path / "tone.csv")


def _main(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    "argv, code, pattern",
    [
        ([], 2, r"no command given; try 'moekit demo'"),
        (["fit", "{csv}", "-t", "tuned", "--model", "svm", "-o", "m.moekit"], 2, r"argument --model: invalid choice"),
        (["fit", "{csv}", "-o", "m.moekit"], 2, r"the following arguments are required: --target"),
        (["fit", "{csv}", "-t", "tuned", "--select-k", "0..3", "-o", "m.moekit"], 2, r"--select-k 0\.\.3: .*at least 1, got 0"),
        (["fit", "{csv}", "-t", "tuned", "--select-k", "1..65", "-o", "m.moekit"], 2, r"--select-k .*between 1 and 64"),
        (["fit", "{csv}", "-t", "tuned", "--select-k", "a..b", "-o", "m.moekit"], 2, r"give a range such as 1\.\.8"),
        (["fit", "{csv}", "-t", "tuned", "-k", "2", "--select-k", "1..3", "-o", "m.moekit"], 2, r"not both"),
        (["fit", "{csv}", "-t", "tuned", "-k", "0", "-o", "m.moekit"], 2, r"expected a positive integer, got 0"),
        (["fit", "{csv}", "-t", "tuned", "--device", "cuda", "-o", "m.moekit"], 2, r"no CUDA GPU|--device"),
        (["fit", "{csv}", "-t", "tuned", "--expert", "logistic", "--task", "regression", "-o", "m.moekit"], 2,
         r"--expert logistic is for class labels"),
        (["fit", "{csv}", "-t", "tuned", "--depth", "3", "-o", "m.moekit"], 2, r"apply to --model hme only"),
        (["fit", "{csv}", "-t", "tuned", "--target-noise", "0.1", "-o", "m.moekit"], 2,
         r"--target-noise applies to --model mdn only"),
        (["fit", "{csv}", "-t", "tuned", "--model", "mdn", "--target-noise", "-1", "-o", "m.moekit"], 2,
         r"argument --target-noise: expected a finite number >= 0, got -1"),
        (["fit", "{csv}", "-t", "tuned", "--features", "tuned", "-o", "m.moekit"], 2, r"both --target and --features"),
        (["fit", "{csv}", "-t", "tuned", "--categorical", "id", "-o", "no/such/dir/m.moekit"], 1,
         r"the folder .* does not exist"),
        (["fit", "{csv}", "-t", "group", "--task", "regression", "-o", "m.moekit"], 1,
         r"target column 'group' of .* holds text \(e\.g\. '.'\); regression needs numbers"),
        (["fit", "{csv}", "-t", "tuned", "--features", "nope", "-o", "m.moekit"], 1, r"input column 'nope' is not in"),
        (["predict", "missing.moekit", "{csv}", "-o", "p.csv"], 1, r"model file 'missing.moekit' does not exist"),
        (["predict", "{csv}", "{csv}", "-o", "p.json"], 2, r"use \.csv, \.tsv or \.parquet"),
        (["report", "{csv}", "{csv}", "-o", "r.txt"], 2, r"ending in \.html"),
    ],
)
def test_usage_and_data_errors(argv, code, pattern, tone_csv, capsys, monkeypatch):
    monkeypatch.chdir(tone_csv.parent)
    rc, out, err = _main([a.format(csv=tone_csv.name) for a in argv], capsys)
    _one_line_error(rc, out, err, code, pattern)


def test_missing_values_and_header_only(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gap.csv").write_text("x,y\n1,2\n,3\n4,5\n")
    _one_line_error(*_main(["fit", "gap.csv", "-t", "y", "-o", "m.moekit"], capsys), 1,
                    r"input column 'x' of gap\.csv has 1 missing value\(s\) \(first in row 2 \(line 3\)\)")
    (tmp_path / "head.csv").write_text("x,y\n")
    _one_line_error(*_main(["fit", "head.csv", "-t", "y", "-o", "m.moekit"], capsys), 1, r"has a header but no data rows")


def test_classification_with_text_labels(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    lab = np.where(x[:, 0] + 0.3 * rng.normal(size=200) > 0, "up", "down")
    pcsv.write_csv(pa.table({"u": x[:, 0], "v": x[:, 1], "label": lab.tolist()}), "c.csv")
    rc, out, err = _main(["fit", "c.csv", "-t", "label", "-o", "c.moekit"], capsys)
    assert rc == 0, err
    assert "MoEClassifier" in out and "classes of label" in out
    rc, out, err = _main(["predict", "c.moekit", "c.csv", "-o", "p.csv", "-q"], capsys)
    assert rc == 0 and err == ""
    t = pcsv.read_csv("p.csv")
    assert t.column_names == ["label_predicted", "p_down", "p_up"]
    p = np.column_stack([t.column("p_down").to_numpy(), t.column("p_up").to_numpy()])
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    assert np.mean(np.array(t.column("label_predicted").to_pylist()) == lab) > 0.8
    _one_line_error(*_main(["predict", "c.moekit", "c.csv", "-o", "p.csv", "--what", "modes"], capsys), 2,
                    r"--what modes is for regression models; this model classifies")
    rc, out, err = _main(["evaluate", "c.moekit", "c.csv", "--json"], capsys)
    assert rc == 0 and json.loads(out)["accuracy"] > 0.8
    rc, out, err = _main(["report", "c.moekit", "c.csv", "-o", "c.html"], capsys)
    assert rc == 0, err
    page = open("c.html", encoding="utf-8").read()
    assert page.count("data:image/png;base64,") >= 4 and "accuracy" in page
    assert "Conditional density" not in page  # a classifier has no density over a continuous y


def test_unknown_category_at_prediction(tone_csv, capsys, monkeypatch):
    monkeypatch.chdir(tone_csv.parent)
    assert _main(["fit", "tone.csv", "-t", "tuned", "--features", "stretch", "group", "-o", "m.moekit", "-q"],
                 capsys)[0] == 0
    pcsv.write_csv(pa.table({"stretch": [2.0, 2.5], "group": ["a", "zzz"]}), "new.csv")
    _one_line_error(*_main(["predict", "m.moekit", "new.csv", "-o", "p.csv"], capsys), 1,
                    r"input column 'group' of new\.csv holds the category 'zzz' in row 2 .*known: a, b, c")
    pcsv.write_csv(pa.table({"stretch": [2.0, 2.5]}), "short.csv")
    _one_line_error(*_main(["predict", "m.moekit", "short.csv", "-o", "p.csv"], capsys), 1,
                    r"input column 'group' is not in short\.csv")
    rc, out, err = _main(["predict", "m.moekit", "tone.csv", "-o", "p.csv", "--what", "interval", "--level", "0.8"],
                         capsys)
    assert rc == 0
    t = pcsv.read_csv("p.csv")
    assert t.column_names == ["tuned_lower", "tuned_upper"]
    assert np.all(t.column("tuned_lower").to_numpy() < t.column("tuned_upper").to_numpy())


def test_model_saved_from_python_needs_feature_names(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = load_tonedata()
    est = moekit.MoERegressor(n_experts=2, random_state=0).fit(d.data, d.target)
    est.save("py.moekit")
    pcsv.write_csv(pa.table({"s": d.data[:, 0], "tuned": d.target}), "t.csv")
    _one_line_error(*_main(["predict", "py.moekit", "t.csv", "-o", "p.csv"], capsys), 2,
                    r"saved from Python without column names; pass --features")
    rc, out, err = _main(["evaluate", "py.moekit", "t.csv", "--features", "s", "--target", "tuned", "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["log_likelihood"] == pytest.approx(145.650, abs=1e-3)


def test_model_fitted_in_python_on_text_columns_predicts_from_the_raw_table(tmp_path, capsys, monkeypatch):
    """A model fitted on a DataFrame with a text column keeps its encoding (feature_encoding_); the command reads
    the raw columns by it (it used to look for the encoded column 'g[T.b]' in the data file)."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=120), "g": rng.choice(["a", "b", "c"], size=120)})
    y = np.where(frame["g"] == "a", 1.0, -1.0) * frame["x"] + 0.1 * rng.normal(size=120)
    est = moekit.MoERegressor(n_experts=2, random_state=0, max_iter=30).fit(frame, y)
    assert est.feature_encoding_["encoded_features"] == ["x", "g[T.b]", "g[T.c]"]
    est.save("py.moekit")
    frame.assign(y=y).to_csv("df.csv", index=False)
    rc, out, err = _main(["predict", "py.moekit", "df.csv", "-o", "-"], capsys)
    assert rc == 0, err
    np.testing.assert_allclose(pcsv.read_csv(io.BytesIO(out.encode())).column("y_mean").to_numpy(),
                               est.predict(frame), rtol=1e-12)
    rc, out, err = _main(["info", "py.moekit"], capsys)
    assert rc == 0, err
    assert "x, g[T.b], g[T.c]" in out and "one-hot encoded: g -> levels ['a', 'b', 'c'] (reference: a)" in out
    rc, out, err = _main(["evaluate", "py.moekit", "df.csv", "--target", "y", "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["log_likelihood"] == pytest.approx(float(est.score_samples(frame, y).sum()), rel=1e-10)
    rc, out, err = _main(["summary", "py.moekit", "--csv"], capsys)
    assert rc == 0, err
    assert {"x", "g[T.b]", "g[T.c]"} <= set(pd.read_csv(io.StringIO(out))["term"])
    frame.assign(g=frame["g"].replace("c", "d"), y=y).to_csv("new.csv", index=False)  # a level never seen
    _one_line_error(*_main(["predict", "py.moekit", "new.csv", "-o", "p.csv"], capsys), 1, r"'g'.*'d'")


def test_multivariate_target_and_info_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from moekit.datasets import make_robot_arm

    X, Y, _ = make_robot_arm(300, random_state=0)
    pq.write_table(pa.table({"x1": X[:, 0], "x2": X[:, 1], "t1": Y[:, 0], "t2": Y[:, 1]}), "arm.parquet")
    rc, out, err = _main(["fit", "arm.parquet", "-t", "t1", "t2", "-k", "3", "--n-init", "1", "--max-iter", "30",
                          "-o", "arm.moekit"], capsys)
    assert rc == 0, err
    rc, out, err = _main(["predict", "arm.moekit", "arm.parquet", "-o", "m.parquet", "--what", "modes"], capsys)
    assert rc == 0, err
    names = pq.read_table("m.parquet").column_names
    assert names[:4] == ["n_modes", "t1_mode1", "t2_mode1", "mode1_weight"]
    rc, out, err = _main(["predict", "arm.moekit", "arm.parquet", "-o", "q.csv", "--what", "quantiles"], capsys)
    assert rc == 0 and pcsv.read_csv("q.csv").num_columns == 6
    rc, out, err = _main(["info", "arm.moekit", "--json"], capsys)
    info = json.loads(out)
    assert info["estimator"] == "MoERegressor" and info["training"]["targets"] == ["t1", "t2"]
    assert "a 2-dimensional target" in info["description"]


def test_mdn_with_target_noise(tone_csv, capsys, monkeypatch):
    monkeypatch.chdir(tone_csv.parent)
    rc, out, err = _main(["fit", tone_csv.name, "-t", "tuned", "--features", "stretch", "--model", "mdn", "-k", "2",
                          "--target-noise", "0.1", "--max-iter", "20", "-o", "noisy.moekit"], capsys)
    assert rc == 0, err
    est = moekit.io.load("noisy.moekit")
    assert est.target_noise == 0.1 and est.n_components == 2 and est.n_iter_ <= 20


def test_demo_tone_writes_plots_report_and_model(tmp_path, capsys):
    rc, out, err = _main(["demo", "tone", "-o", tmp_path / "demo"], capsys)
    assert rc == 0, err
    assert "K=2: log-likelihood   145.650" in out
    files = sorted(os.listdir(tmp_path / "demo"))
    assert files == ["model.moekit", "report.html", "tone.png"]
    assert (tmp_path / "demo" / "tone.png").read_bytes()[:4] == b"\x89PNG"
    assert moekit.load(tmp_path / "demo" / "model.moekit").n_experts_ == 2


def test_console_script_if_installed(tmp_path):
    exe = shutil.which("moekit", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("the moekit console script is not installed in this environment (pip install -e .)")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("moekit ")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["robot-arm", "inverse-sine", "tracking"])
def test_demo_runs_in_under_a_minute(name, tmp_path):
    import time

    t0 = time.perf_counter()
    rc, out, err = run("demo", name, "-o", "out", cwd=tmp_path)
    wall = time.perf_counter() - t0
    assert rc == 0, err
    assert wall < 60, wall
    files = os.listdir(tmp_path / "out")
    assert "report.html" in files and "model.moekit" in files
    if name == "robot-arm":
        assert "robot_arm.png" in files
        mlp = float(re.search(r"MLP regressor \(one averaged answer\)\s+([0-9.]+)", out).group(1))
        branch = float(re.search(r"every branch \(mean over branches\)\s+([0-9.]+)", out).group(1))
        assert branch < mlp / 3
    if name == "tracking":
        assert "tracking.png" in files
        top = re.search(r"top mode of every frame\s+([0-9.]+)\s+([0-9.]+)\s+(\d+)", out).groups()
        tracked = re.search(r"tracked through time \(Viterbi\)\s+([0-9.]+)\s+([0-9.]+)\s+(\d+)", out).groups()
        assert int(tracked[2]) < int(top[2])  # fewer jumps between branches than the per-frame answer


def test_fit_selects_k_by_icl_or_cv_and_criterion_needs_select_k(tone_csv, capsys, monkeypatch):
    monkeypatch.chdir(tone_csv.parent)
    rc, out, err = _main(["fit", tone_csv.name, "-t", "tuned", "--features", "stretch", "--select-k", "1..2",
                          "--criterion", "icl", "-o", "icl.moekit"], capsys)
    assert rc == 0, err
    assert "ICL (lower is better)" in out + err
    rc, out, err = _main(["info", "icl.moekit", "--json"], capsys)
    assert rc == 0, err
    assert "ICL (lower is better)" in json.dumps(json.loads(out))
    rc, out, err = _main(["fit", tone_csv.name, "-t", "tuned", "--features", "stretch", "--select-k", "1..2",
                          "--criterion", "cv", "-o", "cv.moekit"], capsys)
    assert rc == 0, err
    assert "cross-validated mean log-likelihood" in out + err
    _one_line_error(*_main(["fit", tone_csv.name, "-t", "tuned", "--criterion", "aic", "-o", "m.moekit"], capsys), 2,
                    r"--criterion chooses among the K of --select-k")


def test_select_k_lists_the_skipped_k_and_mdn_chooses_by_cross_validation(tmp_path, capsys, monkeypatch):
    """K with as many free parameters as rows is shown as skipped (and recorded); MDNs choose by 5-fold CV."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=14)
    pcsv.write_csv(pa.table({"x": x, "y": 2 * x + rng.normal(size=14)}), "s.csv")
    rc, out, err = _main(["fit", "s.csv", "-t", "y", "--select-k", "1..4", "-o", "s.moekit"], capsys)
    assert rc == 0, err
    assert re.search(r"^  K= 4  skipped: 18 parameters >= 14 rows$", out, re.M), out  # 5K - 2 parameters for K = 4
    assert re.search(r"^  K= 3  [-0-9.e+]+", out, re.M)
    sel = moekit.io.read_info("s.moekit")["metadata"]["cli"]["selection"]
    assert sel["skipped"] == {"4": 18} and sel["rows"] == 14 and set(sel["scores"]) == {"1", "2", "3"}
    rc, out, err = _main(["info", "s.moekit"], capsys)
    assert rc == 0 and "skipped K=4" in out, err
    rc, out, err = _main(["fit", "s.csv", "-t", "y", "--model", "mdn", "--select-k", "1..2", "--max-iter", "3",
                          "-o", "n.moekit"], capsys)
    assert rc == 0, err
    assert "cross-validated mean log-likelihood (higher is better) by number of components:" in out
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "(default: bic; MDN: cv," in " ".join(capsys.readouterr().out.split())  # the help says so
