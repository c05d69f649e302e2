"""Other ways of deciding each column's class, against the bundled rule, on the frames models are chosen on.

Almost every defect the bundled model misses is found as a column but called an ordinary atom
(``missed_as`` in the output: what each planted defect the bundled rule misses was called, per
lattice), so the question is whether a better decision per column finds them.  Rules compared:

* ``bundled``: argmax of each region's summed class probabilities times the manifest's factors;
* ``site_network``: a small classifier per located column (one hidden layer of 16) on its region's
  class shares, mutual information and presence entropy;
* ``site_intensity``: the same plus the column's image intensity (mean over a disc of 0.3 x the median
  nearest-neighbour spacing) against its six nearest columns (difference, robust z-score, rank in the
  frame): the Z-contrast test an ideal observer makes;
* ``centre_disc``: the bundled kind of rule (a factor per class, refitted) on the class shares of a
  Gaussian-weighted disc (sigma 1 native pixel) at each located centre instead of the whole region's;
* ``dihedral_tta``: the ensemble's probabilities averaged over the 8 flips and quarter turns of the
  frame (8 x the compute), factors refitted.

The classifiers and every rule's operating point (the highest recall at precision >= 0.9 per defect
class, as at export) are fitted on the validation stream :data:`models.training.calibrate.VALIDATION_SEED`;
figures and paired intervals against ``bundled`` come from the choosing stream of
``benchmarks/compare_models.py``.

    python benchmarks/decision_rules.py [--fit-frames 192] [--frames 416] [--tta 8]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from compare_models import rounded_figures
from report import emit
from scipy import ndimage
from scipy.spatial import cKDTree

if TYPE_CHECKING:
    from models.localize import Atoms
    from models.segmenter import Segmentation, Segmenter
    from models.training.evaluate import FrameResult
    from simulators import SimulatedFrame

#: Neighbours an intensity is compared with (the six of a hexagonal lattice's first shell).
_NEIGHBOURS = 6
#: Disc radius over which a column's intensity is averaged, as a fraction of the median NN spacing.
_DISC_OF_NN = 0.3
#: Gaussian weight of the ``centre_disc`` rule's class shares (native pixels).
_CENTRE_SIGMA_PX = 1.0
#: Additive offsets on a defect class's log-probability tried for the operating point.
_OFFSETS = np.linspace(-4.0, 4.0, 81)


def _dihedral(n: int) -> list[tuple[int, bool]]:
    return [(k, flip) for flip in (False, True) for k in range(4)][:n]


def _turn(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k, axes=(-2, -1))
    return a[..., ::-1] if flip else a


def _unturn(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    return np.rot90(a[..., ::-1] if flip else a, -k, axes=(-2, -1))


def segment_tta(segmenter: Segmenter, image: np.ndarray, pixel_size_nm: float, n: int) -> Segmentation:
    """Segmentation with mean probabilities and mutual information averaged over ``n`` dihedral views."""
    views = []
    for k, flip in _dihedral(n):
        seg = segmenter.segment(np.ascontiguousarray(_turn(image, k, flip)), pixel_size_nm)
        views.append((seg, _unturn(seg.mean_probs, k, flip), _unturn(seg.mutual_info, k, flip)))
    return replace(
        views[0][0],
        mean_probs=np.ascontiguousarray(np.mean([v[1] for v in views], axis=0)),
        mutual_info=np.ascontiguousarray(np.mean([v[2] for v in views], axis=0)),
    )


def _disc_mean(image: np.ndarray, row: np.ndarray, col: np.ndarray, radius_px: float) -> np.ndarray:
    k = int(np.ceil(radius_px))
    dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
    inside = dy**2 + dx**2 <= radius_px**2
    rr = np.clip(np.rint(row)[:, None] + dy[inside], 0, image.shape[0] - 1).astype(int)
    cc = np.clip(np.rint(col)[:, None] + dx[inside], 0, image.shape[1] - 1).astype(int)
    return image[rr, cc].mean(axis=1)


def centre_shares(seg: Segmentation, atoms: Atoms, sigma_px: float = _CENTRE_SIGMA_PX) -> np.ndarray:
    """(n, 3) log class shares of a Gaussian-weighted disc (to 2 sigma) at each column ``atoms`` (native pixels)."""
    probs = seg.mean_probs
    k = int(np.ceil(2 * sigma_px))
    dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
    inside = dy**2 + dx**2 <= (2 * sigma_px) ** 2
    weight = np.exp(-(dy[inside] ** 2 + dx[inside] ** 2) / (2 * sigma_px**2))
    rr = np.clip(np.rint(atoms.row)[:, None] + dy[inside], 0, probs.shape[1] - 1).astype(int)
    cc = np.clip(np.rint(atoms.col)[:, None] + dx[inside], 0, probs.shape[2] - 1).astype(int)
    mass = (probs[1:, rr, cc] * weight).sum(axis=2)
    return np.log(np.clip((mass / (mass.sum(axis=0) + 1e-12)).T, 1e-4, 1.0))


def column_features(seg: Segmentation, native_image: np.ndarray, atoms: Atoms) -> np.ndarray:
    """(n, 10) features of the columns ``atoms`` (native pixels) of one segmentation.

    Columns: log class share of each non-background class (3), mutual information, presence entropy,
    then intensity, its neighbours' median, robust z-score against them, rank in the frame, log spread.
    """
    probs = seg.mean_probs
    label, _ = ndimage.label(probs[0] < 0.5)
    r = np.clip(np.rint(atoms.row).astype(int), 0, label.shape[0] - 1)
    c = np.clip(np.rint(atoms.col).astype(int), 0, label.shape[1] - 1)
    region = label[r, c]
    shares = [
        np.where(region > 0, ndimage.mean(probs[k], label, np.maximum(region, 1)), probs[k][r, c])
        for k in range(1, probs.shape[0])
    ]
    points = np.column_stack([atoms.row, atoms.col])
    k = min(_NEIGHBOURS + 1, len(points))
    dist, index = cKDTree(points).query(points, k=k)
    nn_px = float(np.median(dist[:, 1])) if k > 1 else 4.0
    intensity = _disc_mean(native_image, atoms.row, atoms.col, max(_DISC_OF_NN * nn_px, 1.0))
    around = intensity[index[:, 1:]] if k > 1 else intensity[:, None]
    ref = np.median(around, axis=1)
    spread = 1.4826 * np.median(np.abs(around - ref[:, None]), axis=1) + 0.02
    rank = (np.argsort(np.argsort(intensity)) + 0.5) / len(intensity)
    network = [*np.log(np.clip(shares, 1e-4, 1.0)), atoms.uncertainty, atoms.presence_entropy]
    return np.column_stack([*network, intensity, ref, (intensity - ref) / spread, rank, np.log(spread)])


class _Frame:
    """One frame's segmentation, located columns (native pixels) and their features."""

    def __init__(self, segmenter: Segmenter, frame: SimulatedFrame, seg: Segmentation) -> None:
        from models.localize import localize
        from models.preprocess import normalize, resample, resampled_shape

        norm = segmenter.manifest.normalisation
        shape = resampled_shape(frame.image.shape, frame.pixel_size_nm, segmenter.manifest.native_pixel_size_nm)
        native = normalize(resample(frame.image.astype(np.float32), shape), norm.low_pct, norm.high_pct)
        self.frame, self.seg = frame, seg
        found = localize(seg.mean_probs, seg.mutual_info)
        self.features = column_features(seg, native, found) if len(found) else np.zeros((0, 10))
        self.centre = centre_shares(seg, found) if len(found) else np.zeros((0, 3))
        row, col = seg.to_input_pixels(found.row, found.col)
        self.atoms = replace(found, row=row, col=col)  # input pixels, as the evaluation matches them

    def result(self, class_id: np.ndarray) -> FrameResult:
        """FrameResult of the columns with classes ``class_id``."""
        from models.training.evaluate import match_frame

        return match_frame(self.frame, self.seg, replace(self.atoms, class_id=class_id))

    def labels(self) -> np.ndarray:
        """Class of the planted column each located column matches (the atom class where none or near the edge)."""
        from models.training.evaluate import lookup

        res = self.result(self.atoms.class_id)
        full = np.ones(len(self.atoms), dtype=np.int64)
        matched = lookup(res.truth_class, res.pred_match)
        full[res.pred_index] = np.where(matched > 0, matched, 1)
        return full


