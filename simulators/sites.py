"""Atom-column sites of a specimen, generated tile by tile.

A tile is a square of ``tile_nm`` in stage coordinates.  Its sites, their
defects and the amorphous contamination columns on it depend only on the
specimen seed and the tile index, so any field of view sees the same atoms
whatever order the tiles are generated in.

Each site carries a *state*: an index into the lattice's :class:`StateTable`
(perfect column, or one of its defect rules).  Knock-on damage advances a
state along its role's damage chain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulators.defects import DefectKind
from simulators.elements import column_label, z_weight
from simulators.features import contamination_cover, inside_holes
from simulators.lattices import LatticeSpec
from simulators.layout import SpecimenLayout

_DAMAGE_CHAINS: dict[str, tuple[DefectKind, ...]] = {
    "chalcogen": (DefectKind.NONE, DefectKind.CHALCOGEN_SINGLE_VACANCY, DefectKind.CHALCOGEN_DOUBLE_VACANCY),
    "metal": (DefectKind.NONE, DefectKind.METAL_VACANCY),
    "carbon": (DefectKind.NONE, DefectKind.CARBON_VACANCY),
    "A": (DefectKind.NONE, DefectKind.CATION_VACANCY),
    "oxygen": (DefectKind.NONE, DefectKind.OXYGEN_VACANCY),
}
_TILE_SALT = 0x5173
_INDEX_OFFSET = 1 << 24


@dataclass(frozen=True)
class StateTable:
    """All column states of a lattice, flattened over its basis sites.

    Attributes (all shape (n_states,))
    ----------------------------------
    site : int16, the basis index.  kind : uint8, the :class:`DefectKind`.
    weight : float64, Z-contrast weight.  species : str, content label.
    damage_next : int16, the state after one knock-on event (itself if none).
    first : int16 per basis site, the perfect state of that site.
    role : str per basis site.
    """

    site: np.ndarray
    kind: np.ndarray
    weight: np.ndarray
    species: np.ndarray
    damage_next: np.ndarray
    first: np.ndarray
    role: tuple[str, ...]

    @classmethod
    def of(cls, lattice: LatticeSpec) -> StateTable:
        """Build the table of ``lattice``."""
        site: list[int] = []
        kind: list[int] = []
        weight: list[float] = []
        species: list[str] = []
        first: list[int] = []
        nxt: list[int] = []
        for s, spec in enumerate(lattice.sites):
            first.append(len(site))
            options = [(DefectKind.NONE, spec.atoms)] + [(r.kind, r.atoms) for r in spec.defects]
            chain = _DAMAGE_CHAINS.get(spec.role, ())
            by_kind = {k: first[-1] + i for i, (k, _) in enumerate(options)}
            for i, (k, atoms) in enumerate(options):
                site.append(s)
                kind.append(int(k))
                weight.append(z_weight(atoms))
                species.append(column_label(atoms))
                pos = chain.index(k) if k in chain else -1
                after = chain[pos + 1] if 0 <= pos < len(chain) - 1 else None
                nxt.append(by_kind.get(after, first[-1] + i) if after is not None else first[-1] + i)
        return cls(
            np.array(site, np.int16),
            np.array(kind, np.uint8),
            np.array(weight),
            np.array(species),
            np.array(nxt, np.int16),
            np.array(first, np.int16),
            tuple(s.role for s in lattice.sites),
        )


@dataclass(frozen=True)
class SiteTile:
    """Sites and amorphous columns of one tile (stage coordinates, nm)."""

    x_nm: np.ndarray
    y_nm: np.ndarray
    state: np.ndarray
    knockon_u: np.ndarray
    thickness: np.ndarray
    amorphous_x_nm: np.ndarray
    amorphous_y_nm: np.ndarray
    amorphous_weight: np.ndarray

    @property
    def nbytes(self) -> int:
        """Memory held by the tile's arrays."""
        return sum(int(getattr(self, f).nbytes) for f in self.__dataclass_fields__)


