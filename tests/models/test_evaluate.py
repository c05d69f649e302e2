"""Matching located atoms to planted columns at the frame edge (models.training.evaluate.match_frame)."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from models.localize import Atoms
from models.segmenter import Segmentation, Segmenter
from models.training.evaluate import away_from_edge, detection_metrics, eval_frames, match_frame
from simulators import SimulatedFrame


@pytest.fixture(scope="module")
def frame_and_seg() -> tuple[SimulatedFrame, Segmentation]:
    frame = next(eval_frames(1, shifted=False, pixels=128, seed=91))
    return frame, Segmenter(None, "cpu").segment(frame.image, frame.pixel_size_nm)


def _perfect(frame: SimulatedFrame) -> Atoms:
    """One detection on every planted column, of its class."""
    columns = frame.truth.columns
    n = len(columns.row)
    zeros = np.zeros(n, np.float32)
    return Atoms(
        columns.row.astype(np.float64), columns.col.astype(np.float64), columns.class_id.astype(np.int64),
        zeros + 1, zeros, zeros,
    )  # fmt: skip


def _column_near_top(frame: SimulatedFrame) -> int:
    """A planted column well inside the frame on every side but the top, the one nearest the top."""
    columns = frame.truth.columns
    rc = np.column_stack([columns.row, columns.col])
    ok = away_from_edge(rc, frame.image.shape, 8)
    candidates = np.flatnonzero(ok)
    return int(candidates[np.argmin(columns.row[candidates])])


def test_perfect_detections_are_all_counted_once(frame_and_seg):
    frame, seg = frame_and_seg
    atoms = _perfect(frame)
    result = match_frame(frame, seg, atoms)
    figures = detection_metrics([result])
    assert figures["columns_precision"] == figures["columns_recall"] == 1.0
    inside = away_from_edge(frame.truth.columns, frame.image.shape, 4)
    assert np.array_equal(result.truth_index, np.flatnonzero(inside))
    assert np.array_equal(result.pred_index, np.flatnonzero(inside))  # one detection per column, same order
    assert np.array_equal(result.truth_match, np.arange(len(result.truth_index)))


@pytest.mark.parametrize("truth_side", ["inside", "outside"])
def test_a_column_and_its_detection_on_either_side_of_the_margin_count_once(frame_and_seg, truth_side):
    """A planted column just inside the margin with its detection just outside (or the reverse) is a hit, or
    not counted at all: never a miss plus a false detection (cutting each list at the margin before matching
    made it both)."""
    frame, seg = frame_and_seg
    i = _column_near_top(frame)
    row = float(frame.truth.columns.row[i])
    atoms = _perfect(frame)
    moved = atoms.row.copy()
    if truth_side == "inside":
        margin, moved[i] = row - 0.2, row - 0.4  # the truth counts; its detection lies in the margin
    else:
        margin, moved[i] = row + 0.2, row + 0.4  # the truth lies in the margin; its detection does not
    result = match_frame(frame, seg, replace(atoms, row=moved), margin_px=margin)
    figures = detection_metrics([result])
    assert (result.truth_match < 0).sum() == 0, "a miss"
    assert (result.pred_match < 0).sum() == 0, "a false detection"
    assert figures["columns_precision"] == figures["columns_recall"] == 1.0
    counted_truth = i in result.truth_index
    assert counted_truth == (truth_side == "inside")
    assert (i in result.pred_index) == counted_truth  # the detection counts where, and only where, its column does


def test_an_unmatched_detection_counts_as_false_only_inside_the_margin(frame_and_seg):
    frame, seg = frame_and_seg
    atoms = _perfect(frame)
    i = _column_near_top(frame)
    n = len(atoms.row)
    # Two spare detections: one in the margin, far from any counted column; one on top of column i (inside),
    # which the one-to-one matching leaves unmatched.
    spare_row, spare_col = [1.0, float(atoms.row[i])], [frame.image.shape[1] / 2, float(atoms.col[i])]
    extra = Atoms(
        np.append(atoms.row, spare_row), np.append(atoms.col, spare_col), np.append(atoms.class_id, [1, 1]),
        np.ones(n + 2, np.float32), np.zeros(n + 2, np.float32), np.zeros(n + 2, np.float32),
    )  # fmt: skip
    result = match_frame(frame, seg, extra)
    unmatched = set(result.pred_index[result.pred_match < 0].tolist())
    assert unmatched == {n + 1} or unmatched == {i}  # the duplicate pair leaves one of the two false
    assert n not in result.pred_index  # the spare one in the margin: neither a hit nor a false detection
    assert (result.truth_match < 0).sum() == 0


def test_a_frame_with_no_columns_or_no_detections_is_matched(frame_and_seg):
    frame, seg = frame_and_seg
    atoms = _perfect(frame)
    nothing = np.zeros(0, bool)
    empty_frame = replace(frame, truth=replace(frame.truth, columns=frame.truth.columns.select(nothing)))
    all_false = match_frame(empty_frame, seg, atoms)
    assert len(all_false.truth_class) == 0 and np.all(all_false.pred_match == -1) and len(all_false.pred_index) > 0
    none_found = match_frame(frame, seg, Atoms(*(getattr(atoms, f.name)[nothing] for f in fields(atoms))))
    assert len(none_found.pred_class) == 0 and np.all(none_found.truth_match == -1)
