"""Device discipline without a GPU.

CI has no GPU, so the CUDA tests skip there.  What breaks code on a GPU is almost always a
tensor created without an explicit device (``torch.zeros(n)``, ``torch.as_tensor(array)``,
``torch.randperm(n, generator=g)``): on a GPU it lands on the CPU and the next operation mixes
devices.  These tests make such tensors fail on a CPU-only machine too: they make ``"meta"``
PyTorch's *default* device (tensors without data) while the models live on the CPU, so any
tensor that moekit creates without saying where lands on ``meta`` and the next operation raises
("Tensor on device meta is not on the expected device cpu", "Cannot copy out of meta tensor").
Every estimator is fitted and queried under this trap, and its results must equal those of
an ordinary run.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from moekit import (
    HMEClassifier,
    HMERegressor,
    MDNRegressor,
    MoEClassifier,
    MoERegressor,
    build_tree,
    fit_em,
    fit_tree_em,
    grow_tree,
)
from moekit.datasets import make_inverse_sine, make_robot_arm
from moekit.inference import central_interval, find_modes, hdr, in_intervals, metrics
from moekit.mdn import MixtureDensityNetwork
from moekit.training.mdn import fit_mdn


def _trap():
    """``meta`` as the default device inside the block (the ``torch.device`` context; nothing leaks out)."""
    return torch.device("meta")


@pytest.fixture
def foreign_default_device():
    with _trap():
        yield


def _data():
    X, y = make_inverse_sine(200, random_state=0)
    XA, YA, _ = make_robot_arm(200, random_state=0)
    return X, y, XA, YA


_ESTIMATORS = {
    "mdn": lambda: MDNRegressor(n_components=3, hidden_layer_sizes=(8,), max_epochs=6, random_state=0),
    "mdn-noise-reseed": lambda: MDNRegressor(n_components=3, hidden_layer_sizes=(8,), max_epochs=8, target_noise=0.1,
                                             input_noise=0.1, reseed_dead=True, random_state=0),
    "moe-em": lambda: MoERegressor(n_experts=3, max_iter=5, random_state=0),
    "moe-gradient": lambda: MoERegressor(n_experts=2, fit_method="gradient", max_iter=5, random_state=0),
    "moe-student-t": lambda: MoERegressor(n_experts=2, expert="student_t", max_iter=5, random_state=0),
    "moe-mlp": lambda: MoERegressor(n_experts=2, expert="mlp", alpha=1e-2, max_iter=3, random_state=0),
    "hme": lambda: HMERegressor(depth=2, branching=2, max_iter=5, random_state=0),
    "hme-grow": lambda: HMERegressor(grow=True, max_iter=5, random_state=0),
}


def _queries(est, X, y, scalar):
    out = {
        "predict": lambda: est.predict(X),
        "modes": lambda: est.predict_modes(X).modes,
        "branches": lambda: est.predict_branches(X)[0],
        "score": lambda: est.score_samples(X, y),
        "sample": lambda: est.sample_y(X, 2, random_state=0),
        "nll": lambda: metrics.negative_log_likelihood(est.predict_distribution(X), y, reduction="none"),
    }
    if scalar:
        out.update({
            "hdr": lambda: est.predict_interval(X),
            "central": lambda: est.predict_interval(X, kind="central"),
            "quantiles": lambda: est.predict_quantiles(X, [0.1, 0.9]),
            "crps": lambda: metrics.crps(est.predict_distribution(X), y, reduction="none"),
            "coverage": lambda: in_intervals(y, est.predict_interval(X)),
        })
    return out


def _fit_and_query(make, X, y, scalar):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = make().fit(X, y)
        return {k: np.asarray(f()) for k, f in _queries(est, X[:25], y[:25], scalar).items()}


@pytest.mark.parametrize("name", list(_ESTIMATORS))
def test_estimators_create_every_tensor_where_they_mean_to(name, request):
    X, y, XA, YA = _data()
    reference = _fit_and_query(_ESTIMATORS[name], X, y, True)
    request.getfixturevalue("foreign_default_device")
    trapped = _fit_and_query(_ESTIMATORS[name], X, y, True)
    for k in reference:
        np.testing.assert_array_equal(trapped[k], reference[k], err_msg=k)


@pytest.mark.parametrize("make", [
    lambda: MDNRegressor(n_components=3, hidden_layer_sizes=(8,), max_epochs=6, random_state=0),
    lambda: MoERegressor(n_experts=3, max_iter=5, random_state=0),
])
def test_vector_targets_under_the_trap(make, foreign_default_device):
    _, _, XA, YA = _data()
    got = _fit_and_query(make, XA, YA, False)
    assert np.isfinite(got["score"]).all()


def test_classifiers_under_the_trap(foreign_default_device):
    X, y, _, _ = _data()
    labels = np.where(y > 0.5, "high", "low")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for est in (MoEClassifier(n_experts=2, max_iter=5, random_state=0),
                    HMEClassifier(depth=2, branching=2, max_iter=5, random_state=0)):
            proba = est.fit(X, labels).predict_proba(X[:10])
            assert proba.shape == (10, 2) and np.allclose(proba.sum(1), 1)


def test_training_functions_put_array_data_on_the_model_device():
    X, y, _, _ = _data()
    tree = build_tree(1, depth=2, branching=2, dtype=torch.float64)
    flat = build_tree(1, depth=1, branching=3, dtype=torch.float64)
    net = MixtureDensityNetwork(1, n_components=2, hidden_layer_sizes=(8,))
    seedling = build_tree(1, depth=1, branching=2, dtype=torch.float64)
    with _trap():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.isfinite(fit_em(flat, X, y, max_iter=5, random_state=0).log_likelihood)
            assert np.isfinite(fit_tree_em(tree, X, y, max_iter=5, random_state=0).log_likelihood)
            assert np.isfinite(fit_mdn(net, X, y, max_epochs=3, target_noise=0.1, random_state=0).log_likelihood)
            grown = grow_tree(seedling, X, y, max_leaves=3, max_iter=5, random_state=0)
            mix = grown.model(torch.as_tensor(X[:20], device="cpu"))
            modes = find_modes(mix)
            assert torch.isfinite(modes.modes[:, 0]).all()
            assert torch.isfinite(hdr(mix, 0.9)[0][:, 0]).all() and torch.isfinite(central_interval(mix, 0.9)).all()


def test_scikit_learn_experts_and_pruning_under_the_trap():
    from sklearn.linear_model import Ridge

    from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate
    from moekit.experts.sklearn import SklearnExpert
    from moekit.gates import MLPGate

    X, y, _, _ = _data()
    moe = MixtureOfExperts(SoftmaxGate(1, 2), [SklearnExpert(Ridge(), 1), LinearGaussianExpert(1)])
    gates = [SoftmaxGate(1, 3), MLPGate(1, 3)]
    with _trap():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit_em(moe, X, y, max_iter=5, random_state=0)
        assert np.isfinite(res.log_likelihood)
        assert torch.isfinite(moe(torch.as_tensor(X[:5], device="cpu")).mean).all()
        for gate in gates:  # pruning a dead expert keeps the other rows of the gate
            kept = gate.select([0, 2])
            out = kept(torch.as_tensor(X[:5], device="cpu"))
            assert out.shape == (5, 2) and out.device == torch.device("cpu")


def test_tracking_under_the_trap(foreign_default_device):
    from moekit.inference import filter_mixture, track_modes

    _, _, XA, YA = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MoERegressor(n_experts=3, max_iter=5, random_state=0).fit(XA, YA)
        path = track_modes(est, transition_cov=0.01 * np.eye(2), X=XA[:30], order=2).path
        filt = filter_mixture(est, transition_cov=0.01 * np.eye(2), X=XA[:30], max_hypotheses=4)
    assert np.isfinite(path).all() and np.isfinite(filt.mean_path).all()
    assert filt.distribution.mean.device == torch.device("cpu")


def test_model_files_plots_and_reports_under_the_trap(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moekit import load, plotting, report

    X, y, _, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = [make().fit(X, y) for make in (_ESTIMATORS["mdn"], _ESTIMATORS["moe-em"], _ESTIMATORS["hme"])]
        for i, est in enumerate(fitted):
            est.save(tmp_path / f"m{i}.moekit")
        with _trap():
            for i, est in enumerate(fitted):
                back = load(tmp_path / f"m{i}.moekit")
                np.testing.assert_array_equal(back.predict(X[:10]), est.predict(X[:10]))
                plotting.plot_conditional_density(est, X, y)
                plotting.plot_gate(est, X)
                plotting.plot_experts(est, X, y)
                report.make_report(est, X, y, tmp_path / f"r{i}.html")
                plt.close("all")
            plotting.plot_hme_tree(fitted[2], X)
            plt.close("all")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(_ESTIMATORS))
def test_cuda_fits_and_answers_every_query_like_the_cpu(name):
    # float64 on both devices: the same start (built and seeded on the CPU), the same numbers up to
    # the order of floating-point reductions; minibatch shuffles and noise come from CPU generators.
    X, y, _, _ = _data()

    def make(device):
        est = _ESTIMATORS[name]()
        return lambda: est.set_params(device=device, dtype="float64")

    cpu = _fit_and_query(make("cpu"), X, y, True)
    gpu = _fit_and_query(make("cuda"), X, y, True)
    for k in cpu:
        if k == "sample":  # drawn by the GPU's own random stream
            assert gpu[k].shape == cpu[k].shape and np.isfinite(gpu[k]).all()
        else:
            np.testing.assert_allclose(gpu[k], cpu[k], rtol=1e-4, atol=1e-6, err_msg=k)
