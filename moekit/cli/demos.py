"""moekit demo: built-in data sets where one averaged answer fails and a conditional mixture does not.

Each demo fits its models, prints the key numbers, and writes plots, the model file and an HTML report
to an output folder.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..datasets import load_tonedata, make_inverse_sine, make_kinematic_tracking, make_robot_arm
from ..estimators import MDNRegressor, MoERegressor
from ..inference import estimate_transition_cov, find_modes, track_modes
from ..plotting import plot_conditional_density, plot_experts, plot_gate, plot_robot_arm
from ..report import figure_to_png, make_report
from .common import check_device, collect_warnings, progress, say, set_threads
from .errors import DataError, one_line

__all__ = ["cmd_demo"]


def cmd_demo(args) -> int:
    """moekit demo: run one demo into its output folder and list what it wrote."""
    args.device = check_device(args.device) or "cpu"
    out = args.output or os.path.join("moekit-output", f"demo-{args.name}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the output folder '{out}': {one_line(e)}") from None
    set_threads(args, 0)
    run = {"robot-arm": _demo_robot_arm, "inverse-sine": _demo_inverse_sine, "tone": _demo_tone,
           "tracking": _demo_tracking}[args.name]
    t0 = time.perf_counter()
    with collect_warnings(args):
        files = run(out, args)
    if not args.quiet:
        print(f"\nwrote to {out}/ in {time.perf_counter() - t0:.1f} s:")
        for f in files:
            print(f"  {f}")
    return 0


def _fig(w, h, nrows=1, ncols=1, **kw):
    fig = Figure(figsize=(w, h), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _save_fig(fig, out, name, files) -> bytes:
    png = figure_to_png(fig, dpi=110)
    with open(os.path.join(out, name), "wb") as f:
        f.write(png)
    files.append(name)
    return png


# Early stopping ends every demo fit: training stops once the held-out log-likelihood has not improved for
# _PATIENCE epochs (the fit "converges" in the report's sense); max_epochs is only a cap.
_PATIENCE = 50


def _mixture_for_demo(args, n_components_mdn, mdn_kw):
    """The demos' mixture density network (early stopping with patience _PATIENCE), and its label."""
    return MDNRegressor(n_components=n_components_mdn, random_state=args.seed, device=args.device, reseed_dead=True,
                        patience=_PATIENCE, **mdn_kw), "MDN"


def _branches_of(dist, min_weight):
    """Modes (branches) of each row's p(y | x): (modes (n, M, d) or (n, M), weights (n, M)), NaN padded."""
    m = find_modes(dist, min_weight=min_weight).numpy()
    return m.modes, m.weights


