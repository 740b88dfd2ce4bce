"""Robot-dynamics benchmark: an HME of 16 linear leaves fitted by EM against an MLP of 32 hidden units.

The task of Jordan & Jacobs (1994, section 6): learn the *forward dynamics* of a
robot arm, joint angles, velocities and torques in, joint accelerations out.
Here the arm is a planar chain of ``--links`` uniform rods (default 2) under
gravity with viscous joint friction:

    M(q) qdd = tau - c(q, qd) - G(q) - b qd,

with M the mass matrix of the chain, c the Coriolis and centrifugal terms
(``dM/dt qd - d/dq (0.5 qd' M qd)``, by automatic differentiation of M) and G
the gravity torques.  For two links the simulator is checked against the
textbook closed form before anything runs.  Inputs are drawn uniformly:
angles in [-pi, pi], velocities in [-2, 2] rad/s, torques in [-10, 10] N m;
15,000 training and 5,000 test rows, inputs and outputs standardised with the
training statistics.

Models (the same data, seeds and threads for both):

(a) HME: ``build_tree(depth=4, branching=2)``: a binary tree of 15 softmax
    gates over 16 linear-Gaussian leaves (full noise covariance over the
    accelerations), fitted by EM (``fit_tree_em``: one start, IRLS at every
    gate, until the mean log-likelihood changes by less than ``--tol``).
    One epoch = one EM iteration (an E-step and an M-step over all rows).
    Reported for the estimator's default start (``init="kmeans"``) and for
    ``init="kmeans_x"`` (k-means on the inputs).
(b) MLP: inputs -> 32 tanh units -> accelerations, mean squared error, Adam
    with minibatches of 64 and a cosine learning-rate decay over
    ``--mlp-epochs`` epochs.  The learning rate is chosen from
    {1e-3, 3e-3, 1e-2} by validation error (a 10% split of the training rows,
    ``--lr-epochs`` epochs each); the chosen rate is then trained on all
    training rows.  One epoch = one pass over the training rows.

Measure: relative error = mean over outputs of (test MSE / test variance).
For each model the script prints the relative error against epochs and
seconds.  "Epochs to reach E" is the first epoch whose relative error is at
most E; E_HME is the HME's final relative error.  The goal of issue 5 is
``epochs(MLP reaches E_HME) >= 50 * epochs(HME reaches E_HME)``.

Usage::

    python benchmarks/robot_dynamics.py                  # 3 seeds, 2 links
    python benchmarks/robot_dynamics.py --quick          # 1 seed, shorter MLP budget
    python benchmarks/robot_dynamics.py --links 3 --seeds 0
    python benchmarks/robot_dynamics.py --out benchmarks/out/robot.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _machine import describe  # noqa: E402  (benchmarks/ is the script's folder)

from moekit import build_tree, fit_tree_em  # noqa: E402

LENGTHS = [1.0, 0.8, 0.6, 0.5, 0.4]
MASSES = [1.0, 0.7, 0.5, 0.4, 0.3]


# ---------------------------------------------------------------- simulator
def mass_matrix(q: torch.Tensor, lengths, masses) -> torch.Tensor:
    """Mass matrix of a planar chain of uniform rods: q (n, L) -> (n, L, L)."""
    n, links = q.shape
    phi = torch.cumsum(q, 1)  # absolute link angles
    s, c = torch.sin(phi), torch.cos(phi)
    m = torch.zeros(n, links, links, dtype=q.dtype)
    for k in range(links):
        # Jacobian of the centre of mass of link k with respect to q_i (i <= k)
        arm = torch.tensor([lengths[j] if j < k else lengths[k] / 2 for j in range(k + 1)], dtype=q.dtype)
        dx, dy = -arm * s[:, : k + 1], arm * c[:, : k + 1]
        jx = torch.flip(torch.cumsum(torch.flip(dx, [1]), 1), [1])
        jy = torch.flip(torch.cumsum(torch.flip(dy, [1]), 1), [1])
        inertia = masses[k] * lengths[k] ** 2 / 12  # rod about its centre
        m[:, : k + 1, : k + 1] += masses[k] * (jx[:, :, None] * jx[:, None, :] + jy[:, :, None] * jy[:, None, :]) + inertia
    return m


def potential(q: torch.Tensor, lengths, masses, g: float = 9.81) -> torch.Tensor:
    phi = torch.cumsum(q, 1)
    s = torch.sin(phi)
    v = torch.zeros(q.shape[0], dtype=q.dtype)
    base = torch.zeros(q.shape[0], dtype=q.dtype)
    for k in range(q.shape[1]):
        v = v + masses[k] * g * (base + lengths[k] / 2 * s[:, k])
        base = base + lengths[k] * s[:, k]
    return v


def accelerations(q, qd, tau, lengths, masses, friction: float = 0.5, g: float = 9.81) -> torch.Tensor:
    """Forward dynamics qdd = M^-1 (tau - (dM/dt qd - dT/dq) - dV/dq - b qd): (n, L)."""
    qq = q.detach().clone().requires_grad_(True)
    m = mass_matrix(qq, lengths, masses)
    mqd = (m @ qd[:, :, None])[:, :, 0]
    mdot_qd = torch.func.jvp(lambda z: (mass_matrix(z, lengths, masses) @ qd[:, :, None])[:, :, 0], (q,), (qd,))[1]
    d_kinetic = torch.autograd.grad(0.5 * (qd * mqd).sum(), qq)[0]
    d_potential = torch.autograd.grad(potential(qq, lengths, masses, g).sum(), qq)[0]
    rhs = tau - mdot_qd + d_kinetic - d_potential - friction * qd
    return torch.linalg.solve(m.detach(), rhs.detach()[:, :, None])[:, :, 0]


def closed_form_two_link(q, qd, tau, lengths, masses, friction: float = 0.5, g: float = 9.81):
    """Textbook two-link dynamics (uniform rods), to check the general simulator."""
    (l1, l2), (m1, m2) = lengths[:2], masses[:2]
    c1, c2 = l1 / 2, l2 / 2
    i1, i2 = m1 * l1**2 / 12, m2 * l2**2 / 12
    cos2 = torch.cos(q[:, 1])
    m11 = m1 * c1**2 + m2 * (l1**2 + c2**2 + 2 * l1 * c2 * cos2) + i1 + i2
    m12 = m2 * (c2**2 + l1 * c2 * cos2) + i2
    m22 = torch.full_like(m11, m2 * c2**2 + i2)
    h = -m2 * l1 * c2 * torch.sin(q[:, 1])
    cor = torch.stack([h * qd[:, 1] ** 2 + 2 * h * qd[:, 0] * qd[:, 1], -h * qd[:, 0] ** 2], 1)
    grav1 = (m1 * c1 + m2 * l1) * g * torch.cos(q[:, 0]) + m2 * c2 * g * torch.cos(q[:, 0] + q[:, 1])
    grav2 = m2 * c2 * g * torch.cos(q[:, 0] + q[:, 1])
    m = torch.stack([torch.stack([m11, m12], -1), torch.stack([m12, m22], -1)], -2)
    rhs = tau - cor - torch.stack([grav1, grav2], 1) - friction * qd
    return torch.linalg.solve(m, rhs[:, :, None])[:, :, 0]


def make_data(links: int, seed: int, n_train: int = 15_000, n_test: int = 5_000):
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    u = lambda: torch.rand(n, links, generator=g, dtype=torch.float64) * 2 - 1  # noqa: E731
    q, qd, tau = u() * math.pi, u() * 2.0, u() * 10.0
    acc = accelerations(q, qd, tau, LENGTHS[:links], MASSES[:links])
    x = torch.cat([q, qd, tau], 1)
    xtr, ytr, xte, yte = x[:n_train], acc[:n_train], x[n_train:], acc[n_train:]
    mx, sx, my, sy = xtr.mean(0), xtr.std(0), ytr.mean(0), ytr.std(0)
    return (xtr - mx) / sx, (ytr - my) / sy, (xte - mx) / sx, (yte - my) / sy


def relative_error(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over outputs of test MSE / test variance."""
    return float((((pred - y) ** 2).mean(0) / y.var(0, unbiased=False)).mean())


