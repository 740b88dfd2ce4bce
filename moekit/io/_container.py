"""The container of a model file, read within bounds: a safetensors file whose header is checked first.

A model file is an 8-byte little-endian header length, a JSON header and the tensors' bytes. Nothing a
file declares is trusted before it is checked against the file itself: the length against the file's
size and :data:`MAX_HEADER` before the header is read; the header's JSON against :data:`MAX_DEPTH`
(nesting), duplicate keys and non-JSON literals before it is parsed; every tensor's dtype, shape and
byte range against the bytes the file holds before any is read. The tensors are then read one by one,
so that what is allocated is never more than the file's own size.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass

import numpy as np
import torch

from .. import __version__
from ._errors import ModelFileError, short

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_DEPTH", "MAX_HEADER", "MAX_NDIM", "NUMPY_SAFE", "ST_DTYPES", "Header",
           "Stored", "check_shape", "load_json", "read_header", "read_tensors", "tensor_index"]

FORMAT = "moekit-model"
FORMAT_VERSION = 1
MAX_NDIM = 32  # numpy's own limit is 64; no moekit array has more than a handful of axes
# Bounds on what a file may declare, checked before anything it declares is read, allocated or built.
MAX_HEADER = 16 * 1024 * 1024  # a moekit header is kilobytes (a wide table's column names: a few hundred)
MAX_DEPTH = 256  # JSON nesting; a tree of the deepest HME moekit builds (64 levels) nests about 200
_HEADER_KEYS = {"format", "format_version", "config", "checksum"}
# safetensors dtype codes -> (little-endian numpy dtype of the stored bytes, torch dtype)
ST_DTYPES = {
    "F64": ("<f8", torch.float64), "F32": ("<f4", torch.float32), "F16": ("<f2", torch.float16),
    "BF16": ("<u2", torch.bfloat16), "I64": ("<i8", torch.int64), "I32": ("<i4", torch.int32),
    "I16": ("<i2", torch.int16), "I8": ("|i1", torch.int8), "U8": ("|u1", torch.uint8), "BOOL": ("|u1", torch.bool),
    "U16": ("<u2", torch.uint16), "U32": ("<u4", torch.uint32), "U64": ("<u8", torch.uint64),
}
NUMPY_SAFE = {t for code, (_, t) in ST_DTYPES.items() if code != "BF16"}
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')


@dataclass(frozen=True)
class Stored:
    """One tensor of the file, as its header declares it (nothing read yet)."""

    dtype: str  # safetensors code, e.g. "F64"
    shape: tuple
    begin: int  # offset of its bytes after the header
    nbytes: int


@dataclass(frozen=True)
class Header:
    path: str
    size: int  # of the file, in bytes
    data_start: int  # offset of the first tensor byte
    meta: dict  # the "__metadata__" of the safetensors header
    index: dict  # tensor name -> Stored



def check_shape(v, where: str, problem: str = "damaged model file") -> tuple:
    """A stored array shape: a list of at most MAX_NDIM non-negative integers."""
    if not (isinstance(v, list) and len(v) <= MAX_NDIM
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v)):
        raise ModelFileError(
            f"{problem}: bad array shape {short(v)} at {where} "
            f"(expected a list of at most {MAX_NDIM} non-negative integers)"
        )
    return tuple(v)


def load_json(raw, what: str, path: str):
    """Decode bounded JSON: at most MAX_DEPTH deep, no duplicate keys, no NaN/Infinity literals (moekit writes none)."""
    text = raw
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelFileError(f"'{path}' is not a moekit model file ({what} is not UTF-8 text: byte {e.start})") from None
    body = _STRING.sub(b"", text.encode("utf-8") if isinstance(raw, str) else raw)
    codes = np.frombuffer(body, dtype=np.uint8)
    steps = np.zeros(len(codes), dtype=np.int32)
    steps[(codes == ord("{")) | (codes == ord("["))] = 1
    steps[(codes == ord("}")) | (codes == ord("]"))] = -1
    depth = int(np.cumsum(steps).max()) if len(steps) else 0
    if depth > MAX_DEPTH:
        raise ModelFileError(
            f"damaged model file '{path}': {what} nests {depth} levels deep; moekit writes at most {MAX_DEPTH}"
        )

    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise ModelFileError(f"damaged model file '{path}': {what} sets the key {short(k)} twice")
            out[k] = v
        return out

    def constant(name):
        raise ModelFileError(f"damaged model file '{path}': {what} holds {name}, which is not JSON (moekit never writes it)")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, ModelFileError):
            raise
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ModelFileError(f"'{path}' is not a moekit model file ({what} is not valid JSON: {reason})") from None


def read_header(path) -> Header:
    """The safetensors header of ``path`` and its moekit metadata; the tensor bytes are not read.

    The 8-byte length prefix is checked against the file's size and ``MAX_HEADER`` before the
    header is read, and every tensor the header declares must lie inside the file, end to end.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file '{path}' does not exist; check the path")
    if os.path.isdir(path):
        raise ModelFileError(f"'{path}' is a folder, not a moekit model file")
    not_ours = f"'{path}' is not a moekit model file"
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ModelFileError(f"{not_ours} ({len(prefix)} bytes: empty or truncated)")
        (n,) = struct.unpack("<Q", prefix)
        first = f.read(1)
        if n < 2 or first != b"{":
            raise ModelFileError(f"{not_ours} (it does not start with a safetensors header; moekit files never hold pickle)")
        if n > MAX_HEADER:
            raise ModelFileError(
                f"{not_ours} (its 8-byte prefix declares a {n}-byte header; moekit headers are under {MAX_HEADER} bytes)"
            )
        if 8 + n > size:
            raise ModelFileError(f"'{path}' is truncated: its header needs {8 + n} bytes but the file has {size}")
        raw = first + f.read(n - 1)
    if len(raw) < n:
        raise ModelFileError(f"'{path}' is truncated: its header needs {8 + n} bytes but the file has {8 + len(raw)}")
    header = load_json(raw, "its header", path)
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{not_ours} (a safetensors file without moekit's header; was it written by another tool?)")
    version = meta.get("format_version")
    try:
        version = int(version) if isinstance(version, str) and len(version) < 10 else int("x")
    except (TypeError, ValueError):
        raise ModelFileError(f"damaged model file '{path}': bad format version {short(version)}") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"'{path}' uses model-file format version {version}, newer than this moekit {__version__} reads "
            f"(up to {FORMAT_VERSION}); upgrade moekit to load it"
        )
    if version < 1:
        raise ModelFileError(f"damaged model file '{path}': bad format version {version}")
    extra = sorted(set(meta) - _HEADER_KEYS)
    if extra:
        raise ModelFileError(f"damaged model file '{path}': unexpected header field(s) {extra[:3]}")
    if not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(f"damaged model file '{path}': its header fields must be strings")
    index = tensor_index(path, header, size - 8 - n)
    return Header(path, size, 8 + n, meta, index)


