"""Overlay PNG of a segmentation: image, atoms by class with defects marked, uncertainty map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.localize import Atoms
from models.manifest import ModelManifest
from models.preprocess import resample
from models.segmenter import Segmentation

_COLOURS = ("#35b7ff", "#ff3030", "#ffd000", "#a0ff60", "#ff70ff")


def save_overlay(image: np.ndarray, seg: Segmentation, atoms: Atoms, manifest: ModelManifest, path: Path) -> None:
    """Write a three-panel PNG: image, atoms coloured by class, mutual-information map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5])
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6), constrained_layout=True)
    for ax in axes[:2]:
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    axes[0].set_title(f"{img.shape[0]}x{img.shape[1]} px at {seg.pixel_size_nm:.4g} nm/px")
    for k, info in enumerate(manifest.classes):
        if k == 0:
            continue
        sel = atoms.class_id == k
        if sel.any():
            axes[1].scatter(
                atoms.col[sel],
                atoms.row[sel],
                s=30 if info.defect else 5,
                marker="s" if info.defect else "o",
                c=_COLOURS[(k - 1) % len(_COLOURS)],
                edgecolors="black" if info.defect else "none",
                linewidths=0.5,
                label=f"{info.name} ({int(sel.sum())})",
            )
    if len(atoms):  # (no columns, no legend: matplotlib would warn of an empty one)
        axes[1].legend(loc="lower right", fontsize=7, framealpha=0.7)
    flags = seg.input_check.flags if seg.input_check is not None else ()
    axes[1].set_title(f"{len(atoms)} columns, OOD score {seg.ood_score:.2f}" + "".join(f", {f}" for f in flags))
    mi = resample(seg.mutual_info, img.shape)
    shown = axes[2].imshow(mi, cmap="inferno")
    fig.colorbar(shown, ax=axes[2], shrink=0.8, label="mutual information (nats)")
    axes[2].set_title("epistemic uncertainty")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, dpi=100, format="png")  # (whatever the name says)
    plt.close(fig)
