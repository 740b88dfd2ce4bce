"""Mixture density networks (Bishop 1994; PRML section 5.6).

A mixture density network is one neural network whose outputs are the
parameters of a Gaussian mixture over y:

    p(y | x) = sum_k pi_k(x) N(y; mu_k(x), Sigma_k(x)),

with ``pi(x) = softmax(a(x))``.  This module gives

- :class:`MixtureDensityNetwork`, a :class:`torch.nn.Module` (a trunk, by
  default a multilayer perceptron, and one linear head) whose ``forward(x)``
  returns a :class:`~moekit.distributions.MixtureDistribution` in the user's
  units, so that it answers the same questions as a mixture of experts (mean,
  covariance, samples, log-density, CDF and quantiles for scalar y);
- :func:`fit_mdn`, the training function (minibatch Adam, validation split,
  early stopping, gradient clipping, weight decay, component-usage monitoring,
  optional re-seeding of dead components);
- :class:`MDNRegressor`, the scikit-learn estimator.

Why the negative log-likelihood never becomes NaN
-------------------------------------------------
Everything is computed in log space: log mixing weights come from
``log_softmax``, component log-densities are evaluated directly (never as
densities), and they are combined with ``logsumexp``.  Every scale has a
floor: standard deviations are ``scale_floor + softplus(raw)`` and the
diagonal of a full covariance's Cholesky factor likewise, so no component's
density can grow without bound (its log-determinant is at least
``2 d log(scale_floor)``).  Inputs and targets are standardised inside the
network, gradients are clipped, and the output layer starts small (see
:meth:`MixtureDensityNetwork.init_from_targets`), so the first steps cannot
throw a component far away.

Why an NLL can be negative
--------------------------
The NLL of a continuous y is ``-log`` of a *density*, and a density exceeds 1
wherever the distribution is concentrated on a set shorter than 1 (in y's
units): a Gaussian with standard deviation 0.1 has density 3.99 at its mean,
so a negative NLL is normal, and it changes by ``log c`` when y is multiplied
by c.
"""

from __future__ import annotations

import copy
import math
import numbers
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import validate_data
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

from ._validation import as_tensor, check_sample_weight
from .distributions import MixtureDistribution
from .estimators.base import ConditionalMixtureMixin, _torch_dtype
from .training.result import FitResult

__all__ = ["MixtureDensityNetwork", "fit_mdn", "MDNFitResult", "MDNRegressor", "DeadComponentWarning"]

_ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}
_COVARIANCES = ("full", "diag", "spherical")
_LOG_2PI = math.log(2 * math.pi)


class DeadComponentWarning(UserWarning):
    """Some mixture components explain (almost) none of the training data."""


def _softplus_inv(v: torch.Tensor) -> torch.Tensor:
    """Inverse of softplus for v > 0, stable for small and large v."""
    return v + torch.log(-torch.expm1(-v))


