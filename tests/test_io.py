"""Safe model files: bit-identical round trips, clear errors for bad files, no pickle ever."""

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LinearRegression

import moekit
from moekit import HMEClassifier, HMERegressor, MDNRegressor, MoEClassifier, MoERegressor
from moekit.datasets import load_tonedata, make_robot_arm
from moekit.experts import LinearGaussianExpert
from moekit.io import FORMAT_VERSION, ModelFileError, load, read_info, save

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(160, 2))
    y1 = np.where(X[:, 0] > 0, 1 + 2 * X[:, 1], -1 - X[:, 1]) + 0.1 * rng.normal(size=160)
    y2 = np.column_stack([y1, X[:, 0] - X[:, 1] + 0.1 * rng.normal(size=160)])
    return X, y1, y2


X, Y1, Y2 = _data()
COUNTS = np.random.default_rng(1).poisson(np.exp(0.5 + 0.5 * X[:, 0])).astype(float)
LABELS2 = (X[:, 0] * X[:, 1] > 0).astype(int)
LABELS3 = np.array(["low", "mid", "high"])[(X[:, 0] > -0.5).astype(int) + (X[:, 0] > 0.5).astype(int)]


def _cases():
    fast = dict(max_iter=15, random_state=0)
    frame = pd.DataFrame(X, columns=["a", "b"])
    cases = [
        ("linear-scalar", MoERegressor(n_experts=2, **fast), X, Y1),
        ("linear-vector-full", MoERegressor(n_experts=2, **fast), X, Y2),
        ("linear-vector-diag", MoERegressor(n_experts=2, covariance="diag", **fast), X, Y2),
        ("student-t", MoERegressor(n_experts=2, expert="student_t", **fast), X, Y1),
        ("poisson", MoERegressor(n_experts=2, expert="poisson", **fast), X, COUNTS),
        ("mlp-expert-mlp-gate", MoERegressor(n_experts=2, expert="mlp", gate="mlp", hidden_layer_sizes=(4,),
                                             max_iter=3, random_state=0), X, Y1),
        ("constant-gate", MoERegressor(n_experts=2, gate="constant", **fast), X, Y1),
        ("float32", MoERegressor(n_experts=2, dtype="float32", **fast), X, Y1),
        ("dataframe-gate-features", MoERegressor(n_experts=2, gate_features=["a"], **fast), frame, Y1),
        ("ridge-gradient", MoERegressor(n_experts=2, alpha=0.1, fit_method="gradient", max_iter=3, random_state=0),
         X, Y1),
        ("logistic-binary", MoEClassifier(n_experts=2, **fast), X, LABELS2),
        ("softmax-string-labels", MoEClassifier(n_experts=2, **fast), X, LABELS3),
        ("mlp-classifier", MoEClassifier(n_experts=2, expert="mlp", hidden_layer_sizes=(4,), max_iter=3,
                                         random_state=0), X, LABELS2),
    ]
    cases += [
        ("hme-depth2", HMERegressor(depth=2, branching=2, **fast), X, Y1),
        ("hme-per-level-vector", HMERegressor(branching=(3, 2), depth=None, **fast), X, Y2),
        ("hme-grown", HMERegressor(grow=True, branching=2, max_leaves=3, init="kmeans_x", max_iter=15,
                                   random_state=0), X, Y1),
        ("hme-classifier", HMEClassifier(depth=2, branching=2, **fast), X, LABELS3),
    ]
    cases += [
        ("mdn-scalar", MDNRegressor(n_components=2, hidden_layer_sizes=(8,), max_epochs=3, random_state=0), X, Y1),
        ("mdn-vector-float64", MDNRegressor(n_components=2, hidden_layer_sizes=(8,), max_epochs=3, dtype="float64",
                                            covariance="diag", random_state=0), X, Y2),
    ]
    return cases


