"""The defect catalogue (distinct defects across fields) and reward expressions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.catalog import DefectCatalog
from agent.observation import AtomTable, Observation
from agent.reward import Reward, RewardError
from drivers.base import Frame

NAMES = {"n_atoms", "n_defects", "new_defects", "ood_score", "mean_mutual_info", "n_vacancy", "n_dopant"}


def test_overlapping_fields_count_a_defect_once():
    cat = DefectCatalog(radius_nm=0.1)
    first = cat.add(np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.0, 0.0]), np.array([2, 2, 3]), step=0)
    # the same three seen again from an overlapping field, shifted by stage error; plus one new
    again = cat.add(np.array([0.04, 1.03, 1.98, 5.0]), np.array([0.02, -0.05, 0.0, 5.0]), np.array([2, 2, 3, 2]), 1)
    assert (first, again, len(cat)) == (3, 1, 4)
    assert cat.first_step == [0, 0, 0, 1]


def test_a_different_class_at_the_same_place_is_a_different_defect():
    cat = DefectCatalog(radius_nm=0.1)
    cat.add(np.array([0.0]), np.array([0.0]), np.array([2]), 0)
    assert cat.add(np.array([0.01]), np.array([0.0]), np.array([3]), 1) == 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-50, 50), st.floats(-50, 50)), min_size=1, max_size=40))
def test_catalogue_never_holds_two_defects_closer_than_the_radius(points):
    cat = DefectCatalog(radius_nm=0.2)
    xy = np.array(points)
    cat.add(xy[:, 0], xy[:, 1], np.zeros(len(xy), dtype=np.int64), 0)
    kept = np.column_stack([cat.x_nm, cat.y_nm])
    d = np.hypot(*(kept[:, None, :] - kept[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert d.min() > 0.2 - 1e-12  # (points 0.2 + 4e-64 apart are apart, but their float distance rounds to 0.2)
    # and every point is within the radius of a kept one
    assert (np.hypot(*(xy[:, None, :] - kept[None, :, :]).transpose(2, 0, 1)).min(1) <= 0.2 + 1e-12).all()


def test_catalogue_rejects_a_bad_radius():
    with pytest.raises(ValueError, match="radius_nm"):
        DefectCatalog(float("nan"))


def _observation(n_defects: int = 3, ood: float = 1.5) -> Observation:
    frame = Frame.of(np.zeros((16, 16), np.float32), 0.02)
    atoms = AtomTable.empty()
    counts = {"vacancy": n_defects - 1, "dopant": 1}
    unc = {"mean_mutual_info": 0.01}
    return Observation(
        0, frame.header, 0.0, atoms, ("background", "atom", "vacancy", "dopant"), counts, 2, unc, ood, True
    )


def test_reward_expressions_compute_from_the_observation():
    obs = _observation()
    assert Reward("n_vacancy + 2 * n_dopant", NAMES)(obs) == 4.0
    assert Reward("new_defects - 5 * (ood_score > 3)", NAMES)(obs) == 2.0
    assert Reward("max(new_defects, 10) / 4", NAMES)(obs) == 2.5
    assert Reward("n_dopant / (n_atoms)", NAMES)(obs) == 0.0  # division by zero gives 0, not an exception
    assert Reward("sqrt(-n_vacancy)", NAMES)(obs) == 0.0
    assert Reward("(ood_score - 3) ** 0.5", NAMES)(obs) == 0.0  # a complex power gives 0, not a crash


@pytest.mark.timeout(10)
def test_a_power_tower_overflows_to_zero_at_once_instead_of_computing_forever():
    """In Python integers 9**9**9**9 never finishes: the run hung at its first frame."""
    assert Reward("9 ** 9 ** 9 ** 9", NAMES)(_observation()) == 0.0
    assert Reward("2 ** (n_vacancy * 10000)", NAMES)(_observation()) == 0.0


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("n_defect", "unknown name 'n_defect'"),
        ("__import__('os')", "not allowed"),
        ("observation.header", "not allowed"),
        ("[n_atoms]", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("n_atoms +", "not valid"),
        ("'text'", "not allowed"),
        ("min()", r"min\(\) takes at least 1 argument\(s\), got 0"),
        ("sqrt(n_atoms, 2)", r"sqrt\(\) takes 1 argument\(s\), got 2"),
    ],
)
def test_reward_refuses_anything_but_arithmetic(expression, message):
    with pytest.raises(RewardError, match=message):
        Reward(expression, NAMES)
