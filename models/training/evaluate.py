"""Quality of a segmentation model against planted ground truth.

Frames come from specimens and noise seeds never used in training.  Predicted
columns are matched one-to-one to planted columns within half the
nearest-neighbour spacing (greedy by distance), all of them; only then are columns and
detections near the frame edge left out (:func:`counted`), so none is counted twice.  Reported:

* column detection precision, recall, F1 and localisation RMSE / NN spacing;
* per defect class (vacancy, dopant) and per physical defect kind: recall and precision;
* on a shifted set (lower dose, wider probe, more contamination): AUROC of the per-atom
  uncertainties (mutual information, presence entropy) for wrong-or-missed detections, and
  AUROC of the frame OOD score separating shifted from in-distribution frames.

A detected atom is scored by its own per-atom value (the mean over its region); a missed
column by the map's largest value within 2 native pixels of where it was planted (where
its detection would have been).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.spatial import cKDTree

from models.localize import Atoms
from models.segmenter import Segmentation, Segmenter
from models.training.metrics import (
    INTERVAL_KEYS,
    FrameResult,
    auroc,
    detection_metrics,
    frame_counts,
    lookup,
    prf,
    uncertainty_auroc,
    wrong_predictions,
)
from models.uncertainty import binary_entropy
from simulators import ImagingParams, ScanRequest, SimulatedFrame, Specimen, SpecimenConfig
from simulators import render_frame as render

# (the figures are asked of this module too: re-exported)
__all__ = [
    "EVAL_SEED", "INTERVAL_KEYS", "FrameResult", "auroc", "away_from_edge", "counted", "detection_metrics",
    "eval_frames", "eval_specimen_frames", "evaluate", "evaluate_frame", "frame_counts", "lookup", "match_frame",
    "match_points", "native_pixel", "prf", "uncertainty_auroc", "wrong_predictions",
]  # fmt: skip

#: Seed stream of evaluation frames (training uses others).
EVAL_SEED = 2_000_003
#: A missed column is scored within this many native pixels of where it was planted.
_LOCAL_HALF = 2


def _shifted(imaging: ImagingParams, rng: np.random.Generator) -> ImagingParams:
    return imaging.model_copy(
        update={
            "probe_current_pa": imaging.probe_current_pa * rng.uniform(0.05, 0.2),
            "probe_fwhm_nm": imaging.probe_fwhm_nm * rng.uniform(1.5, 2.2),
        }
    )


def eval_frames(count: int, shifted: bool, pixels: int = 256, seed: int = EVAL_SEED) -> Iterator[SimulatedFrame]:
    """Evaluation frames: all lattices in turn, sampling 0.008-0.03 nm/px, varied dose."""
    for _, frame in eval_specimen_frames(count, shifted, pixels, seed):
        yield frame


def eval_specimen_frames(
    count: int, shifted: bool, pixels: int = 256, seed: int = EVAL_SEED
) -> Iterator[tuple[Specimen, SimulatedFrame]]:
    """The frames of :func:`eval_frames`, each with the specimen it was rendered from."""
    rng = np.random.default_rng([seed, int(shifted)])
    lattices = ("MoS2", "WS2", "graphene", "SrTiO3")
    for i in range(count):
        config = SpecimenConfig(
            seed=int(rng.integers(2**31)),
            lattice=lattices[i % 4],
            width_nm=64.0,
            height_nm=64.0,
            base_defect_rate=rng.uniform(0.01, 0.05),
            hotspot_density_per_um2=0.0,
            contamination_density_per_um2=2500.0 if shifted else 300.0,
            tile_nm=4.0,
        )
        px = rng.uniform(0.008, 0.03)
        scan = ScanRequest(
            x_nm=rng.uniform(-15, 15),
            y_nm=rng.uniform(-15, 15),
            fov_nm=pixels * px,
            rows=pixels,
            cols=pixels,
            dwell_us=float(np.exp(rng.uniform(np.log(4), np.log(20)))),
            rotation_deg=rng.uniform(-180, 180),
        )
        imaging = ImagingParams(
            probe_current_pa=float(np.exp(rng.uniform(np.log(15), np.log(100)))),
            probe_fwhm_nm=rng.uniform(0.07, 0.12),
            track_dose=False,
        )
        specimen = Specimen(config)
        yield specimen, render(specimen, scan, _shifted(imaging, rng) if shifted else imaging, rng)


def match_points(truth_rc: np.ndarray, pred_rc: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches within ``radius``, closest first: (truth -> prediction, prediction -> truth), -1 if none."""
    truth_match = np.full(len(truth_rc), -1)
    pred_match = np.full(len(pred_rc), -1)
    if len(truth_rc) == 0 or len(pred_rc) == 0:
        return truth_match, pred_match
    pairs = cKDTree(truth_rc).sparse_distance_matrix(cKDTree(pred_rc), radius, output_type="ndarray")
    for t, p, _ in sorted(pairs.tolist(), key=lambda x: x[2]):
        t, p = int(t), int(p)
        if truth_match[t] < 0 and pred_match[p] < 0:
            truth_match[t], pred_match[p] = p, t
    return truth_match, pred_match


