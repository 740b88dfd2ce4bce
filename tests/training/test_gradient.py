"""fit_gradient: early stopping restores the best parameters, seeds reproduce, restarts keep the best."""

import numpy as np
import pytest
import torch

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_gradient
from moekit.training.restarts import best_of

F64 = torch.float64


def _data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=F64)
    y = torch.where(x[:, 0] < 0.5, 2 * x[:, 0], -x[:, 0]) + 0.05 * torch.randn(n, generator=g, dtype=F64)
    return x, y


def _moe():
    return MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2))


@pytest.mark.parametrize("patience", [2, 4])
def test_early_stopping_waits_patience_epochs_and_restores_the_best(patience):
    x, y = _data()
    model = _moe()
    res = fit_gradient(model, x, y, init="kmeans", max_epochs=500, patience=patience, tol=1e-3, learning_rate=0.05,
                       random_state=1)
    assert res.converged
    val = np.asarray(res.validation_history)
    # the best epoch: each new best beats the previous one by more than tol
    best, best_epoch = val[0], 0
    for e, v in enumerate(val[1:], start=1):
        if v > best + 1e-3:
            best, best_epoch = v, e
    assert res.n_iter == best_epoch + patience
    # the last history entry is at the restored parameters: those of the best epoch
    assert len(res.history) == res.n_iter + 2
    assert res.history[-1] == res.history[best_epoch]


def test_without_validation_it_stops_when_the_change_falls_below_tol():
    x, y = _data(seed=0)
    res = fit_gradient(_moe(), x, y, init="kmeans", max_epochs=300, validation_fraction=0.0, tol=1e-5, random_state=1)
    assert res.converged and res.validation_history is None
    assert abs(res.history[-1] - res.history[-2]) < 1e-5
    assert all(abs(b - a) >= 1e-5 for a, b in zip(res.history[:-2], res.history[1:-1]))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_identical_seeds_give_identical_results():
    x, y = _data(seed=3)
    kw = dict(init="random", max_epochs=20, batch_size=50, random_state=4)
    a, b = _moe(), _moe()
    ra, rb = fit_gradient(a, x, y, **kw), fit_gradient(b, x, y, **kw)
    assert ra.history == rb.history and ra.validation_history == rb.validation_history
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_restarts_keep_the_best_start_in_the_model():
    x, y = _data(seed=5)

    def run_one(m, seed):
        return fit_gradient(m, x, y, init="random", optimizer="lbfgs", validation_fraction=0.0, max_epochs=5,
                            random_state=seed)

    model = _moe()
    i, res, finals = best_of(model, 3, 0, run_one)
    assert finals[i] == max(finals) == res.log_likelihood
    with torch.no_grad():
        assert float(model.log_prob(x, y).mean()) == pytest.approx(res.mean_log_likelihood, rel=1e-12)
        assert float(model.log_prob(x, y).sum()) == pytest.approx(res.log_likelihood, rel=1e-12)
    again = _moe()
    assert best_of(again, 3, 0, run_one)[2] == finals


def test_bad_arguments_name_the_argument():
    x, y = _data(n=50)
    with pytest.raises(ValueError, match="max_epochs must be an integer >= 0"):
        fit_gradient(_moe(), x, y, max_epochs=-1)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        fit_gradient(_moe(), x, y, batch_size=0)
    with pytest.raises(ValueError, match="optimizer must be"):
        fit_gradient(_moe(), x, y, optimizer="sgd")
