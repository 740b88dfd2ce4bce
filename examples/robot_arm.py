"""Inverse kinematics of Bishop's two-link robot arm: the average is not an answer.

A hand position is reached with the elbow on either side of the line from the
shoulder to the hand.  A least-squares regressor (scikit-learn's
MLPRegressor) averages the two configurations; the averaged angles put the
hand somewhere else.  A conditional mixture keeps both branches: its top mode
is a valid configuration, and its modes are the two solutions.

Run:  python examples/robot_arm.py [output_folder]      (default: moekit-output/)
Writes robot_arm_workspace.png and robot_arm_joint_space.png there, and prints
the forward-consistency error of each model.  Takes a minute or two.
"""

import os
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.compose import TransformedTargetRegressor
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from moekit import MDNRegressor, MoERegressor
from moekit.datasets import make_robot_arm, robot_arm_inverse
from moekit.inference import forward_consistency_error, mode_recall

out = sys.argv[1] if len(sys.argv) > 1 else "moekit-output"
os.makedirs(out, exist_ok=True)
L1, L2 = 0.8, 0.2

Xtr, ytr, forward = make_robot_arm(1000, random_state=0)
Xte, yte, _ = make_robot_arm(1000, random_state=1)

print("Fitting an MLPRegressor (least squares), a mixture of 40 linear experts and a mixture density network ...")
# the configuration that 3-fold cross-validation picks in benchmarks/inverse_problems.py
mlp = make_pipeline(StandardScaler(), TransformedTargetRegressor(
    MLPRegressor(hidden_layer_sizes=(64, 64), activation="tanh", solver="lbfgs", alpha=1.0, max_iter=3000,
                 random_state=0), transformer=StandardScaler()))
models = {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    mlp.fit(Xtr, ytr)
    models["MoE, 40 linear experts"] = MoERegressor(n_experts=40, n_init=3, max_iter=500, init="kmeans",
                                                    random_state=0).fit(Xtr, ytr)
    models["MDN, 5 components"] = MDNRegressor(n_components=5, random_state=0).fit(Xtr, ytr)

y_mlp = mlp.predict(Xte)
truth = robot_arm_inverse(Xte)
print("\nForward-consistency RMS error (distance from the target to where the predicted angles put the hand):")
print(f"  MLPRegressor (conditional mean)     {forward_consistency_error(forward, y_mlp[:, None, :], Xte):.4f}")
modes = {}
for name, est in models.items():
    modes[name] = est.predict_modes(Xte)
    rec = mode_recall(modes[name].modes, truth, tol=0.1)
    print(f"  {name + ', top mode':36s} {forward_consistency_error(forward, modes[name].modes, Xte):.4f}"
          f"   (recall of the true branches within 0.1 rad: {rec:.3f})")


def draw_arm(ax, angles, color, lw=2.0, alpha=1.0, label=None):
    t1, t2 = angles
    elbow = np.array([L1 * np.cos(t1), L1 * np.sin(t1)])
    hand = elbow - L2 * np.array([np.cos(t1 + t2), np.sin(t1 + t2)])
    ax.plot([0, elbow[0], hand[0]], [0, elbow[1], hand[1]], "-o", color=color, lw=lw, ms=3, alpha=alpha, label=label)
    return hand


# ---------------------------------------------------------------- workspace
fig, ax = plt.subplots(figsize=(7, 6))
ax.scatter(Xtr[:, 0], Xtr[:, 1], s=3, color="0.8", label="training hand positions")
name = list(models)[-1]
rng = np.random.default_rng(3)
two = np.flatnonzero(~np.isnan(truth[..., 0]).any(1))
for j, i in enumerate(rng.choice(two, 3, replace=False)):
    first = j == 0

    def lab(s, first=first):
        return s if first else None

    ax.plot(*Xte[i], "k*", ms=14, label=lab("target"))
    for b in range(2):
        draw_arm(ax, truth[i, b], "tab:green", lw=4, alpha=0.35, label=lab("true solutions") if b == 0 else None)
    m = modes[name]
    for b in range(min(2, int(m.n_modes[i]))):
        draw_arm(ax, m.modes[i, b], "tab:blue", label=lab(f"{name}: modes") if b == 0 else None)
    hand = draw_arm(ax, y_mlp[i], "tab:red", label=lab("MLP: averaged angles"))
    ax.annotate("", xy=hand, xytext=Xte[i], arrowprops={"arrowstyle": "->", "color": "tab:red"})
ax.set_aspect("equal")
ax.set_xlabel("x1")
ax.set_ylabel("x2")
ax.set_title("Robot arm: the MLP's averaged configuration misses the target")
ax.legend(loc="lower left", fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(out, "robot_arm_workspace.png"), dpi=120)

# -------------------------------------------------------------- joint space
fig, axes = plt.subplots(1, 1 + len(models), figsize=(5 * (1 + len(models)), 4.5), sharex=True, sharey=True)
axes[0].scatter(yte[:, 0], yte[:, 1], s=3, color="0.75", label="true angles")
axes[0].scatter(y_mlp[:, 0], y_mlp[:, 1], s=3, color="tab:red", label="MLP prediction")
axes[0].set_title("MLPRegressor: between the branches")
for ax, (name, m) in zip(axes[1:], modes.items()):
    ax.scatter(yte[:, 0], yte[:, 1], s=3, color="0.75", label="true angles")
    ax.scatter(m.modes[:, 0, 0], m.modes[:, 0, 1], s=3, color="tab:blue", label="top mode")
    sec = m.modes[:, 1]
    ax.scatter(sec[:, 0], sec[:, 1], s=3, color="tab:orange", label="second mode")
    ax.set_title(f"{name}: both branches")
for ax in axes:
    ax.set_xlabel("theta1")
    ax.legend(fontsize=8, markerscale=3)
axes[0].set_ylabel("theta2")
fig.tight_layout()
fig.savefig(os.path.join(out, "robot_arm_joint_space.png"), dpi=120)
print(f"\nFigures written to {out}/robot_arm_workspace.png and {out}/robot_arm_joint_space.png")
