"""3-D phantoms for electron tomography: faceted nanoparticles with voids, a shell and a support film.

Volumes are float32 arrays indexed ``(z, y, x)``: ``z`` along the beam at zero tilt, ``y`` along the
tilt axis, ``x`` across it.  Every voxel outside the cylinder inscribed in the ``(z, x)`` square is
zero, so projections at any tilt see the whole object (and the reconstruction circle holds it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class PhantomConfig(BaseModel):
    """Parameters of a random nanoparticle phantom (all lengths in voxels unless named otherwise)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    seed: int = Field(0, ge=0)
    size_px: int = Field(128, ge=16, le=512, description="Edge of the cubic volume.")
    facets: int = Field(14, ge=4, le=64, description="Half-space pairs cutting the particle.")
    radius_fraction: tuple[float, float] = Field((0.22, 0.32), description="Particle radius range / size.")
    elongation: tuple[float, float] = Field((0.7, 1.4), description="Range of the per-axis stretch.")
    core_shell: bool = True
    shell_density: float = Field(0.6, gt=0.0, le=10.0, description="Shell density relative to the core (1).")
    voids: tuple[int, int] = Field((0, 3), description="Range of the number of spherical voids.")
    support_film: bool = True
    film_density: float = Field(0.08, ge=0.0, le=1.0)
    film_thickness_px: float = Field(3.0, gt=0.0)
    particles: tuple[int, int] = Field((1, 3), description="Range of the number of particles.")

    @model_validator(mode="after")
    def _ranges(self) -> PhantomConfig:
        for name in ("radius_fraction", "elongation", "voids", "particles"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be a (low, high) range with 0 <= low <= high, got {(low, high)}")
        if self.radius_fraction[1] > 0.45:
            raise ValueError(f"radius_fraction high end must be <= 0.45 (got {self.radius_fraction[1]})")
        return self


@dataclass(frozen=True)
class Phantom:
    """A volume and what it is made of.

    Attributes
    ----------
    volume : (n, n, n) float32, density (the core of a particle is 1).
    labels : (n, n, n) uint8: 0 vacuum, 1 film, 2 shell, 3 core, 4 void inside a particle.
    config : the parameters it was drawn from.
    """

    volume: np.ndarray
    labels: np.ndarray
    config: PhantomConfig


def _polyhedron(
    z: np.ndarray, y: np.ndarray, x: np.ndarray, centre: np.ndarray, radius: float, rng: np.random.Generator,
    facets: int, stretch: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Voxels inside the intersection of ``facets`` random slabs |n . r| <= d around ``centre``."""
    return _Facets(rng, facets).inside(z, y, x, centre, radius, stretch)


class _Facets:
    """The random facets of one polyhedron (drawn once, so it can be sized again without new draws)."""

    def __init__(self, rng: np.random.Generator, facets: int) -> None:
        self.normals = rng.normal(size=(facets, 3))
        self.normals /= np.linalg.norm(self.normals, axis=1, keepdims=True)
        self.depth = rng.uniform(0.85, 1.0, facets)

    def inside(
        self, z: np.ndarray, y: np.ndarray, x: np.ndarray, centre: np.ndarray, radius: float, stretch: np.ndarray
    ) -> np.ndarray:
        """Voxels inside the slabs |n . r| <= depth * radius around ``centre`` (r divided by ``stretch``)."""
        rz, ry, rx = (z - centre[0]) / stretch[0], (y - centre[1]) / stretch[1], (x - centre[2]) / stretch[2]
        inside = np.ones(np.broadcast_shapes(rz.shape, ry.shape, rx.shape), dtype=bool)
        for n, d in zip(self.normals, self.depth * radius, strict=True):
            inside &= np.abs(n[0] * rz + n[1] * ry + n[2] * rx) <= d
        return inside


#: Particles lie within this fraction of the edge from the tilt axis (the support film's cylinder is 0.48).
_REACH_FRACTION = 0.46


def _within(particle: np.ndarray, z: np.ndarray, x: np.ndarray, centre: float, reach: float) -> bool:
    """True if no voxel of ``particle`` lies farther than ``reach`` from the tilt axis (in the z-x plane)."""
    far = (z - centre) ** 2 + (x - centre) ** 2 > reach**2
    return not bool(np.any(particle & far))


def _particle_in_reach(
    facets: _Facets, grid: tuple[np.ndarray, np.ndarray, np.ndarray], middle: np.ndarray, radius: float,
    stretch: np.ndarray, film_z: float,
) -> tuple[np.ndarray, np.ndarray, float]:  # fmt: skip
    """The particle, made smaller (still resting on the film) until it lies wholly within the reach.

    Returns the particle's voxels, and its centre and radius after shrinking.

    A particle reaching past the cylinder every projection sees would be cut flat by it; shrinking it
    draws nothing new, so phantoms that fit are unchanged.
    """
    z, y, x = grid
    n = z.shape[0]
    centre, reach = (n - 1) / 2.0, _REACH_FRACTION * n
    for _ in range(12):
        particle = facets.inside(z, y, x, middle, radius, stretch)
        if _within(particle, z, x, centre, reach):
            break
        radius *= 0.9
        middle = np.array([film_z - radius * stretch[0] - 1, middle[1], 0.9 * middle[2] + 0.1 * centre])
    inside = np.broadcast_to(particle, (n, n, n)) & ((z - centre) ** 2 + (x - centre) ** 2 <= reach**2)
    return inside, middle, radius


def make_phantom(config: PhantomConfig | None = None) -> Phantom:
    """Draw a phantom: 1-3 faceted particles (core-shell, with voids) on a thin support film."""
    c = config or PhantomConfig()
    rng = np.random.default_rng([c.seed, 0x70])
    n = c.size_px
    z, y, x = np.ogrid[:n, :n, :n]
    z, y, x = z.astype(np.float32), y.astype(np.float32), x.astype(np.float32)
    centre = (n - 1) / 2.0
    cylinder = np.broadcast_to((z - centre) ** 2 + (x - centre) ** 2 <= (0.48 * n) ** 2, (n, n, n))
    labels = np.zeros((n, n, n), dtype=np.uint8)
    film_z = centre + rng.uniform(0.12, 0.2) * n  # the particles rest on the film
    if c.support_film:
        labels[np.broadcast_to(np.abs(z - film_z) <= c.film_thickness_px / 2, (n, n, n)) & cylinder] = 1
    for _ in range(int(rng.integers(c.particles[0], c.particles[1] + 1))):
        radius = float(rng.uniform(*c.radius_fraction)) * n
        stretch = rng.uniform(*c.elongation, 3)
        limit = 0.46 * n - radius * stretch.max()
        offset = rng.uniform(-1, 1, 3) * max(limit, 0.0) * np.array([0.3, 0.8, 0.8])
        middle = np.array([film_z - radius * stretch[0] - 1, centre, centre]) + offset * np.array([0.0, 1, 1])
        particle, middle, radius = _particle_in_reach(
            _Facets(rng, c.facets), (z, y, x), middle, radius, stretch, film_z
        )
        labels[particle] = 3
        if c.core_shell:
            shell = particle & ~_polyhedron(z, y, x, middle, 0.7 * radius, rng, c.facets, stretch)
            labels[shell] = 2
        for _ in range(int(rng.integers(c.voids[0], c.voids[1] + 1))):
            v_centre = middle + rng.normal(0, 0.3 * radius, 3)
            v_radius = rng.uniform(0.1, 0.25) * radius
            ball = (z - v_centre[0]) ** 2 + (y - v_centre[1]) ** 2 + (x - v_centre[2]) ** 2 <= v_radius**2
            void = np.broadcast_to(ball, (n, n, n)) & particle
            labels[void] = 4
    density = np.array([0.0, c.film_density, c.shell_density, 1.0, 0.0], dtype=np.float32)
    return Phantom(density[labels], labels, c)
