"""Models load only through a manifest whose sha256 matches; providers are reported honestly."""

from __future__ import annotations

import json
import shutil

import onnxruntime as ort
import pytest

from models.manifest import ModelError, load_manifest
from models.segmenter import Segmenter
from models.session import OnnxModel, ProviderError, resolve_providers


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    shutil.copy(tiny_model.onnx, tmp_path / "tiny.onnx")
    shutil.copy(tiny_model.manifest, tmp_path / "tiny.json")
    return tmp_path / "tiny.onnx", tmp_path / "tiny.json"


def test_loads_by_manifest_or_onnx_path(model_copy):
    onnx, manifest = model_copy
    for path in (onnx, manifest):
        m, found = load_manifest(path)
        assert found == onnx and m.name == "tiny"


def test_corrupt_model_file_is_refused(model_copy):
    onnx, manifest = model_copy
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its manifest"):
        load_manifest(manifest)
    with pytest.raises(ModelError, match="corrupt or was replaced"):
        Segmenter(manifest, "cpu")


def test_truncated_model_file_is_refused(model_copy):
    onnx, manifest = model_copy
    onnx.write_bytes(onnx.read_bytes()[:1000])
    with pytest.raises(ModelError, match="sha256"):
        load_manifest(manifest)


def test_missing_and_malformed_manifests(model_copy, tmp_path):
    onnx, manifest = model_copy
    with pytest.raises(ModelError, match="not found"):
        load_manifest(tmp_path / "nothing.json")
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "onnx_sha256": "xyz"}))
    with pytest.raises(ModelError, match="malformed"):
        load_manifest(manifest)
    manifest.write_text("{not json")
    with pytest.raises(ModelError, match="malformed"):
        load_manifest(manifest)
    manifest.write_text(json.dumps(data))
    onnx.unlink()
    with pytest.raises(ModelError, match="not found"):
        load_manifest(manifest)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"classes_cut": 1}, r"does not fit its graph \(3 classes.*'mean_probs' has shape \(4,"),
        ({"input_multiple": 3}, "does not fit its graph .*multiple of 3 px"),
        ({"outputs": ["mean_probs"]}, r"names the outputs \['mean_probs'\]; the graph has"),
    ],
)
def test_a_manifest_that_does_not_fit_its_graph_is_refused_at_load(model_copy, change, message):
    """Not on the first frame, after an instrument was driven to acquire it (as a run did 20 times)."""
    _onnx, manifest = model_copy
    data = json.loads(manifest.read_text())
    if "classes_cut" in change:
        data["classes"] = data["classes"][:-1]
        data["decision_bias"] = data["decision_bias"] and data["decision_bias"][:-1]
    else:
        data.update(change)
    manifest.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message):
        Segmenter(manifest, "cpu")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decision_bias": [1.0] * 10}, "one positive factor per class after the background"),
        ({"decision_bias": [1.0, -1.0, 1.0]}, "one positive factor per class after the background"),
        ({"classes": [{"name": "background", "defect": False}] * 2}, "name one class twice"),
        ({"input_multiple": 10**6, "tile_size_px": 10**7}, "less than or equal to"),
    ],
)
def test_a_manifest_with_impossible_values_is_malformed(model_copy, change, message):
    _onnx, manifest = model_copy
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **change}))
    with pytest.raises(ModelError, match=message):
        load_manifest(manifest)


def test_a_deeply_nested_manifest_is_malformed_not_a_crash(model_copy):
    _onnx, manifest = model_copy
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelError, match="malformed"):
        load_manifest(manifest)


def test_auto_reports_the_active_providers(tiny_model):
    model = OnnxModel(tiny_model.onnx, "auto")
    assert model.active_providers
    assert set(model.active_providers) <= set(ort.get_available_providers())
    assert model.active_providers[-1] == "CPUExecutionProvider"


def test_unknown_provider_name_is_refused():
    with pytest.raises(ProviderError, match="unknown provider 'gpu'"):
        resolve_providers("gpu")


def _gpu_session_works(path) -> bool:
    try:
        return OnnxModel(path, "cuda").on_gpu
    except ProviderError:
        return False


def test_explicit_gpu_request_without_gpu_fails_loudly(tiny_model):
    # onnxruntime-gpu lists the CUDA provider even on a machine without a GPU; the
    # session then falls back to the CPU, which an explicit request must not accept.
    if _gpu_session_works(tiny_model.onnx):
        pytest.skip("a GPU is present")
    with pytest.raises(ProviderError, match=r"(?i)cuda"):
        OnnxModel(tiny_model.onnx, "cuda")
    with pytest.raises(ProviderError, match=r"(?i)tensorrt"):
        Segmenter(tiny_model.manifest, ["tensorrt", "cpu"])


def test_explicit_cpu_runs_on_cpu_only(tiny_model):
    assert OnnxModel(tiny_model.onnx, "cpu").active_providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("name", ["../tiny.onnx", "sub/tiny.onnx", "<absolute>", "tiny.json"])
def test_a_manifest_names_only_a_model_file_beside_it(model_copy, name):
    onnx, manifest = model_copy
    if name == "<absolute>":  # the model itself, named by its absolute path (built here: no machine path in the repo)
        name = str(onnx.resolve())
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "onnx_file": name}))
    with pytest.raises(ModelError, match="malformed model manifest"):
        load_manifest(manifest)


def test_a_binary_manifest_is_malformed_not_a_crash(model_copy):
    _, manifest = model_copy
    manifest.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelError, match="malformed model manifest"):
        load_manifest(manifest)
