"""EM checkpoints: a fit killed after an iteration and resumed equals an uninterrupted fit."""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em
from moekit.training.checkpoint import structure_signature

D = torch.float64


def _data(n=1500, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=D)
    z = torch.rand(n, generator=g, dtype=D) < torch.sigmoid(x[:, 0])
    y = torch.where(z, 2 * x[:, 1] + 1, -x[:, 2]) + 0.3 * torch.randn(n, generator=g, dtype=D)
    w = torch.rand(n, generator=g, dtype=D) + 0.5
    return x, y, w


def _flat(k=3):
    torch.manual_seed(1)
    return MixtureOfExperts(SoftmaxGate(3, k), LinearGaussianExpert(3, n_experts=k))


def _tree():
    torch.manual_seed(2)
    kids = [MixtureOfExperts(SoftmaxGate(3, 2), LinearGaussianExpert(3, n_experts=2)) for _ in range(2)]
    return MixtureOfExperts(SoftmaxGate(3, 2), kids)


class _Kill(Exception):
    pass


def _kill_at(i):
    def cb(it, ll, m):
        if it == i:
            raise _Kill
    return cb


def _same(a, b, ra, rb, tol=1e-12):
    assert structure_signature(a) == structure_signature(b)
    assert ra.n_iter == rb.n_iter and ra.converged == rb.converged and ra.pruned == rb.pruned
    assert len(ra.history) == len(rb.history)
    assert max(abs(p - q) for p, q in zip(ra.history, rb.history)) <= tol
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(p, q, rtol=0, atol=tol), n


@pytest.mark.parametrize("build, kill", [(_flat, 3), (_tree, 3), (_flat, 0)], ids=["flat", "tree", "first-iteration"])
def test_killed_after_an_iteration_and_resumed_equals_uninterrupted(tmp_path, build, kill):
    x, y, w = _data()
    kw = dict(random_state=0, max_iter=60, tol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = build()
        ra = fit_em(a, x, y, w, **kw)
        path = tmp_path / "fit.ckpt"
        with pytest.raises(_Kill):
            fit_em(build(), x, y, w, checkpoint=path, callback=_kill_at(kill + 1), **kw)
        b = build()
        rb = fit_em(b, x, y, w, checkpoint=path, resume=True, **kw)
    _same(a, b, ra, rb)
    assert sorted(os.listdir(tmp_path)) == ["fit.ckpt"]  # no temporary file left behind


def test_resume_replays_pruning(tmp_path):
    """An expert pruned before the kill is pruned again in the fresh model before its parameters are loaded."""
    x, y, w = _data()
    kw = dict(random_state=0, max_iter=40, tol=1e-8, prune_threshold=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = _flat(5)
        ra = fit_em(a, x, y, w, **kw)
        assert ra.pruned, "the test needs a fit that prunes"
        with pytest.raises(_Kill):
            fit_em(_flat(5), x, y, w, checkpoint=tmp_path / "c", callback=_kill_at(6), **kw)
        b = _flat(5)
        rb = fit_em(b, x, y, w, checkpoint=tmp_path / "c", resume=True, **kw)
    _same(a, b, ra, rb)


def test_a_process_killed_by_sigkill_resumes(tmp_path):
    """A real kill (SIGKILL, no clean-up) after iteration 3 in another process; the fit resumed here is the same."""
    x, y, w = _data()
    torch.save({"x": x, "y": y, "w": w}, tmp_path / "data.pt")
    script = textwrap.dedent(f"""
        import os, signal, torch
        from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em
        d = torch.load({str(tmp_path / 'data.pt')!r})
        torch.manual_seed(1)
        m = MixtureOfExperts(SoftmaxGate(3, 3), LinearGaussianExpert(3, n_experts=3))
        def cb(i, ll, m):
            if i == 4:
                os.kill(os.getpid(), signal.SIGKILL)
        fit_em(m, d["x"], d["y"], d["w"], random_state=0, max_iter=60, tol=1e-8,
               checkpoint={str(tmp_path / 'fit.ckpt')!r}, callback=cb)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stderr
    kw = dict(random_state=0, max_iter=60, tol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = _flat()
        ra = fit_em(a, x, y, w, **kw)
        b = _flat()
        rb = fit_em(b, x, y, w, checkpoint=tmp_path / "fit.ckpt", resume=True, **kw)
    _same(a, b, ra, rb)


def test_a_finished_checkpoint_returns_its_result(tmp_path):
    x, y, w = _data(600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = _flat()
        ra = fit_em(a, x, y, w, random_state=0, checkpoint=tmp_path / "c")
        b = _flat()
        rb = fit_em(b, x, y, w, random_state=0, checkpoint=tmp_path / "c", resume=True)
    _same(a, b, ra, rb, tol=0.0)


def test_checkpoint_bad_inputs(tmp_path):
    x, y, w = _data(400)
    with pytest.raises(ValueError, match="resume=True needs checkpoint=PATH"):
        fit_em(_flat(), x, y, w, resume=True)
    with pytest.raises(ValueError, match="does not exist: nothing to resume"):
        fit_em(_flat(), x, y, w, checkpoint=tmp_path / "none", resume=True)
    with pytest.raises(ValueError, match="one start of plain EM"):
        fit_em(_flat(), x, y, w, n_init=2, checkpoint=tmp_path / "c")
    with pytest.raises(ValueError, match="one start of plain EM"):
        fit_em(_flat(), x, y, w, accelerate="squarem", checkpoint=tmp_path / "c")
    (tmp_path / "junk").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not an EM checkpoint|could not be read"):
        fit_em(_flat(), x, y, w, checkpoint=tmp_path / "junk", resume=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_em(_flat(), x, y, w, random_state=0, max_iter=3, checkpoint=tmp_path / "c")
    with pytest.raises(ValueError, match="total_weight="):  # other data
        fit_em(_flat(), x, y, 2 * w, random_state=0, max_iter=3, checkpoint=tmp_path / "c", resume=True)
    with pytest.raises(ValueError, match="cannot be pruned to"):  # another model
        fit_em(_tree(), x, y, w, random_state=0, max_iter=3, checkpoint=tmp_path / "c", resume=True)


def test_a_tree_fit_resumes_through_fit_tree_em(tmp_path):
    from moekit import fit_tree_em

    x, y, w = _data()
    kw = dict(random_state=0, max_iter=40, tol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = _tree()
        ra = fit_tree_em(a, x, y, w, **kw)
        with pytest.raises(_Kill):
            fit_tree_em(_tree(), x, y, w, checkpoint=tmp_path / "t", callback=_kill_at(5), **kw)
        b = _tree()
        rb = fit_tree_em(b, x, y, w, checkpoint=tmp_path / "t", resume=True, **kw)
    _same(a, b, ra, rb)