CASES = _cases()


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.fixture(scope="module")
def fitted():
    out = {}
    for name, est, XX, yy in CASES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[name] = (est.fit(XX, yy), XX, yy)
    return out


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_round_trip_is_bit_identical(fitted, name, tmp_path):
    est, XX, yy = fitted[name]
    path = tmp_path / "model.moekit"
    est.save(path)
    again = moekit.load(path)
    assert type(again) is type(est)
    assert again.get_params() == est.get_params()
    _same(again.predict(XX), est.predict(XX))
    _same(again.score_samples(XX, yy), est.score_samples(XX, yy))
    _same(again.predict_gate(XX), est.predict_gate(XX))
    if hasattr(est, "predict_proba"):
        _same(again.predict_proba(XX), est.predict_proba(XX))
        _same(again.classes_, est.classes_)
    else:
        _same(again.sample_y(XX[:5] if not hasattr(XX, "iloc") else XX.iloc[:5], 3, random_state=1),
              est.sample_y(XX[:5] if not hasattr(XX, "iloc") else XX.iloc[:5], 3, random_state=1))
    d0, d1 = est.predict_distribution(XX), again.predict_distribution(XX)
    _same(d0.log_weights.numpy(), d1.log_weights.numpy())
    assert again.n_features_in_ == est.n_features_in_
    if hasattr(est, "feature_names_in_"):
        _same(again.feature_names_in_, est.feature_names_in_)
    _same(again.log_likelihood_history_, est.log_likelihood_history_)
    _same(again.mean_log_likelihood_history_, est.mean_log_likelihood_history_)
    assert again.log_likelihood_ == est.log_likelihood_ and again.mean_log_likelihood_ == est.mean_log_likelihood_
    assert type(again.fit_result_) is type(est.fit_result_)
    assert again.fit_result_.history == est.fit_result_.history
    for k in ("log_likelihood", "mean_log_likelihood", "total_weight", "train_weight", "init_mean_log_likelihoods"):
        assert getattr(again.fit_result_, k) == getattr(est.fit_result_, k), k
    assert again.fit_result_.model is again.model_
    for a, b in zip(again.model_.parameters(), est.model_.parameters()):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_pruned_model_round_trip(tmp_path):
    d = load_tonedata()
    est = MoERegressor(n_experts=3, random_state=0, max_iter=20).fit(d.data, d.target)
    est.model_.prune([0, 2])  # as fit_em does when an expert's share vanishes
    est.n_experts_ = est.model_.n_experts
    est.save(tmp_path / "m.moekit")
    again = load(tmp_path / "m.moekit")
    assert again.n_experts == 3 and again.n_experts_ == 2
    _same(again.predict_gate(d.data), est.predict_gate(d.data))
    _same(again.predict(d.data), est.predict(d.data))


def test_loaded_estimator_can_be_refitted_and_global_rng_untouched(fitted, tmp_path):
    est, XX, yy = fitted["linear-scalar"]
    before = torch.random.get_rng_state().clone()
    np_before = np.random.get_state()[1].copy()
    est.save(tmp_path / "m.moekit")
    again = load(tmp_path / "m.moekit")
    assert torch.equal(torch.random.get_rng_state(), before)
    assert np.array_equal(np.random.get_state()[1], np_before)
    again.fit(XX, yy)
    _same(again.predict(XX), MoERegressor(**est.get_params()).fit(XX, yy).predict(XX))


def test_metadata_and_read_info(fitted, tmp_path):
    est, _, _ = fitted["softmax-string-labels"]
    meta = {"app": {"features": ["a", "b"], "levels": [["x", "y"]]}, "note": "hello", "n": 3}
    save(est, tmp_path / "m.moekit", metadata=meta)
    info = read_info(tmp_path / "m.moekit")
    assert info["metadata"] == {"app": {"features": ["a", "b"], "levels": [["x", "y"]]}, "note": "hello", "n": 3}
    assert info["estimator"] == "MoEClassifier"
    assert info["format_version"] == FORMAT_VERSION
    assert info["params"]["n_experts"] == 2
    assert info["file_size"] == os.path.getsize(tmp_path / "m.moekit")
    assert {n["path"] for n in info["tree"]} == {"", "gate", "experts"}


def test_save_is_atomic_and_leaves_no_temporary_files(fitted, tmp_path):
    est, _, _ = fitted["linear-scalar"]
    est.save(tmp_path / "m.moekit")
    est.save(tmp_path / "m.moekit")  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["m.moekit"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "m.moekit").st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------- save errors
def test_unfitted_estimator_cannot_be_saved(tmp_path):
    with pytest.raises(ModelFileError, match="not fitted yet; call fit"):
        save(MoERegressor(), tmp_path / "m.moekit")
    assert not os.path.exists(tmp_path / "m.moekit")


def test_sklearn_expert_cannot_be_saved_without_pickle(tmp_path):
    d = load_tonedata()
    est = MoERegressor(n_experts=2, expert=LinearRegression(), max_iter=5, random_state=0).fit(d.data, d.target)
    with pytest.raises(ModelFileError, match="expert= is an instance .*LinearRegression.*pickle"):
        est.save(tmp_path / "m.moekit")
    assert not os.path.exists(tmp_path / "m.moekit")


