"""Property-based tests: random and mutated model files either load as usable models or raise ModelFileError.

The files start from real saved models (flat and hierarchical mixtures, a mixture density network, a
classifier with text labels, a model fitted on a DataFrame with a text column, one saved with the
command line's metadata) and are damaged at random: bytes flipped, inserted, deleted or cut (anywhere,
or inside the header), values of the configuration replaced, deleted, added or nested (the file then
re-signed, so that the checks behind the checksum are reached), random safetensors headers.

The property: ``moekit.load`` either returns an estimator whose ``predict`` gives finite numbers for
finite input (class labels among ``classes_`` for a classifier), or raises ``ModelFileError``; never
another exception, never a hang (each example loads one small file), never a large allocation (the
generated sizes are small, the declared ones may be huge; the peak memory of the whole run is checked).
"""

import json
import resource
import struct
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save as st_save

import moekit
from moekit import HMERegressor, MDNRegressor, MoEClassifier, MoERegressor
from moekit.io import ModelFileError, _checksum

pytestmark = pytest.mark.filterwarnings("ignore")

_MAX_GROWTH_KIB = 600 * 1024  # peak memory growth over a whole property run


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-models")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = np.where(X[:, 0] > 0, 1 + X[:, 1], -1) + 0.1 * rng.normal(size=60)
    labels = np.array(["low", "mid", "high"])[(X[:, 0] > -0.5).astype(int) + (X[:, 0] > 0.5).astype(int)]
    frame = pd.DataFrame({"x": X[:, 0], "g": np.array(["a", "b", "c"])[rng.integers(0, 3, 60)]})
    fits = {
        "moe": (MoERegressor(n_experts=2, max_iter=5, random_state=0), X, y, None),
        "clf": (MoEClassifier(n_experts=2, max_iter=5, random_state=0), X, labels, None),
        "hme": (HMERegressor(depth=2, branching=2, max_iter=5, random_state=0), X, y, None),
        "mdn": (MDNRegressor(n_components=2, hidden_layer_sizes=(4,), max_epochs=2, random_state=0), X, y, None),
        "frame": (MoERegressor(n_experts=2, max_iter=5, random_state=0), frame, y, None),
        "cli": (MoERegressor(n_experts=2, max_iter=5, random_state=0), X, y, {"cli": {
            "features": [{"name": "a", "kind": "numeric"}, {"name": "b", "kind": "numeric"}],
            "encoded_features": ["a", "b"], "targets": ["y"], "task": "regression",
            "training_data": {"file": "t.csv", "rows": 60, "columns": {"a": {"kind": "numeric", "min": -1.0,
                                                                              "max": 1.0, "mean": 0.0, "std": 1.0}}},
            "selection": None, "command": "moekit fit t.csv --target y", "fit_seconds": 0.1}}),
    }
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (est, XX, yy, meta) in fits.items():
            path = folder / f"{name}.moekit"
            moekit.io.save(est.fit(XX, yy), path, metadata=meta)
            out[name] = path.read_bytes()
    return out


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _check_load(path):
    """The property: a usable model or a ModelFileError."""
    try:
        est = moekit.load(path)
    except ModelFileError as e:
        assert str(e).startswith(("damaged model file '", f"'{path}'")), str(e)  # it names the file
        return None
    d = int(est.n_features_in_)
    X = np.random.default_rng(0).normal(size=(4, d))
    names = getattr(est, "feature_names_in_", None)
    if names is not None:
        X = pd.DataFrame(X, columns=names.tolist())
    pred = np.asarray(est.predict(X))
    if hasattr(est, "classes_"):
        assert set(pred.tolist()) <= set(est.classes_.tolist())
        assert np.isfinite(est.predict_proba(X)).all()
    else:
        assert pred.dtype.kind == "f" and np.isfinite(pred).all(), pred
    return est


# ------------------------------------------------------------- values for mutations (small, some declaring huge sizes)
_INTS = st.sampled_from([0, 1, 2, 3, -1, -2, 30_000_000, 2**31, 2**63, 10**30, 10**300])
_LEAF = st.one_of(st.none(), st.booleans(), _INTS, st.integers(-5, 5),
                  st.floats(allow_nan=False, allow_infinity=False, width=64),
                  st.text(max_size=12), st.sampled_from(["__class__", "os.system", "nan", "float64", "U", "model_"]))