# ---------------------------------------------------------------- models
def run_hme(xtr, ytr, xte, yte, seed: int, init: str, max_iter: int, tol: float) -> dict:
    tree = build_tree(xtr.shape[1], depth=4, branching=2, n_outputs=ytr.shape[1])
    errors, seconds = [], []
    eval_time = [0.0]
    t0 = time.perf_counter()

    def callback(it, mean_ll, model):  # after every E-step: the parameters after `it` EM iterations
        t_in = time.perf_counter()
        seconds.append(t_in - t0 - eval_time[0])  # training time only (initialisation included)
        with torch.no_grad():
            errors.append(relative_error(model(xte).mean, yte))
        eval_time[0] += time.perf_counter() - t_in

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_tree_em(tree, xtr, ytr, init=init, random_state=seed, max_iter=max_iter, tol=tol, callback=callback)
    return dict(model=f"HME 16 linear leaves, EM, init={init}", errors=errors, seconds=seconds,
                epochs=list(range(len(errors))), n_iter=res.n_iter, converged=res.converged,
                n_parameters=tree.n_parameters(), train_mean_log_likelihood=res.mean_log_likelihood)


def make_mlp(d_in: int, d_out: int, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(d_in, 32), torch.nn.Tanh(), torch.nn.Linear(32, d_out))
    with torch.no_grad():
        for lin in (net[0], net[2]):
            bound = 1 / math.sqrt(lin.in_features)
            lin.weight.copy_((torch.rand(lin.weight.shape, generator=g) * 2 - 1) * bound)
            lin.bias.copy_((torch.rand(lin.bias.shape, generator=g) * 2 - 1) * bound)
    return net


