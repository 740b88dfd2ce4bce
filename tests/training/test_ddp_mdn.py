"""Gradient training (MDN by fit_mdn, MoE by fit_gradient) from sources of batches and with DistributedDataParallel.

The distributed test spawns two gloo processes on the CPU and checks that they
train exactly as one process on the same global minibatches (the order the
DistributedSampler defines), in float64.
"""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate
from moekit.data import ArrayBatches
from moekit.mdn import MixtureDensityNetwork
from moekit.training.distributed import gloo_available, launch, rank_minibatches
from moekit.training.gradient import fit_gradient
from moekit.training.mdn import fit_mdn

# short fits on purpose: their convergence is not the point
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

F64 = torch.float64
N = 203  # odd: the sampler pads its order with a repeated row, which must weigh nothing


class Streamed(ArrayBatches):
    """Rows in memory posing as a source read from files: trainers must stream it, batch by batch."""

    in_memory = False

    def shard(self, rank, world_size):
        s = super().shard(rank, world_size)
        return Streamed(s.x, s.y, s.weight, batch_size=s.batch_size)


def _data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=F64) * 4 - 2
    branch = torch.rand(n, generator=g, dtype=F64) < 0.5
    y = torch.where(branch, torch.sin(2 * x[:, 0]), -x[:, 0]) + 0.1 * torch.randn(n, generator=g, dtype=F64)
    w = 0.5 + torch.rand(n, generator=g, dtype=F64)
    return x, y, w


def _moe_data(n=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=F64)
    y = torch.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 1]) + 0.1 * torch.randn(n, generator=g, dtype=F64)
    w = 0.5 + torch.rand(n, generator=g, dtype=F64)
    return x, y, w


def _mdn(seed):
    return MixtureDensityNetwork(1, n_components=3, hidden_layer_sizes=(8,), dtype=F64,
                                 generator=torch.Generator().manual_seed(seed))


def _moe():
    return MixtureOfExperts(SoftmaxGate(2, 2, dtype=F64), LinearGaussianExpert(2, n_experts=2, dtype=F64))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _record(res, model):
    return {"history": list(res.history), "validation": res.validation_history, "mean": res.mean_log_likelihood,
            "n_iter": res.n_iter, "state": _state(model)}


# every feature on: validation split, keep="recent", moving average, learning-rate decay, clipping,
# weights, input and target noise, the mixture start
MDN_FULL = dict(max_epochs=8, batch_size=32, keep="recent", lr_decay_patience=2, patience=5, input_noise=0.05,
                target_noise=0.05, random_state=3)
# full batch, from the network as built (no start): the order of the rows does not matter, so one
# process without torch.distributed (process_group=None) must agree too
MDN_PLAIN = dict(max_epochs=4, batch_size=10_000, init=None, average=None, early_stopping=False,
                 lr_decay_patience=None, random_state=3)
MOE_ADAM = dict(optimizer="adam", init="kmeans", max_epochs=6, batch_size=40, random_state=4)
# a start given as responsibilities, so that it does not depend on the seed (the distributed runs draw theirs
# on rank 0) and the single-process path without torch.distributed starts alike
_R = (_moe_data()[0][:, :1] > 0).double().numpy() * 0.8 + 0.1
MOE_LBFGS = dict(optimizer="lbfgs", init=np.hstack([_R, 1 - _R]), max_epochs=3, validation_fraction=0.0,
                 random_state=4)


def _worker(rank, world_size, out_dir):
    """Runs in each spawned process (the default group is set up by launch)."""
    group = dist.group.WORLD
    solo = dist.new_group([0])  # rank 0 alone: one process on the same global minibatches
    x, y, w = _data()
    xm, ym, wm = _moe_data()
    out = {}
    # each rank builds its network from its own seed: DDP must start every rank from rank 0's parameters
    net = _mdn(seed=rank)
    out["mdn"] = _record(fit_mdn(net, x, y, w, process_group=group, **MDN_FULL), net)
    net = _mdn(seed=rank)
    out["mdn_plain"] = _record(fit_mdn(net, x, y, w, process_group=group, **MDN_PLAIN), net)
    m = _moe()
    out["adam"] = _record(fit_gradient(m, xm, ym, wm, process_group=group, **MOE_ADAM), m)
    m = _moe()
    out["lbfgs"] = _record(fit_gradient(m, xm, ym, wm, process_group=group, **MOE_LBFGS), m)
    if rank == 0:
        net = _mdn(seed=0)
        out["mdn_one"] = _record(fit_mdn(net, x, y, w, process_group=solo, **MDN_FULL), net)
        net = _mdn(seed=0)
        out["mdn_plain_one"] = _record(fit_mdn(net, x, y, w, **MDN_PLAIN), net)
        m = _moe()
        out["adam_one"] = _record(fit_gradient(m, xm, ym, wm, process_group=solo, **MOE_ADAM), m)
        m = _moe()
        out["lbfgs_one"] = _record(fit_gradient(m, xm, ym, wm, **MOE_LBFGS), m)
    # a rank that passes other rows: every rank raises the same error (nobody waits forever)
    try:
        fit_mdn(_mdn(0), x + rank, y, w, max_epochs=1, process_group=group)
    except ValueError as e:
        out["mismatch"] = str(e)
    torch.save(out, f"{out_dir}/rank{rank}.pt")


