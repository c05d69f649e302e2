"""The ideal observer of defects: what any detector could at best know about one site.

For each planted column of a simulated frame, the ideal observer knows everything the simulator
knows except that site's state: the frame's expected counts, every other column, the probe, the
dose, the thickness and the defect prior at the site.  The posterior of each state ``s`` of the
site's basis position (intact, each defect the lattice allows there) is

    P(s | x) ∝ π_s · Π_p Poisson(x_p; λ_p + Δ_s,p),
    Δ_s,p = N_e κ (w_s t - w_true) G_σ(p - r),

with ``x`` the detected counts, ``λ`` the expected counts of the true frame, ``N_e`` the
electrons per pixel (times detector efficiency), ``κ`` the cross-section per unit ``Z**1.7``,
``w_s t`` the state's weight times the local thickness, ``w_true`` the planted column's
weight, ``G_σ`` the area-normalised Gaussian of the effective probe at the column's position
``r``, and ``π_s`` the defect prior (``1 - p`` intact, ``p · r_s / Σ r`` for the defect rules
of the lattice).  The likelihood is that of the simulator's noise (Poisson counts plus Gaussian read noise).
The probe is taken as a Gaussian centred on the column's frame position, so scan distortion
within one column's footprint (line jitter, flyback) is not modelled: the figure is that of a
near-ideal detector, a bound on what segmentation of the image can reach on the same frames.

The class posterior (vacancy, dopant) sums the states of that class.  Ranking every column of
every frame by it gives the best pooled recall at a required precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, logsumexp

from simulators import ColumnClass, ColumnTruth, DefectKind, SimulatedFrame, Specimen
from simulators.sites import StateTable

#: The :class:`ColumnClass` of each :class:`DefectKind`.
CLASS_OF_KIND = np.array([int(DefectKind(k).column_class) for k in range(len(DefectKind))])


@dataclass(frozen=True)
class SitePosteriors:
    """Class posteriors of the planted columns of one frame (all shape (n,)).

    Attributes
    ----------
    truth_class, truth_kind : int, the planted :class:`ColumnClass` and :class:`DefectKind`.
    vacancy, dopant : float64, posterior probability of the class at the site.
    peak_counts : float64, expected counts at the centre of the site's intact column.
    """

    truth_class: np.ndarray
    truth_kind: np.ndarray
    vacancy: np.ndarray
    dopant: np.ndarray
    peak_counts: np.ndarray


def _site_states(table: StateTable, kind: np.ndarray, species: np.ndarray) -> np.ndarray:
    """(n, n_options) state indices of each column's basis site, padded with -1."""
    first = {
        (int(k), str(s)): i for i, (k, s) in reversed(list(enumerate(zip(table.kind, table.species, strict=True))))
    }
    site = np.array([table.site[first[(int(k), str(s))]] for k, s in zip(kind, species, strict=True)], dtype=int)
    options = [np.flatnonzero(table.site == s) for s in range(int(table.site.max()) + 1)]
    width = max(len(o) for o in options)
    padded = np.full((len(options), width), -1)
    for s, o in enumerate(options):
        padded[s, : len(o)] = o
    return padded[site] if len(site) else np.zeros((0, width), dtype=int)


def _priors(specimen: Specimen, table: StateTable, states: np.ndarray, p_defect: np.ndarray) -> np.ndarray:
    """(n, n_options) prior of each state: 1 - p intact, p times the rule's share for a defect."""
    lattice = specimen.lattice
    share = np.zeros(len(table.kind))
    for s, spec in enumerate(lattice.sites):
        rules = np.array([r.weight for r in spec.defects])
        share[table.first[s] + 1 : table.first[s] + 1 + len(rules)] = rules / rules.sum() if len(rules) else 0.0
    intact = table.kind[np.maximum(states, 0)] == DefectKind.NONE
    prior = np.where(intact, 1.0 - p_defect[:, None], p_defect[:, None] * share[np.maximum(states, 0)])
    return np.where(states >= 0, prior, 0.0)


def state_priors(specimen: Specimen, truth: ColumnTruth, defect_rate: float | None = None) -> tuple[np.ndarray, ...]:
    """The states each planted column's basis site may be in, and their priors: two (n, n_options) arrays.

    States index ``specimen.table`` (padded with -1, prior 0); the prior is the specimen's defect
    probability at the column, or ``defect_rate`` at every site where given.
    """
    if defect_rate is not None and not 0.0 < defect_rate < 1.0:
        raise ValueError(f"defect_rate must lie strictly between 0 and 1 (got {defect_rate!r})")
    states = _site_states(specimen.table, truth.kind, truth.species)
    p_defect = specimen.layout.hotspots.probability(truth.x_nm, truth.y_nm)
    if defect_rate is not None:
        p_defect = np.full_like(p_defect, defect_rate)
    return states, _priors(specimen, specimen.table, states, p_defect)