def evaluate_frame(
    segmenter: Segmenter, frame: SimulatedFrame, margin_px: int = 4, refine: bool = False
) -> FrameResult:
    """Segment one simulated frame and match its columns to the planted ones (``refine``: Gaussian refinement)."""
    seg = segmenter.segment(frame.image, frame.pixel_size_nm)
    atoms = segmenter.atoms(seg)
    return match_frame(frame, seg, segmenter.refine(seg, frame.image, atoms) if refine else atoms, margin_px)


def match_frame(frame: SimulatedFrame, seg: Segmentation, atoms: Atoms, margin_px: float = 4) -> FrameResult:
    """Match located atoms of ``frame`` to its planted columns; count only those inside the edge margin.

    Every planted column is matched to every located atom first; the margin then decides what counts
    (see :func:`counted`), so a column near the margin is counted once, by where it was planted,
    whichever side of the margin its detection fell.  The arrays of the result hold the counted
    columns and atoms only (``truth_index`` and ``pred_index`` say which).
    """
    from simulators import get_lattice

    columns = frame.truth.columns
    nn_px = get_lattice(frame.lattice).nn_spacing_nm / frame.pixel_size_nm
    truth_rc = np.column_stack([columns.row, columns.col])
    pred_rc = np.column_stack([atoms.row, atoms.col])
    truth_all, pred_all = match_points(truth_rc, pred_rc, nn_px / 2)
    t_idx, p_idx = counted(truth_rc, pred_rc, pred_all, frame.image.shape, margin_px)
    truth_match = _renumber(truth_all[t_idx], p_idx, len(pred_rc))
    pred_match = _renumber(pred_all[p_idx], t_idx, len(truth_rc))
    matched = truth_match >= 0
    dist = np.hypot(*(truth_rc[t_idx][matched] - pred_rc[p_idx][truth_match[matched]]).T) / nn_px
    # A missed column's uncertainty: the largest value where its detection would have been.
    at_truth = native_pixel(seg, columns.row[t_idx], columns.col[t_idx])
    return FrameResult(
        frame.lattice,
        frame.pixel_size_nm,
        columns.class_id[t_idx].astype(int),
        columns.kind[t_idx].astype(int),
        truth_match,
        _local_max(seg.mutual_info, at_truth),
        _local_max(1.0 - seg.mean_probs[0], at_truth, binary_entropy),
        atoms.class_id[p_idx],
        pred_match,
        atoms.uncertainty[p_idx],
        atoms.presence_entropy[p_idx],
        dist,
        seg.ood_score,
        t_idx,
        p_idx,
    )


