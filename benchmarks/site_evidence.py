"""Where a frame's defect evidence is lost: three observers of the same planted columns.

Every observer is handed the true position of every planted column (as the ideal observer is) and
ranks the columns away from the frame edge by the probability of a vacancy (a dopant); printed is
the best pooled recall at precision >= 0.9, per lattice and over all:

* ``ideal``: :func:`models.training.ideal.site_posteriors` (the frame's exact expected counts, probe,
  dose and noise model; everything but the site's state);
* ``empirical``: knows the lattice's states and priors as the ideal observer does, but of the frame
  only its image: each column's amplitude is fitted by least squares (a Gaussian per column plus a
  constant, the width chosen per frame by the smallest residual), a state's expected amplitude is
  its Z-contrast weight over the intact column's times the median amplitude of the 12 nearest columns
  of the same basis site, and the amplitude's noise is the spread of those differences over the frame
  (Gaussian);
* ``network``: the bundled ensemble's class shares in a Gaussian-weighted disc (sigma one native
  pixel) at the planted position.

Also given: the same on the columns clear of holes and contamination only, how many planted
defects none of the network's detections matches (as ``benchmarks/quality.py`` matches them; the
network's own figures at its detections are ``benchmarks/ideal_observer.py``'s), and, per lattice and
band of frame dose, the recall each observer reaches there at its pooled operating point (the
threshold that gives precision 0.9 over all frames): where in dose each observer loses its defects.

    python benchmarks/site_evidence.py [--frames 52] [--seed S] [--out F]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from decision_rules import centre_shares
from report import emit
from scipy import sparse
from scipy.sparse.linalg import spsolve
from scipy.spatial import cKDTree

from models.localize import Atoms
from models.segmenter import Segmenter
from models.training.evaluate import EVAL_SEED, away_from_edge, eval_specimen_frames, match_frame
from models.training.ideal import CLASS_OF_KIND, recall_at_precision, site_posteriors, state_priors
from simulators import ColumnClass, ColumnTruth, SimulatedFrame, Specimen

PRECISION = 0.9
MARGIN_PX = 4.0
#: Probe widths tried for the amplitude fit (input pixels, Gaussian sigma).
SIGMAS_PX = np.geomspace(0.7, 9.0, 14)
#: Same-site neighbours whose median amplitude is a column's intact reference.
NEIGHBOURS = 12
OBSERVERS = ("ideal", "empirical", "network")
#: Edges of the frame-dose bands of the by-dose split, e/A^2 (the last band is open).
DOSE_EDGES_E_PER_A2 = (0.0, 2e4, 4e4, 8e4, 1.6e5)


def _design(shape: tuple[int, int], row: np.ndarray, col: np.ndarray, sigma_px: float) -> sparse.csr_matrix:
    """(pixels, columns + 1): each column's unit-peak Gaussian (to 3 sigma), then a constant."""
    reach = int(np.ceil(3 * sigma_px))
    off = np.arange(-reach, reach + 1)
    rr, cc = np.broadcast_arrays(
        np.rint(row).astype(int)[:, None, None] + off[None, :, None],
        np.rint(col).astype(int)[:, None, None] + off[None, None, :],
    )
    d2 = (rr - row[:, None, None]) ** 2 + (cc - col[:, None, None]) ** 2
    ok = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1]) & (d2 <= (3 * sigma_px) ** 2)
    j = np.broadcast_to(np.arange(len(row))[:, None, None], rr.shape)
    n_px = shape[0] * shape[1]
    g = sparse.csr_matrix((np.exp(-d2[ok] / (2 * sigma_px**2)), (rr[ok] * shape[1] + cc[ok], j[ok])), (n_px, len(row)))
    return sparse.hstack([g, sparse.csr_matrix(np.ones((n_px, 1)))]).tocsr()


