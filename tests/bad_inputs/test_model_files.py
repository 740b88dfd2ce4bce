"""The bad-input catalogue for model files: hostile or damaged files, each a ModelFileError with a clear message.

Every case starts from a real saved model (a regressor, a classifier with text labels, a regressor saved by
``moekit fit`` with its column metadata) and changes one thing, as a damaged disk, a careless edit or an
adversary would: the length prefix, the header's JSON, the tensors it declares, the configuration, the fitted
attributes, the command line's metadata. Where an edit leaves the checksum valid the file is re-signed, so the
check under test is the one that must catch it (an adversary can always recompute the checksum).
Issue 16, adversary item 10, lists the cases found before: deep nesting, ``__class__``, string-array shapes
``[-1, -1]``, a 2 GB file read before its prefix is checked, ``n_experts=3e7`` allocated before the shape check,
tampered ``task``/``targets`` giving "internal error" in ``moekit predict``.
"""

import json
import resource
import struct
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import moekit
from moekit import HMEClassifier, HMERegressor, MoEClassifier, MoERegressor
from moekit.cli import main as cli_main
from moekit.io import ModelFileError, _checksum, load, read_info

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# ------------------------------------------------------------------ files and edits
def _parts(blob: bytes):
    """(safetensors header dict, tensor data bytes) of a model file's bytes."""
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _pack(header, data: bytes) -> bytes:
    """A safetensors file: 8-byte little-endian length, header (a dict or raw bytes), data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _tensors(header, data):
    out = {}
    codes = {"F64": torch.float64, "F32": torch.float32, "I64": torch.int64, "U8": torch.uint8, "BOOL": torch.bool}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:e]), dtype=codes[v["dtype"]]) if e > b else torch.zeros(0, dtype=codes[v["dtype"]])
        out[k] = t.reshape(v["shape"])
    return out


def _signed(blob, edit_config=None, edit_header=None, add=None, config_text=None):
    """Edit the configuration (a dict) or the whole header, add tensors, and re-sign (a valid checksum)."""
    from safetensors.torch import save as st_save

    header, data = _parts(blob)
    meta = header["__metadata__"]
    tensors = _tensors(header, data)
    tensors.update(add or {})
    cfg = json.loads(meta["config"])
    if edit_config:
        edit_config(cfg)
    meta["config"] = config_text(meta["config"]) if config_text else json.dumps(cfg)
    meta["checksum"] = _checksum(meta["config"], tensors)
    blob = st_save(tensors, metadata=meta)
    if edit_header:
        header, data = _parts(blob)
        data = edit_header(header, data)
        blob = _pack(header, data)
    return blob


def _fitted(cfg, key, value):
    cfg["fitted"][key] = value


def _set_cli(**changes):
    def edit(cfg):
        cli = cfg["metadata"]["__dict__"]["cli"]["__dict__"]
        for k, v in changes.items():
            if v is _DELETE:
                del cli[k]
            else:
                cli[k] = v
    return edit


_DELETE = object()


def _strarray(flat, shape, kind="U"):
    return {"__strarray__": flat, "shape": shape, "kind": kind}


def _nested(depth, inner="1"):
    return "[" * depth + inner + "]" * depth


# ------------------------------------------------------------------ real models
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 2))
    y = np.where(X[:, 0] > 0, 1 + X[:, 1], -1) + 0.1 * rng.normal(size=80)
    labels = np.array(["low", "high"])[(X[:, 0] > 0).astype(int)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MoERegressor(n_experts=2, max_iter=10, random_state=0).fit(X, y).save(folder / "reg.moekit")
        MoEClassifier(n_experts=2, max_iter=10, random_state=0).fit(X, labels).save(folder / "clf.moekit")
        HMERegressor(depth=2, branching=2, max_iter=5, random_state=0).fit(X, y).save(folder / "hme.moekit")
    frame = pd.DataFrame({"x": X[:, 0], "g": np.array(["a", "b", "c"])[rng.integers(0, 3, 80)]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MoERegressor(n_experts=2, max_iter=10, random_state=0).fit(frame, y).save(folder / "frame.moekit")
    table = pd.DataFrame({"x": X[:, 0], "g": np.array(["a", "b", "c"])[rng.integers(0, 3, 80)], "y": y})
    table.to_csv(folder / "train.csv", index=False)
    assert cli_main(["fit", str(folder / "train.csv"), "--target", "y", "-o", str(folder / "cli.moekit"),
                     "--quiet", "--max-iter", "10"]) == 0
    return {k: (folder / f"{k}.moekit").read_bytes() for k in ("reg", "clf", "cli", "frame", "hme")} | {"folder": folder}


def _cases():
    """(id, base model, make(blob) -> bytes, message pattern)."""
    c = []

    def add(name, base, make, pattern):
        c.append(pytest.param(base, make, pattern, id=name))

    # --- the length prefix and the header's bytes
    add("empty", "reg", lambda b: b"", r"empty or truncated")
    add("five-bytes", "reg", lambda b: b[:5], r"5 bytes: empty or truncated")
    add("prefix-zero", "reg", lambda b: struct.pack("<Q", 0) + b[8:], r"does not start with a safetensors header")
    add("prefix-huge", "reg", lambda b: struct.pack("<Q", 2**63) + b[8:], r"declares a \d+-byte header; moekit headers are under")
    add("prefix-2GB", "reg", lambda b: struct.pack("<Q", 2**31) + b[8:], r"declares a 2147483648-byte header")
    add("prefix-past-end", "reg", lambda b: struct.pack("<Q", len(b)) + b[8:], r"is truncated: its header needs")
    add("prefix-short", "reg", lambda b: struct.pack("<Q", struct.unpack("<Q", b[:8])[0] - 7) + b[8:],
        r"not valid JSON|tensors need|overlap")
    for keep in (0.1, 0.5, 0.9, 0.999):
        add(f"truncated-{keep}", "reg", lambda b, k=keep: b[: int(len(b) * k)], r"truncated")
    add("header-only", "reg", lambda b: b[: 8 + struct.unpack("<Q", b[:8])[0]], r"truncated or damaged: tensor .* beyond the file's 0 data bytes")
    add("extra-bytes", "reg", lambda b: b + b"\0" * 16, r"tensors need \d+ data bytes but the file holds")
    add("pickle", "reg", lambda b: b"\x80\x04\x95" + b"\0" * 40, r"does not start with a safetensors header; .*never hold pickle")
    add("zip", "reg", lambda b: b"PK\x03\x04" + b"\0" * 40, r"does not start with a safetensors header")
    add("csv", "reg", lambda b: b"x,y\n1,2\n3,4\n", r"is not a moekit model file")
    add("non-utf8-header", "reg", lambda b: b[:9] + b"\xff\xfe" + b[11:], r"its header is not UTF-8 text")
    add("header-not-json", "reg", lambda b: b[:9] + b"}}" + b[11:], r"its header is not valid JSON")
    add("header-nested-100000", "reg", lambda b: _pack(("{\"a\":" + _nested(100_000) + "}").encode(), b""),
        r"its header nests 100001 levels deep; moekit writes at most 256")
    add("header-nested-300", "reg", lambda b: _pack(("{\"a\":" + _nested(300) + "}").encode(), b""), r"nests 301 levels")
    add("header-duplicate-key", "reg",
        lambda b: _pack(b"{\"__metadata__\":{\"format\":\"x\"},\"__metadata__\":{\"format\":\"moekit-model\"}}", b""),
        r"its header sets the key '__metadata__' twice")
    add("header-nan-literal", "reg", lambda b: _pack(b"{\"a\": NaN}", b""), r"its header holds NaN, which is not JSON")
    add("header-huge-int", "reg", lambda b: _pack(("{\"a\": " + "9" * 5000 + "}").encode(), b""), r"not valid JSON")
    add("header-not-dict", "reg", lambda b: _pack(b"[1, 2]", b""), r"does not start with a safetensors header|without moekit's header")
    add("foreign-safetensors", "reg", lambda b: _pack({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8),
        r"a safetensors file without moekit's header")

    def meta_edit(**kv):
        def make(b):
            h, d = _parts(b)
            h["__metadata__"].update(kv)
            return _pack(h, d)
        return make

    add("format-version-future", "reg", meta_edit(format_version="99"), r"format version 99, newer .* upgrade moekit")
    add("format-version-text", "reg", meta_edit(format_version="one"), r"bad format version 'one'")
    add("format-version-huge", "reg", meta_edit(format_version="9" * 5000), r"bad format version")
    add("format-version-zero", "reg", meta_edit(format_version="0"), r"bad format version 0")
    add("header-unknown-field", "reg", meta_edit(__class__="os.system"), r"unexpected header field\(s\) \['__class__'\]")
    add("header-field-not-string", "reg", meta_edit(checksum=12), r"header fields must be strings")
    add("checksum-wrong", "reg", meta_edit(checksum="0" * 64), r"checksum does not match its contents")
    add("config-missing", "reg", lambda b: _pack({"__metadata__": {"format": "moekit-model", "format_version": "1"}}, b""),
        r"no configuration in its header")

    # --- the tensors the header declares
    def tensor_edit(fn):
        def make(b):
            h, d = _parts(b)
            name = min(k for k in h if k.startswith("model."))
            d2 = fn(h[name], d)
            return _pack(h, d if d2 is None else d2)
        return make

    add("tensor-dtype-unknown", "reg", tensor_edit(lambda t, d: t.update(dtype="F8")), r"has dtype 'F8'; moekit files hold")
    add("tensor-dtype-object", "reg", tensor_edit(lambda t, d: t.update(dtype="O")), r"has dtype 'O'")
    add("tensor-shape-negative", "reg", tensor_edit(lambda t, d: t.update(shape=[-1, -1])), r"bad array shape \[-1, -1\]")
    add("tensor-shape-huge", "reg", tensor_edit(lambda t, d: t.update(shape=[10**12, 10**12])),
        r"declares shape \[1000000000000, 1000000000000\] of F64 .* but stores \d+ bytes")
    add("tensor-shape-text", "reg", tensor_edit(lambda t, d: t.update(shape="2,3")), r"bad array shape")
    add("tensor-shape-float", "reg", tensor_edit(lambda t, d: t.update(shape=[2.0, 3.0])), r"bad array shape")
    add("tensor-shape-bool", "reg", tensor_edit(lambda t, d: t.update(shape=[True])), r"bad array shape")
    add("tensor-shape-deep", "reg", tensor_edit(lambda t, d: t.update(shape=[1] * 40)), r"bad array shape")
    add("tensor-count-lie", "reg", tensor_edit(lambda t, d: t.update(shape=[t["shape"][0] + 1] + t["shape"][1:])),
        r"declares shape .* but stores \d+ bytes")
    add("tensor-dtype-lie", "reg", tensor_edit(lambda t, d: t.update(dtype="F32")), r"declares shape .* of F32 .* but stores")
    add("tensor-offsets-outside", "reg", tensor_edit(lambda t, d: t.update(data_offsets=[10**9, 10**9 + 8])),
        r"truncated or damaged: tensor .* has data offsets \[1000000000, 1000000008\] beyond the file")
    add("tensor-offsets-reversed", "reg", tensor_edit(lambda t, d: t.update(data_offsets=t["data_offsets"][::-1])),
        r"bad data offsets .* \(expected \[begin, end\]")
    add("tensor-offsets-negative", "reg", tensor_edit(lambda t, d: t.update(data_offsets=[-8, 0])), r"bad data offsets \[-8, 0\]")
    def overlap(b):
        h, d = _parts(b)
        last = max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
        b0, e0 = h[last]["data_offsets"]
        h[last]["data_offsets"] = [0, e0 - b0]  # on top of the first tensor, leaving its own bytes unclaimed
        return _pack(h, d)

    add("tensor-overlap", "reg", overlap, r"overlap or leave gaps")
    add("tensor-extra-key", "reg", tensor_edit(lambda t, d: t.update(__class__="x")), r"not described by dtype, shape and data_offsets")
    add("tensor-not-dict", "reg", lambda b: _pack({**_parts(b)[0], "w": [1, 2]}, _parts(b)[1]), r"not described by dtype")
    add("tensor-undeclared", "reg", lambda b: _signed(b, add={"model.extra": torch.zeros(2, dtype=torch.float64)}),
        r"its configuration and its stored tensors differ in \['extra'\]")

    def declare(fn):
        def edit(cfg):
            k = min(cfg["state_dict"])
            cfg["state_dict"][k] = fn(cfg["state_dict"][k])
        return edit

    add("declared-shape-lie", "reg", lambda b: _signed(b, declare(lambda d: [d[0], [30_000_000, 3]])),
        r"is declared \['float64', \[30000000, 3\]\] but stored as")
    add("declared-dtype-lie", "reg", lambda b: _signed(b, declare(lambda d: ["float32", d[1]])), r"is declared \['float32'")
    add("declared-missing", "reg", lambda b: _signed(b, lambda cfg: cfg["state_dict"].pop(min(cfg["state_dict"]))),
        r"its configuration and its stored tensors differ")

    # --- the configuration's JSON
    add("config-nested-100000", "reg", lambda b: _signed(b, config_text=lambda s: s[:-1] + ", \"x\": " + _nested(100_000) + "}"),
        r"its configuration nests 100001 levels deep")
    add("config-duplicate-key", "reg", lambda b: _signed(b, config_text=lambda s: s[:-1] + ", \"estimator\": \"MoERegressor\"}"),
        r"its configuration sets the key 'estimator' twice")
    add("config-infinity", "reg", lambda b: _signed(b, config_text=lambda s: s[:-1] + ", \"x\": Infinity}"), r"holds Infinity")
    add("config-not-json", "reg", lambda b: _signed(b, config_text=lambda s: s[:-5]), r"its configuration is not valid JSON")
    add("config-unknown-field", "reg", lambda b: _signed(b, lambda cfg: cfg.update(__class__="os.system")),
        r"unexpected configuration field\(s\) \['__class__'\]")
    add("config-wrong-format", "reg", lambda b: _signed(b, lambda cfg: cfg.update(format="pickle")), r"not a moekit configuration")
    add("config-params-list", "reg", lambda b: _signed(b, lambda cfg: cfg.update(params=[])), r"'params' is missing")
    add("config-structure-list", "reg", lambda b: _signed(b, lambda cfg: cfg.update(structure=[1])), r"its 'structure' is not a dictionary")
    add("config-metadata-plain-dict", "reg", lambda b: _signed(b, lambda cfg: cfg.update(metadata={"cli": 1})),
        r"its 'metadata' is not a dictionary")
    add("unknown-estimator", "reg", lambda b: _signed(b, lambda cfg: cfg.update(estimator="os.system")),
        r"holds a 'os.system' model, which this moekit cannot rebuild")
    add("unknown-parameter", "reg", lambda b: _signed(b, lambda cfg: cfg["params"].update(__class__="x")),
        r"sets parameters \['__class__'\] that MoERegressor does not have")
    add("tree-class-changed", "reg", lambda b: _signed(b, lambda cfg: cfg["tree"][1].update({"class": "os.system"})),
        r"the model rebuilt from its parameters differs from the stored one")
    add("tree-not-dicts", "reg", lambda b: _signed(b, lambda cfg: cfg.update(tree=[1, 2])), r"bad module tree")

    # --- encoded values
    add("fitted-dunder-class", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "__class__", "os.system")),
        r"fitted attribute '__class__' is not an attribute name moekit writes")
    add("fitted-method", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "predict", 1)),
        r"fitted attribute 'predict' would replace the MoERegressor method")
    add("fitted-is-parameter", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "n_experts", 30_000_000)),
        r"fitted attribute 'n_experts' is a parameter")
    add("fitted-model", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "model_", 1)), r"'model_' is a parameter or the model")
    add("fitted-bad-name", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "a b", 1)), r"'a b' is not an attribute name")
    add("tag-unknown", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "n_iter_", {"__reduce__": ["os", "system"]})),
        r"unexpected value at attribute n_iter_")
    add("tag-two-tags", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "n_iter_", {"__tuple__": [], "__dict__": {}})),
        r"unexpected value at attribute n_iter_")
    add("tag-extra-key", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "n_iter_", {"__tuple__": [], "__class__": "x"})),
        r"unexpected key\(s\) \['__class__'\] in the __tuple__ value at attribute n_iter_")
    add("tag-empty-dict", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "n_iter_", {})), r"unexpected value at attribute n_iter_")
    add("strarray-shape-negative", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", _strarray(["a"], [-1, -1]))),
        r"bad array shape \[-1, -1\] at attribute x_")
    add("strarray-shape-lie", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", _strarray(["a", "b"], [3]))),
        r"has 2 entries but its shape \[3\] needs 3")
    add("strarray-shape-huge", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", _strarray(["a"], [10**9, 10**9]))),
        r"has 1 entries but its shape")
    add("strarray-kind", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", _strarray(["a"], [1], kind="V"))),
        r"bad string array kind 'V'")
    add("strarray-nested", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", _strarray([["a"]], [1]))),
        r"bad string array at attribute x_")
    add("npscalar-overflow", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", {"__npscalar__": "|i1", "value": 1000})),
        r"1000 at attribute x_ does not fit a \|i1 scalar")
    add("npscalar-text", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", {"__npscalar__": "<f8", "value": "1"})),
        r"holds '1', not a number")
    add("npscalar-dtype", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", {"__npscalar__": "|O", "value": 1})),
        r"unsupported scalar type at attribute x_")
    add("float-tag-text", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", {"__float__": "__import__"})), r"bad float")
    add("dtype-tag-unknown", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", {"__dtype__": "object"})),
        r"unknown dtype 'object' at attribute x_")
    add("result-unknown", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", {"__result__": "Popen", "fields": {}})),
        r"unknown result type 'Popen'")
    add("tensor-reference-missing", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", {"__array__": "value.999"})),
        r"tensor 'value.999' referenced at attribute x_ is missing")
    add("bool-array-bytes", "reg",
        lambda b: _signed(b, lambda cfg: _fitted(cfg, "x_", {"__array__": "value.99"}),
                          add={"value.99": torch.tensor([0, 1], dtype=torch.bool)},
                          edit_header=lambda h, d: d[:h["value.99"]["data_offsets"][0]] + b"\x07"
                          + d[h["value.99"]["data_offsets"][0] + 1:]),
        r"bool tensor 'value.99' holds bytes other than 0 and 1")

    # --- sizes the parameters declare (n_experts=3e7 in a 4 KB file), and the model's numbers
    add("structure-n-experts-3e7", "reg",
        lambda b: _signed(b, lambda cfg: cfg["structure"]["__dict__"].update(n_experts=30_000_000)),
        r"needs more than \d+ bytes while its stored tensors justify at most \d+")
    def tree(spec):
        return lambda b: _signed(b, lambda cfg: cfg["structure"]["__dict__"].update(tree={"__dict__": spec}))

    leaf = {"__dict__": {"k": 4096, "children": "stacked", "gate": "SoftmaxGate"}}
    add("hme-tree-4096-by-4096", "hme", tree({"k": 4096, "children": [leaf] * 4096, "gate": "SoftmaxGate"}),
        r"needs more than \d+ bytes while its stored tensors justify at most")
    add("hme-tree-many-small-modules", "hme",
        tree({"k": 4096, "children": [{"__dict__": {"k": 512, "children": [0] * 512, "gate": "ConstantGate"}}] * 4096,
              "gate": "ConstantGate"}),
        r"more than \d+ tensor operations|needs more than \d+ bytes")
    add("n-features-3e7", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "n_features_in_", 30_000_000)),
        r"needs more than \d+ bytes|differs from the stored one|the model needs")
    add("n-features-zero", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "n_features_in_", 0)),
        r"n_features_in_ is 0, expected a positive integer")
    add("n-features-text", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "n_features_in_", "2")),
        r"n_features_in_ is '2', expected a positive integer")
    add("n-features-3", "reg", lambda b: _signed(b, lambda cfg: _fitted(cfg, "n_features_in_", 3)),
        r"tensor '.*' is torch.float64 .*, the model needs")
    add("feature-names-wrong-length", "reg",
        lambda b: _signed(b, lambda cfg: _fitted(cfg, "feature_names_in_", _strarray(["a"], [1], kind="O"))),
        r"feature_names_in_ must be 2 column names")
    add("feature-names-duplicate", "reg",
        lambda b: _signed(b, lambda cfg: _fitted(cfg, "feature_names_in_", _strarray(["a", "a"], [2], kind="O"))),
        r"feature_names_in_ names a column twice")
    add("dtype-bogus", "reg", lambda b: _signed(b, lambda cfg: cfg["params"].update(dtype="float8")),
        r"cannot rebuild the MoERegressor it describes")
    add("device-bogus", "reg", lambda b: _signed(b, lambda cfg: cfg["params"].update(device="bogus")), r"bad device 'bogus'")

    def poison(value):
        def make(b):
            h, d = _parts(b)
            name = min(k for k in h if k.startswith("model.") and h[k]["dtype"] == "F64")
            d = bytearray(d)
            d[h[name]["data_offsets"][0]:h[name]["data_offsets"][0] + 8] = struct.pack("<d", value)
            return _signed(_pack(h, bytes(d)))
        return make

    add("tensor-nan", "reg", poison(float("nan")), r"holds NaN or infinite values")
    add("tensor-inf", "reg", poison(float("inf")), r"holds NaN or infinite values")

    # --- classifiers: classes_
    add("classes-one", "clf", lambda b: _signed(b, lambda cfg: _fitted(cfg, "classes_", _strarray(["a"], [1]))),
        r"classes_ must be a list of two or more labels")
    add("classes-duplicate", "clf", lambda b: _signed(b, lambda cfg: _fitted(cfg, "classes_", _strarray(["a", "a"], [2]))),
        r"classes_ lists a class twice")
    add("classes-three", "clf", lambda b: _signed(b, lambda cfg: _fitted(cfg, "classes_", _strarray(["a", "b", "c"], [3]))),
        r"gives 2 class probabilities but classes_ lists 3 classes")
    add("classes-matrix", "clf", lambda b: _signed(b, lambda cfg: _fitted(cfg, "classes_", _strarray(["a", "b"], [1, 2]))),
        r"classes_ must be a list of two or more labels")

    # --- an estimator fitted on a DataFrame with a text column: its feature_encoding_
    def encoding(**changes):
        def edit(cfg):
            enc = cfg["fitted"]["feature_encoding_"]["__dict__"]
            for k, v in changes.items():
                enc[k] = v
        return lambda b: _signed(b, edit)

    add("encoding-levels-text", "frame", encoding(features=[{"__dict__": {"name": "x", "kind": "numeric"}},
                                                            {"__dict__": {"name": "g", "kind": "categorical", "levels": "abc"}}]),
        r"feature_encoding_.features\[1\].levels is 'abc', expected a list of distinct text levels")
    add("encoding-kind", "frame", encoding(features=[{"__dict__": {"name": "x", "kind": "date"}}]),
        r"feature_encoding_.features\[0\].kind is 'date'")
    add("encoding-names-differ", "frame", encoding(encoded_features=["x", "g[T.b]", "g[T.z]"]),
        r"feature_encoding_.encoded_features is .*, expected the names in feature_names_in_")
    add("encoding-count", "frame", encoding(encoded_features=["x"]), r"feature_encoding_.encoded_features is \['x'\], expected 3")
    add("encoding-extra-key", "frame", encoding(__class__="x"), r"feature_encoding_ is .*, expected a dictionary of features")
    add("encoding-not-dict", "frame", lambda b: _signed(b, lambda cfg: _fitted(cfg, "feature_encoding_", [1])),
        r"feature_encoding_ is \[1\], expected a dictionary")

    # --- the command line's metadata (moekit fit): schema and agreement with the model
    cli = [
        ("task-bogus", {"task": "bogus"}, r"cli.task is 'bogus', expected 'regression' or 'classification'"),
        ("task-classification", {"task": "classification"}, r"cli.targets|cli.task is 'classification', expected 'regression'"),
        ("task-missing", {"task": _DELETE}, r"cli.task is missing"),
        ("task-number", {"task": 1}, r"cli.task is 1"),
        ("targets-empty", {"targets": []}, r"cli.targets is \[\], expected a list of column names"),
        ("targets-two", {"targets": ["y", "z"]}, r"cli.targets is \['y', 'z'\], expected 1 column name\(s\), one per output"),
        ("targets-text", {"targets": "y"}, r"cli.targets is 'y', expected a list of column names"),
        ("targets-number", {"targets": [3]}, r"cli.targets is \[3\]"),
        ("targets-duplicate", {"targets": ["y", "y"]}, r"distinct column names"),
        ("targets-an-input", {"targets": ["x"]}, r"cli.targets is \['x'\], expected columns other than the input columns"),
        ("features-empty", {"features": []}, r"cli.features is \[\]"),
        ("features-kind", {"features": [{"__dict__": {"name": "x", "kind": "text"}}]}, r"cli.features\[0\].kind is 'text'"),
        ("features-name", {"features": [{"__dict__": {"name": 7, "kind": "numeric"}}]}, r"cli.features\[0\].name is 7"),
        ("features-not-dict", {"features": ["x"]}, r"cli.features\[0\] is 'x'"),
        ("features-levels", {"features": [{"__dict__": {"name": "g", "kind": "categorical", "levels": "abc"}}]},
         r"cli.features\[0\].levels is 'abc'"),
        ("features-duplicate", {"features": [{"__dict__": {"name": "x", "kind": "numeric"}}] * 2},
         r"cli.features is \['x', 'x'\], expected a list of distinct"),
        ("encoded-features-short", {"encoded_features": ["x"]}, r"cli.encoded_features is \['x'\], expected 3 column names"),
        ("encoded-features-number", {"encoded_features": 7}, r"cli.encoded_features is 7"),
        ("training-data-rows", {"training_data": {"__dict__": {"rows": "many"}}}, r"cli.training_data.rows is 'many'"),
        ("training-data-list", {"training_data": [1]}, r"cli.training_data is \[1\]"),
        ("training-data-min", {"training_data": {"__dict__": {"columns": {"__dict__": {"x": {"__dict__": {"kind": "numeric", "min": "0"}}}}}}},
         r"cli.training_data.columns\['x'\].min is '0', expected a number"),
        ("selection-scores", {"selection": {"__dict__": {"criterion": "bic", "chosen": 2, "scores": {"__dict__": {"two": 1.0}}}}},
         r"cli.selection.scores"),
        ("selection-text", {"selection": "bic"}, r"cli.selection is 'bic'"),
        ("fit-seconds-text", {"fit_seconds": "1s"}, r"cli.fit_seconds is '1s', expected a number"),
        ("command-list", {"command": ["rm"]}, r"cli.command is \['rm'\], expected a string"),
    ]
    for name, changes, pattern in cli:
        add(f"cli-{name}", "cli", lambda b, ch=changes: _signed(b, _set_cli(**ch)), pattern)
    add("cli-not-dict", "cli", lambda b: _signed(b, lambda cfg: cfg["metadata"]["__dict__"].update(cli=[1])),
        r"metadata field cli. is \[1\], expected a dictionary")
    return c


CASES = _cases()


@pytest.mark.parametrize(("base", "make", "pattern"), CASES)
def test_hostile_model_file(models, base, make, pattern, tmp_path):
    path = tmp_path / "bad.moekit"
    path.write_bytes(make(models[base]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ModelFileError, match=pattern):
            moekit.load(path)


def test_the_base_files_load(models):
    for base in ("reg", "clf", "cli", "frame", "hme"):
        path = models["folder"] / f"{base}.moekit"
        assert isinstance(load(path), (MoERegressor, MoEClassifier, HMERegressor, HMEClassifier))
        read_info(path)


def test_a_2gb_file_is_not_read_before_its_prefix_is_checked(models, tmp_path):
    """A sparse 2 GB file: the prefix and the data size are checked from the file's size, nothing read whole."""
    for name, head in (("bad-prefix", struct.pack("<Q", 2**40) + b"{"), ("good-header", models["reg"])):
        path = tmp_path / f"{name}.moekit"
        with open(path, "wb") as f:
            f.write(head)
            f.truncate(2 * 1024**3)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        with pytest.raises(ModelFileError, match=r"declares a \d+-byte header|tensors need \d+ data bytes but the file holds"):
            load(path)
        with pytest.raises(ModelFileError):
            read_info(path)
        assert time.perf_counter() - t0 < 5
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: no 2 GB read


