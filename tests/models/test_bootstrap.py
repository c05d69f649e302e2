"""Bootstrap intervals over evaluation frames, on the bundled model's real results."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.segmenter import Segmenter
from models.training.bootstrap import bootstrap_intervals, figures_from_sums, frame_counts
from models.training.evaluate import detection_metrics, eval_frames, evaluate_frame
from simulators import ColumnClass


@pytest.fixture(scope="module")
def results():
    segmenter = Segmenter(None, "cpu")
    return [evaluate_frame(segmenter, f) for f in eval_frames(8, shifted=False, pixels=192)]


def test_summed_counts_give_the_figures_of_detection_metrics(results):
    direct = detection_metrics(results)
    from_counts = figures_from_sums({k: v.sum() for k, v in frame_counts(results).items()})
    shared = [k for k in direct if k in from_counts]
    assert len(shared) >= 12 and "vacancy_recall" in shared and "columns_rmse_over_nn" in shared
    for key in shared:
        assert np.isclose(from_counts[key], direct[key], equal_nan=True), key


def test_intervals_hold_the_estimate_and_narrow_with_more_frames(results):
    point = detection_metrics(results)
    few = bootstrap_intervals(results, seed=1)
    many = bootstrap_intervals(results * 4, seed=1)  # the same frames four times: a quarter of the variance
    for key in ("columns_f1", "columns_rmse_over_nn", "vacancy_recall", "dopant_recall"):
        low, high = few[key]
        assert low <= point[key] <= high and high > low, key
        assert many[key][1] - many[key][0] < 0.75 * (high - low), key
    assert bootstrap_intervals(results, seed=1) == few  # seeded


def test_a_paired_difference_is_zero_for_the_same_results_and_sees_a_change(results):
    assert all(v == (0.0, 0.0) for v in bootstrap_intervals(results, baseline=results).values())
    # Every other predicted vacancy now called a plain column: recall drops in every resample.
    worse = []
    for r in results:
        pred = r.pred_class.copy()
        found = np.flatnonzero(pred == ColumnClass.VACANCY)
        pred[found[::2]] = ColumnClass.ATOM
        worse.append(dataclasses.replace(r, pred_class=pred))
    diff = bootstrap_intervals(worse, baseline=results)
    assert diff["vacancy_recall"][1] < 0
    assert diff["columns_f1"] == (0.0, 0.0)  # the columns are still found


def test_bad_requests_are_refused(results):
    with pytest.raises(ValueError, match="at least one evaluated frame"):
        bootstrap_intervals([])
    with pytest.raises(ValueError, match="pair the same frames"):
        bootstrap_intervals(results, baseline=results[:-1])
    with pytest.raises(ValueError, match="level"):
        bootstrap_intervals(results, level=1.0)
