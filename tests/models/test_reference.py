"""Independently simulated (abTEM) reference frames: loading, fresh noise draws, scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.segmenter import Segmenter
from models.training.reference import draw_at_dose, load_reference, score_reference
from simulators import ColumnClass

ABTEM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sim" / "abtem"
pytestmark = pytest.mark.skipif(not ABTEM.exists(), reason="shared abTEM frames not beside the checkout")


def test_a_fresh_draw_matches_the_files_own_noise():
    ref = load_reference(ABTEM / "graphene_prism.npz")  # the file's noisy image was drawn at 2e4 e/A^2
    draws = [draw_at_dose(ref, 2e4, np.random.default_rng(s)) for s in range(3)]
    for draw in draws:
        assert draw.shape == ref.image.shape
        assert np.isclose(draw.mean(), ref.image_noisy.mean(), rtol=0.02)
    assert not np.array_equal(draws[0], draws[1])
    assert np.isclose(draw_at_dose(ref, 8e4, np.random.default_rng(0)).mean(), 4 * ref.image_noisy.mean(), rtol=0.02)
    assert {int(ColumnClass.VACANCY), int(ColumnClass.DOPANT)} <= set(ref.truth_class.tolist())


@pytest.mark.parametrize("dose", [0.0, -1.0, float("nan")])
def test_a_dose_that_is_no_positive_number_is_refused(dose):
    with pytest.raises(ValueError, match="dose_e_per_a2 must be a positive number"):
        draw_at_dose(load_reference(ABTEM / "mos2_prism.npz"), dose, np.random.default_rng(0))


def test_the_bundled_model_finds_the_columns_of_a_high_dose_draw():
    ref = load_reference(ABTEM / "mos2_prism.npz")
    figures = score_reference(Segmenter(None, "cpu"), ref, draw_at_dose(ref, 5e5, np.random.default_rng(1)))
    assert figures["f1"] >= 0.99 and figures["rmse_over_nn"] < 0.1
    assert figures["defects_found"] >= figures["defects_planted"] - 1
