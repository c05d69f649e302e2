"""Independently simulated (abTEM) reference frames: loading, fresh noise draws, scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.segmenter import Segmenter
from models.training.reference import Reference, draw_at_dose, load_reference, score_reference
from simulators import ColumnClass

ABTEM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sim" / "abtem"
needs_abtem = pytest.mark.skipif(not ABTEM.exists(), reason="shared abTEM frames not beside the checkout")


def _flat_reference(value: float = 0.01) -> Reference:
    image = np.full((40, 40), value, np.float32)
    rc = np.array([[10.0, 10.0], [20.0, 20.0]])
    return Reference(image, image, 0.01, rc, np.array([int(ColumnClass.ATOM), int(ColumnClass.VACANCY)]))


@needs_abtem
def test_a_fresh_draw_matches_the_files_own_noise():
    ref = load_reference(ABTEM / "graphene_prism.npz")  # the file's noisy image was drawn at 2e4 e/A^2
    draws = [draw_at_dose(ref, 2e4, np.random.default_rng(s)) for s in range(3)]
    for draw in draws:
        assert draw.shape == ref.image.shape
        assert np.isclose(draw.mean(), ref.image_noisy.mean(), rtol=0.02)
    assert not np.array_equal(draws[0], draws[1])
    assert np.isclose(draw_at_dose(ref, 8e4, np.random.default_rng(0)).mean(), 4 * ref.image_noisy.mean(), rtol=0.02)
    assert {int(ColumnClass.VACANCY), int(ColumnClass.DOPANT)} <= set(ref.truth_class.tolist())


def test_a_draw_has_the_counts_of_its_dose():
    # 0.01 of the beam on 0.1 A pixels at 1e5 e/A^2: 1e5 * 0.01 * 0.01 = 10 counts per pixel on average.
    draw = draw_at_dose(_flat_reference(), 1e5, np.random.default_rng(0))
    assert draw.dtype == np.float32 and abs(draw.mean() - 10.0) < 0.5 and draw.var() > 5.0


@pytest.mark.parametrize("dose", [0.0, -1.0, float("nan"), float("inf")])
def test_a_dose_that_is_no_positive_number_is_refused(dose):
    with pytest.raises(ValueError, match="dose_e_per_a2 must be a positive number"):
        draw_at_dose(_flat_reference(), dose, np.random.default_rng(0))


@needs_abtem
def test_the_bundled_model_finds_the_columns_of_a_high_dose_draw():
    ref = load_reference(ABTEM / "mos2_prism.npz")
    figures = score_reference(Segmenter(None, "cpu"), ref, draw_at_dose(ref, 5e5, np.random.default_rng(1)))
    assert figures["f1"] >= 0.99 and figures["rmse_over_nn"] < 0.1
    assert figures["defects_found"] >= figures["defects_planted"] - 1
