"""``autoscope train`` -> ``autoscope export`` -> ``autoscope segment --model`` as a user runs them (tiny model)."""

from __future__ import annotations

import json
import shlex
import shutil
import sys

import numpy as np
import pytest

from agent.cli import EXIT_USAGE, main
from models.manifest import sha256_file

TRAIN = ["train", "--members", "2", "--steps", "3", "--samples", "6", "--batch", "2"]
TRAIN += ["--width", "4", "--depth", "2", "--threads", "1"]


def _run(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> int:
    """``main`` with ``sys.argv`` as the console script would set it (the manifest records the commands)."""
    monkeypatch.setattr(sys, "argv", ["autoscope", *args])
    return main(args)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny run trained and exported through the CLI, with decision rule, calibration and figures."""
    root = tmp_path_factory.mktemp("cli-run")
    run_dir, onnx = root / "run", root / "out" / "tiny_cli.onnx"
    export = ["export", str(run_dir), "--out", str(onnx), "--calibration-frames", "2"]
    export += ["--bias-frames", "2", "--evaluation-frames", "2"]
    with pytest.MonkeyPatch.context() as mp:
        assert _run(mp, [*TRAIN, "--out", str(run_dir)]) == 0
        assert _run(mp, export) == 0
    # Quoted as models.manifest.invoked_command quotes them (shlex), so a path with spaces compares equal too.
    return run_dir, onnx, shlex.join(["autoscope", *TRAIN, "--out", str(run_dir)]), shlex.join(["autoscope", *export])


def test_the_manifest_records_both_commands_the_hash_and_the_fitted_rule(exported):
    run_dir, onnx, train_cmd, export_cmd = exported
    assert sorted(p.name for p in run_dir.glob("member_*.pt")) == ["member_0.pt", "member_1.pt"]
    manifest = json.loads(onnx.with_suffix(".json").read_text())
    assert manifest["name"] == "tiny_cli" and manifest["members"] == 2
    assert manifest["training"]["command"] == f"{train_cmd} && {export_cmd}"
    assert manifest["training"]["config"]["steps"] == 3 and manifest["training"]["member_seeds"] == [0, 1]
    assert manifest["onnx_sha256"] == sha256_file(onnx)
    assert len(manifest["decision_bias"]) == len(manifest["classes"]) - 1
    assert all(f > 0 for f in manifest["decision_bias"])
    assert manifest["calibration"] is not None
    figures = manifest["validation"]
    assert 0.0 <= figures["columns_f1_ci95_low"] <= figures["columns_f1"] <= figures["columns_f1_ci95_high"] <= 1.0
    assert onnx.with_suffix(".members.pt").exists()


def test_segment_uses_the_exported_model(exported, tmp_path, monkeypatch):
    _, onnx, _, _ = exported
    np.save(tmp_path / "frame.npy", np.random.default_rng(0).poisson(3.0, (96, 96)).astype(np.uint16))
    out = tmp_path / "out.json"
    args = ["segment", str(tmp_path / "frame.npy"), "--pixel-size-nm", "0.02", "--model", str(onnx)]
    assert _run(monkeypatch, [*args, "--out", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    assert record["model"] == {"name": "tiny_cli", "sha256": sha256_file(onnx)}


def test_train_refuses_to_overwrite_a_run_without_resume(exported, monkeypatch, capsys):
    run_dir = exported[0]
    before = (run_dir / "member_0.pt").read_bytes()
    assert _run(monkeypatch, [*TRAIN, "--out", str(run_dir)]) == EXIT_USAGE
    assert "already holds a run: pass --resume" in capsys.readouterr().err
    assert (run_dir / "member_0.pt").read_bytes() == before
    command = (run_dir / "command.txt").read_text()
    changed = [*TRAIN, "--out", str(run_dir), "--resume", "--samples", "8"]
    assert _run(monkeypatch, changed) == EXIT_USAGE
    assert "another configuration (differs in samples)" in capsys.readouterr().err
    assert (run_dir / "command.txt").read_text() == command  # the refused command is not recorded as the run's
    assert _run(monkeypatch, [*TRAIN, "--out", str(run_dir), "--resume"]) == 0  # a finished run: nothing to do
    assert (run_dir / "command.txt").read_text() == command  # a resume keeps the command that started the run


def test_export_refuses_a_folder_that_is_no_run_and_a_wrong_suffix(exported, tmp_path, monkeypatch, capsys):
    assert _run(monkeypatch, ["export", str(tmp_path), "--out", str(tmp_path / "m.onnx")]) == EXIT_USAGE
    assert "is not a training run (no config.json)" in capsys.readouterr().err
    assert _run(monkeypatch, ["export", str(exported[0]), "--out", str(tmp_path / "m.pt")]) == EXIT_USAGE
    assert "--out must end in .onnx" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.pt").exists()


def test_a_fine_tune_keeps_the_parent_architecture_and_records_both_train_commands(exported, tmp_path, monkeypatch):
    run_dir, _, train_cmd, _ = exported
    child, onnx = tmp_path / "child", tmp_path / "child.onnx"
    tune = ["train", "--init-from", str(run_dir), "--members", "2", "--steps", "2", "--samples", "4", "--batch", "2"]
    tune += [
        "--learning-rate",
        "1e-4",
        "--lattice-weights",
        "graphene=3,SrTiO3=2",
        "--threads",
        "1",
        "--out",
        str(child),
    ]
    assert _run(monkeypatch, tune) == 0
    saved = json.loads((child / "config.json").read_text())
    import models.training.export as export_module

    def parents_graph(ensemble, path, multiple, rewrite=True):  # (what is tested here is the record, not the
        shutil.copy(onnx_parent, path)  # graph: a real export of these members takes 10 s and is tested elsewhere)

    onnx_parent = exported[1]
    monkeypatch.setattr(export_module, "export_onnx", parents_graph)
    assert (saved["width"], saved["depth"], saved["init_from"]) == (4, 2, str(run_dir))  # inherited, not the defaults
    assert saved["learning_rate"] == 1e-4
    assert saved["sample"]["lattice_weights"] == [1.0, 2.0, 1.0, 3.0]  # MoS2, SrTiO3, WS2, graphene
    export = ["export", str(child), "--out", str(onnx), "--calibration-frames", "2", "--bias-frames", "0"]
    assert _run(monkeypatch, [*export, "--evaluation-frames", "0"]) == 0
    command = json.loads(onnx.with_suffix(".json").read_text())["training"]["command"]
    assert command == " && ".join(
        [train_cmd, shlex.join(["autoscope", *tune]), shlex.join(["autoscope", *export, "--evaluation-frames", "0"])]
    )


def test_a_fine_tune_refuses_architecture_options_and_bad_lattice_weights(exported, tmp_path, monkeypatch, capsys):
    run_dir = exported[0]
    tune = ["train", "--init-from", str(run_dir), "--members", "2", "--steps", "2", "--out", str(tmp_path / "c")]
    assert _run(monkeypatch, [*tune, "--width", "8"]) == EXIT_USAGE
    assert "keeps the parent's architecture" in capsys.readouterr().err
    assert _run(monkeypatch, [*tune[:2], str(tmp_path), *tune[3:]]) == EXIT_USAGE
    assert "not a training run" in capsys.readouterr().err
    for weights, message in [("graphite=2", "unknown lattice 'graphite'"), ("graphene", "is not NAME=WEIGHT")]:
        with pytest.raises(SystemExit) as exit_info:
            _run(monkeypatch, [*tune, "--lattice-weights", weights])
        assert exit_info.value.code == EXIT_USAGE and message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_equal_lattice_weights_are_the_default_mix(exported, tmp_path, monkeypatch):
    run_dir = exported[0]
    out = tmp_path / "even"
    tune = ["train", "--init-from", str(run_dir), "--members", "1", "--steps", "1", "--samples", "2", "--batch", "2"]
    assert _run(monkeypatch, [*tune, "--lattice-weights", "graphene=1", "--threads", "1", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["sample"]["lattice_weights"] == []


def _copy_model(onnx, folder):
    import shutil

    folder.mkdir()
    for suffix in (".onnx", ".json", ".members.pt"):
        shutil.copy(onnx.with_suffix(suffix), folder)
    return folder / onnx.with_suffix(".json").name


def _unrewritten(manifest_path):
    """Put the graph as ``torch.onnx`` writes it (with a ``Softmax``) in place of the model's, as an old export."""
    from models.manifest import load_manifest
    from models.training.ensemble import EnsembleWithUncertainty
    from models.training.export import export_onnx, members_from_bundle

    manifest, onnx_path = load_manifest(manifest_path)
    members = members_from_bundle(onnx_path.with_suffix(".members.pt"))
    export_onnx(EnsembleWithUncertainty(members).eval(), onnx_path, manifest.input_multiple, rewrite=False)
    data = json.loads(manifest_path.read_text())
    data["onnx_sha256"] = sha256_file(onnx_path)
    manifest_path.write_text(json.dumps(data))
    return onnx_path


def _softmax_nodes(onnx_path):
    import onnx

    return sum(n.op_type == "Softmax" for n in onnx.load(str(onnx_path)).graph.node)


def test_refresh_graph_exports_the_graph_again_from_the_members_and_keeps_the_manifest(exported, tmp_path, monkeypatch):
    _, onnx, _, _ = exported
    manifest_path = _copy_model(onnx, tmp_path / "model")
    old_graph = _unrewritten(manifest_path)
    assert _softmax_nodes(old_graph) == 2  # one per member
    renamed = manifest_path.with_name("renamed.json")  # a manifest need not share the graph's stem
    manifest_path.rename(renamed)
    manifest_path = renamed
    before = json.loads(manifest_path.read_text())
    assert _run(monkeypatch, ["export", "--refresh-graph", str(manifest_path)]) == 0
    after = json.loads(manifest_path.read_text())
    assert after["onnx_sha256"] == sha256_file(old_graph) != before["onnx_sha256"]
    assert _softmax_nodes(old_graph) == 0
    assert not (tmp_path / "model" / onnx.with_suffix(".json").name).exists()  # (the original's name, not written)
    refresh = f"autoscope export --refresh-graph {manifest_path}"
    assert after["training"]["command"] == f"{before['training']['command']} && {refresh}"
    same = ("classes", "calibration", "decision_bias", "validation", "members", "native_pixel_size_nm")
    assert all(after[k] == before[k] for k in same)
    out = tmp_path / "out.json"
    np.save(tmp_path / "frame.npy", np.random.default_rng(0).poisson(3.0, (96, 96)).astype(np.uint16))
    args = ["segment", str(tmp_path / "frame.npy"), "--pixel-size-nm", "0.02", "--model", str(manifest_path)]
    assert _run(monkeypatch, [*args, "--out", str(out)]) == 0
    assert list(tmp_path.glob("model/.*")) == []  # no staging folder left behind


def test_the_graphs_compared_after_a_refresh_differ_by_nothing_when_alike_and_by_much_when_not(exported, tiny_model):
    """The check behind a refreshed graph (the members passed the eager check before its export)."""
    from models.training.export import REGRAPH_TOLERANCE, _largest_difference

    _, onnx, _, _ = exported
    assert _largest_difference(onnx, onnx, multiple=4) == 0.0
    assert _largest_difference(onnx, tiny_model.onnx, multiple=4) > 100 * REGRAPH_TOLERANCE  # another model


def test_refresh_graph_refuses_members_of_another_model_and_leaves_the_model_as_it_was(
    exported, tmp_path, monkeypatch, capsys
):
    import torch

    _, onnx, _, _ = exported
    manifest_path = _copy_model(onnx, tmp_path / "model")
    members = tmp_path / "model" / onnx.with_suffix(".members.pt").name
    bundle = torch.load(members, weights_only=False)
    for state in bundle["members"]:
        for value in state.values():
            if value.is_floating_point():
                value.add_(0.05)
    torch.save(bundle, members)
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir() if p.suffix != ".pt"}
    assert _run(monkeypatch, ["export", "--refresh-graph", str(manifest_path)]) == EXIT_USAGE
    assert "the members are not those of the export" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir() if p.suffix != ".pt"} == before
    members.unlink()
    assert _run(monkeypatch, ["export", "--refresh-graph", str(manifest_path)]) == EXIT_USAGE
    assert f"{members.name} not found" in capsys.readouterr().err
    assert _run(monkeypatch, ["export", "--refresh-graph", str(manifest_path), "--out", "x.onnx"]) == EXIT_USAGE
    assert "no CHECKPOINT_DIR or --out" in capsys.readouterr().err
    assert _run(monkeypatch, ["export", "--out", str(tmp_path / "x.onnx")]) == EXIT_USAGE
    assert "export needs a CHECKPOINT_DIR and --out" in capsys.readouterr().err
    args = ["export", "--refresh-graph", str(manifest_path), "--name", "x", "--tile-size", "256"]
    assert _run(monkeypatch, args) == EXIT_USAGE
    assert "--name, --tile-size would be ignored" in capsys.readouterr().err
