"""Training data and the training loop: targets align with the image, runs resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.training.data import SampleSpec, make_sample
from models.training.train import TrainConfig, load_members, train_ensemble


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
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed during the fourth step
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(tmp_path, config)
    assert torch.load(tmp_path / "member_0.pt", weights_only=False)["step"] == 2
    with pytest.raises(ValueError, match="unfinished"):
        load_members(tmp_path)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
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
