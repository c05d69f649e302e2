"""Defects follow the specified density map; hot spots follow low-magnification features."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from simulators import DefectKind, Specimen, SpecimenConfig


def test_defect_fraction_matches_the_map_bin_by_bin():
    config = SpecimenConfig(
        seed=17, width_nm=200, height_nm=200, hotspot_density_per_um2=400.0, hole_density_per_um2=0.0
    )
    specimen = Specimen(config)
    cols = specimen.columns_in_box((-60.0, 60.0, -60.0, 60.0))
    p = specimen.defect_probability(cols.x_nm, cols.y_nm)
    defective = cols.kind != DefectKind.NONE
    assert p.max() > 5 * config.base_defect_rate  # the region holds hot spots
    edges = np.array([0.0, 0.004, 0.01, 0.02, 0.05, 0.1, 1.0])
    tested = 0
    for lo, hi in itertools.pairwise(edges):
        sel = (p >= lo) & (p < hi)
        if sel.sum() < 500:
            continue
        expected = p[sel].sum()
        observed = defective[sel].sum()
        z = (observed - expected) / np.sqrt((p[sel] * (1 - p[sel])).sum())
        assert abs(z) < 4.0, (lo, hi, observed, expected)
        tested += 1
    assert tested >= 4


def test_hot_spots_raise_the_local_defect_density():
    specimen = Specimen(SpecimenConfig(seed=5, width_nm=200, height_nm=200, hole_density_per_um2=0.0))
    hot = specimen.layout.hotspots
    k = int(np.argmax(hot.sigmas_nm))
    cx, cy = hot.centers_nm[k]
    s = hot.sigmas_nm[k]
    near = specimen.columns_in_box((cx - s / 2, cx + s / 2, cy - s / 2, cy + s / 2))
    rate_near = np.mean(near.kind != DefectKind.NONE)
    assert rate_near > 4 * specimen.config.base_defect_rate


@pytest.mark.parametrize("correlation", [0.0, 1.0])
def test_feature_correlation_anchors_hot_spots_on_visible_features(correlation):
    specimen = Specimen(SpecimenConfig(seed=9, feature_correlation=correlation, hotspot_density_per_um2=600.0))
    hot, holes, patches = specimen.layout.hotspots, specimen.layout.holes, specimen.layout.contamination
    assert len(hot.sigmas_nm) > 10
    assert np.all(hot.anchored == (correlation == 1.0))
    on_edge = np.zeros(len(hot.sigmas_nm), dtype=bool)
    for discs in (holes, patches):
        for j in range(discs.count):
            d = discs.relative_distance(j, hot.centers_nm[:, 0], hot.centers_nm[:, 1])
            on_edge |= np.abs(d - 1.0) < 1e-6
    thickness = specimen.thickness(hot.centers_nm[:, 0], hot.centers_nm[:, 1])
    feature = on_edge | (thickness > 1.0 + 0.5 * specimen.config.thickness_variation)
    if correlation == 1.0:
        assert feature.all()
    else:
        assert feature.mean() < 0.5


def test_every_defect_kind_of_each_lattice_occurs():
    from simulators import LATTICES

    for name, lattice in LATTICES.items():
        specimen = Specimen(
            SpecimenConfig(
                seed=1, lattice=name, base_defect_rate=0.2, width_nm=60, height_nm=60, hole_density_per_um2=0.0
            )
        )
        cols = specimen.columns_in_box((-15.0, 15.0, -15.0, 15.0))
        expected = {rule.kind for site in lattice.sites for rule in site.defects}
        assert expected <= set(np.unique(cols.kind).tolist()), name
