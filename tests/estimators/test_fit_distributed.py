"""An estimator fitted on a file source by 2 gloo processes equals the one-process fit: parameters, standard errors,
and a bad row on one rank's shard is the same one-line error on every rank."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from moekit import MoERegressor
from moekit.data import ParquetSource
from moekit.training.distributed import gloo_available, launch

pytestmark = pytest.mark.skipif(not gloo_available(), reason="torch.distributed gloo is not available")


def _files(folder, bad_row=None):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(3):
        n = 300
        x = rng.normal(size=(n, 2))
        z = rng.random(n) < 1 / (1 + np.exp(-2 * x[:, 0]))
        y = np.where(z, 1 + 2 * x[:, 1], -1 - x[:, 1]) + 0.3 * rng.normal(size=n)
        df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "g": rng.choice(["u", "v"], n), "y": y,
                           "w": rng.random(n) + 0.5})
        if bad_row is not None and i == 2:
            df.loc[bad_row, "a"] = np.nan
        df.to_parquet(folder / f"part{i}.parquet", row_group_size=100)
    return folder


def _est():
    return MoERegressor(n_experts=2, random_state=0, compute_se=True, max_iter=60)


def _worker(rank, world, folder, out):
    import torch.distributed as dist

    src = ParquetSource(folder, target="y", weight="w", batch_rows=128)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = _est().fit(src, process_group=dist.group.WORLD)
        torch.save({"params": [p.detach() for p in est.model_.parameters()], "ll": est.log_likelihood_,
                    "se": torch.tensor(est.summary().table["std_error"].to_numpy())}, f"{out}/rank{rank}.pt")
    except ValueError as err:
        with open(f"{out}/rank{rank}.err", "w") as f:
            f.write(str(err))


def test_two_processes_give_the_one_process_fit_and_standard_errors(tmp_path):
    folder = _files(tmp_path / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = _est().fit(ParquetSource(folder, target="y", weight="w"))
    launch(_worker, 2, str(folder), str(tmp_path), timeout_s=120)
    se = torch.tensor(one.summary().table["std_error"].to_numpy())
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for p, q in zip(one.model_.parameters(), got["params"]):
            assert torch.allclose(p.detach(), q, rtol=1e-10, atol=1e-10)
        assert abs(got["ll"] - one.log_likelihood_) <= 1e-8 * abs(one.log_likelihood_)
        assert torch.allclose(got["se"], se, rtol=1e-8, atol=1e-12, equal_nan=True)


def test_a_bad_row_in_one_shard_is_the_same_error_on_every_rank(tmp_path):
    folder = _files(tmp_path / "data", bad_row=7)
    launch(_worker, 2, str(folder), str(tmp_path), timeout_s=120)
    msgs = [(tmp_path / f"rank{r}.err").read_text() for r in (0, 1)]
    assert msgs[0] == msgs[1]
    assert "part2.parquet" in msgs[0] and "row 8 " in msgs[0]  # rows counted from 1 within the file and "rank 1" in msgs[0]
    assert "\n" not in msgs[0]
    assert not list(tmp_path.glob("rank*.pt"))
