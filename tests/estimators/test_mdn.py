"""Mixture density networks: log-space numerics, initialisation, training, the estimator."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal, norm
from sklearn.mixture import GaussianMixture
from sklearn.utils.estimator_checks import parametrize_with_checks

from moekit.datasets import make_inverse_sine
from moekit.distributions import MixtureDistribution
from moekit.estimators import MDNRegressor
from moekit.mdn import MixtureDensityNetwork
from moekit.training.mdn import DeadComponentWarning, fit_mdn

F64 = torch.float64


def _random_net(n_outputs, covariance, k=3, seed=0, dtype=F64, n_features=2):
    g = torch.Generator().manual_seed(seed)
    net = MixtureDensityNetwork(n_features, n_outputs, k, (8,), covariance=covariance, dtype=dtype, generator=g)
    with torch.no_grad():  # non-trivial standardisation and larger outputs than at initialisation
        d = net.d
        net.x_loc.copy_(torch.randn(n_features, generator=g, dtype=dtype))
        net.x_scale.copy_(torch.rand(n_features, generator=g, dtype=dtype) + 0.5)
        net.y_loc.copy_(torch.randn(d, generator=g, dtype=dtype) * 10)
        net.y_scale.copy_(torch.rand(d, generator=g, dtype=dtype) * 5 + 0.1)
        net.head.weight.mul_(3)
        net.head.bias.copy_(torch.randn(net.head.bias.shape, generator=g, dtype=dtype))
    return net, g


# ------------------------------------------------------------------ the module: numbers


@pytest.mark.parametrize("n_outputs,covariance", [(None, "full"), (1, "full"), (3, "full"), (3, "diag"),
                                                  (3, "spherical"), (1, "diag")])
def test_fast_log_prob_equals_distribution_log_prob(n_outputs, covariance):
    net, g = _random_net(n_outputs, covariance)
    x = torch.randn(50, 2, generator=g, dtype=F64)
    shape = (50,) if n_outputs is None else (50, n_outputs)
    y = net.y_loc + net.y_scale * torch.randn(shape, generator=g, dtype=F64)
    with torch.no_grad():
        fast = net.log_prob(x, y)
        dist = net(x)
        slow = dist.log_prob(y)
    assert isinstance(dist, MixtureDistribution)
    assert dist.batch_shape == (50,) and dist.components.batch_shape == (50, 3)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)


def test_full_covariance_density_matches_scipy():
    net, g = _random_net(3, "full")
    x = torch.randn(5, 2, generator=g, dtype=F64)
    y = net.y_loc + net.y_scale * torch.randn(5, 3, generator=g, dtype=F64)
    with torch.no_grad():
        dist = net(x)
        lp = net.log_prob(x, y).numpy()
    w = dist.weights.numpy()
    mu = dist.component_means.numpy()
    cov = dist.component_covariances.numpy()
    for i in range(5):
        p = sum(w[i, k] * multivariate_normal(mu[i, k], cov[i, k]).pdf(y[i].numpy()) for k in range(3))
        assert lp[i] == pytest.approx(math.log(p), rel=1e-9)
    # the covariance of the mixture is the law of total covariance of these components
    c = dist.covariance_matrix.numpy()
    m = dist.mean.numpy()
    for i in range(5):
        second = sum(w[i, k] * (cov[i, k] + np.outer(mu[i, k], mu[i, k])) for k in range(3))
        np.testing.assert_allclose(c[i], second - np.outer(m[i], m[i]), rtol=1e-9, atol=1e-9)


def test_scalar_density_and_quantiles_match_scipy():
    net, g = _random_net(None, "full")
    x = torch.randn(4, 2, generator=g, dtype=F64)
    with torch.no_grad():
        dist = net(x)
    w, mu, sd = dist.weights.numpy(), dist.component_means.numpy(), dist.component_variances.sqrt().numpy()
    q = dist.quantiles([0.05, 0.5, 0.95]).numpy()
    for i in range(4):
        cdf = sum(w[i, k] * norm(mu[i, k], sd[i, k]).cdf(q[i]) for k in range(3))
        np.testing.assert_allclose(cdf, [0.05, 0.5, 0.95], atol=1e-8)


def test_extreme_outputs_stay_finite_and_the_density_is_bounded():
    """Huge gate logits, scales driven to the floor, far targets: finite values and gradients."""
    for cov, d in [("full", 4), ("diag", 4), ("spherical", 4), ("full", None)]:
        net = MixtureDensityNetwork(1, d, 3, (4,), covariance=cov, dtype=torch.float32, scale_floor=1e-3)
        with torch.no_grad():
            net.head.bias.zero_()
            net.head.bias[:3] = torch.tensor([80.0, -80.0, 0.0])  # exp() would overflow float32
            _, _, sc, _ = net._slices()
            net.head.bias[sc] = -1e4  # softplus -> 0: every scale at the floor
        x = torch.zeros(6, 1)
        y = torch.full((6,) if d is None else (6, d), 1e6)
        y[0] = 0.0
        lp = net.log_prob(x, y)
        assert torch.isfinite(lp).all()
        lp.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())
        # a floored component cannot have a density above (2 pi)^(-d/2) / floor^d
        dd = 1 if d is None else d
        assert float(lp[0].detach()) <= -0.5 * dd * math.log(2 * math.pi) - dd * math.log(1e-3) + 1e-3
        sd = net.standardized_parameters(x)[2].detach()
        assert float(sd.min()) >= 1e-3


def test_standardisation_makes_training_equivariant():
    """y -> a y + b multiplies predictions by a, shifts them by b, and moves log-densities by -log a."""
    X, y = make_inverse_sine(300, random_state=1)
    kw = dict(n_components=3, hidden_layer_sizes=(8,), max_epochs=15, dtype="float64", random_state=0)
    a = MDNRegressor(**kw).fit(X, y)
    b = MDNRegressor(**kw).fit(X * 1e4 - 7, y * 1000.0 + 5.0)
    np.testing.assert_allclose(b.predict(X * 1e4 - 7), a.predict(X) * 1000.0 + 5.0, rtol=1e-6)
    np.testing.assert_allclose(b.score_samples(X * 1e4 - 7, y * 1000.0 + 5.0),
                               a.score_samples(X, y) - math.log(1000.0), rtol=1e-6, atol=1e-7)


def test_netlab_initialisation_starts_from_the_unconditional_mixture():
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(-3, 0.5, 300), rng.normal(2, 1.0, 700)])
    X = rng.normal(size=(1000, 2))
    net = MixtureDensityNetwork(2, None, 2, (8,), dtype=F64)
    res = fit_mdn(net, X, y, max_epochs=0, output_init_scale=0.0, validation_fraction=0.0, random_state=0)
    gm = GaussianMixture(2, random_state=0).fit(y[:, None])
    # with zero output weights the network outputs the same mixture at every x: the fitted one
    with torch.no_grad():
        dist = net(torch.as_tensor(X[:3]))
    order = np.argsort(dist.component_means[0].numpy())
    np.testing.assert_allclose(dist.component_means[0].numpy()[order], np.sort(gm.means_[:, 0]), atol=0.05)
    np.testing.assert_allclose(dist.weights[0].numpy()[order], gm.weights_[np.argsort(gm.means_[:, 0])], atol=0.02)
    np.testing.assert_allclose(dist.weights[0].numpy(), dist.weights[2].numpy())
    assert res.history[0] == pytest.approx(gm.score(y[:, None]), abs=0.01)
    # a random start is far worse than the fitted mixture
    net2 = MixtureDensityNetwork(2, None, 2, (8,), dtype=F64)
    res2 = fit_mdn(net2, X, y, max_epochs=0, init="random", validation_fraction=0.0, random_state=0)
    assert res2.history[0] < res.history[0] - 0.3


# ------------------------------------------------------------------ training


def _hand_schedule(scores, start, patience, factor, lr):
    """The learning-rate rule fit_mdn used before ReduceLROnPlateau: the rate after each epoch."""
    best, since, out = start, 0, []
    for v in scores:
        if v > best + 1e-6:
            best, since = v, 0
        else:
            since += 1
            if since >= patience:
                lr *= factor
                since = 0
        out.append(lr)
    return out


@pytest.mark.parametrize("patience", [1, 2, 5])
def test_lr_schedule_is_the_hand_written_rule(patience):
    from moekit.training.mdn import _lr_schedule

    rng = np.random.default_rng(patience)
    # rises, plateaus, improvements smaller than the threshold, exact ties
    steps = rng.choice([0.0, 0.0, 5e-7, 1e-6, 2e-6, 0.1, -0.05], size=300)
    scores = list(np.cumsum(steps) - 3.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    sched = _lr_schedule(opt, patience, 0.5, start=-3.0)
    got = []
    for v in scores:
        sched.step(v)
        got.append(opt.param_groups[0]["lr"])
    assert got == _hand_schedule(scores, -3.0, patience, 0.5, 3e-3)
    assert got[-1] < 3e-3  # the rule did fire
    assert _lr_schedule(opt, None, 0.5, 0.0) is None and _lr_schedule(opt, 3, 1.0, 0.0) is None


def test_moving_average_is_an_exponential_average_from_the_start():
    from moekit.training.mdn import _moving_average

    g = torch.Generator().manual_seed(0)
    net = MixtureDensityNetwork(1, None, 2, (4,), dtype=F64, generator=g)
    ema = _moving_average(net, 0.9)
    ref = [p.detach().clone() for p in net.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), ref))
    assert not any(p.requires_grad for p in ema.module.parameters())
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=F64))
        ema.update_parameters(net)
        ref = [r + 0.1 * (p.detach() - r) for r, p in zip(ref, net.parameters())]
    for a, b in zip(ema.module.parameters(), ref):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name,module", [("MDNRegressor", "moekit.estimators.mdn"), ("fit_mdn", "moekit.training.mdn"),
                                         ("MDNFitResult", "moekit.training.mdn"),
                                         ("DeadComponentWarning", "moekit.training.mdn")])
def test_names_moved_out_of_moekit_mdn_still_import_with_a_warning(name, module):
    import importlib

    import moekit.mdn

    with pytest.warns(DeprecationWarning, match=f"moekit.mdn.{name} has moved to {module}"):
        old = getattr(moekit.mdn, name)
    assert old is getattr(importlib.import_module(module), name)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        moekit.mdn.nothing_here  # noqa: B018


def test_from_import_of_a_moved_name_warns():
    with pytest.warns(DeprecationWarning, match="moekit.mdn.MDNRegressor has moved"):
        from moekit.mdn import MDNRegressor as Old
    assert Old is MDNRegressor


def test_keep_recent_keeps_a_later_network_within_one_paired_standard_error():
    X, y = make_inverse_sine(300, random_state=4)
    kw = dict(max_epochs=40, patience=10, random_state=0)
    best = fit_mdn(MixtureDensityNetwork(1, None, 3, (16,)), X, y, keep="best", **kw)
    recent = fit_mdn(MixtureDensityNetwork(1, None, 3, (16,)), X, y, keep="recent", **kw)
    # identical trajectories; "recent" keeps the same or a later epoch, never a worse-than-noise one
    assert best.validation_history == recent.validation_history
    assert recent.best_epoch >= best.best_epoch
    assert best.validation_history[best.best_epoch] == max(best.validation_history)


def test_default_schedule_decays_the_rate_before_stopping():
    """Early stopping waits three learning-rate decay periods; the estimator uses fit_mdn's default."""
    import inspect

    sig = inspect.signature(fit_mdn).parameters
    patience, lr_patience = sig["patience"].default, sig["lr_decay_patience"].default
    assert lr_patience is not None and patience == 3 * lr_patience
    assert MDNRegressor().patience == patience


