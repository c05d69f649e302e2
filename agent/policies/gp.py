"""A Gaussian-process surrogate (gpytorch) shared by ``bayes`` and ``dkl``: fit, predict, sample.

The only agent module that imports torch; the policy registry imports it lazily, so the baselines and
the loop run without torch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import gpytorch
import numpy as np
import torch
from scipy.special import ndtr


@contextmanager
def _quiet_numerics() -> Iterator[None]:
    """Gpytorch warns when it adds jitter or clamps a tiny negative variance; both are expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpytorch.utils.warnings.NumericalWarning)
        yield


#: Exact Cholesky solves up to this many points (gpytorch's default switches to iterative solvers at 800,
#: which is far slower for the few thousand points a session holds).
_CHOLESKY_UP_TO = 5000


def standardisation(y: np.ndarray) -> tuple[float, float]:
    """Mean and spread (standard deviation) of the rewards ``y``, without overflow.

    Rewards spread over ~1e154 or more overflow ``y.std()`` (the squares pass 1e308); then the spread
    is computed on the rewards scaled to [-1, 1].  The spread is 1 where the rewards are (nearly) all
    equal.
    """
    y = np.asarray(y, dtype=np.float64)
    mean = float(np.mean(y))
    if len(y) < 2:
        return mean, 1.0
    with np.errstate(over="ignore"):
        spread = float(np.std(y))
    if not math.isfinite(spread):
        scale = float(np.max(np.abs(y - mean)))
        spread = scale * float(np.std((y - mean) / scale))
    return mean, spread if spread > 1e-9 else 1.0


class _ExactGP(gpytorch.models.ExactGP):
    """Constant mean, scaled Matern-5/2 kernel, optionally on learned features."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        likelihood: gpytorch.likelihoods.GaussianLikelihood,
        features: torch.nn.Module | None,
        dims: int,
    ) -> None:
        super().__init__(x, y, likelihood)
        self.features = features
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=dims))

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        z = self.features(x) if self.features is not None else x
        return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))


def perceptron(inputs: int, hidden: int, outputs: int, seed: int) -> torch.nn.Module:
    """A two-layer perceptron with tanh activations (the feature extractor of deep kernel learning)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, outputs), torch.nn.Tanh()
    )