def test_expert_instance_cannot_be_saved(tmp_path):
    d = load_tonedata()
    est = MoERegressor(n_experts=2, expert=LinearGaussianExpert(1), max_iter=5, random_state=0).fit(d.data, d.target)
    with pytest.raises(ModelFileError, match="parameter expert= is an instance"):
        est.save(tmp_path / "m.moekit")


def test_a_model_with_nan_cannot_be_saved(fitted, tmp_path):
    est = __import__("copy").deepcopy(fitted["linear-scalar"][0])
    with torch.no_grad():
        next(est.model_.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ModelFileError, match="tensor '.*' holds NaN or infinite values .*fit it again"):
        est.save(tmp_path / "m.moekit")
    assert not os.path.exists(tmp_path / "m.moekit")


def test_other_objects_are_refused(tmp_path):
    with pytest.raises(ModelFileError, match="cannot save a LinearRegression"):
        save(LinearRegression().fit(X, Y1), tmp_path / "m.moekit")


# ------------------------------------------------------------- load errors
@pytest.fixture()
def good_file(fitted, tmp_path):
    est, _, _ = fitted["linear-scalar"]
    path = tmp_path / "good.moekit"
    est.save(path)
    return path


def _rewrite(path, out, edit_config=None, edit_meta=None, tensors=None):
    """Write a file that a hostile or buggy writer could make: edited header, recomputed checksum."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from moekit.io import _checksum

    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8 : 8 + n])["__metadata__"]
    cfg = json.loads(meta["config"])
    ts = st_load(blob)
    if tensors:
        ts.update(tensors)
    if edit_config:
        edit_config(cfg)
    meta["config"] = json.dumps(cfg)
    meta["checksum"] = _checksum(meta["config"], ts)
    if edit_meta:
        edit_meta(meta)
    open(out, "wb").write(st_save(ts, metadata=meta))
    return out


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; check the path"):
        load(tmp_path / "nope.moekit")


def test_empty_file(tmp_path):
    (tmp_path / "e.moekit").write_bytes(b"")
    with pytest.raises(ModelFileError, match="is not a moekit model file .*empty or truncated"):
        load(tmp_path / "e.moekit")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_file(good_file, keep):
    blob = good_file.read_bytes()
    cut = good_file.with_name("cut.moekit")
    cut.write_bytes(blob[: max(9, int(len(blob) * keep))])
    with pytest.raises(ModelFileError, match="truncated|damaged"):
        load(cut)


def test_corrupted_tensor_bytes_are_detected(good_file):
    blob = bytearray(good_file.read_bytes())
    blob[-3] ^= 0xFF  # one flipped byte in the tensor data
    bad = good_file.with_name("bad.moekit")
    bad.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="checksum does not match"):
        load(bad)


def test_corrupted_header_is_detected(good_file):
    blob = bytearray(good_file.read_bytes())
    blob[20] = ord("\x01")  # inside the JSON header
    bad = good_file.with_name("bad.moekit")
    bad.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="not a moekit model file|damaged"):
        load(bad)


def test_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelFileError, match="safetensors file without moekit's header"):
        load(tmp_path / "plain.safetensors")
    (tmp_path / "data.csv").write_text("x,y\n1,2\n3,4\n")
    with pytest.raises(ModelFileError, match="is not a moekit model file"):
        load(tmp_path / "data.csv")
    torch.save({"w": torch.zeros(3)}, tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match="is not a moekit model file"):
        load(tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match="is a folder"):
        load(tmp_path)


def test_future_version_is_refused(good_file):
    future = _rewrite(good_file, good_file.with_name("future.moekit"),
                      edit_meta=lambda m: m.update(format_version=str(FORMAT_VERSION + 1)))
    with pytest.raises(ModelFileError, match=f"format version {FORMAT_VERSION + 1}, newer .* upgrade moekit"):
        load(future)


def test_unknown_estimator_and_tags_are_refused(good_file):
    def rename(cfg):
        cfg["estimator"] = "os.system"

    with pytest.raises(ModelFileError, match="'os.system' model, which this moekit cannot rebuild"):
        load(_rewrite(good_file, good_file.with_name("a.moekit"), rename))

    def tag(cfg):
        cfg["fitted"]["n_iter_"] = {"__reduce__": ["os", "system", "echo hi"]}

    with pytest.raises(ModelFileError, match="damaged model file '.*b.moekit': unexpected value at attribute n_iter_"):
        load(_rewrite(good_file, good_file.with_name("b.moekit"), tag))

    def shape(cfg):
        cfg["structure"]["__dict__"]["n_experts"] = 3

    with pytest.raises(ModelFileError, match="damaged model file"):
        load(_rewrite(good_file, good_file.with_name("c.moekit"), shape))


def test_file_from_a_missing_device_loads_on_cpu_with_a_warning(good_file):
    if torch.cuda.is_available():  # pragma: no cover - CPU machines only
        pytest.skip("this machine has a GPU")

    def to_cuda(cfg):
        cfg["params"]["device"] = "cuda:0"

    path = _rewrite(good_file, good_file.with_name("gpu.moekit"), to_cuda)
    with pytest.warns(UserWarning, match="device 'cuda:0', which this machine does not have; loading it on the CPU"):
        est = load(path)
    assert est.device == "cpu"


# ------------------------------------------------------------------ pickle
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_pickle_payload_is_never_executed(good_file, tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(str(marker)))
    # 1. a pickle file named like a model file
    (tmp_path / "evil.moekit").write_bytes(payload)
    # 2. a torch.save archive (zip + pickle)
    torch.save(_Payload(str(marker)), tmp_path / "evil2.moekit")
    # 3. a valid moekit file carrying the pickle bytes as a tensor and inside a string
    arr = torch.tensor(list(payload), dtype=torch.uint8)

    def smuggle(cfg):
        cfg["fitted"]["smuggled_"] = {"__array__": "value.99"}
        cfg["params"]["init"] = payload.decode("latin-1")

    evil3 = _rewrite(good_file, tmp_path / "evil3.moekit", smuggle, tensors={"value.99": arr})

    def forbid(*a, **k):
        raise AssertionError("moekit.load must never unpickle")

    monkeypatch.setattr(pickle, "loads", forbid)
    monkeypatch.setattr(pickle, "load", forbid)
    monkeypatch.setattr(pickle, "Unpickler", forbid)
    monkeypatch.setattr(torch, "load", forbid)
    for name in ("evil.moekit", "evil2.moekit"):
        with pytest.raises(ModelFileError, match="is not a moekit model file"):
            load(tmp_path / name)
    est = load(evil3)  # loads: the payload is inert data
    assert isinstance(est.smuggled_, np.ndarray) and est.smuggled_.dtype == np.uint8
    assert bytes(est.smuggled_.tolist()) == payload
    assert not marker.exists()


def test_no_unpickling_at_all_under_an_audit_hook(good_file, tmp_path):
    """In a fresh interpreter, an audit hook records any unpickling or process spawning during load."""
    marker = tmp_path / "PWNED"
    (tmp_path / "evil.moekit").write_bytes(pickle.dumps(_Payload(str(marker))))
    script = textwrap.dedent(
        f"""
        import sys
        events = []
        def hook(event, args):
            if event.startswith(("pickle.", "os.system", "subprocess.", "os.exec", "os.posix_spawn")):
                events.append(event)
        import moekit
        sys.addaudithook(hook)
        for p in [{str(good_file)!r}, {str(tmp_path / "evil.moekit")!r}]:
            try:
                moekit.load(p)
            except ValueError:
                pass
        print("EVENTS", events)
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "EVENTS []" in r.stdout
    assert not marker.exists()


