"""Policies on synthetic reward landscapes: baselines behave, adaptive ones find the rewarding places."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from agent.guard import Decision
from agent.policies import (
    POLICY_NAMES,
    AcquisitionConfig,
    FieldTemplate,
    PolicyContext,
    Region,
    candidate_grid,
    make_policy,
)
from agent.policies.dkl import survey_patches

REGION = Region(-50.0, 50.0, -50.0, 50.0)
FIELD = FieldTemplate(fov_nm=10.0, pixels=64, dwell_us=1.0)


def context(seed: int = 0) -> PolicyContext:
    return PolicyContext(REGION, FIELD, seed)


def hot_spot(seed: int):
    """A reward landscape like a specimen's: a few Gaussian hot spots of defects at seeded places."""
    centres = np.random.default_rng(seed).uniform(-45, 45, (3, 2))

    def reward(x: float, y: float) -> int:
        d2 = ((centres - (x, y)) ** 2).sum(1)
        return round(15 * np.exp(-d2 / (2 * 10.0**2)).sum())

    return reward


def run_policy(policy, reward, steps: int, obs_at) -> list[int]:
    got = []
    for _ in range(steps):
        (d,) = policy.suggest(1)
        value = reward(d.x_nm, d.y_nm)
        policy.ingest(obs_at(d.x_nm, d.y_nm, FIELD.fov_nm, new_defects=value))
        got.append(value)
    return got


def test_candidate_grid_covers_the_region_with_equal_margins():
    xy = candidate_grid(REGION, 10.0)
    assert xy.shape == (121, 2)
    assert xy[:, 0].min() == pytest.approx(-50) and xy[:, 0].max() == pytest.approx(50)
    assert len(candidate_grid(Region(0, 5, 0, 5), 10.0)) == 1


@pytest.mark.parametrize(("spacing_nm", "said"), [(1e-3, r"1e\+10 candidate fields"), (1e-300, "inf candidate fields")])
def test_a_grid_too_fine_is_refused_with_its_size_even_an_absurd_one(spacing_nm, said):
    with pytest.raises(ValueError, match=said):  # (1e-300 raised OverflowError formatting the count)
        candidate_grid(REGION, spacing_nm)


def test_raster_sweeps_every_field_once_in_serpentine_order(obs_at):
    policy = make_policy("raster", context())
    assert policy.commits_ahead
    seen = [(d.x_nm, d.y_nm) for d in policy.suggest(200)]
    assert len(seen) == 121 and len(set(seen)) == 121
    assert seen[10] == (50.0, -50.0) and seen[11] == (50.0, -40.0)  # turns around at the end of a row
    assert policy.suggest(1) == []


def test_random_is_seeded_and_never_repeats():
    a = [(d.x_nm, d.y_nm) for d in make_policy("random", context(3)).suggest(121)]
    b = [(d.x_nm, d.y_nm) for d in make_policy("random", context(3)).suggest(121)]
    assert a == b and len(set(a)) == 121


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="unknown policy 'greedy'"):
        make_policy("greedy", context())


def test_a_refused_field_is_not_proposed_again(obs_at):
    policy = make_policy("defects", context())
    (first,) = policy.suggest(1)
    policy.reject(first, "dose budget")
    later = [(d.x_nm, d.y_nm) for d in policy.suggest(120)]
    assert (first.x_nm, first.y_nm) not in later


@pytest.mark.parametrize("name", ["defects", "bayes"])
def test_adaptive_policies_find_hot_spots_far_better_than_raster_and_random(name, obs_at):
    totals = {n: 0 for n in (name, "raster", "random")}
    for seed in range(3):
        reward = hot_spot(seed)
        for n in totals:
            totals[n] += sum(run_policy(make_policy(n, context(seed)), reward, 25, obs_at))
    assert totals[name] > 1.5 * max(totals["raster"], totals["random"]), totals


# Thompson sampling explores by design (it follows one posterior draw), so its margin over 25 fields is smaller.
@pytest.mark.parametrize(("acquisition", "margin"), [("ei", 1.3), ("thompson", 1.1)])
def test_bayes_acquisitions_also_beat_random(acquisition, margin, obs_at):
    bayes = rand = 0
    for seed in range(3):
        reward = hot_spot(seed)
        policy = make_policy("bayes", context(seed), acquisition=AcquisitionConfig(acquisition))
        bayes += sum(run_policy(policy, reward, 25, obs_at))
        rand += sum(run_policy(make_policy("random", context(seed)), reward, 25, obs_at))
    assert bayes > margin * rand, (bayes, rand)


