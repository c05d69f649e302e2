"""The ``autoscope`` CLI: the simulate subcommands end to end, and their errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from agent.cli import EXIT_USAGE, main
from simulators import SimulatedFrame


def test_simulate_stem_writes_frame_truth_and_preview(tmp_path, capsys):
    out, png = tmp_path / "frame.npz", tmp_path / "preview.png"
    status = main(
        [
            "simulate",
            "stem",
            "--seed",
            "3",
            "--x-nm",
            "5",
            "--y-nm",
            "-7",
            "--fov-nm",
            "4",
            "--pixels",
            "96",
            "--specimen-size-nm",
            "64",
            "--out",
            str(out),
            "--png",
            str(png),
        ]
    )
    assert status == 0
    frame = SimulatedFrame.load_npz(out)
    assert frame.image.shape == (96, 96) and frame.scan.x_nm == 5.0 and frame.specimen_seed == 3
    assert len(frame.truth.columns) > 100
    assert png.read_bytes()[:4] == b"\x89PNG"
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_columns"] == len(frame.truth.columns)


def test_dose_option_sets_the_frame_dose(tmp_path, capsys):
    out = tmp_path / "f.npz"
    assert (
        main(["simulate", "stem", "--pixels", "32", "--fov-nm", "2", "--dose-e-per-a2", "5000", "--out", str(out)]) == 0
    )
    assert SimulatedFrame.load_npz(out).dose_e_per_a2 == pytest.approx(5000.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fov-nm", "-3"], "fov_nm must be > 0"),
        (["--pixels", "0"], "rows must be >= 1"),
        (["--dose-e-per-a2", "0"], "dose_e_per_a2 must be > 0"),
        (["--x-nm", "900"], "x_nm must lie on the specimen, in [-128, 128] nm"),
        (["--lattice", "NaCl"], "lattice must be one of"),
    ],
)
def test_bad_parameters_exit_with_a_clear_message(tmp_path, capsys, args, message):
    status = main(["simulate", "stem", "--out", str(tmp_path / "x.npz"), *args])
    assert status == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.npz").exists()


def test_demo_renders_a_survey_and_a_hot_spot(tmp_path):
    status = main(["simulate", "demo", "--seed", "1", "--specimen-size-nm", "96", "--out", str(tmp_path)])
    assert status == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not summary["survey"]["atoms_resolved"] and summary["hotspot"]["atoms_resolved"]
    hot = SimulatedFrame.load_npz(tmp_path / "hotspot.npz")
    survey = SimulatedFrame.load_npz(tmp_path / "survey.npz")
    # The demo aims at a hot spot: its defect density beats the survey's average.
    assert hot.truth.defect_density_per_nm2.mean() > 1.5 * np.mean(survey.truth.defect_density_per_nm2)
    assert (tmp_path / "survey.png").exists() and (tmp_path / "hotspot.png").exists()


def test_console_script_help_lists_subcommands():
    done = subprocess.run([sys.executable, "-m", "agent.cli", "--help"], capture_output=True, text=True, check=True)
    assert "simulate" in done.stdout
