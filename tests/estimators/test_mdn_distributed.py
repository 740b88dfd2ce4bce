"""``fit(source, process_group=...)`` for gradient training (MDNRegressor, MoERegressor(fit_method="gradient")): 2
gloo processes, each reading the whole source and training with DistributedDataParallel, end with the same model
on every rank, whatever seed each rank was given, and equal to one process on the same global minibatches."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from moekit import MDNRegressor, MoERegressor
from moekit.data import ParquetSource
from moekit.training.distributed import gloo_available, launch

pytestmark = pytest.mark.skipif(not gloo_available(), reason="torch.distributed gloo is not available")

MDN = dict(n_components=2, hidden_layer_sizes=(8,), max_epochs=6, batch_size=32, patience=3, dtype="float64",
           target_noise=0.05)
MOE = dict(n_experts=2, fit_method="gradient", max_iter=6, batch_size=40, dtype="float64")


def _files(folder):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(2):
        n = 151  # odd: the distributed sampler pads with a row of weight 0
        x = rng.normal(size=(n, 2))
        y = np.where(x[:, 0] > 0, 1 + 2 * x[:, 1], -1 - x[:, 1]) + 0.3 * rng.normal(size=n)
        pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": y, "w": rng.random(n) + 0.5}).to_parquet(
            folder / f"part{i}.parquet", row_group_size=50)
    return folder


def _record(est):
    return {"state": {k: v.detach().clone() for k, v in est.model_.state_dict().items()},
            "history": est.mean_log_likelihood_history_.tolist(), "ll": est.log_likelihood_,
            "validation": getattr(est, "validation_history_", np.zeros(0)).tolist(), "n_iter": est.n_iter_}


def _worker(rank, world, folder, out):
    import torch.distributed as dist

    src = ParquetSource(folder, target="y", weight="w", batch_rows=64)
    solo = dist.new_group([0])  # rank 0 alone: one process on the same global minibatches
    got = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # each rank its own seed: the seed, the start and the weights are rank 0's
        got["mdn"] = _record(MDNRegressor(**MDN, random_state=rank).fit(src, process_group=dist.group.WORLD))
        got["moe"] = _record(MoERegressor(**MOE, random_state=rank).fit(src, process_group=dist.group.WORLD))
        if rank == 0:
            got["mdn_one"] = _record(MDNRegressor(**MDN, random_state=0).fit(src, process_group=solo))
            got["moe_one"] = _record(MoERegressor(**MOE, random_state=0).fit(src, process_group=solo))
        try:  # the source beyond memory_budget: the same one-line error on every rank, none waits
            MDNRegressor(**MDN).fit(src, process_group=dist.group.WORLD, memory_budget=1000)
        except ValueError as e:
            got["error"] = str(e)
    torch.save(got, f"{out}/rank{rank}.pt")


def _close(a, b, rtol):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=rtol, atol=rtol)


def test_two_processes_train_as_one_process_on_the_same_global_minibatches(tmp_path):
    folder = _files(tmp_path / "data")
    launch(_worker, 2, str(folder), str(tmp_path), timeout_s=120)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for key in ("mdn", "moe"):
        a, b, one = r0[key], r1[key], r0[f"{key}_one"]
        assert a["history"] == b["history"] and a["validation"] == b["validation"] and a["ll"] == b["ll"], key
        for k in a["state"]:
            assert torch.equal(a["state"][k], b["state"][k]), (key, k)  # rank-independent
        assert a["n_iter"] == one["n_iter"]
        _close(a["history"], one["history"], 1e-6)
        _close(a["validation"], one["validation"], 1e-6)
        _close(a["ll"], one["ll"], 1e-6)
        for k in a["state"]:
            _close(a["state"][k], one["state"][k], 1e-6)
        assert a["history"][-1] > a["history"][0]  # it trained
    assert len(r0["mdn"]["validation"]) == r0["mdn"]["n_iter"] + 1  # the validation split of the arrays' fit
    assert r0["error"] == r1["error"] and "exceeds memory_budget" in r0["error"] and "\n" not in r0["error"]