class GPSurrogate:
    """Exact GP regression of a scalar reward, targets standardised internally.

    Hyperparameters (and the feature extractor's weights, for deep kernel learning) are refitted by
    maximising the exact marginal log likelihood with Adam every ``refit_every`` new observations; in
    between, new data only conditions the posterior (cheap: one Cholesky factorisation).

    Parameters
    ----------
    dims
        Input dimension seen by the kernel (the feature extractor's output size when there is one).
    features
        Optional ``torch.nn.Module`` mapping inputs to ``dims`` features (deep kernel learning).
    refit_every, train_iters, learning_rate
        Refit schedule and optimiser settings (refits after the first take a third of ``train_iters``).
    max_points
        Only the most recent observations are kept (bounded memory and time).
    fit_points
        Hyperparameters are fitted on a random subset of at most this many observations.
    seed
        Seeds torch before each fit, so runs are reproducible.
    """

    def __init__(
        self,
        dims: int,
        features: torch.nn.Module | None = None,
        refit_every: int = 5,
        train_iters: int = 60,
        learning_rate: float = 0.05,
        max_points: int = 2000,
        fit_points: int = 256,
        seed: int = 0,
    ) -> None:
        self.fit_points = fit_points
        self.dims, self.refit_every, self.train_iters = dims, refit_every, train_iters
        self.learning_rate, self.max_points, self.seed = learning_rate, max_points, seed
        self.likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=gpytorch.constraints.GreaterThan(1e-4)
        )
        self.features = features
        self.model: _ExactGP | None = None
        self.fits = 0
        self._fitted_at = 0
        self._y_mean, self._y_std = 0.0, 1.0
        self.last_fit_s = 0.0

    def update(self, x: np.ndarray, y: np.ndarray) -> bool:
        """Condition on all observations ``x`` (m, d_in), ``y`` (m,); refit when due. Returns True if refitted."""
        x, y = x[-self.max_points :], y[-self.max_points :]
        self._y_mean, self._y_std = standardisation(y)
        tx = torch.as_tensor(x, dtype=torch.float32)
        ty = torch.as_tensor((y - self._y_mean) / self._y_std, dtype=torch.float32)
        if self.model is None:
            torch.manual_seed(self.seed)
            self.model = _ExactGP(tx, ty, self.likelihood, self.features, self.dims)
        else:
            self.model.set_train_data(tx, ty, strict=False)
        due = self.fits == 0 or len(y) - self._fitted_at >= self.refit_every
        if due:
            self._fit()
            self._fitted_at = len(y)
        return due

    def _fit(self) -> None:
        assert self.model is not None
        torch.manual_seed(self.seed + self.fits)
        self.model.train()
        self.likelihood.train()
        optimiser = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(self.likelihood, self.model)
        x_all, y_all = self.model.train_inputs[0], self.model.train_targets
        x, y = x_all, y_all
        if len(y) > self.fit_points:  # hyperparameters from a random subset; the posterior uses every point
            keep = torch.randperm(len(y))[: self.fit_points]
            x, y = x[keep], y[keep]
            self.model.set_train_data(x, y, strict=False)
        with _quiet_numerics(), gpytorch.settings.max_cholesky_size(_CHOLESKY_UP_TO):
            # later refits start from the previous hyperparameters and need fewer steps
            for _ in range(self.train_iters if self.fits == 0 else max(1, self.train_iters // 3)):
                optimiser.zero_grad()
                loss = -mll(self.model(x), y)
                loss.backward()
                optimiser.step()
        self.model.set_train_data(x_all, y_all, strict=False)
        self.fits += 1

    def _posterior(self, x: np.ndarray, full_cov: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact posterior of the standardised latent at ``x``: mean (n,), and variance (n,) or covariance (n, n).

        ``mu* = m + K*^T (K + s^2 I)^-1 (y - m)``, ``Sigma* = K** - V^T V`` with ``V = L^-1 K*`` and
        ``L L^T = K + s^2 I``, in float64 (about 0.15 s for 1000 observations and 4096 candidates on two
        cores, where gpytorch's generic path takes four times longer).
        """
        assert self.model is not None, "update() first"
        m = self.model
        with torch.no_grad():
            train = m.train_inputs[0]
            query = torch.as_tensor(x, dtype=torch.float32)
            if m.features is not None:
                train, query = m.features(train), m.features(query)
            kernel = m.covar_module
            k = kernel(train).to_dense().double()
            k = k + (self.likelihood.noise.double() + 1e-6) * torch.eye(len(k), dtype=torch.float64)
            k_star = kernel(train, query).to_dense().double()
            chol = _cholesky(k)
            mean0 = m.mean_module.constant.double()
            alpha = torch.cholesky_solve((m.train_targets.double() - mean0)[:, None], chol)
            mean = mean0 + (k_star.T @ alpha)[:, 0]
            v = torch.linalg.solve_triangular(chol, k_star, upper=False)
            if full_cov:
                return mean, kernel(query).to_dense().double() - v.T @ v
            return mean, (kernel(query, diag=True).double() - (v**2).sum(0)).clamp_min(1e-12)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the latent reward at ``x`` (n, d_in), reward units."""
        mean, var = self._posterior(x, full_cov=False)
        return self._y_mean + self._y_std * mean.numpy(), self._y_std * np.sqrt(var.numpy())

    def sample(self, x: np.ndarray, seed: int) -> np.ndarray:
        """One joint posterior sample of the latent reward at ``x`` (n, d_in), reward units."""
        mean, cov = self._posterior(x, full_cov=True)
        chol = _cholesky(cov + 1e-8 * torch.eye(len(cov), dtype=torch.float64))
        z = torch.as_tensor(np.random.default_rng(seed).standard_normal(len(mean)))
        return self._y_mean + self._y_std * (mean + chol @ z).numpy()

    @property
    def best(self) -> float:
        """Largest observed reward (standardised targets mapped back)."""
        assert self.model is not None
        return self._y_mean + self._y_std * float(self.model.train_targets.max())


def _cholesky(matrix: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor, adding diagonal jitter (up to 1e-3 of the mean diagonal) when needed."""
    scale = float(matrix.diagonal().mean().clamp_min(1e-12))
    jitter = 0.0
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(matrix + jitter * scale * torch.eye(len(matrix), dtype=matrix.dtype))
        if int(info) == 0:
            return chol
        jitter = 1e-9 if jitter == 0.0 else jitter * 10
    raise np.linalg.LinAlgError("covariance is not positive definite even with jitter")


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, xi: float = 0.01) -> np.ndarray:
    """``EI(x) = (mu - f* - xi) Phi(z) + sigma phi(z)``, ``z = (mu - f* - xi) / sigma`` (maximisation)."""
    std = np.maximum(std, 1e-12)
    gain = mean - best - xi
    z = gain / std
    return gain * ndtr(z) + std * np.exp(-0.5 * z**2) / np.sqrt(2.0 * np.pi)