def test_robot_arm_mdn_or_moe_vector_target(tmp_path):
    Xr, Yr, _ = make_robot_arm(200, random_state=0)
    est = MoERegressor(n_experts=3, max_iter=10, random_state=0).fit(Xr, Yr)
    est.save(tmp_path / "arm.moekit")
    _same(load(tmp_path / "arm.moekit").predict_distribution(Xr).covariance_matrix.numpy(),
          est.predict_distribution(Xr).covariance_matrix.numpy())


def test_irregular_tree_round_trip(fitted, tmp_path):
    """A tree that no (depth, branching) describes: a node beside a single leaf, as pruning or growing leave."""
    est, XX, yy = fitted["hme-depth2"]
    est = __import__("copy").deepcopy(est)
    g = torch.Generator().manual_seed(1)
    root = est.model_
    single = root.experts[1].experts.select(0)  # one leaf of the second node, unstacked
    root.experts[1] = single
    with torch.no_grad():
        for p in root.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    est.n_leaves_ = est.n_experts_ = 3
    est.save(tmp_path / "odd.moekit")
    again = load(tmp_path / "odd.moekit")
    _same(again.predict(XX), est.predict(XX))
    _same(again.predict_gate(XX), est.predict_gate(XX))
    assert type(again.model_.experts[1]) is type(single) and again.model_.experts[1].n_experts is None


