"""Reconstruction: WBP and SART against a planted phantom, the missing wedge, readers and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from models.tilt_io import read_tilt_series, write_volume
from models.tomo import TomoError, psnr_db, reconstruct
from simulators.phantom import PhantomConfig, make_phantom
from simulators.tilt import project


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomConfig(seed=5, size_px=32)).volume


def series_of(volume, angles):
    return np.stack([project(volume, a) for a in angles])


def test_full_range_reconstruction_recovers_the_phantom(phantom):
    angles = np.linspace(-90, 88, 90)
    for method, floor_db in (("wbp", 25.0), ("sart", 25.0)):
        assert psnr_db(reconstruct(series_of(phantom, angles), angles, method), phantom) > floor_db


def test_a_missing_wedge_costs_quality_and_sart_copes_better(phantom):
    full = np.linspace(-90, 88, 90)
    wedge = np.linspace(-60, 60, 61)
    wbp_full = psnr_db(reconstruct(series_of(phantom, full), full, "wbp"), phantom)
    wbp_wedge = psnr_db(reconstruct(series_of(phantom, wedge), wedge, "wbp"), phantom)
    sart_wedge = psnr_db(reconstruct(series_of(phantom, wedge), wedge, "sart"), phantom)
    assert wbp_wedge < wbp_full - 2 and sart_wedge > wbp_wedge


def test_cols_axis_is_the_transposed_series(phantom):
    angles = np.linspace(-70, 70, 15)
    series = series_of(phantom, angles)
    a = reconstruct(series, angles, "wbp")
    b = reconstruct(series.transpose(0, 2, 1), angles, "wbp", tilt_axis="cols")
    assert np.allclose(a, b)


@pytest.mark.parametrize(
    ("series", "angles", "message"),
    [
        (np.zeros((4, 8)), np.zeros(4), "n_tilts, rows, cols"),
        (np.zeros((4, 8, 8)), np.arange(3.0), "4 projections but 3 angles"),
        (np.zeros((4, 8, 8)), np.array([0.0, 1.0, 1.0, 2.0]), "repeated"),
        (np.full((2, 8, 8), np.nan), np.array([0.0, 1.0]), "NaN"),
        (np.zeros((1, 8, 8)), np.array([0.0]), "at least 2"),
        (np.zeros((9, 8, 8)), np.radians(np.linspace(-60, 60, 9)), "are they in radians"),
        (np.zeros((3, 8, 8)), np.array([0.0, 30.0, 750.0]), r"outside \[-180, 360\]"),
    ],
)
def test_bad_series_are_refused_with_the_reason(series, angles, message):
    with pytest.raises(TomoError, match=message):
        reconstruct(series, angles)


def test_readers_round_trip_npz_npy_with_angles_and_mrc(tmp_path, phantom):
    angles = np.linspace(-60, 60, 9)
    series = series_of(phantom, angles).astype(np.float32)
    np.savez(tmp_path / "s.npz", series=series, angles=angles)
    got = read_tilt_series(tmp_path / "s.npz")
    assert np.array_equal(got.series, series) and np.allclose(got.angles_deg, angles)
    np.save(tmp_path / "s.npy", series)
    with pytest.raises(TomoError, match="--angles"):
        read_tilt_series(tmp_path / "s.npy")
    (tmp_path / "s.rawtlt").write_text("\n".join(f"{a:.3f}" for a in angles))
    assert np.allclose(read_tilt_series(tmp_path / "s.npy").angles_deg, angles)
    import mrcfile

    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(series)
        m.voxel_size = 5.0
    (tmp_path / "s.rawtlt").rename(tmp_path / "s2.rawtlt")
    (tmp_path / "t.txt").write_text("\n".join(map(str, angles)))
    got = read_tilt_series(tmp_path / "s.mrc", tmp_path / "t.txt")
    assert got.pixel_size_nm == pytest.approx(0.5) and got.series.shape == series.shape
    written = write_volume(reconstruct(series, angles), tmp_path / "vol.mrc", 0.5)
    assert [p.suffix for p in written] == [".npy", ".mrc"] and all(p.stat().st_size > 0 for p in written)


def test_truncated_series_files_are_named_not_tracebacks(tmp_path, phantom):
    import mrcfile

    angles = np.linspace(-60, 60, 9)
    series = series_of(phantom, angles).astype(np.float32)
    np.savez(tmp_path / "s.npz", series=series, angles=angles)
    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(series)
    (tmp_path / "s.rawtlt").write_text("\n".join(map(str, angles)))
    for name in ("s.npz", "s.mrc"):
        whole = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(TomoError, match=r"cannot read .*s\.npz: BadZipFile"):
        read_tilt_series(tmp_path / "s.npz")
    with pytest.raises(TomoError, match=r"s\.mrc is truncated or corrupt"):
        read_tilt_series(tmp_path / "s.mrc")


def test_a_series_with_the_tilt_axis_along_cols_is_checked_as_it_is_reconstructed():
    angles = np.array([-40.0, -20.0, 0.0, 20.0, 40.0])
    series = np.random.default_rng(0).random((5, 32, 3)).astype(np.float32)  # 32 px across the axis, 3 slices
    assert reconstruct(series, angles, tilt_axis="cols").shape == (32, 3, 32)
    with pytest.raises(TomoError, match="pixels across the tilt axis"):
        reconstruct(series.transpose(0, 2, 1)[:, :, :2], angles, tilt_axis="rows")


def test_a_volume_too_large_to_hold_is_refused_before_any_allocation():
    """3 projections of 1 x 40 000 px would be a 40 000 x 1 x 40 000 volume: 6 GiB, then a MemoryError."""
    series = np.ones((3, 1, 40_000), dtype=np.float32)
    with pytest.raises(TomoError, match=r"40000 x 1 x 40000 volume \(6\.0 GiB of float32\)"):
        reconstruct(series, np.array([-30.0, 0.0, 30.0]))
