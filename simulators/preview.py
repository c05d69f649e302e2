"""A PNG preview of a simulated frame: the image beside its ground-truth overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulators.defects import ColumnClass, Region
from simulators.truth import SimulatedFrame

_CLASS_STYLE = {
    ColumnClass.ATOM: ("#35b7ff", "o", 4, "atom column"),
    ColumnClass.VACANCY: ("#ff3030", "s", 30, "vacancy"),
    ColumnClass.DOPANT: ("#ffd000", "^", 30, "dopant"),
}


def _display_range(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def save_preview(frame: SimulatedFrame, path: str | Path, dpi: int = 110) -> None:
    """Write a two-panel PNG: the noisy image, and the image with the planted truth.

    Atom columns are dots coloured by class (vacancies and dopants drawn larger);
    holes and contamination are outlined.  Low-magnification frames show the
    ground-truth defect density instead of columns.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmin, vmax = _display_range(frame.image)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6), constrained_layout=True)
    for ax in axes:
        ax.imshow(frame.image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    s = frame.scan
    axes[0].set_title(f"{frame.lattice}  fov {s.fov_nm:g} nm  {s.rows}x{s.cols} px  {frame.dose_e_per_a2:.3g} e/A^2")
    ax = axes[1]
    truth = frame.truth
    region = truth.region_mask
    for value, colour, label in ((Region.HOLE, "#00e0a0", "hole"), (Region.CONTAMINATION, "#ff70ff", "contamination")):
        if (region == value).any():
            ax.contour(region == value, levels=[0.5], colors=[colour], linewidths=1.0)
            ax.plot([], [], color=colour, label=label)
    if truth.atoms_resolved:
        cols = truth.columns
        for cls, (colour, marker, size, label) in _CLASS_STYLE.items():
            sel = cols.class_id == cls
            if sel.any():
                ax.scatter(
                    cols.col[sel],
                    cols.row[sel],
                    s=size,
                    c=colour,
                    marker=marker,
                    label=label,
                    edgecolors="none" if cls == ColumnClass.ATOM else "black",
                    linewidths=0.5,
                )
        ax.set_title(f"ground truth: {len(cols)} columns, {len(cols.defects())} defects")
    else:
        density = truth.defect_density_per_nm2
        im = ax.imshow(density, cmap="magma", alpha=0.55)
        fig.colorbar(im, ax=ax, shrink=0.8, label="expected defects per nm^2")
        ax.set_title("ground truth: defect density (atoms unresolved)")
    ax.legend(loc="lower right", fontsize=7, framealpha=0.7)
    fig.savefig(Path(path), dpi=dpi)
    plt.close(fig)