def _close(a, b, rtol):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=rtol, atol=rtol)


def _same_run(a, b, rtol):
    _close(a["history"], b["history"], rtol)
    if a["validation"] is not None or b["validation"] is not None:
        _close(a["validation"], b["validation"], rtol)
    _close(a["mean"], b["mean"], rtol)
    assert a["n_iter"] == b["n_iter"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        _close(a["state"][k], b["state"][k], rtol)


@pytest.mark.skipif(not gloo_available(), reason="torch.distributed with the gloo backend is not available")
def test_ddp_two_processes_train_as_one_process_on_the_same_global_batches(tmp_path):
    launch(_worker, 2, str(tmp_path), timeout_s=120)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    for key in ("mdn", "mdn_plain", "adam", "lbfgs"):
        # every rank reports the same (all-reduced) history and holds the same parameters
        assert r0[key]["history"] == r1[key]["history"], key
        assert r0[key]["validation"] == r1[key]["validation"], key
        for k in r0[key]["state"]:
            assert torch.equal(r0[key]["state"][k], r1[key]["state"][k]), (key, k)
    # two ranks of B/2 rows per step == one process of B rows per step, same global order
    _same_run(r0["mdn"], r0["mdn_one"], 1e-6)
    _same_run(r0["adam"], r0["adam_one"], 1e-6)
    # full batch: also the ordinary single-process path (no torch.distributed at all)
    _same_run(r0["mdn_plain"], r0["mdn_plain_one"], 1e-6)
    _same_run(r0["lbfgs"], r0["lbfgs_one"], 1e-6)
    # the runs did train and used their features
    assert r0["mdn"]["history"][-1] > r0["mdn"]["history"][0]
    assert len(r0["mdn"]["validation"]) > 1
    assert r0["adam"]["history"][-1] > r0["adam"]["history"][0]
    assert r0["lbfgs"]["history"][-1] > r0["lbfgs"]["history"][0]
    # rank 1 built other starting weights; DDP gave it rank 0's: identical training
    assert r0["mdn_plain"]["history"][1] == r1["mdn_plain"]["history"][1]
    for r in (r0, r1):
        assert "pass the full data on every rank" in r["mismatch"]


@pytest.mark.parametrize("n, batch_size, world_size", [(203, 32, 2), (10, 4, 3), (7, 8, 2), (3, 1, 4)])
def test_rank_minibatches_deal_each_global_minibatch_among_the_ranks(n, batch_size, world_size):
    """Local minibatch j of every rank together is global minibatch j of the one-process order, padding aside."""
    for epoch in (0, 5):
        one, _, _ = rank_minibatches(n, batch_size * 10**6, 0, 1, seed=7, epoch=epoch)  # the global order
        parts = [rank_minibatches(n, batch_size, r, world_size, seed=7, epoch=epoch) for r in range(world_size)]
        b = parts[0][2]
        assert b == math.ceil(batch_size / world_size)
        n_batches = math.ceil(parts[0][0].numel() / b)
        seen = []
        for j in range(n_batches):
            got = torch.cat([rows[j * b : (j + 1) * b][pos[j * b : (j + 1) * b] < n] for rows, pos, _ in parts])
            want = one[j * b * world_size : (j + 1) * b * world_size]
            assert sorted(got.tolist()) == sorted(want.tolist())
            seen += got.tolist()
        assert sorted(seen) == list(range(n))  # every row once per epoch; the padding rows are marked


def test_in_memory_source_of_several_batches_trains_exactly_as_arrays():
    x, y, w = _data()
    src = ArrayBatches(x, y, w, batch_size=50)
    a, b = _mdn(0), _mdn(0)
    ra = fit_mdn(a, x, y, w, max_epochs=6, batch_size=32, random_state=0)
    rb = fit_mdn(b, src, max_epochs=6, batch_size=32, random_state=0)
    assert ra.history == rb.history and ra.validation_history == rb.validation_history
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    xm, ym, wm = _moe_data()
    ma, mb = _moe(), _moe()
    ga = fit_gradient(ma, xm, ym, wm, **MOE_ADAM)
    gb = fit_gradient(mb, ArrayBatches(xm, ym, wm, batch_size=64), **MOE_ADAM)
    assert ga.history == gb.history


def test_streamed_source_trains_an_mdn_batch_by_batch():
    x, y, w = _data(600)
    xv, yv, wv = _data(200, seed=5)
    net = _mdn(0)
    res = fit_mdn(net, Streamed(x, y, w, batch_size=128), max_epochs=25, batch_size=32, random_state=0,
                  validation=Streamed(xv, yv, wv, batch_size=64), lr_decay_patience=None)
    assert res.history[-1] > res.history[0] + 0.2  # the loss falls
    assert res.validation_history[-1] > res.validation_history[0] + 0.2
    ref = fit_mdn(_mdn(0), x, y, w, max_epochs=25, batch_size=32, random_state=0, lr_decay_patience=None)
    assert abs(res.history[-1] - ref.history[-1]) < 0.05  # as far as the same arrays get
    assert len(res.validation_history) == res.n_iter + 1
    assert res.total_weight == pytest.approx(float(w.sum() + wv.sum()))
    assert res.train_weight == pytest.approx(float(w.sum()))
    # the reported final mean is the mean over every row, train and validation
    with torch.no_grad():
        lp = torch.cat([net.log_prob(x, y), net.log_prob(xv, yv)])
        ww = torch.cat([w, wv])
    assert res.mean_log_likelihood == pytest.approx(float((ww * lp).sum() / ww.sum()), rel=1e-10)
    assert res.usage.sum() == pytest.approx(1.0)


def test_streamed_source_equals_arrays_where_the_order_is_the_same():
    """One full batch, no start, no split: a streamed source gives the arrays' training (to rounding)."""
    x, y, w = _data()
    kw = dict(max_epochs=5, batch_size=1000, init=None, random_state=0, lr_decay_patience=None)
    a, b = _mdn(0), _mdn(0)
    ra = fit_mdn(a, x, y, w, validation_fraction=0.0, **kw)
    rb = fit_mdn(b, Streamed(x, y, w), **kw)
    np.testing.assert_allclose(ra.history, rb.history, rtol=1e-10)
    for u, v in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)
    # an explicit validation set in place of the random split, from arrays
    c = _mdn(0)
    rc = fit_mdn(c, x, y, w, validation=(x[:50], y[:50]), max_epochs=5, random_state=0)
    assert len(rc.validation_history) == rc.n_iter + 1


