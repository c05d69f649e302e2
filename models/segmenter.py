"""Frame in, atoms and uncertainty out: the inference path of the segmentation ensemble.

No torch here: onnxruntime, numpy, scipy and scikit-image only.  A frame is
checked, resampled to the model's native pixel size, normalised, run tile by
tile through the one-graph ensemble, and its columns located; positions are
mapped back to the input image's pixels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from models.input_check import InputCheck, check_input
from models.localize import Atoms, localize
from models.manifest import ModelError, ModelManifest, load_manifest
from models.preprocess import check_native_shape, normalize, resample, validate_image
from models.refine import fitting_radius_px, refine_gaussian
from models.session import OnnxModel
from models.tiling import run_tiled

#: The bundled default model.
DEFAULT_MODEL = Path(__file__).parent / "weights" / "stem_ensemble.json"
#: The class of sites without a column (no peak to fit when refining positions).
VACANCY_CLASS = "vacancy"

#: The ensemble outputs a segmentation is made of: name -> channels (``None``: one per class).
_OUTPUTS: dict[str, int | None] = {"mean_probs": None, "entropy": 1, "mutual_info": 1, "variance": None}


class ModelOutputError(RuntimeError):
    """The ensemble returned something no decision may be based on.

    Attributes
    ----------
    reason : ``missing``, ``shape``, ``non_finite`` or ``range`` (what a run counts failures by).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_outputs(out: dict[str, np.ndarray], shape: tuple[int, int], n_classes: int) -> None:
    """Refuse ensemble outputs that are missing, mis-shaped, non-finite, or probabilities outside [0, 1].

    Raises
    ------
    ModelOutputError
        Naming the output and what is wrong with it.
    """
    for name, channels in _OUTPUTS.items():
        if name not in out:
            raise ModelOutputError("missing", f"the model returned no {name!r}")
        value = np.asarray(out[name])
        expected = (channels or n_classes, *shape)
        if value.shape != expected:
            raise ModelOutputError("shape", f"{name!r} has shape {value.shape}, expected {expected}")
        if not np.isfinite(value).all():
            raise ModelOutputError("non_finite", f"{name!r} holds NaN or Inf")
    probs = out["mean_probs"]
    if probs.min() < -1e-3 or probs.max() > 1 + 1e-3:
        raise ModelOutputError("range", f"mean_probs span [{probs.min():.3g}, {probs.max():.3g}], not [0, 1]")