def _fit_classifier(x: np.ndarray, y: np.ndarray, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Log-probabilities of the 3 non-background classes from features (one hidden layer of 16)."""
    import torch

    torch.manual_seed(seed)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.tensor((x - mu) / sd, dtype=torch.float32)
    yt = torch.tensor(y - 1)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = torch.optim.LBFGS(net.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt) + 1e-4 * sum((p**2).sum() for p in net.parameters())
        loss.backward()
        return loss

    opt.step(closure)

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.log_softmax(net(torch.tensor((z - mu) / sd, dtype=torch.float32)), 1).numpy()

    return predict


def _choose_offsets(frames: list[_Frame], scores: list[np.ndarray]) -> np.ndarray:
    """Per-class additive offsets: each defect class's highest recall at precision >= 0.9 on ``frames``."""
    from models.training.calibrate import MIN_PRECISION, choose_operating_point
    from models.training.evaluate import detection_metrics

    offsets = np.zeros(3)
    for k, name in ((1, "vacancy"), (2, "dopant")):
        table = []
        for g in _OFFSETS:
            trial = offsets.copy()
            trial[k] = g
            m = detection_metrics(
                [f.result(np.argmax(s + trial, axis=1) + 1) for f, s in zip(frames, scores, strict=True)]
            )
            table.append([np.nan_to_num(m[f"{name}_{q}"]) for q in ("precision", "recall", "f1")])
        offsets[k] = _OFFSETS[choose_operating_point(np.array(table), MIN_PRECISION)]
    return offsets


def _site_rule(fit: list[_Frame], test: list[_Frame], columns: slice) -> list[FrameResult]:
    x = np.concatenate([f.features[:, columns] for f in fit])
    predict = _fit_classifier(x, np.concatenate([f.labels() for f in fit]))
    offsets = _choose_offsets(fit, [predict(f.features[:, columns]) for f in fit])
    return [f.result(np.argmax(predict(f.features[:, columns]) + offsets, axis=1) + 1) for f in test]


def _factor_rule(fit: list[_Frame], test: list[_Frame], centre: bool = False) -> list[FrameResult]:
    """The bundled kind of rule (a factor per class on its share), its factors refitted on ``fit``.

    ``centre``: on the shares at the column's centre (:func:`centre_shares`), not the region's.
    """

    def shares(f: _Frame) -> np.ndarray:
        return f.centre if centre else f.features[:, :3]

    offsets = _choose_offsets(fit, [shares(f) for f in fit])
    return [f.result(np.argmax(shares(f) + offsets, axis=1) + 1) for f in test]


def missed_as(results: list[FrameResult]) -> dict[str, dict[str, int]]:
    """What the missed planted defects were called: ``{"<lattice> <class>": {"atom"|...|"not found": n}}``."""
    from models.training.evaluate import lookup
    from simulators import CLASS_NAMES

    out: dict[str, dict[str, int]] = {}
    for r in results:
        called = lookup(r.pred_class, r.truth_match)
        for t, c in zip(r.truth_class, called, strict=True):
            if t > 1 and c != t:
                counts = out.setdefault(f"{r.lattice} {CLASS_NAMES[t]}", {})
                name = CLASS_NAMES[c] if c > 0 else "not found"
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(out.items()))