# ------------------------------------------------- files of older versions
OLD_FILES = os.path.join(ROOT, "tests", "golden", "model_files")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(OLD_FILES) if f.endswith(".moekit")))
def test_files_before_0_2_keep_their_mean_under_its_new_name(name):
    """moekit 0.1.0 stored the mean per unit weight as log_likelihood_; it is mean_log_likelihood_ now.

    Those files do not store the training weight, so the total (log_likelihood_) cannot be recovered:
    it is NaN, and a warning says so.
    """
    path = os.path.join(OLD_FILES, name)
    old = read_info(path)
    assert old["moekit_version"] == "0.1.0"
    stored = old["fitted"]["log_likelihood_"]
    with pytest.warns(UserWarning, match="was written by moekit 0.1.0, whose log_likelihood_ was the mean"):
        est = load(path)
    assert est.mean_log_likelihood_ == stored and np.isnan(est.log_likelihood_)
    fr, stored_fr = est.fit_result_, old["fitted"]["fit_result_"]
    assert fr.mean_log_likelihood == stored_fr["log_likelihood"] and np.isnan(fr.log_likelihood)
    assert fr.init_mean_log_likelihoods == stored_fr["init_log_likelihoods"]
    assert fr.history == stored_fr["history"]  # histories were and are means: unchanged
    _same(est.mean_log_likelihood_history_, np.asarray(stored_fr["history"]))
    assert est.log_likelihood_history_.shape == est.mean_log_likelihood_history_.shape
    assert np.isnan(est.log_likelihood_history_).all()


def test_the_stored_value_of_an_old_file_was_the_mean():
    d = load_tonedata()  # the data moe_regressor.moekit was fitted on (tests/golden/record_model_files.py)
    with pytest.warns(UserWarning, match="0.1.0"):
        est = load(os.path.join(OLD_FILES, "moe_regressor.moekit"))
    ll = est.score_samples(d.data, d.target)
    assert est.mean_log_likelihood_ == pytest.approx(ll.mean(), rel=1e-10)
    refit = MoERegressor(**est.get_params()).fit(d.data, d.target)
    # the same maximum; since 0.2 the gate's EM M-step is one Newton step, so EM stops (tol=1e-6 on the
    # mean) at a slightly different point of the path
    assert refit.mean_log_likelihood_ == pytest.approx(est.mean_log_likelihood_, abs=1e-6)
    assert refit.log_likelihood_ == pytest.approx(refit.mean_log_likelihood_ * len(d.target), rel=1e-10)
    assert refit.log_likelihood_ == pytest.approx(ll.sum(), abs=1e-6 * len(d.target))


def test_new_files_load_without_a_note(fitted, tmp_path):
    est, _, _ = fitted["linear-scalar"]
    est.save(tmp_path / "m.moekit")
    assert read_info(tmp_path / "m.moekit")["moekit_version"] == moekit.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load(tmp_path / "m.moekit")
    assert again.log_likelihood_ == est.log_likelihood_


def test_classifier_parameters_removed_in_0_2_are_ignored_with_a_note():
    path = os.path.join(OLD_FILES, "moe_classifier.moekit")
    assert {"covariance", "var_floor"} <= set(read_info(path)["params"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = load(path)
    notes = [str(w.message) for w in caught if "no longer has" in str(w.message)]
    assert len(notes) == 1 and "covariance='full'" in notes[0] and "var_floor=1e-06" in notes[0]
    assert "covariance" not in est.get_params() and "var_floor" not in est.get_params()


# ------------------------------------------------------- registration
def test_io_imports_no_estimator_and_names_an_unregistered_class(good_file):
    """moekit.io alone knows no estimator class: loading says which class is missing; moekit.load registers them."""
    script = textwrap.dedent(
        f"""
        import sys
        import moekit.io
        assert not any(m.startswith("moekit.estimators") for m in sys.modules), "io imported the estimators"
        try:
            moekit.io.load({str(good_file)!r})
        except moekit.io.ModelFileError as e:
            print("ERROR", e)
        import moekit
        print("LOADED", type(moekit.load({str(good_file)!r})).__name__)
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "holds a 'MoERegressor' model" in r.stdout and "no estimator class of that name is registered" in r.stdout
    assert "LOADED MoERegressor" in r.stdout


def test_rebuild_model_leaves_the_parameters_alone(fitted):
    est, _, _ = fitted["linear-scalar"]
    before = est.get_params()
    model = est.rebuild_model({"n_experts": 1, "y_info": None})
    assert model.n_experts == 1 and est.get_params() == before and est.model_structure()["n_experts"] == 2
