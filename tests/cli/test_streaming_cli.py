"""Bigger than memory, bigger than one machine, through the real command: ``moekit fit FOLDER`` in memory,
streamed under a small --memory-budget and under torchrun with 2 processes gives one model; a fit killed after a
checkpoint and resumed equals an uninterrupted one; a failed process ends a torchrun job with one line on every
process and no model file; bad data sets are one-line errors naming the file (and the row), with no output."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import moekit
from cli_helpers import ROOT, run_main

TOL = 1e-10


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    for v in ("MOEKIT_DEBUG", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(v, None)
    return env


def _regimes(rng, n, poisson=False):
    """Two soft regimes of x0 (the gate), linear in x1 within each (Gaussian, or Poisson counts)."""
    x0, x1 = rng.uniform(-2, 2, n), rng.normal(size=n)
    first = rng.uniform(size=n) < 1 / (1 + np.exp(-3 * x0))
    if poisson:
        y = rng.poisson(np.exp(np.where(first, 0.5 + 0.5 * x1, 1.5 - 0.3 * x1))).astype(float)
    else:
        y = np.where(first, 1 + 2 * x0 + 0.5 * x1, -1 - x0 + 0.3 * x1) + 0.3 * rng.normal(size=n)
    return {"x0": x0, "x1": x1, "y": y}


def _folder(path, parts=3, rows=400, seed=0, poisson=False):
    """A data set of ``parts`` Parquet files of ``rows`` rows each."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(parts):
        pq.write_table(pa.table(_regimes(rng, rows, poisson)), os.path.join(path, f"part-{i}.parquet"))
    return path


def _rewrite(path, column, row, value, as_type=None):
    """The Parquet file ``path`` with one cell changed (or a column retyped), written in place atomically."""
    t = pq.read_table(path).to_pandas()
    if as_type is not None:
        t[column] = t[column].astype(as_type)
    else:
        t.loc[row, column] = value
    tmp = path + ".tmp"
    pq.write_table(pa.Table.from_pandas(t, preserve_index=False), tmp)
    os.replace(tmp, path)


def _same_fit(a_path, b_path, tol=TOL):
    """Two model files hold the same model: the same parameters and the same EM history (hence the same start)."""
    a, b = moekit.load(a_path), moekit.load(b_path)
    sa, sb = a.model_.state_dict(), b.model_.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.allclose(sa[k], sb[k], rtol=0, atol=tol), (k, float((sa[k] - sb[k]).abs().max()))
    ha, hb = np.asarray(a.mean_log_likelihood_history_), np.asarray(b.mean_log_likelihood_history_)
    assert ha.shape == hb.shape and np.abs(ha - hb).max() < tol  # history[0] is the start's log-likelihood
    return a, b


def _one_error_line(err: str, code_rc: int, rc: int) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == code_rc and len(lines) == 1 and lines[0].startswith("moekit: error:"), (rc, err)
    return lines[0]


def _no_output(folder):
    """Nothing written: no model or output file, and no temporary file left behind."""
    left = [p for p in os.listdir(folder) if p.startswith(("out", ".moekit")) or p.endswith((".tmp", ".moekit"))]
    assert left == [], left


def _torchrun(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "moekit", *map(str, args)], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _moekit_lines(err: str) -> list:
    """The lines moekit printed on stderr (torchrun adds its own report of a failed job)."""
    return [ln for ln in err.splitlines() if ln.startswith("moekit:")]


# ------------------------------------------------------------------ one model, however it was run
def _fit_in_memory_and_streamed(tmp_path, capsys):
    """The data set of the first test, fitted in memory (a.moekit) and streamed under 1KB (b.moekit)."""
    data = _folder(tmp_path / "data")
    rc, out, err = run_main(["fit", data, "--target", "y", "--seed", 0, "-o", tmp_path / "a.moekit"], capsys)
    assert rc == 0 and "on 1200 rows" in out and "streamed" not in out, err
    rc, out, err = run_main(["fit", data, "--target", "y", "--seed", 0, "--memory-budget", "1KB", "--batch-rows", 250,
                             "-o", tmp_path / "b.moekit"], capsys)
    assert rc == 0 and "on 1200 rows of 3 files, streamed" in out, err


