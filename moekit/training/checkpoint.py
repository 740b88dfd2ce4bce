"""EM checkpoints: the model and the EM state after every iteration, written atomically, read back to resume.

A checkpoint is a ``torch.save`` file of plain values and tensors only (it is
read with ``weights_only=True``, so loading one runs no code): the model's
parameters and buffers, the structure left by pruning (which experts of every
node survive), the log-likelihood history, the iteration count and what was
pruned.  It is written to a temporary file in the same folder, then renamed
over the old one, so a fit killed at any moment leaves either the previous
checkpoint or the new one, never a partial file.  Resuming loads the
parameters into a model built as the original was, replays the pruning, and
continues the same deterministic iterations: the result equals an
uninterrupted fit.
"""

from __future__ import annotations

import os
import tempfile

import torch

__all__ = ["load_em_checkpoint", "restore_structure", "save_em_checkpoint", "structure_signature"]

FORMAT = "moekit-em-checkpoint"
VERSION = 1


def structure_signature(model) -> list:
    """The model's tree of experts as plain values: a mixture is ``["mixture", [child, ...]]``, stacked experts
    ``["stacked", class name, K]``, any other expert its class name.

    Examples
    --------
    >>> from moekit import MixtureOfExperts, SoftmaxGate, LinearGaussianExpert
    >>> structure_signature(MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2)))
    ['mixture', [['stacked', 'LinearGaussianExpert', 2]]]
    """
    if model.is_stacked:
        return ["mixture", [["stacked", type(model.experts).__name__, int(model.n_experts)]]]
    kids = []
    for e in model.experts:
        kids.append(structure_signature(e) if hasattr(e, "is_stacked") and hasattr(e, "gate") else type(e).__name__)
    return ["mixture", kids]


def _is_mixture(e) -> bool:
    return hasattr(e, "is_stacked") and hasattr(e, "gate")


def restore_structure(model, signature: list) -> None:
    """Prune a freshly built ``model`` (in place) to the structure ``signature`` of a checkpoint.

    Children are matched in order (pruning keeps order): each wanted child is
    the next one of the same kind.  A model that cannot be pruned to the
    signature was built differently: ValueError.
    """
    if not (isinstance(signature, list) and len(signature) == 2 and signature[0] == "mixture"):
        raise ValueError(_mismatch(model, signature))
    want = signature[1]
    if model.is_stacked:
        if not (len(want) == 1 and isinstance(want[0], list) and len(want[0]) == 3 and want[0][0] == "stacked"):
            raise ValueError(_mismatch(model, signature))
        kind, name, k = want[0]
        if name != type(model.experts).__name__ or k > model.n_experts:
            raise ValueError(_mismatch(model, signature))
        if k < model.n_experts:
            model.prune(list(range(k)))
        return
    keep, j = [], 0
    for w in want:
        while j < model.n_experts:
            e = model.experts[j]
            same = ((_is_mixture(e) and isinstance(w, list) and w[:1] == ["mixture"])
                    or (not _is_mixture(e) and w == type(e).__name__))
            j += 1
            if same:
                keep.append(j - 1)
                break
        else:
            raise ValueError(_mismatch(model, signature))
    if len(keep) < model.n_experts:
        model.prune(keep)
    for e, w in zip(model.experts, want):
        if _is_mixture(e):
            restore_structure(e, w)


def _mismatch(model, signature) -> str:
    return (f"the checkpoint holds a model of structure {signature}, which this model ({structure_signature(model)}) "
            "cannot be pruned to: resume with the model built as for the checkpointed fit")


def save_em_checkpoint(path, model, state: dict) -> None:
    """Write ``model`` and the EM ``state`` (plain values) to ``path`` atomically (temporary file, then rename)."""
    path = os.fspath(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "signature": structure_signature(model),
        "tensors": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "state": state,
    }
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".moekit-checkpoint-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_em_checkpoint(path, model) -> dict:
    """Read a checkpoint: prune ``model`` to its structure, load its tensors, and return its EM state.

    Raises
    ------
    ValueError
        The file is not an EM checkpoint, or was written for a different model.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path!r} does not exist: nothing to resume (start the fit without resume, "
                         "or point checkpoint= at the file an interrupted fit wrote)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign or damaged file
        raise ValueError(f"checkpoint {path!r} could not be read ({type(err).__name__}: {err}); it is not an EM "
                         "checkpoint written by moekit") from None
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        raise ValueError(f"{path!r} is not an EM checkpoint written by moekit")
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint {path!r} has version {payload.get('version')!r}; this moekit reads version {VERSION}")
    restore_structure(model, payload["signature"])
    own = model.state_dict()
    tensors = payload["tensors"]
    if set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
        raise ValueError(_mismatch(model, payload["signature"]))
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(tensors[k].to(device=t.device, dtype=t.dtype))
    return payload["state"]
