"""Bootstrap intervals over evaluation frames, on the bundled model's real results."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.segmenter import Segmenter
from models.training.bootstrap import bootstrap_intervals, figures_from_sums, frame_counts, resample_weights
from models.training.evaluate import FrameResult, detection_metrics, eval_frames, evaluate_frame
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
    spread = 0
    for key in ("columns_f1", "columns_rmse_over_nn", "vacancy_recall", "dopant_recall"):
        low, high = few[key]
        assert low <= point[key] <= high, key
        if high > low:  # (every column of these frames may be found: F1 1 in every resample)
            spread += 1
            assert many[key][1] - many[key][0] < 0.75 * (high - low), key
    assert spread >= 3
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
    with pytest.raises(ValueError, match="one label per frame"):
        bootstrap_intervals(results, strata=["MoS2"] * (len(results) - 1))


def _columns_found(found: int, planted: int, lattice: str) -> FrameResult:
    """A frame of ``planted`` plain columns of which the first ``found`` were detected, nothing else."""
    hit = np.arange(planted) < found
    truth_match = np.where(hit, np.cumsum(hit) - 1, -1)
    zeros, atoms = np.zeros(planted), np.full(planted, int(ColumnClass.ATOM))
    return FrameResult(
        lattice, 0.02, atoms, np.zeros(planted, int), truth_match, zeros, zeros, atoms[:found],
        np.arange(found), zeros[:found], zeros[:found], zeros[:found] + 0.05, 1.0, np.arange(planted), np.arange(found),
    )  # fmt: skip


def test_resampling_within_strata_keeps_their_counts():
    strata = ["MoS2"] * 3 + ["graphene"] * 5 + ["SrTiO3"] * 2
    weights = resample_weights(len(strata), 500, np.random.default_rng(0), strata)
    labels = np.array(strata)
    for label in set(strata):
        assert np.all(weights[:, labels == label].sum(axis=1) == (labels == label).sum()), label
    free = resample_weights(len(strata), 500, np.random.default_rng(0))
    assert np.all(free.sum(axis=1) == len(strata))
    assert np.any(free[:, labels == "SrTiO3"].sum(axis=1) != 2)  # a free resample changes the mix


def test_a_stratified_interval_is_narrower_where_the_strata_differ():
    # Half the frames find nearly every column, half about half of them: a free resample changes the
    # mix of the two and so the recall; the design (and a stratified resample) fixes it.
    results = [_columns_found(95 + k % 5, 100, "easy") for k in range(12)]
    results += [_columns_found(45 + k % 10, 100, "hard") for k in range(12)]
    strata = [r.lattice for r in results]
    point = detection_metrics(results)["columns_recall"]
    free = bootstrap_intervals(results)["columns_recall"]
    stratified = bootstrap_intervals(results, strata=strata)["columns_recall"]
    assert free[0] <= point <= free[1] and stratified[0] <= point <= stratified[1]
    assert stratified[1] - stratified[0] < 0.5 * (free[1] - free[0])
    paired = bootstrap_intervals(results, baseline=results, strata=strata)
    assert paired["columns_recall"] == (0.0, 0.0)


def test_one_stratum_is_the_free_resampling(results):
    assert bootstrap_intervals(results, strata=["all"] * len(results)) == bootstrap_intervals(results)
