"""Image files of every supported format, with their pixel sizes; unreadable files fail clearly."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from models.io import ImageReadError, read_image

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4000, (40, 48)).astype(np.uint16)


def test_npy_and_npz(tmp_path, image):
    np.save(tmp_path / "a.npy", image)
    np.savez(tmp_path / "b.npz", image=image, pixel_size_nm=0.02)
    np.savez(tmp_path / "c.npz", image, pixel_size_A=0.5)
    a, b, c = (read_image(tmp_path / n) for n in ("a.npy", "b.npz", "c.npz"))
    np.testing.assert_array_equal(a.image, image)
    assert a.pixel_size_nm is None and b.pixel_size_nm == pytest.approx(0.02) and c.pixel_size_nm == pytest.approx(0.05)


def test_tiff_with_imagej_calibration(tmp_path, image):
    tifffile.imwrite(tmp_path / "a.tif", image, imagej=True, resolution=(1 / 0.025, 1 / 0.025), metadata={"unit": "nm"})
    tifffile.imwrite(tmp_path / "b.tiff", image)
    a, b = read_image(tmp_path / "a.tif"), read_image(tmp_path / "b.tiff")
    np.testing.assert_array_equal(a.image, image)
    assert a.pixel_size_nm == pytest.approx(0.025, rel=1e-3) and b.pixel_size_nm is None


def test_png(tmp_path):
    import imageio.v3 as iio

    img = np.random.default_rng(1).integers(0, 255, (32, 40)).astype(np.uint8)
    iio.imwrite(tmp_path / "a.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png").image, img)


def test_mrc(tmp_path, image):
    import mrcfile

    with mrcfile.new(tmp_path / "a.mrc") as mrc:
        mrc.set_data(image.astype(np.float32))
        mrc.voxel_size = 0.3  # angstrom
    loaded = read_image(tmp_path / "a.mrc")
    np.testing.assert_array_equal(loaded.image, image.astype(np.float32))
    assert loaded.pixel_size_nm == pytest.approx(0.03)


def test_generic_hdf5_takes_the_largest_image(tmp_path, image):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["positions"] = np.zeros((141, 2))
        f["group/image"] = image
    np.testing.assert_array_equal(read_image(tmp_path / "a.h5").image, image)


def test_stack_missing_and_corrupt_files_are_refused(tmp_path):
    np.save(tmp_path / "stack.npy", np.zeros((3, 20, 20)))
    (tmp_path / "bad.dm3").write_bytes(b"not a dm3 file at all")
    (tmp_path / "x.xyz").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.tif")
    with pytest.raises(ImageReadError, match=r"cannot read .*bad\.dm3"):
        read_image(tmp_path / "bad.dm3")
    with pytest.raises(ImageReadError, match=r"unsupported image format '\.xyz'"):
        read_image(tmp_path / "x.xyz")


@pytest.mark.skipif(not SHARED.exists(), reason="shared data not present")
@pytest.mark.parametrize(
    ("name", "shape", "pixel_nm"),
    [
        ("real/openNCEM/16_STOimage.emi", (1024, 1024), 0.01001),
        ("real/atomap/test_ADF_cropped.hdf5", (400, 380), 0.009326),
        ("sim/abtem/mos2_multislice.npz", (332, 351), 0.009997),
    ],
)
def test_real_files_keep_their_calibration(name, shape, pixel_nm):
    loaded = read_image(SHARED / name)
    assert loaded.image.shape == shape
    assert loaded.pixel_size_nm == pytest.approx(pixel_nm, rel=1e-3)


@pytest.mark.skipif(not SHARED.exists(), reason="shared data not present")
def test_tilt_stack_is_not_taken_for_an_image():
    with pytest.raises(ImageReadError, match="stack of shape"):
        read_image(SHARED / "real/etspy/HAADF.dm3")


def test_png_alpha_is_not_averaged_into_the_image(tmp_path):
    import imageio.v3 as iio

    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png").image, grey)
    iio.imwrite(tmp_path / "la.png", np.stack([grey, np.full_like(grey, 128)], axis=-1))
    np.testing.assert_allclose(read_image(tmp_path / "la.png").image, grey)


def test_npz_without_an_image_key_takes_its_one_image_or_names_the_choice(tmp_path, image):
    np.savez(tmp_path / "one.npz", pixel_size_nm=0.02, haadf=image)  # the metadata comes first
    np.savez(tmp_path / "two.npz", haadf=image, bf=image)
    np.savez(tmp_path / "meta.npz", image=image, meta='{"pixel_size_nm": "0.02"}')
    np.savez(tmp_path / "badmeta.npz", image=image, meta='{"pixel_size_nm": "fine"}')
    one = read_image(tmp_path / "one.npz")
    np.testing.assert_array_equal(one.image, image)
    assert one.pixel_size_nm == pytest.approx(0.02)
    with pytest.raises(ImageReadError, match=r"several 2-D arrays \(haadf, bf\) and none named 'image'"):
        read_image(tmp_path / "two.npz")
    assert read_image(tmp_path / "meta.npz").pixel_size_nm == pytest.approx(0.02)
    with pytest.raises(ImageReadError, match="recorded pixel size is not a number"):
        read_image(tmp_path / "badmeta.npz")


def test_truncated_mrc_is_refused(tmp_path, image):
    import mrcfile

    with mrcfile.new(tmp_path / "a.mrc") as mrc:
        mrc.set_data(image.astype(np.float32))
    whole = (tmp_path / "a.mrc").read_bytes()
    (tmp_path / "cut.mrc").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(tmp_path / "cut.mrc")


def _hspy_signal(data: np.ndarray, scale: object, units: str) -> dict:
    names = "zyx"[-data.ndim :]
    axes = [
        {"name": n, "size": s, "scale": scale, "offset": 0.0, "units": units, "navigate": i < data.ndim - 2}
        for i, (n, s) in enumerate(zip(names, data.shape, strict=True))
    ]
    return {
        "data": data,
        "axes": axes,
        "metadata": {"General": {"title": "t"}, "Signal": {"signal_type": ""}},
        "original_metadata": {},
        "tmp_parameters": {},
        "learning_results": {},
        "models": {},
        "attributes": {"_lazy": False},
        "package_info": {"name": "hyperspy", "version": "2.0"},
    }


@pytest.mark.parametrize(("scale", "units"), [(0.02, "nm"), (np.float32(0.02), "nm"), (2e-11, "m"), (0.2, "Å")])
def test_hyperspy_calibration_in_any_length_unit_and_number_type(tmp_path, image, scale, units):
    from rsciio.hspy import file_writer

    file_writer(str(tmp_path / "a.hspy"), _hspy_signal(image.astype(np.float32), scale, units))
    assert read_image(tmp_path / "a.hspy").pixel_size_nm == pytest.approx(0.02, rel=1e-5)


def test_a_stack_in_hyperspy_layout_is_called_a_stack(tmp_path, image):
    from rsciio.hspy import file_writer

    file_writer(str(tmp_path / "s.hspy"), _hspy_signal(np.stack([image] * 3).astype(np.float32), 0.02, "nm"))
    with pytest.raises(ImageReadError, match="stack of shape"):
        read_image(tmp_path / "s.hspy")


def test_a_file_with_a_stack_before_its_image_gives_the_image():
    """An EMD may hold a spectrum image or a stack before the HAADF image: the search goes on past it."""
    from models.io import _from_rsciio

    axes = [{"scale": 0.01, "units": "nm"}] * 2
    records = [{"data": np.zeros((5, 32, 32)), "axes": []}, {"data": np.ones((32, 40)), "axes": axes}]
    loaded = _from_rsciio(records, Path("x.emd"))
    assert loaded.image.shape == (32, 40) and loaded.pixel_size_nm == pytest.approx(0.01)
    with pytest.raises(ImageReadError, match=r"stack of shape \(5, 32, 32\)"):
        _from_rsciio(records[:1], Path("x.emd"))


def test_colour_tiff_is_read_as_grey_like_a_colour_png(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([grey] * 3, axis=-1), photometric="rgb")
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([grey] * 3), photometric="minisblack")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.tif").image, grey)
    assert read_image(tmp_path / "stack.tif").image.shape == (3, 6, 8)  # a stack stays a stack (refused later)


def test_a_stack_of_one_frame_is_its_frame():
    from models.io import _from_rsciio

    axes = [{"scale": 1.0, "units": ""}, {"scale": 0.01, "units": "nm"}, {"scale": 0.01, "units": "nm"}]
    loaded = _from_rsciio([{"data": np.ones((1, 32, 40)), "axes": axes}], Path("x.emd"))
    assert loaded.image.shape == (32, 40) and loaded.pixel_size_nm == pytest.approx(0.01)


def test_a_planar_colour_tiff_is_read_as_grey_like_an_interleaved_one(tmp_path):
    """Colour planes first (planarconfig separate): the mean was taken along the columns instead."""
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    tifffile.imwrite(tmp_path / "planar.tif", np.stack([grey] * 3), photometric="rgb", planarconfig="separate")
    np.testing.assert_allclose(read_image(tmp_path / "planar.tif").image, grey)


def test_pixels_that_are_not_square_are_refused_not_taken_for_square(tmp_path, image):
    """y at twice x's pixel size: every position along y would be off by a factor of two."""
    from models.io import _from_rsciio

    meta = {"unit": "nm"}
    tifffile.imwrite(tmp_path / "a.tif", image.astype(np.float32), imagej=True, resolution=(100.0, 50.0), metadata=meta)
    with pytest.raises(ImageReadError, match=r"0\.01 nm wide and 0\.02 nm tall; square pixels are needed"):
        read_image(tmp_path / "a.tif")
    tifffile.imwrite(
        tmp_path / "s.tif", image.astype(np.float32), imagej=True, resolution=(100.0, 100.0), metadata=meta
    )
    assert read_image(tmp_path / "s.tif").pixel_size_nm == pytest.approx(0.01)
    axes = [{"scale": 0.02, "units": "nm"}, {"scale": 0.01, "units": "nm"}]
    with pytest.raises(ImageReadError, match="square pixels are needed"):
        _from_rsciio([{"data": np.ones((32, 40)), "axes": axes}], Path("x.emd"))
