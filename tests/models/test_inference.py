"""Preprocessing, tiling and localisation: numbers checked against planted truth."""

from __future__ import annotations

import numpy as np
import pytest

from models.localize import localize
from models.preprocess import NORMALISED_LIMIT, ImageError, check_native_shape, normalize, resample, validate_image
from models.segmenter import Segmenter
from models.tiling import run_tiled
from simulators import ImagingParams, ScanRequest, Specimen, SpecimenConfig, render_frame


@pytest.mark.parametrize(
    ("image", "size", "message"),
    [
        (np.full((64, 64), np.nan), 0.02, "NaN or Inf"),
        (np.where(np.arange(64 * 64).reshape(64, 64) == 77, np.inf, 1.0), 0.02, "1 NaN or Inf"),
        (np.ones((4, 64, 64)), 0.02, "must be 2-D"),
        (np.ones(64), 0.02, "must be 2-D"),
        (np.ones((8, 64)), 0.02, "at least 16 x 16"),
        (np.ones((64, 64)), None, "pixel size is missing"),
        (np.ones((64, 64)), -0.1, "pixel_size_nm must be > 0"),
        (np.ones((64, 64)), float("nan"), "pixel_size_nm must be > 0"),
        (np.full((64, 64), "a"), 0.02, "dtype must be integer or floating"),
        (np.ones((64, 64), dtype=bool), 0.02, "dtype must be integer or floating"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(image, size, message):
    with pytest.raises(ImageError, match=message):
        validate_image(image, size)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float16, np.float32, np.float64])
def test_all_numeric_dtypes_are_accepted(tiny_model, dtype):
    rng = np.random.default_rng(0)
    image = (rng.random((80, 72)) * 200).astype(dtype)
    seg = Segmenter(tiny_model.manifest, "cpu").segment(image, 0.03)
    assert seg.mean_probs.shape == (4, 80, 72)
    np.testing.assert_allclose(seg.mean_probs.sum(axis=0), 1.0, atol=1e-4)


def test_resampling_maps_coordinates_both_ways(tiny_model):
    seg = Segmenter(tiny_model.manifest, "cpu").segment(np.random.default_rng(0).random((150, 120)), 0.015)
    assert seg.mean_probs.shape[1:] == (75, 60)  # 0.015 -> 0.03 nm per pixel
    r, c = seg.to_input_pixels(np.array([0.0, 74.0]), np.array([0.0, 59.0]))
    np.testing.assert_allclose(r, [0.5, 148.5])
    np.testing.assert_allclose(c, [0.5, 118.5])


def test_normalisation_ignores_dose_and_offset():
    rng = np.random.default_rng(1)
    image = rng.random((64, 64)).astype(np.float32)
    np.testing.assert_allclose(normalize(image), normalize(37.0 * image + 1000.0), atol=1e-4)
    assert resample(image, (32, 32)).shape == (32, 32)


def test_normalisation_clips_outliers_and_nothing_else():
    rng = np.random.default_rng(2)
    image = rng.poisson(3.0, (128, 128)).astype(np.float32)
    plain = normalize(image)
    assert -NORMALISED_LIMIT < plain.min() and plain.max() < NORMALISED_LIMIT  # counts of a dim frame: untouched
    spiked = image.copy()
    spiked[5, 5], spiked[9, 9] = 65535.0, -65535.0
    out = normalize(spiked)
    assert out[5, 5] == NORMALISED_LIMIT and out[9, 9] == -NORMALISED_LIMIT
    mask = np.ones_like(image, dtype=bool)
    mask[5, 5] = mask[9, 9] = False
    np.testing.assert_array_equal(out[mask], plain[mask])  # (the percentiles did not move)


def test_hot_pixels_leave_the_rest_of_the_frame_alone(segmenter):
    """30 saturated pixels in a 512 x 512 frame (of about 3800 columns): unclipped, the ensemble lost four in five."""
    frame = render_frame(
        Specimen(SpecimenConfig(seed=5, lattice="graphene", width_nm=40, height_nm=40)),
        ScanRequest(fov_nm=10.24, rows=512, cols=512, dwell_us=8.0, rotation_deg=17.0),
        ImagingParams(track_dose=False),
        np.random.default_rng(7),
    )
    counts = np.clip(np.round(frame.image), 0, None).astype(np.uint16)
    hot = counts.copy()
    rng = np.random.default_rng(1)
    hot[rng.integers(0, 512, 30), rng.integers(0, 512, 30)] = 65535
    clean_n = len(segmenter.atoms(segmenter.segment(counts, 0.02)))
    hot_n = len(segmenter.atoms(segmenter.segment(hot, 0.02)))
    assert clean_n > 1000 and abs(hot_n - clean_n) <= 8 * 30  # a hot pixel costs its neighbourhood at most


def _local_mean(batch: np.ndarray) -> dict[str, np.ndarray]:
    """A stand-in network with a 5 x 5 receptive field."""
    from scipy.ndimage import uniform_filter

    img = batch[0, 0]
    return {"a": uniform_filter(img, 5, mode="reflect")[None, None], "b": (img**2)[None, None]}


def test_tiling_has_no_seams():
    image = np.random.default_rng(2).random((300, 260)).astype(np.float32)
    whole = _local_mean(image[None, None])
    tiled = run_tiled(image, _local_mean, tile=64, overlap=16, multiple=8)
    np.testing.assert_allclose(tiled["b"][0], whole["b"][0, 0], rtol=1e-5)
    inner = (slice(3, -3), slice(3, -3))  # away from the image border, where padding differs
    assert np.abs(tiled["a"][0][inner] - whole["a"][0, 0][inner]).max() < 1e-5


def test_a_tall_narrow_frame_is_tiled_without_padding_it_out_to_square_tiles():
    image = np.random.default_rng(5).random((300, 20)).astype(np.float32)
    shapes: list[tuple[int, ...]] = []

    def recording(batch: np.ndarray) -> dict[str, np.ndarray]:
        shapes.append(batch.shape)
        return _local_mean(batch)

    tiled = run_tiled(image, recording, tile=64, overlap=16, multiple=8)
    assert len(shapes) > 1 and {s[3] for s in shapes} == {24}  # 20 columns, padded to the multiple only
    np.testing.assert_allclose(tiled["b"][0], image**2, rtol=1e-5)
    whole = _local_mean(image[None, None])["a"][0, 0]
    assert np.abs(tiled["a"][0][3:-3, 3:-3] - whole[3:-3, 3:-3]).max() < 1e-5


def test_a_wide_frame_through_the_model_matches_one_pass(tiny_model):
    seg = Segmenter(tiny_model.manifest, "cpu")
    native = normalize(np.random.default_rng(6).random((40, 400)).astype(np.float32))
    one = run_tiled(native, seg.model.run, tile=512, overlap=0, multiple=4)
    tiles = run_tiled(native, seg.model.run, tile=96, overlap=32, multiple=4)
    assert np.abs(one["mean_probs"] - tiles["mean_probs"]).mean() < 0.01


def test_tiled_model_output_matches_one_pass(tiny_model):
    seg = Segmenter(tiny_model.manifest, "cpu")
    image = np.random.default_rng(3).random((200, 200)).astype(np.float32)
    native = normalize(image)
    one = run_tiled(native, seg.model.run, tile=256, overlap=0, multiple=4)
    tiles = run_tiled(native, seg.model.run, tile=64, overlap=24, multiple=4)
    diff = np.abs(one["mean_probs"] - tiles["mean_probs"])
    assert diff.mean() < 0.01


def _blobs(points: np.ndarray, classes: np.ndarray, shape=(96, 96), sigma=1.2) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    probs = np.zeros((4, *shape), np.float32)
    for (r, c), k in zip(points, classes, strict=True):
        probs[k] += np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma**2)).astype(np.float32)
    probs = np.clip(probs, 0, 0.99)
    probs[0] = 1.0 - probs[1:].sum(axis=0)
    return probs