_TAGS = st.sampled_from(["__float__", "__npscalar__", "__tuple__", "__dict__", "__tensor__", "__array__",
                         "__strarray__", "__result__", "__dtype__", "shape", "kind", "value", "fields", "__class__"])
_JSON = st.recursive(
    _LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(_TAGS, st.text(max_size=8)), inner, max_size=3)),
    max_leaves=12,
)


def _paths(v, here=()):
    """Every place in a JSON value: the tuple of keys and indices that leads to it."""
    yield here
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, (*here, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, (*here, i))


def _mutate(cfg, path, action, value):
    if not path:
        return value if action == "replace" else cfg
    parent = cfg
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif action == "wrap":
        parent[last] = [parent[last]] if isinstance(value, (int, type(None))) else {"__dict__": {"x": parent[last]}}
    elif action == "add" and isinstance(parent[last], dict):
        parent[last][str(value)[:12] if not isinstance(value, str) else value] = value
    elif action == "add" and isinstance(parent[last], list):
        parent[last].append(value)
    elif action == "nest":
        deep = parent[last]
        for _ in range(300):
            deep = [deep]
        parent[last] = deep
    return cfg


def _parts(blob):
    (n,) = struct.unpack("<Q", blob[:8])
    return n, json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _resign(blob, cfg_text):
    from safetensors.torch import load as st_load

    _, header, _ = _parts(blob)
    meta = header["__metadata__"]
    tensors = st_load(blob)
    meta["config"] = cfg_text
    meta["checksum"] = _checksum(cfg_text, tensors)
    return st_save(tensors, metadata=meta)


_BASES = st.sampled_from(["moe", "clf", "hme", "mdn", "frame", "cli"])


# ------------------------------------------------------------------ properties
def test_mutated_configurations_load_or_raise_model_file_error(blobs, tmp_path):
    """One random change to the configuration (re-signed): a usable model or a ModelFileError."""
    before = _peak_kib()

    @given(base=_BASES, data=st.data(), action=st.sampled_from(["replace", "delete", "wrap", "add", "nest"]), value=_JSON)
    def prop(base, data, action, value):
        blob = blobs[base]
        _, header, _ = _parts(blob)
        cfg = json.loads(header["__metadata__"]["config"])
        paths = list(_paths(cfg))
        path = data.draw(st.sampled_from(paths), label="path")
        if action == "delete" and not path:
            action = "replace"
        cfg = _mutate(cfg, path, action, value)
        file = tmp_path / "m.moekit"
        file.write_bytes(_resign(blob, json.dumps(cfg)))
        _check_load(file)

    prop()
    assert _peak_kib() - before < _MAX_GROWTH_KIB


def test_mutated_bytes_load_or_raise_model_file_error(blobs, tmp_path):
    """Bytes flipped, inserted, deleted or cut, anywhere or inside the header (checksum left as it was)."""
    before = _peak_kib()

    @given(base=_BASES, data=st.data(), in_header=st.booleans(),
           edits=st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "cut", "prefix"]),
                                    st.floats(0, 1), st.binary(min_size=1, max_size=8)), min_size=1, max_size=3))
    def prop(base, data, in_header, edits):
        blob = bytearray(blobs[base])
        n = struct.unpack("<Q", blob[:8])[0]
        for kind, where, payload in edits:
            hi = min(len(blob), 8 + n) if in_header else len(blob)
            i = int(where * max(hi - 1, 0))
            if kind == "flip" and blob:
                blob[i] ^= payload[0] or 1
            elif kind == "insert":
                blob[i:i] = payload
            elif kind == "delete":
                del blob[i : i + len(payload)]
            elif kind == "cut":
                del blob[i:]
            elif kind == "prefix":
                blob[:8] = struct.pack("<Q", data.draw(st.sampled_from([0, 1, n - 1, n + 1, len(blob), 2**31, 2**63]),
                                                       label="prefix") % 2**64)
        file = tmp_path / "m.moekit"
        file.write_bytes(bytes(blob))
        _check_load(file)

    prop()
    assert _peak_kib() - before < _MAX_GROWTH_KIB


_DTYPES = st.sampled_from(["F64", "F32", "F16", "BF16", "I64", "I32", "U8", "BOOL", "F8", "O", "", 3])
_SHAPES = st.one_of(st.lists(_INTS, max_size=3), st.lists(st.integers(0, 4), max_size=3), _LEAF)