def test_inverse_sine_default_settings_fast():
    """Looser than the benchmark (-1.09 averaged over 5 seeds): one seed, default settings, K=3."""
    X, y = make_inverse_sine(1000, random_state=0)
    Xt, yt = make_inverse_sine(20000, random_state=123)
    est = MDNRegressor(n_components=3, random_state=0).fit(X, y)
    nll = -est.score_samples(Xt, yt).mean()
    assert nll < -1.05
    assert est.fit_result_.dead_components == []
    assert np.all(np.isfinite(est.log_likelihood_history_))


def _correlated_problem(n, seed):
    """Two conditional components in 2-D with correlations +0.9 and -0.9, gate depending on x."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    comp = rng.uniform(size=n) < 1 / (1 + np.exp(-3 * x))
    means = np.where(comp[:, None], np.column_stack([2 * x, x]), np.column_stack([-2 * x + 3, 1 - x]))
    rho = np.where(comp, 0.9, -0.9)
    z1, z2 = rng.normal(size=(2, n))
    noise = 0.3 * np.column_stack([z1, rho * z1 + np.sqrt(1 - rho**2) * z2])
    return x[:, None], means + noise, np.where(comp, 0.9, -0.9)


def test_full_covariance_recovers_correlation_where_diagonal_cannot():
    X, y, _ = _correlated_problem(1000, 0)
    Xt, yt, true_rho = _correlated_problem(2000, 1)
    kw = dict(n_components=2, hidden_layer_sizes=(16,), max_epochs=80, patience=20, random_state=0)
    full = MDNRegressor(covariance="full", **kw).fit(X, y)
    diag = MDNRegressor(covariance="diag", **kw).fit(X, y)
    dist = full.predict_distribution(Xt)
    cov = dist.component_covariances.numpy()  # (n, K, 2, 2)
    rho = cov[..., 0, 1] / np.sqrt(cov[..., 0, 0] * cov[..., 1, 1])
    r = full.responsibilities(Xt, yt)
    learnt = (r * rho).sum(1)  # correlation of the component each point belongs to
    assert np.mean(np.abs(learnt - true_rho)) < 0.1
    assert np.abs(diag.predict_distribution(Xt).component_covariances.numpy()[..., 0, 1]).max() == 0.0
    assert full.score_samples(Xt, yt).mean() > diag.score_samples(Xt, yt).mean() + 0.5


def test_integer_weights_equal_repeated_rows_full_batch():
    X, y = make_inverse_sine(120, random_state=2)
    w = np.random.default_rng(0).integers(0, 3, size=120)
    kw = dict(max_epochs=10, batch_size=10**6, early_stopping=False, init="random", random_state=4)
    a = MixtureDensityNetwork(1, None, 3, (8,), dtype=F64)
    b = MixtureDensityNetwork(1, None, 3, (8,), dtype=F64)
    ra = fit_mdn(a, X, y, w.astype(float), **kw)
    rb = fit_mdn(b, np.repeat(X, w, axis=0), np.repeat(y, w), **kw)
    np.testing.assert_allclose(ra.history, rb.history, rtol=1e-9)
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-10)


def test_dead_component_warning_names_it_and_reseeding_revives_it():
    X, y = make_inverse_sine(400, random_state=3)
    net = MixtureDensityNetwork(1, None, 3, (8,), dtype=F64)
    fit_mdn(net, X, y, max_epochs=3, random_state=0)
    with torch.no_grad():  # kill component 2: its gate logit is far below the others everywhere
        net.head.weight[2] = 0
        net.head.bias[2] = -50.0
    with pytest.warns(DeadComponentWarning, match=r"1 of 3 mixture components are dead.*2: "):
        res = fit_mdn(net, X, y, init=None, max_epochs=2, random_state=0)
    assert res.dead_components == [2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeadComponentWarning)
        res = fit_mdn(net, X, y, init=None, max_epochs=30, patience=10, reseed_dead=True, random_state=0)
    assert (res.reseeded[0][1]) == 2
    assert res.usage[2] > 0.01 and res.dead_components == []


def test_reseed_moves_the_component_onto_the_worst_row():
    X, y = make_inverse_sine(200, random_state=5)
    net = MixtureDensityNetwork(1, None, 3, (8,), dtype=F64)
    fit_mdn(net, X, y, max_epochs=3, random_state=0)
    xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    with torch.no_grad():
        worst = int(torch.argmin(net.log_prob(xt, yt)))
        before = float(net.log_prob(xt, yt)[worst])
        rows = net.reseed_components([1], xt, yt)
        assert rows == [worst]
        mu = net(xt[worst : worst + 1]).component_means[0, 1]
        assert float(mu) == pytest.approx(y[worst], abs=1e-9)
        assert float(net.log_prob(xt, yt)[worst]) > before
        lw = net.log_gate(xt)
        torch.testing.assert_close(torch.logsumexp(lw, 1), torch.zeros(200, dtype=F64))


def test_training_never_touches_global_random_state_and_is_reproducible():
    X, y = make_inverse_sine(200, random_state=0)
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
    a = MDNRegressor(n_components=2, hidden_layer_sizes=(8,), max_epochs=5, random_state=7).fit(X, y)
    b = MDNRegressor(n_components=2, hidden_layer_sizes=(8,), max_epochs=5, random_state=7).fit(X, y)
    a.sample_y(X[:3], 2, random_state=0)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    np.testing.assert_array_equal(a.sample_y(X[:3], 4, random_state=1), b.sample_y(X[:3], 4, random_state=1))


def test_custom_trunk_trains_inside_any_torch_loop():
    trunk = torch.nn.Sequential(torch.nn.Linear(1, 12, dtype=F64), torch.nn.Tanh())
    net = MixtureDensityNetwork(1, None, 3, trunk=trunk, dtype=F64)
    X, y = make_inverse_sine(300, random_state=0)
    x, yy = torch.as_tensor(X), torch.as_tensor(y)
    res = fit_mdn(net, x, yy, max_epochs=20, random_state=0)
    assert res.mean_log_likelihood > res.history[0]
    # and in a plain loop of the user's own: gradients reach the trunk
    loss = -net(x).log_prob(yy).mean()
    loss.backward()
    assert trunk[0].weight.grad is not None and torch.isfinite(trunk[0].weight.grad).all()
    with pytest.raises(ValueError, match="custom trunk"):
        net.get_config()


def test_config_round_trip_rebuilds_the_same_network():
    net, g = _random_net(2, "full")
    clone = MixtureDensityNetwork(**net.get_config(), dtype=F64)
    clone.load_state_dict(net.state_dict())
    x = torch.randn(7, 2, generator=g, dtype=F64)
    y = torch.randn(7, 2, generator=g, dtype=F64)
    torch.testing.assert_close(clone.log_prob(x, y), net.log_prob(x, y), rtol=0, atol=0)


# ------------------------------------------------------------------ the estimator


def test_estimator_prediction_api_vector_y():
    X, y, _ = _correlated_problem(300, 3)
    X_before, y_before = X.copy(), y.copy()
    est = MDNRegressor(n_components=2, hidden_layer_sizes=(8,), max_epochs=5, random_state=0).fit(X, y)
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)
    assert est.predict(X[:4]).shape == (4, 2)
    assert est.sample_y(X[:4], 3, random_state=0).shape == (4, 2, 3)
    assert est.predict_gate(X[:4]).shape == (4, 2)
    np.testing.assert_allclose(est.predict_gate(X[:4]).sum(1), 1, rtol=1e-6)
    assert est.score_samples(X, y).shape == (300,)
    assert np.isfinite(est.bic(X, y)) and est.aic(X, y) < est.bic(X, y)
    with pytest.raises(ValueError, match="scalar"):
        est.predict_quantiles(X[:2], [0.5])
    with pytest.raises(ValueError, match="2 columns"):
        est.score_samples(X, y[:, :1].repeat(3, axis=1))


def test_estimator_prediction_api_scalar_y():
    X, y = make_inverse_sine(300, random_state=0)
    est = MDNRegressor(n_components=3, hidden_layer_sizes=(8,), max_epochs=10, random_state=0).fit(X, y)
    q = est.predict_quantiles(X[:5], [0.1, 0.5, 0.9])
    assert q.shape == (5, 3) and np.all(np.diff(q, axis=1) > 0)
    assert est.sample_y(X[:5], 7, random_state=0).shape == (5, 7)
    dist = est.predict_distribution(X[:5])
    np.testing.assert_allclose(est.predict(X[:5]), dist.mean.numpy(), rtol=1e-6)
    if hasattr(est, "predict_modes"):  # the shared mode finder works on the network's mixtures
        modes, weights = est.predict_modes(X[:5])
        assert modes.shape[0] == 5 and weights.shape == modes.shape[:2]
    assert est.model_.n_parameters() == sum(p.numel() for p in est.model_.parameters())


def test_target_noise_convolves_the_density():
    # Gaussian noise of sd s (standardised units) on y is learnt as extra variance:
    # the K=1 conditional sd becomes sqrt(sigma^2 + (s * sd_y)^2).
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 1))
    y = 2.0 * X[:, 0] + 0.1 * rng.normal(size=4000)
    s = 0.3
    est = MDNRegressor(n_components=1, hidden_layer_sizes=(8,), target_noise=s, max_epochs=150,
                       early_stopping=False, random_state=0).fit(X, y)
    sd = np.sqrt(est.predict_distribution(X[:200]).variance.numpy().ravel())
    expected = np.sqrt(0.1**2 + (s * y.std()) ** 2)
    assert np.median(sd) == pytest.approx(expected, rel=0.08)
    plain = MDNRegressor(n_components=1, hidden_layer_sizes=(8,), max_epochs=150, early_stopping=False,
                         random_state=0).fit(X, y)
    assert np.median(np.sqrt(plain.predict_distribution(X[:200]).variance.numpy().ravel())) < 0.13


def test_input_noise_attenuates_the_slope_and_leaves_the_data_alone():
    # Errors in variables: with x ~ N(0, 1) standardised and noise of sd s on it, the best
    # regression of y on the noisy x has slope a / (1 + s^2) (regression dilution).
    rng = np.random.default_rng(1)
    X = rng.normal(size=(4000, 1))
    y = 2.0 * X[:, 0] + 0.1 * rng.normal(size=4000)
    X0, y0 = X.copy(), y.copy()
    s = 1.0
    est = MDNRegressor(n_components=1, hidden_layer_sizes=(8,), input_noise=s, max_epochs=150,
                       random_state=0).fit(X, y)
    grid = np.array([[-0.5], [0.5]]) * X.std()
    slope = np.diff(est.predict(grid))[0] / np.diff(grid[:, 0])[0]
    assert slope == pytest.approx(2.0 / (1 + s**2), rel=0.1)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize(
    "params,match",
    [
        (dict(n_components=0), "n_components must be an integer >= 1, got 0"),
        (dict(covariance="block"), "covariance must be one of"),
        (dict(activation="sigmoid"), "activation must be one of"),
        (dict(learning_rate=-1.0), "learning_rate must be a number"),
        (dict(hidden_layer_sizes=(8, 0)), "hidden_layer_sizes must hold positive integers"),
        (dict(dtype="float16"), "dtype must be 'float64' or 'float32'"),
        (dict(validation_fraction=0.95), "validation_fraction must be a number"),
        (dict(input_noise=-0.1), "input_noise must be a number"),
        (dict(target_noise=float("nan")), "target_noise must be a number"),
    ],
)
def test_bad_parameters_raise_clear_errors(params, match):
    X, y = make_inverse_sine(50, random_state=0)
    with pytest.raises(ValueError, match=match):
        MDNRegressor(**params).fit(X, y)


def test_bad_data_raises_clear_errors():
    X, y = make_inverse_sine(50, random_state=0)
    est = MDNRegressor(max_epochs=2, hidden_layer_sizes=(4,), random_state=0)
    y_nan = y.copy()
    y_nan[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.fit(X, y_nan)
    est.fit(X, y)
    with pytest.raises(ValueError, match="features"):
        est.predict(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        est.score_samples(X[:3], y[:4])
    net = MixtureDensityNetwork(1, None, 2, (4,))
    with pytest.raises(ValueError, match="scalar y"):
        fit_mdn(net, X, y[:, None])
    with pytest.raises(TypeError, match="MixtureDensityNetwork"):
        fit_mdn(torch.nn.Linear(1, 1), X, y)
    with pytest.raises(ValueError, match="init must be"):
        fit_mdn(net, X, y, init="kmeans")


def test_cuda_requested_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    X, y = make_inverse_sine(50, random_state=0)
    with pytest.raises(ValueError, match="no CUDA device is available here; use device='cpu'"):
        MDNRegressor(device="cuda").fit(X, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_and_prediction_match_cpu():
    X, y = make_inverse_sine(500, random_state=0)
    kw = dict(n_components=3, hidden_layer_sizes=(16,), max_epochs=20, dtype="float64", random_state=0)
    gpu = MDNRegressor(device="cuda", **kw).fit(X, y)
    cpu = MDNRegressor(device="cpu", **kw).fit(X, y)
    assert gpu.model_.head.weight.is_cuda
    assert gpu.predict_distribution(X[:3]).mean.is_cuda
    np.testing.assert_allclose(gpu.predict(X), cpu.predict(X), rtol=1e-5, atol=1e-6)
    assert gpu.predict_quantiles(X[:4], [0.5]).shape == (4, 1)
    assert gpu.sample_y(X[:4], 2, random_state=0).shape == (4, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_full_covariance_float32():
    X, y, _ = _correlated_problem(400, 0)
    est = MDNRegressor(n_components=2, hidden_layer_sizes=(8,), max_epochs=10, device="cuda", random_state=0)
    est.fit(X, y)
    assert np.isfinite(est.score_samples(X, y)).all()


# scikit-learn's estimator checks.  A small, short-trained instance keeps them fast; every check
# concerns the API contract (fitting, shapes, dtypes, weights, pickling), not fit quality.
_CONDITIONAL = "score_samples(X, y) is a conditional density and needs y; row invariance is tested in test_score_samples_row_invariance"
_EXPECTED = {
    "check_methods_sample_order_invariance": _CONDITIONAL,
    "check_methods_subset_invariance": _CONDITIONAL,
    "check_sample_weight_equivalence_on_dense_data": (
        "minibatch training: repeated rows change the minibatches and the validation split, so integer "
        "weights and repeated rows agree only in distribution; exact equality in full-batch training is "
        "tested in test_integer_weights_equal_repeated_rows_full_batch"
    ),
}


@parametrize_with_checks(
    [MDNRegressor(n_components=2, hidden_layer_sizes=(16,), max_epochs=60, patience=10, random_state=0)],
    expected_failed_checks=lambda est: _EXPECTED,
)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_score_samples_row_invariance():
    X, y = make_inverse_sine(200, random_state=0)
    est = MDNRegressor(n_components=2, hidden_layer_sizes=(8,), max_epochs=5, random_state=0).fit(X, y)
    full = est.score_samples(X, y)
    perm = np.random.default_rng(0).permutation(200)
    np.testing.assert_allclose(est.score_samples(X[perm], y[perm]), full[perm], rtol=1e-6)
    np.testing.assert_allclose(est.score_samples(X[:17], y[:17]), full[:17], rtol=1e-6)


def test_verbose_training_reports_progress(capsys):
    X, y = make_inverse_sine(100, random_state=0)
    net = MixtureDensityNetwork(1, None, 2, (4,))
    res = fit_mdn(net, X, y, max_epochs=3, verbose=1, random_state=0)
    out = capsys.readouterr()
    assert len(res.history) >= 4
    assert "MDN" in out.err  # a tqdm bar


def test_missing_inputs_are_named_or_dropped():
    """MDNRegressor(missing='drop') drops rows with NaN inputs (counted, with a warning); the default names them."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    y = X[:, 0] + 0.3 * rng.normal(size=200)
    holes = X.copy()
    holes[5, 0] = np.nan
    with pytest.raises(ValueError, match=r"rows \[5\], columns \[0\]"):
        MDNRegressor(max_epochs=2).fit(holes, y)
    with pytest.warns(UserWarning, match="dropped 1 of 200"):
        m = MDNRegressor(max_epochs=2, missing="drop", random_state=0).fit(holes, y)
    assert m.n_rows_dropped_ == 1 and np.isfinite(m.predict(X)).all()