def train_mlp(xtr, ytr, xev, yev, lr: float, epochs: int, seed: int, batch_size: int = 64, record: bool = True) -> dict:
    xtr, ytr, xev, yev = xtr.float(), ytr.float(), xev.float(), yev.float()
    net = make_mlp(xtr.shape[1], ytr.shape[1], seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed + 1)
    errors, seconds = [], []
    train_time = 0.0
    with torch.no_grad():
        errors.append(relative_error(net(xev), yev))
    seconds.append(0.0)
    n = xtr.shape[0]
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            b = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = ((net(xtr[b]) - ytr[b]) ** 2).mean()
            loss.backward()
            opt.step()
        sched.step()
        train_time += time.perf_counter() - t0
        if record:
            with torch.no_grad():
                errors.append(relative_error(net(xev), yev))
            seconds.append(train_time)
    if not record:
        with torch.no_grad():
            errors.append(relative_error(net(xev), yev))
        seconds.append(train_time)
    return dict(errors=errors, seconds=seconds, epochs=list(range(len(errors))))


def run_mlp(xtr, ytr, xte, yte, seed: int, epochs: int, lr_epochs: int, lrs=(1e-3, 3e-3, 1e-2)) -> dict:
    # choose the learning rate on a validation split of the training rows
    perm = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(seed + 7))
    n_val = xtr.shape[0] // 10
    va, tr = perm[:n_val], perm[n_val:]
    val = {}
    for lr in lrs:
        r = train_mlp(xtr[tr], ytr[tr], xtr[va], ytr[va], lr, lr_epochs, seed, record=False)
        val[lr] = r["errors"][-1]
    best_lr = min(val, key=val.get)
    r = train_mlp(xtr, ytr, xte, yte, best_lr, epochs, seed)
    r.update(model=f"MLP 32 tanh, Adam lr={best_lr:g}", lr=best_lr, validation_errors=val,
             n_parameters=sum(p.numel() for p in make_mlp(xtr.shape[1], ytr.shape[1], 0).parameters()))
    return r


def first_reaching(errors, target: float):
    for i, e in enumerate(errors):
        if e <= target:
            return i
    return None


