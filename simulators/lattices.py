"""Projected crystal lattices: unit cells, atom columns and their defect rules.

Each lattice is a 2-D Bravais lattice (vectors in nm) with a basis of atom
columns as seen along the beam.  Every basis site lists the defects it can
carry, with relative weights and the column content after the defect, so the
specimen can draw defects without knowing any chemistry.

Lattice constants (in-plane, nm): MoS2 0.316, WS2 0.315, graphene 0.246,
SrTiO3 0.3905 (cubic, viewed along [001]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulators.defects import DefectKind
from simulators.elements import z_weight


@dataclass(frozen=True)
class DefectRule:
    """One way a site can be defective.

    Attributes
    ----------
    kind
        The defect kind written into the ground truth.
    weight
        Relative probability among the site's rules (need not sum to 1).
    atoms
        Column content after the defect; empty for a fully vacant column.
    """

    kind: DefectKind
    weight: float
    atoms: tuple[str, ...]


@dataclass(frozen=True)
class SiteSpec:
    """An atom column of the basis.

    Attributes
    ----------
    role
        Chemical role (``"metal"``, ``"chalcogen"``, ``"carbon"``, ``"A"``,
        ``"B"``, ``"oxygen"``); knock-on cross-sections are keyed by it.
    frac
        Fractional coordinates (f1, f2) in the cell spanned by (a1, a2).
    atoms
        Element symbols stacked in the perfect column.
    defects
        The defect rules of this site.
    """

    role: str
    frac: tuple[float, float]
    atoms: tuple[str, ...]
    defects: tuple[DefectRule, ...]

    @property
    def weight(self) -> float:
        """Z-contrast weight of the perfect column."""
        return z_weight(self.atoms)


@dataclass(frozen=True)
class LatticeSpec:
    """A projected lattice: Bravais vectors (nm) and a basis of columns."""

    name: str
    a1_nm: tuple[float, float]
    a2_nm: tuple[float, float]
    sites: tuple[SiteSpec, ...]

    @property
    def cell_area_nm2(self) -> float:
        """Area of the unit cell in nm^2."""
        return abs(self.a1_nm[0] * self.a2_nm[1] - self.a1_nm[1] * self.a2_nm[0])

    @property
    def basis_nm(self) -> np.ndarray:
        """Cartesian basis positions, shape (n_sites, 2), float64, nm."""
        a = np.array([self.a1_nm, self.a2_nm])
        return np.array([s.frac for s in self.sites]) @ a

    @property
    def nn_spacing_nm(self) -> float:
        """Nearest-neighbour distance between any two columns, nm."""
        a = np.array([self.a1_nm, self.a2_nm])
        shifts = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)]) @ a
        basis = self.basis_nm
        pts = (basis[None, :, :] + shifts[:, None, :]).reshape(-1, 2)
        d = np.linalg.norm(basis[:, None, :] - pts[None, :, :], axis=-1)
        return float(d[d > 1e-9].min())

    @property
    def weight_density_per_nm2(self) -> float:
        """Mean Z-contrast weight per nm^2 of perfect crystal (low-mag contrast)."""
        return sum(s.weight for s in self.sites) / self.cell_area_nm2


def _hexagonal(a: float) -> tuple[tuple[float, float], tuple[float, float]]:
    return (a, 0.0), (a / 2.0, a * math.sqrt(3.0) / 2.0)


def _tmd(name: str, a: float, metal: str, light_metal: str | None, heavy_metal: str | None) -> LatticeSpec:
    metal_rules = [DefectRule(DefectKind.METAL_VACANCY, 0.15, ())]
    if heavy_metal:
        metal_rules.append(DefectRule(DefectKind.DOPANT_HEAVY, 0.25, (heavy_metal,)))
    if light_metal:
        metal_rules.append(DefectRule(DefectKind.DOPANT_LIGHT, 0.25, (light_metal,)))
    chalcogen_rules = (
        DefectRule(DefectKind.CHALCOGEN_SINGLE_VACANCY, 1.0, ("S",)),
        DefectRule(DefectKind.CHALCOGEN_DOUBLE_VACANCY, 0.3, ()),
        DefectRule(DefectKind.DOPANT_HEAVY, 0.15, ("S", "Se")),
    )
    a1, a2 = _hexagonal(a)
    return LatticeSpec(
        name=name,
        a1_nm=a1,
        a2_nm=a2,
        sites=(
            SiteSpec("metal", (0.0, 0.0), (metal,), tuple(metal_rules)),
            SiteSpec("chalcogen", (1 / 3, 1 / 3), ("S", "S"), chalcogen_rules),
        ),
    )


def _graphene() -> LatticeSpec:
    rules = (
        DefectRule(DefectKind.CARBON_VACANCY, 1.0, ()),
        DefectRule(DefectKind.DOPANT_HEAVY, 0.5, ("Si",)),
        DefectRule(DefectKind.DOPANT_LIGHT, 0.2, ("B",)),
    )
    a1, a2 = _hexagonal(0.246)
    return LatticeSpec(
        name="graphene",
        a1_nm=a1,
        a2_nm=a2,
        sites=(
            SiteSpec("carbon", (0.0, 0.0), ("C",), rules),
            SiteSpec("carbon", (1 / 3, 1 / 3), ("C",), rules),
        ),
    )


def _srtio3() -> LatticeSpec:
    # Columns along [001] of one unit-cell slab; thickness scales all weights.
    a = 0.3905
    a_site = (
        DefectRule(DefectKind.CATION_VACANCY, 0.3, ()),
        DefectRule(DefectKind.DOPANT_HEAVY, 0.5, ("La",)),
        DefectRule(DefectKind.DOPANT_LIGHT, 0.4, ("Ca",)),
    )
    b_site = (DefectRule(DefectKind.DOPANT_HEAVY, 0.4, ("Nb", "O")),)
    o_site = (DefectRule(DefectKind.OXYGEN_VACANCY, 1.0, ()),)
    return LatticeSpec(
        name="SrTiO3",
        a1_nm=(a, 0.0),
        a2_nm=(0.0, a),
        sites=(
            SiteSpec("A", (0.0, 0.0), ("Sr",), a_site),
            SiteSpec("B", (0.5, 0.5), ("Ti", "O"), b_site),
            SiteSpec("oxygen", (0.5, 0.0), ("O",), o_site),
            SiteSpec("oxygen", (0.0, 0.5), ("O",), o_site),
        ),
    )


LATTICES: dict[str, LatticeSpec] = {
    "MoS2": _tmd("MoS2", 0.316, "Mo", light_metal="V", heavy_metal="W"),
    "WS2": _tmd("WS2", 0.3153, "W", light_metal="Mo", heavy_metal=None),
    "graphene": _graphene(),
    "SrTiO3": _srtio3(),
}


def get_lattice(name: str) -> LatticeSpec:
    """Return the lattice called ``name``.

    Raises
    ------
    ValueError
        If the name is unknown; the message lists the valid names.
    """
    try:
        return LATTICES[name]
    except KeyError:
        raise ValueError(f"lattice must be one of {sorted(LATTICES)} (got {name!r})") from None
