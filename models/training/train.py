"""Deep-ensemble training: members differ by initialisation seed and data order.

A run directory holds ``config.json``, the simulated dataset (``data.npz``,
generated once from its seed) and one checkpoint per member
(``member_<i>.pt``), rewritten atomically every ``checkpoint_every`` steps, so
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.training.data import SampleSpec, make_dataset
from models.training.unet import UNet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run."""

    members: int = 5
    steps: int = 1500
    batch: int = 16
    width: int = 12
    depth: int = 3
    # Channels per U-Net level (full resolution first); empty: width * 2**level for depth + 1 levels.
    widths: tuple[int, ...] = ()
    learning_rate: float = 2e-3
    samples: int = 3000
    data_seed: int = 0
    seed: int = 0
    # Defect pixels are rare (a few per frame), so they weigh more in the loss.
    class_weights: tuple[float, ...] = (0.25, 1.0, 8.0, 5.0)
    checkpoint_every: int = 100
    sample: SampleSpec = field(default_factory=SampleSpec)
    # A finished run whose members start this one's (fine-tuning); empty: fresh initialisation.
    init_from: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


def unet_from_config(config: dict[str, Any]) -> UNet:
    """A fresh member for a run's JSON configuration (runs written before ``widths`` existed included)."""
    return UNet(
        n_classes=len(config["class_weights"]),
        width=int(config["width"]),
        depth=int(config["depth"]),
        widths=tuple(int(w) for w in config.get("widths") or ()),
    )


ARCHITECTURE_KEYS = ("width", "depth", "widths", "class_weights")


def check_parent(config: TrainConfig) -> dict[str, Any]:
    """The configuration of ``config.init_from``, after checking it can start this run.

    Raises
    ------
    ValueError
        When the parent is no run, has fewer members, another architecture, or unfinished members.
    """
    parent = Path(config.init_from)
    if not (parent / "config.json").exists():
        raise ValueError(f"--init-from {parent}: not a training run (no config.json)")
    theirs = json.loads((parent / "config.json").read_text())
    ours = json.loads(json.dumps(config.to_json()))
    differ = [k for k in ARCHITECTURE_KEYS if (theirs.get(k) or None) != (ours.get(k) or None)]
    if differ:
        raise ValueError(f"--init-from {parent}: architecture differs in {differ}; a fine-tune keeps the parent's")
    if int(theirs["members"]) < config.members:
        raise ValueError(f"--init-from {parent}: has {theirs['members']} members, this run wants {config.members}")
    for m in range(config.members):
        path = parent / f"member_{m}.pt"
        if not path.exists() or int(torch.load(path, weights_only=False)["step"]) < int(theirs["steps"]):
            raise ValueError(f"--init-from {parent}: member {m} is missing or unfinished")
    return theirs


def needs_parent(run_dir: Path, config: TrainConfig) -> bool:
    """Whether a member of ``run_dir`` still has to start from ``config.init_from`` (no checkpoint of its own yet)."""
    return bool(config.init_from) and any(not (run_dir / f"member_{m}.pt").exists() for m in range(config.members))


