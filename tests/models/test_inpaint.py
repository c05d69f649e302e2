"""The sinogram-inpainting ensemble: one-graph export parity, manifest checks, completion, adaptive tilts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.inpaint import SinogramInpainter, reconstruct_inpainted
from models.manifest import ModelError
from models.sinogram import GRID_DEG, N_ANGLES, grid_index, pack
from simulators.phantom import PhantomConfig, make_phantom
from simulators.tilt import project


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A two-member ensemble trained for a few steps on three small phantoms, exported."""
    from models.training.inpaint import InpaintConfig, export, train

    run = tmp_path_factory.mktemp("inpaint")
    train(run, InpaintConfig(members=2, steps=6, batch=4, width=4, depth=2, size_px=32, phantoms=3), threads=1)
    return run, export(run, run / "tiny.onnx", "tiny")


def test_onnx_matches_torch_on_several_sizes(tiny):
    import onnxruntime as ort
    import torch

    from models.training.inpaint import InpaintEnsemble, load

    run, _ = tiny
    members, _ = load(run)
    ensemble = InpaintEnsemble(members).eval()
    session = ort.InferenceSession(str(run / "tiny.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, width in ((1, 32), (3, 48), (2, 64)):
        x = rng.random((batch, 2, N_ANGLES, width), dtype=np.float32)
        with torch.no_grad():
            expected = [t.numpy() for t in ensemble(torch.from_numpy(x))]
        got = session.run(None, {"sinogram": x})
        for e, g in zip(expected, got, strict=True):
            assert e.shape == g.shape and np.abs(e - g).max() <= 1e-4


def test_completion_keeps_measurements_and_fills_the_rest(tiny):
    _, manifest = tiny
    inpainter = SinogramInpainter(manifest, providers="cpu")
    volume = make_phantom(PhantomConfig(seed=1001, size_px=32)).volume
    angles = GRID_DEG[np.abs(GRID_DEG) <= 60][::3]
    series = np.stack([project(volume, a) for a in angles])
    done = inpainter.complete(series, angles)
    assert done.series.shape == (N_ANGLES, 32, 32) and done.measured.sum() == len(angles)
    assert np.allclose(done.series[grid_index(angles)], series, atol=1e-5)  # measured rows untouched
    assert np.isfinite(done.series).all() and (done.angle_uncertainty >= 0).all()
    # (whether the uncertainty is larger where nothing was measured is a property of a trained model:
    # benchmarks/tomo.py measures the bundled one)
    assert reconstruct_inpainted(series, angles, inpainter).shape == (32, 32, 32)


def test_a_tampered_model_is_refused(tiny, tmp_path):
    run, manifest = tiny
    data = json.loads(manifest.read_text())
    (tmp_path / "tiny.onnx").write_bytes((run / "tiny.onnx").read_bytes()[:-10] + b"0123456789")
    (tmp_path / "tiny.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="sha256"):
        SinogramInpainter(tmp_path / "tiny.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ModelError, match="cannot load"):
        SinogramInpainter(tmp_path / "bad.json")


def test_pack_scales_by_the_measured_rows_and_zeroes_the_rest():
    sino = np.ones((1, N_ANGLES, 8)) * 4.0
    measured = np.zeros((1, N_ANGLES), dtype=bool)
    measured[0, :10] = True
    x, scale = pack(sino, measured)
    assert scale[0] == pytest.approx(4.0) and x[0, 0, :10].max() == pytest.approx(1.0) and x[0, 0, 10:].max() == 0


def test_adaptive_tilt_starts_at_zero_then_follows_the_uncertainty(tiny):
    from agent.policies.tilt_adaptive import AdaptiveTilt

    _, manifest = tiny
    policy = AdaptiveTilt(-70.0, 70.0, SinogramInpainter(manifest, providers="cpu"))
    volume = make_phantom(PhantomConfig(seed=1002, size_px=32)).volume
    angles: list[float] = []
    for _ in range(6):
        angle, why = policy.next_angle(angles, [project(volume, a) for a in angles])
        assert -70.0 <= angle <= 70.0 and all(abs(angle - a) > 0.5 for a in angles)
        angles.append(angle)
    assert angles[0] == 0.0 and "uncertainty" in why


def test_bad_manifests_graphs_configs_and_angles_are_refused_early(tiny, tmp_path):
    from models.tomo import TomoError
    from models.training.inpaint import InpaintConfig

    run, manifest = tiny
    data = json.loads(manifest.read_text())
    (tmp_path / "tiny.onnx").write_bytes((run / "tiny.onnx").read_bytes())
    (tmp_path / "zero.json").write_text(json.dumps({**data, "detector_multiple": 0}))
    with pytest.raises(ModelError, match="detector_multiple"):  # was a ZeroDivisionError after the acquisition
        SinogramInpainter(tmp_path / "zero.json")
    (tmp_path / "more.json").write_text(json.dumps({**data, "outputs": [*data["outputs"], "confidence"]}))
    with pytest.raises(ModelError, match=r"is not the inpainting graph .* missing \['confidence'\]"):
        SinogramInpainter(tmp_path / "more.json")
    with pytest.raises(ValueError, match=r"size_px \(20\) must be a multiple of 2\*\*depth \(8\)"):
        InpaintConfig(size_px=20, depth=3)
    inpainter = SinogramInpainter(manifest, providers="cpu")
    with pytest.raises(TomoError, match=r"within \[-90, 90\] deg"):  # they were piled onto the grid's last row
        inpainter.complete(np.zeros((3, 32, 32), np.float32), np.array([0.0, 45.0, 120.0]))
