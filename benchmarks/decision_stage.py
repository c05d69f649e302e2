"""Is defect recall lost in the class decision rule?  A learnt second-stage decision against the fitted factors.

For every detected column: the region's mean probability of each non-background class, its area,
mutual information and presence entropy, the vacancy and dopant log-ratios to the atom class
relative to the frame's median, and the frame's median presence entropy and region area (frame-adaptive
cues: ten features).  A multinomial logistic regression (L2,
standardised features) learns the matched truth class (false detections count as atoms: calling
them atoms costs no defect precision) on the validation frames the bundled factors were fitted on,
then one factor per defect class on its probabilities is chosen for the highest recall at precision
>= 0.9, as ``models.training.calibrate`` does.  A third rule keeps the network's probabilities but
chooses the factors per lattice (the simulator's lattice: an upper bound for a rule that would have
to recognise it), each lattice at precision >= 0.9 on its own.  Both rules are scored on the evaluation frames,
counted over detected columns.  Quality figures, not speed.

    python benchmarks/decision_stage.py [--out FILE]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

import numpy as np
from report import emit
from scipy import ndimage, optimize

from models.segmenter import Segmenter
from models.training import evaluate as ev
from models.training.calibrate import MIN_PRECISION, VALIDATION_FRAMES, VALIDATION_SEED
from simulators import SimulatedFrame

FEATURES = 10
_L2 = 1e-3


def _frame_features(
    segmenter: Segmenter, frame: SimulatedFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(n, FEATURES) features, truth class - 1, the fitted rule's class - 1 and the lattice of the kept detections."""
    seg = segmenter.segment(frame.image, frame.pixel_size_nm)
    atoms = segmenter.atoms(seg)
    labels, n = ndimage.label(1.0 - seg.mean_probs[0] > 0.5)  # the localiser's regions, in its order
    index = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones(labels.shape), labels, index)
    big = area >= 2  # (its min_area_px)
    probs = np.stack([ndimage.mean(seg.mean_probs[k], labels, index) for k in (1, 2, 3)], 1)[big]
    if len(probs) != len(atoms):
        raise RuntimeError("these regions are not the localiser's: its labelling has changed")
    result = ev.match_frame(frame, seg, atoms)
    kept = result.pred_index  # the detections the evaluation counts, in its order
    log_p = np.log(probs[kept] + 1e-6)
    vac, dop = log_p[:, 1] - log_p[:, 0], log_p[:, 2] - log_p[:, 0]
    presence = atoms.presence_entropy[kept]
    x = np.column_stack(
        [log_p, np.log(area[big][kept]), atoms.uncertainty[kept], presence, vac - np.median(vac), dop - np.median(dop)]
    )
    x = np.column_stack([x, np.full((len(x), 2), [np.median(presence), np.median(area[big][kept])])])
    assert x.shape[1] == FEATURES
    truth = np.where(result.pred_match >= 0, result.truth_class[np.maximum(result.pred_match, 0)], 1) - 1
    return x, truth, result.pred_class - 1, np.full(len(x), frame.lattice)


def _features(
    segmenter: Segmenter, frames: Iterable[SimulatedFrame]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    parts = [_frame_features(segmenter, f) for f in frames]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))  # type: ignore[return-value]


def fit_logistic(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Multinomial logistic regression; returns a function giving (n, 3) class probabilities."""
    mu, sd = x.mean(0), x.std(0) + 1e-9

    def design(a: np.ndarray) -> np.ndarray:
        return np.column_stack([(a - mu) / sd, np.ones(len(a))])

    z, rows = design(x), np.arange(len(y))

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        weights = w.reshape(z.shape[1], 3)
        logits = z @ weights
        logits -= logits.max(1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(1))
        grad = np.exp(logits - log_norm[:, None])
        grad[rows, y] -= 1
        penalty = np.vstack([weights[:-1], np.zeros((1, 3))])
        value = -(logits[rows, y] - log_norm).mean() + _L2 * float((penalty**2).sum())
        return value, (z.T @ grad / len(y) + 2 * _L2 * penalty).ravel()

    w = optimize.minimize(loss, np.zeros(z.shape[1] * 3), jac=True, method="L-BFGS-B").x.reshape(z.shape[1], 3)

    def predict(a: np.ndarray) -> np.ndarray:
        logits = design(a) @ w
        p = np.exp(logits - logits.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    return predict


def precision_recall(pred: np.ndarray, truth: np.ndarray, k: int) -> tuple[float, float]:
    """Precision and recall of class ``k`` among detected columns."""
    hits = int(((pred == k) & (truth == k)).sum())
    return hits / max(int((pred == k).sum()), 1), hits / max(int((truth == k).sum()), 1)


def choose_factors(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """One factor per defect class: the highest recall at precision >= MIN_PRECISION."""
    factors = np.ones(3)
    for k in (1, 2):
        best: tuple[float, float] | None = None
        for g in np.geomspace(0.05, 20, 40):
            trial = factors.copy()
            trial[k] = g
            precision, recall = precision_recall(np.argmax(probs * trial, 1), truth, k)
            if precision >= MIN_PRECISION and (best is None or recall > best[1]):
                best = (g, recall)
        factors[k] = best[0] if best else 1.0
    return factors


def per_lattice_rule(
    probs: np.ndarray, truth: np.ndarray, lattice: np.ndarray, probs_eval: np.ndarray, lattice_eval: np.ndarray
) -> np.ndarray:
    """Classes (- 1) of ``probs_eval`` under factors chosen per lattice on (``probs``, ``truth``).

    The lattice is the simulator's: an upper bound for a rule that would have to recognise it.
    """
    pred = np.argmax(probs_eval, 1)
    for name in np.unique(lattice_eval):
        factors = choose_factors(probs[lattice == name], truth[lattice == name])
        here = lattice_eval == name
        pred[here] = np.argmax(probs_eval[here] * factors, 1)
    return pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    segmenter = Segmenter(None, "cpu")
    x_val, y_val, _, lat_val = _features(
        segmenter, ev.eval_frames(VALIDATION_FRAMES, shifted=False, seed=VALIDATION_SEED)
    )
    x_eval, y_eval, fitted, lat_eval = _features(segmenter, ev.eval_frames(52, shifted=False))
    model = fit_logistic(x_val, y_val)
    learnt = np.argmax(model(x_eval) * choose_factors(model(x_val), y_val), 1)
    lattice_rule = per_lattice_rule(np.exp(x_val[:, :3]), y_val, lat_val, np.exp(x_eval[:, :3]), lat_eval)
    out: dict[str, object] = {"benchmark": "decision_stage", "features": FEATURES, "detected_columns": len(y_eval)}
    for name, pred in (("fitted_factors", fitted), ("logistic_stage", learnt), ("per_lattice_factors", lattice_rule)):
        for k, cls in ((1, "vacancy"), (2, "dopant")):
            precision, recall = precision_recall(pred, y_eval, k)
            out[f"{name}/{cls}_precision"], out[f"{name}/{cls}_recall"] = round(precision, 3), round(recall, 3)
    emit(out, args.out)


if __name__ == "__main__":
    main()