@dataclass(frozen=True)
class Segmentation:
    """Ensemble outputs for one frame, at the model's native sampling.

    Attributes
    ----------
    mean_probs : (C, h, w) float32.  entropy, mutual_info : (h, w) float32.  variance : (C, h, w) float32.
    scale : (row, col) factors from input pixels to native pixels.
    pixel_size_nm : the input image's pixel size.  input_shape : the input image's (rows, cols).
    ood_score : frame-mean mutual information in standard deviations above the calibration mean.
    timings_ms : time per stage.
    input_check : the input's own statistics (:mod:`models.input_check`): atomic-scale contrast, saturation.
    """

    mean_probs: np.ndarray
    entropy: np.ndarray
    mutual_info: np.ndarray
    variance: np.ndarray
    scale: tuple[float, float]
    pixel_size_nm: float
    ood_score: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    input_shape: tuple[int, int] | None = None
    input_check: InputCheck | None = None

    @property
    def featureless(self) -> bool:
        """Nothing in the input stands out of its noise at atomic scales (see :mod:`models.input_check`)."""
        return self.input_check is not None and self.input_check.featureless

    def to_input_pixels(self, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map native-sampling coordinates back to the input image's pixels."""
        return (np.asarray(row) + 0.5) / self.scale[0] - 0.5, (np.asarray(col) + 0.5) / self.scale[1] - 0.5


class Segmenter:
    """Segmentation ensemble loaded from a manifest (sha256-checked).

    Parameters
    ----------
    model
        Manifest (.json) or model (.onnx) path; the bundled default when None.
    providers
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"tensorrt"`` or a list of them.
    threads
        onnxruntime intra-op threads (0: onnxruntime's choice).
    keep_featureless
        Locate columns in featureless frames too.  By default :meth:`atoms` finds none there: on input
        without atomic-scale contrast (detector noise, vacuum) the ensemble still places hundreds of
        columns, confidently, and on frames so dim that nothing stands out of the noise it gets almost
        none right (``python benchmarks/input_check.py``).
    """

    def __init__(
        self,
        model: Path | None = None,
        providers: str | Sequence[str] = "auto",
        threads: int = 0,
        keep_featureless: bool = False,
    ) -> None:
        self.manifest: ModelManifest
        self.manifest, self.onnx_path = load_manifest(Path(model) if model else DEFAULT_MODEL)
        self.model = OnnxModel(self.onnx_path, providers, threads)
        self.keep_featureless = keep_featureless
        self._check_manifest_fits_graph()

    def _check_manifest_fits_graph(self) -> None:
        """One small blank tile through the graph: the outputs the manifest promises, for its classes.

        A manifest edited or paired with another graph would otherwise fail on every frame, after an
        instrument had been driven to acquire them.

        Raises
        ------
        ModelError
            Naming the manifest, the graph and what does not fit.
        """
        m = self.manifest
        if sorted(m.outputs) != sorted(self.model.output_names):
            raise ModelError(f"the manifest of {self.onnx_path.name} names the outputs {m.outputs}; "
                             f"the graph has {self.model.output_names}")  # fmt: skip
        side = max(32, m.input_multiple) // m.input_multiple * m.input_multiple
        try:
            blank = np.zeros((side, side), dtype=np.float32)
            out = run_tiled(blank, self.model.run, m.tile_size_px, m.tile_overlap_px, m.input_multiple)
            check_outputs(out, (side, side), len(m.classes))
        except Exception as exc:  # (onnxruntime's own errors, or check_outputs')
            raise ModelError(
                f"the manifest of {self.onnx_path.name} does not fit its graph ({len(m.classes)} classes, inputs a "
                f"multiple of {m.input_multiple} px): a {side} x {side} tile gives {type(exc).__name__}: {exc}"
            ) from None

    @property
    def providers(self) -> list[str]:
        """The execution providers actually active."""
        return self.model.active_providers

    def segment(self, image: np.ndarray, pixel_size_nm: float | None) -> Segmentation:
        """Run the ensemble on one frame.

        Raises
        ------
        models.preprocess.ImageError
            For a non-2-D, too small, non-numeric or non-finite image, a missing pixel size, or one
            that would make the resampled image too small or too large (:func:`check_native_shape`).
        ModelOutputError
            The ensemble's outputs are unusable (see :func:`check_outputs`).
        """
        m = self.manifest
        t0 = time.perf_counter()
        arr = validate_image(image, pixel_size_nm)
        assert pixel_size_nm is not None  # checked above
        shape = check_native_shape(arr.shape, pixel_size_nm, m.native_pixel_size_nm)
        checked = check_input(arr, pixel_size_nm)
        native = normalize(resample(arr, shape), m.normalisation.low_pct, m.normalisation.high_pct)
        t1 = time.perf_counter()
        out = run_tiled(native, self.model.run, m.tile_size_px, m.tile_overlap_px, m.input_multiple)
        check_outputs(out, (native.shape[0], native.shape[1]), len(m.classes))
        t2 = time.perf_counter()
        mi = out["mutual_info"][0]
        return Segmentation(
            out["mean_probs"],
            out["entropy"][0],
            mi,
            out["variance"],
            (shape[0] / arr.shape[0], shape[1] / arr.shape[1]),
            float(pixel_size_nm),
            self._ood(mi),
            {"preprocess": 1e3 * (t1 - t0), "ensemble": 1e3 * (t2 - t1)},
            (int(arr.shape[0]), int(arr.shape[1])),
            checked,
        )

    def _ood(self, mutual_info: np.ndarray) -> float:
        cal = self.manifest.calibration
        if cal is None:
            return float("nan")
        return (float(mutual_info.mean()) - cal.frame_mutual_info_mean) / cal.frame_mutual_info_std

    def atoms(
        self, seg: Segmentation, class_bias: Sequence[float] | None = None, keep_featureless: bool | None = None
    ) -> Atoms:
        """Locate columns and return them in the input image's pixel coordinates.

        ``class_bias`` overrides the manifest's fitted decision bias.  A featureless frame has none
        unless ``keep_featureless`` (default: the segmenter's own setting) says to keep them.
        """
        keep = self.keep_featureless if keep_featureless is None else keep_featureless
        if seg.featureless and not keep:
            return Atoms.empty()
        bias = class_bias if class_bias is not None else self.manifest.decision_bias
        found = localize(seg.mean_probs, seg.mutual_info, class_bias=None if bias is None else np.asarray(bias))
        row, col = seg.to_input_pixels(found.row, found.col)
        return replace(found, row=row, col=col)

    def refine(self, seg: Segmentation, image: np.ndarray, atoms: Atoms) -> Atoms:
        """``atoms`` with positions refined by a local 2-D Gaussian fit on the input ``image``.

        See :func:`models.refine.refine_gaussian` (bright columns, as in HAADF).  Vacancies are sites
        without a column and keep their centre of mass, as does every column whose fit fails.

        Raises
        ------
        models.preprocess.ImageError
            ``image`` is not a finite 2-D numeric image.
        ValueError
            ``image`` is not the shape of the image ``seg`` was made from.
        """
        arr = validate_image(image, seg.pixel_size_nm)
        if seg.input_shape is not None and arr.shape != seg.input_shape:
            raise ValueError(f"the image has shape {arr.shape}, but the segmented one was {seg.input_shape}")
        vacancy = [i for i, c in enumerate(self.manifest.classes) if c.name == VACANCY_CLASS]
        columns = ~np.isin(atoms.class_id, vacancy)
        radius = fitting_radius_px(atoms.row, atoms.col)  # from every site: vacancies are part of the lattice
        fit = refine_gaussian(arr, atoms.row[columns], atoms.col[columns], radius_px=radius)
        row, col = atoms.row.copy(), atoms.col.copy()
        row[columns], col[columns] = fit.row, fit.col
        return replace(atoms, row=row, col=col)