def _patches(frame: SimulatedFrame, row: np.ndarray, col: np.ndarray, half: int) -> tuple[np.ndarray, ...]:
    """Counts, expected counts and squared distances (pixels^2) on the (2 half + 1)^2 patch of each column."""
    pad = half + 1
    x = np.pad(frame.image.astype(np.float64), pad)
    lam = np.pad(frame.expected.astype(np.float64), pad)
    inside = np.pad(np.ones(frame.image.shape, bool), pad)
    off = np.arange(-half, half + 1)
    r0, c0 = np.rint(row).astype(int), np.rint(col).astype(int)
    ri = (r0[:, None] + off + pad)[:, :, None]
    ci = (c0[:, None] + off + pad)[:, None, :]
    d2 = (r0[:, None] + off - row[:, None])[:, :, None] ** 2 + (c0[:, None] + off - col[:, None])[:, None, :] ** 2
    return x[ri, ci], lam[ri, ci], inside[ri, ci], d2


def log_likelihood(x: np.ndarray, lam: np.ndarray, read_sigma: float) -> np.ndarray:
    """Log-probability p(x | lam) of Poisson counts plus Gaussian read noise, elementwise (constants in x dropped).

    ``p(x | lam) = sum_n Pois(n; lam) N(x - n; 0, read_sigma^2)``, summed over the counts ``n``
    within 5 read-noise sigmas of ``x`` (the other terms are negligible); with no read noise, the
    Poisson log-probability of ``round(x)``.
    """
    lam = np.maximum(lam, 1e-12)
    if read_sigma <= 0:
        n = np.maximum(np.rint(x), 0.0)
        return n * np.log(lam) - lam
    reach = int(np.ceil(5 * read_sigma))
    n = np.floor(x)[..., None] + np.arange(-reach, reach + 2)
    log_terms = n * np.log(lam)[..., None] - gammaln(n + 1) - (x[..., None] - n) ** 2 / (2 * read_sigma**2)
    log_terms = np.where(n >= 0, log_terms, -np.inf)
    return logsumexp(log_terms, axis=-1) - lam


def site_posteriors(
    specimen: Specimen, frame: SimulatedFrame, margin_px: float = 4.0, defect_rate: float | None = None
) -> SitePosteriors:
    """Ideal-observer class posteriors of every planted column more than ``margin_px`` inside ``frame``.

    ``frame`` must have been rendered from ``specimen`` without knock-on damage (the states are
    the specimen's planted ones), at atomic resolution.  ``defect_rate`` replaces the specimen's own
    defect probability at every site (an observer that knows everything but the frame's defect rate).
    """
    from models.training.evaluate import away_from_edge

    truth = frame.truth.columns.select(away_from_edge(frame.truth.columns, frame.image.shape, margin_px))
    table = specimen.table
    states, prior = state_priors(specimen, truth, defect_rate)
    thickness = specimen.thickness(truth.x_nm, truth.y_nm)
    imaging, px = frame.imaging, frame.pixel_size_nm
    sigma_nm = float(np.sqrt(imaging.probe_sigma_nm**2 + px**2 / 12.0))
    n_e = imaging.electrons_per_pixel(frame.scan.dwell_us) * imaging.detector_efficiency
    x, lam, inside, d2 = _patches(frame, truth.row, truth.col, int(np.ceil(3.5 * sigma_nm / px)))
    g = n_e * imaging.cross_section_nm2_per_z17 * np.exp(-d2 * px**2 / (2 * sigma_nm**2)) / (2 * np.pi * sigma_nm**2)
    weight = table.weight[np.maximum(states, 0)] * thickness[:, None]  # (n, S)
    delta = (weight - truth.weight[:, None])[:, :, None, None] * g[:, None]  # (n, S, K, K)
    loglik = log_likelihood(x[:, None], lam[:, None] + delta, imaging.read_noise_counts)
    loglik = np.where(inside[:, None], loglik, 0.0).sum(axis=(-2, -1))
    with np.errstate(divide="ignore"):
        logpost = np.where(prior > 0, loglik + np.log(prior), -np.inf)
    post = np.exp(logpost - logpost.max(axis=1, keepdims=True))
    post /= post.sum(axis=1, keepdims=True)
    cls = CLASS_OF_KIND[table.kind[np.maximum(states, 0)]]
    intact_w = table.weight[table.first[table.site[np.maximum(states[:, 0], 0)]]] * thickness
    return SitePosteriors(
        truth.class_id.astype(int),
        truth.kind.astype(int),
        (post * (cls == ColumnClass.VACANCY)).sum(axis=1),
        (post * (cls == ColumnClass.DOPANT)).sum(axis=1),
        n_e * imaging.cross_section_nm2_per_z17 * intact_w / (2 * np.pi * sigma_nm**2),
    )


def recall_at_precision(score: np.ndarray, positive: np.ndarray, precision: float = 0.9) -> tuple[float, float]:
    """Highest recall whose precision is at least ``precision`` when ``score`` above a threshold is called positive.

    Returns (recall, threshold); (0.0, inf) when no threshold reaches the precision.
    """
    order = np.argsort(-score, kind="stable")
    y = positive[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    # Only cut between distinct scores: tied sites are called together.
    last = np.r_[score[order][1:] != score[order][:-1], True]
    ok = last & (tp >= precision * (tp + fp)) & (tp > 0)
    if not ok.any() or not y.any():
        return 0.0, float("inf")
    best = int(np.flatnonzero(ok)[np.argmax(tp[ok])])
    return float(tp[best] / y.sum()), float(score[order][best])