def test_localisation_recovers_planted_subpixel_positions_and_classes():
    rng = np.random.default_rng(4)
    grid = np.array([(r, c) for r in range(10, 90, 8) for c in range(10, 90, 8)], dtype=float)
    points = grid + rng.uniform(-0.5, 0.5, grid.shape)
    classes = rng.choice([1, 1, 1, 2, 3], len(points))
    mi = np.zeros((96, 96), np.float32)
    mi[:48] = 0.2
    atoms = localize(_blobs(points, classes), mi)
    assert len(atoms) == len(points)
    d = np.hypot(atoms.row[:, None] - points[:, 0], atoms.col[:, None] - points[:, 1])
    nearest = d.argmin(axis=1)
    assert d.min(axis=1).max() < 0.1 and np.median(d.min(axis=1)) < 0.05
    np.testing.assert_array_equal(atoms.class_id, classes[nearest])
    np.testing.assert_allclose(atoms.uncertainty, np.where(points[nearest, 0] < 47.5, 0.2, 0.0), atol=0.02)
    assert np.all((atoms.confidence > 0.3) & (atoms.confidence <= 1.0))


def test_columns_on_opposite_edges_of_consecutive_rows_stay_apart():
    """A column cut by the right edge, one cut by the left edge a row lower: adjacent in memory, not neighbours."""
    probs = np.zeros((4, 8, 10), np.float32)
    probs[1, 2:4, 8:] = 0.9  # rows 2-3, the last two columns: ends at flat index 3 * 10 + 9
    probs[3, 4:6, :3] = 0.8  # rows 4-5, the first three columns: starts at flat index 4 * 10 + 0
    probs[0] = 1.0 - probs[1:].sum(axis=0)
    mi = np.zeros((8, 10), np.float32)
    mi[4:6, :3] = 0.3
    atoms = localize(probs, mi)
    order = np.argsort(atoms.row)
    np.testing.assert_allclose(atoms.row[order], [2.5, 4.5])
    np.testing.assert_allclose(atoms.col[order], [8.5, 1.0])
    np.testing.assert_array_equal(atoms.class_id[order], [1, 3])
    np.testing.assert_allclose(atoms.confidence[order], [0.9, 0.8], rtol=1e-6)
    np.testing.assert_allclose(atoms.uncertainty[order], [0.0, 0.3], rtol=1e-6)
    binary_entropy = [-(f * np.log(f) + (1 - f) * np.log(1 - f)) for f in (0.9, 0.8)]
    np.testing.assert_allclose(atoms.presence_entropy[order], binary_entropy, rtol=1e-5)