def lattice_points(
    lattice: LatticeSpec, rotation_rad: float, origin_nm: np.ndarray, box: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All lattice columns with ``x0 <= x < x1`` and ``y0 <= y < y1``.

    Returns
    -------
    x_nm, y_nm : ndarray, float64
    site : ndarray, int16 basis index
    """
    x0, x1, y0, y1 = box
    c, s = np.cos(rotation_rad), np.sin(rotation_rad)
    rot = np.array([[c, -s], [s, c]])
    cell = rot @ np.array([lattice.a1_nm, lattice.a2_nm]).T  # columns: rotated a1, a2
    inv = np.linalg.inv(cell)
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - origin_nm
    frac = inv @ corners.T
    i_lo, j_lo = np.floor(frac.min(axis=1)).astype(int) - 1
    i_hi, j_hi = np.ceil(frac.max(axis=1)).astype(int) + 1
    ii, jj = np.meshgrid(np.arange(i_lo, i_hi + 1), np.arange(j_lo, j_hi + 1), indexing="ij")
    cells = np.column_stack([ii.ravel(), jj.ravel()]).astype(np.float64)
    basis = (rot @ lattice.basis_nm.T).T
    pts = (cells @ cell.T)[:, None, :] + basis[None, :, :] + origin_nm
    site = np.broadcast_to(np.arange(len(basis), dtype=np.int16), pts.shape[:2]).ravel()
    pts = pts.reshape(-1, 2)
    keep = (pts[:, 0] >= x0) & (pts[:, 0] < x1) & (pts[:, 1] >= y0) & (pts[:, 1] < y1)
    return pts[keep, 0], pts[keep, 1], site[keep]


def _draw_states(
    rng: np.random.Generator, lattice: LatticeSpec, table: StateTable, site: np.ndarray, defective: np.ndarray
) -> np.ndarray:
    state = table.first[site].astype(np.int16)
    u = rng.uniform(size=len(site))
    for s, spec in enumerate(lattice.sites):
        sel = np.flatnonzero(defective & (site == s))
        if not spec.defects or sel.size == 0:
            continue
        w = np.array([r.weight for r in spec.defects])
        rule = np.searchsorted(np.cumsum(w) / w.sum(), u[sel], side="right")
        state[sel] = table.first[s] + 1 + np.minimum(rule, len(w) - 1)
    return state


def generate_tile(
    seed: int,
    index: tuple[int, int],
    tile_nm: float,
    lattice: LatticeSpec,
    table: StateTable,
    rotation_rad: float,
    origin_nm: np.ndarray,
    layout: SpecimenLayout,
    amorphous_per_nm2: float,
    amorphous_weight: float,
) -> SiteTile:
    """Generate tile ``index`` = (ix, iy), covering ``[ix*t, (ix+1)*t) x [iy*t, (iy+1)*t)``."""
    ix, iy = index
    rng = np.random.default_rng([seed, _TILE_SALT, ix + _INDEX_OFFSET, iy + _INDEX_OFFSET])
    box = (ix * tile_nm, (ix + 1) * tile_nm, iy * tile_nm, (iy + 1) * tile_nm)
    x, y, site = lattice_points(lattice, rotation_rad, origin_nm, box)
    defective = rng.uniform(size=len(x)) < layout.hotspots.probability(x, y)
    state = _draw_states(rng, lattice, table, site, defective)
    knockon_u = rng.uniform(size=len(x)).astype(np.float32)
    keep = ~inside_holes(layout.holes, x, y)
    x, y, state, knockon_u = x[keep], y[keep], state[keep], knockon_u[keep]
    thickness = layout.thickness(x, y).astype(np.float32)

    ax, ay = np.empty(0), np.empty(0)
    if amorphous_per_nm2 > 0 and layout.contamination.near(*box, reach=1.6).size:
        n = int(rng.poisson(amorphous_per_nm2 * tile_nm * tile_nm))
        ax, ay = rng.uniform(box[0], box[1], n), rng.uniform(box[2], box[3], n)
        keep_a = rng.uniform(size=n) < contamination_cover(layout.contamination, ax, ay)
        keep_a &= ~inside_holes(layout.holes, ax, ay)
        ax, ay = ax[keep_a], ay[keep_a]
    aw = np.full(len(ax), amorphous_weight, dtype=np.float32)
    return SiteTile(x, y, state, knockon_u, thickness, ax, ay, aw)
