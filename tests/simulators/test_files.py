"""Frames survive a round-trip through .npz, and the preview renders."""

from __future__ import annotations

import numpy as np

from simulators import SimulatedFrame, render_frame
from simulators.preview import save_preview


def test_npz_round_trip(tmp_path, mos2, small_scan, quiet, rng):
    frame = render_frame(mos2, small_scan, quiet, rng)
    frame.save_npz(tmp_path / "f.npz")
    back = SimulatedFrame.load_npz(tmp_path / "f.npz")
    np.testing.assert_array_equal(back.image, frame.image)
    np.testing.assert_array_equal(back.truth.class_mask, frame.truth.class_mask)
    np.testing.assert_array_equal(back.truth.columns.species, frame.truth.columns.species)
    np.testing.assert_array_equal(back.truth.columns.row, frame.truth.columns.row)
    assert back.scan == frame.scan and back.imaging == frame.imaging
    assert back.dose_e_per_a2 == frame.dose_e_per_a2


def test_preview_png_is_written(tmp_path, mos2, small_scan, quiet, rng):
    frame = render_frame(mos2, small_scan, quiet, rng)
    save_preview(frame, tmp_path / "p.png")
    data = (tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