def main() -> None:
    from models.segmenter import Segmenter
    from models.training.bootstrap import bootstrap_intervals
    from models.training.calibrate import VALIDATION_SEED
    from models.training.evaluate import detection_metrics, eval_frames, match_frame

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="manifest or model (default: the bundled one)")
    parser.add_argument("--fit-frames", type=int, default=192)
    parser.add_argument("--frames", type=int, default=416)
    parser.add_argument("--seed", type=int, default=7_200_001, help="seed of the judged frame stream")
    parser.add_argument("--tta", type=int, default=8, choices=range(9), help="dihedral views (0: skip)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    segmenter = Segmenter(args.model, "cpu")
    fit_frames = list(eval_frames(args.fit_frames, shifted=False, seed=VALIDATION_SEED))
    test_frames = list(eval_frames(args.frames, shifted=False, seed=args.seed))
    start = time.perf_counter()
    fit = [_Frame(segmenter, f, segmenter.segment(f.image, f.pixel_size_nm)) for f in fit_frames]
    test = [_Frame(segmenter, f, segmenter.segment(f.image, f.pixel_size_nm)) for f in test_frames]
    rules = {"bundled": [match_frame(f.frame, f.seg, segmenter.atoms(f.seg)) for f in test]}
    rules["site_network"] = _site_rule(fit, test, slice(0, 5))
    rules["site_intensity"] = _site_rule(fit, test, slice(0, 10))
    rules["centre_disc"] = _factor_rule(fit, test, centre=True)
    if args.tta:

        def viewed(frames: list[SimulatedFrame]) -> list[_Frame]:
            return [_Frame(segmenter, f, segment_tta(segmenter, f.image, f.pixel_size_nm, args.tta)) for f in frames]

        rules[f"dihedral_tta_{args.tta}"] = _factor_rule(viewed(fit_frames), viewed(test_frames))
    base = rules["bundled"]
    report = {}
    for name, results in rules.items():
        strata = [r.lattice for r in results]  # resampled within each lattice, as the frames were drawn
        entry = {"figures": rounded_figures(detection_metrics(results), bootstrap_intervals(results, strata=strata))}
        if name != "bundled":
            paired = bootstrap_intervals(results, baseline=base, strata=strata)
            point = {k: v - detection_metrics(base)[k] for k, v in detection_metrics(results).items() if k in paired}
            entry["minus_bundled"] = rounded_figures(point, paired)
        report[name] = entry
    emit(
        {
            "benchmark": "decision_rules",
            "model": segmenter.manifest.name,
            "fit_frames": args.fit_frames,
            "fit_seed": VALIDATION_SEED,
            "frames": args.frames,
            "seed": args.seed,
            "seconds": round(time.perf_counter() - start, 1),
            "rules": report,
            "missed_as": missed_as(base),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