def test_random_headers_raise_model_file_error(blobs, tmp_path):
    """Random safetensors headers around a real configuration: random tensor declarations, offsets and data."""
    before = _peak_kib()

    @given(base=_BASES,
           specs=st.dictionaries(st.sampled_from(["model.gate.coef", "model.experts.coef", "value.0", "w", "__metadata__x"]),
                                 st.fixed_dictionaries({"dtype": _DTYPES, "shape": _SHAPES,
                                                        "data_offsets": st.lists(st.one_of(st.integers(0, 64), _INTS),
                                                                                 min_size=0, max_size=3)}),
                                 max_size=3),
           data=st.binary(max_size=96), keep_meta=st.sampled_from([True, True, True, False]))
    def prop(base, specs, data, keep_meta):
        _, header, _ = _parts(blobs[base])
        head = dict(specs)
        if keep_meta:
            head["__metadata__"] = header["__metadata__"]
        raw = json.dumps(head).encode()
        file = tmp_path / "m.moekit"
        file.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
        _check_load(file)

    prop()
    assert _peak_kib() - before < _MAX_GROWTH_KIB


def test_mutated_tensor_values_load_or_raise_model_file_error(blobs, tmp_path):
    """Stored numbers replaced (re-signed): NaN, infinities, huge or tiny values, other dtypes and shapes."""
    from safetensors.torch import load as st_load

    before = _peak_kib()

    @given(base=_BASES, data=st.data(),
           value=st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 1e-300, 0.0, 1.0]),
           change=st.sampled_from(["value", "dtype", "shape"]))
    def prop(base, data, value, change):
        blob = blobs[base]
        _, header, _ = _parts(blob)
        tensors = st_load(blob)
        name = data.draw(st.sampled_from(sorted(tensors)), label="tensor")
        t = tensors[name].clone()
        if change == "value" and t.is_floating_point() and t.numel():
            i = data.draw(st.integers(0, t.numel() - 1), label="index")
            t.view(-1)[i] = torch.tensor(value, dtype=torch.float64).to(t.dtype)  # 1e300 is inf in float32
        elif change == "dtype":
            t = t.to(torch.float32 if t.dtype != torch.float32 else torch.float64)
        elif change == "shape":
            t = torch.cat([t.reshape(-1), t.reshape(-1)[:1]]) if t.numel() else torch.zeros(1)
        tensors[name] = t
        meta = header["__metadata__"]
        meta["checksum"] = _checksum(meta["config"], tensors)
        file = tmp_path / "m.moekit"
        file.write_bytes(st_save(tensors, metadata=meta))
        _check_load(file)

    prop()
    assert _peak_kib() - before < _MAX_GROWTH_KIB


def test_mutated_command_line_metadata_never_an_internal_error(blobs, tmp_path, capsys):
    """'moekit predict' and 'moekit info' on a file whose command-line metadata was changed at random (re-signed):
    the prediction (exit 0) or a one-line error (exit 1; 2 when the metadata is gone and the command needs
    --features), never an internal error (exit 3)."""
    from moekit.cli import main as cli_main

    table = tmp_path / "new.csv"
    pd.DataFrame({"a": [0.1, -0.3, 1.2], "b": [1.0, 0.0, -2.0]}).to_csv(table, index=False)
    before = _peak_kib()

    @given(data=st.data(), action=st.sampled_from(["replace", "delete", "wrap", "add"]), value=_JSON,
           command=st.sampled_from(["predict", "info"]))
    def prop(data, action, value, command):
        blob = blobs["cli"]
        _, header, _ = _parts(blob)
        cfg = json.loads(header["__metadata__"]["config"])
        paths = [p for p in _paths(cfg) if p[:1] == ("metadata",) and len(p) > 1]
        cfg = _mutate(cfg, data.draw(st.sampled_from(paths), label="path"), action, value)
        file = tmp_path / "m.moekit"
        file.write_bytes(_resign(blob, json.dumps(cfg)))
        out = tmp_path / "p.csv"
        if out.exists():
            out.unlink()
        argv = ["predict", str(file), str(table), "-o", str(out), "--quiet"] if command == "predict" else ["info", str(file)]
        code = cli_main(argv)
        err = capsys.readouterr().err
        assert code in (0, 1, 2), err
        if code:
            assert err.startswith("moekit: error:") and err.count("\n") == 1, err
        elif command == "predict":
            assert np.isfinite(pd.read_csv(out).select_dtypes("number").to_numpy()).all()

    prop()
    assert _peak_kib() - before < _MAX_GROWTH_KIB
