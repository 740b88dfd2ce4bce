"""Plots: every function draws what the model says (densities integrate to one, gates sum to one, ...)."""

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from moekit import LinearGaussianExpert, MixtureOfExperts, MoEClassifier, MoERegressor, SoftmaxGate  # noqa: E402
from moekit.datasets import load_tonedata, make_inverse_sine, make_robot_arm, robot_arm_forward  # noqa: E402
from moekit.plotting import (  # noqa: E402
    describe_slice,
    marginal,
    plot_conditional_density,
    plot_convergence,
    plot_data,
    plot_experts,
    plot_gate,
    plot_hme_tree,
    plot_robot_arm,
    tree_summary,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sine():
    X, y = make_inverse_sine(400, random_state=0)
    return MoERegressor(n_experts=3, random_state=0, max_iter=60).fit(X, y), X, y


@pytest.fixture(scope="module")
def arm():
    X, Y, _ = make_robot_arm(300, random_state=0)
    return MoERegressor(n_experts=4, random_state=0, max_iter=30).fit(X, Y), X, Y


@pytest.fixture(scope="module")
def clf():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    y = np.where(X[:, 0] > 0, "yes", "no")
    return MoEClassifier(n_experts=2, random_state=0, max_iter=20).fit(X, y), X, y


def _image(ax):
    im = ax.images[0]
    arr = np.asarray(im.get_array(), dtype=float)
    x0, x1, y0, y1 = im.get_extent()
    return arr, (x0, x1, y0, y1)


@pytest.mark.parametrize("target", [0, 1])
def test_conditional_density_columns_integrate_to_one(arm, target):
    est, X, Y = arm
    lo, hi = Y[:, target].min() - 2.0, Y[:, target].max() + 2.0
    ax = plot_conditional_density(est, X, Y, target=target, n_grid=300, y_range=(lo, hi), show_modes=False)
    dens, (_, _, y0, y1) = _image(ax)
    assert dens.shape == (300, 300)
    dy = (y1 - y0) / dens.shape[0]
    np.testing.assert_allclose(dens.sum(0) * dy, 1.0, atol=2e-3)
    assert ax.get_ylabel() == f"y[{target}]"


def test_conditional_density_scalar_y_with_modes_and_data(sine):
    est, X, y = sine
    fig, ax = plt.subplots()
    # a fine grid: the fit's narrowest component has a noise sd of about 0.02
    out = plot_conditional_density(est, X, y, n_grid=400, y_range=(-1.5, 2.5), ax=ax, feature_names=["x"],
                                   target_names=["t"])
    assert out is ax
    dens, (x0, x1, y0, y1) = _image(ax)
    np.testing.assert_allclose(dens.sum(0) * (y1 - y0) / dens.shape[0], 1.0, atol=2e-3)
    labels = [c.get_label() for c in ax.collections]
    assert labels == ["data", "modes"]
    modes = ax.collections[1].get_offsets()
    assert len(modes) >= 80  # at least one mode at every grid x
    # every plotted mode is a local maximum of its column's density
    with torch.no_grad():
        for xm, ym in modes[:: max(1, len(modes) // 15)]:
            d = est.predict_distribution(np.array([[xm]]))
            lp = d.log_prob(torch.tensor([[ym - 1e-3], [ym], [ym + 1e-3]], dtype=torch.float64))[:, 0]
            assert lp[1] >= lp[0] - 1e-9 and lp[1] >= lp[2] - 1e-9
    assert ax.get_xlabel() == "x" and ax.get_ylabel() == "t"


def test_density_of_counts_uses_integer_grid():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(200, 1))
    y = rng.poisson(np.exp(1 + X[:, 0])).astype(float)
    est = MoERegressor(n_experts=2, expert="poisson", random_state=0, max_iter=20).fit(X, y)
    ax = plot_conditional_density(est, X, y, n_grid=30, y_range=(0, 60))
    dens, _ = _image(ax)
    assert dens.shape == (61, 30)  # one row per count 0..60
    np.testing.assert_allclose(dens.sum(0), 1.0, atol=1e-6)


def test_gate_probabilities_sum_to_one_and_match_the_model(arm):
    est, X, _ = arm
    ax = plot_gate(est, X, feature=1, n_grid=50, stacked=False)
    ys = np.array([ln.get_ydata() for ln in ax.lines])  # (K, 50)
    assert ys.shape == (est.n_experts_, 50)
    np.testing.assert_allclose(ys.sum(0), 1.0, atol=1e-12)
    xs = ax.lines[0].get_xdata()
    Xg = np.tile(np.median(X, axis=0), (50, 1))
    Xg[:, 1] = xs
    np.testing.assert_allclose(ys.T, est.predict_gate(Xg), atol=1e-12)
    ax = plot_gate(est, X, stacked=True)
    assert len(ax.collections) == est.n_experts_


def test_experts_one_line_per_expert_and_points_by_responsibility(sine):
    est, X, y = sine
    ax = plot_experts(est, X, y, n_grid=40)
    lines = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
    assert len(lines) == est.n_experts_
    # the drawn curve of expert k is that expert's mean
    with torch.no_grad():
        seg = lines[0].get_segments()
        xs = np.array([s[0, 0] for s in seg])
        means = est.predict_distribution(xs[:, None]).component_means[:, 0].numpy()
    np.testing.assert_allclose([s[0, 1] for s in seg], means, atol=1e-12)
    pts = [c for c in ax.collections if type(c).__name__ == "PathCollection"][0]
    assert len(pts.get_offsets()) == len(X)


def test_experts_for_a_classifier_show_probabilities(clf):
    est, X, y = clf
    ax = plot_experts(est, X, y, target=1)
    for c in ax.collections:
        if type(c).__name__ == "LineCollection":
            ys = np.concatenate([s[:, 1] for s in c.get_segments()])
            assert ys.min() >= 0 and ys.max() <= 1
    assert ax.get_ylabel() == "P(class yes)"
    with pytest.raises(TypeError, match="for regressors"):
        plot_conditional_density(est, X)


def test_hme_tree_shares_add_up():
    g = torch.Generator().manual_seed(0)

    def node(k):
        gate = SoftmaxGate(2, k)
        with torch.no_grad():
            gate.coef.copy_(torch.randn(gate.coef.shape, generator=g, dtype=torch.float64))
        return gate

    inner = [MixtureOfExperts(node(2), LinearGaussianExpert(2, n_experts=2)) for _ in range(3)]
    tree = MixtureOfExperts(node(3), inner)
    x = torch.randn(100, 2, generator=g, dtype=torch.float64)
    nodes = tree_summary(tree, x)
    by_path = {n["path"]: n for n in nodes}
    leaves = [n for n in nodes if n["leaf"]]
    assert len(leaves) == 6
    assert sum(n["share"] for n in leaves) == pytest.approx(1.0, abs=1e-12)
    for n in nodes:
        if not n["leaf"]:
            kids = [m for m in nodes if len(m["path"]) == len(n["path"]) + 1 and m["path"][:-1] == n["path"]]
            assert n["share"] == pytest.approx(sum(m["share"] for m in kids), abs=1e-12)
    assert by_path[()]["share"] == pytest.approx(1.0)
    ax = plot_hme_tree(tree, x.numpy())
    edge = [float(t.get_text()) for t in ax.texts if t.get_text()[:1].isdigit()]
    assert len(edge) == 9  # 3 inner nodes + 6 leaves
    assert not ax.axison
    with pytest.raises(ValueError, match="more than max_leaves=4"):
        plot_hme_tree(tree, max_leaves=4)


def test_convergence_curve_is_the_history(sine):
    est, _, _ = sine
    ax = plot_convergence(est)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), est.fit_result_.history)
    assert ax.get_xlabel() == "EM iteration"
    ax2 = plot_convergence([1.0, 2.0])
    assert list(ax2.lines[0].get_ydata()) == [1.0, 2.0]
    with pytest.raises(ValueError, match="history is empty"):
        plot_convergence([])


