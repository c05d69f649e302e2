"""Defect kinds and the per-pixel class scheme of the ground truth.

Two vocabularies, kept apart on purpose:

* ``DefectKind`` is the fine-grained physical label of a site (which atoms are
  missing or substituted).  It is what a microscopist counts.
* ``ColumnClass`` is the coarse label painted into the per-pixel class mask,
  the target of the segmentation networks: background, a regular atom column,
  a vacancy site, a substitutional dopant.
"""

from __future__ import annotations

from enum import IntEnum


class DefectKind(IntEnum):
    """Physical defect kind of a lattice site (``NONE`` for a perfect site)."""

    NONE = 0
    METAL_VACANCY = 1
    CHALCOGEN_SINGLE_VACANCY = 2
    CHALCOGEN_DOUBLE_VACANCY = 3
    CARBON_VACANCY = 4
    CATION_VACANCY = 5
    OXYGEN_VACANCY = 6
    DOPANT_HEAVY = 7
    DOPANT_LIGHT = 8

    @property
    def label(self) -> str:
        """Lower-case name used in files and reports."""
        return self.name.lower()

    @property
    def column_class(self) -> ColumnClass:
        """The coarse mask class this kind is painted with."""
        if self is DefectKind.NONE:
            return ColumnClass.ATOM
        if self in (DefectKind.DOPANT_HEAVY, DefectKind.DOPANT_LIGHT):
            return ColumnClass.DOPANT
        return ColumnClass.VACANCY


class ColumnClass(IntEnum):
    """Coarse per-pixel classes of the ground-truth class mask."""

    BACKGROUND = 0
    ATOM = 1
    VACANCY = 2
    DOPANT = 3


class Region(IntEnum):
    """Per-pixel region labels: where the film is, and what is not crystal."""

    FILM = 0
    HOLE = 1
    CONTAMINATION = 2


#: Class names in mask order, for manifests and reports.
CLASS_NAMES: tuple[str, ...] = tuple(c.name.lower() for c in ColumnClass)
#: Defect-kind labels in code order.
DEFECT_LABELS: tuple[str, ...] = tuple(k.label for k in DefectKind)