# ---------------------------------------------------------------- report
def table(run: dict, marks) -> list[str]:
    out = []
    for ep in marks:
        if ep < len(run["errors"]):
            out.append(f"  {ep:6d}  {run['errors'][ep]:10.4f}  {run['seconds'][ep]:9.1f}")
    last = len(run["errors"]) - 1
    if last not in marks:
        out.append(f"  {last:6d}  {run['errors'][last]:10.4f}  {run['seconds'][last]:9.1f}   (final)")
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--links", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--mlp-epochs", type=int, default=1000)
    p.add_argument("--lr-epochs", type=int, default=100)
    p.add_argument("--em-iter", type=int, default=200)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--inits", nargs="+", default=["kmeans", "kmeans_x"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="one seed, 200 MLP epochs, 30 lr-search epochs")
    p.add_argument("--out", default=None, help="write all curves as JSON here (e.g. benchmarks/out/robot.json)")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.mlp_epochs, a.lr_epochs = a.seeds[:1], 200, 30
    torch.set_num_threads(a.threads)
    if a.links < 2 or a.links > len(LENGTHS):
        raise SystemExit(f"--links must be between 2 and {len(LENGTHS)}")
    # check the simulator against the closed form
    g = torch.Generator().manual_seed(123)
    q, qd, tau = (torch.randn(500, 2, generator=g, dtype=torch.float64) * s for s in (2.0, 2.0, 10.0))
    general = accelerations(q, qd, tau, LENGTHS[:2], MASSES[:2])
    err = (general - closed_form_two_link(q, qd, tau, LENGTHS[:2], MASSES[:2])).abs().max()
    assert float(err) < 1e-9, f"simulator disagrees with the two-link closed form by {float(err)}"

    print(f"# Robot dynamics: planar {a.links}-link arm; HME (16 linear leaves, EM) vs MLP (32 tanh units, Adam)")
    print(f"# machine: {describe()}; torch threads {a.threads}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# simulator check: max |general - closed form| = {float(err):.1e}")
    marks = [0, 1, 2, 3, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000]
    results = []
    for seed in a.seeds:
        xtr, ytr, xte, yte = make_data(a.links, seed)
        lin = torch.linalg.lstsq(torch.cat([torch.ones(len(xtr), 1, dtype=xtr.dtype), xtr], 1), ytr).solution
        lin_err = relative_error(torch.cat([torch.ones(len(xte), 1, dtype=xte.dtype), xte], 1) @ lin, yte)
        print(f"\n## seed {seed}: {len(xtr)} train / {len(xte)} test rows, {xtr.shape[1]} inputs, {ytr.shape[1]} outputs; "
              f"linear regression relative error {lin_err:.4f}")
        mlp = run_mlp(xtr, ytr, xte, yte, seed, a.mlp_epochs, a.lr_epochs)
        hmes = [run_hme(xtr, ytr, xte, yte, seed, init, a.em_iter, a.tol) for init in a.inits]
        for run in [*hmes, mlp]:
            print(f"\n{run['model']} ({run['n_parameters']} parameters)")
            if "validation_errors" in run:
                print("  learning rate search (validation relative error after "
                      f"{a.lr_epochs} epochs): " + ", ".join(f"{k:g}: {v:.4f}" for k, v in run["validation_errors"].items()))
            if "n_iter" in run:
                print(f"  EM iterations {run['n_iter']}, converged {run['converged']} (tol {a.tol:g} on the mean log-likelihood)")
            print("   epoch  rel. error   seconds")
            print("\n".join(table(run, marks)))
        print("\n  comparison (E = the HME's final relative error)")
        print("  HME init    E_HME    HME epochs to E  HME s to E   MLP epochs to E  MLP s to E   epoch ratio  MLP final")
        for h in hmes:
            e_final = h["errors"][-1]
            eh = first_reaching(h["errors"], e_final)
            em = first_reaching(mlp["errors"], e_final)
            ratio = (em / max(eh, 1)) if em is not None else float("inf")
            ms = f"{mlp['seconds'][em]:10.1f}" if em is not None else "     never"
            me = f"{em:15d}" if em is not None else f"{'never':>15s}"
            print(f"  {h['model'].split('init=')[1]:9s}  {e_final:7.4f}  {eh:15d}  {h['seconds'][eh]:10.1f}  {me}  {ms}  "
                  f"{ratio:11.2f}  {mlp['errors'][-1]:9.4f}")
            results.append(dict(seed=seed, init=h["model"].split("init=")[1], hme_final=e_final, hme_epochs=eh,
                                hme_seconds=h["seconds"][eh], mlp_epochs=em,
                                mlp_seconds=None if em is None else mlp["seconds"][em], ratio=ratio,
                                mlp_final=mlp["errors"][-1], mlp_lr=mlp["lr"], linear=lin_err,
                                hme_curve=h["errors"], hme_seconds_curve=h["seconds"], mlp_curve=mlp["errors"],
                                mlp_seconds_curve=mlp["seconds"]))
    print("\n## summary over seeds (median)")
    for init in a.inits:
        rs = [r for r in results if r["init"] == init]
        def med(k, rs=rs):
            return float(np.median([np.inf if r[k] is None else r[k] for r in rs]))

        print(f"  init={init}: HME final rel. error {med('hme_final'):.4f} reached in {med('hme_epochs'):.0f} EM "
              f"iterations; MLP final {med('mlp_final'):.4f}; MLP epochs to reach the HME's final error "
              f"{med('mlp_epochs'):.0f}; epoch ratio {med('ratio'):.2f} (goal >= 50)")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(dict(args=vars(a), results=results), f)
        print(f"\ncurves written to {a.out}")
    return dict(results=results)


if __name__ == "__main__":
    main()
