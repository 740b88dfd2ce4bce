"""Distributed EM: two gloo processes on the CPU fit exactly what one process fits.

Each rank is handed the whole data set as a source and shards it itself; every
E-step sum and every Newton pass of the M-step is all-reduced, every rank takes
the same M-step, and the start (made on the data's start sample) is broadcast
from rank 0.  Parameters and the whole history equal a one-process in-memory
fit to 1e-10, and the two ranks hold identical models.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist

from moekit import LinearGaussianExpert, MixtureOfExperts, PoissonExpert, SoftmaxGate, fit_em
from moekit.data import ArrayBatches
from moekit.training.distributed import gloo_available, launch
from moekit.training.tree import fit_tree_em
from moekit.tree import build_tree

D = torch.float64
N = 601  # odd: the two shards differ in size
TOL = 1e-10


class Streamed(ArrayBatches):
    """Rows read batch by batch (not kept): every Newton pass reads the rank's shard again."""

    in_memory = False

    def shard(self, rank, world_size):
        s = super().shard(rank, world_size)
        return Streamed(s.x, s.y, s.weight, batch_size=s.batch_size)


class _NoRows:
    """A rank's shard that holds no file: it yields no batch at all."""

    in_memory, n_rows, total_weight = False, 0, 0.0

    def __iter__(self):
        return iter(())


class OneFile(Streamed):
    """All rows in one file: rank 0 reads it, the other ranks have nothing to read."""

    def shard(self, rank, world_size):
        return Streamed(self.x, self.y, self.weight, batch_size=self.batch_size) if rank == 0 else _NoRows()


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 2, generator=g, dtype=D)
    z = torch.rand(N, generator=g, dtype=D) < torch.sigmoid(1.5 * x[:, 0] - 0.5 * x[:, 1])
    a = torch.where(z, 1.0 + x[:, 0] - x[:, 1], -1.0 + 0.5 * x[:, 1])
    y = a + 0.3 * torch.randn(N, generator=g, dtype=D)
    counts = torch.poisson((0.5 * a).exp(), generator=g)
    curve = torch.sin(2.5 * x[:, 0]) + 0.5 * x[:, 1] + 0.3 * torch.randn(N, generator=g, dtype=D)
    w = torch.rand(N, generator=g, dtype=D) + 0.2
    return x, {"gauss": y, "counts": counts, "curve": curve}, w


def _moe():
    return MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, n_experts=2))


def _glm():
    return MixtureOfExperts(SoftmaxGate(2, 2), PoissonExpert(2, n_experts=2))


def _tree():
    return build_tree(2, depth=2, branching=2)


# name -> (model, target, batch size (None: one batch per shard), source class, fit function, keywords)
CASES = {
    "softmax-gate": (_moe, "gauss", None, ArrayBatches, fit_em, {"max_iter": 30}),
    "poisson-streamed": (_glm, "counts", 64, Streamed, fit_em, {"max_iter": 30}),
    "tree-depth2": (_tree, "curve", 128, ArrayBatches, fit_tree_em, {"max_iter": 20, "init": "kmeans"}),
    "init-auto": (_moe, "gauss", 100, Streamed, fit_em, {"max_iter": 30, "init": "auto"}),
    "n_init-2-sampled-start": (_moe, "gauss", 100, ArrayBatches, fit_em,
                               {"max_iter": 15, "n_init": 2, "init": "kmeans", "init_sample_rows": 250}),
    "a-rank-without-rows": (_glm, "counts", 128, OneFile, fit_em, {"max_iter": 20}),
}


def _run(name, process_group=None):
    """One case: over the source (each rank shards it) with ``process_group``, or in memory on arrays without."""
    make, target, batch_size, kind, fit, kw = CASES[name]
    x, ys, w = _data()
    y = ys[target]
    model = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning, pruning
        if process_group is None:
            res = fit(model, x, y, w, random_state=0, tol=0.0, **kw)
        else:
            source = kind(x, y, w, batch_size=batch_size)
            res = fit(model, source, process_group=process_group, random_state=0, tol=0.0, **kw)
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "history": list(res.history),
            "n_iter": res.n_iter, "inits": list(res.init_mean_log_likelihoods), "total": res.total_weight}


def _worker(rank, world_size, out_dir):
    """Each spawned rank fits every case on the same full data (launch has set up the default group)."""
    out = {name: _run(name, dist.group.WORLD) for name in CASES}
    torch.save(out, f"{out_dir}/rank{rank}.pt")


def _assert_same(a, b, what):
    assert list(a["state"]) == list(b["state"]), what
    for k in a["state"]:
        torch.testing.assert_close(b["state"][k], a["state"][k], rtol=TOL, atol=TOL,
                                   msg=lambda s, k=k: f"{what} {k}: {s}")
    assert len(a["history"]) == len(b["history"]) and a["n_iter"] == b["n_iter"], what
    np.testing.assert_allclose(b["history"], a["history"], rtol=0, atol=TOL, err_msg=what)
    np.testing.assert_allclose(b["inits"], a["inits"], rtol=0, atol=TOL, err_msg=what)
    assert b["total"] == pytest.approx(a["total"], rel=1e-12), what


@pytest.mark.skipif(not gloo_available(), reason="torch.distributed with the gloo backend is not available")
def test_two_gloo_processes_fit_what_one_process_fits(tmp_path):
    launch(_worker, 2, str(tmp_path), timeout_s=60)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    for name in CASES:
        one = _run(name)
        assert one["history"][-1] > one["history"][0], name  # the fit did something
        # both ranks hold the same model and report the same (all-reduced) history
        assert r0[name]["history"] == r1[name]["history"], name
        for k in r0[name]["state"]:
            assert torch.equal(r0[name]["state"][k], r1[name]["state"][k]), (name, k)
        _assert_same(one, r0[name], name)
    assert len(r0["n_init-2-sampled-start"]["inits"]) == 2
