"""The guard: no sequence of decisions ever yields a command outside the limits (property-based)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.guard import Decision, Guard, GuardConfig, Refusal, half_extent_nm
from drivers.base import Range, ScanCommand, SetTiltCommand
from drivers.memory import DEFAULT_CAPABILITIES

CONFIG = GuardConfig(
    stage_x_nm=Range(low=-200, high=300),
    fov_nm=Range(low=1, high=50),
    dwell_us=Range(low=1, high=50),
    tilt_deg=Range(low=-60, high=60),
    max_step_nm=150.0,
    dose_budget_e_per_a2=2e6,
    probe_current_pa=20.0,
)

anything = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6))
decisions = st.builds(
    Decision,
    kind=st.sampled_from(["scan", "scan", "scan", "set_tilt", "teleport"]),
    x_nm=anything,
    y_nm=anything,
    fov_nm=anything,
    rows=anything,
    cols=anything,
    dwell_us=anything,
    rotation_deg=anything,
    tilt_deg=anything,
)


def _inside(value: float, r: Range) -> bool:
    return r.low <= value <= r.high


@settings(max_examples=300, deadline=None)
@given(st.lists(decisions, min_size=1, max_size=25))
def test_no_sequence_of_decisions_yields_an_unsafe_command(sequence):
    guard = Guard(DEFAULT_CAPABILITIES, CONFIG)
    previous = None
    history: list[ScanCommand] = []
    for decision in sequence:
        out = guard.check(decision)
        if isinstance(out, Refusal):
            assert out.reason
            continue
        if isinstance(out, SetTiltCommand):
            assert -60 <= out.tilt_deg <= 60
            continue
        assert isinstance(out, ScanCommand)
        for name in ("x_nm", "y_nm", "fov_nm", "dwell_us", "rows", "cols"):
            assert _inside(getattr(out, name), guard.limits[name]), name
        assert out.x_nm >= -200 and out.x_nm <= 300 and out.fov_nm <= 50  # the configuration's own limits
        half_x, half_y = half_extent_nm(out.fov_nm, out.rows, out.cols, out.rotation_deg)
        for centre, half, allowed in (
            (out.x_nm, half_x, guard.limits["x_nm"]),
            (out.y_nm, half_y, guard.limits["y_nm"]),
        ):
            assert allowed.low - 1e-6 <= centre - half and centre + half <= allowed.high + 1e-6  # the whole field
        assert (out.x_nm, out.y_nm, out.fov_nm, out.rows) == (
            decision.x_nm,
            decision.y_nm,
            decision.fov_nm,
            decision.rows,
        )  # never clamped
        if previous is not None:
            assert math.hypot(out.x_nm - previous.x_nm, out.y_nm - previous.y_nm) <= 150.0
        dose = guard.frame_dose_e_per_a2(decision)
        overlapping = [
            h
            for h in history
            if abs(h.x_nm - out.x_nm) < (h.fov_nm + out.fov_nm) * math.sqrt(2) / 2
            and abs(h.y_nm - out.y_nm) < (h.fov_nm + out.fov_nm) * math.sqrt(2) / 2
        ]
        received = sum(
            guard.frame_dose_e_per_a2(Decision("scan", h.x_nm, h.y_nm, h.fov_nm, h.rows, h.cols, h.dwell_us))
            for h in overlapping
        )
        assert received + dose <= 2e6
        guard.commit(out)
        previous = out
        history.append(out)


def _scan(**kw) -> Decision:
    return Decision(
        "scan", **{"x_nm": 0.0, "y_nm": 0.0, "fov_nm": 10.0, "rows": 128, "cols": 128, "dwell_us": 2.0, **kw}
    )


@pytest.mark.parametrize(
    ("decision", "reason"),
    [
        (_scan(x_nm=float("nan")), "x_nm=nan is not a finite number"),
        (_scan(y_nm=float("inf")), "y_nm=inf is not a finite number"),
        (_scan(x_nm=-250.0), "x_nm=-250 is outside the allowed [-200, 300]"),
        (_scan(fov_nm=80.0), "fov_nm=80 is outside the allowed [1, 50]"),
        (_scan(rows=100.5), "rows=100.5 is not a whole number of pixels"),
        (_scan(dwell_us=0.5), "dwell_us=0.5 is outside"),
        (Decision("set_tilt", tilt_deg=65.0), "tilt_deg=65 is outside the allowed [-60, 60]"),
        (Decision("teleport"), "decision kind 'teleport' is not accepted"),
        (_scan(x_nm=296.0), "the field spans x 291 to 301 nm, beyond the allowed [-200, 300]"),  # centre inside
    ],
)
def test_each_refusal_names_its_reason(decision, reason):
    out = Guard(DEFAULT_CAPABILITIES, CONFIG).check(decision)
    assert isinstance(out, Refusal) and reason in out.reason


def test_steps_repeats_and_dose_budget():
    guard = Guard(DEFAULT_CAPABILITIES, CONFIG)
    first = guard.check(_scan())
    guard.commit(first)
    assert "step of 200.0 nm from the last scan exceeds" in guard.check(_scan(x_nm=200.0)).reason
    assert "repeat of the field" in guard.check(_scan(x_nm=0.2)).reason
    # Long dwells on one spot: the budget runs out, however the fields shift a little.
    accepted = 0
    for i in range(1, 40):
        out = guard.check(_scan(x_nm=float(i), dwell_us=50.0, fov_nm=4.0, rows=512, cols=512))
        if isinstance(out, Refusal):
            assert "dose budget" in out.reason
            break
        guard.commit(out)
        accepted += 1
    assert 0 < accepted < 39


def test_limits_are_the_intersection_of_instrument_and_configuration():
    guard = Guard(DEFAULT_CAPABILITIES, CONFIG)
    assert guard.limits["x_nm"] == Range(low=-200, high=300)  # configuration narrower
    assert guard.limits["y_nm"] == DEFAULT_CAPABILITIES.stage_y_nm  # configuration silent
    disjoint = Guard(DEFAULT_CAPABILITIES, GuardConfig(fov_nm=Range(low=5000, high=6000)))
    assert "do not overlap" in disjoint.check(_scan()).reason


def test_the_dose_of_a_tall_non_square_field_counts_over_its_whole_height():
    tall = {"fov_nm": 4.0, "rows": 256, "cols": 16, "dwell_us": 20.0}  # 4 nm wide, 64 nm tall
    one = Guard(DEFAULT_CAPABILITIES, CONFIG).frame_dose_e_per_a2(_scan(**tall))
    guard = Guard(DEFAULT_CAPABILITIES, CONFIG.model_copy(update={"dose_budget_e_per_a2": 1.5 * one}))
    guard.commit(guard.check(_scan(**tall)))
    overlapping = guard.check(_scan(y_nm=20.0, **tall))  # 20 nm up: inside the first field's height
    assert isinstance(overlapping, Refusal) and "dose budget" in overlapping.reason
    assert isinstance(guard.check(_scan(y_nm=100.0, **tall)), ScanCommand)  # clear of it


def test_refresh_takes_a_restarted_instruments_limits_and_keeps_what_was_scanned():
    guard = Guard(DEFAULT_CAPABILITIES, GuardConfig())
    guard.commit(guard.check(_scan()))
    narrower = DEFAULT_CAPABILITIES.model_copy(update={"stage_x_nm": Range(low=-20.0, high=20.0)})
    assert guard.refresh(narrower) == []  # nothing configured: the instrument's word stands
    assert "x_nm=30 is outside the allowed [-20, 20]" in guard.check(_scan(x_nm=30.0)).reason
    assert "repeat of the field" in guard.check(_scan(x_nm=0.2)).reason  # the earlier field is remembered
    configured = Guard(DEFAULT_CAPABILITIES, CONFIG)  # x within [-200, 300]
    beyond = configured.refresh(narrower)
    assert beyond == ["guard.stage_x_nm [-200, 300] is wider than the instrument's [-20, 20]"]
    assert configured.limits["x_nm"] == Range(low=-200, high=300)  # unchanged: the caller holds instead


def test_a_rotated_field_reaches_further_than_an_upright_one():
    guard = Guard(DEFAULT_CAPABILITIES, CONFIG)
    assert isinstance(guard.check(_scan(x_nm=294.0)), ScanCommand)  # 289..299: inside
    out = guard.check(_scan(x_nm=294.0, rotation_deg=45.0))  # corners at 294 +- 7.07
    assert isinstance(out, Refusal) and "the field spans x 286.929 to 301.071 nm" in out.reason


def test_limits_wider_than_the_protocol_give_refusals_not_exceptions():
    """An instrument may report ranges beyond what the wire schema carries; the guard refuses, never raises."""
    wide = DEFAULT_CAPABILITIES.model_copy(
        update={
            "stage_x_nm": Range(low=-2e6, high=2e6),
            "stage_y_nm": Range(low=-2e6, high=2e6),
            "fov_nm": Range(low=0.5, high=2e5),
            "pixels": Range(low=16, high=32768),
            "tilt_deg": Range(low=-180, high=180),
        }
    )
    guard = Guard(wide, GuardConfig(max_step_nm=1e7, dose_budget_e_per_a2=1e30))
    for decision in (_scan(x_nm=1.5e6), _scan(fov_nm=1.5e5), _scan(rows=20000, cols=20000, dwell_us=0.1)):
        out = guard.check(decision)
        assert isinstance(out, Refusal) and "outside what the protocol carries" in out.reason
    tilt = guard.check(Decision("set_tilt", tilt_deg=120.0))
    assert isinstance(tilt, Refusal) and "tilt_deg" in tilt.reason


def test_a_scan_that_may_not_have_run_keeps_later_steps_within_reach_of_wherever_the_stage_is():
    guard = Guard(DEFAULT_CAPABILITIES, CONFIG)  # max_step_nm 150
    guard.commit(guard.check(_scan(x_nm=0.0)))
    unsure = guard.check(_scan(x_nm=140.0))
    guard.commit(unsure, ran=False)  # no ack: the stage is at 0 or at 140 nm
    assert guard.position == (0.0, 0.0)
    out = guard.check(_scan(x_nm=280.0))  # 140 nm from the unsure scan, 280 nm from the last known one
    assert isinstance(out, Refusal) and "280.0 nm from the last scan" in out.reason
    assert not isinstance(guard.check(_scan(x_nm=70.0)), Refusal)  # within reach of both
    guard.commit(guard.check(_scan(x_nm=70.0)))  # acknowledged: the stage is there now
    assert guard.position == (70.0, 0.0) and not isinstance(guard.check(_scan(x_nm=210.0)), Refusal)
    assert len(guard.doses_e_per_a2) == 3  # (the unsure scan's dose counts all the same)


@pytest.mark.parametrize(("fov_nm", "cols"), [(10.0, 0), (0.0, 16), (1e-170, 16)])
def test_a_field_of_no_area_is_refused_not_raised(fov_nm, cols):
    open_ended = DEFAULT_CAPABILITIES.model_copy(
        update={"fov_nm": Range(low=0, high=100), "pixels": Range(low=0, high=512)}
    )
    out = Guard(open_ended, GuardConfig()).check(_scan(fov_nm=fov_nm, rows=16, cols=cols))
    assert isinstance(out, Refusal) and ("no area" in out.reason or "frame dose inf" in out.reason)