def tensor_index(path, header: dict, data_size: int) -> dict:
    """Check the tensors a safetensors header declares: known dtypes, shapes, byte counts, tiling the data exactly."""
    index = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        where = f"damaged model file '{path}': tensor {short(name)}"
        if not (isinstance(spec, dict) and set(spec) == {"dtype", "shape", "data_offsets"}):
            raise ModelFileError(f"{where} is not described by dtype, shape and data_offsets")
        code = spec["dtype"]
        if not isinstance(code, str) or code not in ST_DTYPES:
            raise ModelFileError(f"{where} has dtype {short(code)}; moekit files hold {', '.join(ST_DTYPES)}")
        shape = check_shape(spec["shape"], f"tensor {short(name)}", f"damaged model file '{path}'")
        offs = spec["data_offsets"]
        if not (isinstance(offs, list) and len(offs) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs) and offs[0] <= offs[1]):
            raise ModelFileError(f"{where} has bad data offsets {short(offs)} (expected [begin, end], 0 <= begin <= end)")
        if offs[1] > data_size:
            raise ModelFileError(
                f"'{path}' is truncated or damaged: tensor {short(name)} has data offsets {offs} beyond the file's "
                f"{data_size} data bytes"
            )
        need = math.prod(shape) * np.dtype(ST_DTYPES[code][0]).itemsize
        if offs[1] - offs[0] != need:
            raise ModelFileError(
                f"{where} declares shape {list(shape)} of {code} ({need} bytes) but stores {offs[1] - offs[0]} bytes"
            )
        index[name] = Stored(code, shape, offs[0], need)
    end = 0
    for t in sorted(index.values(), key=lambda t: (t.begin, t.nbytes)):
        if t.begin != end:
            raise ModelFileError(f"damaged model file '{path}': its tensors overlap or leave gaps in its data")
        end = t.begin + t.nbytes
    if end != data_size:
        raise ModelFileError(
            f"'{path}' is truncated or damaged: its tensors need {end} data bytes but the file holds {data_size}"
        )
    return index


def read_tensors(header: Header) -> dict:
    """The tensors' values (read one by one; together they are the rest of the file, no more)."""
    out = {}
    with open(header.path, "rb") as f:
        for name, t in header.index.items():
            f.seek(header.data_start + t.begin)
            buf = f.read(t.nbytes)
            if len(buf) != t.nbytes:
                raise ModelFileError(f"'{header.path}' is truncated: tensor {short(name)} is cut short")
            np_code = ST_DTYPES[t.dtype][0]
            arr = np.frombuffer(buf, dtype=np_code).astype(np.dtype(np_code).newbyteorder("="), copy=True)
            if t.dtype == "BOOL":
                if arr.size and arr.max() > 1:
                    raise ModelFileError(f"damaged model file '{header.path}': bool tensor {short(name)} holds bytes other than 0 and 1")
                out[name] = torch.from_numpy(arr.astype(bool)).reshape(t.shape)
            elif t.dtype == "BF16":
                out[name] = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16).reshape(t.shape)
            else:
                out[name] = torch.from_numpy(arr).reshape(t.shape)
    return out
