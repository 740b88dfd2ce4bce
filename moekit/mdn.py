"""Mixture density networks (Bishop 1994; PRML section 5.6): the network.

A mixture density network is one neural network whose outputs are the
parameters of a Gaussian mixture over y:

    p(y | x) = sum_k pi_k(x) N(y; mu_k(x), Sigma_k(x)),

with ``pi(x) = softmax(a(x))``.  This module gives
:class:`MixtureDensityNetwork`, a :class:`torch.nn.Module` (a trunk, by
default a multilayer perceptron, and one linear head) whose ``forward(x)``
returns a :class:`~moekit.distributions.MixtureDistribution` in the user's
units, so that it answers the same questions as a mixture of experts (mean,
covariance, samples, log-density, CDF and quantiles for scalar y).  It is
trained by :func:`moekit.training.mdn.fit_mdn` (minibatch Adam, validation
split, early stopping, gradient clipping, weight decay, component-usage
monitoring, optional re-seeding of dead components) and wrapped for
scikit-learn by :class:`moekit.estimators.mdn.MDNRegressor`.

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

import importlib
import math
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

from ._validation import check_int, check_real
from .distributions import MixtureDistribution

__all__ = ["MixtureDensityNetwork"]

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}
COVARIANCES = ("full", "diag", "spherical")
_LOG_2PI = math.log(2 * math.pi)

# names that moved out of this module, and where they live now
_MOVED = {
    "fit_mdn": "moekit.training.mdn",
    "MDNFitResult": "moekit.training.mdn",
    "DeadComponentWarning": "moekit.training.mdn",
    "MDNRegressor": "moekit.estimators.mdn",
}


def __getattr__(name: str):
    try:
        module = _MOVED[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    warnings.warn(
        f"moekit.mdn.{name} has moved to {module}.{name}; import it from there or from moekit",
        DeprecationWarning,
        stacklevel=2,
    )
    # deprecation shim: the moved names live in higher layers, so they are imported on use, not at the top
    return getattr(importlib.import_module(module), name)


def _softplus_inv(v: torch.Tensor) -> torch.Tensor:
    """Inverse of softplus for v > 0, stable for small and large v."""
    return v + torch.log(-torch.expm1(-v))


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
            check_int(n_features, "n_features", 1)
        else:
            check_int(n_features, "n_features", 1, allow_none=True)
            if not isinstance(trunk, nn.Module):
                raise TypeError(f"trunk must be a torch.nn.Module, got {type(trunk).__name__}")
        check_int(n_outputs, "n_outputs", 1, allow_none=True)
        check_int(n_components, "n_components", 1)
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        check_real(scale_floor, "scale_floor", 0.0, low_open=True)
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
                layers += [nn.utils.skip_init(nn.Linear, width, h, dtype=dtype), ACTIVATIONS[activation]()]
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
            check_int(trunk_features, "trunk_features", 1)
            h_out = int(trunk_features)
        k = self.n_components
        self.head = nn.utils.skip_init(nn.Linear, h_out, k * self._per_component, dtype=dtype)
        dx = self.n_features if (self.n_features is not None) else 1
        cpu = torch.device("cpu")  # built on the CPU (like skip_init's layers), then moved to `device`
        self.register_buffer("x_loc", torch.zeros(dx, dtype=dtype, device=cpu))
        self.register_buffer("x_scale", torch.ones(dx, dtype=dtype, device=cpu))
        self.register_buffer("y_loc", torch.zeros(d, dtype=dtype, device=cpu))
        self.register_buffer("y_scale", torch.ones(d, dtype=dtype, device=cpu))
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
    def standardizes_x(self) -> bool:
        """Whether x is standardised before the trunk (always, except for a custom trunk with ``n_features=None``)."""
        return self.n_features is not None

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

        A constant column (its spread within rounding of its magnitude, whatever that magnitude)
        gets scale 1.  x is left alone (identity) when the
        network was built with a custom trunk and ``n_features=None``.

        Shapes
        ------
        x (n, d_x); y (n,) or (n, d_y); sample_weight (n,).
        """
        w = torch.ones(y.shape[0], dtype=torch.float64, device=y.device) if sample_weight is None else sample_weight.double()
        w = w / w.sum()

        fi = torch.finfo(self.dtype)

        def loc_scale(t):
            t = t.double().reshape(t.shape[0], -1)
            m = (w[:, None] * t).sum(0)
            v = (w[:, None] * (t - m) ** 2).sum(0)
            s = v.sqrt()
            # constant up to rounding, relative to the column's own magnitude (any scale works), or a
            # spread too small for the network's dtype to divide by
            rounding = 16 * torch.finfo(torch.float64).eps * (t * (w[:, None] > 0)).abs().amax(0)
            s = torch.where((s > rounding) & (s >= fi.tiny / fi.eps), s, torch.ones_like(s))
            return m, s

        if self.standardizes_x:
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
        if self.standardizes_x:
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

    def standardized_joint_log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
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

    def standardize_y(self, y: torch.Tensor) -> torch.Tensor:
        """``(y - y_loc) / y_scale`` as (n, d), after checking y's shape."""
        self.check_y(y)
        return (y.reshape(y.shape[0], -1) - self.y_loc) / self.y_scale

    def check_y(self, y: torch.Tensor) -> None:
        """Raise ``ValueError`` unless y is (n,) for a scalar network or (n, n_outputs) otherwise."""
        if self.n_outputs is None:
            if y.dim() != 1:
                raise ValueError(
                    f"this network models a scalar y, so y must be 1-D of shape (n,); got shape {tuple(y.shape)}. "
                    "Build it with n_outputs=d_y for a vector y"
                )
        elif y.dim() != 2 or y.shape[1] != self.n_outputs:
            raise ValueError(f"y must have shape (n, {self.n_outputs}), got {tuple(y.shape)}")

    def log_jacobian(self) -> torch.Tensor:
        """``sum(log y_scale)``: a log-density of the standardised y minus this is one in the user's units."""
        return torch.log(self.y_scale).sum()

    def joint_log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log pi_k(x) + log p_k(y | x) in the user's units: (n, K)."""
        j = self.standardized_joint_log_prob(x, self.standardize_y(y)) - self.log_jacobian()
        if bool(torch.isnan(j).any()):  # -inf is a density that underflowed; NaN is an input the network cannot take
            self.check_outputs(x, j.nan_to_num(nan=math.nan, posinf=0.0, neginf=0.0))
        return j

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x) in the user's units: (n,)."""
        return torch.logsumexp(self.joint_log_prob(x, y), dim=-1)

    def log_gate(self, x: torch.Tensor) -> torch.Tensor:
        """Log mixing weights (n, K)."""
        log_w = self.standardized_parameters(x)[0]
        self.check_outputs(x, log_w)
        return log_w

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

    def check_outputs(self, x: torch.Tensor, *outputs: torch.Tensor) -> None:
        """Raise a clear ``ValueError`` naming X where the network's outputs for ``x`` are not finite.

        Finite float64 inputs beyond the range of a float32 network become infinite when converted
        (and inputs far outside the training data can overflow inside it): a prediction would be
        NaN.  Checked on the outputs, so one reduction per call and none in the training loop.
        """
        if all(bool(torch.isfinite(o).all()) for o in outputs):
            return
        fi = torch.finfo(self.dtype)
        if not bool(torch.isfinite(x).all()):
            what = f"values beyond the range of the network's dtype {str(self.dtype).replace('torch.', '')} (magnitudes up to {fi.max:.3g})"
        else:
            what = "values so far outside the training data that the network's outputs overflow"
        bad = (~torch.isfinite(torch.cat([o.reshape(o.shape[0], -1) for o in outputs], 1))).any(1)
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(
            f"X has {what} (rows {rows}...): the predictions would be NaN; pass inputs within the range "
            "of the training data (within the network's dtype), or refit with dtype='float64'"
        )

    def forward(self, x: torch.Tensor) -> MixtureDistribution:
        """The predictive mixture p(y | x) in the user's units (batch shape (n,))."""
        log_w, mu, sd, tril = self.standardized_parameters(x)
        self.check_outputs(x, log_w, mu, sd)
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
        z = self.standardize_y(y)
        ll = torch.logsumexp(self.standardized_joint_log_prob(x, z), dim=-1)
        order = torch.argsort(ll)
        W, b = self.head.weight, self.head.bias
        used = []
        for t, k in enumerate(dead):
            i = int(order[t % len(order)])
            used.append(i)
            xi, zi = x[i : i + 1], z[i : i + 1]
            joint = self.standardized_joint_log_prob(xi, zi)[0]
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