def counted(
    truth_rc: np.ndarray, pred_rc: np.ndarray, pred_match: np.ndarray, shape: tuple[int, ...], margin_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Which planted columns and which predictions count, after matching all of them.

    A planted column counts if it lies more than ``margin_px`` inside the frame (found if matched, missed
    if not).  A matched prediction counts if its planted column does; an unmatched one (a false
    detection) if it lies inside the margin itself.

    Parameters
    ----------
    truth_rc, pred_rc
        (n, 2) and (m, 2) positions (row, col) in image pixels.
    pred_match
        (m,) index of each prediction's matched planted column, -1 if none (from :func:`match_points`).
    shape, margin_px
        The image's shape and the margin at its edge.

    Returns
    -------
    tuple of np.ndarray
        Indices of the counted planted columns and of the counted predictions, in their original order.
    """
    truth_inside = away_from_edge(truth_rc, shape, margin_px)
    pred_inside = away_from_edge(pred_rc, shape, margin_px)
    matched = pred_match >= 0
    pred_counts = pred_inside.copy()
    pred_counts[matched] = truth_inside[pred_match[matched]]
    return np.flatnonzero(truth_inside), np.flatnonzero(pred_counts)


def _renumber(match: np.ndarray, kept: np.ndarray, total: int) -> np.ndarray:
    """Matches into a full list (-1 for none) as indices into its ``kept`` subset."""
    position = np.full(total, -1)
    position[kept] = np.arange(len(kept))
    out = np.full(len(match), -1)
    out[match >= 0] = position[match[match >= 0]]
    return out


def _local_max(
    field: np.ndarray, at: tuple[np.ndarray, np.ndarray], transform: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Largest value of ``transform(field)`` in the 5 x 5 window about each pixel ``at`` (edges mirrored).

    The same as ``maximum_filter(transform(field), size=5)[at]``, computed at those pixels only: the
    decision-rule fit matches every validation frame once per trial factor.
    """
    windows = sliding_window_view(np.pad(field, _LOCAL_HALF, mode="symmetric"), (2 * _LOCAL_HALF + 1,) * 2)[at]
    values = windows if transform is None else transform(windows)
    return values.max(axis=(-2, -1)) if len(values) else np.zeros(0, field.dtype)


def away_from_edge(points: Any, shape: tuple[int, ...], margin_px: float) -> np.ndarray:
    """Which of ``points`` lie more than ``margin_px`` inside an image of ``shape``.

    ``points``: anything with ``row`` and ``col`` arrays in image pixels (located atoms, planted columns),
    or an (n, 2) array of (row, col).
    """
    row, col = (points[:, 0], points[:, 1]) if isinstance(points, np.ndarray) else (points.row, points.col)
    inside = (row > margin_px) & (row < shape[0] - 1 - margin_px)
    return np.asarray(inside & (col > margin_px) & (col < shape[1] - 1 - margin_px))


def native_pixel(seg: Segmentation, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The native-sampling pixel (row and column indices, clipped to the maps) nearest to input-image positions."""
    shape = seg.mutual_info.shape
    r = np.clip(np.rint((np.asarray(row) + 0.5) * seg.scale[0] - 0.5).astype(int), 0, shape[0] - 1)
    c = np.clip(np.rint((np.asarray(col) + 0.5) * seg.scale[1] - 0.5).astype(int), 0, shape[1] - 1)
    return r, c


def evaluate(segmenter: Segmenter, frames: int = 52, pixels: int = 256, seed: int = EVAL_SEED) -> dict[str, float]:
    """All quality figures on ``frames`` in-distribution and as many shifted frames.

    The main detection figures come with 95 % intervals from resampling the frames within each
    lattice (:mod:`models.training.bootstrap`; the frames hold the four lattices in equal numbers by
    design): defects cluster by frame, so a few dozen frames pin them down to a few points only.
    """
    from models.training.bootstrap import bootstrap_intervals

    clean = [evaluate_frame(segmenter, f) for f in eval_frames(frames, shifted=False, pixels=pixels, seed=seed)]
    shifted = [evaluate_frame(segmenter, f) for f in eval_frames(frames, shifted=True, pixels=pixels, seed=seed)]
    out = detection_metrics(clean)
    intervals = bootstrap_intervals(clean, strata=[r.lattice for r in clean])
    for key in INTERVAL_KEYS:
        if key in intervals:
            out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = intervals[key]
    out["frames"] = float(frames)
    out["shifted_columns_f1"] = detection_metrics(shifted)["columns_f1"]
    out["shifted_uncertainty_auroc"] = uncertainty_auroc(shifted)
    out["clean_uncertainty_auroc"] = uncertainty_auroc(clean)
    out["shifted_presence_entropy_auroc"] = uncertainty_auroc(shifted, "presence")
    out["clean_presence_entropy_auroc"] = uncertainty_auroc(clean, "presence")
    ood = np.array([r.ood_score for r in clean + shifted])
    out["ood_auroc_shifted_vs_clean"] = auroc(ood, np.arange(len(ood)) >= len(clean))
    return out
