"""A training run's files: its configuration (read, compared, checked as a fine-tune's parent) and checkpoints.

Used by :mod:`models.training.train`, which trains into a run directory, and by the CLI and the export,
which read one.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from models.training.train import TrainConfig

ARCHITECTURE_KEYS = ("width", "depth", "widths", "global_context", "class_weights")


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
    theirs = read_run_config(parent / "config.json")
    ours = json.loads(json.dumps(config.to_json()))
    differ = [k for k in ARCHITECTURE_KEYS if (theirs.get(k) or None) != (ours.get(k) or None)]
    if differ:
        raise ValueError(f"--init-from {parent}: architecture differs in {differ}; a fine-tune keeps the parent's")
    if int(theirs["members"]) < config.members:
        raise ValueError(f"--init-from {parent}: has {theirs['members']} members, this run wants {config.members}")
    for m in range(config.members):
        path = parent / f"member_{m}.pt"
        if not path.exists() or int(load_checkpoint(path)["step"]) < int(theirs["steps"]):
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


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a run's or a sample spec's JSON) without options left at a default that older runs lack."""
    out = json.loads(json.dumps(config))
    for key in ("init_from", "global_context"):  # runs from before these options lack them
        if not out.get(key):
            out.pop(key, None)
    sample = out.get("sample", out)
    if not sample.get("lattice_weights"):
        sample.pop("lattice_weights", None)
    return out


def differs_from(stored: dict[str, Any], config: TrainConfig) -> list[str]:
    """Keys in which a stored run configuration (config.json, a checkpoint's) differs from ``config``."""
    return _differing_keys(comparable(stored), comparable(config.to_json()))


#: Keys every run's config.json holds (runs of every version).
_RUN_KEYS = ("members", "steps", "batch", "width", "depth", "class_weights", "seed", "data_seed", "samples", "sample")


def read_run_config(path: Path) -> dict[str, Any]:
    """A run's ``config.json``, or a clear error naming the file.

    Raises
    ------
    ValueError
        The file is missing, not JSON, or lacks a key every run has.
    """
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path.parent} is not a training run (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} cannot be read as a run configuration ({exc})") from exc
    missing = [k for k in _RUN_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise ValueError(f"{path} is not a run configuration (missing {', '.join(missing)})")
    return config


#: What a member checkpoint holds.
_CHECKPOINT_KEYS = ("model", "optim", "sched", "rng", "step")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A member checkpoint, or a clear error naming the file.

    Raises
    ------
    ValueError
        The file is missing, truncated, corrupt or not a member checkpoint.
    """
    if not path.is_file():
        raise ValueError(f"{path} is missing: that member has no checkpoint (the run is unfinished)")
    try:
        state = torch.load(path, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        raise ValueError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); delete it to train that member again"
        ) from exc
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a member checkpoint (missing {', '.join(missing)})")
    return state


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file: an interruption leaves the old file whole."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
