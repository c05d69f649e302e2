"""Deep-ensemble training: members differ by initialisation seed and data order.

A run directory holds ``config.json``, the simulated dataset (``data.npz``,
generated once from its seed) and one checkpoint per member
(``member_<i>.pt``), rewritten atomically every ``checkpoint_every`` steps, so
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.training.data import SampleSpec, make_dataset
from models.training.run_files import (
    check_parent,
    comparable,
    differs_from,
    load_checkpoint,
    needs_parent,
    read_run_config,
    save_atomic,
)
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
    # Condition the lowest-resolution features on their mean over the whole input (unet.GlobalContext).
    global_context: bool = False
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

    def __post_init__(self) -> None:
        for name in ("members", "steps", "batch", "samples", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.samples < self.batch:  # no whole batch could be drawn: training would never take a step
            raise ValueError(f"samples ({self.samples}) must be at least the batch size ({self.batch})")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be positive and finite (got {self.learning_rate})")

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
        global_context=bool(config.get("global_context", False)),
    )


def load_or_make_data(run_dir: Path, config: TrainConfig, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """The run's dataset: read ``data.npz`` if it matches the config, else simulate and save it."""
    path = run_dir / "data.npz"
    key = json.dumps({"samples": config.samples, "seed": config.data_seed, "spec": comparable(asdict(config.sample))})
    if path.exists():
        try:
            with path.open("rb") as fh, np.load(fh, allow_pickle=False) as z:  # (fh: closed even when np.load fails)
                if str(z["key"]) == key:
                    return z["images"], z["targets"]
            logger.warning("%s was made with another configuration; simulating again", path)
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # a cache: made again
            logger.warning("%s cannot be read (%s: %s); simulating again", path, type(exc).__name__, exc)
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


class _BatchOrder:
    """Batches of sample indices, epoch after epoch in a fresh random order, with a resumable position.

    The current epoch's order and position go into each checkpoint, so a resumed member draws the
    same batches as an uninterrupted one (a fresh permutation on resume would drop the rest of the epoch).
    """

    def __init__(self, n: int, batch: int, rng: np.random.Generator) -> None:
        self.n, self.batch, self.rng = n, batch, rng
        self.order = np.empty(0, dtype=np.int64)
        self.position = 0

    def next(self) -> np.ndarray:
        """The next batch (a new epoch's order once the current one has no whole batch left)."""
        if self.position + self.batch > len(self.order):
            self.order, self.position = self.rng.permutation(self.n), 0
        idx = self.order[self.position : self.position + self.batch]
        self.position += self.batch
        return idx

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the order."""
        return {"order": self.order.copy(), "position": self.position}

    def restore(self, state: dict[str, Any] | None) -> None:
        """Continue from :meth:`state` (checkpoints written before it existed: a fresh epoch)."""
        if state is not None and len(state["order"]) == self.n:
            self.order, self.position = np.asarray(state["order"], dtype=np.int64), int(state["position"])


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
    batches = _BatchOrder(len(images), config.batch, rng)
    step = 0
    if path.exists():
        state = load_checkpoint(path)
        differ = differs_from(state["config"], config) if state.get("config") is not None else []
        if differ:  # e.g. config.json deleted, then other options given
            raise ValueError(f"{path} was trained with another configuration (differs in {', '.join(differ)})")
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = state["rng"]
        batches.restore(state.get("batches"))
        step = int(state["step"])
    elif config.init_from:
        model.load_state_dict(load_checkpoint(Path(config.init_from) / f"member_{member}.pt")["model"])
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(config.class_weights, dtype=torch.float32))
    model.train()
    bar = tqdm(total=config.steps, initial=step, desc=f"member {member}", disable=not progress, unit="step")
    while step < config.steps:
        idx = batches.next()
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
                "batches": batches.state(),
                "step": step,
                "config": config.to_json(),
                "member": member,
            }
            save_atomic(state, path)
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
    to ``run_dir/command.txt`` (what export records as the training command) unless the run already
    has one: a resumed run keeps the command that started it.  A run directory that
    holds another configuration, or a parent run (``config.init_from``) that cannot start this one, is
    refused before anything is written: a refused run leaves no directory and changes no file.
    """
    if threads:
        torch.set_num_threads(threads)
    config_path = run_dir / "config.json"
    if config_path.exists():
        differ = differs_from(read_run_config(config_path), config)
        if differ:
            raise ValueError(
                f"{config_path} holds another configuration (differs in {', '.join(differ)}):"
                " use a new --out or the same options"
            )
    if needs_parent(run_dir, config):  # members that already have a checkpoint never read the parent again
        check_parent(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config.to_json(), indent=2))
    if command is not None and not (run_dir / "command.txt").exists():  # a resume keeps the run's own command
        (run_dir / "command.txt").write_text(command + "\n")
    images, targets = load_or_make_data(run_dir, config, progress)
    return [train_member(run_dir, m, config, images, targets, progress) for m in range(config.members)]


def load_members(run_dir: Path) -> tuple[list[UNet], dict[str, Any]]:
    """The trained members of ``run_dir`` in eval mode, and the run's configuration."""
    config = read_run_config(run_dir / "config.json")
    members = []
    for m in range(int(config["members"])):
        state = load_checkpoint(run_dir / f"member_{m}.pt")
        if int(state["step"]) < int(config["steps"]):
            raise ValueError(f"member {m} of {run_dir} is unfinished ({state['step']}/{config['steps']} steps)")
        net = unet_from_config(config)
        net.load_state_dict(state["model"])
        members.append(net.eval())
    return members, config