def test_bayes_refits_hyperparameters_every_k_observations_only(obs_at):
    policy = make_policy("bayes", context(), acquisition=AcquisitionConfig(refit_every=5, initial_fields=2))
    decisions = []
    for _ in range(14):
        (d,) = policy.suggest(1)
        decisions.append(d)
        policy.ingest(obs_at(d.x_nm, d.y_nm, 10.0, new_defects=1))
    refits = [d.rationale.get("refitted") for d in decisions[2:]]
    assert refits == [True, False, False, False, False, True, False, False, False, False, True, False]
    assert {"acquisition_value", "predicted_reward", "uncertainty"} <= set(decisions[-1].rationale)


def test_bayes_rejects_an_unknown_acquisition():
    with pytest.raises(ValueError, match="acquisition must be one of"):
        AcquisitionConfig("pi")


def _survey_with_bright_spots(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 220-px survey of the region (0.5 nm/px) with bright patches on a few candidate fields."""
    rng = np.random.default_rng(seed)
    xy = candidate_grid(REGION, 10.0)
    bright = rng.choice(len(xy), 12, replace=False)
    image = rng.normal(0, 0.2, (220, 220))
    for i in bright:
        col, row = (xy[i] + 55) / 0.5
        image[int(row) - 6 : int(row) + 7, int(col) - 6 : int(col) + 7] += 3.0
    return image, xy[bright]


def test_dkl_surveys_first_then_learns_what_the_survey_shows(obs_at):
    image, bright_xy = _survey_with_bright_spots(5)
    policy = make_policy("dkl", context(5), acquisition=AcquisitionConfig(initial_fields=3))
    (survey,) = policy.suggest(1)
    assert survey.rationale["phase"] == "survey" and survey.fov_nm >= 100
    assert policy.suggest(1) == []  # nothing else until the survey is in
    policy.ingest(obs_at(0.0, 0.0, 110.0, image=image))

    def reward(x: float, y: float) -> int:
        return 10 if np.hypot(*(bright_xy - (x, y)).T).min() < 1 else 0

    found = sum(v > 0 for v in run_policy(policy, reward, 20, obs_at))
    assert found >= 6, found  # random would expect 20 * 12 / 121 = 2


def test_survey_patches_sample_around_each_centre():
    image = np.zeros((100, 100))
    image[40:60, 70:90] = 1.0  # bright at x in [10, 20) nm, y in [-5, 5) nm for 0.5 nm/px centred at 0
    patches = survey_patches(image, 0.0, 0.0, 0.5, 0.0, np.array([[15.0, 0.0], [-15.0, 0.0]]), 4, 6.0)
    assert patches.shape == (2, 16) and patches[0].mean() > patches[1].mean() + 1.0


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_speaks_the_protocol(name, obs_at):
    policy = make_policy(name, context())
    assert isinstance(policy.commits_ahead, bool) and policy.name == name
    decisions = policy.suggest(1)
    assert len(decisions) == 1 and isinstance(decisions[0], Decision)
    policy.reject(decisions[0], "test")


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_released_advice_is_proposed_again_and_a_visited_field_is_not(name, obs_at):
    """Watch mode: suggestions no one acted on never use the candidates up (121 here; 300 rounds of advice)."""
    policy = make_policy(name, context())
    visited: set[tuple[float, float]] = set()
    for i in range(300):
        (d,) = policy.suggest(1)
        assert (d.x_nm, d.y_nm) not in visited
        policy.release(d)
        if i % 10 == 0 and d.fov_nm == FIELD.fov_nm:  # the person sometimes scans where the advice said
            policy.ingest(obs_at(d.x_nm, d.y_nm, FIELD.fov_nm, new_defects=1))
            visited.add((d.x_nm, d.y_nm))
        elif d.fov_nm != FIELD.fov_nm:  # a survey: the person takes it once
            policy.ingest(obs_at(d.x_nm, d.y_nm, d.fov_nm, new_defects=0))


def test_released_raster_advice_stays_the_next_field_until_it_is_scanned(obs_at):
    policy = make_policy("raster", context())
    (first,) = policy.suggest(1)
    policy.release(first)
    (again,) = policy.suggest(1)
    assert (again.x_nm, again.y_nm) == (first.x_nm, first.y_nm)
    policy.release(again)
    policy.ingest(obs_at(first.x_nm, first.y_nm, FIELD.fov_nm, new_defects=0))
    (after,) = policy.suggest(1)
    assert (after.x_nm, after.y_nm) != (first.x_nm, first.y_nm)


def test_release_opens_neither_a_refused_field_nor_one_far_from_the_decision(obs_at):
    policy = make_policy("defects", context())
    (first,) = policy.suggest(1)
    policy.reject(first, "dose budget")
    policy.release(first)
    assert (first.x_nm, first.y_nm) not in [(d.x_nm, d.y_nm) for d in policy.suggest(120)]
    raster = make_policy("raster", context())
    (d,) = raster.suggest(1)
    raster.release(dataclasses.replace(d, x_nm=d.x_nm - 0.6 * FIELD.fov_nm))  # no candidate's field: nothing opens
    (after,) = raster.suggest(1)
    assert (after.x_nm, after.y_nm) != (d.x_nm, d.y_nm)


def test_a_released_survey_is_proposed_again(obs_at):
    policy = make_policy("dkl", context())
    (survey,) = policy.suggest(1)
    assert survey.rationale["phase"] == "survey" and policy.suggest(1) == []  # in flight: nothing else yet
    policy.release(survey)
    (again,) = policy.suggest(1)
    assert again.rationale["phase"] == "survey"


def test_bayes_with_rewards_spread_over_1e200_never_proposes_a_visited_field(obs_at):
    """y.std() overflowed to inf, every score was NaN, and NaN sorted before the closed fields' -inf."""
    policy = make_policy(
        "bayes",
        context(),
        reward=lambda o: float(o.new_defects) * 1e200,
        acquisition=AcquisitionConfig(initial_fields=2),
    )
    seen = set()
    for step in range(8):
        (d,) = policy.suggest(1)
        assert (d.x_nm, d.y_nm) not in seen, f"step {step} proposed a visited field"
        seen.add((d.x_nm, d.y_nm))
        policy.ingest(obs_at(d.x_nm, d.y_nm, FIELD.fov_nm, new_defects=int(step == 1)))


def test_a_candidate_grid_too_large_to_hold_is_refused_by_name():
    with pytest.raises(ValueError, match=r"candidate fields, more than 4,000,000: narrow the region"):
        candidate_grid(REGION, 1e-4)


def test_the_dkl_survey_of_a_wide_region_is_wide_and_stays_over_the_region():
    wide = PolicyContext(Region(-800.0, 800.0, 900.0, 990.0), FIELD, 0)
    (survey,) = make_policy("dkl", wide).suggest(1)
    height = survey.fov_nm * survey.rows / survey.cols
    assert survey.fov_nm == pytest.approx(1600.0 + FIELD.fov_nm) and survey.cols > survey.rows >= 16
    assert survey.y_nm - height / 2 >= 900.0 - FIELD.fov_nm / 2 and survey.y_nm + height / 2 <= 990.0 + FIELD.fov_nm / 2


@pytest.mark.parametrize("name", ["random", "bayes", "uncertainty"])
def test_policies_choose_within_one_stage_move_and_leave_farther_fields_open(name, obs_at):
    """A 10 um region with max_step_nm 1000: the guard would refuse (and used to close) most random picks."""
    big = PolicyContext(Region(-4990.0, 4990.0, -4990.0, 4990.0), FIELD, 0, spacing_nm=100.0, max_step_nm=1000.0)
    options = {"acquisition": AcquisitionConfig(initial_fields=3)} if name == "bayes" else {}
    policy = make_policy(name, big, **options)
    previous = None
    for _ in range(8):
        decisions = policy.suggest(3 if policy.commits_ahead else 1)  # committing ahead plans from each pick
        for d in decisions:
            if previous is not None:
                assert math.hypot(d.x_nm - previous[0], d.y_nm - previous[1]) <= 1000.0
            previous = (d.x_nm, d.y_nm)
            policy.ingest(obs_at(d.x_nm, d.y_nm, FIELD.fov_nm, new_defects=0))
    assert policy.open.sum() == len(policy.xy) - 8 * len(decisions)  # only visited fields are closed


def test_raster_goes_on_within_one_stage_move_after_a_refused_stretch(obs_at):
    """Refused rows leave the sweep's next field out of reach: it carries on with the fields in reach."""
    policy = make_policy("raster", PolicyContext(REGION, FIELD, 0, max_step_nm=35.0))
    (first,) = policy.suggest(1)
    assert (first.x_nm, first.y_nm) == (-50.0, -50.0)
    policy.ingest(obs_at(first.x_nm, first.y_nm, FIELD.fov_nm, new_defects=0))
    for x, y in policy.xy[policy.xy[:, 1] < -25.0]:  # rows 0-2 refused; row 3 is swept from x = 50
        policy.reject(FIELD.at(x, y), "refused by the guard")
    here, visited = (first.x_nm, first.y_nm), []
    for _ in range(6):
        (d,) = policy.suggest(1)
        assert math.hypot(d.x_nm - here[0], d.y_nm - here[1]) <= 35.0, (d.x_nm, d.y_nm)
        here = (d.x_nm, d.y_nm)
        visited.append(here)
        policy.ingest(obs_at(d.x_nm, d.y_nm, FIELD.fov_nm, new_defects=0))
    assert visited == [(-50.0, -20.0), (-40.0, -20.0), (-30.0, -20.0), (-20.0, -20.0), (-10.0, -20.0), (0.0, -20.0)]