def test_presence_entropy_ranks_faint_columns_above_clear_ones():
    """A column the ensemble is sure of scores low, a barely-present one near log 2, whatever the members' MI."""
    probs = np.zeros((4, 32, 32), np.float32)
    probs[1, 4:7, 4:7] = 0.99  # clear atom column
    probs[2, 4:7, 20:23] = 0.97  # clear vacancy
    probs[1, 20:23, 10:13] = 0.55  # faint: barely above the threshold of 0.5
    probs[0] = 1.0 - probs[1:].sum(axis=0)
    atoms = localize(probs, np.zeros((32, 32), np.float32))
    assert len(atoms) == 3
    faint = atoms.row > 15
    assert np.all(atoms.presence_entropy[faint] > 0.68) and np.all(atoms.presence_entropy[~faint] < 0.15)
    assert np.all(atoms.presence_entropy <= np.log(2) + 1e-6)
    np.testing.assert_array_equal(atoms.uncertainty, 0.0)


def test_empty_map_gives_no_atoms():
    probs = np.zeros((4, 32, 32), np.float32)
    probs[0] = 1.0
    assert len(localize(probs, np.zeros((32, 32), np.float32))) == 0


def test_class_bias_changes_the_decision_only():
    rng = np.random.default_rng(5)
    points = np.array([(r, c) for r in range(10, 90, 10) for c in range(10, 90, 10)], dtype=float)
    classes = rng.choice([1, 2, 3], len(points))
    probs = _blobs(points, classes)
    mi = np.zeros((96, 96), np.float32)
    plain = localize(probs, mi)
    no_vacancies = localize(probs, mi, class_bias=np.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(no_vacancies.row, plain.row)
    assert (plain.class_id == 2).any() and not (no_vacancies.class_id == 2).any()
    np.testing.assert_array_equal(no_vacancies.class_id[plain.class_id == 3], 3)


def test_decision_bias_fit_returns_one_factor_per_class(tiny_model):
    from models.training.calibrate import GRID, fit_decision_bias

    bias = fit_decision_bias(Segmenter(tiny_model.manifest, "cpu"), frames=2, pixels=96)
    assert len(bias) == 3 and bias[0] == 1.0
    assert all(GRID[0] <= b <= GRID[-1] for b in bias[1:])


def test_decision_rule_is_fitted_for_recall_at_the_required_precision():
    from models.training.calibrate import choose_operating_point

    # Rows: a rising factor trades precision for recall.  (precision, recall, F1)
    scores = np.array(
        [[0.99, 0.50, 0.66], [0.95, 0.70, 0.81], [0.91, 0.80, 0.85], [0.85, 0.90, 0.87], [0.60, 0.95, 0.74]]
    )
    assert choose_operating_point(scores, 0.9) == 2  # the best F1 (row 3) is below the precision
    assert choose_operating_point(scores, 0.8) == 3
    assert choose_operating_point(scores, 0.999) == 3  # none reaches it: the best F1
    tied = np.array([[0.95, 0.8, 0.80], [0.92, 0.8, 0.86], [0.5, 0.9, 0.64]])
    assert choose_operating_point(tied, 0.9) == 1


def test_export_fits_the_decision_rule_on_calibrates_number_of_frames_by_default():
    from agent.cli import build_parser
    from models.training.calibrate import VALIDATION_FRAMES

    args = build_parser().parse_args(["export", "run", "--out", "m.onnx"])
    assert args.bias_frames == VALIDATION_FRAMES


def test_binary_entropy_limits_and_rounding_outside_the_unit_interval():
    from models.uncertainty import binary_entropy

    f = np.array([0.0, 1.0, 0.5, 0.1, -1e-7, 1.0 + 1e-6], np.float32)
    b = binary_entropy(f)
    assert np.all(np.isfinite(b))
    np.testing.assert_allclose(b[[0, 1, 4, 5]], 0.0, atol=1e-6)
    np.testing.assert_allclose(b[2], np.log(2), rtol=1e-6)
    np.testing.assert_allclose(b[3], -(0.1 * np.log(0.1) + 0.9 * np.log(0.9)), rtol=1e-5)


def test_wide_dtypes_keep_their_contrast(tiny_model):
    """A uint32 frame offset by 2**31, or float64 near float32's limit, segments like the plain frame."""
    segmenter = Segmenter(tiny_model.manifest, "cpu")
    counts = np.random.default_rng(1).poisson(20.0, (80, 72))
    plain = segmenter.segment(counts.astype(np.uint16), 0.03).mean_probs
    for wide in (
        counts.astype(np.uint32) + np.uint32(2**31),
        counts.astype(np.int64) + np.int64(2**60),  # beyond float64's integers: the offset goes in integers
        counts.astype(np.uint64) + np.uint64(2**63),
        counts.astype(np.int64) - np.int64(2**62),
        counts.astype(np.float64) * 1e37,
        counts.astype(np.float64) * 1e-3 + 1e6,  # an offset 1e7 times the contrast, below 2**24: was cast as is
        counts.astype(np.float64) * 1e-50,  # below float32's smallest normal number
    ):
        np.testing.assert_allclose(segmenter.segment(wide, 0.03).mean_probs, plain, atol=1e-4)


@pytest.mark.parametrize(
    ("shape", "size", "fits"), [((64, 64), 0.03, True), ((64, 64), 0.003, False), ((2048, 2048), 5.0, False)]
)
def test_pixel_sizes_far_from_the_model_s_are_refused_before_resampling(shape, size, fits):
    if fits:
        assert check_native_shape(shape, size, 0.03) == shape
    else:
        with pytest.raises(ImageError, match="is the pixel size in nm"):
            check_native_shape(shape, size, 0.03)


def test_a_one_pixel_overlap_blends_without_holes_and_an_overlap_past_the_tile_is_refused():
    image = np.random.default_rng(7).random((100, 70)).astype(np.float32)
    tiled = run_tiled(image, _local_mean, tile=32, overlap=1, multiple=8)
    assert np.isfinite(tiled["b"]).all()
    np.testing.assert_allclose(tiled["b"][0], image**2, rtol=1e-5)
    with pytest.raises(ValueError, match="overlap of 12 px needs tiles of at least 28 px"):
        run_tiled(image, _local_mean, tile=16, overlap=12, multiple=16)


def test_a_manifest_whose_tiles_cannot_step_past_their_overlap_is_refused(tiny_model, tmp_path):
    import json

    from models.manifest import ModelError, load_manifest

    data = json.loads(tiny_model.manifest.read_text())
    bad = tmp_path / "bad_tiles.json"
    bad.write_text(json.dumps({**data, "tile_size_px": 32, "tile_overlap_px": 32}))
    with pytest.raises(ModelError, match="leaves no room past the 32 px overlap"):
        load_manifest(bad)