def column_amplitudes(image: np.ndarray, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares peak amplitude of each column and the probe sigma (pixels) that fits the image best."""
    x = image.astype(np.float64).ravel()
    best: tuple[float, float, np.ndarray] | None = None
    for sigma in SIGMAS_PX:
        a = _design(image.shape, row, col, float(sigma))
        coef = spsolve((a.T @ a).tocsc() + 1e-9 * sparse.identity(a.shape[1], format="csc"), a.T @ x)
        residual = float(np.sum((x - a @ coef) ** 2))
        if best is None or residual < best[0]:
            best = (residual, float(sigma), coef[:-1])
    assert best is not None
    return best[2], best[1]


def _same_site_reference(amp: np.ndarray, site: np.ndarray, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each column's intact reference (median of its same-site neighbours) and the frame's spread per site."""
    ref, spread = np.empty_like(amp), np.empty_like(amp)
    points = np.column_stack([row, col])
    for s in np.unique(site):
        sel = np.flatnonzero(site == s)
        k = min(NEIGHBOURS + 1, len(sel))
        _, index = cKDTree(points[sel]).query(points[sel], k=k)
        ref[sel] = np.median(amp[sel][index[:, 1:]], axis=1) if k > 1 else amp[sel]
        spread[sel] = 1.4826 * np.median(np.abs(amp[sel] - ref[sel])) + 1e-9
    return ref, spread


def empirical_posteriors(specimen: Specimen, frame: SimulatedFrame) -> tuple[np.ndarray, np.ndarray]:
    """Vacancy and dopant posteriors of the empirical observer for the columns away from the edge."""
    columns = frame.truth.columns
    table = specimen.table
    states, prior = state_priors(specimen, columns)
    site = table.site[states[:, 0]]
    amp, _ = column_amplitudes(frame.image, columns.row, columns.col)
    ref, spread = _same_site_reference(amp, site, columns.row, columns.col)
    ratio = table.weight[np.maximum(states, 0)] / table.weight[table.first[site]][:, None]
    loglik = -0.5 * ((amp[:, None] - ratio * ref[:, None]) / spread[:, None]) ** 2
    with np.errstate(divide="ignore"):
        logpost = np.where(prior > 0, loglik + np.log(prior), -np.inf)
    post = np.exp(logpost - logpost.max(axis=1, keepdims=True))
    post /= post.sum(axis=1, keepdims=True)
    cls = CLASS_OF_KIND[table.kind[np.maximum(states, 0)]]
    keep = away_from_edge(columns, frame.image.shape, MARGIN_PX)
    vacancy, dopant = ((post * (cls == c)).sum(axis=1)[keep] for c in (ColumnClass.VACANCY, ColumnClass.DOPANT))
    return vacancy, dopant


def network_shares(segmenter: Segmenter, frame: SimulatedFrame, truth: ColumnTruth) -> tuple[np.ndarray, np.ndarray]:
    """Class shares (atom, vacancy, dopant) of the ensemble at the planted positions ``truth``, (n, 3),
    and which of those columns none of its detections matches, (n,) bool."""
    seg = segmenter.segment(frame.image, frame.pixel_size_nm)
    row = (truth.row + 0.5) * seg.scale[0] - 0.5
    col = (truth.col + 0.5) * seg.scale[1] - 0.5
    zero = np.zeros(len(truth), np.float32)
    shares = np.exp(centre_shares(seg, Atoms(row, col, zero.astype(np.int64), zero, zero, zero)))
    result = match_frame(frame, seg, segmenter.atoms(seg), MARGIN_PX)
    undetected = np.zeros(len(frame.truth.columns), bool)
    undetected[result.truth_index[result.truth_match < 0]] = True
    return shares, undetected[away_from_edge(frame.truth.columns, frame.image.shape, MARGIN_PX)]


def on_clean_film(frame: SimulatedFrame, truth: ColumnTruth) -> np.ndarray:
    """Columns on clean film: not in a hole, not under contamination."""
    r = np.clip(np.rint(truth.row).astype(int), 0, frame.image.shape[0] - 1)
    c = np.clip(np.rint(truth.col).astype(int), 0, frame.image.shape[1] - 1)
    return frame.truth.region_mask[r, c] == 0


def _cat(rows: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
    return np.concatenate([r[key] for r in rows])


def _recalls(rows: list[dict[str, np.ndarray]], select: str | None) -> dict[str, dict[str, float]]:
    def cat(key: str) -> np.ndarray:
        return _cat(rows, key)

    keep = cat(select) if select else np.ones(len(cat("truth")), bool)
    out: dict[str, dict[str, float]] = {}
    for cls in (ColumnClass.VACANCY, ColumnClass.DOPANT):
        name = cls.name.lower()
        positive = cat("truth")[keep] == cls
        if positive.any():
            out[name] = {o: recall_at_precision(cat(f"{o}_{name}")[keep], positive, PRECISION)[0] for o in OBSERVERS}
            out[name]["n_planted"] = int(positive.sum())
            out[name]["n_not_detected_by_the_network"] = int((positive & cat("undetected")[keep]).sum())
    return out


def _band_recalls(rows: list[dict[str, np.ndarray]], cls: ColumnClass, threshold: dict[str, float]) -> dict[str, Any]:
    """Planted defects of class ``cls`` per dose band of ``rows``, and the share each observer calls."""
    name = cls.name.lower()
    positive = _cat(rows, "truth") == cls
    band = np.searchsorted(DOSE_EDGES_E_PER_A2, _cat(rows, "dose"), side="right") - 1
    called = {o: _cat(rows, f"{o}_{name}") >= threshold[o] for o in OBSERVERS}
    out: dict[str, Any] = {}
    for b, low in enumerate(DOSE_EDGES_E_PER_A2):
        here = positive & (band == b)
        if here.any():
            out[f"from_{low:g}"] = {
                "n_planted": int(here.sum()),
                **{o: float(called[o][here].mean()) for o in OBSERVERS},
            }
    return out


def _by_dose(rows: dict[str, list[dict[str, np.ndarray]]]) -> dict[str, dict[str, Any]]:
    """Recall per lattice and dose band at each observer's pooled operating point (precision 0.9 over all)."""
    every = [r for lattice_rows in rows.values() for r in lattice_rows]
    out: dict[str, dict[str, Any]] = {}
    for cls in (ColumnClass.VACANCY, ColumnClass.DOPANT):
        positive = _cat(every, "truth") == cls
        name = cls.name.lower()
        threshold = {o: recall_at_precision(_cat(every, f"{o}_{name}"), positive)[1] for o in OBSERVERS}
        out[name] = {lattice: _band_recalls(r, cls, threshold) for lattice, r in sorted(rows.items())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="manifest or model (default: the bundled one)")
    parser.add_argument("--frames", type=int, default=52)
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the frame stream")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    segmenter = Segmenter(args.model, "cpu")
    rows: dict[str, list[dict[str, np.ndarray]]] = {}
    for specimen, frame in eval_specimen_frames(args.frames, False, seed=args.seed):
        ideal = site_posteriors(specimen, frame, MARGIN_PX)
        truth = frame.truth.columns.select(away_from_edge(frame.truth.columns, frame.image.shape, MARGIN_PX))
        vacancy, dopant = empirical_posteriors(specimen, frame)
        shares, undetected = network_shares(segmenter, frame, truth)
        rows.setdefault(frame.lattice, []).append(
            {
                "truth": ideal.truth_class,
                "clear": on_clean_film(frame, truth),
                "undetected": undetected,
                "ideal_vacancy": ideal.vacancy,
                "ideal_dopant": ideal.dopant,
                "empirical_vacancy": vacancy,
                "empirical_dopant": dopant,
                "network_vacancy": shares[:, 1],
                "network_dopant": shares[:, 2],
                "dose": np.full(len(ideal.truth_class), frame.dose_e_per_a2),
            }
        )
    every = [r for lattice_rows in rows.values() for r in lattice_rows]
    result = {
        "benchmark": "site_evidence",
        "frames": args.frames,
        "seed": args.seed,
        "model": segmenter.manifest.name,
        "required_precision": PRECISION,
        **{
            f"recall_at_precision{suffix}": {
                "all": _recalls(every, select),
                **{k: _recalls(v, select) for k, v in sorted(rows.items())},
            }
            for suffix, select in (("", None), ("_clear_film_only", "clear"))
        },
        "recall_by_dose_at_the_pooled_operating_point": _by_dose(rows),
        "dose_band_edges_e_per_a2": list(DOSE_EDGES_E_PER_A2),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
