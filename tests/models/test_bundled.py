"""The bundled default ensemble: loads by default, and finds planted columns in unseen frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.segmenter import DEFAULT_MODEL, Segmenter
from models.training.evaluate import detection_metrics, eval_frames, evaluate_frame, uncertainty_auroc


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(None, "cpu")


def test_default_model_is_bundled_with_its_manifest(segmenter):
    assert DEFAULT_MODEL.exists()
    manifest = json.loads(DEFAULT_MODEL.read_text())
    assert manifest["members"] == 5
    onnx = DEFAULT_MODEL.with_suffix(".onnx")
    assert onnx.stat().st_size < 20 * 2**20
    assert segmenter.manifest.onnx_sha256 == manifest["onnx_sha256"]
    assert "autoscope train" in manifest["training"]["command"]
    assert manifest["validation"]["columns_f1"] >= 0.97


def test_finds_planted_columns_in_unseen_frames(segmenter):
    # Eight frames from a seed stream no training or export step used.
    results = [evaluate_frame(segmenter, f) for f in eval_frames(8, shifted=False, pixels=192, seed=77)]
    figures = detection_metrics(results)
    assert figures["columns_f1"] > 0.95
    assert figures["columns_rmse_over_nn"] < 0.1


def test_uncertainty_is_higher_on_shifted_frames(segmenter):
    clean = [evaluate_frame(segmenter, f) for f in eval_frames(6, shifted=False, pixels=160, seed=78)]
    shifted = [evaluate_frame(segmenter, f) for f in eval_frames(6, shifted=True, pixels=160, seed=78)]
    assert np.mean([r.ood_score for r in shifted]) > np.mean([r.ood_score for r in clean])


def test_presence_entropy_flags_wrong_and_missed_columns_on_shifted_frames(segmenter):
    """Low dose and a wide probe make faint columns all members call background alike: the mutual
    information cannot flag them, the presence entropy (aleatoric included) must."""
    shifted = [evaluate_frame(segmenter, f) for f in eval_frames(6, shifted=True, pixels=160, seed=79)]
    presence = uncertainty_auroc(shifted, "presence")
    assert presence >= 0.75
    assert presence > uncertainty_auroc(shifted, "mutual_info") + 0.1
    with pytest.raises(ValueError, match="unknown measure"):
        uncertainty_auroc(shifted, "entropy")
