"""A specimen much larger than one field of view, built lazily and deterministically.

The layout (holes, contamination, thickness, hot spots) is drawn once from the
seed; atom columns are generated per tile on demand and kept in a bounded LRU
cache, so memory stays small however large the specimen or long the session.
The specimen also keeps the dose it received, which drives knock-on damage.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from simulators.config import SpecimenConfig
from simulators.defects import DefectKind
from simulators.dose import DoseMap
from simulators.elements import z_weight
from simulators.features import contamination_cover, inside_holes
from simulators.lattices import LatticeSpec, get_lattice
from simulators.layout import SpecimenLayout, draw_layout
from simulators.sites import SiteTile, StateTable, generate_tile

_LAYOUT_SALT = 0x1A7


@dataclass(frozen=True)
class Columns:
    """Atom columns in a region, after knock-on damage (all shape (n,)).

    Attributes
    ----------
    x_nm, y_nm : float64 stage coordinates.
    weight : float64, Z-contrast weight times the local relative thickness.
    kind : uint8 :class:`DefectKind`.  species : str content label.
    damaged : bool, the state was changed by knock-on damage.
    """

    x_nm: np.ndarray
    y_nm: np.ndarray
    weight: np.ndarray
    kind: np.ndarray
    species: np.ndarray
    damaged: np.ndarray


class Specimen:
    """A seeded specimen; see :class:`SpecimenConfig` for its parameters.

    Parameters
    ----------
    config
        Validated specimen parameters.
    """

    def __init__(self, config: SpecimenConfig | None = None) -> None:
        self.config = config or SpecimenConfig()
        self.lattice: LatticeSpec = get_lattice(self.config.lattice)
        self.table = StateTable.of(self.lattice)
        rng = np.random.default_rng([self.config.seed, _LAYOUT_SALT])
        rot = self.config.rotation_deg
        self.rotation_deg = float(rng.uniform(-180, 180)) if rot is None else float(rot)
        self._origin_nm = rng.uniform(0, 1, 2) @ np.array([self.lattice.a1_nm, self.lattice.a2_nm])
        self.layout: SpecimenLayout = draw_layout(self.config, rng)
        self.dose = DoseMap(self.layout.bounds_nm)
        self._tiles: OrderedDict[tuple[int, int], SiteTile] = OrderedDict()
        self.amorphous_weight = self.config.contamination_atoms_per_column * z_weight(("C",))
        self._sigma = np.array([self.config.knockon_cross_section_a2.get(r, 0.0) for r in self.table.role])

    @property
    def bounds_nm(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) of the specimen, nm."""
        return self.layout.bounds_nm

    def check_position(self, x_nm: float, y_nm: float) -> None:
        """Raise ``ValueError`` naming the coordinate if (x_nm, y_nm) is off the specimen."""
        x0, x1, y0, y1 = self.bounds_nm
        for name, v, lo, hi in (("x_nm", x_nm, x0, x1), ("y_nm", y_nm, y0, y1)):
            if not (np.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"{name} must lie on the specimen, in [{lo:g}, {hi:g}] nm (got {v})")

    # -- fields ---------------------------------------------------------------------------------
    def defect_probability(self, x_nm: np.ndarray, y_nm: np.ndarray) -> np.ndarray:
        """Per-site defect probability at points (the specified density map)."""
        return self.layout.hotspots.probability(x_nm, y_nm)

    def in_hole(self, x_nm: np.ndarray, y_nm: np.ndarray) -> np.ndarray:
        """True where points fall into a hole."""
        return inside_holes(self.layout.holes, np.asarray(x_nm), np.asarray(y_nm))

    def contamination(self, x_nm: np.ndarray, y_nm: np.ndarray) -> np.ndarray:
        """Contamination cover in [0, 1] at points."""
        return contamination_cover(self.layout.contamination, np.asarray(x_nm), np.asarray(y_nm))

    def thickness(self, x_nm: np.ndarray, y_nm: np.ndarray) -> np.ndarray:
        """Relative thickness at points."""
        return self.layout.thickness(x_nm, y_nm)

    @property
    def site_density_per_nm2(self) -> float:
        """Columns per nm^2 of film."""
        return len(self.lattice.sites) / self.lattice.cell_area_nm2

    # -- atoms ----------------------------------------------------------------------------------
    def _tile(self, index: tuple[int, int]) -> SiteTile:
        tile = self._tiles.get(index)
        if tile is None:
            tile = generate_tile(
                self.config.seed,
                index,
                self.config.tile_nm,
                self.lattice,
                self.table,
                np.deg2rad(self.rotation_deg),
                self._origin_nm,
                self.layout,
                self.config.contamination_columns_per_nm2,
                self.amorphous_weight,
            )
            self._tiles[index] = tile
            while len(self._tiles) > self.config.cache_tiles:
                self._tiles.popitem(last=False)
        else:
            self._tiles.move_to_end(index)
        return tile

    def _tiles_in(self, box: tuple[float, float, float, float]) -> list[SiteTile]:
        x0, x1, y0, y1 = box
        bx0, bx1, by0, by1 = self.bounds_nm
        x0, x1, y0, y1 = max(x0, bx0), min(x1, bx1), max(y0, by0), min(y1, by1)
        if x0 >= x1 or y0 >= y1:
            return []
        t = self.config.tile_nm
        ixs = range(int(np.floor(x0 / t)), int(np.floor(x1 / t)) + 1)
        iys = range(int(np.floor(y0 / t)), int(np.floor(y1 / t)) + 1)
        return [self._tile((ix, iy)) for iy in iys for ix in ixs]

    def _in_box(self, x: np.ndarray, y: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        x0, x1, y0, y1 = box
        bx0, bx1, by0, by1 = self.bounds_nm
        return (x >= max(x0, bx0)) & (x <= min(x1, bx1)) & (y >= max(y0, by0)) & (y <= min(y1, by1))

    def columns_in_box(self, box: tuple[float, float, float, float]) -> Columns:
        """Lattice columns inside ``box`` = (x0, x1, y0, y1) nm, knock-on damage applied."""
        tiles = self._tiles_in(box)
        if not tiles:
            e = np.empty(0)
            return Columns(e, e, e, e.astype(np.uint8), e.astype(str), e.astype(bool))
        x = np.concatenate([t.x_nm for t in tiles])
        y = np.concatenate([t.y_nm for t in tiles])
        keep = self._in_box(x, y, box)
        x, y = x[keep], y[keep]
        state = np.concatenate([t.state for t in tiles])[keep]
        u = np.concatenate([t.knockon_u for t in tiles])[keep]
        thick = np.concatenate([t.thickness for t in tiles])[keep]
        new_state = self._damage(state, u, x, y)
        return Columns(
            x,
            y,
            self.table.weight[new_state] * thick,
            self.table.kind[new_state],
            self.table.species[new_state],
            new_state != state,
        )

    def _damage(self, state: np.ndarray, u: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Advance states by the number of knock-on events their dose implies.

        With ``lam = sigma * D`` the events are Poisson: a site has at least one
        when ``u < 1 - exp(-lam)`` and at least two when ``u < 1 - exp(-lam) (1 + lam)``.
        """
        if not self.dose.total_e_per_a2_nm2:
            return state
        lam = self._sigma[self.table.site[state]] * self.dose.at(x, y)
        one = u < -np.expm1(-lam)
        two = u < 1.0 - np.exp(-lam) * (1.0 + lam)
        out = np.where(one, self.table.damage_next[state], state)
        return np.where(two, self.table.damage_next[out], out)

    def amorphous_in_box(self, box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Amorphous contamination columns in ``box``: x_nm, y_nm, weight."""
        tiles = self._tiles_in(box)
        if not tiles:
            e = np.empty(0)
            return e, e, e
        x = np.concatenate([t.amorphous_x_nm for t in tiles])
        y = np.concatenate([t.amorphous_y_nm for t in tiles])
        w = np.concatenate([t.amorphous_weight for t in tiles])
        keep = self._in_box(x, y, box)
        return x[keep], y[keep], w[keep].astype(np.float64)

    @property
    def cached_tiles(self) -> int:
        """Number of tiles held in the cache."""
        return len(self._tiles)

    @property
    def cached_bytes(self) -> int:
        """Memory held by cached tiles."""
        return sum(t.nbytes for t in self._tiles.values())

    def defect_kind_names(self, kind: np.ndarray) -> list[str]:
        """Labels of defect-kind codes."""
        return [DefectKind(int(k)).label for k in kind]