def test_fit_folder_in_memory_and_streamed_under_a_small_memory_budget_give_the_same_model(tmp_path, capsys):
    _fit_in_memory_and_streamed(tmp_path, capsys)
    a, _ = _same_fit(tmp_path / "a.moekit", tmp_path / "b.moekit")
    assert a.n_experts_ == 2 and a.converged_
    assert a.feature_names_in_.tolist() == ["x0", "x1"]


@pytest.mark.slow  # torchrun starts three interpreters that import torch: about 20 s on 2 busy cores
def test_fit_folder_under_torchrun_with_2_processes_gives_the_same_model(tmp_path, capsys):
    _fit_in_memory_and_streamed(tmp_path, capsys)
    job = _torchrun("fit", "data", "--target", "y", "--seed", 0, "--distributed", "--timeout", 120, "-o", "c.moekit",
                    cwd=tmp_path)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err
    assert out.count("fitted MoERegressor") == 1 and "streamed by 2 processes" in out  # rank 0 alone prints
    assert _moekit_lines(err) == []
    _same_fit(tmp_path / "a.moekit", tmp_path / "c.moekit")
    _same_fit(tmp_path / "b.moekit", tmp_path / "c.moekit")
    cli = moekit.io.read_info(tmp_path / "c.moekit")["metadata"]["cli"]
    assert cli["encoded_features"] == ["x0", "x1"] and cli["training_data"]["rows"] == 1200


def test_streamed_fit_shows_a_progress_bar_per_pass_only_when_asked(tmp_path, capsys):
    data = _folder(tmp_path / "data", rows=200)
    argv = ["fit", data, "--target", "y", "--memory-budget", "2KB", "-o", tmp_path / "m.moekit"]
    rc, _, err = run_main(argv, capsys)
    assert rc == 0 and "pass 1" not in err  # stderr is not a terminal: quiet
    rc, _, err = run_main(argv + ["--progress"], capsys)
    assert rc == 0 and "pass 1" in err and "pass 2" in err and "rows/s" in err
    rc, _, err = run_main(argv + ["--progress", "--quiet"], capsys)
    assert rc == 0 and err == ""


