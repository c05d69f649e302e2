"""``autoscope segment`` end to end on simulated frames, and its errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from agent.cli import EXIT_FAILURE, EXIT_USAGE, main
from simulators import ImagingParams, ScanRequest, Specimen, SpecimenConfig, render_frame


@pytest.fixture
def frame_npz(tmp_path):
    frame = render_frame(
        Specimen(SpecimenConfig(seed=2, width_nm=40, height_nm=40)),
        ScanRequest(fov_nm=3.0, rows=120, cols=120),
        ImagingParams(track_dose=False),
        np.random.default_rng(0),
    )
    path = tmp_path / "frame.npz"
    frame.save_npz(path)
    np.save(tmp_path / "plain.npy", frame.image)
    return path


def test_segment_writes_one_record_per_image(tiny_model, frame_npz, tmp_path, capsys):
    out, png = tmp_path / "out.json", tmp_path / "overlay.png"
    plain = tmp_path / "plain.npy"
    status = main(
        [
            "segment",
            str(frame_npz),
            str(plain),
            "--pixel-size-nm",
            "0.05",
            "--model",
            str(tiny_model.manifest),
            "--providers",
            "cpu",
            "--out",
            str(out),
            "--png",
            str(png),
        ]
    )
    assert status == 0
    records = json.loads(out.read_text())
    assert [r["image"] for r in records] == [str(frame_npz), str(plain)]
    assert records[0]["pixel_size_nm"] == pytest.approx(0.025)  # from the file's metadata (3 nm / 120 px)
    assert records[1]["pixel_size_nm"] == 0.05  # from --pixel-size-nm, where the file records none
    for r in records:
        assert r["model"]["name"] == "tiny" and len(r["model"]["sha256"]) == 64
        assert r["providers"] == ["CPUExecutionProvider"]
        assert set(r["summary"]) == {"n_atoms", "n_defects", "ood_score", "input_check", "timings_ms"}
        assert r["summary"]["input_check"]["flags"] == []  # a simulated lattice: contrast, no saturation
        assert r["summary"]["input_check"]["peak_snr"] > r["summary"]["input_check"]["peak_threshold"]
        assert r["summary"]["n_atoms"] == len(r["atoms"])
        for atom in r["atoms"]:
            assert set(atom) == {"row", "col", "class", "defect", "confidence", "uncertainty", "presence_entropy"}
            assert 0 <= atom["row"] < 120 and 0 <= atom["col"] < 120
            assert 0 <= atom["uncertainty"] and 0 <= atom["presence_entropy"] <= np.log(2) + 1e-6
    assert (tmp_path / "overlay-frame.png").exists() and (tmp_path / "overlay-plain.png").exists()


def test_refine_moves_columns_onto_the_gaussian_fit_and_times_it(frame_npz, tmp_path, capsys):
    """With the bundled model: --refine changes positions (not the atoms found) and reports its time."""
    outs = {}
    for flag in ([], ["--refine"]):
        out = tmp_path / f"out{len(flag)}.json"
        assert main(["segment", str(frame_npz), "--providers", "cpu", "--out", str(out), *flag]) == 0
        outs[bool(flag)] = json.loads(out.read_text())[0]
    plain, refined = outs[False], outs[True]
    assert "refine" in refined["summary"]["timings_ms"] and "refine" not in plain["summary"]["timings_ms"]
    assert [a["class"] for a in refined["atoms"]] == [a["class"] for a in plain["atoms"]]
    pairs = zip(plain["atoms"], refined["atoms"], strict=True)
    moved = [np.hypot(a["row"] - b["row"], a["col"] - b["col"]) for a, b in pairs]
    assert max(moved) > 0.01  # some columns were refitted...
    assert max(moved) < 3.0  # ...and none ran off (a fit may move a centre by less than half the radius)


def test_missing_pixel_size_fails_before_any_work(tiny_model, frame_npz, tmp_path, capsys):
    out = tmp_path / "out.json"
    status = main(["segment", str(tmp_path / "plain.npy"), "--model", str(tiny_model.manifest), "--out", str(out)])
    assert status == EXIT_USAGE
    assert "records no pixel size: pass --pixel-size-nm" in capsys.readouterr().err
    assert not out.exists()


def test_corrupt_model_and_bad_image_exit_with_messages(tiny_model, frame_npz, tmp_path, capsys):
    bad_model = tmp_path / "m.onnx"
    bad_model.write_bytes(tiny_model.onnx.read_bytes()[:-10])
    (tmp_path / "m.json").write_text(
        tiny_model.manifest.read_text().replace('"onnx_file": "tiny.onnx"', '"onnx_file": "m.onnx"')
    )
    assert main(["segment", str(frame_npz), "--model", str(tmp_path / "m.json"), "--out", str(tmp_path / "o")]) == 2
    assert "does not match its manifest" in capsys.readouterr().err
    np.save(tmp_path / "nan.npy", np.full((64, 64), np.nan))
    status = main(
        [
            "segment",
            str(tmp_path / "nan.npy"),
            "--pixel-size-nm",
            "0.02",
            "--model",
            str(tiny_model.manifest),
            "--out",
            str(tmp_path / "o.json"),
        ]
    )
    assert status == EXIT_USAGE and "NaN or Inf" in capsys.readouterr().err


def _segment(tiny_model, *args: str) -> int:
    return main(["segment", *args, "--model", str(tiny_model.manifest), "--providers", "CPU"])


def test_every_unusable_image_is_named_before_any_work(tiny_model, frame_npz, tmp_path, capsys):
    np.save(tmp_path / "stack.npy", np.zeros((3, 64, 64)))
    np.save(tmp_path / "tiny_px.npy", np.ones((64, 64)))  # 64 px at 0.0001 nm: under a native pixel
    out, png = tmp_path / "out.json", tmp_path / "ov.png"
    images = [str(frame_npz), str(tmp_path / "stack.npy"), str(tmp_path / "missing.npy")]
    assert _segment(tiny_model, *images, "--pixel-size-nm", "0.03", "--out", str(out), "--png", str(png)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "2 of 3 images cannot be segmented (nothing was written)" in err
    assert "stack.npy: image must be 2-D" in err and "missing.npy: no such file" in err
    assert not out.exists() and not list(tmp_path.glob("ov*.png"))  # the good frame was not segmented either
    assert _segment(tiny_model, str(tmp_path / "tiny_px.npy"), "--pixel-size-nm", "0.0001", "--out", str(out)) == 2
    assert "becomes 0.2133 x 0.2133 px at the model's 0.03 nm per pixel" in capsys.readouterr().err
    assert _segment(tiny_model, str(tmp_path / "tiny_px.npy"), "--pixel-size-nm=1e308", "--out", str(out)) == 2
    assert "becomes inf x inf px" in capsys.readouterr().err  # (an absurd pixel size is named, not an overflow)


def test_outputs_that_would_overwrite_an_input_or_each_other_are_refused_before_any_work(
    tiny_model, frame_npz, tmp_path, capsys
):
    frame = tmp_path / "frame.npy"
    np.save(frame, np.random.default_rng(0).poisson(3.0, (96, 96)).astype(np.uint16))
    before = frame.read_bytes()
    cases = [
        (["--out", str(frame)], "--out"),
        (["--out", str(tmp_path / "o.json"), "--png", str(frame)], "--png"),
        (["--out", str(tmp_path / "same.png"), "--png", str(tmp_path / "same.png")], "name the same file"),
        (["--out", str(tmp_path)], "is a directory"),
    ]
    for extra, said in cases:
        assert _segment(tiny_model, str(frame), "--pixel-size-nm", "0.02", *extra) == EXIT_USAGE
        assert said in capsys.readouterr().err
    os.link(frame, tmp_path / "hard.npy")  # a hard link to the input is the input
    assert _segment(tiny_model, str(frame), "--pixel-size-nm", "0.02", "--out", str(tmp_path / "hard.npy")) == 2
    assert "would overwrite the input image" in capsys.readouterr().err
    assert frame.read_bytes() == before and not list(tmp_path.glob("o.json")) and not (tmp_path / "same.png").exists()


def test_an_overlay_name_without_a_suffix_is_the_png_written_and_other_suffixes_are_refused_up_front(
    tiny_model, tmp_path, capsys
):
    """matplotlib adds .png to a bare name: ``--png frame`` beside frame.png would have overwritten the input."""
    from PIL import Image

    frame = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96), dtype=np.uint8)).save(frame)
    before = frame.read_bytes()
    out = tmp_path / "o.json"
    assert (
        _segment(tiny_model, str(frame), "--pixel-size-nm", "0.02", "--out", str(out), "--png", str(tmp_path / "frame"))
        == 2
    )
    assert "would overwrite the input image" in capsys.readouterr().err and frame.read_bytes() == before
    assert (
        _segment(
            tiny_model, str(frame), "--pixel-size-nm", "0.02", "--out", str(out), "--png", str(tmp_path / "o.jpgx")
        )
        == 2
    )
    assert "give a name ending in .png" in capsys.readouterr().err and not out.exists()
    assert (
        _segment(tiny_model, str(frame), "--pixel-size-nm", "0.02", "--out", str(out), "--png", str(tmp_path / "ov"))
        == 0
    )
    assert (tmp_path / "ov.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stack_without_a_pixel_size_is_named_for_both_at_once(tiny_model, tmp_path, capsys):
    np.save(tmp_path / "stack.npy", np.zeros((3, 64, 64)))
    assert _segment(tiny_model, str(tmp_path / "stack.npy"), "--out", str(tmp_path / "o.json")) == EXIT_USAGE
    assert "image must be 2-D (rows, cols), got shape (3, 64, 64); records no pixel size" in capsys.readouterr().err


def test_a_directory_or_an_empty_file_given_as_an_image_is_named_as_such(tiny_model, tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    (tmp_path / "empty.png").touch()
    images = [str(tmp_path / "adir"), str(tmp_path / "empty.png")]
    assert _segment(tiny_model, *images, "--pixel-size-nm", "0.02", "--out", str(tmp_path / "o.json")) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "adir is a directory, not an image file" in err and "empty.png is empty (0 bytes)" in err


def test_overlays_of_images_that_share_a_name_do_not_overwrite_each_other(tiny_model, frame_npz, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    frame = np.load(tmp_path / "plain.npy")
    np.save(tmp_path / "a" / "img.npy", frame)
    np.save(tmp_path / "b" / "img.npy", frame)
    images = [str(tmp_path / "a" / "img.npy"), str(tmp_path / "b" / "img.npy")]
    png = tmp_path / "ov.png"
    assert (
        _segment(tiny_model, *images, "--pixel-size-nm", "0.03", "--out", str(tmp_path / "o.json"), "--png", str(png))
        == 0
    )
    assert sorted(p.name for p in tmp_path.glob("ov*.png")) == ["ov-1-img.png", "ov-2-img.png"]


def test_an_image_the_model_fails_on_keeps_the_others_results(tiny_model, frame_npz, tmp_path, monkeypatch, capsys):
    import models.segmenter as segmenter_module

    real_check = segmenter_module.check_outputs

    calls = []

    def fails_on_the_second(out, shape, n_classes):  # the ensemble's output for one frame is unusable
        calls.append(shape)
        if len(calls) == 3:  # the second image (the first call checks the blank tile run when the model loads)
            raise segmenter_module.ModelOutputError("non_finite", "'mean_probs' holds NaN or Inf")
        real_check(out, shape, n_classes)

    monkeypatch.setattr(segmenter_module, "check_outputs", fails_on_the_second)
    out = tmp_path / "o.json"
    images = [str(frame_npz), str(tmp_path / "plain.npy"), str(frame_npz)]
    assert _segment(tiny_model, *images, "--pixel-size-nm", "0.025", "--out", str(out)) == EXIT_FAILURE
    records = json.loads(out.read_text())
    assert [r["image"] for r in records] == images
    assert records[1] == {"image": images[1], "pixel_size_nm": 0.025, "error": "'mean_probs' holds NaN or Inf"}
    assert records[0]["atoms"] == records[2]["atoms"] and "summary" in records[2]
    assert "plain.npy: error: 'mean_probs' holds NaN or Inf" in capsys.readouterr().err


def test_a_featureless_image_gets_no_atoms_and_says_so(tmp_path, capsys):
    noise = tmp_path / "noise.npy"
    np.save(noise, np.random.default_rng(5).poisson(4.0, (256, 256)).astype(np.uint16))
    outs = {}
    for flag in ([], ["--keep-featureless"]):
        out = tmp_path / f"out{len(flag)}.json"
        args = ["segment", str(noise), "--pixel-size-nm", "0.02", "--providers", "cpu", "--out", str(out), *flag]
        assert main(args) == 0
        outs[bool(flag)] = json.loads(out.read_text())[0]
    gated, kept = outs[False], outs[True]
    assert gated["atoms"] == [] and gated["summary"]["input_check"]["flags"] == ["featureless"]
    assert len(kept["atoms"]) > 50  # what the ensemble makes of noise when asked
    assert kept["summary"]["input_check"] == gated["summary"]["input_check"]
    assert "featureless: see input_check" in capsys.readouterr().out


def test_a_pixel_size_given_for_a_file_that_records_its_own_is_said_to_be_unused(
    tiny_model, frame_npz, tmp_path, capsys
):
    out = tmp_path / "o.json"
    assert _segment(tiny_model, str(frame_npz), "--pixel-size-nm", "0.05", "--out", str(out)) == 0
    assert "the file records 0.025 nm per pixel; --pixel-size-nm 0.05 is for files that record none" in (
        capsys.readouterr().err
    )
    assert json.loads(out.read_text())[0]["pixel_size_nm"] == pytest.approx(0.025)


def test_invert_finds_dark_columns_where_the_bright_ones_were(frame_npz, tmp_path):
    """Inverted contrast (ABF-like): without --invert the bundled model puts columns between the real ones."""
    from scipy.spatial import cKDTree

    plain = np.load(frame_npz)["image"].astype(np.float64)
    np.save(tmp_path / "plain.npy", plain)
    np.save(tmp_path / "dark.npy", plain.max() - plain)  # dark columns on a bright background

    def atoms(name: str, *flags: str) -> np.ndarray:
        out = tmp_path / f"{name}{len(flags)}.json"
        assert main(["segment", str(tmp_path / f"{name}.npy"), "--pixel-size-nm", "0.025", "--out", str(out),
                     "--providers", "cpu", *flags]) == 0  # fmt: skip
        record = json.loads(out.read_text())[0]
        assert record["inverted"] == bool(flags)
        return np.array([[a["row"], a["col"]] for a in record["atoms"]]).reshape(-1, 2)

    truth = cKDTree(atoms("plain"))

    def on_the_columns(found: np.ndarray) -> float:
        return float(np.mean(truth.query(found)[0] < 1.0)) if len(found) else 0.0

    inverted, not_inverted = on_the_columns(atoms("dark", "--invert")), on_the_columns(atoms("dark"))
    assert inverted > 0.9 and not_inverted < 0.6, (inverted, not_inverted)
