"""A model's training inputs, checked: NaN coordinates of y pass where the model's experts marginalise them."""

from __future__ import annotations

import numpy as np
import torch

from .._validation import check_fit_inputs, model_device, model_dtype

__all__ = ["check_model_inputs", "expert_families"]


def expert_families(model) -> str:
    """The names of the expert classes of ``model`` (a mixture, or an expert), for messages.

    Examples
    --------
    >>> from moekit import MixtureOfExperts, SoftmaxGate, LinearGaussianExpert
    >>> expert_families(MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2)))
    'LinearGaussianExpert'
    """
    experts = getattr(model, "experts", None)
    if experts is None:
        return type(model).__name__
    if isinstance(experts, torch.nn.ModuleList):
        return ", ".join(dict.fromkeys(expert_families(e) for e in experts))
    return type(experts).__name__


def _nan_mask(y) -> torch.Tensor | None:
    """Where a floating array-like y is NaN (on the CPU), or None when it has no NaN or is not floating."""
    if isinstance(y, torch.Tensor):
        t = y.detach()
    else:
        arr = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
        if arr.dtype.kind != "f":
            return None
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if not t.is_floating_point():
        return None
    nan = torch.isnan(t)
    return nan.cpu() if bool(nan.any()) else None


def check_model_inputs(model, x, y, sample_weight, *, every_column_seen: bool = True):
    """:func:`~moekit._validation.check_fit_inputs` in ``model``'s dtype and on its device, NaN targets allowed where modelled.

    A model whose experts marginalise missing coordinates of a vector y
    (``model.accepts_missing_y``: linear-Gaussian experts with ``n_outputs``
    set) gets y with its NaN entries back (checked on the others; infinities
    are refused as always); every column of y must be observed on some row
    with positive weight.  Any other model given NaN in y gets a
    ``ValueError`` naming its experts (unless the caller allowed incomplete
    targets, e.g. censored ones, with
    ``moekit._validation.incomplete_targets``).  The caller's arrays are not
    modified.  ``every_column_seen=False`` skips the rule that every column be
    observed (a batch of a source: the rule holds for the whole data, which
    :class:`~moekit.training.passes.CheckedSource` checks over a pass).

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,) or None -> the same, as tensors.

    Examples
    --------
    >>> import torch
    >>> from moekit import MixtureOfExperts, SoftmaxGate, LinearGaussianExpert
    >>> moe = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_outputs=2, n_experts=2))
    >>> y = torch.tensor([[1.0, float("nan")], [2.0, 3.0]], dtype=torch.float64)
    >>> _, yy, _ = check_model_inputs(moe, torch.zeros(2, 1, dtype=torch.float64), y, None)
    >>> yy.isnan().tolist()
    [[False, True], [False, False]]
    """
    dtype, device = model_dtype(model), model_device(model)
    nan = _nan_mask(y)
    if nan is None:
        return check_fit_inputs(x, y, sample_weight, dtype, device)
    if not getattr(model, "accepts_missing_y", False) or nan.dim() != 2:
        try:  # NaN passes only where the caller said its experts read it (incomplete_targets, censored y)
            return check_fit_inputs(x, y, sample_weight, dtype, device)
        except ValueError as err:
            if "NaN" not in str(err):
                raise
            raise ValueError(
                f"y contains {int(nan.sum())} NaN value(s), but this model's experts ({expert_families(model)}) "
                "cannot marginalise missing targets: only linear-Gaussian experts with a vector y "
                "(LinearGaussianExpert(..., n_outputs=d_y)) can; drop those rows or impute y first"
            ) from None
    y_t = torch.as_tensor(y.detach() if isinstance(y, torch.Tensor) else np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y))
    filled = torch.where(nan, torch.zeros((), dtype=y_t.dtype), y_t.cpu())  # checked on the observed entries
    x, y_c, w = check_fit_inputs(x, filled, sample_weight, dtype, device)
    if bool(torch.isinf(y_c).any()):  # refused even where the caller allowed incomplete targets
        raise ValueError(
            f"y contains {int(torch.isinf(y_c).sum())} infinite value(s); missing coordinates are NaN, and a "
            "linear-Gaussian expert has no censoring limits: replace them with NaN or finite values"
        )
    y_c = y_c.masked_fill(nan.to(y_c.device), float("nan"))
    seen = (~torch.isnan(y_c) & (w > 0)[:, None]).any(0)
    if every_column_seen and not bool(seen.all()):
        j = int(torch.nonzero(~seen)[0])
        raise ValueError(
            f"y column {j} is missing (NaN) on every row with positive weight: its distribution cannot be "
            "estimated; drop that column of y"
        )
    return x, y_c, w