def test_predict_streams_a_folder_batch_by_batch_into_parquet(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    assert run_main(["fit", data, "--target", "y", "-o", tmp_path / "m.moekit"], capsys)[0] == 0
    rc, _, err = run_main(["predict", tmp_path / "m.moekit", data, "-o", tmp_path / "whole.parquet"], capsys)
    assert rc == 0, err
    for what in (["--what", "mean"], ["--what", "quantiles", "--keep", "x1"]):
        rc, _, err = run_main(["predict", tmp_path / "m.moekit", data, "-o", tmp_path / "s.parquet", "--memory-budget",
                               "1KB", "--batch-rows", 170, *what], capsys)
        assert rc == 0 and "predicted batch by batch" in err, err
        got = pq.read_table(tmp_path / "s.parquet")
        assert got.num_rows == 1200
    assert got.column_names == ["x1", "y_q0.05", "y_q0.5", "y_q0.95"]
    rc, _, err = run_main(["predict", tmp_path / "m.moekit", data, "-o", tmp_path / "s.parquet", "--memory-budget",
                           "1KB"], capsys)
    whole, streamed = pq.read_table(tmp_path / "whole.parquet"), pq.read_table(tmp_path / "s.parquet")
    assert whole.schema == streamed.schema
    assert np.array_equal(whole["y_mean"].to_numpy(), streamed["y_mean"].to_numpy())


# ------------------------------------------------------------------ faults
def test_a_fit_killed_after_a_checkpoint_and_resumed_equals_an_uninterrupted_fit(tmp_path, capsys):
    data = _folder(tmp_path / "data", rows=1000, seed=3, poisson=True)  # Poisson experts: EM iterates over the files
    fit = ["fit", "--target", "y", "--expert", "poisson", "--seed", 0]
    killed, state = None, None
    for attempt in range(3):  # a fit that ends before the kill proves nothing: try again (it has not happened so far)
        ckpt = tmp_path / f"k{attempt}.ckpt"
        job = subprocess.Popen([sys.executable, "-m", "moekit", *map(str, fit), "data", "--checkpoint", ckpt.name,
                                "-o", "k.moekit"], cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not ckpt.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        job.send_signal(signal.SIGKILL)
        job.wait()
        state = torch.load(ckpt, weights_only=True)["state"] if ckpt.exists() else None
        if state is not None and not state["done"] and not (tmp_path / "k.moekit").exists():
            killed = ckpt
            break
        (tmp_path / "k.moekit").unlink(missing_ok=True)
    assert killed is not None, "the fit ended before it could be killed"
    # no partial model file either (a checkpoint being rewritten when the kill lands leaves its own temporary file,
    # .moekit-checkpoint-*.tmp, beside the intact last checkpoint: the atomic write's price under SIGKILL)
    partial = [p.name for p in tmp_path.iterdir() if p.name.startswith(".moekit") and "checkpoint" not in p.name]
    assert partial == []
    rc, _, err = run_main([*fit, data, "--checkpoint", killed, "--resume", "-o", tmp_path / "resumed.moekit"], capsys)
    assert rc == 0, err
    rc, _, err = run_main([*fit, data, "--checkpoint", tmp_path / "u.ckpt", "-o", tmp_path / "whole.moekit"], capsys)
    assert rc == 0, err
    resumed, whole = _same_fit(tmp_path / "resumed.moekit", tmp_path / "whole.moekit")
    assert resumed.n_iter_ == whole.n_iter_ > state["n_iter"]


@pytest.mark.slow  # a torchrun job (about 20 s on 2 busy cores)
def test_a_failed_process_ends_a_torchrun_job_with_one_line_on_every_process_and_no_model(tmp_path):
    data = _folder(tmp_path / "data", rows=1000, seed=3, poisson=True)
    # rank 1 reads part-1 and part-2 (contiguous shares balanced by rows): once the EM passes run, part-2 gains a
    # missing value, which rank 1 alone reads
    bad = tmp_path / "bad.parquet"
    shutil.copy(os.path.join(data, "part-2.parquet"), bad)
    _rewrite(str(bad), "x1", 17, np.nan)
    job = _torchrun("fit", "data", "--target", "y", "--expert", "poisson", "--distributed", "--timeout", 60,
                    "--checkpoint", "job.ckpt", "-o", "out.moekit", cwd=tmp_path)
    deadline = time.monotonic() + 200
    while not (tmp_path / "job.ckpt").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.replace(bad, os.path.join(data, "part-2.parquet"))
    out, err = job.communicate(timeout=300)
    assert job.returncode != 0 and out == ""
    lines = _moekit_lines(err)
    assert len(lines) == 2, err
    one = next(ln for ln in lines if "rank 1 of 2" in ln)
    zero = next(ln for ln in lines if "rank 0 of 2" in ln)
    assert "'x1'" in one and "row 18 of data/part-2.parquet" in one
    assert "another process failed" in zero or "stopped by torchrun" in zero
    assert not (tmp_path / "out.moekit").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".moekit") and not p.startswith(".moekit-checkpoint")] == []


