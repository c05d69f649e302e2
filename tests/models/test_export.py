"""The one-graph ONNX ensemble equals the torch members, and its uncertainty the numpy reference."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.training.ensemble import EnsembleWithUncertainty
from models.training.train import load_members
from models.uncertainty import ensemble_uncertainty


@pytest.mark.parametrize("shape", [(64, 64), (96, 160), (200, 52)])
def test_onnx_matches_torch_on_several_sizes(tiny_model, shape):
    members, _ = load_members(tiny_model.run_dir)
    ensemble = EnsembleWithUncertainty(members).eval()
    session = ort.InferenceSession(str(tiny_model.onnx), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(0.4, 0.3, (1, 1, *shape)).astype(np.float32)
    onnx_out = session.run(None, {"image": x})
    with torch.no_grad():
        torch_out = ensemble(torch.from_numpy(x))
    for a, b in zip(onnx_out, torch_out, strict=True):
        assert a.shape == tuple(b.shape)
        assert np.abs(a - b.numpy()).max() <= 1e-4


def test_graph_uncertainty_equals_numpy_reference(tiny_model):
    members, _ = load_members(tiny_model.run_dir)
    x = torch.from_numpy(np.random.default_rng(1).normal(0.4, 0.3, (1, 1, 64, 96)).astype(np.float32))
    with torch.no_grad():
        member_probs = np.stack([torch.softmax(m(x), dim=1)[0].numpy() for m in members])
        mean, ent, mi, var = EnsembleWithUncertainty(members).eval()(x)
    ref = ensemble_uncertainty(member_probs)
    np.testing.assert_allclose(mean[0].numpy(), ref.mean_probs, atol=1e-5)
    np.testing.assert_allclose(ent[0, 0].numpy(), ref.entropy, atol=1e-5)
    np.testing.assert_allclose(mi[0, 0].numpy(), ref.mutual_info, atol=1e-5)
    np.testing.assert_allclose(var[0].numpy(), ref.variance, atol=1e-6)


def test_the_graph_stays_finite_where_member_probabilities_underflow_to_zero(tiny_model):
    """Far-apart logits (a hot pixel after normalisation) give probabilities of exactly 0: 0 * log 0 must not be NaN."""
    session = ort.InferenceSession(str(tiny_model.onnx), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).normal(0.4, 0.3, (1, 1, 64, 64)).astype(np.float32)
    x[0, 0, 20:23, 30:33] = [[1e4], [-1e4], [1e5]]
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": x}), strict=True))
    members, _ = load_members(tiny_model.run_dir)
    with torch.no_grad():
        member_probs = np.stack([torch.softmax(m(torch.from_numpy(x)), dim=1)[0].numpy() for m in members])
    assert (member_probs == 0).any()  # the case in question arises
    for name, value in outputs.items():
        assert np.isfinite(value).all(), name
    reference = ensemble_uncertainty(member_probs)
    np.testing.assert_allclose(outputs["mutual_info"][0, 0], reference.mutual_info, atol=1e-4)


def test_uncertainty_invariants():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(5, 4, 8, 8))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    u = ensemble_uncertainty(p)
    assert np.all(u.mutual_info >= 0) and np.all(u.mutual_info <= u.entropy + 1e-6)
    assert np.all(u.entropy <= np.log(4) + 1e-6)
    np.testing.assert_allclose(u.mean_probs.sum(axis=0), 1.0, atol=1e-6)
    agree = ensemble_uncertainty(np.repeat(p[:1], 5, axis=0))  # identical members: no epistemic part
    np.testing.assert_allclose(agree.mutual_info, 0.0, atol=1e-6)
    np.testing.assert_allclose(agree.variance, 0.0, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(M, C, H, W\)"):
        ensemble_uncertainty(p[0])


def test_manifest_records_the_run(tiny_model):
    import json

    manifest = json.loads(tiny_model.manifest.read_text())
    assert manifest["members"] == 2 and manifest["training"]["member_seeds"] == [0, 1]
    assert [c["name"] for c in manifest["classes"]] == ["background", "atom", "vacancy", "dopant"]
    assert [c["defect"] for c in manifest["classes"]] == [False, False, True, True]
    assert manifest["calibration"]["frames"] == 4 and manifest["calibration"]["frame_mutual_info_std"] > 0
    assert len(manifest["onnx_sha256"]) == 64


def test_a_failed_export_leaves_the_previous_model_as_it_was(tiny_model, tmp_path, monkeypatch):
    import shutil

    import onnx

    import models.training.calibrate as calibrate_module
    import models.training.export as export_module
    from models.manifest import load_manifest
    from models.training.export import export_run

    out = tmp_path / tiny_model.onnx.name
    for suffix in (".onnx", ".json", ".members.pt"):  # the previous model: an earlier export of the run
        shutil.copy(tiny_model.onnx.with_suffix(suffix), out.with_suffix(suffix))
    load_manifest(out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # stopped while the decision rule is being fitted

    def exported(ensemble, path, multiple, rewrite=True):  # the run's graph, not byte for byte the model's
        graph = onnx.load(str(tiny_model.onnx))  # (the ONNX export itself is tested elsewhere; it takes 10 s)
        graph.doc_string = "exported again"
        onnx.save(graph, str(path))

    monkeypatch.setattr(export_module, "export_onnx", exported)
    monkeypatch.setattr(calibrate_module, "fit_decision_bias", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(tiny_model.run_dir, out, tile_size_px=64, calibration_frames=2, bias_frames=2)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no staging folder left either
    load_manifest(out)


def test_export_will_not_write_its_manifest_over_the_run_configuration(tiny_model):
    from models.training.export import export_run

    with pytest.raises(ValueError, match=r"over the run's config\.json"):
        export_run(tiny_model.run_dir, tiny_model.run_dir / "config.onnx")
