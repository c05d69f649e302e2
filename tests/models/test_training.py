"""Training data and the training loop: targets align with the image, runs resume."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np
import pytest
import torch

from models.training.data import SampleSpec, make_sample
from models.training.train import TrainConfig, load_members, train_ensemble


def _killed_at_step(monkeypatch: pytest.MonkeyPatch, n: int) -> Callable[[], None]:
    """Make the n-th optimiser step raise KeyboardInterrupt (a killed run); returns what undoes it."""
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    return lambda: monkeypatch.setattr(torch.optim.AdamW, "step", real_step)


def test_targets_sit_on_bright_columns():
    rng = np.random.default_rng(3)
    spec = SampleSpec(lattices=("MoS2",), current_pa=(80.0, 100.0), dwell_us=(20.0, 30.0))
    contrast = []
    for _ in range(4):
        image, target = make_sample(rng, spec)
        assert image.shape == target.shape == (spec.patch_px, spec.patch_px)
        atoms = target == 1
        if atoms.sum() > 50:
            contrast.append(image[atoms].mean() - image[target == 0].mean())
    assert contrast and min(contrast) > 0.1


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    config = TrainConfig(
        members=1, steps=6, batch=2, width=4, depth=2, samples=8, checkpoint_every=3, sample=SampleSpec(patch_px=32)
    )
    (tmp_path / "config.json").write_text(json.dumps(config.to_json()))
    train_ensemble(tmp_path, TrainConfig(**{**config.__dict__, "steps": 6}))
    state = torch.load(tmp_path / "member_0.pt", weights_only=False)
    assert state["step"] == 6
    # A finished run trains no further; an unfinished checkpoint is refused by the exporter's loader.
    train_ensemble(tmp_path, config)
    assert torch.load(tmp_path / "member_0.pt", weights_only=False)["step"] == 6
    members, _ = load_members(tmp_path)
    assert len(members) == 1


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    config = TrainConfig(
        members=1, steps=6, batch=2, width=4, depth=2, samples=8, checkpoint_every=2, sample=SampleSpec(patch_px=32)
    )
    revive = _killed_at_step(monkeypatch, 4)  # killed during the fourth step
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(tmp_path, config)
    assert torch.load(tmp_path / "member_0.pt", weights_only=False)["step"] == 2
    with pytest.raises(ValueError, match="unfinished"):
        load_members(tmp_path)
    revive()
    train_ensemble(tmp_path, config)  # resumes at step 2, no scheduler overrun
    assert torch.load(tmp_path / "member_0.pt", weights_only=False)["step"] == 6
    assert len(load_members(tmp_path)[0]) == 1


def test_a_different_configuration_is_refused(tmp_path):
    config = TrainConfig(members=1, steps=2, batch=2, width=4, depth=2, samples=4, sample=SampleSpec(patch_px=32))
    train_ensemble(tmp_path, config)
    with pytest.raises(ValueError, match="another configuration"):
        train_ensemble(tmp_path, TrainConfig(**{**config.__dict__, "width": 8}))


def test_channel_widths_per_level_are_trained_and_reloaded(tmp_path):
    config = TrainConfig(
        members=1, steps=2, batch=2, width=4, depth=2, widths=(4, 8, 24), samples=4, sample=SampleSpec(patch_px=32)
    )
    train_ensemble(tmp_path, config)
    members, saved = load_members(tmp_path)
    net = members[0]
    assert saved["widths"] == [4, 8, 24]
    assert net.depth == 2 and net.multiple == 4
    assert [b[0].out_channels for b in net.down] == [4, 8, 24]
    # Reloaded weights are the trained ones: the checkpoint's tensors load with no shape mismatch.
    out = net(torch.zeros(1, 1, 32, 32))
    assert out.shape == (1, 4, 32, 32)


def test_runs_from_before_channel_widths_still_load(tmp_path):
    config = TrainConfig(members=1, steps=2, batch=2, width=4, depth=2, samples=4, sample=SampleSpec(patch_px=32))
    train_ensemble(tmp_path, config)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["widths"]  # a run written before the option existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    members, _ = load_members(tmp_path)
    assert [b[0].out_channels for b in members[0].down] == [4, 8, 16]


@pytest.mark.parametrize("widths", [(8,), (8, 0, 16)])
def test_bad_channel_widths_are_refused(widths):
    from models.training.unet import UNet

    with pytest.raises(ValueError, match="widths"):
        UNet(widths=widths)


def test_train_command_takes_channel_widths(tmp_path, capsys):
    from agent.cli import main

    out = tmp_path / "run"
    args = ["train", "--members", "1", "--steps", "2", "--samples", "4", "--batch", "2", "--threads", "1"]
    assert main([*args, "--widths", "4,8,16", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["width"], saved["depth"], saved["widths"]) == (4, 2, [4, 8, 16])
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--widths", "8,x", "--out", str(tmp_path / "other")])
    assert exit_info.value.code == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_lattice_weights_set_how_often_each_lattice_is_drawn():
    spec = SampleSpec(lattice_weights=(0.0, 0.0, 3.0, 1.0))  # sorted: MoS2, SrTiO3, WS2, graphene
    rng = np.random.default_rng(0)
    draws = [spec.draw_lattice(rng) for _ in range(800)]
    assert set(draws) == {"WS2", "graphene"}
    assert 0.70 < draws.count("WS2") / len(draws) < 0.80
    # Without weights the draw is the one runs made before the option existed (same data for the same seed).
    plain, old = np.random.default_rng(5), np.random.default_rng(5)
    spec = SampleSpec()
    assert [spec.draw_lattice(plain) for _ in range(50)] == [str(old.choice(spec.lattices)) for _ in range(50)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lattice_weights": (1.0, 1.0)},
        {"lattice_weights": (1.0, -1.0, 1.0, 1.0)},
        {"lattice_weights": (0.0, 0.0, 0.0, 0.0)},
        {"lattice_weights": (1.0, float("nan"), 1.0, 1.0)},
        {"lattices": ("graphite",)},
        {"lattices": ()},
    ],
)
def test_bad_lattice_choices_are_refused(kwargs):
    with pytest.raises(ValueError, match="lattice"):
        SampleSpec(**kwargs)


def test_the_unweighted_spec_keeps_every_range():
    spec = SampleSpec(lattice_weights=(1.0, 3.0, 1.0, 3.0), pixel_nm=(0.01, 0.02))
    plain = spec.unweighted()
    assert plain.lattice_weights == () and plain.pixel_nm == (0.01, 0.02) and plain.lattices == spec.lattices


TINY = {"members": 2, "steps": 2, "batch": 2, "width": 4, "depth": 2, "samples": 4, "sample": SampleSpec(patch_px=32)}


def _weights(run_dir, member):
    return torch.load(run_dir / f"member_{member}.pt", weights_only=False)["model"]


def test_a_fine_tune_starts_from_the_parent_members(tmp_path):
    parent, child, fresh = tmp_path / "parent", tmp_path / "child", tmp_path / "fresh"
    train_ensemble(parent, TrainConfig(**TINY))
    # A vanishing learning rate leaves the starting weights in place (batch-norm statistics still move).
    tune = {**TINY, "steps": 1, "learning_rate": 1e-12, "data_seed": 1}
    train_ensemble(child, TrainConfig(**tune, init_from=str(parent)))
    train_ensemble(fresh, TrainConfig(**tune))  # the parent's own seeds, no parent: its untrained weights
    for m in range(2):
        learnt = {k: v for k, v in _weights(parent, m).items() if k.endswith(("weight", "bias"))}
        assert len(learnt) > 10
        for name, value in learnt.items():
            assert torch.allclose(_weights(child, m)[name], value, atol=1e-9), (m, name)
    conv = next(k for k in _weights(parent, 0) if k.endswith("weight"))
    assert not torch.allclose(_weights(fresh, 0)[conv], _weights(parent, 0)[conv])
    assert not torch.allclose(_weights(parent, 0)[conv], _weights(parent, 1)[conv])  # each member its own parent
    assert json.loads((child / "config.json").read_text())["init_from"] == str(parent)


def test_a_fine_tune_refuses_a_parent_that_does_not_fit(tmp_path):
    parent = tmp_path / "parent"
    train_ensemble(parent, TrainConfig(**TINY))
    cases = {
        "not a training run": {"init_from": str(tmp_path / "nothing")},
        "architecture differs in \\['width'\\]": {"init_from": str(parent), "width": 8},
        "has 2 members, this run wants 3": {"init_from": str(parent), "members": 3},
    }
    for i, (message, change) in enumerate(cases.items()):
        with pytest.raises(ValueError, match=message):
            train_ensemble(tmp_path / f"child{i}", TrainConfig(**{**TINY, **change}))
        assert not (tmp_path / f"child{i}").exists()  # refused before the run directory is made
    state = torch.load(parent / "member_1.pt", weights_only=False)
    torch.save({**state, "step": 1}, parent / "member_1.pt")
    with pytest.raises(ValueError, match="member 1 is missing or unfinished"):
        train_ensemble(tmp_path / "child", TrainConfig(**TINY, init_from=str(parent)))
    assert not (tmp_path / "child" / "data.npz").exists()  # refused before simulating anything


def test_runs_from_before_lattice_weights_and_fine_tuning_still_resume(tmp_path):
    config = TrainConfig(**TINY)
    train_ensemble(tmp_path, config)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["init_from"], saved["sample"]["lattice_weights"]  # as runs written before the options existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    data = (tmp_path / "data.npz").stat().st_mtime_ns
    train_ensemble(tmp_path, config)  # accepted as the same run; its dataset is reused, not simulated again
    assert (tmp_path / "data.npz").stat().st_mtime_ns == data
    # The dataset key is the one written before the options existed: the spec without lattice_weights.
    old_spec = dataclasses.asdict(config.sample)
    del old_spec["lattice_weights"]
    old_key = json.dumps({"samples": config.samples, "seed": config.data_seed, "spec": old_spec})
    with np.load(tmp_path / "data.npz") as z:
        assert str(z["key"]) == old_key
    weighted = TrainConfig(**{**TINY, "sample": SampleSpec(patch_px=32, lattice_weights=(1, 1, 1, 2))})
    with pytest.raises(ValueError, match=r"another configuration \(differs in sample.lattice_weights\)"):
        train_ensemble(tmp_path, weighted)


def test_an_interrupted_fine_tune_resumes_from_its_own_checkpoints_without_the_parent(tmp_path, monkeypatch):
    parent, child = tmp_path / "parent", tmp_path / "child"
    one = {**TINY, "members": 1}
    train_ensemble(parent, TrainConfig(**one))
    tune = TrainConfig(**{**one, "steps": 4, "checkpoint_every": 2}, init_from=str(parent))
    revive = _killed_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(child, tune)
    revive()
    saved = _weights(child, 0)
    for path in parent.iterdir():  # the parent is gone: the child's checkpoint is all the resume needs
        path.unlink()
    train_ensemble(child, tune)
    assert torch.load(child / "member_0.pt", weights_only=False)["step"] == 4
    assert any(not torch.equal(saved[k], v) for k, v in _weights(child, 0).items())


@pytest.mark.parametrize(
    "option",
    [
        ["--width", "0"],
        ["--depth", "-1"],
        ["--learning-rate", "0"],
        ["--learning-rate", "inf"],
        ["--members", "0"],
        ["--samples", "0"],
        ["--batch", "0"],
    ],
)
def test_train_refuses_sizes_and_rates_that_are_not_positive(tmp_path, capsys, option):
    from agent.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--members", "1", "--steps", "1", *option, "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option[0]}: expected a" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"samples": 3, "batch": 4}, r"samples \(3\) must be at least the batch size \(4\)"),  # used to hang
        ({"members": 0}, "members must be at least 1"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"learning_rate": float("inf")}, "learning_rate must be positive and finite"),
    ],
)
def test_configurations_that_cannot_train_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**TINY, **change})


def test_a_resumed_member_draws_the_batches_an_uninterrupted_one_does(tmp_path, monkeypatch):
    """Killed mid-epoch (8 samples in batches of 2, checkpoint at step 3), it ends with the same weights."""
    config = TrainConfig(**{**TINY, "members": 1, "steps": 6, "samples": 8, "checkpoint_every": 3})
    train_ensemble(tmp_path / "whole", config, threads=1)
    revive = _killed_at_step(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(tmp_path / "cut", config, threads=1)
    revive()
    train_ensemble(tmp_path / "cut", config, threads=1)
    whole, cut = _weights(tmp_path / "whole", 0), _weights(tmp_path / "cut", 0)
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def test_damaged_run_files_get_clear_errors_or_are_made_again(tmp_path, caplog):
    config = TrainConfig(**{**TINY, "members": 1})
    train_ensemble(tmp_path, config, threads=1)
    data = tmp_path / "data.npz"
    data.write_bytes(data.read_bytes()[:3000])  # the dataset is a cache: simulated again from its seed
    train_ensemble(tmp_path, config, threads=1)
    assert "cannot be read" in caplog.text
    with np.load(data) as z:
        assert len(z["images"]) == TINY["samples"]
    member = tmp_path / "member_0.pt"
    member.write_bytes(member.read_bytes()[:500])
    with pytest.raises(ValueError, match=r"member_0\.pt is truncated or corrupt .* delete it to train that member"):
        load_members(tmp_path)
    member.unlink()
    with pytest.raises(ValueError, match=r"member_0\.pt is missing: that member has no checkpoint"):
        load_members(tmp_path)
    (tmp_path / "config.json").write_text('{"members": 1, "steps"')
    with pytest.raises(ValueError, match=r"config\.json cannot be read as a run configuration"):
        train_ensemble(tmp_path, config)


def test_train_refuses_fewer_samples_than_a_batch_before_writing(tmp_path, capsys):
    from agent.cli import main

    assert main(["train", "--members", "1", "--samples", "3", "--batch", "4", "--out", str(tmp_path / "run")]) == 2
    assert "samples (3) must be at least the batch size (4)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_checkpoints_of_another_configuration_are_not_resumed(tmp_path):
    """Without config.json (deleted, or a run copied in part), the checkpoints' own record still guards them."""
    config = TrainConfig(**{**TINY, "members": 1})
    train_ensemble(tmp_path, config, threads=1)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match=r"member_0\.pt was trained with another configuration \(differs in steps\)"):
        train_ensemble(tmp_path, TrainConfig(**{**TINY, "members": 1, "steps": 4}), threads=1)


