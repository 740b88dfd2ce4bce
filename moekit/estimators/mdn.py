"""The scikit-learn estimator for mixture density networks."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.base import RegressorMixin

from .._validation import OneOf, Real, check_not_constant, check_representable, check_scale, torch_dtype
from ..mdn import ACTIVATIONS, MixtureDensityNetwork
from ..training.mdn import fit_mdn
from ..training.passes import is_source
from .base import ConditionalMixtureEstimator, RegressorTargets, storable
from .mdn_streaming import fit_streamed
from .streaming import StreamingMixin

__all__ = ["MDNRegressor"]

_NETWORK_SETTINGS = {"n_features", "n_outputs", "n_components", "hidden_layer_sizes", "activation", "covariance",
                     "scale_floor"}


@storable
class MDNRegressor(StreamingMixin, RegressorTargets, RegressorMixin, ConditionalMixtureEstimator):
    """Mixture density network regression (scikit-learn estimator).

    Models the whole conditional density ``p(y | x)`` as a K-component
    Gaussian mixture whose weights, means and covariances are outputs of one
    neural network (:class:`~moekit.mdn.MixtureDensityNetwork`), trained
    by :func:`~moekit.training.mdn.fit_mdn`: minibatch Adam from a
    Netlab-style start (the network first outputs a Gaussian mixture fitted
    to y), with a validation split, early stopping, learning-rate decay,
    averaging of the iterates and gradient clipping.  Inputs and targets are
    standardised inside; predictions are in the original units.  Any
    magnitude the network's dtype holds works (columns between about 9.6e-35
    and 8.3e34 for float32, :func:`moekit._validation.supported_magnitudes`
    with ``power=1``); X beyond float32's range gives a ``ValueError`` naming
    X, in ``fit`` and in every prediction, instead of NaN (use
    ``dtype="float64"``).

    ``fit`` also takes a source of batches (:mod:`moekit.data`, e.g.
    :class:`~moekit.data.ParquetSource`): one within ``memory_budget`` is read
    whole and fitted exactly as its arrays; a larger one trains on minibatches
    streamed from it, its standardisation summed in a first pass and its
    validation rows a seeded share of the rows
    (:mod:`moekit.estimators.mdn_streaming`).  With ``process_group=`` every
    process reads the whole source and trains with DistributedDataParallel (see
    :func:`~moekit.training.mdn.fit_mdn`).  ``predict``, ``predict_gate``,
    ``predict_quantiles``, ``score_samples``, ``responsibilities``,
    ``sample_y`` and ``score`` read a source batch by batch (``iter_predict``).

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
        when the density has sharp edges (see
        :func:`~moekit.training.mdn.fit_mdn`).
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the rows, stop when their NLL has
        not improved for ``patience`` epochs, and keep the best network.
    validation_fraction : float, default=0.1
    patience : int, default=150
        Epochs without a better validation NLL before stopping; the learning
        rate is halved after every 50 such epochs (see
        :func:`~moekit.training.mdn.fit_mdn`).
    keep : {"best", "recent"}, default="best"
        Which validated network to keep: the best one, or the most recent one
        within one paired standard error of it (see
        :func:`~moekit.training.mdn.fit_mdn`).
    scale_floor : float, default=1e-3
        Floor of every component standard deviation, relative to the standard
        deviation of each target column.  A constant target column is refused
        with a ``ValueError`` (its likelihood would only reflect this floor);
        a constant input column (constant up to rounding, at any scale) is
        left unscaled.
    reseed_dead : bool, default=False
        Move dead components (explaining less than 0.1 % of the data) onto
        poorly explained rows during training.  Without it, dead components are
        reported by a :class:`~moekit.training.mdn.DeadComponentWarning`.
    random_state : int, RandomState instance or None
    device : str, default="cpu"
        E.g. "cuda".
    dtype : {"float32", "float64"}, default="float32"
    verbose : int, default=0
        Progress bar while training.
    missing : {"error", "drop"}, default="error"
        Rows with a missing input or target (NaN): an error naming the first
        rows and columns, or dropped with a warning (``n_rows_dropped_``).

    Attributes
    ----------
    model_ : MixtureDensityNetwork
    fit_result_ : moekit.training.mdn.MDNFitResult
    n_iter_ : int
        Epochs run.
    best_epoch_ : int
        Epoch whose network was kept.
    usage_ : ndarray (K,)
        Share of the training data each component explains.
    dead_components_ : list of int
    log_likelihood_ : float
        Total weighted log-likelihood ``sum_i w_i log p(y_i | x_i)`` of all
        rows with positive weight (original units; as R reports it).
    mean_log_likelihood_ : float
        The same per unit weight.
    log_likelihood_history_, mean_log_likelihood_history_ : ndarray
        Total and mean training log-likelihood per epoch, over the training
        split (``fit_result_.train_weight``) when there is a validation split.
    validation_history_ : ndarray
        Mean validation log-likelihood per epoch.
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
    >>> from moekit.estimators import MDNRegressor
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
        missing="error",
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
        self.missing = missing

    _parameter_specs = {"activation": OneOf(*ACTIVATIONS), "learning_rate": Real(0.0, low_open=True),
                        "validation_fraction": Real(0.0, 0.9)}

    def build_model(self, n_features, y_info, dtype, generator) -> MixtureDensityNetwork:
        """A new network for ``n_features`` inputs and a scalar (``y_info=None``) or ``y_info``-dimensional y."""
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if isinstance(sizes, numbers.Integral) else tuple(int(h) for h in sizes)
        return MixtureDensityNetwork(
            n_features, y_info, int(self.n_components), sizes, self.activation, self.covariance,
            float(self.scale_floor), dtype=dtype, device=self.device, generator=generator,
        )

    def _x(self, X) -> torch.Tensor:
        x = super()._x(X)
        check_representable(x, "X")  # finite X beyond float32's range: an error, not NaN predictions
        return x

    def _fit_targets(self, y, w):
        check_scale(torch.as_tensor(y, dtype=torch.float64, device="cpu"), "y", power=1, dtype=torch_dtype(self.dtype))
        check_not_constant(y, w, "y")
        return super()._fit_targets(y, w)

    def _train(self, model, x, y, w, seed, rng, generator):
        check_scale(x, "X", power=1, columns=getattr(self, "feature_names_in_", None))  # named as the user knows it
        return fit_mdn(
            model, x, y, w, max_epochs=int(self.max_epochs), batch_size=int(self.batch_size),
            learning_rate=float(self.learning_rate), weight_decay=float(self.weight_decay),
            input_noise=float(self.input_noise), target_noise=float(self.target_noise),
            validation_fraction=float(self.validation_fraction), early_stopping=bool(self.early_stopping),
            patience=int(self.patience), keep=self.keep, reseed_dead=bool(self.reseed_dead), random_state=seed,
            verbose=int(self.verbose), process_group=self.__dict__.get("_process_group"),  # fit(source, process_group=)
        )

    # ------------------------------------------------------------ sources
    def _gradient_trained(self) -> bool:
        return True  # minibatch training: a source is read whole, or streamed by fit_mdn; DDP with a process group

    def _stream_by_gradient(self, source, budget):
        return fit_streamed(self, source, budget)  # minibatches streamed from the source

    def _set_model_attributes(self, result) -> None:
        self.best_epoch_ = result.best_epoch
        self.usage_ = result.usage
        self.dead_components_ = result.dead_components
        self.validation_history_ = np.asarray(result.validation_history if result.validation_history is not None else [])

    def model_structure(self) -> dict:
        """The network's configuration."""
        return {"config": self.model_.get_config()}

    def rebuild_model(self, structure: dict) -> MixtureDensityNetwork:
        """The network of the stored configuration."""
        cfg = structure.get("config") if isinstance(structure, dict) else None
        if not isinstance(cfg, dict):
            raise ValueError("the network's configuration is missing")
        if set(cfg) - _NETWORK_SETTINGS:
            raise ValueError(f"unknown network settings {sorted(set(cfg) - _NETWORK_SETTINGS)}")
        gen = torch.Generator().manual_seed(0)  # initial weights are overwritten by the stored tensors
        return MixtureDensityNetwork(**cfg, dtype=torch_dtype(self.dtype), generator=gen)

    def _y_tensor(self, y, n):
        y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=np.float64)
        if self._y_ndim == 2 and y.ndim == 2 and y.shape[0] == n and y.shape[1] != self.model_.n_outputs:
            raise ValueError(f"y must have {self.model_.n_outputs} columns like the training y, got {y.shape[1]}")
        return super()._y_tensor(y, n)

    def predict(self, X) -> np.ndarray:
        """Conditional mean E[y | x] over all output dimensions: (n,) or (n, d_y).

        ``X`` may be a source of batches, read batch by batch (see ``iter_predict``).
        """
        if is_source(X):
            return self._predict_source("predict", X)
        return self.predict_distribution(X).mean.cpu().numpy().astype(np.float64)

    def predict_gate(self, X) -> np.ndarray:
        """Mixing weights pi(x): (n, K), rows summing to one (``X`` may be a source of batches)."""
        if is_source(X):
            return self._predict_source("predict_gate", X)
        x = self._x(X)
        with torch.no_grad():
            return self.model_.log_gate(x).exp().cpu().numpy().astype(np.float64)

    def responsibilities(self, X, y=None) -> np.ndarray:
        """Posterior probability of each component given x and y: (n, K).

        ``X`` may be a source of batches (``y`` None: the source's targets are used).
        """
        if is_source(X):
            return self._predict_source("responsibilities", X, y=y)
        if y is None:
            raise ValueError("responsibilities needs y (the targets of X's rows): call responsibilities(X, y), or "
                             "pass a source of batches, which carries y")
        x = self._x(X)
        yt = self._y_tensor(y, x.shape[0])
        with torch.no_grad():
            return self.model_.log_responsibilities(x, yt).exp().cpu().numpy().astype(np.float64)

    def score_samples(self, X, y=None) -> np.ndarray:
        """Per-row log-density ``log p(y | x)`` in y's original units: (n,).

        ``X`` may be a source of batches (``y`` None: the source's targets are used).
        """
        return super().score_samples(X, y).astype(np.float64)

    def sample_y(self, X, n_samples: int = 1, random_state=None, *, offset=None, trials=None) -> np.ndarray:
        """Draw y ~ p(y | x) for every row: (n, n_samples) or (n, d_y, n_samples).

        ``X`` may be a source of batches, read batch by batch: one random stream runs through the
        batches (each batch draws afresh; a source of one batch draws as its arrays would).
        """
        if is_source(X):
            rng = np.random.default_rng(random_state)  # passed on as it is: each batch advances it
            return self._predict_source("sample_y", X, n_samples=n_samples, random_state=rng, offset=offset,
                                        trials=trials)
        return super().sample_y(X, n_samples, random_state, offset=offset, trials=trials)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.non_deterministic = False
        return tags