def test_streamed_source_trains_a_moe_by_gradient():
    xm, ym, wm = _moe_data(600)
    # L-BFGS over a stream: every closure call is one pass, the batches' gradients summed
    a, b = _moe(), _moe()
    ra = fit_gradient(a, xm, ym, wm, optimizer="lbfgs", init=None, max_epochs=3, validation_fraction=0.0)
    rb = fit_gradient(b, Streamed(xm, ym, wm, batch_size=100), optimizer="lbfgs", init=None, max_epochs=3)
    np.testing.assert_allclose(ra.history, rb.history, rtol=1e-8)
    # Adam, minibatches within each batch, a validation source, the start on the source's sample
    m = _moe()
    rm = fit_gradient(m, Streamed(xm, ym, wm, batch_size=128), init="kmeans", max_epochs=15, batch_size=32,
                      random_state=0, validation=Streamed(*_moe_data(200, seed=2), batch_size=64))
    assert rm.history[-1] > rm.history[0] and rm.validation_history[-1] > rm.validation_history[0]


def test_source_arguments_are_checked():
    x, y, w = _data()
    src = ArrayBatches(x, y, w)
    with pytest.raises(ValueError, match="leave y and sample_weight None"):
        fit_mdn(_mdn(0), src, y)
    with pytest.raises(ValueError, match="early_stopping=False"):
        fit_mdn(_mdn(0), x, y, validation=src, early_stopping=False)
    with pytest.raises(TypeError, match="validation must be a source"):
        fit_mdn(_mdn(0), x, y, validation=x)
    with pytest.raises(ValueError, match="y is required"):
        fit_gradient(_moe(), torch.zeros(5, 2, dtype=F64))
    with pytest.raises(ValueError, match="needs the rows in memory"):
        fit_gradient(_moe(), Streamed(*_moe_data()), init=np.ones((N, 2)) / 2)
    with pytest.raises(ValueError, match="no rows"):
        fit_mdn(_mdn(0), Streamed(x[:0], y[:0], w[:0]))
    with pytest.raises(ValueError, match="no rows"):
        fit_gradient(_moe(), Streamed(*(t[:0] for t in _moe_data())), init=None)
    with pytest.raises(ValueError, match="not initialised"):
        fit_mdn(_mdn(0), x, y, process_group=object())