def test_a_small_file_declaring_30_million_experts_allocates_nothing_large(models, tmp_path):
    path = tmp_path / "big.moekit"
    path.write_bytes(_signed(models["reg"], lambda cfg: cfg["structure"]["__dict__"].update(n_experts=30_000_000)))
    assert path.stat().st_size < 16 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelFileError, match=r"justify at most \d+; a parameter, fitted attribute or structure entry"):
        load(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300 * 1024  # KiB


def test_tampered_metadata_is_a_one_line_error_in_moekit_predict(models, tmp_path, capsys):
    """'moekit predict' on a file with a tampered task or targets: a one-line error (exit 1), not 'internal error' (3)."""
    for i, changes in enumerate(({"task": "bogus"}, {"targets": ["y", "z"]}, {"task": "classification"})):
        path = tmp_path / f"t{i}.moekit"
        path.write_bytes(_signed(models["cli"], _set_cli(**changes)))
        code = cli_main(["predict", str(path), str(models["folder"] / "train.csv"), "-o", str(tmp_path / "p.csv"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 1, err
        assert err.count("\n") == 1 and "moekit: error:" in err and "metadata field cli." in err
        assert not (tmp_path / "p.csv").exists()


def test_read_info_checks_the_header_too(models, tmp_path):
    path = tmp_path / "bad.moekit"
    path.write_bytes(_signed(models["cli"], _set_cli(task="bogus")))
    with pytest.raises(ModelFileError, match=r"cli.task is 'bogus'"):
        read_info(path)
    path.write_bytes(_signed(models["reg"], lambda cfg: _fitted(cfg, "x_", _strarray(["a"], [-1, -1]))))
    with pytest.raises(ModelFileError, match=r"bad array shape \[-1, -1\]"):
        read_info(path)


def test_save_refuses_metadata_the_command_line_could_not_read(models, tmp_path):
    est = load(models["folder"] / "reg.moekit")
    with pytest.raises(ModelFileError, match=r"cannot save this MoERegressor: metadata field cli.encoded_features is missing"):
        moekit.io.save(est, tmp_path / "m.moekit", metadata={"cli": {"features": []}})
    assert not (tmp_path / "m.moekit").exists()
