"""``moekit fit DATA --model mdn`` over a folder, through the real command: read whole it is the in-memory fit;
above --memory-budget it streams minibatches with the in-memory fit's standardisation; under torchrun with
--distributed, 2 processes train as one (DistributedDataParallel) and rank 0 alone writes the model; the options
it cannot honour are one-line refusals that write nothing."""

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import moekit
from cli_helpers import ROOT, run_main

FIT = ["--target", "y", "--model", "mdn", "-k", "2", "--max-iter", "5", "--seed", "0"]
BUFFERS = ("x_loc", "x_scale", "y_loc", "y_scale")


def _folder(path, parts=3, rows=300, seed=0):
    """Parquet files of an inverse-sine-like data set: y has two branches in x0; x1 is noise."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(parts):
        x0, x1 = rng.uniform(-2, 2, rows), rng.normal(size=rows)
        y = np.where(rng.uniform(size=rows) < 0.5, np.sin(2 * x0), -x0) + 0.1 * rng.normal(size=rows)
        pq.write_table(pa.table({"x0": x0, "x1": x1, "y": y}), os.path.join(path, f"part-{i}.parquet"))
    return path


def _states(*paths):
    return [moekit.load(p).model_.state_dict() for p in paths]


def _one_line(err, rc, want_rc=2):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == want_rc and len(lines) == 1 and lines[0].startswith("moekit: error:"), (rc, err)
    return lines[0]


def test_mdn_fits_a_folder_in_memory_read_whole_and_streamed(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    rc, out, err = run_main(["fit", data, *FIT, "-o", tmp_path / "a.moekit"], capsys)
    assert rc == 0 and "on 900 rows" in out and "streamed" not in out, err
    # the folder as a source of batches, read whole (--on-bad-rows skip reads DATA as a source): the same fit
    rc, out, err = run_main(["fit", data, *FIT, "--on-bad-rows", "skip", "-o", tmp_path / "b.moekit"], capsys)
    assert rc == 0 and "read in memory" in out, err
    a, b = _states(tmp_path / "a.moekit", tmp_path / "b.moekit")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # above --memory-budget: minibatches streamed from the files, standardised as the in-memory fit
    rc, out, err = run_main(["fit", data, *FIT, "--memory-budget", "1KB", "--batch-rows", 128, "--progress",
                             "-o", tmp_path / "c.moekit"], capsys)
    assert rc == 0 and "fitted MDNRegressor (2 components) on 900 rows of 3 files, streamed" in out, err
    assert "pass 1" in err and "pass 2" in err  # a progress bar per pass over the files
    c = moekit.load(tmp_path / "c.moekit")
    assert c.feature_names_in_.tolist() == ["x0", "x1"] and c.n_iter_ == 5
    for k in BUFFERS:
        torch.testing.assert_close(c.model_.state_dict()[k], a[k], rtol=2e-7, atol=0)
    assert c.mean_log_likelihood_history_[-1] > c.mean_log_likelihood_history_[0]
    # and its predictions stream back out
    rc, _, err = run_main(["predict", tmp_path / "c.moekit", data, "-o", tmp_path / "p.parquet", "--memory-budget",
                           "1KB", "--batch-rows", 100, "--what", "quantiles"], capsys)
    assert rc == 0 and "predicted batch by batch" in err, err
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 900


@pytest.mark.parametrize("argv,fragment,want_rc", [
    (["--checkpoint", "c.ckpt"], "(--model mdn, minibatch gradients) cannot be checkpointed", 2),
    (["--distributed", "--memory-budget", "1KB"], "--model mdn --distributed trains every process on the whole of "
     "DATA in memory (DistributedDataParallel), but DATA exceeds --memory-budget", 2),
    (["--distributed"], "torchrun --nproc-per-node", 2),  # within the budget: it says how to launch
])
def test_mdn_options_it_cannot_honour_are_one_line_refusals(tmp_path, capsys, monkeypatch, argv, fragment, want_rc):
    monkeypatch.chdir(tmp_path)
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    data = _folder(tmp_path / "data", rows=40)
    rc, _, err = run_main(["fit", data, *FIT, "-o", tmp_path / "out.moekit", *argv], capsys)
    assert fragment in _one_line(err, rc, want_rc)
    assert sorted(os.listdir(tmp_path)) == ["data"]  # nothing written


def _torchrun(n, *args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    for v in ("MOEKIT_DEBUG", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(v, None)
    job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                          "-m", "moekit", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    return job.returncode, job.stdout, job.stderr


@pytest.mark.slow  # two torchrun jobs (three interpreters that import torch): about 25 s on 2 busy cores
def test_mdn_under_torchrun_with_2_processes_trains_as_one_process(tmp_path):
    _folder(tmp_path / "data")
    runs = {}
    for n in (1, 2):
        rc, out, err = _torchrun(n, "fit", "data", *FIT, "--distributed", "--timeout", 120, "-o", f"t{n}.moekit",
                                 cwd=tmp_path)
        assert rc == 0, err
        assert out.count("fitted MDNRegressor") == 1 and f"read in memory by {n} processes" in out  # rank 0 prints
        assert [ln for ln in err.splitlines() if ln.startswith("moekit:")] == []
        runs[n] = moekit.load(tmp_path / f"t{n}.moekit")
    # each process its share of every global minibatch: one process on the same global minibatches, to float32
    one, two = runs[1], runs[2]
    for k, v in one.model_.state_dict().items():
        torch.testing.assert_close(two.model_.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two.mean_log_likelihood_history_, one.mean_log_likelihood_history_, rtol=1e-5)
    assert two.n_iter_ == one.n_iter_ == 5
    assert moekit.io.read_info(tmp_path / "t2.moekit")["metadata"]["cli"]["training_data"]["rows"] == 900
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".moekit")) == ["t1.moekit", "t2.moekit"]
