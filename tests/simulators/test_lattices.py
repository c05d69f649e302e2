"""Lattice geometry and Z-contrast weights against textbook values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulators import LATTICES, Specimen, SpecimenConfig, get_lattice
from simulators.elements import z_weight


@pytest.mark.parametrize(
    ("name", "nn_nm"),
    [("MoS2", 0.316 / math.sqrt(3)), ("WS2", 0.3153 / math.sqrt(3)), ("graphene", 0.142), ("SrTiO3", 0.3905 / 2)],
)
def test_nearest_neighbour_spacing(name, nn_nm):
    assert get_lattice(name).nn_spacing_nm == pytest.approx(nn_nm, rel=0.01)


def test_z_contrast_orders_columns_as_haadf_does():
    assert z_weight(["W"]) > z_weight(["Mo"]) > z_weight(["S", "S"]) > z_weight(["S"]) > z_weight(["C"])
    assert z_weight([]) == 0.0
    assert z_weight(["Mo"]) / z_weight(["S"]) == pytest.approx((42 / 16) ** 1.7)


@pytest.mark.parametrize("name", sorted(LATTICES))
def test_generated_columns_have_the_lattice_density_and_spacing(name):
    lattice = get_lattice(name)
    specimen = Specimen(SpecimenConfig(seed=0, lattice=name, width_nm=40, height_nm=40, hole_density_per_um2=0))
    cols = specimen.columns_in_box((-5.0, 5.0, -5.0, 5.0))
    expected = 100.0 * len(lattice.sites) / lattice.cell_area_nm2
    assert len(cols.x_nm) == pytest.approx(expected, rel=0.03)
    pts = np.column_stack([cols.x_nm, cols.y_nm])
    centre = pts[np.linalg.norm(pts, axis=1) < 3]
    d = np.linalg.norm(centre[:, None, :] - pts[None, :, :], axis=-1)
    d[d < 1e-9] = np.inf
    np.testing.assert_allclose(d.min(axis=1), lattice.nn_spacing_nm, rtol=1e-6)


@pytest.mark.parametrize("rotation_deg", [0.0, 17.0, -41.0])
def test_lattice_rotation_is_applied(rotation_deg):
    specimen = Specimen(
        SpecimenConfig(seed=0, rotation_deg=rotation_deg, width_nm=40, height_nm=40, hole_density_per_um2=0)
    )
    cols = specimen.columns_in_box((-2.0, 2.0, -2.0, 2.0))
    mo = np.column_stack([cols.x_nm, cols.y_nm])[cols.species == "Mo"]
    d = mo[None, :, :] - mo[:, None, :]
    length = np.linalg.norm(d, axis=-1)
    pairs = d[np.abs(length - 0.316) < 1e-6]  # Mo-Mo vectors are lattice vectors (hexagonal: 60 deg apart)
    assert len(pairs) > 20
    angles = np.rad2deg(np.arctan2(pairs[:, 1], pairs[:, 0]))
    off = (angles - rotation_deg + 30.0) % 60.0 - 30.0  # circular difference modulo 60 deg
    np.testing.assert_allclose(off, 0.0, atol=1e-6)
