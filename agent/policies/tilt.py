"""Tilt schemes: which angle to measure next (the second decision the agent makes).

Each scheme proposes angles inside the reachable range, never one already measured:

* ``sequential``: from one end of the range to the other in equal steps.
* ``dose-symmetric`` (Hagen et al. 2017): 0, then alternating sides in growing steps, in pairs
  (+s, +2s, -s, -2s, +3s, +4s, ...), so the low-tilt views, which carry the most information, are
  taken before the dose accumulates.
* ``golden-ratio``: each next angle advances by the golden section of the range (mod the range), which
  spreads any number of tilts almost evenly and lets the series stop at any point.
"""

from __future__ import annotations

import math

import numpy as np

TILT_SCHEMES = ("sequential", "dose-symmetric", "golden-ratio")
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def tilt_plan(scheme: str, n_tilts: int, low_deg: float, high_deg: float) -> list[float]:
    """The ``n_tilts`` angles of ``scheme`` within [low_deg, high_deg], in acquisition order.

    Raises
    ------
    ValueError
        For an unknown scheme, fewer than 2 tilts, or an empty range.
    """
    if scheme not in TILT_SCHEMES:
        raise ValueError(f"unknown tilt scheme {scheme!r}; choose one of {', '.join(TILT_SCHEMES)}")
    if n_tilts < 2 or not (math.isfinite(low_deg) and math.isfinite(high_deg) and low_deg < high_deg):
        raise ValueError(f"need at least 2 tilts in a non-empty range (got {n_tilts} in [{low_deg}, {high_deg}])")
    if scheme == "sequential":
        return [float(a) for a in np.linspace(low_deg, high_deg, n_tilts)]
    if scheme == "golden-ratio":
        span = high_deg - low_deg
        return [low_deg + span * ((0.5 + k * _GOLDEN) % 1.0) for k in range(n_tilts)]
    return _dose_symmetric(n_tilts, low_deg, high_deg)


def _dose_symmetric(n_tilts: int, low_deg: float, high_deg: float) -> list[float]:
    """Hagen's scheme around 0 (or the range's centre), with one step fitting ``n_tilts`` in the range.

    A range symmetric about its centre is reached at both ends: the step is its half-width over the
    pairs of tilts either side, and an even count's last tilt fills the widest gap left.  (A step of the
    whole range over ``n_tilts - 1`` stopped at +-66.3 of +-70 deg for 20 tilts, and left 6 tilts in
    +-60 deg at 0, 24, 48, -24, -48, -36.)  On a lopsided range the step is that of ``n_tilts`` evenly
    spread, so the longer side is covered too.
    """
    centre = 0.0 if low_deg <= 0.0 <= high_deg else 0.5 * (low_deg + high_deg)
    symmetric = math.isclose(high_deg - centre, centre - low_deg, rel_tol=1e-9, abs_tol=1e-9)
    step = (high_deg - centre) / max(1, (n_tilts - 1) // 2) if symmetric else (high_deg - low_deg) / (n_tilts - 1)
    angles, k, side = [centre], 1, 1
    while len(angles) < n_tilts and k < 4 * n_tilts:
        for j in (k, k + 1):  # two on one side, then two on the other
            a = centre + side * j * step
            if low_deg - 1e-9 <= a <= high_deg + 1e-9 and len(angles) < n_tilts:
                angles.append(a)
        side = -side
        if side == 1:
            k += 2
    # a range not centred on 0 runs out on one side: fill the gaps that are left, largest first
    while len(angles) < n_tilts:
        ordered = sorted([*angles, low_deg, high_deg])
        gaps = np.diff(ordered)
        i = int(np.argmax(gaps))
        angles.append(float(ordered[i] + gaps[i] / 2))
    return angles