def _check_int(value, name: str, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_real(value, name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and v <= high
    if not ok:
        lo = "(" if low_open else "["
        hi = "]" if high == math.inf else f"{high}]"
        raise ValueError(f"{name} must be a number in {lo}{low}, {hi if high != math.inf else 'inf)'}, got {value!r}")


# --------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------


class MixtureDensityNetwork(nn.Module):
    """A mixture density network: a trunk, then one linear head giving the gate logits, means and scales.

    ``forward(x)`` returns the predictive mixture p(y | x) in the user's units
    as a :class:`~moekit.distributions.MixtureDistribution` whose components
    have batch shape (n, K): :class:`~torch.distributions.Normal` for scalar y,
    :class:`~torch.distributions.MultivariateNormal` (``scale_tril``) for
    ``covariance="full"``, and ``Independent(Normal)`` for ``"diag"`` and
    ``"spherical"``.  Inside, x and y are standardised with buffers set by
    :meth:`fit_standardization` (identity until then), so the network always
    sees data of unit scale and predictions come out in the original units.

    Parameters
    ----------
    n_features : int or None
        Columns of x (d_x).  May be ``None`` only with a custom ``trunk``, in
        which case x is passed to the trunk unstandardised and may have any
        shape (images, sequences, ...).
    n_outputs : int or None, default=None
        ``None`` for a scalar y (event shape ``()``); otherwise d_y (event
        shape ``(d_y,)``, also for d_y = 1).
    n_components : int, default=5
        K, the number of Gaussian components.
    hidden_layer_sizes : sequence of int, default=(64, 64)
        Widths of the default trunk's hidden layers; ``()`` makes the gate
        logits, means and scales linear in x.
    activation : {"tanh", "relu", "gelu", "elu", "silu", "softplus"}, default="tanh"
    covariance : {"full", "diag", "spherical"}, default="full"
        Covariance of each component for vector y.  "full": a lower-triangular
        Cholesky factor ``L`` (``Sigma = L L^T``) with a floored positive
        diagonal and free off-diagonal entries; "diag": one scale per output;
        "spherical": one scale per component.  Irrelevant for scalar y.
    scale_floor : float, default=1e-3
        Lower bound of every standard deviation (and of every diagonal entry
        of a Cholesky factor), in units of the standardised y:
        ``sd = scale_floor + softplus(raw)``.  It bounds every component's
        density, so the likelihood cannot diverge on repeated targets.
    trunk : torch.nn.Module, optional
        Any module mapping x (n, ...) to features (n, h); replaces the default
        perceptron.  Its parameters are trained with the head.
    trunk_features : int, optional
        h, the width of the trunk's output; found by a forward pass on zeros
        of shape (2, n_features) when omitted.
    dtype : torch.dtype, default=torch.float32
    device : str or torch.device, optional
    generator : torch.Generator, optional
        Source of the initial weights (CPU generator).  Without one, the
        global generator is used as in any torch module; it is never seeded.

    Attributes
    ----------
    head : torch.nn.Linear
        Output layer.  Its outputs are, in order: K gate logits; K * d means
        (component-major); K * s scale parameters (s = 1 for spherical, d
        otherwise); for "full", K * d (d - 1) / 2 off-diagonal Cholesky
        entries (row-major lower triangle).
    x_loc, x_scale, y_loc, y_scale : buffers
        Standardisation: the network sees ``(x - x_loc) / x_scale`` and models
        ``(y - y_loc) / y_scale``.

    Shapes
    ------
    x : (n, d_x); y : (n,) for scalar y, (n, d_y) otherwise.
    ``forward(x)`` a MixtureDistribution with batch shape (n,), components of
    batch shape (n, K); ``log_prob(x, y)`` (n,); ``log_gate(x)`` and
    ``log_responsibilities(x, y)`` (n, K); ``component_usage(x, y)`` (K,).

    Examples
    --------
    >>> import torch
    >>> from moekit.mdn import MixtureDensityNetwork
    >>> g = torch.Generator().manual_seed(0)
    >>> mdn = MixtureDensityNetwork(n_features=1, n_outputs=2, n_components=3, generator=g)
    >>> x = torch.randn(4, 1, generator=g)
    >>> dist = mdn(x)
    >>> dist.mean.shape, dist.covariance_matrix.shape, dist.weights.shape
    (torch.Size([4, 2]), torch.Size([4, 2, 2]), torch.Size([4, 3]))
    >>> mdn.log_prob(x, torch.zeros(4, 2)).shape
    torch.Size([4])
    """

    def __init__(
        self,
        n_features: int | None,
        n_outputs: int | None = None,
        n_components: int = 5,
        hidden_layer_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        covariance: str = "full",
        scale_floor: float = 1e-3,
        trunk: nn.Module | None = None,
        trunk_features: int | None = None,
        dtype: torch.dtype = torch.float32,
        device=None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if trunk is None:
            _check_int(n_features, "n_features", 1)
        else:
            _check_int(n_features, "n_features", 1, allow_none=True)
            if not isinstance(trunk, nn.Module):
                raise TypeError(f"trunk must be a torch.nn.Module, got {type(trunk).__name__}")
        _check_int(n_outputs, "n_outputs", 1, allow_none=True)
        _check_int(n_components, "n_components", 1)
        if covariance not in _COVARIANCES:
            raise ValueError(f"covariance must be one of {_COVARIANCES}, got {covariance!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
        _check_real(scale_floor, "scale_floor", 0.0, low_open=True)
        sizes = tuple(int(h) for h in hidden_layer_sizes)
        if any(h < 1 for h in sizes):
            raise ValueError(f"hidden_layer_sizes must hold positive integers, got {tuple(hidden_layer_sizes)!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
        self.n_features = None if n_features is None else int(n_features)
        self.n_outputs = None if n_outputs is None else int(n_outputs)
        self.n_components = int(n_components)
        self.hidden_layer_sizes = sizes
        self.activation = activation
        self.covariance = covariance
        self.scale_floor = float(scale_floor)
        self.custom_trunk = trunk is not None
        d = self.d
        self._n_scale = 1 if covariance == "spherical" else d
        self._n_off = d * (d - 1) // 2 if covariance == "full" else 0
        self._per_component = 1 + d + self._n_scale + self._n_off

        if trunk is None:
            layers: list[nn.Module] = []
            width = self.n_features
            for h in sizes:
                layers += [nn.utils.skip_init(nn.Linear, width, h, dtype=dtype), _ACTIVATIONS[activation]()]
                width = h
            self.trunk = nn.Sequential(*layers)
            h_out = width
        else:
            self.trunk = trunk
            if trunk_features is None:
                if n_features is None:
                    raise ValueError("trunk_features is required with a custom trunk when n_features is None")
                with torch.no_grad():
                    p = next(iter(trunk.parameters()), None)
                    probe = torch.zeros(2, n_features, dtype=dtype if p is None else p.dtype,
                                        device=None if p is None else p.device)
                    out = trunk(probe)
                if out.dim() != 2:
                    raise ValueError(f"the trunk must return (n, h) features, got shape {tuple(out.shape)}")
                trunk_features = int(out.shape[1])
            _check_int(trunk_features, "trunk_features", 1)
            h_out = int(trunk_features)
        k = self.n_components
        self.head = nn.utils.skip_init(nn.Linear, h_out, k * self._per_component, dtype=dtype)
        dx = self.n_features if (self.n_features is not None) else 1
        cpu = torch.device("cpu")  # built on the CPU (like skip_init's layers), then moved to `device`
        self.register_buffer("x_loc", torch.zeros(dx, dtype=dtype, device=cpu))
        self.register_buffer("x_scale", torch.ones(dx, dtype=dtype, device=cpu))
        self.register_buffer("y_loc", torch.zeros(d, dtype=dtype, device=cpu))
        self.register_buffer("y_scale", torch.ones(d, dtype=dtype, device=cpu))
        self._standardize_x = self.n_features is not None
        if covariance == "full" and d > 1:
            rows, cols = torch.tril_indices(d, d, offset=-1, device=cpu)
            # map each of the d*d entries of L to a column of [0, diag (d), off (m)]
            idx = torch.zeros(d, d, dtype=torch.long, device=cpu)
            diag = torch.arange(d, device=cpu)
            idx[diag, diag] = diag + 1
            idx[rows, cols] = torch.arange(len(rows), device=cpu) + 1 + d
            self.register_buffer("_tril_map", idx.reshape(-1), persistent=False)
        self.reset_parameters(generator)
        if device is not None:
            self.to(device)

    # ------------------------------------------------------------ structure
    @property
    def d(self) -> int:
        """Dimension of y (1 for scalar y)."""
        return 1 if self.n_outputs is None else self.n_outputs

    @property
    def n_experts(self) -> int:
        """Alias of ``n_components`` (the name used by mixtures of experts)."""
        return self.n_components

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def n_parameters(self) -> int:
        """Number of trainable parameters (for BIC / AIC)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def get_config(self) -> dict:
        """JSON-able constructor arguments (default trunk only), for saving.

        ``MixtureDensityNetwork(**cfg)`` rebuilds the architecture; the weights
        and the standardisation buffers are in ``state_dict()``.
        """
        if self.custom_trunk:
            raise ValueError("a network with a custom trunk has no JSON configuration; save its state_dict instead")
        return {
            "n_features": self.n_features,
            "n_outputs": self.n_outputs,
            "n_components": self.n_components,
            "hidden_layer_sizes": list(self.hidden_layer_sizes),
            "activation": self.activation,
            "covariance": self.covariance,
            "scale_floor": self.scale_floor,
        }

    def _slices(self):
        k, d = self.n_components, self.d
        a = k
        b = a + k * d
        c = b + k * self._n_scale
        e = c + k * self._n_off
        return slice(0, a), slice(a, b), slice(b, c), slice(c, e)

    def component_rows(self, k: int) -> torch.Tensor:
        """Indices of the head's outputs (rows of ``head.weight``) that belong to component k."""
        if not 0 <= k < self.n_components:
            raise IndexError(f"component index {k} out of range for {self.n_components} components")
        K, d, s, m = self.n_components, self.d, self._n_scale, self._n_off
        rows = [k]
        rows += [K + k * d + j for j in range(d)]
        rows += [K + K * d + k * s + j for j in range(s)]
        rows += [K + K * d + K * s + k * m + j for j in range(m)]
        return torch.tensor(rows, dtype=torch.long)

    # -------------------------------------------------------- initialisation
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Fresh random weights for the default trunk and the head.

        Hidden layers: Glorot-uniform weights, biases uniform in
        ``+-1/sqrt(fan_in)`` (so that the units' kinks spread over the
        standardised inputs).  Head: ``+-1/sqrt(fan_in)`` weights, zero
        gate and mean biases, scale biases giving unit standard deviations.
        A custom trunk keeps its own initialisation.
        """
        def uniform(shape, bound, like):
            u = torch.rand(shape, generator=generator, dtype=torch.float64,
                           device=generator.device if generator is not None else "cpu")
            return ((2 * u - 1) * bound).to(dtype=like.dtype, device=like.device)

        if not self.custom_trunk:
            for layer in self.trunk:
                if isinstance(layer, nn.Linear):
                    fan_in, fan_out = layer.in_features, layer.out_features
                    layer.weight.copy_(uniform(layer.weight.shape, math.sqrt(6.0 / (fan_in + fan_out)), layer.weight))
                    layer.bias.copy_(uniform(layer.bias.shape, 1.0 / math.sqrt(fan_in), layer.bias))
        h = self.head
        h.weight.copy_(uniform(h.weight.shape, 1.0 / math.sqrt(h.in_features), h.weight))
        h.bias.zero_()
        _, _, sc, _ = self._slices()
        h.bias[sc] = _softplus_inv(torch.tensor(max(1.0 - self.scale_floor, 1e-3), dtype=h.bias.dtype, device=h.bias.device))

    @torch.no_grad()
    def fit_standardization(self, x: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor | None = None) -> None:
        """Set the standardisation buffers from data (weighted mean and standard deviation).

        A constant column gets scale 1.  x is left alone (identity) when the
        network was built with a custom trunk and ``n_features=None``.

        Shapes
        ------
        x (n, d_x); y (n,) or (n, d_y); sample_weight (n,).
        """
        w = torch.ones(y.shape[0], dtype=torch.float64, device=y.device) if sample_weight is None else sample_weight.double()
        w = w / w.sum()

        def loc_scale(t):
            t = t.double().reshape(t.shape[0], -1)
            m = (w[:, None] * t).sum(0)
            v = (w[:, None] * (t - m) ** 2).sum(0)
            s = v.sqrt()
            tiny = 1e-12 * torch.clamp(m.abs(), min=1.0)
            s = torch.where(s > tiny, s, torch.ones_like(s))
            return m, s

        if self._standardize_x:
            m, s = loc_scale(x)
            self.x_loc.copy_(m.to(self.x_loc))
            self.x_scale.copy_(s.to(self.x_scale))
        m, s = loc_scale(y)
        self.y_loc.copy_(m.to(self.y_loc))
        self.y_scale.copy_(s.to(self.y_scale))

    @torch.no_grad()
    def init_from_targets(
        self,
        y: torch.Tensor,
        sample_weight: torch.Tensor | None = None,
        random_state=None,
        output_scale: float = 0.1,
        max_rows: int = 20000,
    ) -> None:
        """Netlab-style initialisation (``mdninit``): start from the unconditional density of y.

        A Gaussian mixture with K components and this network's covariance
        type is fitted to the standardised targets
        (:class:`sklearn.mixture.GaussianMixture`); the head's biases are set
        so that the network outputs exactly its log-weights, means and
        Cholesky factors, and the head's weights are multiplied by
        ``output_scale`` so that, at the start, every x gets (nearly) that
        mixture.  Training therefore starts from the unconditional density of
        y and only has to learn how it moves with x, instead of starting from
        components placed at random.

        With fewer distinct targets than components, the means are distinct
        targets (repeated as needed) and the covariance is that of all targets.
        Rows are subsampled to ``max_rows`` (weighted draw when weights differ).

        Shapes
        ------
        y (n,) or (n, d_y), in the user's units (standardised here with the
        current buffers); sample_weight (n,).
        """
        from sklearn.mixture import GaussianMixture

        k, d = self.n_components, self.d
        z = ((y.reshape(y.shape[0], -1).to(self.y_loc) - self.y_loc) / self.y_scale).double().cpu().numpy()
        rng = np.random.default_rng(random_state)
        w = None if sample_weight is None else sample_weight.double().cpu().numpy()
        if w is not None and np.allclose(w, w[0]):
            w = None
        if w is not None or z.shape[0] > max_rows:
            p = None if w is None else w / w.sum()
            idx = rng.choice(z.shape[0], size=min(z.shape[0], max_rows), replace=w is not None, p=p)
            z = z[idx]
        n_distinct = len(np.unique(np.round(z, 12), axis=0))
        cov_type = "full" if self.covariance == "full" or d == 1 else self.covariance
        weights = means = chol = None
        if n_distinct >= k and z.shape[0] >= 2:
            gm = GaussianMixture(
                k, covariance_type=cov_type, reg_covar=max(self.scale_floor**2, 1e-6), max_iter=200,
                random_state=int(rng.integers(0, 2**31 - 1)),
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm.fit(z)
            weights, means = gm.weights_, gm.means_
            if cov_type == "full":
                chol = np.linalg.cholesky(gm.covariances_)  # (K, d, d)
            elif cov_type == "diag":
                chol = np.sqrt(gm.covariances_)  # (K, d)
            else:
                chol = np.sqrt(gm.covariances_)[:, None]  # (K, 1)
        if weights is None:  # too few distinct targets for a K-component mixture
            uniq = np.unique(np.round(z, 12), axis=0)
            means = uniq[np.arange(k) % len(uniq)]
            weights = np.full(k, 1.0 / k)
            v = z.var(axis=0) if z.shape[0] > 1 else np.zeros(d)
            sd = np.where(v > 0, np.sqrt(v), 1.0)
            if cov_type == "full":
                chol = np.repeat(np.diag(sd)[None], k, axis=0)
            elif cov_type == "diag":
                chol = np.repeat(sd[None], k, axis=0)
            else:
                chol = np.full((k, 1), float(np.sqrt(np.mean(sd**2))))
        floor = self.scale_floor
        if cov_type == "full":
            diag = np.diagonal(chol, axis1=1, axis2=2)  # (K, d)
            if d > 1:
                r, c = np.tril_indices(d, -1)
                off = chol[:, r, c]  # (K, m)
            else:
                off = np.zeros((k, 0))
        else:
            diag, off = chol, np.zeros((k, 0))
        diag = np.maximum(diag - floor, 1e-4 * max(floor, 1e-8))
        gate, mean, scale, offs = self._slices()
        b = self.head.bias
        dev, dt = b.device, b.dtype
        lw = np.log(np.maximum(weights, 1e-12))
        b[gate] = torch.as_tensor(lw - lw.mean(), dtype=dt, device=dev)
        b[mean] = torch.as_tensor(means.reshape(-1), dtype=dt, device=dev)
        b[scale] = _softplus_inv(torch.as_tensor(diag.reshape(-1), dtype=torch.float64, device=dev)).to(dtype=dt)
        if self._n_off:
            b[offs] = torch.as_tensor(off.reshape(-1), dtype=dt, device=dev)
        self.head.weight.mul_(float(output_scale))

    # ------------------------------------------------------------- outputs
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self._standardize_x:
            x = (x - self.x_loc) / self.x_scale
        return self.trunk(x)

    def standardized_parameters(self, x: torch.Tensor):
        """Mixture parameters for the standardised y.

        Returns
        -------
        log_weights : Tensor (n, K)
        means : Tensor (n, K, d)
        scales : Tensor (n, K, s)
            Standard deviations (s = 1 spherical, d diag) or the diagonal of
            the Cholesky factor ("full"), each at least ``scale_floor``.
        scale_tril : Tensor (n, K, d, d) or None
            The Cholesky factor for ``covariance="full"`` and d > 1.
        """
        out = self.head(self._features(x))
        n, k, d = out.shape[0], self.n_components, self.d
        g, m, s, o = self._slices()
        logits = out[:, g]
        # = log_softmax(logits); written with logsumexp, which is 2x faster over a short last axis
        log_w = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        mu = out[:, m].reshape(n, k, d)
        sd = self.scale_floor + F.softplus(out[:, s].reshape(n, k, self._n_scale))
        tril = None
        if self.covariance == "full" and d > 1:
            flat = torch.cat([out.new_zeros(n, k, 1), sd, out[:, o].reshape(n, k, self._n_off)], dim=-1)
            tril = flat.index_select(-1, self._tril_map).reshape(n, k, d, d)
        return log_w, mu, sd, tril

    def _joint_std(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log pi_k(x) + log N_k(z | x) for standardised z: (n, K).  The fast path of training."""
        log_w, mu, sd, tril = self.standardized_parameters(x)
        d = self.d
        if d == 1:  # scalar y (or one column): no reductions over the event axis
            u = (z.reshape(-1, 1) - mu[..., 0]) / sd[..., 0]
            return log_w - 0.5 * (u * u) - torch.log(sd[..., 0]) - 0.5 * _LOG_2PI
        zz = z.reshape(z.shape[0], 1, d)
        if tril is not None:
            diff = (zz - mu).unsqueeze(-1)
            sol = torch.linalg.solve_triangular(tril, diff, upper=False).squeeze(-1)
            maha = (sol * sol).sum(-1)
            logdet = torch.log(sd).sum(-1)
        else:
            u = (zz - mu) / sd
            maha = (u * u).sum(-1)
            logdet = torch.log(sd).sum(-1) * (d if self._n_scale == 1 and d > 1 else 1)
        return log_w - 0.5 * maha - logdet - 0.5 * d * _LOG_2PI

    def _standardize_y(self, y: torch.Tensor) -> torch.Tensor:
        self._check_y(y)
        return (y.reshape(y.shape[0], -1) - self.y_loc) / self.y_scale

    def _check_y(self, y: torch.Tensor) -> None:
        if self.n_outputs is None:
            if y.dim() != 1:
                raise ValueError(
                    f"this network models a scalar y, so y must be 1-D of shape (n,); got shape {tuple(y.shape)}. "
                    "Build it with n_outputs=d_y for a vector y"
                )
        elif y.dim() != 2 or y.shape[1] != self.n_outputs:
            raise ValueError(f"y must have shape (n, {self.n_outputs}), got {tuple(y.shape)}")

    def _log_jacobian(self) -> torch.Tensor:
        return torch.log(self.y_scale).sum()

    def joint_log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log pi_k(x) + log p_k(y | x) in the user's units: (n, K)."""
        return self._joint_std(x, self._standardize_y(y)) - self._log_jacobian()

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x) in the user's units: (n,)."""
        return torch.logsumexp(self.joint_log_prob(x, y), dim=-1)

    def log_gate(self, x: torch.Tensor) -> torch.Tensor:
        """Log mixing weights (n, K)."""
        return self.standardized_parameters(x)[0]

    def log_responsibilities(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log P(component k | x, y): (n, K); each row's logsumexp is 0."""
        j = self.joint_log_prob(x, y)
        return j - torch.logsumexp(j, dim=-1, keepdim=True)

    @torch.no_grad()
    def component_usage(self, x: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor | None = None,
                        batch_size: int = 65536) -> torch.Tensor:
        """Share of the data each component explains: the weighted mean responsibility (K,), summing to 1."""
        w = torch.ones(x.shape[0], dtype=self.dtype, device=x.device) if sample_weight is None else sample_weight
        tot = torch.zeros(self.n_components, dtype=torch.float64, device=x.device)
        for i in range(0, x.shape[0], batch_size):
            r = self.log_responsibilities(x[i : i + batch_size], y[i : i + batch_size]).exp()
            tot += (w[i : i + batch_size, None] * r).sum(0).double()
        return tot / w.double().sum()

    def forward(self, x: torch.Tensor) -> MixtureDistribution:
        """The predictive mixture p(y | x) in the user's units (batch shape (n,))."""
        log_w, mu, sd, tril = self.standardized_parameters(x)
        loc = self.y_loc + self.y_scale * mu  # (n, K, d)
        if self.n_outputs is None:
            comps = Normal(loc[..., 0], self.y_scale[0] * sd[..., 0], validate_args=False)
        elif self.covariance == "full":
            if tril is None:  # d == 1
                tril = sd.unsqueeze(-1)
            comps = MultivariateNormal(loc, scale_tril=self.y_scale[:, None] * tril, validate_args=False)
        else:
            comps = Independent(Normal(loc, self.y_scale * sd.expand_as(mu), validate_args=False), 1,
                                validate_args=False)
        return MixtureDistribution(log_w, comps)

    def extra_repr(self) -> str:
        return (f"n_components={self.n_components}, n_outputs={self.n_outputs}, covariance={self.covariance!r}, "
                f"scale_floor={self.scale_floor}")

    # ------------------------------------------------------------ re-seeding
    @torch.no_grad()
    def reseed_components(self, dead: Sequence[int], x: torch.Tensor, y: torch.Tensor,
                          optimizer: torch.optim.Optimizer | None = None) -> list[int]:
        """Move dead components onto the training rows the model explains worst.

        For each dead component k (worst row first): take the row i with the
        lowest log-likelihood not yet used, and the live component j most
        responsible for it.  Component k copies j's gate and scale outputs
        (weights and biases), and j's mean outputs shifted so that k's mean
        passes through y_i at x_i; j and k then share j's mixing weight
        (``log 2`` is taken off both gate biases).  Adam's moment estimates of
        the changed outputs are reset.  Returns the rows used.

        Shapes
        ------
        x (n, d_x); y (n,) or (n, d_y).
        """
        dead = [int(k) for k in dead]
        if not dead:
            return []
        live = [k for k in range(self.n_components) if k not in dead]
        if not live:
            raise ValueError("cannot re-seed: every component is dead")
        z = self._standardize_y(y)
        ll = torch.logsumexp(self._joint_std(x, z), dim=-1)
        order = torch.argsort(ll)
        W, b = self.head.weight, self.head.bias
        _, mean_sl, _, _ = self._slices()
        used = []
        for t, k in enumerate(dead):
            i = int(order[t % len(order)])
            used.append(i)
            xi, zi = x[i : i + 1], z[i : i + 1]
            joint = self._joint_std(xi, zi)[0]
            j = live[int(torch.argmax(joint[live]))]
            rk, rj = self.component_rows(k).to(W.device), self.component_rows(j).to(W.device)
            W[rk] = W[rj]
            b[rk] = b[rj]
            _, mu, _, _ = self.standardized_parameters(xi)
            d = self.d
            b[self.n_components + k * d : self.n_components + (k + 1) * d] += (zi[0] - mu[0, j]).to(b.dtype)
            b[k] -= math.log(2.0)
            b[j] -= math.log(2.0)
            if optimizer is not None:
                for p in (W, b):
                    st = optimizer.state.get(p, {})
                    for key in ("exp_avg", "exp_avg_sq"):
                        if key in st:
                            st[key][rk] = 0
                            st[key][rj] = 0
        return used


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass
class MDNFitResult(FitResult):
    """What :func:`fit_mdn` returns: a :class:`~moekit.training.FitResult` plus component monitoring.

    Attributes
    ----------
    usage : ndarray (K,)
        Share of the training data each component explains at the end (the
        mean responsibility; sums to 1).
    usage_history : ndarray (n_epochs, K)
        The same, accumulated over each epoch's minibatches.
    dead_components : list of int
        Components whose final usage is below ``dead_threshold``.
    reseeded : list of (epoch, component) pairs
        Re-seeding events (``reseed_dead=True``).
    best_epoch : int
        Epoch whose parameters were kept (early stopping), else the last.
    epoch_seconds : float
        Mean wall-clock time of one training epoch (minibatch passes and the
        validation pass).
    """

    usage: np.ndarray | None = None
    usage_history: np.ndarray | None = None
    dead_components: list = field(default_factory=list)
    reseeded: list = field(default_factory=list)
    best_epoch: int = 0
    epoch_seconds: float = 0.0


def _not_worse(lp: torch.Tensor, ref: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether per-row log-likelihoods ``lp`` are within one paired standard error of ``ref`` (or better)."""
    d = (lp - ref).double()
    w = w.double()
    sw = w.sum()
    m = (w * d).sum() / sw
    var = (w * (d - m) ** 2).sum() / sw
    n_eff = sw**2 / (w**2).sum()
    return bool(m >= -torch.sqrt(var / n_eff))


def _clip_grad_norm_(params: list, max_norm: float) -> None:
    """Scale the gradients so that their joint 2-norm is at most ``max_norm`` (in place).

    The same as :func:`torch.nn.utils.clip_grad_norm_` with fewer steps around
    the multi-tensor kernels (it runs after every minibatch of small networks,
    where that overhead is a quarter of a step).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if hasattr(torch, "_foreach_norm") and hasattr(torch, "_foreach_mul_"):
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    else:  # pragma: no cover - old torch
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def _adamw(groups, lr: float) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build supports it for these tensors, else multi-tensor."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, foreach=True)


def _lerp_(avg: list, new: list, weight: float) -> None:
    """``avg += weight * (new - avg)`` for lists of tensors (in place)."""
    if hasattr(torch, "_foreach_lerp_"):
        torch._foreach_lerp_(avg, new, weight)
    else:  # pragma: no cover - old torch
        for a, b in zip(avg, new):
            a.lerp_(b, weight)


def _progress(total: int, verbose: int):
    if not verbose:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return None
    return tqdm(total=total, desc="MDN", unit="epoch", leave=False)


def fit_mdn(
    model: MixtureDensityNetwork,
    x,
    y,
    sample_weight=None,
    *,
    max_epochs: int = 1000,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    weight_decay: float = 0.0,
    validation_fraction: float = 0.1,
    early_stopping: bool = True,
    patience: int = 150,
    keep: str = "best",
    lr_decay_patience: int | None = 50,
    lr_decay: float = 0.5,
    max_grad_norm: float | None = 10.0,
    average: float | None = 0.99,
    input_noise: float = 0.0,
    target_noise: float = 0.0,
    init: str | None = "gmm",
    output_init_scale: float = 0.1,
    dead_threshold: float = 1e-3,
    reseed_dead: bool = False,
    max_reseeds: int = 3,
    random_state=None,
    verbose: int = 0,
    callback: Callable | None = None,
) -> MDNFitResult:
    """Train a mixture density network by minibatch Adam on the (weighted) negative log-likelihood, in place.

    Parameters
    ----------
    model : MixtureDensityNetwork
    x, y, sample_weight
        x (n, d_x) [or any shape with a custom trunk]; y (n,) for a scalar
        network, (n, d_y) otherwise; non-negative weights (n,).  Rows with
        weight 0 are dropped first.  Arrays are copied, never modified.
    max_epochs : int, default=1000
    batch_size : int, default=64
    learning_rate : float, default=3e-3
        Adam's initial step size.
    weight_decay : float, default=0.0
        Decoupled weight decay (AdamW) on the weight matrices (not on biases).
    validation_fraction : float, default=0.1
        Share of the rows held out (at random) for early stopping and for the
        learning-rate schedule; no split when 0, when ``early_stopping`` is
        False, or with fewer than 20 rows.
    early_stopping : bool, default=True
        Stop when the validation NLL has not improved for ``patience``
        epochs, and restore the best parameters.
    patience : int, default=150
        Three times ``lr_decay_patience``, so that the learning rate is
        halved about twice after the last improvement before training stops.
    keep : {"best", "recent"}, default="best"
        Which network early stopping keeps.  "best": the one with the best
        validation NLL.  "recent": the most recent one whose validation
        log-likelihood is within one *paired* standard error of the best
        (per-row differences on the same validation rows).  A small validation
        set cannot tell such networks apart; the later one has trained longer,
        at a smaller learning rate, which helps when the network underfits
        (e.g. many components, smooth targets) and hurts when it overfits
        (small noisy data sets).
    lr_decay_patience : int or None, default=50
        Multiply the learning rate by ``lr_decay`` when the monitored NLL
        (validation, else training) has not improved for this many epochs
        (``None``: constant rate).  It should be well below ``patience``
        (otherwise the rate never decays).  A short wait halves the rate on
        the noise of a small validation split: with the earlier default of
        15 epochs, the rate shrank towards zero within a few hundred epochs
        on Bishop's inverse sine (100 validation rows), training froze
        before the extra components were put to use, and 5 components did no
        better than 3 (see ``benchmarks/RESULTS_mdn.md``).
    lr_decay : float, default=0.5
    max_grad_norm : float or None, default=10.0
        Gradient-norm clipping.
    average : float or None, default=0.99
        Polyak-Ruppert averaging: the network that is validated, kept and
        returned is an exponential moving average of the iterates, updated
        after every minibatch step with this decay (``None``: the last
        iterate).  It removes most of the minibatch noise from the final
        parameters and from the validation curve that early stopping reads.
    input_noise, target_noise : float, default=0.0
        Noise regularisation (Rothfuss et al. 2019, "Noise regularization for
        conditional density estimation"): every epoch, each training row's x
        and y are perturbed by fresh Gaussian noise with this standard
        deviation, in standardised units (a share of each column's standard
        deviation; raw units for inputs a custom trunk does not standardise).
        It smooths the learnt density in x and y, which curbs overfitting on
        small data sets, and is the likelihood of a slightly blurred density:
        leave it at 0 when the density has sharp edges.  Validation rows are
        never perturbed; the training history is that of the perturbed rows.
    init : {"gmm", "random", None}, default="gmm"
        "gmm": set the standardisation from the data, draw fresh weights and
        start from a Gaussian mixture fitted to the targets
        (:meth:`MixtureDensityNetwork.init_from_targets`); "random": the same
        without the mixture (unit-scale components at the origin); ``None``:
        continue from the model as it is (standardisation unchanged).
    output_init_scale : float, default=0.1
        Factor on the head's initial weights with ``init="gmm"``.
    dead_threshold : float, default=1e-3
        A component whose usage (share of the training data it explains) is
        below this is *dead*; a :class:`DeadComponentWarning` names the dead
        components at the end.
    reseed_dead : bool, default=False
        Re-seed dead components during training
        (:meth:`MixtureDensityNetwork.reseed_components`), at most
        ``max_reseeds`` times each, never in the last ``patience`` epochs.
    max_reseeds : int, default=3
    random_state : int, Generator or None
        Seeds the weights, the split, the shuffling and the mixture fitted to
        the targets.  The global random state is never touched.
    verbose : int, default=0
        Show a progress bar (tqdm, if installed; otherwise a line every
        ``verbose`` epochs).
    callback : callable, optional
        ``callback(epoch, train_mean_loglik, validation_mean_loglik, model)``;
        return ``True`` to stop.

    Returns
    -------
    MDNFitResult
        ``history``: mean training log-likelihood of each epoch (index 0 at
        the start; the epochs' entries are averaged over its minibatches as
        they are visited); ``validation_history``; ``log_likelihood``: final
        mean over all rows; ``usage``, ``dead_components`` and more.

    Raises
    ------
    FloatingPointError
        If a loss ever became NaN or infinite (it should not: everything is
        in log space with scale floors; please report it).

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,).

    Examples
    --------
    >>> import torch
    >>> from moekit.mdn import MixtureDensityNetwork, fit_mdn
    >>> from moekit.datasets import make_inverse_sine
    >>> X, y = make_inverse_sine(300, random_state=0)
    >>> mdn = MixtureDensityNetwork(1, n_components=3, hidden_layer_sizes=(16,))
    >>> res = fit_mdn(mdn, X, y, max_epochs=20, random_state=0)
    >>> res.history[-1] > res.history[0], len(res.usage)
    (True, 3)
    """
    t0 = time.perf_counter()
    if not isinstance(model, MixtureDensityNetwork):
        raise TypeError(f"model must be a MixtureDensityNetwork, got {type(model).__name__}")
    _check_int(max_epochs, "max_epochs", 0)
    _check_int(batch_size, "batch_size", 1)
    _check_int(patience, "patience", 1)
    _check_int(lr_decay_patience, "lr_decay_patience", 1, allow_none=True)
    _check_int(max_reseeds, "max_reseeds", 0)
    _check_real(learning_rate, "learning_rate", 0.0, low_open=True)
    _check_real(weight_decay, "weight_decay", 0.0)
    _check_real(validation_fraction, "validation_fraction", 0.0, 0.9)
    _check_real(lr_decay, "lr_decay", 0.0, 1.0, low_open=True)
    _check_real(output_init_scale, "output_init_scale", 0.0)
    _check_real(input_noise, "input_noise", 0.0)
    _check_real(target_noise, "target_noise", 0.0)
    _check_real(dead_threshold, "dead_threshold", 0.0, 1.0)
    if max_grad_norm is not None:
        _check_real(max_grad_norm, "max_grad_norm", 0.0, low_open=True)
    if keep not in ("best", "recent"):
        raise ValueError(f"keep must be 'best' or 'recent', got {keep!r}")
    if init not in ("gmm", "random", None):
        raise ValueError(f"init must be 'gmm', 'random' or None, got {init!r}")
    dtype, device = model.dtype, model.device
    x_ndims = (2,) if model.n_features is not None or not model.custom_trunk else tuple(range(1, 8))
    x = as_tensor(x, "x", dtype, device, ndims=x_ndims)
    y = as_tensor(y, "y", dtype, device, ndims=(1, 2))
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; they must have the same length")
    if model.n_features is not None and x.shape[1] != model.n_features:
        raise ValueError(f"x has {x.shape[1]} columns but the network was built with n_features={model.n_features}")
    model._check_y(y)
    w = check_sample_weight(sample_weight, x.shape[0], dtype, device)
    pos = w > 0
    if not bool(pos.all()):
        x, y, w = x[pos], y[pos], w[pos]
    n = x.shape[0]

    rng = np.random.default_rng(random_state)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
    n_val = int(round(validation_fraction * n)) if (early_stopping and n >= 20) else 0
    perm = torch.as_tensor(rng.permutation(n), device=device)
    tr, va = perm[n_val:], perm[:n_val]
    xt, yt, wt = x[tr], y[tr], w[tr]
    xv, yv, wv = x[va], y[va], w[va]
    if init is not None:
        model.reset_parameters(gen)
        model.fit_standardization(x, y, w)
        if init == "gmm":
            model.init_from_targets(yt, wt, random_state=int(rng.integers(0, 2**31 - 1)), output_scale=output_init_scale)
    zt = model._standardize_y(yt)
    zv = model._standardize_y(yv) if n_val else None
    jac = float(model._log_jacobian())
    wt_sum = float(wt.sum())
    unit_weights = bool((wt == 1).all())

    def val_lp(net) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([torch.logsumexp(net._joint_std(xv[i : i + 65536], zv[i : i + 65536]), dim=-1)
                              for i in range(0, xv.shape[0], 65536)])

    def mean_ll(xx, zz, ww, net=None) -> float:
        net = model if net is None else net
        if xx.shape[0] == 0:
            return float("nan")
        with torch.no_grad():
            tot = 0.0
            for i in range(0, xx.shape[0], 65536):
                lp = torch.logsumexp(net._joint_std(xx[i : i + 65536], zz[i : i + 65536]), dim=-1)
                tot += float((ww[i : i + 65536] * lp).sum())
            return tot / float(ww.sum()) - jac

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    if weight_decay > 0:
        groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    else:
        groups = [{"params": params, "weight_decay": 0.0}]
    opt = _adamw(groups, float(learning_rate))
    # Polyak-Ruppert averaging (an exponential moving average of the iterates): the averaged
    # network is the one validated, kept and returned; it smooths out the minibatch noise.
    evalnet, ema, live = model, None, None
    if average is not None:
        evalnet = copy.deepcopy(model)
        for q in evalnet.parameters():
            q.requires_grad_(False)
        shadow = dict(evalnet.named_parameters())
        ema = [shadow[name] for name, _ in named]
        live = [p.detach() for p in params]

    history = [mean_ll(xt, zt, wt)]
    val_history = [mean_ll(xv, zv, wv)] if n_val else None
    if not math.isfinite(history[0]):
        raise FloatingPointError(f"the initial training log-likelihood is {history[0]}; check the data scale")
    best = val_history[0] if n_val else history[0]
    best_state = copy.deepcopy(model.state_dict())
    best_epoch, since_best, since_lr, kept_epoch = 0, 0, 0, 0
    best_lp = val_lp(model) if n_val else None
    wv_sum = float(wv.sum()) if n_val else 1.0
    lr_best = best
    usage_hist: list[np.ndarray] = []
    reseeded: list[tuple[int, int]] = []
    n_reseeds = np.zeros(model.n_components, dtype=int)
    converged = False
    epoch = 0
    bar = _progress(max_epochs, verbose)
    k = model.n_components
    n_tr = xt.shape[0]
    epoch_time = 0.0
    for epoch in range(1, max_epochs + 1):
        te = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        usage = torch.zeros(k, dtype=torch.float64, device=device)
        if batch_size >= n_tr:  # full batch: the order does not matter
            xs, zs, ws = xt, zt, wt
        else:  # one gather per epoch; the minibatches are slices
            order = torch.randperm(n_tr, generator=gen, device=gen.device).to(device)
            xs, zs, ws = xt[order], zt[order], wt[order]
        if input_noise > 0:  # noise regularisation: fresh noise each epoch, in standardised units
            eps = torch.randn(xs.shape, generator=gen, dtype=xs.dtype, device=gen.device).to(device)
            xs = xs + float(input_noise) * (eps * model.x_scale if model._standardize_x else eps)
        if target_noise > 0:
            zs = zs + float(target_noise) * torch.randn(zs.shape, generator=gen, dtype=zs.dtype, device=gen.device).to(device)
        for i in range(0, n_tr, batch_size):
            joint = model._joint_std(xs[i : i + batch_size], zs[i : i + batch_size])
            lp = torch.logsumexp(joint, dim=-1)
            if unit_weights:
                loss = -lp.mean()
            else:
                wb = ws[i : i + batch_size]
                loss = -(wb * lp).sum() / wb.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                _clip_grad_norm_(params, float(max_grad_norm))
            opt.step()
            if ema is not None:
                _lerp_(ema, live, 1.0 - float(average))
            with torch.no_grad():
                r = torch.exp(joint.detach() - lp.detach()[:, None])  # responsibilities (softmax)
                if unit_weights:
                    loss_sum += lp.detach().sum().double()
                    usage += r.sum(0).double()
                else:
                    loss_sum += (wb * lp.detach()).sum().double()
                    usage += (wb[:, None] * r).sum(0).double()
        model.eval()
        ll = float(loss_sum) / wt_sum - jac
        if not math.isfinite(ll):
            raise FloatingPointError(
                f"the training loss became {-ll} at epoch {epoch}; this should not happen "
                "(log-space likelihood with scale floors): please report it with the data"
            )
        history.append(ll)
        usage_np = (usage / wt_sum).cpu().numpy()
        usage_hist.append(usage_np)
        v = None
        if n_val:
            lp_v = val_lp(evalnet)
            v = float((wv * lp_v).sum()) / wv_sum - jac
            val_history.append(v)
            if not math.isfinite(v):
                raise FloatingPointError(f"the validation log-likelihood became {v} at epoch {epoch}")
        epoch_time += time.perf_counter() - te
        monitored = v if n_val else ll
        if monitored > best + 1e-6:
            best, best_epoch, since_best = monitored, epoch, 0
            if n_val:
                best_state = copy.deepcopy(evalnet.state_dict())
                best_lp, kept_epoch = lp_v, epoch
        else:
            since_best += 1
            if n_val and keep == "recent" and _not_worse(lp_v, best_lp, wv):
                best_state = copy.deepcopy(evalnet.state_dict())
                kept_epoch = epoch
        if lr_decay_patience is not None:
            if monitored > lr_best + 1e-6:
                lr_best, since_lr = monitored, 0
            else:
                since_lr += 1
                if since_lr >= lr_decay_patience:
                    for gr in opt.param_groups:
                        gr["lr"] *= lr_decay
                    since_lr = 0
        if reseed_dead and epoch >= 5 and epoch <= max_epochs - patience:
            dead = [c for c in range(k) if usage_np[c] < dead_threshold and n_reseeds[c] < max_reseeds]
            if dead and len(dead) < k:
                model.reseed_components(dead, xt, yt, optimizer=opt)
                if ema is not None:
                    evalnet.load_state_dict(model.state_dict())
                for c in dead:
                    n_reseeds[c] += 1
                    reseeded.append((epoch, c))
                if n_val:  # the re-seeded model must earn its place again
                    since_best = 0
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train_nll=f"{-ll:.4f}", **({"val_nll": f"{-v:.4f}"} if n_val else {}))
        elif verbose and epoch % int(verbose) == 0:
            msg = f"epoch {epoch:5d}  train NLL {-ll:.5f}"
            if n_val:
                msg += f"  validation NLL {-v:.5f}"
            print(msg)
        if callback is not None and callback(epoch, ll, v, evalnet):
            break
        if early_stopping and since_best >= patience:
            converged = True
            break
    if bar is not None:
        bar.close()
    if n_val:
        model.load_state_dict(best_state)
        best_epoch = kept_epoch
        history.append(mean_ll(xt, zt, wt))
    elif ema is not None:
        model.load_state_dict(evalnet.state_dict())
        history.append(mean_ll(xt, zt, wt))
    elif not early_stopping:
        best_epoch = epoch
    if not early_stopping:
        converged = True
    model.eval()
    final_usage = model.component_usage(xt, yt, wt).cpu().numpy()
    dead = [int(c) for c in np.flatnonzero(final_usage < dead_threshold)]
    if dead:
        shares = ", ".join(f"{c}: {final_usage[c]:.1e}" for c in dead)
        warnings.warn(
            f"{len(dead)} of {k} mixture components are dead (they explain less than "
            f"dead_threshold={dead_threshold:g} of the training data; component: share = {shares}); "
            "use fewer components, or reseed_dead=True to move them onto poorly explained data",
            DeadComponentWarning,
            stacklevel=2,
        )
    n_epochs = max(len(usage_hist), 1)
    return MDNFitResult(
        model=model,
        log_likelihood=mean_ll(x, model._standardize_y(y), w),
        history=history,
        n_iter=epoch,
        converged=converged,
        method="gradient",
        init_log_likelihoods=[history[-1]],
        validation_history=val_history,
        seconds=time.perf_counter() - t0,
        usage=final_usage,
        usage_history=np.array(usage_hist).reshape(-1, k),
        dead_components=dead,
        reseeded=reseeded,
        best_epoch=best_epoch,
        epoch_seconds=epoch_time / n_epochs,
    )


# --------------------------------------------------------------------------------------------------
# scikit-learn estimator
# --------------------------------------------------------------------------------------------------


class MDNRegressor(ConditionalMixtureMixin, RegressorMixin, BaseEstimator):
    """Mixture density network regression (scikit-learn estimator).

    Models the whole conditional density ``p(y | x)`` as a K-component
    Gaussian mixture whose weights, means and covariances are outputs of one
    neural network (:class:`MixtureDensityNetwork`), trained by
    :func:`fit_mdn`: minibatch Adam from a Netlab-style start (the network
    first outputs a Gaussian mixture fitted to y), with a validation split,
    early stopping, learning-rate decay, averaging of the iterates and
    gradient clipping.  Inputs and targets are standardised inside;
    predictions are in the original units.

    Parameters
    ----------
    n_components : int, default=5
        K, the number of Gaussian components.
    hidden_layer_sizes : tuple of int, default=(64, 64)
    activation : {"tanh", "relu", "gelu", "elu", "silu", "softplus"}, default="tanh"
    covariance : {"full", "diag", "spherical"}, default="full"
        Component covariance for a 2-D y (Cholesky-factored for "full").
    max_epochs : int, default=1000
    batch_size : int, default=64
    learning_rate : float, default=3e-3
        Adam's initial learning rate (halved when the validation NLL stalls).
    weight_decay : float, default=0.0
        Decoupled weight decay on the weight matrices.
    input_noise, target_noise : float, default=0.0
        Noise regularisation (Rothfuss et al. 2019): standard deviation of the
        Gaussian noise added afresh every epoch to the standardised training
        inputs and targets.  Target noise of 0.1-0.2 curbs overfitting on a few
        hundred rows (0.15 lowered the test NLL by about 0.1 nats on the UCI
        Boston and concrete benchmarks, ``benchmarks/RESULTS_mdn.md``); keep 0
        when the density has sharp edges (see :func:`fit_mdn`).
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the rows, stop when their NLL has
        not improved for ``patience`` epochs, and keep the best network.
    validation_fraction : float, default=0.1
    patience : int, default=150
        Epochs without a better validation NLL before stopping; the learning
        rate is halved after every 50 such epochs (see :func:`fit_mdn`).
    keep : {"best", "recent"}, default="best"
        Which validated network to keep: the best one, or the most recent one
        within one paired standard error of it (see :func:`fit_mdn`).
    scale_floor : float, default=1e-3
        Floor of every component standard deviation, relative to the standard
        deviation of each target column.
    reseed_dead : bool, default=False
        Move dead components (explaining less than 0.1 % of the data) onto
        poorly explained rows during training.  Without it, dead components are
        reported by a :class:`DeadComponentWarning`.
    random_state : int, RandomState instance or None
    device : str, default="cpu"
        E.g. "cuda".
    dtype : {"float32", "float64"}, default="float32"
    verbose : int, default=0
        Progress bar while training.

    Attributes
    ----------
    model_ : MixtureDensityNetwork
    fit_result_ : MDNFitResult
    n_iter_ : int
        Epochs run.
    best_epoch_ : int
        Epoch whose network was kept.
    usage_ : ndarray (K,)
        Share of the training data each component explains.
    dead_components_ : list of int
    log_likelihood_ : float
        Mean training log-likelihood (original units).
    log_likelihood_history_, validation_history_ : ndarray
    n_features_in_ : int
    feature_names_in_ : ndarray, for DataFrames

    Shapes
    ------
    X (n, d_x); y (n,) or (n, d_y).  ``predict`` (n,) or (n, d_y) conditional
    means; ``predict_gate`` (n, K); ``predict_quantiles`` (n, len(q)) for 1-D
    y; ``score_samples`` (n,); ``sample_y`` (n, n_samples) or
    (n, d_y, n_samples).

    Examples
    --------
    >>> from moekit.mdn import MDNRegressor
    >>> from moekit.datasets import make_inverse_sine
    >>> X, y = make_inverse_sine(500, random_state=0)
    >>> mdn = MDNRegressor(n_components=3, max_epochs=30, random_state=0).fit(X, y)
    >>> mdn.predict(X[:2]).shape, mdn.predict_gate(X[:2]).shape, mdn.predict_quantiles(X[:2], [0.1, 0.9]).shape
    ((2,), (2, 3), (2, 2))
    >>> bool(mdn.score_samples(X, y).mean() > 0)  # a density above 1: y lies in [0, 1]
    True
    """

    def __init__(
        self,
        n_components=5,
        hidden_layer_sizes=(64, 64),
        activation="tanh",
        covariance="full",
        max_epochs=1000,
        batch_size=64,
        learning_rate=3e-3,
        weight_decay=0.0,
        input_noise=0.0,
        target_noise=0.0,
        early_stopping=True,
        validation_fraction=0.1,
        patience=150,
        keep="best",
        scale_floor=1e-3,
        reseed_dead=False,
        random_state=None,
        device="cpu",
        dtype="float32",
        verbose=0,
    ):
        self.n_components = n_components
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.covariance = covariance
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.input_noise = input_noise
        self.target_noise = target_noise
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.keep = keep
        self.scale_floor = scale_floor
        self.reseed_dead = reseed_dead
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.verbose = verbose

    def _check_params(self) -> None:
        _check_int(self.n_components, "n_components", 1)
        _check_int(self.max_epochs, "max_epochs", 1)
        _check_int(self.batch_size, "batch_size", 1)
        _check_int(self.patience, "patience", 1)
        _check_real(self.learning_rate, "learning_rate", 0.0, low_open=True)
        _check_real(self.weight_decay, "weight_decay", 0.0)
        _check_real(self.input_noise, "input_noise", 0.0)
        _check_real(self.target_noise, "target_noise", 0.0)
        _check_real(self.validation_fraction, "validation_fraction", 0.0, 0.9)
        _check_real(self.scale_floor, "scale_floor", 0.0, low_open=True)
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, got {self.activation!r}")
        if self.covariance not in _COVARIANCES:
            raise ValueError(f"covariance must be one of {_COVARIANCES}, got {self.covariance!r}")
        if self.keep not in ("best", "recent"):
            raise ValueError(f"keep must be 'best' or 'recent', got {self.keep!r}")
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise TypeError(f"hidden_layer_sizes must be a tuple of positive ints, got {self.hidden_layer_sizes!r}") from None
        if not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1 for h in sizes):
            raise ValueError(f"hidden_layer_sizes must hold positive integers, got {self.hidden_layer_sizes!r}")
        _torch_dtype(self.dtype)
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} was requested but torch.cuda.is_available() is False; use device='cpu'")

    def fit(self, X, y, sample_weight=None):
        """Train the network.

        Parameters
        ----------
        X : array-like (n, d_x)
        y : array-like (n,) or (n, d_y)
        sample_weight : array-like (n,), optional
            Non-negative weights; rows with weight 0 are ignored.

        Returns
        -------
        self
        """
        self._check_params()
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        w = check_sample_weight(sample_weight, X.shape[0], torch.float64).numpy()
        self._y_ndim = y.ndim
        dtype = _torch_dtype(self.dtype)
        rng = np.random.default_rng(self.random_state if not isinstance(self.random_state, np.random.RandomState)
                                    else self.random_state.randint(0, 2**31 - 1))
        seed = int(rng.integers(0, 2**31 - 1))
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if isinstance(sizes, numbers.Integral) else tuple(int(h) for h in sizes)
        model = MixtureDensityNetwork(
            X.shape[1], None if y.ndim == 1 else y.shape[1], int(self.n_components), sizes, self.activation,
            self.covariance, float(self.scale_floor), dtype=dtype, device=self.device,
            generator=torch.Generator().manual_seed(seed),
        )
        res = fit_mdn(
            model, X, y, w, max_epochs=int(self.max_epochs), batch_size=int(self.batch_size),
            learning_rate=float(self.learning_rate), weight_decay=float(self.weight_decay),
            input_noise=float(self.input_noise), target_noise=float(self.target_noise),
            validation_fraction=float(self.validation_fraction), early_stopping=bool(self.early_stopping),
            patience=int(self.patience), keep=self.keep, reseed_dead=bool(self.reseed_dead), random_state=seed,
            verbose=int(self.verbose),
        )
        self.model_ = res.model
        self.fit_result_ = res
        self.n_iter_ = res.n_iter
        self.best_epoch_ = res.best_epoch
        self.usage_ = res.usage
        self.dead_components_ = res.dead_components
        self.log_likelihood_ = res.log_likelihood
        self.log_likelihood_history_ = np.asarray(res.history)
        self.validation_history_ = np.asarray(res.validation_history if res.validation_history is not None else [])
        return self

    def _y_tensor(self, y, n):
        y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=np.float64)
        if y.ndim != self._y_ndim or y.shape[0] != n:
            want = (n,) if self._y_ndim == 1 else (n, self.model_.n_outputs)
            raise ValueError(f"y must have shape {want} like the training y, got {y.shape}")
        if self._y_ndim == 2 and y.shape[1] != self.model_.n_outputs:
            raise ValueError(f"y must have {self.model_.n_outputs} columns like the training y, got {y.shape[1]}")
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinite values; drop or impute them first")
        return torch.as_tensor(y.copy(), dtype=_torch_dtype(self.dtype), device=self.device)

    def predict(self, X) -> np.ndarray:
        """Conditional mean E[y | x] over all output dimensions: (n,) or (n, d_y)."""
        return self.predict_distribution(X).mean.cpu().numpy().astype(np.float64)

    def predict_gate(self, X) -> np.ndarray:
        """Mixing weights pi(x): (n, K), rows summing to one."""
        x = self._x(X)
        with torch.no_grad():
            return self.model_.log_gate(x).exp().cpu().numpy().astype(np.float64)

    def responsibilities(self, X, y) -> np.ndarray:
        """Posterior probability of each component given x and y: (n, K)."""
        x = self._x(X)
        yt = self._y_tensor(y, x.shape[0])
        with torch.no_grad():
            return self.model_.log_responsibilities(x, yt).exp().cpu().numpy().astype(np.float64)

    def score_samples(self, X, y) -> np.ndarray:
        """Per-row log-density ``log p(y | x)`` in y's original units: (n,)."""
        return super().score_samples(X, y).astype(np.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.non_deterministic = False
        return tags
