"""Uncertainty of an ensemble's per-pixel class probabilities (numpy reference).

For ``M`` members with probabilities ``p_m`` (classes c) at one pixel:

* mean: ``p = (1/M) sum_m p_m``
* predictive entropy (total uncertainty): ``H[p] = -sum_c p_c log p_c``
* expected entropy (aleatoric): ``E[H] = (1/M) sum_m H[p_m]``
* mutual information (epistemic, the members' disagreement): ``MI = H[p] - E[H] >= 0``
* member variance per class: ``Var_c = (1/M) sum_m (p_m,c - p_c)^2``
* presence entropy (total uncertainty of "is there a column", ``f = 1 - p_background``):
  ``B[f] = -f log f - (1 - f) log(1 - f)``, at most log 2

Logarithms are natural (nats); ``log`` is taken of ``max(p, EPS)`` so that zero
probabilities contribute zero (``p + EPS`` would do in numpy, but the ONNX export's optimiser removes
an added 1e-8 as a no-op, so the graph clamps, and so does this reference).  The ONNX graph computes
the same quantities but the presence entropy (``models/training/ensemble.py``); tests compare the two.  The
presence entropy is computed here only, from the graph's mean probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-8


@dataclass(frozen=True)
class EnsembleUncertainty:
    """Per-pixel outputs of an ensemble.

    Attributes
    ----------
    mean_probs : (C, H, W) float32, mean class probabilities.
    entropy : (H, W) float32, predictive entropy (nats).
    mutual_info : (H, W) float32, epistemic uncertainty (nats).
    variance : (C, H, W) float32, member variance of each class probability.
    """

    mean_probs: np.ndarray
    entropy: np.ndarray
    mutual_info: np.ndarray
    variance: np.ndarray


def entropy(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """Entropy ``-sum p log(max(p, EPS))`` along ``axis`` (nats)."""
    return -np.sum(probs * np.log(np.maximum(probs, EPS)), axis=axis)


def binary_entropy(f: np.ndarray) -> np.ndarray:
    """Binary entropy ``-f log f - (1 - f) log(1 - f)`` of probabilities ``f`` (nats, elementwise; see :func:`entropy`).

    ``f`` is clipped to [0, 1] first: a mean probability a rounding step outside it (a reduced-precision
    provider, say) must not turn into NaN.
    """
    f = np.clip(f, 0.0, 1.0)
    return entropy(np.stack([f, 1.0 - f]))


def ensemble_uncertainty(member_probs: np.ndarray) -> EnsembleUncertainty:
    """Mean, predictive entropy, mutual information and variance of member probabilities.

    Parameters
    ----------
    member_probs
        (M, C, H, W) probabilities of M members (each sums to 1 over C).

    Returns
    -------
    EnsembleUncertainty
    """
    p = np.asarray(member_probs, dtype=np.float64)
    if p.ndim != 4:
        raise ValueError(f"member_probs must have shape (M, C, H, W), got {p.shape}")
    mean = p.mean(axis=0)
    total = entropy(mean, axis=0)
    expected = entropy(p, axis=1).mean(axis=0)
    return EnsembleUncertainty(
        mean.astype(np.float32),
        total.astype(np.float32),
        np.maximum(total - expected, 0.0).astype(np.float32),
        p.var(axis=0).astype(np.float32),
    )