def _differing_keys(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Keys (``sample.<key>`` inside the sample spec) whose values differ between two run configurations."""
    keys = sorted(set(stored) | set(wanted))
    out = []
    for k in keys:
        a, b = stored.get(k), wanted.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{sub}" for sub in _differing_keys(a, b)]
        elif a != b:
            out.append(k)
    return out


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a run's or a sample spec's JSON) without options left at a default that older runs lack."""
    out = json.loads(json.dumps(config))
    if not out.get("init_from"):
        out.pop("init_from", None)
    sample = out.get("sample", out)
    if not sample.get("lattice_weights"):
        sample.pop("lattice_weights", None)
    return out


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_or_make_data(run_dir: Path, config: TrainConfig, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """The run's dataset: read ``data.npz`` if it matches the config, else simulate and save it."""
    path = run_dir / "data.npz"
    key = json.dumps({"samples": config.samples, "seed": config.data_seed, "spec": _comparable(asdict(config.sample))})
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return z["images"], z["targets"]
        logger.warning("%s was made with another configuration; simulating again", path)
    images, targets = make_dataset(config.samples, config.data_seed, config.sample, progress=progress)
    tmp = run_dir / "data.tmp.npz"
    np.savez(tmp, images=images, targets=targets, key=np.array(key))
    os.replace(tmp, path)
    return images, targets


def _augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    k = int(rng.integers(4))
    x, y = torch.rot90(x, k, dims=(-2, -1)), torch.rot90(y, k, dims=(-2, -1))
    if rng.uniform() < 0.5:
        x, y = torch.flip(x, dims=(-1,)), torch.flip(y, dims=(-1,))
    return x, y


def _batches(n: int, batch: int, rng: np.random.Generator) -> Any:
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            yield order[i : i + batch]


def train_member(
    run_dir: Path, member: int, config: TrainConfig, images: np.ndarray, targets: np.ndarray, progress: bool = False
) -> Path:
    """Train (or resume) one member; returns its checkpoint path."""
    from tqdm import tqdm

    path = run_dir / f"member_{member}.pt"
    torch.manual_seed(config.seed * 1000 + member)
    model = unet_from_config(config.to_json())
    optim = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=config.learning_rate, total_steps=config.steps)
    rng = np.random.default_rng([config.seed, member])  # the member's own data order
    step = 0
    if path.exists():
        state = torch.load(path, weights_only=False)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = state["rng"]
        step = int(state["step"])
    elif config.init_from:
        model.load_state_dict(torch.load(Path(config.init_from) / f"member_{member}.pt", weights_only=False)["model"])
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(config.class_weights, dtype=torch.float32))
    batches = _batches(len(images), config.batch, rng)
    model.train()
    bar = tqdm(total=config.steps, initial=step, desc=f"member {member}", disable=not progress, unit="step")
    while step < config.steps:
        idx = next(batches)
        x = torch.from_numpy(images[idx]).unsqueeze(1)
        y = torch.from_numpy(targets[idx].astype(np.int64))
        x, y = _augment(x, y, rng)
        loss = loss_fn(model(x), y)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            state = {
                "model": model.state_dict(),
                "optim": optim.state_dict(),
                "sched": sched.state_dict(),
                "rng": rng.bit_generator.state,
                "step": step,
                "config": config.to_json(),
                "member": member,
            }
            _save_atomic(state, path)
    bar.close()
    return path


def train_ensemble(
    run_dir: Path,
    config: TrainConfig,
    progress: bool = False,
    threads: int | None = None,
    command: str | None = None,
) -> list[Path]:
    """Train every member of the ensemble in ``run_dir`` (resuming any that exist).

    ``threads`` sets torch's CPU threads (all cores when None).  ``command``, when given, is written
    to ``run_dir/command.txt`` (what export records as the training command).  A run directory that
    holds another configuration, or a parent run (``config.init_from``) that cannot start this one, is
    refused before anything is written: a refused run leaves no directory and changes no file.
    """
    if threads:
        torch.set_num_threads(threads)
    config_path = run_dir / "config.json"
    if config_path.exists():
        differ = _differing_keys(_comparable(json.loads(config_path.read_text())), _comparable(config.to_json()))
        if differ:
            raise ValueError(
                f"{config_path} holds another configuration (differs in {', '.join(differ)}):"
                " use a new --out or the same options"
            )
    if needs_parent(run_dir, config):  # members that already have a checkpoint never read the parent again
        check_parent(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config.to_json(), indent=2))
    if command is not None:
        (run_dir / "command.txt").write_text(command + "\n")
    images, targets = load_or_make_data(run_dir, config, progress)
    return [train_member(run_dir, m, config, images, targets, progress) for m in range(config.members)]


def load_members(run_dir: Path) -> tuple[list[UNet], dict[str, Any]]:
    """The trained members of ``run_dir`` in eval mode, and the run's configuration."""
    config = json.loads((run_dir / "config.json").read_text())
    members = []
    for m in range(int(config["members"])):
        state = torch.load(run_dir / f"member_{m}.pt", weights_only=False)
        if int(state["step"]) < int(config["steps"]):
            raise ValueError(f"member {m} of {run_dir} is unfinished ({state['step']}/{config['steps']} steps)")
        net = unet_from_config(config)
        net.load_state_dict(state["model"])
        members.append(net.eval())
    return members, config