def test_a_global_context_member_is_trained_and_reloaded_and_its_conditioning_acts(tmp_path):
    config = TrainConfig(members=1, steps=2, batch=2, width=4, depth=2, samples=4, global_context=True,
                         sample=SampleSpec(patch_px=32))  # fmt: skip
    train_ensemble(tmp_path, config, threads=1)
    members, saved = load_members(tmp_path)
    net = members[0]
    assert saved["global_context"] is True and net.context is not None
    with torch.no_grad():  # the same patch beside a brighter one gets other logits: the frame conditions it
        net.context.mlp[2].weight.normal_(0, 0.5)
        x = torch.rand(1, 1, 32, 64)
        brighter = x.clone()
        brighter[..., 32:] += 1.0
        assert not torch.allclose(net(x)[..., :32], net(brighter)[..., :32], atol=1e-4)


def test_a_global_context_ensemble_exports_with_parity_and_its_bundle_reloads(tmp_path):
    import onnxruntime as ort

    from models.training.ensemble import EnsembleWithUncertainty
    from models.training.export import export_onnx, members_from_bundle
    from models.training.unet import UNet

    torch.manual_seed(3)
    members = [UNet(4, 4, 2, global_context=True).eval() for _ in range(2)]
    for m in members:
        torch.nn.init.normal_(m.context.mlp[2].weight, 0, 0.3)  # not the identity it starts as
    ensemble = EnsembleWithUncertainty(members).eval()
    onnx = tmp_path / "gc.onnx"
    export_onnx(ensemble, onnx, multiple=4)
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    for shape in ((32, 32), (48, 80)):
        x = np.random.default_rng(1).normal(0.4, 0.3, (1, 1, *shape)).astype(np.float32)
        with torch.no_grad():
            expected = ensemble(torch.from_numpy(x))
        for a, b in zip(session.run(None, {"image": x}), expected, strict=True):
            assert np.abs(a - b.numpy()).max() <= 1e-4
    bundle = {"members": [m.state_dict() for m in members], "n_classes": 4, "width": 4, "depth": 2, "widths": [],
              "global_context": True}  # fmt: skip
    torch.save(bundle, tmp_path / "gc.members.pt")
    reloaded = members_from_bundle(tmp_path / "gc.members.pt")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded[1](x), members[1](x))


def test_runs_from_before_global_context_compare_equal_and_load_without_it(tmp_path):
    config = TrainConfig(members=1, steps=2, batch=2, width=4, depth=2, samples=4, sample=SampleSpec(patch_px=32))
    train_ensemble(tmp_path, config, threads=1)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["global_context"]  # a run written before the option existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    train_ensemble(tmp_path, config, threads=1)  # resumed with the same options: not "another configuration"
    members, _ = load_members(tmp_path)
    assert members[0].context is None


def test_train_command_takes_global_context_and_a_fine_tune_refuses_it(tmp_path, capsys):
    from agent.cli import main

    out = tmp_path / "run"
    args = ["train", "--members", "1", "--steps", "2", "--samples", "4", "--batch", "2", "--threads", "1"]
    assert main([*args, "--width", "4", "--depth", "2", "--global-context", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["global_context"] is True
    assert main([*args, "--init-from", str(out), "--global-context", "--out", str(tmp_path / "tune")]) == 2
    assert "leave out --width, --depth, --widths and --global-context" in capsys.readouterr().err
