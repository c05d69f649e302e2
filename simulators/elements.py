"""Atomic numbers and the HAADF Z-contrast weight of a column.

HAADF (Z-contrast) intensity of an atom scales roughly as ``Z**1.7``
(Rutherford-like scattering screened by the electron cloud; the exponent lies
between 1.6 and 2 depending on the detector's inner angle).  A column's weight
is the sum over the atoms stacked in it.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Exponent of the Z-contrast power law.
Z_EXPONENT = 1.7

ATOMIC_NUMBER: dict[str, int] = {
    "B": 5,
    "C": 6,
    "N": 7,
    "O": 8,
    "Si": 14,
    "S": 16,
    "Ca": 20,
    "Ti": 22,
    "V": 23,
    "Se": 34,
    "Sr": 38,
    "Nb": 41,
    "Mo": 42,
    "La": 57,
    "W": 74,
}


def z_weight(atoms: Iterable[str], exponent: float = Z_EXPONENT) -> float:
    """Return the Z-contrast weight ``sum_i Z_i**exponent`` of a column.

    Parameters
    ----------
    atoms
        Element symbols of the atoms stacked in the column (may be empty).
    exponent
        Power-law exponent; 1.7 by default.

    Returns
    -------
    float
        The dimensionless column weight (0.0 for an empty column).

    Raises
    ------
    KeyError
        If an element symbol is unknown.
    """
    return float(sum(ATOMIC_NUMBER[a] ** exponent for a in atoms))


def column_label(atoms: Iterable[str]) -> str:
    """Return a compact label for a column's content, e.g. ``"S2"`` or ``"S+Se"``."""
    atoms = tuple(atoms)
    if not atoms:
        return "vacancy"
    if all(a == atoms[0] for a in atoms):
        return atoms[0] if len(atoms) == 1 else f"{atoms[0]}{len(atoms)}"
    return "+".join(atoms)