def test_distributed_outside_torchrun_says_how_to_launch(tmp_path, capsys, monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    data = _folder(tmp_path / "data", rows=50)
    rc, _, err = run_main(["fit", data, "--target", "y", "--distributed", "-o", tmp_path / "out.moekit"], capsys)
    line = _one_error_line(err, 2, rc)
    assert "torchrun --nproc-per-node" in line and "RANK" in line
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, _, err = run_main(["fit", data, "--target", "y", "-o", tmp_path / "out.moekit"], capsys)
    assert "add --distributed" in _one_error_line(err, 2, rc)
    _no_output(tmp_path)


# ------------------------------------------------------------------ bad input, through the command
@pytest.mark.parametrize("how", [[], ["--memory-budget", "1KB"]], ids=["in-memory", "streamed"])
def test_parts_with_other_columns_or_types_name_the_file(tmp_path, capsys, how):
    data = _folder(tmp_path / "data", rows=60)
    t = pq.read_table(os.path.join(data, "part-1.parquet")).rename_columns(["x0", "x2", "y"])
    pq.write_table(t, os.path.join(data, "part-1.parquet"))
    rc, _, err = run_main(["fit", data, "--target", "y", "-o", tmp_path / "out.moekit", *how], capsys)
    line = _one_error_line(err, 1, rc)
    assert "part-1.parquet" in line and "x1" in line and "same columns" in line
    _folder(tmp_path / "data", rows=60)  # the columns again, but x1 as text in part-2
    _rewrite(os.path.join(data, "part-2.parquet"), "x1", None, None, as_type=str)
    rc, _, err = run_main(["fit", data, "--target", "y", "-o", tmp_path / "out.moekit", *how], capsys)
    line = _one_error_line(err, 1, rc)
    assert "part-2.parquet" in line and "'x1'" in line and "type" in line
    _no_output(tmp_path)


@pytest.mark.parametrize("how", [[], ["--memory-budget", "1KB"]], ids=["in-memory", "streamed"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_missing_or_infinite_input_names_the_file_and_the_row(tmp_path, capsys, how, value):
    data = _folder(tmp_path / "data", rows=60)
    _rewrite(os.path.join(data, "part-2.parquet"), "x1", 6, value)
    rc, _, err = run_main(["fit", data, "--target", "y", "-o", tmp_path / "out.moekit", *how], capsys)
    line = _one_error_line(err, 1, rc)
    assert "'x1'" in line and "row 7 of" in line and "part-2.parquet" in line
    _no_output(tmp_path)


def test_on_bad_rows_skip_reports_how_many_rows_were_skipped(tmp_path, capsys):
    data = _folder(tmp_path / "data", rows=100)
    _rewrite(os.path.join(data, "part-0.parquet"), "x0", 3, np.nan)
    _rewrite(os.path.join(data, "part-2.parquet"), "x1", 50, np.inf)
    for how in ([], ["--memory-budget", "1KB"]):
        rc, out, err = run_main(["fit", data, "--target", "y", "--on-bad-rows", "skip", "-o", tmp_path / "m.moekit",
                                 *how], capsys)
        assert rc == 0 and "on 298 rows (2 bad rows skipped" in out, (out, err)
        assert moekit.io.read_info(tmp_path / "m.moekit")["metadata"]["cli"]["training_data"]["rows"] == 298


def test_an_empty_folder_or_one_without_rows_is_a_clear_error(tmp_path, capsys):
    os.makedirs(tmp_path / "empty")
    for how in ([], ["--memory-budget", "1KB"]):
        rc, _, err = run_main(["fit", tmp_path / "empty", "--target", "y", "-o", tmp_path / "out.moekit", *how], capsys)
        assert "holds no data files" in _one_error_line(err, 1, rc)
    os.makedirs(tmp_path / "norows")
    pq.write_table(pa.table({"x0": pa.array([], pa.float64()), "y": pa.array([], pa.float64())}),
                   tmp_path / "norows" / "part-0.parquet")
    for how in ([], ["--memory-budget", "1KB"]):
        rc, _, err = run_main(["fit", tmp_path / "norows", "--target", "y", "-o", tmp_path / "out.moekit", *how], capsys)
        assert "no" in _one_error_line(err, 1, rc) and "rows" in err
    _no_output(tmp_path)


def test_predict_refuses_to_write_into_the_data_folder(tmp_path, capsys):
    data = _folder(tmp_path / "data", rows=50)
    assert run_main(["fit", data, "--target", "y", "-o", tmp_path / "m.moekit"], capsys)[0] == 0
    rc, _, err = run_main(["predict", tmp_path / "m.moekit", data, "-o", os.path.join(data, "pred.parquet")], capsys)
    assert "inside the input DATA folder" in _one_error_line(err, 2, rc)
    assert sorted(os.listdir(data)) == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]


def test_a_failed_streamed_prediction_writes_nothing(tmp_path, capsys):
    data = _folder(tmp_path / "data", rows=300)
    assert run_main(["fit", data, "--target", "y", "-o", tmp_path / "m.moekit"], capsys)[0] == 0
    (tmp_path / "out.parquet").write_bytes(b"old")  # an existing output stays as it was
    _rewrite(os.path.join(data, "part-2.parquet"), "x0", 250, np.nan)  # after several batches were written
    rc, _, err = run_main(["predict", tmp_path / "m.moekit", data, "-o", tmp_path / "out.parquet", "--memory-budget",
                           "1KB", "--batch-rows", 100], capsys)
    line = _one_error_line(err, 1, rc)
    assert "part-2.parquet" in line and "row 251" in line
    assert (tmp_path / "out.parquet").read_bytes() == b"old"
    assert glob.glob(str(tmp_path / ".moekit-*")) == []


@pytest.mark.parametrize("argv,fragment", [
    (["--memory-budget", "lots"], "--memory-budget: expected a size such as 512MB"),
    (["--memory-budget", "0KB"], "at least 1 byte"),
    (["--resume"], "give --checkpoint PATH too"),
    (["--checkpoint", "c.ckpt", "--resume"], "does not exist"),
    (["--checkpoint", "c.ckpt", "--n-init", "3"], "--checkpoint follows one start"),
    (["--on-bad-rows", "skip", "--select-k", "1..3"], "--select-k fits every K"),
    (["--memory-budget", "1KB", "--missing", "drop"], "use --on-bad-rows skip"),
    (["--checkpoint", "c.ckpt", "--model", "mdn"], "--model mdn, minibatch gradients) cannot be checkpointed"),
    (["--memory-budget", "1KB", "--formula", "y ~ x0"], "--formula reads the whole table in memory"),
    (["--timeout", "-1"], "--timeout"),
])
def test_streaming_options_refused_with_one_line(tmp_path, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    data = _folder(tmp_path / "data", rows=40)
    target = [] if "--formula" in argv else ["--target", "y"]  # a formula names the target itself
    rc, _, err = run_main(["fit", data, *target, "-o", tmp_path / "out.moekit", *argv], capsys)
    line = _one_error_line(err, 1 if fragment == "does not exist" else 2, rc)
    assert fragment in line
    _no_output(tmp_path)


def test_a_tree_fit_checkpoints_and_resumes_through_the_command(tmp_path, capsys):
    """--model hme --checkpoint: a finished checkpoint resumed gives the same model file."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2))
    y = np.where(x[:, 0] > 0, x[:, 1], -x[:, 1]) + 0.2 * rng.normal(size=600)
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": y}).to_parquet(tmp_path / "d.parquet")
    base = ["fit", str(tmp_path / "d.parquet"), "--target", "y", "--model", "hme", "--seed", "0", "--max-iter", "20",
            "--checkpoint", str(tmp_path / "c.ckpt")]
    assert run_main(base + ["-o", tmp_path / "a.moekit"], capsys)[0] == 0
    assert run_main(base + ["--resume", "-o", tmp_path / "b.moekit"], capsys)[0] == 0
    a, b = moekit.load(tmp_path / "a.moekit"), moekit.load(tmp_path / "b.moekit")
    for p, q in zip(a.model_.parameters(), b.model_.parameters()):
        assert torch.equal(p, q)