def test_robot_arm_hand_is_the_forward_map():
    angles = np.array([[0.5, 2.0], [1.0, 4.0], [0.3, 3.0]])
    ax = plot_robot_arm(angles, target=robot_arm_forward(angles))
    hands = np.array([[ln.get_xdata()[-1], ln.get_ydata()[-1]] for ln in ax.lines[:3]])
    np.testing.assert_allclose(hands, robot_arm_forward(angles), atol=1e-12)
    np.testing.assert_allclose(np.column_stack(ax.lines[3].get_data()), robot_arm_forward(angles))
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(m, 2\)"):
        plot_robot_arm(np.zeros(3))


def test_data_plot_and_class_labels(clf):
    est, X, y = clf
    ax = plot_data(X, y, feature=1)
    assert len(ax.collections) == 2  # one colour per class
    ax = plot_data(X, X[:, 0], feature_names=["u", "v"], target_names=["w"])
    assert ax.get_xlabel() == "u" and ax.get_ylabel() == "w"


def test_bad_arguments_are_named(arm, sine):
    est, X, Y = arm
    with pytest.raises(ValueError, match="feature must be an integer index into the 2 input columns, got 5"):
        plot_gate(est, X, feature=5)
    with pytest.raises(ValueError, match="pass X so that the other columns can be held at their median"):
        plot_gate(est, x_range=(0, 1))
    with pytest.raises(ValueError, match="X has 3 columns but the estimator was fitted on 2"):
        plot_gate(est, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="target must be an integer index into the 2 target columns"):
        plot_conditional_density(est, X, Y, target=2)
    s_est, sX, _ = sine
    with pytest.raises(ValueError, match="x_range must be"):
        plot_gate(s_est, x_range=(1, 0))
    with pytest.raises(ValueError, match="pass X .* or x_range"):
        plot_gate(s_est)
    ax = plot_gate(s_est, x_range=(0, 1), n_grid=5)  # one input column: no X needed
    assert ax.get_xlim() == (0.0, 1.0)


