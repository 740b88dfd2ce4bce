"""Streaming on a device: every tensor of the streamed paths is created where it is meant to be.

CI has no GPU.  As in tests/test_device.py, ``meta`` is made PyTorch's default device while the
model and the data live on the CPU, so a tensor created without an explicit device breaks the fit
here as it would on a GPU.  The CUDA tests run where a GPU is present and skip cleanly elsewhere.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from moekit import LinearGaussianExpert, MixtureOfExperts, MoEClassifier, MoERegressor, SoftmaxGate, fit_em
from moekit.data import ArrayBatches, ParquetSource


class _Streamed(ArrayBatches):
    in_memory = False


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_device")
    rng = np.random.default_rng(0)
    for i in range(2):
        n = 250
        x = rng.normal(size=(n, 2))
        z = rng.random(n) < 1 / (1 + np.exp(-2 * x[:, 0]))
        y = np.where(z, 1 + 2 * x[:, 1], -1 - x[:, 1]) + 0.3 * rng.normal(size=n)
        pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "g": rng.choice(["u", "v"], n), "y": y,
                      "c": np.where(z, "p", "q")}).to_parquet(root / f"p{i}.parquet", row_group_size=64)
    return root


def _model(device="cpu", dtype=torch.float64):
    with torch.device("cpu"):
        torch.manual_seed(0)
        m = MixtureOfExperts(SoftmaxGate(3, 2), LinearGaussianExpert(3, n_experts=2)).to(dtype=dtype)
    return m.to(device)


def _em(folder, device="cpu", dtype=torch.float64):
    src = ParquetSource(folder, target="y", features=["a", "b", "g"], batch_rows=100, device=device, dtype=dtype)
    m = _model(device, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fit_em(m, src, random_state=0, max_iter=15)
    return [p.detach().cpu().double() for p in m.parameters()], r.history


def _estimators(folder, device="cpu", dtype="float64"):
    src = ParquetSource(folder, target="y", features=["a", "b", "g"], batch_rows=100)
    lab = ParquetSource(folder, target="c", features=["a", "b"], batch_rows=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = MoERegressor(n_experts=2, max_iter=10, random_state=0, device=device, dtype=dtype)
        reg.fit(src, memory_budget=0)  # streamed
        clf = MoEClassifier(n_experts=2, max_iter=10, random_state=0, device=device, dtype=dtype)
        clf.fit(lab, memory_budget=0)
        on = MoERegressor(n_experts=2, max_iter=5, random_state=0, device=device, dtype=dtype)
        X = np.random.default_rng(1).normal(size=(200, 2))
        on.partial_fit(X[:100], X[:100, 0] * 2)
        on.partial_fit(X[100:], X[100:, 0] * 2)
    return {"predict": reg.predict(src), "score": reg.score_samples(src), "proba": clf.predict_proba(lab),
            "online": on.predict(X[:20])}


def test_streamed_em_under_the_trap(folder):
    ref = _em(folder)
    with torch.device("meta"):
        got = _em(folder)
    for p, q in zip(ref[0], got[0]):
        assert torch.equal(p, q)
    assert ref[1] == got[1]


def test_streamed_estimators_under_the_trap(folder):
    ref = _estimators(folder)
    with torch.device("meta"):
        got = _estimators(folder)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_streamed_em_on_cuda_equals_the_cpu(folder, dtype):
    cpu = _em(folder, "cpu", dtype)
    gpu = _em(folder, "cuda", dtype)
    tol = 1e-8 if dtype == torch.float64 else 1e-3
    for p, q in zip(cpu[0], gpu[0]):
        assert torch.allclose(p, q, rtol=tol, atol=tol)
    assert np.allclose(cpu[1], gpu[1], rtol=tol, atol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_streamed_estimators_on_cuda_equal_the_cpu(folder):
    cpu = _estimators(folder, "cpu")
    gpu = _estimators(folder, "cuda")
    for k in cpu:
        np.testing.assert_allclose(gpu[k], cpu[k], rtol=1e-6, atol=1e-8, err_msg=k)
