"""Drawing a specimen's mesoscale layout: holes, contamination, thickness, hot spots.

Hot spots are the reason the agent's choice of where to look matters.  A
fraction ``feature_correlation`` of them is anchored on something visible at
low magnification (a hole edge, a contamination patch edge, or a thick area),
the rest lie uniformly at random; 0 makes the survey useless for finding
defects, 1 makes it a perfect guide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulators.config import SpecimenConfig
from simulators.features import HotSpots, ThicknessMap, WobblyDiscs, inside_holes


@dataclass(frozen=True)
class SpecimenLayout:
    """The mesoscale features of one specimen (all drawn from its seed)."""

    bounds_nm: tuple[float, float, float, float]
    holes: WobblyDiscs
    contamination: WobblyDiscs
    thickness: ThicknessMap
    hotspots: HotSpots


def _count(rng: np.random.Generator, per_um2: float, area_nm2: float) -> int:
    return int(rng.poisson(per_um2 * area_nm2 * 1e-6))


def _thick_point(
    rng: np.random.Generator, thickness: ThicknessMap, bounds: tuple[float, float, float, float]
) -> np.ndarray:
    # The thickest of a few random candidates: a point on a visible thick area.
    x0, x1, y0, y1 = bounds
    cand = np.column_stack([rng.uniform(x0, x1, 32), rng.uniform(y0, y1, 32)])
    return cand[int(np.argmax(thickness(cand[:, 0], cand[:, 1])))]


def _anchor(
    rng: np.random.Generator,
    layout_parts: tuple[WobblyDiscs, WobblyDiscs, ThicknessMap],
    bounds: tuple[float, float, float, float],
) -> np.ndarray:
    holes, patches, thickness = layout_parts
    choices = [name for name, n in (("hole", holes.count), ("patch", patches.count)) if n] + ["thick"]
    kind = choices[int(rng.integers(len(choices)))]
    theta = float(rng.uniform(0, 2 * np.pi))
    if kind == "hole":
        return np.array(holes.edge_point(int(rng.integers(holes.count)), theta))
    if kind == "patch":
        return np.array(patches.edge_point(int(rng.integers(patches.count)), theta))
    return _thick_point(rng, thickness, bounds)


def draw_layout(config: SpecimenConfig, rng: np.random.Generator) -> SpecimenLayout:
    """Draw the layout of a specimen from ``rng`` (deterministic for its state)."""
    w, h = config.width_nm, config.height_nm
    bounds = (-w / 2, w / 2, -h / 2, h / 2)
    area = w * h
    holes = WobblyDiscs.draw(rng, _count(rng, config.hole_density_per_um2, area), bounds, config.hole_radius_nm)
    patches = WobblyDiscs.draw(
        rng, _count(rng, config.contamination_density_per_um2, area), bounds, config.contamination_radius_nm
    )
    thickness = ThicknessMap.draw(rng, config.thickness_variation, config.thickness_length_nm)
    n_hot = _count(rng, config.hotspot_density_per_um2, area)
    centers = np.empty((n_hot, 2))
    anchored = rng.uniform(size=n_hot) < config.feature_correlation
    for k in range(n_hot):
        if anchored[k]:
            centers[k] = _anchor(rng, (holes, patches, thickness), bounds)
        else:
            centers[k] = (rng.uniform(bounds[0], bounds[1]), rng.uniform(bounds[2], bounds[3]))
            # A random hot spot inside a hole would be invisible: move it once.
            if inside_holes(holes, centers[k, :1], centers[k, 1:]).any():
                centers[k] = (rng.uniform(bounds[0], bounds[1]), rng.uniform(bounds[2], bounds[3]))
    sigmas = rng.uniform(*config.hotspot_radius_nm, n_hot)
    hotspots = HotSpots(centers, sigmas, anchored, config.base_defect_rate, config.hotspot_peak_rate)
    return SpecimenLayout(bounds, holes, patches, thickness, hotspots)
