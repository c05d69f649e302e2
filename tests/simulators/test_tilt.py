"""Phantoms and tilt series: ground truth, projections, noise, the holder's range."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from simulators.phantom import PhantomConfig, make_phantom
from simulators.tilt import TiltImaging, project, record_projection, to_projected_density


def test_phantoms_are_seeded_and_labelled():
    a, b = make_phantom(PhantomConfig(seed=3, size_px=48)), make_phantom(PhantomConfig(seed=3, size_px=48))
    assert np.array_equal(a.volume, b.volume)
    assert not np.array_equal(a.volume, make_phantom(PhantomConfig(seed=4, size_px=48)).volume)
    labels = set(np.unique(a.labels).tolist())
    assert {0, 1, 3} <= labels  # vacuum, film, particle core
    assert a.volume[a.labels == 3].min() == 1.0 and a.volume[a.labels == 0].max() == 0.0
    n = 48
    z, x = np.ogrid[:n, :n]
    outside = (z - (n - 1) / 2) ** 2 + (x - (n - 1) / 2) ** 2 > (0.48 * n) ** 2
    assert not a.volume[:, :, :][np.broadcast_to(outside[:, None, :], (n, n, n))].any()  # inside the cylinder


def test_projection_at_zero_tilt_is_the_sum_along_the_beam():
    phantom = make_phantom(PhantomConfig(seed=1, size_px=32))
    assert np.allclose(project(phantom.volume, 0.0), phantom.volume.sum(axis=0), atol=1e-3)


def test_projection_mass_is_the_same_at_every_tilt():
    volume = make_phantom(PhantomConfig(seed=2, size_px=32, support_film=False)).volume
    masses = [project(volume, a).sum() for a in (-60.0, -20.0, 0.0, 35.0, 70.0)]
    assert np.allclose(masses, volume.sum(), rtol=0.02)


def test_noise_follows_the_dose_and_inverts_to_density():
    volume = make_phantom(PhantomConfig(seed=2, size_px=32)).volume
    rng = np.random.default_rng(0)
    errors = []
    for dose in (200.0, 20000.0):
        imaging = TiltImaging(dose_e_per_px=dose)
        counts, expected = record_projection(volume, 10.0, imaging, rng)
        assert np.allclose(counts.mean(), expected.mean(), rtol=0.05)
        errors.append(float(np.abs(to_projected_density(counts, imaging) - project(volume, 10.0)).mean()))
    assert errors[1] < errors[0] / 5  # 100x the dose, about 10x less noise


def test_tilts_outside_the_holder_range_are_refused():
    with pytest.raises(ValueError, match="outside the reachable"):
        record_projection(np.zeros((16, 16, 16), np.float32), 75.0, TiltImaging(), np.random.default_rng(0))


@pytest.mark.parametrize("bad", [{"radius_fraction": (0.3, 0.2)}, {"voids": (3, 1)}, {"size_px": 8}])
def test_bad_phantom_parameters_are_named(bad):
    with pytest.raises(ValidationError, match=next(iter(bad))):
        PhantomConfig(**bad)


def test_a_volume_whose_slabs_are_not_square_is_refused():
    import pytest

    from simulators.tilt import project

    for shape in ((32, 8, 48), (48, 1, 32), (32, 32)):
        with pytest.raises(ValueError, match="z as deep as x is wide"):
            project(np.ones(shape, np.float32), 0.0)


@pytest.mark.parametrize("size_px", [48, 96])
def test_particles_lie_within_the_cylinder_every_projection_sees(size_px):
    """A particle reaching past it would be cut flat: a face no real specimen has."""
    for seed in range(12):
        phantom = make_phantom(PhantomConfig(seed=seed, size_px=size_px))
        z, _, x = np.nonzero(phantom.labels >= 2)  # shell, core, voids
        centre = (size_px - 1) / 2.0
        assert z.size and np.hypot(z - centre, x - centre).max() <= 0.46 * size_px, seed