def test_marginal_of_a_gaussian_mixture(arm):
    est, X, _ = arm
    with torch.no_grad():
        d = est.predict_distribution(X[:5])
        m1 = marginal(d, 1)
        np.testing.assert_allclose(m1.mean.numpy(), d.mean[:, 1].numpy(), atol=1e-12)
        np.testing.assert_allclose(m1.variance.numpy(), d.covariance_matrix[:, 1, 1].numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="target must be"):
        marginal(d, 3)


def test_tone_tree_and_all_plots_share_one_figure():
    d = load_tonedata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MoERegressor(n_experts=2, random_state=0).fit(d.data, d.target)
    fig, axes = plt.subplots(2, 3)
    outs = [
        plot_data(d.data, d.target, ax=axes[0, 0]),
        plot_conditional_density(est, d.data, d.target, n_grid=30, ax=axes[0, 1]),
        plot_gate(est, d.data, ax=axes[0, 2]),
        plot_experts(est, d.data, d.target, ax=axes[1, 0]),
        plot_hme_tree(est, d.data, ax=axes[1, 1]),
        plot_convergence(est, ax=axes[1, 2]),
    ]
    assert [o is a for o, a in zip(outs, axes.ravel())] == [True] * 6


def _crash_test(n=133):
    """A table shaped like the motorcycle crash test: flat, a deep dip, an overshoot, damped waves."""
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(2, 58, n))
    a = np.where(t < 14, 0.0, np.where(t < 22, -120 * (t - 14) / 8, np.where(
        t < 32, -120 + 170 * (t - 22) / 10, 50 * np.exp(-(t - 32) / 8) * np.cos((t - 32) / 4))))
    return t[:, None], a + rng.normal(0, 4 + 0.3 * np.abs(a))


def test_experts_are_drawn_only_where_the_gate_uses_them_and_the_axes_follow_the_data():
    X, y = _crash_test()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MoERegressor(n_experts=5, random_state=0).fit(X, y)

    def drawn(ax):
        segs = [c.get_segments() for c in ax.collections if type(c).__name__ == "LineCollection"]
        return [np.asarray(s).reshape(-1, 2, 2) for s in segs]

    # extended over the whole x range, some expert's line leaves the data far behind (the old picture)
    full = np.concatenate([s[:, :, 1].ravel() for s in drawn(plot_experts(est, X, y, min_weight=0.0))])
    assert full.min() < y.min() - 0.5 * np.ptp(y) or full.max() > y.max() + 0.5 * np.ptp(y)
    ax = plot_experts(est, X, y)
    lo, hi = ax.get_ylim()
    assert y.min() - 0.1 * np.ptp(y) <= lo <= y.min() and y.max() <= hi <= y.max() + 0.1 * np.ptp(y)
    x0, x1 = ax.get_xlim()
    assert X.min() - 0.03 * np.ptp(X) <= x0 <= X.min() and X.max() <= x1 <= X.max() + 0.03 * np.ptp(X)
    for k, segs in enumerate(drawn(ax)):  # every drawn piece of expert k is where the gate gives it >= 0.01
        if len(segs):
            g = est.predict_gate(segs[:, :, 0].reshape(-1, 1))[:, k].reshape(-1, 2).mean(1)
            assert g.min() >= 0.01 - 1e-12
    # without y, the drawn lines set the y axis
    lo2, hi2 = plot_experts(est, X).get_ylim()
    assert hi2 - lo2 < 2 * np.ptp(y)
    with pytest.raises(ValueError, match=r"min_weight must be a number in \[0, 1\), got 1.5"):
        plot_experts(est, X, y, min_weight=1.5)


def test_slice_plots_say_which_input_varies_and_where_the_others_are_held(arm, sine):
    est, X, Y = arm
    med = np.median(X, axis=0)
    want = f"u varied; held at the median: v = {med[1]:.4g}"
    names = ["u", "v"]
    assert plot_experts(est, X, Y, feature_names=names).get_title() == want
    assert plot_gate(est, X, feature_names=names).get_title() == want
    assert plot_conditional_density(est, X, Y, n_grid=20, feature_names=names).get_title() == want
    assert plot_gate(est, X, feature=1).get_title() == f"x[1] varied; held at the median: x[0] = {med[0]:.4g}"
    long = plot_gate(est, X, feature_names=["a rather long input name", "another long input name"]).get_title()
    assert max(len(ln) for ln in long.splitlines()) <= 50 and " ".join(long.split()) == (
        f"a rather long input name varied; held at the median: another long input name = {med[1]:.4g}")
    s_est, sX, sy = sine  # one input column: nothing is held, no title
    assert plot_experts(s_est, sX, sy).get_title() == "" and describe_slice(sX, 0) == ""
    X4 = np.column_stack([X, X**2])
    assert describe_slice(X4, 2, feature_names=list("abcd"), max_shown=2) == (
        f"c varied; held at their medians: a = {med[0]:.4g}, b = {med[1]:.4g} (+1 more)")
    with pytest.raises(ValueError, match="max_shown must be a positive integer or None, got 0"):
        describe_slice(X4, 0, max_shown=0)
