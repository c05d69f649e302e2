"""The sinogram-inpainting ensemble (TomoFillNet-inspired, smaller): data, training, one-graph export.

Each member is a U-Net taking a sinogram with its unmeasured angles zeroed plus the mask of measured
angles, and returning the full sinogram.  Training data: slices of random phantoms (seeds below 1000;
benchmarks use 1000 and up), projected on the 128-angle grid with counting noise, masked by a random
missing wedge (|tilt| above 45 to 80 degrees unmeasured) or a random sparse set of angles.  The loss is
the L1 error on the unmeasured rows (plus a tenth of it on the measured ones).  The exported graph runs
every member and returns the mean, the member variance and the per-angle uncertainty.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from skimage.transform import radon
from torch import nn
from tqdm import tqdm

from models.manifest import invoked_command, sha256_file
from models.sinogram import GRID_DEG, N_ANGLES, pack
from models.training.export import recorded_commands
from models.training.graph import rewrite_file
from models.training.unet import UNet
from simulators.phantom import PhantomConfig, make_phantom

logger = logging.getLogger(__name__)
OUTPUTS = ("mean", "variance", "angle_uncertainty")


class InpaintConfig(BaseModel):
    """Training settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    members: int = Field(3, ge=1, le=16)
    steps: int = Field(600, ge=1)
    batch: int = Field(16, ge=1)
    width: int = Field(8, ge=2)
    depth: int = Field(3, ge=1, le=5)
    size_px: int = Field(64, ge=16, description="Detector pixels (phantom edge).")
    phantoms: int = Field(48, ge=2, description="Training phantoms (seeds 0..phantoms-1).")
    dose_e_per_px: float = Field(2000.0, gt=0.0)
    seed: int = 0
    learning_rate: float = Field(2e-3, gt=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _detector_fits_the_network(self) -> InpaintConfig:
        """The U-Net halves the detector axis ``depth`` times: refuse a size it cannot, before anything is simulated."""
        if self.size_px % 2**self.depth:
            raise ValueError(f"size_px ({self.size_px}) must be a multiple of 2**depth ({2**self.depth})")
        return self


def phantom_sinograms(seed: int, size_px: int, dose_e_per_px: float, rng: np.random.Generator) -> np.ndarray:
    """The non-empty slice sinograms ``(n, 128, size_px)`` of one phantom, with counting noise."""
    volume = make_phantom(PhantomConfig(seed=seed, size_px=size_px)).volume
    out = []
    for y in range(size_px):
        slab = volume[:, y, :]
        if slab.any():
            sino = radon(slab, theta=GRID_DEG, circle=True).T  # (angles, detector)
            counts = rng.poisson(np.clip(dose_e_per_px * (0.01 + 0.02 * sino), 0, None))
            out.append(((counts / dose_e_per_px - 0.01) / 0.02).astype(np.float32))
    return np.stack(out) if out else np.zeros((0, N_ANGLES, size_px), np.float32)


def random_mask(rng: np.random.Generator) -> np.ndarray:
    """Measured grid rows: a missing wedge (|tilt| > 45..80 deg unmeasured) or a sparse random subset."""
    if rng.random() < 0.6:
        return np.abs(GRID_DEG) <= rng.uniform(45.0, 80.0)
    reach = np.abs(GRID_DEG) <= rng.uniform(60.0, 90.0)
    keep = rng.random(N_ANGLES) < rng.uniform(0.08, 0.5)
    mask = reach & keep
    mask[np.argmin(np.abs(GRID_DEG))] = True  # at least the zero tilt
    return mask


class InpaintEnsemble(nn.Module):
    """Every member, then mean, member variance and per-angle uncertainty (mean member std over the detector).

    Input (B, 2, A, D); outputs (B, 1, A, D), (B, 1, A, D), (B, A).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and per-angle uncertainty of the members' sinograms."""
        outs = torch.stack([m(x) for m in self.members])  # (M, B, 1, A, D)
        mean = outs.mean(0)
        variance = ((outs - mean) ** 2).mean(0)
        return mean, variance, torch.sqrt(variance + 1e-12)[:, 0].mean(-1)


def _data(config: InpaintConfig) -> np.ndarray:
    rng = np.random.default_rng([config.seed, 0x51])
    sinos = [phantom_sinograms(s, config.size_px, config.dose_e_per_px, rng) for s in
             tqdm(range(config.phantoms), desc="simulating sinograms", unit="phantom")]  # fmt: skip
    return np.concatenate(sinos)


def _batch(data: np.ndarray, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pick = rng.integers(0, len(data), size)
    full = data[pick]
    masks = np.stack([random_mask(rng) for _ in range(size)])
    x, scale = pack(full, masks)
    target = full / scale[:, None, None]
    return torch.from_numpy(x), torch.from_numpy(target[:, None].astype(np.float32)), torch.from_numpy(masks)


def train_member(data: np.ndarray, config: InpaintConfig, index: int) -> UNet:
    """One member: its own seed and data order."""
    torch.manual_seed(config.seed * 100 + index)
    rng = np.random.default_rng([config.seed, index, 0x1A])
    net = UNet(n_classes=1, width=config.width, depth=config.depth, in_channels=2)
    opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.learning_rate, total_steps=config.steps)
    bar = tqdm(range(config.steps), desc=f"member {index}", unit="step")
    for _ in bar:
        x, y, mask = _batch(data, rng, config.batch)
        err = (net(x) - y).abs()[:, 0]
        weight = torch.where(mask[:, :, None], 0.1, 1.0)
        loss = (err * weight).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return net.eval()


def train(out: Path, config: InpaintConfig, threads: int = 0) -> list[UNet]:
    """Train every member (``threads`` torch threads, 0: torch's choice); saves ``members.pt`` into ``out``."""
    if threads:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    data = _data(config)
    logger.info("%d training sinograms", len(data))
    members = [train_member(data, config, i) for i in range(config.members)]
    torch.save([m.state_dict() for m in members], out / "members.pt")
    (out / "config.json").write_text(config.model_dump_json(indent=2))
    (out / "command.txt").write_text(invoked_command() + "\n")
    return members


def load(run_dir: Path) -> tuple[list[UNet], InpaintConfig]:
    """The members of a training run."""
    config = InpaintConfig.model_validate_json((run_dir / "config.json").read_text())
    members = []
    for state in torch.load(run_dir / "members.pt", weights_only=True):
        net = UNet(n_classes=1, width=config.width, depth=config.depth, in_channels=2)
        net.load_state_dict(state)
        members.append(net.eval())
    return members, config


def export(run_dir: Path, onnx_path: Path, name: str = "sinogram_inpaint") -> Path:
    """One ONNX graph (dynamic batch and detector size) plus its manifest; returns the manifest path."""
    members, config = load(run_dir)
    ensemble = InpaintEnsemble(members).eval()
    multiple = 2**config.depth
    example = torch.zeros(2, 2, N_ANGLES, config.size_px)
    batch = torch.export.Dim("batch", min=1, max=4096)
    width = torch.export.Dim("w", min=1, max=256)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        ensemble, (example,), str(onnx_path), dynamo=True, input_names=["sinogram"], output_names=list(OUTPUTS),
        dynamic_shapes={"x": {0: batch, 3: multiple * width}}, external_data=False, optimize=True,
    )  # fmt: skip
    rewrite_file(str(onnx_path))
    manifest = {
        "schema_version": 1,
        "name": name,
        "kind": "sinogram_inpainting",
        "onnx_file": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "angles_deg": [float(a) for a in GRID_DEG],
        "detector_multiple": multiple,
        "members": len(members),
        "outputs": list(OUTPUTS),
        "training": {
            "command": recorded_commands(run_dir),
            "config": json.loads(config.model_dump_json()),
            "phantom_seeds": f"0..{config.phantoms - 1}",
            "exported_unix_s": time.time(),
        },
    }
    path = onnx_path.with_suffix(".json")
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
