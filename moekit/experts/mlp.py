"""Neural-network experts: a small multilayer perceptron per expert.

Each expert is an MLP ``x -> h_1 -> ... -> out`` whose output parametrises the
distribution of y: a (heteroscedastic) Gaussian or a categorical distribution.
K experts of the family are *stacked*: every layer's weight is a ``(K, in, out)``
tensor and the K networks are evaluated in one batched matrix product
(:func:`torch.baddbmm`), so every parameter carries the leading expert axis
that :meth:`~moekit.experts.base.Expert.select`, ``unstack`` and ``stack``
rely on.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Independent, Normal

from .._mstep import gradient_maximize
from .base import Expert

__all__ = ["MLPExpert"]

# Same names as moekit.gates (kept local so that this module never imports the gates).
_ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu, "elu": F.elu, "silu": F.silu}
_HEADS = ("gaussian", "categorical")


class MLPExpert(Expert):
    """A multilayer-perceptron expert (Gaussian or categorical output), fitted by gradient steps.

    With ``head="gaussian"`` the network outputs, for every row, a mean and a
    log-scale for each output: the noise is *heteroscedastic* (its scale
    depends on x).  A vector target is modelled with independent coordinates,
    ``Independent(Normal(mean, scale), 1)`` (a diagonal covariance); use a
    :class:`~moekit.LinearGaussianExpert` when correlated noise matters.  The
    variance is ``exp(2 * log_scale) + var_floor``, a smooth floor: the scale
    is never below ``sqrt(var_floor)`` and, unlike a hard clamp, its gradient
    never vanishes at the floor.

    With ``head="categorical"`` the network outputs ``n_classes`` logits and
    y holds integer class labels ``0 .. n_classes - 1``.

    Inside EM the M-step is generalised: :meth:`fit_weighted` takes
    ``m_step_iter`` Adam steps on each expert's weighted *mean*
    log-likelihood (weights normalised per expert, so that an expert's step
    size does not depend on its share of the data) and keeps the new
    parameters of an expert only if its weighted log-likelihood did not
    decrease.  Every expert's weighted objective therefore never falls, and
    neither does their sum, the EM auxiliary function, so the log-likelihood
    of a mixture trained by :func:`~moekit.fit_em` never decreases.

    Parameters
    ----------
    n_features : int
        Number of input columns d_x.
    n_outputs : int or None
        Gaussian head: ``None`` for a scalar target (event shape ``()``),
        otherwise d_y (event shape ``(d_y,)``).  Must be ``None`` for the
        categorical head.
    head : {"gaussian", "categorical"}
        Output distribution.
    n_classes : int or None
        Number of classes (categorical head only, at least 2).
    hidden_layer_sizes : sequence of int
        Widths of the hidden layers; ``()`` gives a linear model (a
        heteroscedastic linear regression or a multinomial logit).
    activation : {"tanh", "relu", "gelu", "elu", "silu"}
        Hidden-layer nonlinearity.
    n_experts : int or None
        ``None`` for one expert; K for K stacked experts evaluated together.
    m_step_iter : int
        Adam steps per M-step (the initial fit from responsibilities takes
        five times as many).
    learning_rate : float
        Adam learning rate.  Gradient steps have a fixed size in parameter
        space, so standardise x and (continuous) y for fast training.
    var_floor : float
        Lower bound on every variance, in y's units squared (Gaussian head).
    dtype : torch.dtype
        Parameter dtype (float64 by default, as EM wants).
    generator : torch.Generator, optional
        Source of randomness for the initial weights (the global RNG is
        never touched when it is given, and is not stored).

    Attributes
    ----------
    weight_0, bias_0, ..., weight_L, bias_L : torch.nn.Parameter
        Layer l has ``weight_l`` of shape (K, in_l, out_l) and ``bias_l`` of
        shape (K, 1, out_l) (K = 1 for a single expert).  For the Gaussian
        head the last layer's ``out`` is ``2 * d_y`` (means first, then
        log-scales); for the categorical head it is ``n_classes``.

    Shapes
    ------
    forward(x): x (n, d_x) -> distribution with batch shape (n,) [single] or
    (n, K) [stacked]; event shape () [scalar y or categorical] or (d_y,)
    [vector y].
    log_prob(x, y): y (n,) or (n, d_y); integer labels (n,) for the
    categorical head -> (n,) single, (n, K) stacked.
    fit_weighted(x, y, weight): weight (n,) single or (n, K) stacked.

    Examples
    --------
    A single heteroscedastic regression network:

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.linspace(-1, 1, 200, dtype=torch.float64)[:, None]
    >>> y = torch.sin(3 * x[:, 0]) + 0.1 * torch.randn(200, generator=g, dtype=torch.float64)
    >>> e = MLPExpert(1, hidden_layer_sizes=(16,), m_step_iter=30, learning_rate=3e-2, generator=g)
    >>> before = float(e.log_prob(x, y).detach().mean())
    >>> _ = e.fit_weighted(x, y)
    >>> float(e.log_prob(x, y).detach().mean()) > before
    True
    >>> e(x).batch_shape, e.n_parameters()
    (torch.Size([200]), 66)

    Three experts evaluated in one batched call, and the same numbers from
    the unstacked list:

    >>> s = MLPExpert(1, n_experts=3, generator=g)
    >>> s(x).batch_shape
    torch.Size([200, 3])
    >>> parts = s.unstack()
    >>> torch.allclose(s.log_prob(x, y), torch.stack([p.log_prob(x, y) for p in parts], 1))
    True

    A classifier with integer labels:

    >>> c = MLPExpert(2, head="categorical", n_classes=3, generator=g)
    >>> c(torch.zeros(5, 2, dtype=torch.float64)).probs.shape
    torch.Size([5, 3])
    >>> c.y_kind
    'categorical'
    """

    has_suff_stats = False
    m_step_exact = False

    def __init__(
        self,
        n_features: int,
        n_outputs: int | None = None,
        head: str = "gaussian",
        n_classes: int | None = None,
        hidden_layer_sizes: Sequence[int] = (32,),
        activation: str = "tanh",
        n_experts: int | None = None,
        m_step_iter: int = 20,
        learning_rate: float = 1e-2,
        var_floor: float = 1e-6,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ):
        super().__init__(n_experts)
        if not (isinstance(n_features, int) and n_features >= 0):
            raise ValueError(f"n_features must be a non-negative int, got {n_features!r}")
        if head not in _HEADS:
            raise ValueError(f"head must be one of {_HEADS}, got {head!r}")
        if head == "gaussian":
            if n_outputs is not None and not (isinstance(n_outputs, int) and n_outputs >= 1):
                raise ValueError(f"n_outputs must be None (scalar y) or a positive int, got {n_outputs!r}")
            if n_classes is not None:
                raise ValueError("n_classes is only used with head='categorical'; drop it or set head='categorical'")
        else:
            if not (isinstance(n_classes, int) and n_classes >= 2):
                raise ValueError(f"head='categorical' needs n_classes, an int >= 2, got {n_classes!r}")
            if n_outputs is not None:
                raise ValueError("n_outputs must be None with head='categorical' (y holds integer labels)")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        hidden = [int(h) for h in hidden_layer_sizes]
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must hold positive ints, got {tuple(hidden_layer_sizes)!r}")
        if not (isinstance(m_step_iter, int) and m_step_iter >= 0):
            raise ValueError(f"m_step_iter must be a non-negative int, got {m_step_iter!r}")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        if not var_floor > 0:
            raise ValueError(f"var_floor must be > 0, got {var_floor!r}")
        self.n_features = n_features
        self.n_outputs = n_outputs
        self.head = head
        self.n_classes = n_classes
        self.hidden_layer_sizes = tuple(hidden)
        self.activation = activation
        self.m_step_iter = m_step_iter
        self.learning_rate = float(learning_rate)
        self.var_floor = float(var_floor)
        if head == "categorical":
            self.y_kind = "categorical"
        sizes = [n_features, *hidden, self._n_out]
        self._sizes = sizes
        k = self._k
        for i in range(len(sizes) - 1):
            fan_in, fan_out = sizes[i], sizes[i + 1]
            bound = 1.0 / max(fan_in, 1) ** 0.5
            w = (torch.rand(k, fan_in, fan_out, generator=generator, dtype=dtype) * 2 - 1) * bound
            b = (torch.rand(k, 1, fan_out, generator=generator, dtype=dtype) * 2 - 1) * bound
            self.register_parameter(f"weight_{i}", nn.Parameter(w))
            self.register_parameter(f"bias_{i}", nn.Parameter(b))

    # ------------------------------------------------------------ structure
    @property
    def _d(self) -> int:
        """Event size of a Gaussian y (1 for scalar y)."""
        return 1 if self.n_outputs is None else self.n_outputs

    @property
    def _n_out(self) -> int:
        return 2 * self._d if self.head == "gaussian" else self.n_classes

    @property
    def _n_layers(self) -> int:
        return len(self._sizes) - 1

    def extra_repr(self) -> str:
        out = f"n_outputs={self.n_outputs}" if self.head == "gaussian" else f"n_classes={self.n_classes}"
        return (
            f"n_features={self.n_features}, head={self.head!r}, {out}, "
            f"hidden_layer_sizes={self.hidden_layer_sizes}, activation={self.activation!r}, "
            f"n_experts={self.n_experts}"
        )

    def n_parameters(self) -> int:
        """Number of free parameters per expert (weights and biases of one network)."""
        s = self._sizes
        return sum(s[i] * s[i + 1] + s[i + 1] for i in range(len(s) - 1))

    # ----------------------------------------------------------- network
    def _dtype(self) -> torch.dtype:
        return self.weight_0.dtype

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"x must have shape (n, {self.n_features}) for this expert, got {tuple(x.shape)}"
            )
        return x.to(dtype=self._dtype(), device=self.weight_0.device)

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """Raw network outputs of every expert.

        Shapes
        ------
        x : (n, d_x) -> (n, K, out), ``out = 2 * d_y`` (Gaussian: means then
        log-scales) or ``n_classes`` (logits).  K = 1 for a single expert.
        """
        x = self._check_x(x)
        act = _ACTIVATIONS[self.activation]
        h = x.unsqueeze(0).expand(self._k, -1, -1)  # (K, n, d_x)
        last = self._n_layers - 1
        for i in range(self._n_layers):
            h = torch.baddbmm(getattr(self, f"bias_{i}"), h, getattr(self, f"weight_{i}"))
            if i < last:
                h = act(h)
        return h.permute(1, 0, 2)  # (n, K, out)

    def _gaussian_params(self, out: torch.Tensor):
        """Means and floored scales from raw outputs (n, K, 2d) -> two (n, K, d) tensors."""
        d = self._d
        loc, raw = out[..., :d], out[..., d:]
        # variance = exp(2 raw) + var_floor, computed in log space; capped so exp cannot overflow
        cap = 0.25 * math.log(torch.finfo(out.dtype).max)
        log_scale = (0.5 * torch.logaddexp(2.0 * raw, torch.full_like(raw, math.log(self.var_floor)))).clamp_max(cap)
        return loc, log_scale.exp()

    def _dist_nk(self, x: torch.Tensor):
        """The distribution with batch shape (n, K), whatever the form."""
        out = self.network(x)
        if self.head == "categorical":
            return Categorical(logits=out, validate_args=False)
        loc, scale = self._gaussian_params(out)
        if self.n_outputs is None:
            return Normal(loc[..., 0], scale[..., 0], validate_args=False)
        return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)

    def forward(self, x: torch.Tensor):
        out = self.network(x)
        if not self.stacked:
            out = out[:, 0]
        if self.head == "categorical":
            return Categorical(logits=out, validate_args=False)
        loc, scale = self._gaussian_params(out)
        if self.n_outputs is None:
            return Normal(loc[..., 0], scale[..., 0], validate_args=False)
        return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)

    # ------------------------------------------------------------ likelihood
    def _check_y(self, y: torch.Tensor, n: int) -> torch.Tensor:
        if y.shape[0] != n:
            raise ValueError(f"x has {n} rows but y has {y.shape[0]}; they must have the same length")
        if self.head == "categorical":
            if y.dim() == 2 and y.shape[1] == 1:
                y = y[:, 0]
            if y.dim() != 1:
                raise ValueError(f"a categorical expert needs integer labels of shape (n,), got {tuple(y.shape)}")
            if y.is_floating_point() and not bool((y == y.round()).all()):
                raise ValueError("categorical labels must be integers 0 .. n_classes - 1, got non-integer values")
            y = y.long()
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
                raise ValueError(
                    f"categorical labels must lie in 0 .. {self.n_classes - 1} (n_classes={self.n_classes}), "
                    f"got values in [{int(y.min())}, {int(y.max())}]; encode the classes as 0..C-1 "
                    "(e.g. sklearn.preprocessing.LabelEncoder) or raise n_classes"
                )
            return y.to(self.weight_0.device)
        y = y.to(dtype=self._dtype(), device=self.weight_0.device)
        if self.n_outputs is None:
            if y.dim() == 2 and y.shape[1] == 1:
                y = y[:, 0]
            if y.dim() != 1:
                raise ValueError(
                    f"this expert models a scalar y (n_outputs=None) but y has shape {tuple(y.shape)}; "
                    f"pass n_outputs={y.shape[1] if y.dim() == 2 else '...'} for a vector target"
                )
        elif y.dim() != 2 or y.shape[1] != self.n_outputs:
            raise ValueError(f"y must have shape (n, {self.n_outputs}), got {tuple(y.shape)}")
        return y

    def _log_prob_nk(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p_k(y | x) as (n, K) for any form (y already checked)."""
        return self._dist_nk(x).log_prob(y.unsqueeze(1))

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Log-density (log-probability for labels) of y under each expert.

        Shapes
        ------
        x : (n, d_x); y : (n,) or (n, d_y) -> (n,) single, (n, K) stacked.
        """
        y = self._check_y(y, x.shape[0])
        return self._out(self._log_prob_nk(x, y))

    # ---------------------------------------------------------------- M-step
    def _drop_stale_optimizer(self) -> None:
        """Forget an Adam state that refers to other tensors (after stack/deepcopy/replacement)."""
        opt = self.__dict__.get("_gem_optimizer")
        if opt is None:
            return
        params = [p for p in self.parameters() if p.requires_grad]
        old = opt.param_groups[0]["params"]
        if len(old) != len(params) or any(a is not b for a, b in zip(old, params)):
            del self.__dict__["_gem_optimizer"]

    def _gem(self, x: torch.Tensor, y: torch.Tensor, weight, n_steps: int) -> None:
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        w = self._weight_nk(weight, x.shape[0], x).to(x.device)
        # normalise per expert: each expert maximises its weighted *mean* log-likelihood
        sw = w.sum(0)
        wn = w / sw.clamp_min(torch.finfo(w.dtype).tiny)

        def per_expert() -> torch.Tensor:  # (K,)
            return (wn * self._log_prob_nk(x, y)).sum(0)

        params = [p for p in self.parameters() if p.requires_grad]
        if n_steps <= 0 or not params:
            return
        with torch.no_grad():
            f0 = per_expert()
        backup = [p.detach().clone() for p in params]
        self._drop_stale_optimizer()
        gradient_maximize(self, lambda: per_expert().sum(), n_steps=n_steps, lr=self.learning_rate)
        # gradient_maximize only guards the sum; keep each expert's new parameters only if
        # *its* objective did not fall, so that sum_k sum_i w_ik log p_k never decreases.
        with torch.no_grad():
            f1 = per_expert()
            worse = ~(f1 >= f0)  # NaN counts as worse
            if bool(worse.any()):
                for p, b in zip(params, backup):
                    p[worse] = b[worse]

    def fit_weighted(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None):
        """Generalised weighted M-step: ``m_step_iter`` Adam steps, kept per expert only if they help.

        Maximises, for every expert k, ``sum_i w_ik log p_k(y_i | x_i) / sum_i w_ik``.
        An expert whose objective would decrease keeps its previous parameters,
        so ``sum(weight * log p)`` never decreases.  The Adam moments are kept
        between calls (see :func:`~moekit._mstep.gradient_maximize`).

        Shapes
        ------
        x : (n, d_x); y : (n,) or (n, d_y); weight : (n,) single or (n, K) stacked.
        """
        self._gem(x, y, weight, self.m_step_iter)
        return self

    @torch.no_grad()
    def _init_output_bias(self, x: torch.Tensor, y: torch.Tensor, weight) -> None:
        """Shift the last layer's biases so each expert starts at its weighted moments / class frequencies."""
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        w = self._weight_nk(weight, x.shape[0], x).to(x.device)
        sw = w.sum(0)
        keep = sw > 1e-12 * sw.sum().clamp_min(torch.finfo(w.dtype).tiny)
        if not bool(keep.any()):
            return
        wn = (w / sw.clamp_min(torch.finfo(w.dtype).tiny))[:, :, None]  # (n, K, 1)
        out = self.network(x)  # (n, K, out)
        bias = getattr(self, f"bias_{self._n_layers - 1}")  # (K, 1, out)
        if self.head == "categorical":
            onehot = F.one_hot(y, self.n_classes).to(out.dtype)  # (n, C)
            freq = (wn * onehot[:, None, :]).sum(0)  # (K, C)
            target = (freq + 1e-3).log()
            shift = target - (wn * out).sum(0)
        else:
            d = self._d
            yy = y[:, None] if y.dim() == 1 else y  # (n, d)
            loc, raw = out[..., :d], out[..., d:]
            shift_loc = (wn * (yy[:, None, :] - loc)).sum(0)  # (K, d)
            resid = yy[:, None, :] - loc - shift_loc
            var = (wn * resid**2).sum(0).clamp_min(self.var_floor)
            shift_raw = 0.5 * var.log() - (wn * raw).sum(0)
            shift = torch.cat([shift_loc, shift_raw], dim=-1)
        bias[keep, 0] += shift[keep].to(bias.dtype)

    def init_from_responsibilities(self, x: torch.Tensor, y: torch.Tensor, weight):
        """Initial fit from (possibly hard) responsibilities.

        Sets every expert's output biases to its weighted mean and log
        standard deviation (Gaussian) or log class frequencies (categorical),
        then takes ``5 * m_step_iter`` guarded Adam steps.

        Shapes
        ------
        x : (n, d_x); y : (n,) or (n, d_y); weight : (n,) single or (n, K) stacked.
        """
        self._init_output_bias(x, y, weight)
        self._gem(x, y, weight, 5 * self.m_step_iter)
        return self
