"""Tracking a stick figure through frames that a single image cannot decide.

An orthographic camera loses depth: an arm swung forwards and the same arm
swung backwards by the same angle give the same image.  A conditional mixture
trained on single frames returns both explanations of an ambiguous frame;
choosing the heavier one frame by frame flips back and forth.  Viterbi over
the per-frame modes with a constant-velocity motion model picks the sequence
that moves smoothly, deciding each ambiguous frame from its neighbours.

Run:  python examples/tracking.py [output_folder]      (default: moekit-output/)
Writes tracking_depths.png (per-frame hypotheses and the tracked sequence)
and tracking_poses.png (side views of ambiguous frames).  Takes a few minutes
(the per-frame model is fitted on 4,000 frames).
"""

import os
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from moekit import MoERegressor
from moekit.datasets import make_kinematic_tracking
from moekit.inference import estimate_transition_cov, filter_mixture, track_modes

out = sys.argv[1] if len(sys.argv) > 1 else "moekit-output"
os.makedirs(out, exist_ok=True)

train = make_kinematic_tracking(20, 200, motion="random", random_state=0)  # random poses, no motion
smooth = make_kinematic_tracking(10, 200, random_state=1)  # smooth motions: for the motion model only
test = make_kinematic_tracking(1, 200, random_state=2)
X, y = train.X.reshape(-1, 4), train.y.reshape(-1, 2)
print("Fitting the per-frame model p(depths | image) on 4,000 random poses ...")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    est = MoERegressor(n_experts=20, n_init=2, max_iter=300, init="kmeans", random_state=0).fit(X, y)

q2 = estimate_transition_cov(smooth.y, order=2)
xs, ys = test.X[0], test.y[0]
modes = est.predict_modes(xs, max_modes=8)
tracked = track_modes(est, q2, X=xs, order=2, max_modes=8)
filtered = filter_mixture(est, estimate_transition_cov(smooth.y, order=1), X=xs, order=1)
amb = test.n_branches[0] > 1


def err(p):
    return np.abs(p - ys).mean(1)


print(f"mean pose error, top mode frame by frame: {err(modes.modes[:, 0]).mean():.4f}")
print(f"mean pose error, Viterbi tracked:          {err(tracked.path).mean():.4f}")
print(f"mean pose error, Gaussian-sum filter:      {err(filtered.mean_path).mean():.4f}")
print(f"({amb.mean():.0%} of the frames are ambiguous)")

# ------------------------------------------------------------- depths vs time
t = np.arange(len(ys))
fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
for j, (ax, joint) in enumerate(zip(axes, ["elbow", "wrist"])):
    for a, b in zip(np.flatnonzero(np.diff(np.r_[0, amb.astype(int)]) == 1), np.flatnonzero(np.diff(np.r_[amb.astype(int), 0]) == -1)):
        ax.axvspan(a - 0.5, b + 0.5, color="0.92", lw=0)
    ok = ~np.isnan(modes.modes[..., j])
    ax.scatter(np.broadcast_to(t[:, None], ok.shape)[ok], modes.modes[..., j][ok], s=30 * modes.weights[ok],
               color="0.5", label="per-frame modes (size = mass)")
    ax.plot(t, ys[:, j], color="tab:green", lw=3, alpha=0.5, label="truth")
    ax.plot(t, modes.modes[:, 0, j], ".", color="tab:red", ms=4, label="top mode, frame by frame")
    ax.plot(t, tracked.path[:, j], color="tab:blue", lw=1.2, label="tracked (Viterbi, constant velocity)")
    ax.set_ylabel(f"{joint} depth")
axes[0].legend(fontsize=8, ncol=2, loc="upper right")
axes[1].set_xlabel("frame (grey: ambiguous frames)")
fig.suptitle("Per-frame hypotheses and the tracked sequence")
fig.tight_layout()
fig.savefig(os.path.join(out, "tracking_depths.png"), dpi=120)

# ------------------------------------------------------------ side views
wrong = np.flatnonzero(amb & (err(modes.modes[:, 0]) > 0.05))
show = wrong[np.linspace(0, len(wrong) - 1, min(4, len(wrong))).astype(int)] if len(wrong) else np.flatnonzero(amb)[:4]
fig, axes = plt.subplots(1, max(len(show), 1), figsize=(3.2 * max(len(show), 1), 4), squeeze=False)
root = test.limb_roots[0]
for ax, f in zip(axes[0], show):
    for depths, color, lab in ((ys[f], "tab:green", "truth"), (modes.modes[f, 0], "tab:red", "top mode"),
                               (tracked.path[f], "tab:blue", "tracked")):
        pose = test.to_poses(xs[f], depths)  # (2, 3): elbow, wrist
        zz = [root[2], pose[0, 2], pose[1, 2]]
        yy = [root[1], pose[0, 1], pose[1, 1]]
        ax.plot(zz, yy, "-o", color=color, lw=2, label=lab, alpha=0.8)
    ax.plot([0, 0], [0.9, 1.7], color="k", lw=4)  # torso, seen from the side
    ax.axvline(0, color="0.8", lw=0.5)
    ax.set_title(f"frame {f} (side view)")
    ax.set_xlabel("depth z (camera on the right)")
    ax.set_xlim(-0.6, 0.6)
    ax.set_aspect("equal")
axes[0][0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(out, "tracking_poses.png"), dpi=120)
print(f"Figures written to {out}/tracking_depths.png and {out}/tracking_poses.png")