def _demo_robot_arm(out, args) -> list:
    """Inverse kinematics of a two-link arm: one averaged answer against every branch."""
    files: list = []
    bar = progress(5, "robot-arm demo", args)
    rng = np.random.default_rng(args.seed)
    s_train, s_test, s_mlp = (int(v) for v in rng.integers(0, 2**31 - 1, size=3))
    X, Y, forward = make_robot_arm(1500, random_state=s_train)
    Xt, Yt, _ = make_robot_arm(500, random_state=s_test)
    bar.set_postfix_str("MLP")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the MLP's own convergence chatter
        mlp = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(32, 32), max_iter=400,
                                                           random_state=s_mlp)).fit(X, Y)
    bar.update(1)
    bar.set_postfix_str("mixture")
    mix, kind = _mixture_for_demo(args, 4, dict(hidden_layer_sizes=(32, 32), max_epochs=1000, batch_size=256,
                                                   learning_rate=1e-2))
    mix.fit(X, Y)
    bar.update(1)
    bar.set_postfix_str("branches")
    with torch.no_grad():
        dist = mix.predict_distribution(Xt)
    modes, weights = _branches_of(dist, min_weight=0.1)
    ok = np.isfinite(weights)
    mlp_err = np.linalg.norm(forward(mlp.predict(Xt)) - Xt, axis=1)
    mean_err = np.linalg.norm(forward(mix.predict(Xt)) - Xt, axis=1)
    top_err = np.linalg.norm(forward(modes[:, 0]) - Xt, axis=1)
    branch_err = np.concatenate([np.linalg.norm(forward(modes[ok[:, i], i]) - Xt[ok[:, i]], axis=1)
                                 for i in range(modes.shape[1])])
    n_br = ok.sum(1)
    bar.update(1)
    if not args.quiet:
        print(f"robot arm inverse kinematics: predict the joint angles that put the hand at (x1, x2)\n"
              f"{len(X)} training and {len(Xt)} test positions; error = distance of the hand from the target "
              f"(arm length 1.0)\n")
        print(f"  {'MLP regressor (one averaged answer)':<44} {mlp_err.mean():.4f}")
        print(f"  {kind + ' conditional mean (same averaging)':<44} {mean_err.mean():.4f}")
        print(f"  {kind + ' top branch':<44} {top_err.mean():.4f}")
        print(f"  {kind + ' every branch (mean over branches)':<44} {branch_err.mean():.4f}   "
              f"({n_br.mean():.2f} branches per position; {np.mean(n_br >= 2):.0%} of positions have two)")
        print(f"\n  the MLP's averaged angles miss the target {mlp_err.mean() / max(branch_err.mean(), 1e-12):.0f} "
              "times farther than each branch the mixture finds")
    bar.set_postfix_str("plots")
    # three test positions, far apart, where both branches carry weight and the MLP misses most
    two = np.flatnonzero((n_br >= 2) & (np.nan_to_num(weights[:, 1]) > 0.3))
    pick: list = []
    for i in list(two[np.argsort(-mlp_err[two])]) + list(range(len(Xt))):
        if len(pick) == 3:
            break
        if all(np.linalg.norm(Xt[i] - Xt[j]) > 0.2 for j in pick):
            pick.append(int(i))
    pick = np.asarray(pick)
    fig, axes = _fig(11, 3.9, 1, 3)
    mlp_pred = mlp.predict(Xt[pick])
    colors = ["#1f77b4", "#2ca02c", "#9467bd"]
    for c, i in enumerate(pick):
        ax = axes[0, c]
        plot_robot_arm(mlp_pred[c], ax=ax, color="#d62728", alpha=0.9, linewidth=2,
                       label=f"MLP average (misses by {mlp_err[i]:.3f})")
        ax.lines[-1].set_linestyle("--")
        for b in range(int(n_br[i])):
            plot_robot_arm(modes[i, b], ax=ax, color=colors[b % 3], linewidth=2.5, target=Xt[i] if b == 0 else None,
                           label=f"{kind} branch {b + 1}, p = {weights[i, b]:.2f}")
        ax.set_xlim(-0.35, 1.05)
        ax.set_ylim(-0.15, 1.15)
        ax.legend(loc="lower left", fontsize=7.5, framealpha=0.85)
        ax.set_title(f"target ({Xt[i, 0]:.2f}, {Xt[i, 1]:.2f})", fontsize=10)
    fig.suptitle("Inverse kinematics: the MLP averages elbow-up and elbow-down; the mixture keeps both", fontsize=11)
    arm_png = _save_fig(fig, out, "robot_arm.png", files)
    fig, axes = _fig(6.5, 4.2)
    ax = axes[0, 0]
    ax.hist([mlp_err, branch_err], bins=np.logspace(-4, 0, 40), label=["MLP (averaged)", f"{kind}, every branch"],
            color=["#d62728", "#1f77b4"], alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("distance of the hand from the target")
    ax.set_ylabel("test positions")
    ax.legend()
    err_png = _save_fig(fig, out, "forward_error.png", files)
    bar.update(1)
    bar.set_postfix_str("report")
    path = os.path.join(out, "model.moekit")
    try:
        mix.save(path)
        files.append("model.moekit")
    except ValueError as e:  # a model that cannot be stored without pickle: say so, carry on
        say(args, f"moekit: warning: the model was not saved: {one_line(e)}")
    make_report(mix, Xt, Yt, os.path.join(out, "report.html"), title="moekit demo: robot-arm inverse kinematics",
                feature_names=["x1", "x2"], target_names=["theta1", "theta2"],
                notes=f"Two-link arm (L1 = 0.8, L2 = 0.2); {len(X)} training positions, report on {len(Xt)} test "
                      f"positions. Mean forward error: MLP {mlp_err.mean():.4f}; {kind} top branch "
                      f"{top_err.mean():.4f}; every branch {branch_err.mean():.4f}.",
                extra_figures=[("Arm configurations", "Red dashed: the MLP's averaged angles. Solid: the branches "
                                "(modes of p(angles | position)) with their probabilities. Cross: the target.", arm_png),
                               ("Forward error", "Distance of the hand from the target for every test position.",
                                err_png)])
    files.append("report.html")
    bar.update(1)
    bar.close()
    return files


def _demo_inverse_sine(out, args) -> list:
    """Bishop's inverse sine: where x has three inverse branches, the mean falls between them."""
    files: list = []
    bar = progress(4, "inverse-sine demo", args)
    rng = np.random.default_rng(args.seed)
    s_train, s_test, s_mlp = (int(v) for v in rng.integers(0, 2**31 - 1, size=3))
    X, y = make_inverse_sine(1000, random_state=s_train)
    Xt, yt = make_inverse_sine(1000, random_state=s_test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPRegressor(hidden_layer_sizes=(20,), solver="lbfgs", max_iter=2000, random_state=s_mlp).fit(X, y)
    bar.update(1)
    mix, kind = _mixture_for_demo(args, 3, dict(hidden_layer_sizes=(20,), max_epochs=1000, batch_size=128,
                                                  learning_rate=1e-2))
    mix.fit(X, y)
    bar.update(1)
    with torch.no_grad():
        dist = mix.predict_distribution(Xt)
    modes, weights = _branches_of(dist, min_weight=0.05)
    n_br = np.isfinite(weights).sum(1)
    mlp_rmse = float(np.sqrt(np.mean((mlp.predict(Xt) - yt) ** 2)))
    top_rmse = float(np.sqrt(np.mean((modes[:, 0] - yt) ** 2)))
    near = np.nanmin(np.abs(modes - yt[:, None]), axis=1)
    region = (Xt[:, 0] > 0.407) & (Xt[:, 0] < 0.593)  # where the noise-free inverse has three branches
    if not args.quiet:
        print("inverse sine (Bishop 1994): predict t from x = t + 0.3 sin(2 pi t) + noise; for 0.41 < x < 0.59 "
              f"there are three branches\n{len(X)} training and {len(Xt)} test rows ({region.mean():.0%} of them "
              "in the three-branch region)\n")
        print(f"  {'RMSE':<44} {'all rows':>9} {'3 branches':>11}")
        for name, a in (("MLP regressor (its averaged answer)", mlp.predict(Xt)),
                        (f"{kind}: top mode", modes[:, 0]), (f"{kind}: nearest mode (every branch)", None)):
            err = near if a is None else np.abs(a - yt)
            print(f"  {name:<44} {float(np.sqrt(np.mean(err**2))):9.4f} {float(np.sqrt(np.mean(err[region]**2))):11.4f}")
        print(f"\n  {kind}: mean log-likelihood per test row {float(mix.score_samples(Xt, yt).mean()):.4f}; "
              f"{np.mean(n_br[region] >= 2):.0%} of the three-branch rows get two or more modes")
    fig, axes = _fig(7, 4.6)
    ax = axes[0, 0]
    plot_conditional_density(mix, Xt, yt, ax=ax, feature_names=["x"], target_names=["t"])
    grid = np.linspace(Xt.min(), Xt.max(), 200)[:, None]
    ax.plot(grid[:, 0], mlp.predict(grid), color="#ff4d4d", lw=2, label="MLP (mean)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"p(t | x) of the {kind}, its modes (white) and the MLP's averaged answer (red)", fontsize=10)
    dens_png = _save_fig(fig, out, "inverse_sine.png", files)
    bar.update(1)
    try:
        mix.save(os.path.join(out, "model.moekit"))
        files.append("model.moekit")
    except ValueError as e:
        say(args, f"moekit: warning: the model was not saved: {one_line(e)}")
    make_report(mix, Xt, yt, os.path.join(out, "report.html"), title="moekit demo: inverse sine",
                feature_names=["x"], target_names=["t"],
                notes=f"MLP RMSE {mlp_rmse:.4f}; {kind} top-mode RMSE {top_rmse:.4f}.",
                extra_figures=[("Modes against the averaged answer", "", dens_png)])
    files.append("report.html")
    bar.update(1)
    bar.close()
    return files


def _demo_tone(out, args) -> list:
    """Cohen's tone perception data: two groups of musicians, two regression lines."""
    files: list = []
    d = load_tonedata()
    X, y = d.data, d.target
    bar = progress(4, "tone demo", args)
    fits = {}
    for k in (1, 2, 3):
        bar.set_postfix_str(f"K={k}")
        fits[k] = MoERegressor(n_experts=k, random_state=args.seed, device=args.device).fit(X, y)
        bar.update(1)
    bics = {k: e.bic(X, y) for k, e in fits.items()}
    best = min(bics, key=bics.get)
    est = fits[2]
    if not args.quiet:
        print("tone perception (Cohen 1980): 150 judgements of the tuned ratio against the stretch ratio\n")
        for k in (1, 2, 3):
            mark = "  <- lowest BIC" if k == best else ""
            print(f"  K={k}: log-likelihood {fits[k].score_samples(X, y).sum():9.3f}   BIC {bics[k]:9.3f}{mark}")
        ex = est.model_.experts
        coef = ex.coef.detach().cpu().numpy()[:, :, 0]
        sd = ex.scale_tril().detach().cpu().numpy()[:, 0, 0]
        print("\n  the two experts (tuned = a + b * stretch + noise):")
        for k in range(est.n_experts_):
            print(f"    expert {k}: a = {coef[k, 0]:7.4f}, b = {coef[k, 1]:7.4f}, noise sd = {sd[k]:.4f}")
        with torch.no_grad():
            g = est.predict_gate([[1.5], [3.0]])
        print(f"  gate at stretch 1.5: {np.round(g[0], 3).tolist()}; at 3.0: {np.round(g[1], 3).tolist()}")
    fig, axes = _fig(12, 3.8, 1, 3)
    plot_experts(est, X, y, ax=axes[0, 0], feature_names=["stretch ratio"], target_names=["tuned ratio"])
    plot_gate(est, X, ax=axes[0, 1], feature_names=["stretch ratio"])
    plot_conditional_density(est, X, y, ax=axes[0, 2], feature_names=["stretch ratio"], target_names=["tuned ratio"])
    png = _save_fig(fig, out, "tone.png", files)
    bar.update(1)
    est.save(os.path.join(out, "model.moekit"))
    files.append("model.moekit")
    make_report(est, X, y, os.path.join(out, "report.html"), title="moekit demo: tone perception",
                feature_names=["stretchratio"], target_names=["tuned"],
                notes="Two-expert mixture of linear regressions with a softmax gate: the highest known "
                      "maximum (log-likelihood 145.65), one expert on the line tuned = stretchratio; the classic "
                      "two-line fit of the literature (142.85) is a lower local maximum.", extra_figures=[("Overview", "", png)])
    files.append("report.html")
    bar.close()
    return files


def _demo_tracking(out, args) -> list:
    """3-D depth of a moving limb from its 2-D image: per-frame branches, resolved through time."""
    files: list = []
    bar = progress(5, "tracking demo", args)
    rng = np.random.default_rng(args.seed)
    s_train, s_motion, s_test, s_mlp = (int(v) for v in rng.integers(0, 2**31 - 1, size=4))
    train = make_kinematic_tracking(n_sequences=20, n_frames=200, motion="random", random_state=s_train)
    motion = make_kinematic_tracking(n_sequences=5, n_frames=200, motion="smooth", random_state=s_motion)
    test = make_kinematic_tracking(n_sequences=1, n_frames=300, motion="smooth", random_state=s_test)
    X = train.X.reshape(-1, train.X.shape[-1])
    Y = train.y.reshape(-1, train.y.shape[-1])
    Xt, Yt, B = test.X[0], test.y[0], test.branches[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPRegressor(hidden_layer_sizes=(32, 32), max_iter=300, random_state=s_mlp).fit(X, Y)
    bar.update(1)
    mix, kind = _mixture_for_demo(args, 4, dict(hidden_layer_sizes=(32, 32), max_epochs=1000, batch_size=256,
                                                  learning_rate=1e-2))
    mix.fit(X, Y)
    bar.update(1)
    q = estimate_transition_cov(motion.y, order=1)
    with torch.no_grad():
        dist = mix.predict_distribution(Xt)
    top = _branches_of(dist, min_weight=0.1)[0][:, 0]
    tracked = track_modes(dist, q, min_weight=0.1).path
    bar.update(1)

    def rmse(a):
        return float(np.sqrt(np.mean((a - Yt) ** 2)))

    def nearest(a):  # distance to the closest explanation of each image (any branch)
        d = np.sqrt(np.mean((B - a[:, None, :]) ** 2, axis=-1))  # NaN for a frame's missing branches
        return float(np.sqrt(np.mean(np.nanmin(d, axis=1) ** 2)))

    def jumps(a):
        return int(np.sum(np.abs(np.diff(a, axis=0)).max(1) > 0.1))

    rows = [("MLP regressor (averaged)", mlp.predict(Xt)), (f"{kind}, conditional mean", mix.predict(Xt)),
            (f"{kind}, top mode of every frame", top), (f"{kind} modes tracked through time (Viterbi)", tracked)]
    if not args.quiet:
        print("tracking: the depths of a moving arm's elbow and wrist from their 2-D image positions; the image "
              "cannot tell a segment\nfrom its mirror image through the image plane, so many frames have two or "
              f"more explanations ({np.mean(test.n_branches[0] > 1):.0%} of this sequence)\n"
              f"{len(X)} training frames (random poses), a test sequence of {len(Xt)} frames (smooth motion)\n")
        print(f"  {'':<46} {'RMSE':>7} {'to nearest':>11} {'jumps':>6}")
        print(f"  {'':<46} {'(truth)':>7} {'explanation':>11} {'':>6}")
        for name, a in rows:
            print(f"  {name:<46} {rmse(a):7.4f} {nearest(a):11.4f} {jumps(a):6d}")
        print(f"  {'truth':<46} {0.0:7.4f} {0.0:11.4f} {jumps(Yt):6d}")
        print("\n  'to nearest explanation': distance to the closest depth vector that projects to the same image;"
              "\n  'jumps': frames where the answer moves by more than 0.1 at once")
    fig, axes = _fig(11, 5.2, 2, 1, sharex=True)
    t = np.arange(len(Xt))
    for j, name in enumerate(["elbow depth", "wrist depth"]):
        ax = axes[j, 0]
        for b in range(B.shape[1]):
            ax.plot(t, B[:, b, j], ".", color="0.8", ms=3, label="every explanation" if b == 0 else None)
        ax.plot(t, Yt[:, j], color="black", lw=1.5, label="truth")
        ax.plot(t, mlp.predict(Xt)[:, j], "--", color="#d62728", lw=1.2, label="MLP (averaged)")
        ax.plot(t, top[:, j], ".", color="#ff7f0e", ms=4, label=f"{kind} top mode per frame")
        ax.plot(t, tracked[:, j], color="#1f77b4", lw=1.5, alpha=0.85, label="tracked (Viterbi over the modes)")
        ax.set_ylabel(name)
    axes[0, 0].legend(loc="upper right", fontsize=7.5, ncols=3)
    axes[1, 0].set_xlabel("frame")
    png = _save_fig(fig, out, "tracking.png", files)
    bar.update(1)
    try:
        mix.save(os.path.join(out, "model.moekit"))
        files.append("model.moekit")
    except ValueError as e:
        say(args, f"moekit: warning: the model was not saved: {one_line(e)}")
    make_report(mix, Xt, Yt, os.path.join(out, "report.html"), title="moekit demo: tracking through ambiguous frames",
                feature_names=["elbow x", "elbow y", "wrist x", "wrist y"], target_names=["elbow z", "wrist z"],
                notes=f"Per-frame {kind} on {len(X)} random poses; test sequence of {len(Xt)} frames. RMSE against "
                      f"the truth: MLP {rmse(rows[0][1]):.4f}, top mode per frame {rmse(top):.4f}, tracked "
                      f"{rmse(tracked):.4f}.",
                extra_figures=[("Depths through time", "Grey: every explanation of each image; black: the truth.",
                                png)])
    files.append("report.html")
    bar.update(1)
    bar.close()
    return files
